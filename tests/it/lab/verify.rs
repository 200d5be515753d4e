//! `rampart verify` on the lab: a freshly applied cluster passes, and each
//! way a real cluster goes wrong is reported with its severity and exit
//! code: a hand-edited flag, a key made world-readable, a stopped etcd
//! member, a failed backup run, a certificate about to expire. Each fault is
//! undone before the next, so the host is left as apply left it.

use std::process::Output;

use serde_json::Value;

use super::apply::{reset, SKIP};
use super::backup::age_keygen;
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const FAILURES: i32 = 13;
const WARNINGS: i32 = 12;

fn verify(c: &Cluster, extra: &[&str]) -> (i32, Value, Output) {
    let inv = c.inventory.to_str().unwrap();
    let mut args = vec!["verify", "-i", inv, "--output", "json"];
    args.extend_from_slice(extra);
    let out = c.run(&args);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json, out)
}

/// `(host, area, severity, id, message)` of every finding of `severity` or worse.
fn findings(report: &Value, at_least: &str) -> Vec<(String, String, String, String, String)> {
    let rank = |s: &str| ["info", "warning", "failure"].iter().position(|x| *x == s);
    let mut out = Vec::new();
    for h in report["hosts"].as_array().unwrap() {
        for f in h["findings"].as_array().unwrap() {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            if rank(&s("severity")) >= rank(at_least) {
                out.push((
                    h["host"].as_str().unwrap().to_string(),
                    s("area"),
                    s("severity"),
                    s("id"),
                    s("message"),
                ));
            }
        }
    }
    out
}

fn has(
    found: &[(String, String, String, String, String)],
    host: &str,
    area: &str,
    severity: &str,
    id_part: &str,
) -> bool {
    found.iter().any(|(h, a, s, id, m)| {
        h == host && a == area && s == severity && (id.contains(id_part) || m.contains(id_part))
    })
}

/// Runs the host scan on host `i` now: whether it passed, and the drifted
/// files its metrics report.
fn scan(lab: &Lab, i: usize) -> (bool, u64) {
    let ok = lab
        .ssh(i, "systemctl start rampart-scan.service")
        .status
        .success();
    let metrics = lab.ssh_ok(i, "cat /var/lib/prometheus/node-exporter/rampart.prom");
    let drift = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rampart_scan_drifted_files "))
        .unwrap_or_else(|| panic!("no drift metric in {metrics}"))
        .parse()
        .unwrap();
    // A failed scan leaves its unit failed; the lab's other tests want none.
    lab.ssh_ok(i, "systemctl reset-failed rampart-scan.service");
    (ok, drift)
}

fn clean(lab: &Lab, c: &Cluster, what: &str) {
    let (code, report, out) = verify(c, &[]);
    let bad = findings(&report, "warning");
    assert_eq!(
        code,
        0,
        "{what}: {bad:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["hosts"].as_array().unwrap().len(), lab.hosts.len());
}

#[test]
fn lab_verify_reports_each_fault_with_its_severity() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let work = tempfile::tempdir().unwrap();
    let (_identity, recipient) = age_keygen(work.path());
    let spec = InventorySpec {
        extra: format!(
            "backups:\n  schedule: \"*-*-* 03:00:00\"\n  recipients:\n    - {recipient}\n"
        ),
        ..Default::default()
    };
    let c = Cluster::init(&lab.inventory(&spec));
    let inv = c.inventory.to_str().unwrap().to_string();
    assert_success(
        &c.run(&["apply", "-i", &inv, "--skip-phases", SKIP]),
        "apply",
    );
    assert_success(&c.run(&["backup", "now", "-i", &inv]), "backup now");

    // Fresh: nothing worse than info, and every host says what it checked.
    let (code, report, out) = verify(&c, &[]);
    assert_eq!(
        code,
        0,
        "{:#?}\n{}",
        findings(&report, "warning"),
        String::from_utf8_lossy(&out.stderr)
    );
    for h in report["hosts"].as_array().unwrap() {
        let checked = &h["checked"];
        assert!(checked["cisAutomated"].as_u64().unwrap() > 0, "{h}");
        assert!(checked["files"].as_u64().unwrap() > 0, "{h}");
        assert!(checked["certificates"].as_u64().unwrap() > 0, "{h}");
    }
    // The host-side scan: its timer runs on every host, and a run on a
    // fresh host passes and says so in its metrics.
    for i in 0..lab.hosts.len() {
        assert_eq!(
            lab.ssh_ok(i, "systemctl is-active rampart-scan.timer"),
            "active"
        );
    }
    assert_eq!(scan(&lab, 0), (true, 0));
    let etcd_units = report["hosts"][0]["checked"]["units"].as_u64().unwrap();
    assert!(etcd_units >= 2, "etcd and the backup timer: {report}");
    let host = |i: usize| lab.hosts[i].name.clone();

    // A flag edited by hand in the apiserver's unit: drift and the CIS check.
    lab.ssh_ok(
        0,
        "sed -i 's/--profiling=false/--profiling=true/' /etc/systemd/system/kube-apiserver.service",
    );
    let (code, report, _) = verify(&c, &[]);
    let bad = findings(&report, "warning");
    assert_eq!(code, FAILURES, "{bad:#?}");
    assert!(
        has(&bad, &host(0), "drift", "failure", "kube-apiserver.service"),
        "{bad:#?}"
    );
    assert!(
        has(&bad, &host(0), "cis", "failure", "profiling"),
        "{bad:#?}"
    );
    lab.ssh_ok(
        0,
        "sed -i 's/--profiling=true/--profiling=false/' /etc/systemd/system/kube-apiserver.service",
    );
    clean(&lab, &c, "after the flag was put back");

    // A private key made world-readable.
    lab.ssh_ok(0, "chmod 644 /etc/kubernetes/pki/apiserver.key");
    let (code, report, _) = verify(&c, &[]);
    let bad = findings(&report, "warning");
    assert_eq!(code, FAILURES, "{bad:#?}");
    assert!(
        has(&bad, &host(0), "drift", "failure", "apiserver.key"),
        "{bad:#?}"
    );
    // 1.1.21 is a manual check in CIS 1.12 whose test kube-bench still runs.
    assert!(has(&bad, &host(0), "cis", "warning", "1.1.21"), "{bad:#?}");
    // The host's own scan sees it too, without rampart.
    assert_eq!(scan(&lab, 0), (false, 1));
    lab.ssh_ok(0, "chmod 600 /etc/kubernetes/pki/apiserver.key");
    assert_eq!(scan(&lab, 0), (true, 0));
    clean(&lab, &c, "after the key's mode was put back");

    // A stopped etcd member: down on its host, quorum degraded on the others.
    lab.ssh_ok(2, "systemctl stop etcd");
    let (code, report, _) = verify(&c, &[]);
    let bad = findings(&report, "warning");
    assert_eq!(code, FAILURES, "{bad:#?}");
    assert!(
        has(&bad, &host(2), "health", "failure", "etcd.service"),
        "{bad:#?}"
    );
    assert!(
        has(&bad, &host(0), "health", "failure", "quorum holds"),
        "{bad:#?}"
    );
    lab.ssh_ok(2, "systemctl start etcd");
    clean(&lab, &c, "after etcd was started again");

    // A backup run that failed (its binary gone for the run).
    lab.ssh_ok(
        0,
        "mv /usr/local/bin/rampart /usr/local/bin/rampart.off; \
         systemctl start rampart-backup.service >/dev/null 2>&1; \
         mv /usr/local/bin/rampart.off /usr/local/bin/rampart; true",
    );
    let (code, report, _) = verify(&c, &[]);
    let bad = findings(&report, "warning");
    assert_eq!(code, FAILURES, "{bad:#?}");
    assert!(
        has(&bad, &host(0), "backups", "failure", "failed"),
        "{bad:#?}"
    );
    lab.ssh_ok(0, "systemctl start rampart-backup.service");
    clean(&lab, &c, "after a good backup run");

    // Certificates expiring within --warn-days: warnings only, their own code.
    let (code, report, _) = verify(&c, &["--warn-days", "4000"]);
    let bad = findings(&report, "warning");
    assert_eq!(code, WARNINGS, "{bad:#?}");
    assert!(
        bad.iter()
            .all(|f| f.1 == "certificates" && f.2 == "warning"),
        "{bad:#?}"
    );
    assert!(
        has(
            &bad,
            &host(3),
            "certificates",
            "warning",
            "/etc/kubernetes/pki/ca.crt"
        ),
        "{bad:#?}"
    );

    // The same verdict as JUnit XML, and as a table.
    let out = c.run(&[
        "verify",
        "-i",
        &inv,
        "--output",
        "junit",
        "--warn-days",
        "4000",
    ]);
    assert_eq!(out.status.code(), Some(WARNINGS));
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), lab.hosts.len(), "{xml}");
    let out = c.run(&["verify", "-i", &inv]);
    assert_success(&out, "verify (table)");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("the cluster is as rampart rendered it"),
        "{table}"
    );
}
