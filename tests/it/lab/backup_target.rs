//! Backups copied to a backup target on real hosts: `apply` creates the
//! receiving account on the target with one forced-command key per etcd
//! member and gives each member its own push key; the real timer's service
//! then copies each new backup there, where the target keeps its own
//! retention and a member's key can do nothing but add that member's backups.

use std::path::Path;

use super::apply::reset;
use super::backup::age_keygen;
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const SKIP: &str = "start-control-plane,apply-manifests,start-nodes";
const TARGET: usize = 3;
const PATH: &str = "/srv/backups/lab";

/// `name mode owner` of everything in the target's folder, hidden files
/// included (a temp file left behind would show), but the receiver's
/// per-member lock files.
fn copies_on_target(lab: &Lab) -> Vec<String> {
    let out = lab.ssh_ok(
        TARGET,
        &format!("cd {PATH} && for f in $(ls -A); do stat -c '%n %a %U' \"$f\"; done"),
    );
    out.lines()
        .filter(|l| !(l.starts_with('.') && l.contains("-lock ")))
        .map(str::to_string)
        .collect()
}

#[test]
fn lab_backup_target_receives_copies_with_its_own_retention() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_keygen(work.path());
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
        lab.ssh_ok(
            TARGET,
            "ls /etc/rampart/backup.yaml 2>&1 | grep -c 'No such'"
        ),
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

    copies(&lab, &c, &inv, &identity, work.path());
}

/// The sha256 of a file on lab host `i`.
fn sha256_on(lab: &Lab, i: usize, path: &str) -> String {
    lab.ssh_ok(i, &format!("sha256sum {path} | cut -d' ' -f1"))
}

/// The copies themselves (see `lab_backup_target_…`).
fn copies(lab: &Lab, c: &Cluster, inv: &str, identity: &Path, work: &Path) {
    // The real timer's service on the first member: backup, then copy.
    lab.ssh_ok(0, "systemctl start rampart-backup.service");
    let member = &lab.hosts[0].name;
    let local = lab.ssh_ok(0, "cd /var/backups/etcd && ls *.db.age");
    let name = local.trim().to_string();
    let stem = name.trim_end_matches(".db.age");
    assert_eq!(
        copies_on_target(lab),
        [
            format!("{name} 600 rampart-backup"),
            format!("{stem}.manifest.json 600 rampart-backup"),
        ],
        "exactly the ciphertext and its manifest, the account's own, 0600"
    );
    assert_eq!(
        sha256_on(lab, TARGET, &format!("{PATH}/{name}")),
        sha256_on(lab, 0, &format!("/var/backups/etcd/{name}")),
        "byte for byte the member's backup"
    );
    let last: serde_json::Value =
        serde_json::from_str(&lab.ssh_ok(0, "cat /var/backups/etcd/last-run.json")).unwrap();
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["copy"]["ok"], true, "{last}");
    assert_eq!(
        last["copy"]["host"],
        lab.hosts[TARGET].name.as_str(),
        "{last}"
    );

    // The target's copy decrypts with the Debian age CLI and is a sound snapshot.
    let copy = lab.hosts[TARGET]
        .root
        .join(PATH.trim_start_matches('/'))
        .join(&name);
    super::backup::decrypt_and_status(identity, &copy, work);

    // The target keeps its own retention (2 per member) while the member
    // keeps 5; another member's copies are not counted against this one.
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        lab.ssh_ok(0, "systemctl start rampart-backup.service");
    }
    lab.ssh_ok(1, "systemctl start rampart-backup.service");
    let listing = copies_on_target(lab);
    let of = |m: &str| {
        listing
            .iter()
            .filter(|l| l.starts_with(&format!("lab-{m}-")) && l.contains(".db.age "))
            .count()
    };
    assert_eq!(of(member), 2, "{listing:?}");
    assert_eq!(of(&lab.hosts[1].name), 1, "{listing:?}");
    assert!(
        !listing.iter().any(|l| l.starts_with(&name)),
        "the oldest copy was pruned: {listing:?}"
    );
    assert_eq!(
        lab.ssh_ok(0, "ls /var/backups/etcd/*.db.age | wc -l"),
        "3",
        "the member keeps its own"
    );

    // A member's key runs the receiver and nothing else.
    let shell = lab.ssh(
        0,
        &format!(
            "ssh -i /etc/rampart/backup-push.key -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null rampart-backup@{} 'cat /etc/hostname; touch {PATH}/owned'",
            lab.hosts[TARGET].cluster_ip
        ),
    );
    assert!(!shell.status.success(), "the push key ran a command");
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        "",
        "no command output"
    );
    assert_eq!(
        lab.ssh_ok(TARGET, &format!("ls {PATH} | grep -c owned || true")),
        "0"
    );

    // backup list shows the target's copies, from every member.
    let out = c.run(&["backup", "list", "-i", inv, "--output", "json"]);
    assert_success(&out, "backup list");
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let target = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["target"] == true)
        .expect("the target is listed");
    assert_eq!(target["host"], lab.hosts[TARGET].name.as_str());
    assert_eq!(target["backups"].as_array().unwrap().len(), 3, "{target}");

    // A copy that fails is loud: the job fails, the local backup stays, and
    // `backup list` shows it and exits 5.
    lab.ssh_ok(
        TARGET,
        "mv /usr/local/bin/rampart /usr/local/bin/rampart.off",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let failed = lab.ssh(0, "systemctl start rampart-backup.service");
    lab.ssh_ok(
        TARGET,
        "mv /usr/local/bin/rampart.off /usr/local/bin/rampart",
    );
    assert!(
        !failed.status.success(),
        "the job must fail when the copy fails"
    );
    let last: serde_json::Value =
        serde_json::from_str(&lab.ssh_ok(0, "cat /var/backups/etcd/last-run.json")).unwrap();
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["copy"]["ok"], false, "{last}");
    let kept = last["file"].as_str().expect("the local backup is named");
    lab.ssh_ok(0, &format!("test -f /var/backups/etcd/{kept}"));
    let out = c.run(&["backup", "list", "-i", inv]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
}
