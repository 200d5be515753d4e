//! Scheduled, encrypted etcd backups on real hosts: `apply` installs the job
//! (rampart itself, its config and a systemd timer) on the etcd members; the
//! real timer's service writes age-encrypted snapshots that the Debian `age`
//! CLI decrypts and `etcdctl snapshot status` accepts; `backup now | list |
//! pull` drive and read it over SSH.

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use super::apply::reset;
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const SKIP: &str = "start-control-plane,apply-manifests,start-nodes";
const DIR: &str = "/var/backups/etcd";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etcdctl_on(lab: &Lab, i: usize, args: &str) -> String {
    lab.ssh_ok(
        i,
        &format!(
            "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
             --cacert=/etc/kubernetes/pki/etcd/ca.crt \
             --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
             --key=/etc/kubernetes/pki/etcd/healthcheck-client.key {args}"
        ),
    )
}

/// The backups (`.db.age`) in the member's backup dir, by name.
fn backups_on(lab: &Lab, i: usize) -> Vec<String> {
    let listing = lab.ssh_ok(i, &format!("ls -A {DIR}"));
    let mut names: Vec<String> = listing
        .lines()
        .filter(|l| l.ends_with(".db.age"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// A new age identity in `dir` (with the Debian `age-keygen`) and its recipient.
pub(super) fn age_keygen(dir: &Path) -> (std::path::PathBuf, String) {
    let identity = dir.join("backup-identity.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap();
    assert_success(&out, "age-keygen");
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&identity)
        .output()
        .unwrap();
    (identity, stdout(&out).trim().to_string())
}

/// Decrypts `backup` with the Debian `age` CLI into `work` and returns
/// `etcdctl snapshot status -w json` of the plaintext (interop, not our code).
pub(super) fn decrypt_and_status(identity: &Path, backup: &Path, work: &Path) -> serde_json::Value {
    let plain = work.join("plain.db");
    let age = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(&plain)
        .arg(backup)
        .output()
        .unwrap();
    assert_success(&age, "age -d");
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_success(&status, "etcdctl snapshot status");
    std::fs::remove_file(&plain).unwrap();
    serde_json::from_slice(&status.stdout).unwrap()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn lab_backups_are_scheduled_encrypted_listed_and_pulled() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_keygen(work.path());
    let spec = InventorySpec {
        extra: format!(
            "backups:\n  schedule: \"*-*-* 03:00:00\"\n  recipients:\n    - {recipient}\n  retention:\n    count: 3\n"
        ),
        ..Default::default()
    };
    let c = Cluster::init(&lab.inventory(&spec));
    let inv = c.inventory.to_str().unwrap().to_string();

    // apply installs the job on the etcd members only, and starts its timer.
    let out = c.run(&["apply", "-i", &inv, "--skip-phases", SKIP]);
    assert_success(&out, "apply with backups");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("backups scheduled, next run").count(),
        3,
        "{err}"
    );
    let local_sha = sha256_of(Path::new(env!("CARGO_BIN_EXE_rampart")));
    for i in 0..3 {
        assert_eq!(
            lab.ssh_ok(i, "systemctl is-enabled rampart-backup.timer"),
            "enabled"
        );
        assert!(lab
            .ssh_ok(
                i,
                "systemctl show rampart-backup.timer -p TimersCalendar --value"
            )
            .contains("03:00:00"));
        let remote_sha = lab.ssh_ok(i, "sha256sum /usr/local/bin/rampart | cut -d' ' -f1");
        assert_eq!(remote_sha, local_sha, "the job is this very binary");
        assert_eq!(
            lab.ssh_ok(
                i,
                &format!("stat -c '%a %U' /etc/rampart/backup.yaml {DIR}")
            ),
            "600 root\n700 root"
        );
    }
    assert_eq!(
        lab.ssh_ok(
            3,
            "ls /usr/local/bin/rampart /etc/rampart/backup.yaml 2>&1 | grep -c 'No such'"
        ),
        "2",
        "the worker runs no backup job"
    );

    // Known keys, then the real timer's service, as systemd would start it.
    for k in 0..5 {
        etcdctl_on(&lab, 0, &format!("put /rampart-test/k{k} v{k}"));
    }
    lab.ssh_ok(0, "systemctl start rampart-backup.service");
    let files = backups_on(&lab, 0);
    assert_eq!(files.len(), 1, "{files:?}");
    // Only the ciphertext, its manifest and the run record, all 0600: no
    // plaintext (the job's `.work` dir is gone or empty).
    let listing = lab.ssh_ok(0, &format!("cd {DIR} && stat -c '%a %n' $(ls -A)"));
    let name = files[0].trim_end_matches(".db.age");
    let want = format!("600 {name}.db.age\n600 {name}.manifest.json\n600 last-run.json");
    let listing: Vec<&str> = listing.lines().filter(|l| !l.ends_with(" .work")).collect();
    assert_eq!(listing.join("\n"), want);
    assert_eq!(
        lab.ssh_ok(0, &format!("ls -A {DIR}/.work 2>/dev/null | wc -l")),
        "0",
        "plaintext left"
    );

    // The Debian age CLI decrypts it; etcdctl accepts the snapshot.
    let copy = lab.hosts[0]
        .root
        .join(DIR.trim_start_matches('/'))
        .join(&files[0]);
    let status = decrypt_and_status(&identity, &copy, work.path());
    assert!(status["totalKey"].as_u64().unwrap() >= 5, "{status}");

    // backup now / list / pull from the admin machine.
    let out = c.run(&["backup", "now", "-i", &inv]);
    assert_success(&out, "backup now");
    let out = c.run(&["backup", "list", "-i", &inv, "--output", "json"]);
    assert_success(&out, "backup list");
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert!(!m["backups"].as_array().unwrap().is_empty(), "{m}");
        assert_eq!(m["timer"], "active", "{m}");
        assert!(!m["next_run"].as_str().unwrap().is_empty(), "{m}");
        assert_eq!(m["last_run"]["ok"], true, "{m}");
    }
    let pulled = work.path().join("pulled");
    let out = c.run(&[
        "backup",
        "pull",
        "-i",
        &inv,
        "--to",
        pulled.to_str().unwrap(),
        "--latest",
    ]);
    assert_success(&out, "backup pull");
    for h in &lab.hosts[..3] {
        let dir = pulled.join(&h.name);
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".db.age"))
            .unwrap_or_else(|| panic!("nothing pulled from {}", h.name));
        let verify = c.run(&[
            "backup",
            "verify",
            file.to_str().unwrap(),
            "--identity",
            identity.to_str().unwrap(),
        ]);
        assert_success(&verify, "backup verify of a pulled copy");
        assert!(
            stdout(&verify).contains("matches its manifest"),
            "{}",
            stdout(&verify)
        );
    }
    // Pulling again copies nothing.
    let out = c.run(&[
        "backup",
        "pull",
        "-i",
        &inv,
        "--to",
        pulled.to_str().unwrap(),
        "--latest",
    ]);
    assert_eq!(
        stdout(&out).matches("already here").count(),
        3,
        "{}",
        stdout(&out)
    );

    // Retention keeps 3: two more runs on rl1 (names carry the second).
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        lab.ssh_ok(0, "systemctl start rampart-backup.service");
    }
    let files = backups_on(&lab, 0);
    assert_eq!(files.len(), 3, "{files:?}");

    // A failing job (etcd down) is loud: non-zero, recorded, listed.
    lab.ssh_ok(0, "systemctl stop etcd");
    let out = c.run(&["backup", "now", "-i", &inv, "--hosts", &lab.hosts[0].name]);
    assert!(!out.status.success(), "a backup without etcd succeeded");
    assert_eq!(
        backups_on(&lab, 0),
        files,
        "a failed run changed the backups"
    );
    let out = c.run(&["backup", "list", "-i", &inv]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(stdout(&out).contains("FAILED"), "{}", stdout(&out));
    assert_eq!(
        lab.ssh_ok(0, "systemctl show rampart-backup.service -p Result --value"),
        "exit-code"
    );
    lab.ssh_ok(
        0,
        "systemctl start etcd; systemctl reset-failed rampart-backup.service",
    );

    // Nothing to change on a second apply (binary, config, units, timer).
    let out = c.run(&["plan", "-i", &inv, "--skip-phases", SKIP]);
    assert_success(&out, "plan after the backups");
    assert!(stdout(&out).contains("no changes"), "{}", stdout(&out));
}
