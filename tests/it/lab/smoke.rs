//! Smoke tests of the lab itself and of the harness: the hosts answer over
//! plain OpenSSH, the generated inventories pass `rampart check` and `rampart
//! init`, and in the bastion lab the inner hosts are reachable only through
//! the jump host. None of them changes a host.

use super::{assert_success, bastion_lab, lock, main_lab, rampart, Cluster, InventorySpec, Lab};

/// `rampart check -i <inventory written for spec>` must exit 0.
fn check_ok(lab: &Lab, spec: &InventorySpec) {
    let inv = lab.write_inventory(spec);
    let out = rampart(&["check", "-i", inv.to_str().unwrap()], &[]);
    assert_success(
        &out,
        &format!(
            "rampart check of the lab inventory ({spec:?}):\n{}",
            lab.inventory(spec)
        ),
    );
}

#[test]
fn lab_hosts_answer_over_ssh() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    // Whatever an earlier test left (a backup unit it made fail, say) is not
    // the lab's health: start from hosts as the image has them.
    super::apply::reset(&lab);
    assert_eq!(lab.hosts.len(), 4, "tests/run.sh brings up 4 hosts");
    for (i, h) in lab.hosts.iter().enumerate() {
        assert_eq!(
            lab.ssh_ok(i, "systemctl is-system-running"),
            "running",
            "{}",
            h.name
        );
        let etcd = lab.ssh_ok(i, "etcd --version");
        assert!(etcd.starts_with("etcd Version: 3.4."), "{}: {etcd}", h.name);
        // The host seen over ssh is the one whose filesystem `root` shows.
        assert_eq!(lab.ssh_ok(i, "hostname"), h.name);
        let hostname = std::fs::read_to_string(h.root.join("etc/hostname")).unwrap();
        assert_eq!(hostname.trim(), h.name);
        assert!(h.changes.join("etc/hostname").is_file(), "{}", h.name);
    }
}

#[test]
fn lab_sudo_user_logs_in_and_becomes_root() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    for i in 0..lab.hosts.len() {
        let out = lab.ssh_as(&lab.sudo_user, i, "id -un && sudo -n id -u");
        assert_success(&out, &lab.hosts[i].name);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n0\n", lab.sudo_user)
        );
    }
}

#[test]
fn lab_inventory_is_valid_and_inits() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    check_ok(&lab, &InventorySpec::default());
    check_ok(
        &lab,
        &InventorySpec {
            cluster: Some("lab-sudo".into()),
            sudo: true,
            extra: "security:\n  keyAlgorithm: ecdsa-p384\n  leafValidityDays: 90\n".into(),
            ..InventorySpec::default()
        },
    );
    let yaml = lab.inventory(&InventorySpec::default());
    let cluster = Cluster::init(&yaml);
    assert!(cluster.state_dir.is_dir());
    let out = cluster.run(&["certs", "list", "--output", "json"]);
    assert_success(&out, "rampart certs list");
    // Every host's serving certificates were issued for its lab address.
    let list = String::from_utf8_lossy(&out.stdout);
    for h in &lab.hosts {
        assert!(
            list.contains(&h.cluster_ip),
            "{} not in {list}",
            h.cluster_ip
        );
    }
    // init is idempotent
    let inv = cluster.inventory.to_str().unwrap();
    assert_success(&cluster.run(&["init", "-i", inv]), "second rampart init");
}

#[test]
fn lab_bastion_hosts_only_via_jump() {
    let Some(lab) = bastion_lab() else { return };
    let _lab = lock();
    assert!(!lab.hosts[0].behind_bastion);
    assert_eq!(lab.ssh_ok(0, "hostname"), lab.hosts[0].name);
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        assert!(h.behind_bastion, "{}", h.name);
        // through the jump host (-J)
        assert_eq!(lab.ssh_ok(i, "hostname"), h.name);
        assert_eq!(lab.ssh_ok(i, "systemctl is-system-running"), "running");
        // and not directly: the operator has no route to the inner network,
        // so the connect is refused (unreachable), not left to time out
        let direct = lab
            .ssh_cmd(i, "root", false)
            .args(["-o", "ConnectTimeout=3", "--", "true"])
            .output()
            .unwrap();
        assert!(
            !direct.status.success(),
            "{} answered without the jump host",
            h.name
        );
        let err = String::from_utf8_lossy(&direct.stderr);
        assert!(err.contains("unreachable"), "{}: {err}", h.name);
    }
}

#[test]
fn lab_bastion_inventory_is_valid_and_inits() {
    let Some(lab) = bastion_lab() else { return };
    let _lab = lock();
    let yaml = lab.inventory(&InventorySpec::default());
    assert!(yaml.contains("  bastion:\n"), "{yaml}");
    check_ok(&lab, &InventorySpec::default());
    check_ok(
        &lab,
        &InventorySpec {
            sudo: true,
            ..InventorySpec::default()
        },
    );
    Cluster::init(&yaml);
}
