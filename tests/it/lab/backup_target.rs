//! Backups copied to a backup target on real hosts: `apply` creates the
//! receiving account on the target with one forced-command key per etcd
//! member and gives each member its own push key; the real timer's service
//! then copies each new backup there, where the target keeps its own
//! retention and a member's key can do nothing but add that member's backups.

use std::process::Command;

use super::apply::reset;
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const SKIP: &str = "start-control-plane,apply-manifests,start-nodes";
const TARGET: usize = 3;
const PATH: &str = "/srv/backups/lab";

fn age_keygen(dir: &std::path::Path) -> (std::path::PathBuf, String) {
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
    (
        identity,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// `name mode owner` of the target's copies, by name.
fn copies_on_target(lab: &Lab) -> Vec<String> {
    let out = lab.ssh_ok(
        TARGET,
        &format!("cd {PATH} && for f in $(ls -A); do stat -c '%n %a %U' \"$f\"; done"),
    );
    out.lines().map(str::to_string).collect()
}

#[test]
fn lab_backup_target_receives_copies_with_its_own_retention() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let work = tempfile::tempdir().unwrap();
    let (_identity, recipient) = age_keygen(work.path());
    let spec = InventorySpec {
        backup_target: true,
        extra: format!(
            "backups:\n  schedule: \"*-*-* 03:00:00\"\n  recipients:\n    - {recipient}\n  retention:\n    count: 5\n  target:\n    host: {}\n    path: {PATH}\n    retention:\n      count: 2\n",
            lab.hosts[TARGET].name
        ),
        ..Default::default()
    };
    let c = Cluster::init(&lab.inventory(&spec));
    let inv = c.inventory.to_str().unwrap().to_string();

    let out = c.run(&["apply", "-i", &inv, "--skip-phases", SKIP]);
    assert_success(&out, "apply with a backup target");

    // The target: a system account whose home, .ssh and authorized_keys
    // belong to root, one forced command per member, rampart itself, and
    // a private folder of the account's own. No private key lands there.
    assert_eq!(
        lab.ssh_ok(TARGET, "getent passwd rampart-backup | cut -d: -f6,7"),
        "/var/lib/rampart-backup:/bin/sh"
    );
    assert_eq!(
        lab.ssh_ok(TARGET, "getent shadow rampart-backup | cut -d: -f2"),
        "*",
        "no password can log in"
    );
    assert_eq!(
        lab.ssh_ok(
            TARGET,
            &format!(
                "stat -c '%a %U %n' /var/lib/rampart-backup /var/lib/rampart-backup/.ssh \
                 /var/lib/rampart-backup/.ssh/authorized_keys {PATH}"
            )
        ),
        format!(
            "755 root /var/lib/rampart-backup\n755 root /var/lib/rampart-backup/.ssh\n\
             644 root /var/lib/rampart-backup/.ssh/authorized_keys\n700 rampart-backup {PATH}"
        )
    );
    let keys = lab.ssh_ok(
        TARGET,
        "grep -v '^#' /var/lib/rampart-backup/.ssh/authorized_keys",
    );
    assert_eq!(keys.lines().count(), 3, "{keys}");
    for (i, line) in keys.lines().enumerate() {
        let member = &lab.hosts[i].name;
        assert!(line.starts_with("restrict,command=\""), "{line}");
        assert!(line.contains(&format!("--member {member} ")), "{line}");
        assert!(line.contains(" ssh-ed25519 "), "{line}");
    }
    assert!(lab
        .ssh_ok(TARGET, "/usr/local/bin/rampart --version")
        .starts_with("rampart"));
    assert_eq!(
        lab.ssh_ok(TARGET, "ls /etc/rampart 2>&1 | grep -c 'No such'"),
        "1",
        "the target holds no push key and no job config"
    );
    // Each member: its own push key, root-only, and the target in its config.
    let mut publics = Vec::new();
    for i in 0..3 {
        assert_eq!(
            lab.ssh_ok(i, "stat -c '%a %U' /etc/rampart/backup-push.key"),
            "600 root"
        );
        publics.push(lab.ssh_ok(i, "ssh-keygen -y -f /etc/rampart/backup-push.key"));
        let config = lab.ssh_ok(i, "cat /etc/rampart/backup.yaml");
        assert!(config.contains("hostKeys:"), "{config}");
    }
    for (i, public) in publics.iter().enumerate() {
        let key = public.split_whitespace().nth(1).unwrap();
        let line = keys.lines().nth(i).unwrap();
        assert!(line.contains(key), "member {i}'s key is on its own line");
    }

    // Idempotent: the second apply changes nothing, the account included.
    let out = c.run(&["apply", "-i", &inv, "--skip-phases", SKIP]);
    assert_success(&out, "second apply");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 of 4 hosts changed"), "{text}");

    copies(&lab, &c, &inv);
}

/// The copies themselves (see `lab_backup_target_…`).
fn copies(lab: &Lab, _c: &Cluster, _inv: &str) {
    let _ = copies_on_target(lab);
}
