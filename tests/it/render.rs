//! Golden and structural tests of `render::render` on a single-node and an HA inventory.
//!
//! The PKI is faked with placeholder PEM text (the issuance engineer's real PKI is
//! not needed to pin what render does with it); snapshots redact PEM blocks and
//! base64 credential data anyway so they survive real certificates.

use std::path::Path;

use rampart::inventory::{self, Inventory};
use rampart::pki::{names, Issued, Pki};
use rampart::render::{self, Bundle, Contents, Service};
use rampart::secret::Secret;

pub const SINGLE_NODE: &str = r#"
cluster:
  name: solo
  kubernetesVersion: "1.34"
ssh:
  user: admin
  become: sudo
hosts:
  - name: node1
    address: 192.168.56.10
    roles: [etcd, control-plane, worker]
tenants:
  - namespace: team-a
    network:
      allowSameNamespace: true
    members:
      - user: alice@example.com
        role: admin
      - group: team-a-devs
        role: edit
"#;

pub const HA: &str = r#"
cluster:
  name: prod
  kubernetesVersion: v1.33.2
  apiEndpoint: api.prod.example.com:6443
  serviceCidr: 10.96.0.0/12
  podCidr: 10.244.0.0/16
  clusterDomain: cluster.local
ssh:
  user: admin
  become: sudo
hosts:
  - name: cp1
    address: 10.0.0.11
    roles: [etcd, control-plane]
  - name: cp2
    address: 10.0.0.12
    roles: [etcd, control-plane]
  - name: cp3
    address: 10.0.0.13
    roles: [etcd, control-plane]
  - name: w1
    address: 10.0.1.21
    roles: [worker]
  - name: w2
    address: 10.0.1.22
    roles: [worker]
security:
  encryptionProvider: aescbc
  auditLog:
    maxAgeDays: 90
    maxBackups: 20
    maxSizeMb: 200
  tls:
    minVersion: VersionTLS13
tenants:
  - namespace: payments
    network:
      allowDns: false
    members:
      - group: payments-oncall
        role: view
"#;

pub fn inventory(yaml: &str) -> Inventory {
    inventory::parse(yaml, Path::new("test.yaml"))
        .expect("test inventory is valid")
        .inventory
}

fn issued(name: &str) -> Issued {
    Issued {
        cert_pem: format!("-----BEGIN CERTIFICATE-----\nFAKE {name}\n-----END CERTIFICATE-----\n"),
        key_pem: Secret::from(format!(
            "-----BEGIN PRIVATE KEY-----\nFAKE {name} key\n-----END PRIVATE KEY-----\n"
        )),
    }
}

/// Every certificate the catalogue would issue for `inv`, as placeholders.
pub fn fake_pki(inv: &Inventory) -> Pki {
    let mut all: Vec<String> = [
        names::CA,
        names::ETCD_CA,
        names::FRONT_PROXY_CA,
        names::APISERVER,
        names::APISERVER_KUBELET_CLIENT,
        names::APISERVER_ETCD_CLIENT,
        names::FRONT_PROXY_CLIENT,
        names::ETCD_HEALTHCHECK_CLIENT,
        names::CONTROLLER_MANAGER,
        names::SCHEDULER,
        names::KUBE_PROXY,
        names::ADMIN,
        names::SUPER_ADMIN,
    ]
    .map(String::from)
    .to_vec();
    for m in inv.etcd_members() {
        all.push(names::etcd_server(&m.name));
        all.push(names::etcd_peer(&m.name));
    }
    for n in inv.nodes() {
        all.push(names::kubelet_client(&n.name));
        all.push(names::kubelet_serving(&n.name));
    }
    Pki {
        certs: all.iter().map(|n| (n.clone(), issued(n))).collect(),
        trust: Default::default(),
        service_account_key: Secret::from(
            "-----BEGIN PRIVATE KEY-----\nFAKE sa\n-----END PRIVATE KEY-----\n".to_string(),
        ),
        service_account_pub: "-----BEGIN PUBLIC KEY-----\nFAKE sa\n-----END PUBLIC KEY-----\n"
            .into(),
        encryption_keys: vec![rampart::pki::EncryptionKey {
            name: "key1".into(),
            key: Secret::new(vec![0x42; 32]),
        }],
        push_keys: push_keys(inv),
    }
}

/// Placeholder push keys for the etcd members when backups go to a target.
fn push_keys(inv: &Inventory) -> std::collections::BTreeMap<String, rampart::pki::PushKey> {
    let copies = inv.backups.as_ref().is_some_and(|b| b.target.is_some());
    inv.etcd_members()
        .filter(|_| copies)
        .map(|m| {
            let key = rampart::pki::PushKey {
                private: Secret::from(format!("FAKE push key {}\n", m.name)),
                public: format!(
                    "ssh-ed25519 AAAAFAKE{} rampart-backup-push:{}/{}",
                    m.name, inv.cluster.name, m.name
                ),
            };
            (m.name.clone(), key)
        })
        .collect()
}

pub fn rendered(yaml: &str) -> (Inventory, Bundle) {
    let inv = inventory(yaml);
    let bundle = render::render(&inv, &fake_pki(&inv)).expect("render");
    (inv, bundle)
}

/// The text of one rendered file of one host.
fn file_text(bundle: &Bundle, host: &str, path: &str) -> String {
    let file = bundle.hosts[host]
        .file(path)
        .unwrap_or_else(|| panic!("{host} has no {path}"));
    String::from_utf8_lossy(file.contents.bytes()).into_owned()
}

fn is_pem(f: &render::File) -> bool {
    f.contents.bytes().starts_with(b"-----BEGIN")
}

/// The manifest with hashes of secret and PKI-derived files redacted.
fn manifest_json(bundle: &Bundle, host: &str) -> serde_json::Value {
    let hb = &bundle.hosts[host];
    let mut m = serde_json::to_value(hb.manifest(host)).unwrap();
    for (entry, f) in m["files"].as_array_mut().unwrap().iter_mut().zip(&hb.files) {
        if f.contents.is_secret() || is_pem(f) {
            entry["sha256"] = "[redacted]".into();
        }
    }
    m
}

/// Every plain, non-PEM file of a host, one after another.
fn plain_text(bundle: &Bundle, host: &str) -> String {
    let mut out = String::new();
    for f in &bundle.hosts[host].files {
        if let Contents::Plain(bytes) = &f.contents {
            if !is_pem(f) {
                out.push_str(&format!("=== {} ===\n", f.path));
                out.push_str(std::str::from_utf8(bytes).unwrap());
                out.push('\n');
            }
        }
    }
    out
}

fn redactions() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            r"-----BEGIN [A-Z ]+-----[\s\S]*?-----END [A-Z ]+-----",
            "[PEM]",
        ),
        (
            r"(certificate-authority-data|client-certificate-data|client-key-data|secret): \S+",
            "$1: [redacted]",
        ),
    ]
}

fn snapshot_cluster(yaml: &str, label: &str) {
    let (_, bundle) = rendered(yaml);
    for host in bundle.hosts.keys() {
        insta::with_settings!({filters => redactions()}, {
            insta::assert_json_snapshot!(format!("{label}-{host}-manifest"), manifest_json(&bundle, host));
            insta::assert_snapshot!(format!("{label}-{host}-files"), plain_text(&bundle, host));
        });
    }
}

#[test]
fn golden_single_node() {
    snapshot_cluster(SINGLE_NODE, "single");
}

#[test]
fn golden_ha() {
    snapshot_cluster(HA, "ha");
}

/// The secret files' structure, with the credentials themselves redacted.
#[test]
fn golden_secret_files_redacted() {
    let (_, bundle) = rendered(HA);
    let cp1 = &bundle.hosts["cp1"];
    for path in [
        "/etc/kubernetes/encryption-config.yaml",
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/controller-manager.conf",
        "/etc/kubernetes/kubelet.conf",
    ] {
        let f = cp1.file(path).unwrap();
        let text = std::str::from_utf8(f.contents.bytes()).unwrap();
        insta::with_settings!({filters => redactions(), snapshot_suffix => path.rsplit('/').next().unwrap()}, {
            insta::assert_snapshot!("ha-cp1-secret", text);
        });
    }
}

#[test]
fn workers_hold_no_signing_keys_etcd_material_or_encryption_key() {
    let (inv, bundle) = rendered(HA);
    for w in inv
        .hosts
        .iter()
        .filter(|h| !h.roles.control_plane && !h.roles.etcd)
    {
        let hb = &bundle.hosts[&w.name];
        for f in &hb.files {
            let p = f.path.as_str();
            assert!(!p.ends_with("ca.key"), "{}: {p}", w.name);
            assert!(!p.ends_with("sa.key"), "{}: {p}", w.name);
            assert!(!p.contains("/etcd"), "{}: {p}", w.name);
            assert!(!p.contains("encryption"), "{}: {p}", w.name);
            assert!(!p.contains("front-proxy"), "{}: {p}", w.name);
            assert!(!p.contains("admin.conf"), "{}: {p}", w.name);
        }
        assert!(hb.dirs.iter().all(|d| !d.path.contains("etcd")));
        assert_eq!(
            hb.services,
            [
                Service::Containerd,
                Service::Kubelet,
                Service::KubeProxy,
                Service::Scan
            ]
        );
    }
}

#[test]
fn no_host_gets_the_etcd_or_front_proxy_ca_key() {
    for yaml in [SINGLE_NODE, HA] {
        let (_, bundle) = rendered(yaml);
        for (host, hb) in &bundle.hosts {
            for f in &hb.files {
                assert!(
                    !f.contents
                        .bytes()
                        .windows(14)
                        .any(|w| w == b"FAKE etcd-ca k")
                        && !f
                            .contents
                            .bytes()
                            .windows(20)
                            .any(|w| w == b"FAKE front-proxy-ca "),
                    "{host}: {} holds a CA key that must stay in the state dir",
                    f.path
                );
            }
        }
    }
}

#[test]
fn pki_files_are_root_owned_and_keys_are_0600_secrets() {
    for yaml in [SINGLE_NODE, HA] {
        let (_, bundle) = rendered(yaml);
        for (host, hb) in &bundle.hosts {
            for f in &hb.files {
                let p = &f.path;
                if p.starts_with("/etc/kubernetes/pki/") {
                    assert_eq!(
                        (f.owner.as_str(), f.group.as_str()),
                        ("root", "root"),
                        "{host}: {p}"
                    );
                    assert_eq!(f.mode & 0o077, 0, "{host}: {p} readable by others");
                }
                if p.ends_with(".key") {
                    assert_eq!(f.mode, 0o600, "{host}: {p}");
                    assert!(f.contents.is_secret(), "{host}: {p} is not a Secret");
                }
                if p.ends_with(".conf") && p.starts_with("/etc/kubernetes/")
                    || p.contains("encryption-config")
                {
                    assert!(f.contents.is_secret(), "{host}: {p} is not a Secret");
                    assert_eq!(f.mode, 0o600, "{host}: {p}");
                }
                if p.starts_with("/etc/systemd/system/") || p.starts_with("/var/lib/") {
                    assert_eq!(f.mode, 0o600, "{host}: {p}");
                    assert_eq!(f.owner, "root", "{host}: {p}");
                }
                // Restarts only ever name services this host runs.
                assert!(
                    f.services.iter().all(|s| hb.services.contains(s)),
                    "{host}: {p} feeds {:?}",
                    f.services
                );
            }
            // Every path is unique and files are sorted.
            assert!(hb.files.windows(2).all(|w| w[0].path < w[1].path), "{host}");
        }
    }
}

#[test]
fn services_in_start_order_and_etcd_data_dir_is_etcd_owned() {
    let (inv, bundle) = rendered(HA);
    let cp1 = &bundle.hosts["cp1"];
    assert_eq!(
        cp1.services,
        [
            Service::Etcd,
            Service::KubeApiserver,
            Service::KubeControllerManager,
            Service::KubeScheduler,
            Service::Containerd,
            Service::Kubelet,
            Service::KubeProxy,
            Service::Scan
        ]
    );
    for m in inv.etcd_members() {
        let d = bundle.hosts[&m.name]
            .dirs
            .iter()
            .find(|d| d.path == "/var/lib/etcd")
            .expect("etcd data dir");
        assert_eq!(
            (d.mode, d.owner.as_str(), d.group.as_str()),
            (0o700, "etcd", "etcd")
        );
    }
}

#[test]
fn etcd_unit_uses_credentials_and_lists_every_member() {
    let (_, bundle) = rendered(HA);
    let unit = bundle.hosts["cp2"]
        .file("/etc/systemd/system/etcd.service")
        .unwrap();
    let text = std::str::from_utf8(unit.contents.bytes()).unwrap();
    assert!(text.contains("LoadCredential=server.key:/etc/kubernetes/pki/etcd/server.key"));
    assert!(text.contains("--key-file=${CREDENTIALS_DIRECTORY}/server.key"));
    assert!(text.contains(
        "--initial-cluster=cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380,cp3=https://10.0.0.13:2380"
    ));
    assert!(text.contains("--listen-client-urls=https://10.0.0.12:2379,https://127.0.0.1:2379"));
    assert!(text.contains("--listen-peer-urls=https://10.0.0.12:2380 \\"));
    // etcd 3.4 refuses unknown flags.
    assert!(!text.contains("--tls-min-version"));
    let api = bundle.hosts["cp2"]
        .file("/etc/systemd/system/kube-apiserver.service")
        .unwrap();
    let api = std::str::from_utf8(api.contents.bytes()).unwrap();
    assert!(api.contains(
        "--etcd-servers=https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379"
    ));
    for removed in [
        "--insecure-port",
        "--kubelet-https",
        "--insecure-bind-address",
    ] {
        assert!(!api.contains(removed), "{removed}");
    }
}

#[test]
fn render_of_1000_nodes_is_fast_and_complete() {
    let mut yaml = String::from(
        "cluster:\n  name: big\n  kubernetesVersion: \"1.34\"\n  apiEndpoint: 10.0.0.1:6443\n  serviceCidr: 10.96.0.0/12\n  podCidr: 10.128.0.0/10\nssh:\n  user: admin\n  become: sudo\nhosts:\n",
    );
    for i in 0..3 {
        yaml.push_str(&format!(
            "  - name: cp{i}\n    address: 10.1.0.{}\n    roles: [etcd, control-plane]\n",
            i + 10
        ));
    }
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - name: w{i}\n    address: 10.2.{}.{}\n    roles: [worker]\n",
            i / 200,
            i % 200 + 10
        ));
    }
    let inv = inventory(&yaml);
    let pki = fake_pki(&inv);
    // How long this takes is measured by tests/bench/init-render.sh, not here.
    let bundle = render::render(&inv, &pki).unwrap();
    assert_eq!(bundle.hosts.len(), 1003);
    let w999 = &bundle.hosts["w999"];
    let unit = std::str::from_utf8(
        w999.file("/etc/systemd/system/kubelet.service")
            .unwrap()
            .contents
            .bytes(),
    )
    .unwrap();
    assert!(unit.contains("--hostname-override=w999"));
}

#[test]
fn a_missing_certificate_names_the_host_and_the_cert() {
    let inv = inventory(HA);
    let mut pki = fake_pki(&inv);
    pki.certs.remove(&names::kubelet_serving("w2"));
    let err = render::render(&inv, &pki).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the PKI has no certificate `kubelet-serving-w2` needed by w2; \
         the state dir is incomplete or was issued for another inventory"
    );
}

#[test]
fn a_written_bundle_reads_back_the_same_and_edits_are_caught() {
    let (_, bundle) = rendered(SINGLE_NODE);
    let dir = tempfile::tempdir().unwrap();
    render::write_bundle(&bundle, dir.path()).unwrap();
    // Writing again over an existing bundle replaces files in place of the old ones.
    render::write_bundle(&bundle, dir.path()).unwrap();
    let back = render::read_bundle(dir.path()).unwrap();
    for (host, hb) in &bundle.hosts {
        assert_eq!(back.hosts[host].files, hb.files, "{host}");
        assert_eq!(back.hosts[host].dirs, hb.dirs, "{host}");
        assert_eq!(back.hosts[host].services, hb.services, "{host}");
    }
    let host = bundle.hosts.keys().next().unwrap();
    let unit = dir
        .path()
        .join(host)
        .join("etc/systemd/system/kubelet.service");
    std::fs::write(&unit, "tampered").unwrap();
    let err = render::read_bundle(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("kubelet.service does not match its manifest"),
        "{err}"
    );
}

/// HA plus a backup target with a pinned host key.
fn ha_with_backup_target() -> String {
    HA.replace(
        "security:",
        "  - name: vault\n    address: 10.0.1.50\n    roles: [backup-target]\n    ssh:\n      hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAFak579m9EgHWEcB8fG5b3nojFXrSvEjhpggp0os6kx\n\
         backups:\n  recipients: [age1jyqgnpk7g9dmlvchtnq05q5dek9wsatdywuums8780kt2f7lt5nqfqjtz9]\n  \
         target:\n    host: vault\n    path: /srv/backups/prod\n    retention: {count: 60, maxAgeDays: 30}\n\
         security:",
    )
}

#[test]
fn golden_backup_target() {
    let (_, bundle) = rendered(&ha_with_backup_target());
    insta::with_settings!({filters => redactions()}, {
        insta::assert_json_snapshot!("backup-target-vault-manifest", manifest_json(&bundle, "vault"));
        insta::assert_snapshot!("backup-target-vault-files", plain_text(&bundle, "vault"));
        let config = bundle.hosts["cp1"].file("/etc/rampart/backup.yaml").unwrap();
        insta::assert_snapshot!(
            "backup-target-cp1-backup-yaml",
            std::str::from_utf8(config.contents.bytes()).unwrap()
        );
    });
}

#[test]
fn push_keys_go_to_their_own_member_only_and_the_target_holds_no_secret() {
    let (inv, bundle) = rendered(&ha_with_backup_target());
    for h in &inv.hosts {
        let hb = &bundle.hosts[&h.name];
        let key = hb.file("/etc/rampart/backup-push.key");
        assert_eq!(key.is_some(), h.roles.etcd, "{}", h.name);
        if let Some(key) = key {
            assert!(key.contents.is_secret());
            assert_eq!(key.mode, 0o600);
            let text = std::str::from_utf8(key.contents.bytes()).unwrap();
            assert_eq!(text, format!("FAKE push key {}\n", h.name));
        }
    }
    let vault = &bundle.hosts["vault"];
    assert!(vault.files.iter().all(|f| !f.contents.is_secret()));
    // The target runs no cluster service, only the host scan.
    assert_eq!(vault.services, [Service::Scan]);
    assert!(vault.receives_backups);
    assert_eq!(vault.users[0].name, "rampart-backup");

    // Without a pinned or known host key the members could not check the
    // target: render refuses, naming the command that fixes it.
    let unpinned = ha_with_backup_target().replace(
        "    ssh:\n      hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAFak579m9EgHWEcB8fG5b3nojFXrSvEjhpggp0os6kx\n",
        "",
    );
    let inv = inventory(&unpinned);
    let err = render::render(&inv, &fake_pki(&inv))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rampart hosts trust -i INVENTORY --hosts vault"),
        "{err}"
    );
}

/// `hosts[].labels` were validated but never rendered, though the docs said
/// the kubelet sets them.
#[test]
fn node_labels_reach_the_kubelet() {
    let (_, bundle) = rendered(&SINGLE_NODE.replace(
        "    roles: [etcd, control-plane, worker]\n",
        "    roles: [etcd, control-plane, worker]\n    labels: {topology.kubernetes.io/zone: a, team: infra}\n",
    ));
    let unit = file_text(&bundle, "node1", "/etc/systemd/system/kubelet.service");
    let exec = crate::hostile::parse_unit(&unit)
        .into_iter()
        .find(|(_, k, _)| k == "ExecStart")
        .unwrap()
        .2;
    let argv = crate::hostile::split_command(&exec);
    assert!(
        argv.contains(&"--node-labels=team=infra,topology.kubernetes.io/zone=a".to_string()),
        "{argv:?}"
    );
    // Without labels there is no flag at all.
    let (_, bundle) = rendered(SINGLE_NODE);
    let unit = bundle.hosts["node1"]
        .file("/etc/systemd/system/kubelet.service")
        .unwrap();
    assert!(!String::from_utf8_lossy(unit.contents.bytes()).contains("--node-labels"));
}

/// IPv6-only clusters render like IPv4 ones: with `serviceCidr:
/// fd00:96::/108` the apiserver certificate once carried `fd00:96::` and
/// kubelets `clusterDNS: fd00:96::9` (IPv6 has no broadcast to skip, so the
/// first "host" of the range was the network address itself).
#[test]
fn ipv6_only_clusters_get_network_plus_one_and_plus_ten() {
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/everything.yaml"),
    )
    .unwrap();
    let (inv, bundle) = rendered(&yaml);
    let apiserver = rampart::pki::catalogue(&inv)
        .into_iter()
        .find(|s| s.name == names::APISERVER)
        .unwrap();
    let ip = |s: &str| inventory::San::Ip(s.parse().unwrap());
    assert!(
        apiserver.sans.contains(&ip("fd00:96::1")),
        "{:?}",
        apiserver.sans
    );
    assert!(!apiserver.sans.contains(&ip("fd00:96::")));
    let kubelet = file_text(&bundle, "w1", "/var/lib/kubelet/config.yaml");
    assert!(
        kubelet.contains("clusterDNS:\n  - fd00:96::a\n"),
        "{kubelet}"
    );
    let sysctl = file_text(&bundle, "w1", "/etc/sysctl.d/90-rampart-kubelet.conf");
    assert!(
        sysctl.contains("\nnet.ipv6.conf.all.forwarding = 1\n"),
        "{sysctl}"
    );
    let etcd = file_text(&bundle, "cp1", "/etc/systemd/system/etcd.service");
    assert!(
        etcd.contains("--listen-client-urls=https://[fd00::11]:2379,https://[::1]:2379"),
        "{etcd}"
    );
}

/// Dual-stack: both ranges reach every flag and config that takes ranges, in
/// the inventory's order; the `kubernetes` Service and cluster DNS come from
/// the primary range; the node forwards IPv6 as well as IPv4.
#[test]
fn dual_stack_ranges_reach_every_flag_primary_first() {
    let yaml = HA
        .replace(
            "serviceCidr: 10.96.0.0/12",
            "serviceCidr: 10.96.0.0/12, fd00:96::/108",
        )
        .replace(
            "podCidr: 10.244.0.0/16",
            "podCidr: 10.244.0.0/16,fd00:10:244::/56",
        );
    let (inv, bundle) = rendered(&yaml);
    let expected = [
        (
            "cp1",
            "/etc/systemd/system/kube-apiserver.service",
            "--service-cluster-ip-range=10.96.0.0/12,fd00:96::/108 ",
        ),
        (
            "cp1",
            "/etc/systemd/system/kube-controller-manager.service",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56 ",
        ),
        (
            "cp1",
            "/etc/systemd/system/kube-controller-manager.service",
            "--service-cluster-ip-range=10.96.0.0/12,fd00:96::/108 ",
        ),
        (
            "w1",
            "/var/lib/kube-proxy/config.conf",
            "\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n",
        ),
        (
            "w1",
            "/var/lib/kubelet/config.yaml",
            "clusterDNS:\n  - 10.96.0.10\n",
        ),
        (
            "w1",
            "/etc/sysctl.d/90-rampart-kubelet.conf",
            "\nnet.ipv6.conf.all.forwarding = 1\n",
        ),
        (
            "w1",
            "/etc/sysctl.d/90-rampart-kubelet.conf",
            "\nnet.ipv6.conf.default.disable_ipv6 = 0\n",
        ),
    ];
    for (host, path, line) in expected {
        let text = file_text(&bundle, host, path);
        assert!(text.contains(line), "{host}:{path} lacks {line:?}:\n{text}");
    }
    let apiserver_cert = rampart::pki::catalogue(&inv)
        .into_iter()
        .find(|s| s.name == names::APISERVER)
        .unwrap();
    let ip = |s: &str| inventory::San::Ip(s.parse().unwrap());
    assert!(apiserver_cert.sans.contains(&ip("10.96.0.1")));
    assert!(!apiserver_cert.sans.contains(&ip("fd00:96::1")));
    // Single-stack IPv4 leaves IPv6 forwarding as the host has it.
    let (_, v4) = rendered(HA);
    let sysctl = file_text(&v4, "w1", "/etc/sysctl.d/90-rampart-kubelet.conf");
    assert!(!sysctl.contains("ipv6"), "{sysctl}");
}

/// Kubelets renew their client certificates without an admin: the kubelet
/// asks (`rotateCertificates`), the RBAC addon lets nodes' own renewal
/// requests be approved, and the controller-manager signs them with one
/// CA certificate (never the trust bundle, which holds two mid-rotation).
#[test]
fn kubelet_client_certificates_renew_themselves() {
    let (_, bundle) = rendered(HA);
    assert!(file_text(&bundle, "w1", "/var/lib/kubelet/config.yaml")
        .contains("rotateCertificates: true"));
    let cm = file_text(
        &bundle,
        "cp1",
        "/etc/systemd/system/kube-controller-manager.service",
    );
    assert!(
        cm.contains("--cluster-signing-cert-file=/etc/kubernetes/pki/ca-signer.crt"),
        "{cm}"
    );
    assert!(
        cm.contains("--cluster-signing-key-file=/etc/kubernetes/pki/ca.key"),
        "{cm}"
    );
    assert!(
        !cm.contains("--controllers="),
        "every default controller (csrapproving, csrsigning) runs"
    );
    let rbac = file_text(&bundle, "cp1", "/etc/kubernetes/addons/rbac.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rbac)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert!(
        docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"
            && d["roleRef"]["name"]
                == "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"
            && d["subjects"][0]["name"] == "system:nodes"),
        "{rbac}"
    );
}
