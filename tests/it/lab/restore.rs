//! `rampart backup restore` on real hosts: a 3-member etcd cluster installed by
//! `apply`, a backup taken by the real job (`rampart agent snapshot`, run here
//! inside the lab's netns against member 1), then restores that must refuse
//! bad backups before anything stops, bring deleted keys back, resume after
//! an injected failure, roll back, and restore onto a changed member set.
//!
//! One ordered scenario: the steps build on each other and share the hosts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::apply::{etcd_healthy_members, etcd_started_at, reset, SKIP};
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const ETCDCTL: &str = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
     --cacert=/etc/kubernetes/pki/etcd/ca.crt \
     --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
     --key=/etc/kubernetes/pki/etcd/healthcheck-client.key";

/// [`reset`], plus what this scenario leaves behind: restore leftovers and
/// the etcdctl wrapper of the failure injection.
fn reset_all(lab: &Lab) {
    for i in 0..lab.hosts.len() {
        lab.ssh_ok(
            i,
            "if [ -e /usr/bin/etcdctl.real ]; then mv -f /usr/bin/etcdctl.real /usr/bin/etcdctl; fi; \
             systemctl stop etcd >/dev/null 2>&1 || true; \
             rm -rf /var/lib/etcd.pre-restore-* /var/lib/etcd.rolled-back-* /var/lib/etcd.restoring-*",
        );
    }
    reset(lab);
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn etcdctl(lab: &Lab, i: usize, args: &str) -> String {
    lab.ssh_ok(i, &format!("{ETCDCTL} {args}"))
}

/// The values under `/restore-test/`, as member `i` sees them.
fn test_keys(lab: &Lab, i: usize) -> String {
    etcdctl(lab, i, "get /restore-test/ --prefix --print-value-only")
}

fn keygen(path: &Path) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, "age-keygen");
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(path)
        .output()
        .unwrap();
    assert_success(&out, "age-keygen -y");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Takes a backup of member 1 with the real job, from here (inside the
/// lab's netns), with the healthcheck client from the rendered bundle.
fn take_backup(lab: &Lab, c: &Cluster, recipient: &str) -> PathBuf {
    let bundle = c.dir.path().join("bundle");
    let out = c.run(&[
        "render",
        "-i",
        c.inventory.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_success(&out, "rampart render");
    let pki = bundle
        .join(&lab.hosts[0].name)
        .join("etc/kubernetes/pki/etcd");
    let dir = c.dir.path().join("backups");
    let config = c.dir.path().join("backup.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: lab\nmember: {}\netcdctl: /usr/bin/etcdctl\nendpoint: https://{}:2379\ncacert: {}\ncert: {}\nkey: {}\ndir: {}\nrecipients:\n  - {recipient}\n",
            lab.hosts[0].name,
            lab.hosts[0].ip,
            pki.join("ca.crt").display(),
            pki.join("healthcheck-client.crt").display(),
            pki.join("healthcheck-client.key").display(),
            dir.display()
        ),
    )
    .unwrap();
    let out = c.run(&["agent", "snapshot", "--config", config.to_str().unwrap()]);
    assert_success(&out, "rampart agent snapshot");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".db.age"))
        .expect("the job wrote a .db.age")
}

/// A copy of the backup and its manifest under `name/`, changed by `damage`.
fn damaged_copy(file: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = file.parent().unwrap().parent().unwrap().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(file.file_name().unwrap());
    let mut bytes = std::fs::read(file).unwrap();
    damage(&mut bytes);
    std::fs::write(&copy, bytes).unwrap();
    let manifest = rampart::backup::manifest_path(file);
    std::fs::copy(&manifest, dir.join(manifest.file_name().unwrap())).unwrap();
    copy
}

fn restore(
    c: &Cluster,
    inventory: &Path,
    file: Option<&Path>,
    identity: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec!["backup", "restore"];
    if let Some(f) = file {
        args.push(f.to_str().unwrap());
    }
    args.extend([
        "--identity",
        identity.to_str().unwrap(),
        "-i",
        inventory.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    c.run(&args)
}

/// Nothing changed on the members: etcd still active since the same
/// moment, no data dir moved aside.
fn assert_untouched(lab: &Lab, started: &[String], what: &str) {
    for (i, before) in started.iter().enumerate() {
        let h = &lab.hosts[i].name;
        assert_eq!(
            lab.ssh_ok(i, "systemctl is-active etcd"),
            "active",
            "{what}: {h}"
        );
        assert_eq!(
            &etcd_started_at(lab, i),
            before,
            "{what}: etcd restarted on {h}"
        );
        assert_eq!(
            lab.ssh_ok(i, "ls -d /var/lib/etcd.pre-restore-* 2>/dev/null || true"),
            "",
            "{what}: {h}"
        );
    }
}

fn restore_id(out: &Output) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    v["plan"]["id"].as_str().unwrap().to_string()
}

#[test]
fn lab_restore_refuses_bad_backups_restores_resumes_rolls_back_and_moves() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset_all(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));
    let inv = c.inventory.clone();
    let out = c.run(&["apply", "-i", inv.to_str().unwrap(), "--skip-phases", SKIP]);
    assert_success(&out, "apply");

    // Known keys, then a backup of them.
    for k in 1..=5 {
        etcdctl(&lab, 0, &format!("put /restore-test/k{k} v{k}"));
    }
    let want = "v1\nv2\nv3\nv4\nv5";
    assert_eq!(test_keys(&lab, 2), want);
    let identity = c.dir.path().join("backup-identity.txt");
    let recipient = keygen(&identity);
    let backup = take_backup(&lab, &c, &recipient);
    let started: Vec<String> = (0..3).map(|i| etcd_started_at(&lab, i)).collect();

    // Bad backups are refused (exit 10) before anything stops.
    let flipped = damaged_copy(&backup, "flipped", |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
    });
    let truncated = damaged_copy(&backup, "truncated", |b| b.truncate(b.len() / 2));
    let other = c.dir.path().join("other-identity.txt");
    keygen(&other);
    for (file, id, expect) in [
        (&flipped, &identity, "does not match its manifest"),
        (&truncated, &identity, "is truncated"),
        (&backup, &other, "none of the identities can decrypt"),
    ] {
        let out = restore(&c, &inv, Some(file), id, &["--yes"]);
        assert_eq!(out.status.code(), Some(10), "{}", text(&out));
        assert!(text(&out).contains(expect), "{}", text(&out));
        assert!(text(&out).contains("refused before anything on any host changed"));
        assert_untouched(&lab, &started, expect);
    }

    // --dry-run prints the plan and changes nothing; so does a run without --yes.
    let out = restore(&c, &inv, Some(&backup), &identity, &["--dry-run"]);
    assert_success(&out, "restore --dry-run");
    let plan = text(&out);
    for h in &lab.hosts[..3] {
        assert!(
            plan.contains(&format!("  {}: https://{}:2380 etcd 3.", h.name, h.ip)),
            "{plan}"
        );
    }
    let names: Vec<&str> = lab.hosts[..3].iter().map(|h| h.name.as_str()).collect();
    assert!(
        plan.contains(&format!(
            "hold and stop the backup job and etcd on {}",
            names.join(", ")
        )),
        "{plan}"
    );
    assert!(plan.contains("revision "), "{plan}");
    assert!(plan.contains("dry run: nothing was changed"), "{plan}");
    let out = restore(&c, &inv, Some(&backup), &identity, &[]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    assert_untouched(&lab, &started, "dry run and unconfirmed run");

    // The keys are lost...
    etcdctl(&lab, 0, "del /restore-test/ --prefix");
    assert_eq!(test_keys(&lab, 1), "");

    // ...a restore fails on rr3 halfway (its etcdctl refuses `snapshot
    // restore`), after rr1 and rr2 restored...
    lab.ssh_ok(
        2,
        "mv /usr/bin/etcdctl /usr/bin/etcdctl.real && printf '%s\\n' '#!/bin/sh' \
         'if [ \"$1 $2\" = \"snapshot restore\" ]; then echo injected failure >&2; exit 1; fi' \
         'exec /usr/bin/etcdctl.real \"$@\"' > /usr/bin/etcdctl && chmod 755 /usr/bin/etcdctl",
    );
    let out = restore(
        &c,
        &inv,
        Some(&backup),
        &identity,
        &["--yes", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("injected failure"), "{}", text(&out));
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    let id = restore_id(&out);
    let journal = |i: usize| {
        lab.ssh_ok(
            i,
            &format!("cut -f1 /var/lib/rampart/restore/{id}.journal | tr '\\n' ' '"),
        )
    };
    assert!(journal(0).contains("restored"), "{}", journal(0));
    assert!(
        !journal(2).contains("restored") && journal(2).contains("moved-aside"),
        "{}",
        journal(2)
    );
    // The plaintext does not stay on the failed member either.
    assert_eq!(
        lab.ssh_ok(2, "ls -A /var/lib/rampart/restore/"),
        format!("{id}.journal")
    );

    // ...and is resumed once rr3 is fixed: rr1 and rr2 are not restored again.
    lab.ssh_ok(2, "mv -f /usr/bin/etcdctl.real /usr/bin/etcdctl");
    let out = restore(
        &c,
        &inv,
        Some(&backup),
        &identity,
        &["--yes", "--resume", &id],
    );
    assert_success(&out, "restore --resume");
    let all = text(&out);
    let (h1, h3) = (&lab.hosts[0].name, &lab.hosts[2].name);
    assert!(all.contains(&format!("{h3}: restored revision")), "{all}");
    assert!(!all.contains(&format!("{h1}: restored revision")), "{all}");
    assert!(
        all.contains(&format!("restore {id} done: 3 member(s) healthy")),
        "{all}"
    );
    for i in 0..3 {
        let h = &lab.hosts[i].name;
        assert_eq!(test_keys(&lab, i), want, "{h}");
        assert_eq!(etcd_healthy_members(&lab, i), 3, "{h}");
        assert_eq!(
            lab.ssh_ok(i, "stat -c '%a %U:%G' /var/lib/etcd"),
            "700 etcd:etcd",
            "{h}"
        );
        // The old data is preserved, the upload is gone, the journal says done.
        assert_eq!(
            lab.ssh_ok(i, &format!("ls -d /var/lib/etcd.pre-restore-{id}/member")),
            format!("/var/lib/etcd.pre-restore-{id}/member")
        );
        assert_eq!(
            lab.ssh_ok(i, "ls -A /var/lib/rampart/restore/"),
            format!("{id}.journal"),
            "{h}"
        );
        assert!(journal(i).ends_with("done"), "{h}: {}", journal(i));
    }

    // Rollback: the pre-restore data (keys deleted) comes back; the restored
    // data is kept aside.
    let out = restore(&c, &inv, None, &identity, &["--rollback", &id, "--dry-run"]);
    assert_success(&out, "rollback --dry-run");
    assert_eq!(test_keys(&lab, 0), want, "a dry-run rollback changed data");
    let out = c.run(&[
        "backup",
        "restore",
        "-i",
        inv.to_str().unwrap(),
        "--rollback",
        &id,
        "--yes",
    ]);
    assert_success(&out, "rollback");
    for i in 0..3 {
        let h = &lab.hosts[i].name;
        assert_eq!(test_keys(&lab, i), "", "{h}");
        assert_eq!(etcd_healthy_members(&lab, i), 3, "{h}");
        assert!(
            lab.ssh_ok(i, "ls -d /var/lib/etcd.rolled-back-*/member")
                .contains("rolled-back"),
            "{h}"
        );
    }

    // A changed member set: the cluster now runs on rr2, rr3, rr4 (new
    // state, new CA); the backup of rr1..rr3 is restored into it.
    reset_all(&lab);
    let mut yaml = String::new();
    let mut n = 0;
    for line in lab.inventory(&InventorySpec::default()).lines() {
        if line.starts_with("  - name:") {
            n += 1;
        }
        let line = if line.trim_start().starts_with("roles:") {
            if n == 1 {
                "    roles: [worker]".to_string()
            } else {
                "    roles: [etcd, control-plane]".to_string()
            }
        } else {
            line.replace(
                &format!("apiEndpoint: {}:6443", lab.hosts[0].cluster_ip),
                &format!("apiEndpoint: {}:6443", lab.hosts[1].cluster_ip),
            )
        };
        yaml += &line;
        yaml.push('\n');
    }
    let moved = Cluster::init(&yaml);
    let minv = moved.inventory.clone();
    let out = moved.run(&["apply", "-i", minv.to_str().unwrap(), "--skip-phases", SKIP]);
    assert_success(&out, "apply on rr2..rr4");
    assert_eq!(test_keys(&lab, 3), "");
    let out = restore(&moved, &minv, Some(&backup), &identity, &["--yes"]);
    assert_success(&out, "restore onto rr2..rr4");
    for i in 1..4 {
        let h = &lab.hosts[i].name;
        assert_eq!(test_keys(&lab, i), want, "{h}");
        assert_eq!(etcd_healthy_members(&lab, i), 3, "{h}");
    }
    let members = etcdctl(&lab, 3, "member list");
    assert!(!members.contains(&lab.hosts[0].name), "{members}");
    assert_eq!(
        lab.ssh_ok(0, "systemctl is-active etcd || true"),
        "inactive"
    );
}
