//! `rampart certs check` on the lab: a freshly applied cluster exits 0; a
//! certificate replaced by hand on one host is drift and does not chain
//! (exit 13, that host alone); an expired one issued by the real etcd CA
//! is reported expired (exit 13) but chains; `--warn-days` past every
//! expiry gives the "expiring" code (12). `apply` puts each fault back.

use std::process::Command;

use rampart::pki::catalogue;
use rampart::pki::issue::{Policy, Signer};
use serde_json::Value;

use super::apply::{reset, SKIP};
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const SERVER_CRT: &str = "/etc/kubernetes/pki/etcd/server.crt";

fn check(c: &Cluster, extra: &[&str]) -> (i32, Value) {
    let inv = c.inventory.to_str().unwrap();
    let mut args = vec!["certs", "check", "-i", inv, "--output", "json"];
    args.extend_from_slice(extra);
    let out = c.run(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "certs check printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// `(host, id, message)` of every failure.
fn failures(report: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for h in report["hosts"].as_array().unwrap() {
        for f in h["findings"].as_array().unwrap() {
            if f["severity"] == "failure" {
                out.push((
                    h["host"].as_str().unwrap().to_string(),
                    f["id"].as_str().unwrap().to_string(),
                    f["message"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

fn apply(c: &Cluster) {
    let inv = c.inventory.to_str().unwrap();
    assert_success(
        &c.run(&["apply", "-i", inv, "--skip-phases", SKIP]),
        "apply",
    );
}

fn put(lab: &Lab, host: usize, path: &str, pem: &str) {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem);
    lab.ssh_ok(host, &format!("echo {b64} | base64 -d > {path}"));
}

#[test]
fn lab_certs_check_reports_drift_expiry_and_chain_with_distinct_codes() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));
    apply(&c);
    let (code, report) = check(&c, &[]);
    assert_eq!(code, 0, "{report:#}");
    let certs: u64 = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["checked"]["certificates"].as_u64().unwrap())
        .sum();
    assert!(certs > 40, "only {certs} certificates read");

    // Replaced by hand with a self-signed certificate.
    let dir = c.dir.path();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=by-hand"])
        .arg("-keyout")
        .arg(dir.join("by-hand.key"))
        .arg("-out")
        .arg(dir.join("by-hand.crt"))
        .output()
        .unwrap();
    assert_success(&out, "openssl req");
    let by_hand = std::fs::read_to_string(dir.join("by-hand.crt")).unwrap();
    put(&lab, 1, SERVER_CRT, &by_hand);
    let (code, report) = check(&c, &[]);
    assert_eq!(code, 13, "{report:#}");
    let found = failures(&report);
    let host = &lab.hosts[1].name;
    assert!(
        found.iter().all(|(h, id, _)| h == host && id == SERVER_CRT),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(_, _, m)| m.contains("changed on the host")),
        "{found:?}"
    );
    // openssl's self-signed certificate is a CA: not one the state dir trusts.
    assert!(
        found
            .iter()
            .any(|(_, _, m)| m.contains("CA the state dir does not trust")),
        "{found:?}"
    );
    apply(&c);
    assert_eq!(check(&c, &[]).0, 0);

    // Issued by the real etcd CA, a year and a day ago, for one day.
    let (inv, pki) = c.pki();
    let name = format!("etcd-server-{host}");
    let spec = catalogue(&inv)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap();
    let signer = Signer::new("etcd-ca", pki.get("etcd-ca")).unwrap();
    let policy = Policy {
        key_algorithm: inv.security.key_algorithm,
        ca_validity_days: 1,
        leaf_validity_days: 1,
        now: time::OffsetDateTime::now_utc() - time::Duration::days(366),
    };
    let expired = signer.sign(&spec, &policy).unwrap();
    put(&lab, 1, SERVER_CRT, &expired.cert_pem);
    let (code, report) = check(&c, &[]);
    assert_eq!(code, 13, "{report:#}");
    let found = failures(&report);
    assert!(
        found.iter().any(|(_, _, m)| m.contains("expired on")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|(_, _, m)| m.contains("trust")),
        "{found:?}"
    );
    apply(&c);

    // Every certificate inside the warning window: expiring, not failing.
    let (code, report) = check(&c, &["--warn-days", "4000"]);
    assert_eq!(code, 12, "{report:#}");
    assert!(failures(&report).is_empty());
}
