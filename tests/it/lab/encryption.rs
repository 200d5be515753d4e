//! `rampart rotate encryption-key` on the lab's real etcd (Debian's
//! etcd-server under systemd, 3 members, mTLS): the scan that decides
//! whether a key may be dropped runs on a member through rampart's SSH
//! engine and counts every value under each key name, across pages, with
//! values written by the real etcdctl the way the apiserver prefixes them.
//! The rotation's rollouts restart kube-apiserver, which this lab does not
//! run; so the runbook itself is refused here, before anything changes.

use serde_json::Value;

use super::apply::{reset, SKIP};
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

/// `count` values under `/registry/<resource>/ns/<stem>-<i>`, each
/// starting with `prefix`, written in transactions of 100 puts.
fn put_values(lab: &Lab, resource: &str, stem: &str, prefix: &str, count: usize) {
    let etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
        --cacert=/etc/kubernetes/pki/etcd/ca.crt \
        --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
        --key=/etc/kubernetes/pki/etcd/healthcheck-client.key";
    // The batch's start moves in this shell; the pipe's left side is a
    // subshell, whose counters do not come back.
    let script = format!(
        "b=0; while [ $b -lt {count} ]; do\n\
         \x20 {{ echo; i=$b; while [ $i -lt $((b+100)) ] && [ $i -lt {count} ]; do\n\
         \x20     echo \"put /registry/{resource}/ns/{stem}-$i \\\"{prefix}payload-$i\\\"\"; i=$((i+1)); done; echo; echo; }} |\n\
         \x20   {etcdctl} txn >/dev/null || exit 1\n\
         \x20 b=$((b+100))\n\
         done\n"
    );
    lab.ssh_ok(0, &script);
}

#[test]
fn lab_rotate_encryption_key_scans_the_real_etcd_and_counts_every_key() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));
    let inv = c.inventory.to_str().unwrap().to_string();
    assert_success(
        &c.run(&["apply", "-i", &inv, "--skip-phases", SKIP]),
        "apply",
    );
    put_values(&lab, "secrets", "old", "k8s:enc:secretbox:v1:key1:", 2300);
    put_values(
        &lab,
        "secrets",
        "new",
        "k8s:enc:secretbox:v1:key-20261202T100000Z:",
        150,
    );
    put_values(&lab, "secrets", "plain", "", 7);
    put_values(&lab, "pods", "p", "k8s\\\\000", 40);

    let out = c.run(&[
        "rotate",
        "encryption-key",
        "-i",
        &inv,
        "--dry-run",
        "--output",
        "json",
    ]);
    assert_success(&out, "rotate encryption-key --dry-run");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let etcd = &plan["etcd"];
    assert_eq!(etcd["encrypted"]["secretbox:key1"], 2300, "{plan:#}");
    assert_eq!(etcd["encrypted"]["secretbox:key-20261202T100000Z"], 150);
    assert_eq!(etcd["plainSecrets"], 7);
    // Every value once across three pages; the cluster's own keys too.
    assert!(etcd["values"].as_u64().unwrap() >= 2497, "{etcd}");
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["add-new", "reissue", "rewrite", "drop-old", "finish"]
    );

    // The table names the counts too.
    let out = c.run(&["rotate", "encryption-key", "-i", &inv, "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("secretbox:key1 2300"), "{text}");

    // Skipping the apiserver's restarts is refused before anything changes.
    let out = c.run(&[
        "rotate",
        "encryption-key",
        "-i",
        &inv,
        "--yes",
        "--skip-phases",
        SKIP,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!c
        .state_dir
        .join("pki/encryption-key.rotation.json")
        .exists());
}
