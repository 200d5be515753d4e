//! `rampart apply` on real hosts: real OpenSSH, systemd as PID 1, Debian's
//! etcd-server. The CI lab has no Kubernetes binaries (no internet), so the
//! control-plane and node start phases are skipped: their units are
//! installed, verified on the host and enabled; etcd is started for real.
//!
//! One ordered scenario per lab, because the steps build on each other
//! (install, converge, change, fault, re-converge) and the hosts are shared.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use super::{assert_success, bastion_lab, lock, main_lab, Cluster, InventorySpec, Lab};

/// The start phases that need Kubernetes binaries the CI lab does not have.
pub(super) const SKIP: &str = "start-control-plane,apply-manifests,start-nodes";

/// Puts every host back to the image's state: rampart's units stopped and
/// removed, its files and etcd's data gone. Scenarios start from here.
pub(super) fn reset(lab: &Lab) {
    for i in 0..lab.hosts.len() {
        lab.ssh_ok(
            i,
            "systemctl disable --now rampart-backup.timer etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy >/dev/null 2>&1 || true; \
             rm -rf /etc/kubernetes /var/lib/etcd /var/lib/rampart /var/lib/kubelet /var/lib/kube-proxy \
                    /etc/systemd/system/etcd.service /etc/systemd/system/kube-*.service /etc/sysctl.d/90-rampart-kubelet.conf \
                    /usr/local/bin/dd /usr/local/bin/rampart /etc/rampart /var/backups/etcd /etc/systemd/system/rampart-backup.* \
                    /srv/backups /var/lib/rampart-backup; \
             userdel rampart-backup >/dev/null 2>&1 || true; \
             systemctl daemon-reload; systemctl reset-failed",
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(c: &Cluster, inventory: &Path, extra: &[&str]) -> Output {
    let inv = inventory.to_str().unwrap();
    let mut args = vec!["apply", "-i", inv, "--skip-phases", SKIP];
    args.extend_from_slice(extra);
    c.run(&args)
}

/// `plan --output json`: per host, the paths that change and the services.
fn plan(c: &Cluster, inventory: &Path) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let out = c.run(&[
        "plan",
        "-i",
        inventory.to_str().unwrap(),
        "--skip-phases",
        SKIP,
        "--output",
        "json",
    ]);
    assert_success(&out, "rampart plan");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let p = &h["plan"];
            let files = p["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_string())
                .collect();
            let services = p["services"].as_object().unwrap().keys().cloned().collect();
            (h["host"].as_str().unwrap().to_string(), (files, services))
        })
        .collect()
}

/// etcd's `endpoint health --cluster` from host `i`, with the healthcheck client cert.
pub(super) fn etcd_healthy_members(lab: &Lab, i: usize) -> usize {
    let out = lab.ssh(
        i,
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
         --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key=/etc/kubernetes/pki/etcd/healthcheck-client.key endpoint health --cluster 2>&1",
    );
    stdout(&out).matches("is healthy").count()
}

/// When etcd last entered `active` on host `i` (changes on every restart).
pub(super) fn etcd_started_at(lab: &Lab, i: usize) -> String {
    lab.ssh_ok(
        i,
        "systemctl show etcd -p ActiveEnterTimestampMonotonic --value",
    )
}

/// Every file of `rampart render`'s manifest is on its host with the rendered
/// mode, owner and sha256, as the host itself reports them.
fn assert_bundle_on_hosts(lab: &Lab, c: &Cluster, inventory: &Path) {
    let out_dir = c.dir.path().join("bundle");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = c.run(&[
        "render",
        "-i",
        inventory.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_success(&out, "rampart render");
    for (i, h) in lab.hosts.iter().enumerate() {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out_dir.join(&h.name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let files = manifest["files"].as_array().unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
        let report = lab.ssh_ok(
            i,
            &format!(
                "for p in {}; do printf '%s %s %s\\n' \"$p\" \"$(stat -c '%a %U:%G' \"$p\")\" \"$(sha256sum < \"$p\" | cut -d' ' -f1)\"; done",
                paths.join(" ")
            ),
        );
        let on_host: BTreeMap<&str, &str> =
            report.lines().filter_map(|l| l.split_once(' ')).collect();
        for f in files {
            let path = f["path"].as_str().unwrap();
            let want = format!(
                "{} {}:{} {}",
                f["mode"].as_str().unwrap().trim_start_matches('0'),
                f["owner"].as_str().unwrap(),
                f["group"].as_str().unwrap(),
                f["sha256"].as_str().unwrap()
            );
            assert_eq!(
                on_host.get(path),
                Some(&want.as_str()),
                "{}: {path}",
                h.name
            );
        }
    }
}

/// No staged copies anywhere rampart writes.
fn staged_leftovers(lab: &Lab, i: usize) -> String {
    lab.ssh_ok(
        i,
        "find /etc/kubernetes /etc/systemd/system /var/lib/kubelet /var/lib/kube-proxy /var/lib/rampart /usr/local/bin \
         -name '.*.rampart-new' 2>/dev/null || true",
    )
}

#[test]
fn lab_apply_installs_converges_and_survives_a_dropped_connection() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));
    let inv = c.inventory.clone();

    // First apply: a 3-member etcd cluster over mTLS, every file in place.
    let out = apply(&c, &inv, &[]);
    assert_success(&out, "first apply");
    for i in 0..3 {
        assert!(
            stderr(&out).contains(&format!("{}: etcd healthy (3/3)", lab.hosts[i].name)),
            "{}",
            stderr(&out)
        );
        assert_eq!(etcd_healthy_members(&lab, i), 3, "{}", lab.hosts[i].name);
        assert_eq!(
            lab.ssh_ok(i, "stat -c '%a %U:%G' /var/lib/etcd"),
            "700 etcd:etcd"
        );
        assert_eq!(
            lab.ssh_ok(i, "systemctl is-enabled etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy | sort -u"),
            "enabled"
        );
    }
    assert_bundle_on_hosts(&lab, &c, &inv);
    // The worker holds no CA key and no etcd material.
    assert_eq!(
        lab.ssh_ok(
            3,
            "ls /etc/kubernetes/pki; ls /etc/kubernetes/pki/etcd 2>&1 || true"
        ),
        "ca.crt\nls: cannot access '/etc/kubernetes/pki/etcd': No such file or directory"
    );

    // Second apply: nothing changes, nothing restarts.
    let started: Vec<String> = (0..3).map(|i| etcd_started_at(&lab, i)).collect();
    let out = apply(&c, &inv, &["--output", "json"]);
    assert_success(&out, "second apply");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in v["hosts"].as_array().unwrap() {
        assert!(h["plan"]["files"].as_array().unwrap().is_empty(), "{h}");
        assert!(h["plan"]["services"].as_object().unwrap().is_empty(), "{h}");
    }
    assert!(
        stdout(&c.run(&["plan", "-i", inv.to_str().unwrap(), "--skip-phases", SKIP]))
            .contains("no changes")
    );
    let again: Vec<String> = (0..3).map(|i| etcd_started_at(&lab, i)).collect();
    assert_eq!(started, again, "a no-op apply restarted etcd");

    // A changed value (audit retention): exactly the apiserver unit changes,
    // on the control planes only, and etcd keeps running.
    let changed = lab.write_inventory(&InventorySpec {
        extra: "security:\n  auditLog:\n    maxAgeDays: 45\n".into(),
        ..Default::default()
    });
    let planned = plan(&c, &changed);
    for (i, h) in lab.hosts.iter().enumerate() {
        let (files, _) = &planned[&h.name];
        // The host scan's manifest holds every file's sha256: it changes
        // wherever a file does.
        let want: Vec<String> = if i < 3 {
            vec![
                "/etc/rampart/scan/manifest".into(),
                "/etc/systemd/system/kube-apiserver.service".into(),
            ]
        } else {
            vec![]
        };
        assert_eq!(files, &want, "{}", h.name);
    }
    assert_success(&apply(&c, &changed, &[]), "apply of the changed inventory");
    assert!(lab
        .ssh_ok(1, "cat /etc/systemd/system/kube-apiserver.service")
        .contains("--audit-log-maxage=45"));
    let after: Vec<String> = (0..3).map(|i| etcd_started_at(&lab, i)).collect();
    assert_eq!(started, after, "an apiserver-only change restarted etcd");
    // The previous version is kept for rollback.
    assert!(lab
        .ssh_ok(
            1,
            "cat /var/lib/rampart/backup/*/etc/systemd/system/kube-apiserver.service"
        )
        .contains("--audit-log-maxage=30"));

    // Fault: the SSH connection of cp2 dies in the middle of an upload (a
    // `dd` stand-in reads a little, then kills its sshd session).
    let unit_before = lab.ssh_ok(1, "sha256sum /etc/systemd/system/kube-apiserver.service");
    lab.ssh_ok(
        1,
        "cat > /usr/local/bin/dd <<'EOF'\n#!/bin/sh\nhead -c 100 >/dev/null\npid=$$\nwhile [ \"$pid\" -gt 1 ] && [ \"$(ps -o comm= -p \"$pid\")\" != sshd ]; do pid=$(ps -o ppid= -p \"$pid\" | tr -d ' '); done\nkill -9 \"$pid\"\nexit 1\nEOF\nchmod 755 /usr/local/bin/dd",
    );
    let faulty = lab.write_inventory(&InventorySpec {
        extra: "security:\n  auditLog:\n    maxAgeDays: 46\n".into(),
        ..Default::default()
    });
    let out = apply(&c, &faulty, &[]);
    assert!(!out.status.success(), "apply survived a killed connection?");
    let err = stderr(&out);
    assert!(
        err.contains(&lab.hosts[1].name),
        "the failed host is named: {err}"
    );
    lab.ssh_ok(1, "rm /usr/local/bin/dd");
    assert_eq!(staged_leftovers(&lab, 1), "", "partial uploads left on cp2");
    assert_eq!(
        lab.ssh_ok(1, "sha256sum /etc/systemd/system/kube-apiserver.service"),
        unit_before,
        "the unit on cp2 changed although its upload died"
    );
    // Re-run: converges.
    assert_success(&apply(&c, &faulty, &[]), "re-run after the fault");
    for (_, (files, services)) in plan(&c, &faulty) {
        assert!(files.is_empty() && services.is_empty());
    }
    for i in 0..lab.hosts.len() {
        assert_eq!(staged_leftovers(&lab, i), "");
    }

    // A non-root login with `become: sudo` (user deploy, passwordless sudo).
    let sudo = lab.write_inventory(&InventorySpec {
        sudo: true,
        extra: "security:\n  auditLog:\n    maxAgeDays: 47\n".into(),
        ..Default::default()
    });
    let out = apply(&c, &sudo, &[]);
    assert_success(&out, "apply as deploy with sudo");
    assert!(lab
        .ssh_ok(2, "cat /etc/systemd/system/kube-apiserver.service")
        .contains("--audit-log-maxage=47"));
    assert_eq!(
        lab.ssh_ok(
            2,
            "stat -c '%a %U:%G' /etc/systemd/system/kube-apiserver.service"
        ),
        "600 root:root"
    );
    for i in 0..3 {
        assert_eq!(etcd_healthy_members(&lab, i), 3);
    }

    // A change that feeds etcd (its cipher suites): the running cluster's
    // members restart one at a time, each gated on the whole cluster's health.
    let started: Vec<String> = (0..3).map(|i| etcd_started_at(&lab, i)).collect();
    let ciphers = lab.write_inventory(&InventorySpec {
        sudo: true,
        extra: "security:\n  auditLog:\n    maxAgeDays: 47\n  tls:\n    cipherSuites:\n      \
                - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n      - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n      \
                - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n      - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n"
            .into(),
        ..Default::default()
    });
    let planned = plan(&c, &ciphers);
    for h in &lab.hosts[..3] {
        assert!(
            planned[&h.name].1.contains(&"etcd".to_string()),
            "{}: {:?}",
            h.name,
            planned[&h.name]
        );
    }
    let out = apply(&c, &ciphers, &[]);
    assert_success(&out, "apply of new etcd cipher suites");
    let err = stderr(&out);
    let healthy: Vec<&str> = err
        .lines()
        .filter(|l| l.ends_with("etcd healthy (3/3)"))
        .collect();
    let names: Vec<String> = lab.hosts[..3]
        .iter()
        .map(|h| format!("{}: etcd healthy (3/3)", h.name))
        .collect();
    assert_eq!(
        healthy, names,
        "one member after the other, in inventory order"
    );
    for (i, before) in started.iter().enumerate() {
        assert_ne!(
            &etcd_started_at(&lab, i),
            before,
            "{} was not restarted",
            lab.hosts[i].name
        );
        assert_eq!(etcd_healthy_members(&lab, i), 3);
    }
}

#[test]
fn lab_unknown_or_wrong_host_keys_are_refused_before_anything_is_sent() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));

    // An empty known_hosts file: every key is unknown.
    let empty = c.dir.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let text = lab.inventory(&InventorySpec::default()).replace(
        &lab.known_hosts.display().to_string(),
        &empty.display().to_string(),
    );
    let inv = c.dir.path().join("unknown.yaml");
    std::fs::write(&inv, text).unwrap();
    let out = apply(&c, &inv, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("unknown host key") && err.contains("SHA256:"),
        "{err}"
    );
    assert!(err.contains("rampart hosts trust"), "{err}");

    // A pinned key that is not the host's (rl2's key pinned for rl1).
    let other = std::fs::read_to_string(lab.hosts[1].root.join("etc/ssh/ssh_host_ed25519_key.pub"))
        .unwrap();
    let text = lab.inventory(&InventorySpec::default()).replacen(
        &format!("    address: {}\n", lab.hosts[0].cluster_ip),
        &format!(
            "    address: {}\n    ssh:\n      hostKey: {}\n",
            lab.hosts[0].cluster_ip,
            other.trim()
        ),
        1,
    );
    let pinned = c.dir.path().join("pinned.yaml");
    std::fs::write(&pinned, text).unwrap();
    let out = apply(&c, &pinned, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host key changed"),
        "{}",
        stderr(&out)
    );

    // Nothing reached any host.
    for i in 0..lab.hosts.len() {
        assert_eq!(
            lab.ssh_ok(i, "ls /var/lib/rampart /etc/kubernetes 2>/dev/null | wc -l"),
            "0"
        );
    }

    // `hosts trust --yes` pins the keys; then they are trusted.
    let out = c.run(&["hosts", "trust", "-i", inv.to_str().unwrap(), "--yes"]);
    assert_success(&out, "hosts trust --yes");
    assert_eq!(
        stdout(&out).matches(": pinned in ").count(),
        lab.hosts.len(),
        "{}",
        stdout(&out)
    );
    let out = c.run(&["hosts", "trust", "-i", inv.to_str().unwrap()]);
    assert_success(&out, "hosts trust, again");
    assert_eq!(
        stdout(&out).matches(": trusted ").count(),
        lab.hosts.len(),
        "{}",
        stdout(&out)
    );
    let out = c.run(&["plan", "-i", inv.to_str().unwrap(), "--skip-phases", SKIP]);
    assert_success(&out, "plan with the pinned keys");
}

#[test]
fn lab_bastion_apply_reaches_hosts_only_through_the_jump_host() {
    let Some(lab) = bastion_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));
    let out = apply(&c, &c.inventory, &[]);
    assert_success(&out, "apply through the bastion");
    for i in 0..3 {
        assert_eq!(etcd_healthy_members(&lab, i), 3, "{}", lab.hosts[i].name);
    }
    let out = apply(&c, &c.inventory, &[]);
    assert_success(&out, "second apply through the bastion");
    assert!(
        stdout(&out).contains("0 of 4 hosts changed"),
        "{}",
        stdout(&out)
    );
}
