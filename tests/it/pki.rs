//! The PKI end to end: init a real state dir, verify every leaf with openssl,
//! idempotency, tampering, modes, sealing (and interop with the `age` CLI).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use age::secrecy::{ExposeSecret, SecretString};
use rampart::inventory::{parse, Inventory};
use rampart::pki::{self, Issuance, PkiError, StateDir, Status, Unlock};
use time::OffsetDateTime;

const HA: &str = r#"
cluster:
  name: prod
  kubernetesVersion: "1.34"
  apiEndpoint: api.example.com:6443
hosts:
  - {name: cp1, address: 10.0.0.11, roles: [etcd, control-plane]}
  - {name: cp2, address: 10.0.0.12, roles: [etcd, control-plane]}
  - {name: cp3, address: 10.0.0.13, roles: [etcd, control-plane]}
  - {name: w1, address: 10.0.0.21, roles: [worker]}
  - {name: w2, address: 10.0.0.22, roles: [worker]}
tenants:
  - namespace: team-a
    members:
      - {user: alice, role: edit}
      - {group: devs, role: view}
  - namespace: team-b
    members:
      - {user: alice, role: view}
      - {user: bob, role: admin}
"#;

fn inventory(text: &str) -> Inventory {
    parse(text, Path::new("inventory.yaml")).unwrap().inventory
}

/// A temp state dir plus an age identity file to unlock it with.
struct Fixture {
    tmp: tempfile::TempDir,
    dir: StateDir,
    unlock: Unlock,
    identity: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let identity = tmp.path().join("admin.key");
    let id = age::x25519::Identity::generate();
    fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
    Fixture {
        dir: StateDir::new(tmp.path().join("state")),
        unlock: Unlock::Identity(identity.clone()),
        identity,
        tmp,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn openssl_verify(work: &Path, ca_pem: &str, leaf_pem: &str, purpose: &str) -> (bool, String) {
    fs::write(work.join("ca.crt"), ca_pem).unwrap();
    fs::write(work.join("leaf.crt"), leaf_pem).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify", "-CAfile", "ca.crt", "-purpose", purpose, "leaf.crt",
        ])
        .current_dir(work)
        .output()
        .expect("openssl is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn every_leaf_verifies_with_openssl_for_its_purpose() {
    let f = fixture();
    let inv = inventory(HA);
    let (pki, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(report.entries.iter().all(|(_, a)| *a == Issuance::Issued));
    let work = f.tmp.path().join("verify");
    fs::create_dir(&work).unwrap();
    let mut checked = 0;
    for spec in pki::catalogue(&inv).iter().filter(|s| !s.is_ca()) {
        let ca = &pki.get(spec.ca.as_deref().unwrap()).cert_pem;
        let leaf = &pki.get(&spec.name).cert_pem;
        for (wanted, purpose) in [
            (spec.usage.server(), "sslserver"),
            (spec.usage.client(), "sslclient"),
        ] {
            let (ok, out) = openssl_verify(&work, ca, leaf, purpose);
            assert_eq!(ok, wanted, "{} -purpose {purpose}: {out}", spec.name);
        }
        checked += 1;
    }
    // 5 fixed + 2×3 etcd + 3 components + 2×5 nodes + 2 admins.
    assert_eq!(checked, 5 + 6 + 3 + 10 + 2);
    // A leaf does not verify against another CA.
    let (ok, _) = openssl_verify(
        &work,
        &pki.get("etcd-ca").cert_pem,
        &pki.get("apiserver").cert_pem,
        "sslserver",
    );
    assert!(!ok);
}

#[test]
fn second_init_reuses_everything_and_load_agrees() {
    let f = fixture();
    let inv = inventory(HA);
    let (first, _) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let (second, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert_eq!(report.changed(), Vec::<&str>::new());
    assert_eq!(report.action("sa"), Some(&Issuance::Reused));
    assert_eq!(report.action("encryption-key"), Some(&Issuance::Reused));
    assert_eq!(
        first.get("apiserver").cert_pem,
        second.get("apiserver").cert_pem
    );
    assert_eq!(
        first.get("apiserver").key_pem,
        second.get("apiserver").key_pem
    );
    assert_eq!(first.encryption_keys, second.encryption_keys);
    let loaded = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(loaded.certs.len(), first.certs.len());
    assert_eq!(loaded.service_account_pub, first.service_account_pub);
    assert_eq!(loaded.service_account_key, first.service_account_key);
    assert_eq!(
        loaded.get("kubelet-client-w2").key_pem,
        first.get("kubelet-client-w2").key_pem
    );
}

#[test]
fn changed_endpoint_reissues_only_the_apiserver_with_the_reason() {
    let f = fixture();
    pki::init(&inventory(HA), &f.dir, &f.unlock, now()).unwrap();
    let changed = inventory(&HA.replace("api.example.com", "new.example"));
    // render refuses until init has run
    let err = pki::load(&changed, &f.dir, &f.unlock).unwrap_err();
    assert!(matches!(err, PkiError::NotInitialised { ref name, .. } if name == "apiserver"));
    assert!(err.to_string().contains("run `rampart init`"), "{err}");
    let listed = pki::list(&changed, &f.dir, now()).unwrap();
    let api = listed.iter().find(|c| c.name == "apiserver").unwrap();
    assert_eq!(api.status, Status::SanMismatch);

    let (_, report) = pki::init(&changed, &f.dir, &f.unlock, now()).unwrap();
    assert_eq!(report.changed(), ["apiserver"]);
    assert_eq!(
        report.action("apiserver"),
        Some(&Issuance::Reissued {
            reason: "SANs changed: +DNS:new.example -DNS:api.example.com".into()
        })
    );
    pki::load(&changed, &f.dir, &f.unlock).unwrap();
}

#[test]
fn extra_sans_reissue_apiserver_and_that_kubelet() {
    let f = fixture();
    pki::init(&inventory(HA), &f.dir, &f.unlock, now()).unwrap();
    let changed = inventory(&HA.replace(
        "{name: cp2, address: 10.0.0.12,",
        "{name: cp2, address: 10.0.0.12, extraSans: [cp2.example.com],",
    ));
    let (_, report) = pki::init(&changed, &f.dir, &f.unlock, now()).unwrap();
    assert_eq!(report.changed(), ["apiserver", "kubelet-serving-cp2"]);
}

#[test]
fn a_new_host_adds_only_its_certificates() {
    let f = fixture();
    pki::init(&inventory(HA), &f.dir, &f.unlock, now()).unwrap();
    let grown = inventory(&HA.replace(
        "tenants:",
        "  - {name: w3, address: 10.0.0.23, roles: [worker]}\ntenants:",
    ));
    let (_, report) = pki::init(&grown, &f.dir, &f.unlock, now()).unwrap();
    assert_eq!(
        report.changed(),
        ["kubelet-client-w3", "kubelet-serving-w3"]
    );
    assert_eq!(report.action("kubelet-serving-w3"), Some(&Issuance::Issued));
}

#[test]
fn a_replaced_ca_is_a_hard_error_not_a_silent_regeneration() {
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    // Put a different, valid CA in place of the cluster CA.
    let policy = pki::issue::Policy {
        key_algorithm: inv.security.key_algorithm,
        ca_validity_days: 3650,
        leaf_validity_days: 365,
        now: now(),
    };
    let spec = pki::catalogue(&inv)
        .into_iter()
        .find(|s| s.name == "ca")
        .unwrap();
    let other = pki::issue::self_signed_ca(&spec, &policy).unwrap();
    let key = f.dir.unlock(&f.unlock).unwrap();
    let key_path = f.dir.key_path("ca");
    fs::write(
        &key_path,
        key.seal(other.key_pem.expose(), &key_path).unwrap(),
    )
    .unwrap();
    fs::write(f.dir.cert_path("ca"), &other.cert_pem).unwrap();

    let err = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap_err();
    assert!(
        matches!(err, PkiError::BrokenChain { ref name, ref ca, .. } if name == "apiserver" && ca == "ca"),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not chain to ca"), "{err}");
    // Nothing was regenerated: the impostor CA is still there.
    assert_eq!(
        fs::read_to_string(f.dir.cert_path("ca")).unwrap(),
        other.cert_pem
    );
    let listed = pki::list(&inv, &f.dir, now()).unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|c| c.name == "apiserver")
            .unwrap()
            .status,
        Status::BrokenChain
    );
}

#[test]
fn a_ca_with_a_foreign_or_missing_key_is_refused() {
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let ca_pem = fs::read_to_string(f.dir.cert_path("ca")).unwrap();
    // swap in the etcd CA's certificate: it does not match ca's key
    fs::write(
        f.dir.cert_path("ca"),
        fs::read(f.dir.cert_path("etcd-ca")).unwrap(),
    )
    .unwrap();
    let err = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap_err();
    assert!(
        matches!(err, PkiError::CaKeyMismatch { ref name } if name == "ca"),
        "{err:?}"
    );
    fs::write(f.dir.cert_path("ca"), ca_pem).unwrap();
    fs::remove_file(f.dir.key_path("ca")).unwrap();
    let err = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap_err();
    assert!(matches!(err, PkiError::Corrupt { .. }), "{err:?}");
}

#[test]
fn modes_are_private_and_no_private_key_is_in_the_clear() {
    let f = fixture();
    pki::init(&inventory(HA), &f.dir, &f.unlock, now()).unwrap();
    let mut files = 0;
    let mut stack = vec![f.dir.root().to_path_buf()];
    while let Some(d) = stack.pop() {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
            let bytes = fs::read(&p).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("PRIVATE KEY"),
                "plaintext key in {}",
                p.display()
            );
            assert!(
                !text.contains("client-key-data"),
                "plaintext kubeconfig in {}",
                p.display()
            );
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(!name.starts_with('.'), "temp file left behind: {name}");
        }
    }
    assert!(f.dir.super_admin_conf_path().exists());
    assert!(f.dir.sa_pub_path().exists());
    // 29 certs ×2 + state key + sa ×2 + encryption key + super-admin.conf
    assert_eq!(files, 29 * 2 + 1 + 2 + 1 + 1);
}

#[test]
fn the_age_cli_unseals_the_state_key_chain() {
    let f = fixture();
    let (pki, _) = pki::init(&inventory(HA), &f.dir, &f.unlock, now()).unwrap();
    let age = |identity: &Path, file: &Path| {
        let out = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg(file)
            .output()
            .expect("the age CLI is installed (apt-get install age)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let state_key = age(&f.identity, &f.dir.state_key_path());
    assert!(String::from_utf8_lossy(&state_key).starts_with("AGE-SECRET-KEY-1"));
    let state_key_file = f.tmp.path().join("state-key.txt");
    fs::write(&state_key_file, &state_key).unwrap();
    let ca_key = age(&state_key_file, &f.dir.key_path("ca"));
    assert_eq!(ca_key, pki.get("ca").key_pem.expose());
    assert!(String::from_utf8_lossy(&ca_key).contains("-----BEGIN PRIVATE KEY-----"));
    let conf = age(&state_key_file, &f.dir.super_admin_conf_path());
    let conf: serde_yaml::Value = serde_yaml::from_slice(&conf).unwrap();
    assert_eq!(conf["users"][0]["name"], "kubernetes-super-admin");
    assert_eq!(
        conf["clusters"][0]["cluster"]["server"],
        "https://api.example.com:6443"
    );
}

#[test]
fn passphrase_unlock_and_wrong_unlocks() {
    let f = fixture();
    let inv = inventory(HA);
    let pass = || Unlock::Passphrase(SecretString::from("correct horse".to_string()));
    pki::init(&inv, &f.dir, &pass(), now()).unwrap();
    pki::load(&inv, &f.dir, &pass()).unwrap();
    let err = pki::load(&inv, &f.dir, &f.unlock).unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::WrongUnlock {
                sealed_to: "a passphrase",
                ..
            }
        ),
        "{err:?}"
    );
    let wrong = Unlock::Passphrase(SecretString::from("wrong".to_string()));
    let err = pki::load(&inv, &f.dir, &wrong).unwrap_err();
    assert!(matches!(err, PkiError::Unseal { .. }), "{err:?}");
}

#[test]
fn load_before_init_sends_the_admin_to_init() {
    let f = fixture();
    let err = pki::load(&inventory(HA), &f.dir, &f.unlock).unwrap_err();
    assert!(err.to_string().contains("run `rampart init`"), "{err}");
}

#[test]
fn list_needs_no_unlock_and_leaks_nothing() {
    let f = fixture();
    let inv = inventory(HA);
    let before = pki::list(&inv, &f.dir, now()).unwrap();
    assert!(before.iter().all(|c| c.status == Status::Missing));
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let listed = pki::list(&inv, &f.dir, now()).unwrap();
    assert!(listed.iter().all(|c| c.status == Status::Ok), "{listed:#?}");
    let admin = listed.iter().find(|c| c.name == "admin").unwrap();
    assert_eq!(admin.organizations, ["kubeadm:cluster-admins"]);
    assert_eq!(admin.ca.as_deref(), Some("ca"));
    let json = serde_json::to_string(&listed).unwrap();
    assert!(!json.contains("PRIVATE"));
    // `certs list --output json` once said `common_name`, `not_after`: its
    // keys are camelCase, like the inventory's and the manifests'.
    let row = serde_json::to_value(admin).unwrap();
    let keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert!(
        keys.contains(&"commonName") && keys.contains(&"notAfter"),
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| !k.contains('_')), "{keys:?}");
    // A year on (leaves live 365 days) everything but the CAs is expiring or expired.
    let later = pki::list(&inv, &f.dir, now() + time::Duration::days(350)).unwrap();
    assert_eq!(
        later.iter().find(|c| c.name == "apiserver").unwrap().status,
        Status::ExpiresSoon
    );
    assert_eq!(
        later.iter().find(|c| c.name == "ca").unwrap().status,
        Status::Ok
    );
}

#[test]
fn expired_leaves_are_reissued() {
    let f = fixture();
    let inv = inventory(HA);
    let start = now() - time::Duration::days(400);
    pki::init(&inv, &f.dir, &f.unlock, start).unwrap();
    let (_, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    match report.action("apiserver") {
        Some(Issuance::Reissued { reason }) => {
            assert!(reason.starts_with("expired on"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.action("ca"), Some(&Issuance::Reused));
}

#[test]
fn tenant_user_kubeconfig_carries_the_tenant_groups() {
    let f = fixture();
    let inv = inventory(HA);
    let (pki, _) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let conf = pki::user_kubeconfig(&inv, &f.dir, &f.unlock, "alice", now()).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(conf.expose_str()).unwrap();
    assert_eq!(v["current-context"], "alice@prod");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let cert = b64
        .decode(
            v["users"][0]["user"]["client-certificate-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let cert = String::from_utf8(cert).unwrap();
    let facts = pki::inspect::CertFacts::parse("alice", &cert).unwrap();
    assert_eq!(facts.common_name, "alice");
    assert_eq!(
        facts.organizations,
        ["rampart:tenant:team-a", "rampart:tenant:team-b"]
    );
    let work = f.tmp.path().join("verify");
    fs::create_dir(&work).unwrap();
    let (ok, out) = openssl_verify(&work, &pki.get("ca").cert_pem, &cert, "sslclient");
    assert!(ok, "{out}");
    // openssl agrees on the subject (both O values).
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in", "leaf.crt"])
        .current_dir(&work)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("O = rampart:tenant:team-a")
            && subject.contains("O = rampart:tenant:team-b"),
        "{subject}"
    );
    // Not stored.
    assert!(!f.dir.cert_path("user-alice").exists());
    let err = pki::user_kubeconfig(&inv, &f.dir, &f.unlock, "mallory", now()).unwrap_err();
    assert!(matches!(err, PkiError::UnknownUser { .. }));
    assert!(err.to_string().contains("tenants[].members[].user"));
    // A group member is not a user.
    assert!(pki::user_kubeconfig(&inv, &f.dir, &f.unlock, "devs", now()).is_err());
}

#[test]
fn render_facing_accessors() {
    let f = fixture();
    let inv = inventory(HA);
    let (pki, _) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(pki
        .service_account_key()
        .expose_str()
        .contains("PRIVATE KEY"));
    assert!(pki.service_account_pub().contains("PUBLIC KEY"));
    assert_eq!(pki.encryption_key().expose().len(), 32);
    assert!(pki.try_get("etcd-server-w1").is_none());
    let conf = pki.kubeconfig(&inv, "kubelet-client-w1", &inv.cluster.server_url());
    let v: serde_yaml::Value = serde_yaml::from_str(conf.expose_str()).unwrap();
    assert_eq!(v["users"][0]["name"], "system:node:w1");
    assert_eq!(format!("{:?}", pki.get("ca").key_pem), "[redacted]");
}

/// 1,000 nodes (≈2,000 leaves): issuance, sealing and writing in one init.
/// On tmpfs when there is one, so the figure measures rampart rather than the
/// disk (creating 4,000 files on a VM's ext4 alone takes seconds).
#[test]
fn a_thousand_nodes_init_quickly() {
    let mut f = fixture();
    let shm = Path::new("/dev/shm");
    let _shm_dir = shm.is_dir().then(|| {
        let t = tempfile::tempdir_in(shm).unwrap();
        f.dir = StateDir::new(t.path().join("state"));
        t
    });
    let mut yaml = String::from(
        "cluster: {name: big, kubernetesVersion: '1.34', apiEndpoint: 'api:6443', podCidr: 10.128.0.0/14}\nhosts:\n  - {name: cp1, address: 10.1.0.1, roles: [etcd, control-plane]}\n",
    );
    for i in 0..999 {
        yaml += &format!(
            "  - {{name: w{i}, address: 10.2.{}.{}, roles: [worker]}}\n",
            i / 250,
            i % 250 + 1
        );
    }
    let inv = inventory(&yaml);
    // How long this takes is measured by tests/bench/init-render.sh, not here.
    let (pki, _) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert_eq!(pki.certs.len(), 3 + 5 + 2 + 3 + 2 * 1000 + 2);
    let (_, again) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(again.changed().is_empty());
}

#[test]
fn a_backup_target_adds_one_sealed_push_key_per_member_and_keeps_them() {
    let f = fixture();
    pki::init(&inventory(HA), &f.dir, &f.unlock, now()).unwrap();
    let with_target = HA.replace(
        "tenants:",
        "  - {name: vault, address: 10.0.0.50, roles: [backup-target]}\n\
         backups:\n  recipients: [age1jyqgnpk7g9dmlvchtnq05q5dek9wsatdywuums8780kt2f7lt5nqfqjtz9]\n  \
         target: {host: vault, path: /srv/backups}\ntenants:",
    );
    let inv = inventory(&with_target);
    // An inventory that gained a target needs `init` before anything renders.
    let err = pki::load(&inv, &f.dir, &f.unlock).unwrap_err();
    assert!(
        err.to_string().contains("backup-push/cp1") && err.to_string().contains("rampart init"),
        "{err}"
    );
    let (issued, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert_eq!(
        report.changed(),
        ["backup-push/cp1", "backup-push/cp2", "backup-push/cp3"]
    );
    let cp1 = &issued.push_keys["cp1"];
    assert!(cp1.public.starts_with("ssh-ed25519 "));
    assert!(cp1.public.ends_with(" rampart-backup-push:prod/cp1"));
    // Sealed at rest: the private key is nowhere in the clear.
    let sealed = fs::read(f.dir.push_key_path("cp1")).unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("OPENSSH PRIVATE KEY"));
    let mode = fs::metadata(f.dir.push_key_path("cp1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Reused, never regenerated, and what load returns.
    let (_, again) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(again.changed().is_empty(), "{:?}", again.changed());
    let loaded = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(loaded.push_keys["cp1"].public, cp1.public);
    assert_eq!(loaded.push_keys["cp1"].private, cp1.private);
    assert_eq!(loaded.push_keys.len(), 3, "etcd members only");
}

/// `users kubeconfig … --out FILE` onto an existing 0644 file once kept
/// 0644 (the file was rewritten in place) while saying "(0600)".
#[test]
fn private_files_are_0600_whatever_was_there_before() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("alice.conf");
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    pki::store::write_private(&out, b"apiVersion: v1\n").unwrap();
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&out).unwrap(), b"apiVersion: v1\n");
    // No temp file is left beside it.
    let names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["alice.conf"]);
}

/// S2: a sealed file swapped for another (`front-proxy-ca.key.age` over
/// `sa.key.age`, no key needed) once made `render` ship the front-proxy CA
/// key as `/etc/kubernetes/pki/sa.key`. Every pair is checked on load too.
#[test]
fn load_refuses_a_service_account_key_that_is_not_sa_pubs_half() {
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    fs::copy(f.dir.key_path("front-proxy-ca"), f.dir.sa_key_path()).unwrap();
    let err = pki::load(&inv, &f.dir, &f.unlock).unwrap_err().to_string();
    assert!(
        err.contains("sa.pub is not the public half of sa.key"),
        "{err}"
    );
}

/// S3: with the CAs present, a deleted encryption key or SA pair was
/// silently issued anew by `init`: every stored Secret unreadable and
/// every token invalid after the next apply. Now only on request.
#[test]
fn lost_cluster_keys_are_never_regenerated_silently() {
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    for (paths, name) in [
        (vec![f.dir.encryption_key_path()], "encryption-key"),
        (vec![f.dir.sa_key_path(), f.dir.sa_pub_path()], "sa"),
    ] {
        let kept: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
        for p in &paths {
            fs::remove_file(p).unwrap();
        }
        let err = pki::init(&inv, &f.dir, &f.unlock, now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("--replace-lost"),
            "{err}"
        );
        for p in &paths {
            assert!(!p.exists(), "{} was written", p.display());
        }
        // On request it is issued, and says so.
        let (_, report) = pki::init_with(&inv, &f.dir, &f.unlock, now(), true).unwrap();
        assert_eq!(report.action(name), Some(&Issuance::Issued));
        for (p, old) in paths.iter().zip(kept) {
            fs::write(p, old).unwrap();
        }
    }
    // A new cluster still gets them without asking.
    let fresh = fixture();
    let (_, report) = pki::init(&inv, &fresh.dir, &fresh.unlock, now()).unwrap();
    assert_eq!(report.action("encryption-key"), Some(&Issuance::Issued));
}

/// S4: a missing `state-key.age` once made `init` write a new state key,
/// which then failed on `ca.key.age` forever after.
#[test]
fn a_lost_state_key_is_an_error_and_never_replaced() {
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    fs::remove_file(f.dir.state_key_path()).unwrap();
    let err = pki::init(&inv, &f.dir, &f.unlock, now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("restore it from your backup"), "{err}");
    assert!(!f.dir.state_key_path().exists());
}

/// A fresh `init` killed at any moment (12 of 82 rename points once left a
/// CA "half there" for good): the next run completes it or starts over, and
/// the result loads.
#[test]
fn init_killed_at_any_moment_is_completed_by_the_next_run() {
    use std::process::{Command, Stdio};
    let inv_yaml = HA;
    let mut outcomes = Vec::new();
    // Kill points spread over the time an uninterrupted run takes.
    let took = {
        let f = fixture();
        let inv_path = f.tmp.path().join("inventory.yaml");
        fs::write(&inv_path, inv_yaml).unwrap();
        let t = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["init", "-i"])
            .arg(&inv_path)
            .arg("--state-dir")
            .arg(f.dir.root())
            .arg("--identity")
            .arg(&f.identity)
            .output()
            .unwrap();
        assert!(out.status.success());
        t.elapsed()
    };
    let runs = 24u32;
    let mut rolled_forward = 0;
    for i in 0..runs {
        let f = fixture();
        let inv_path = f.tmp.path().join("inventory.yaml");
        fs::write(&inv_path, inv_yaml).unwrap();
        let run = || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_rampart"));
            cmd.args(["init", "-i"])
                .arg(&inv_path)
                .arg("--state-dir")
                .arg(f.dir.root())
                .arg("--identity")
                .arg(&f.identity)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            cmd
        };
        let mut child = run().spawn().unwrap();
        std::thread::sleep(took * i / runs);
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let killed = child.wait().unwrap();
        let mid_commit = f.dir.root().join(".commit").exists();
        if mid_commit {
            rolled_forward += 1;
        }
        let again = run().output().unwrap();
        assert!(
            again.status.success(),
            "kill {i} ({killed}): the next init failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let inv = inventory(inv_yaml);
        pki::load(&inv, &f.dir, &f.unlock).unwrap_or_else(|e| panic!("kill {i}: {e}"));
        assert!(!f.dir.root().join(".commit").exists());
        outcomes.push(killed.code().is_none());
    }
    assert!(outcomes.iter().any(|k| *k), "no run was actually killed");
    eprintln!(
        "init kills: {runs}, {} killed before the end, {rolled_forward} between a commit list and its renames (finished by the next run), 0 left unrecoverable",
        outcomes.iter().filter(|k| **k).count()
    );
}

/// The state a kill between a commit list and its renames leaves (rare to
/// hit with real kills: the window is short): the next open finishes it,
/// and a list naming a path outside the state dir renames nothing there.
#[test]
fn an_interrupted_commit_is_finished_by_the_next_open() {
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let root = f.dir.root().to_path_buf();
    let cert = f.dir.cert_path("apiserver");
    let new = fs::read(f.dir.cert_path("apiserver-kubelet-client")).unwrap();
    fs::write(cert.with_file_name(".apiserver.crt.tmp"), &new).unwrap();
    fs::write(root.join("evil.tmp"), b"x").unwrap();
    fs::write(
        root.join(".commit"),
        "pki/apiserver.crt\n../outside\n/etc/passwd\n",
    )
    .unwrap();
    f.dir.recover().unwrap();
    assert_eq!(fs::read(&cert).unwrap(), new);
    assert!(!root.join(".commit").exists());
    assert!(!cert.with_file_name(".apiserver.crt.tmp").exists());
    assert!(!root.parent().unwrap().join("outside").exists());
}

/// The CA rotation's stages in a real state dir: what hosts trust and who
/// signs at each, leaves verified with openssl against each bundle, a jump
/// or a second rotation refused, and a rollback that ends where it began.
#[test]
fn ca_rotation_stages_overlap_trust_and_roll_back() {
    use rampart::pki::rotation::{advance, Rotated, Stage};
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let old_ca = pki::load(&inv, &f.dir, &f.unlock)
        .unwrap()
        .get("etcd-ca")
        .cert_pem
        .clone();
    let go = |id: &str, to: Stage| advance(&inv, &f.dir, &f.unlock, Rotated::Etcd, id, to, now());
    let pems = |s: &str| s.matches("BEGIN CERTIFICATE").count();
    let id = "20261202T100000Z";

    // A jump is refused; the state dir is untouched.
    let err = go(id, Stage::DropOld).unwrap_err().to_string();
    assert!(
        err.contains("cannot go from no rotation to drop-old"),
        "{err}"
    );

    go(id, Stage::AddNew).unwrap();
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(
        p.get("etcd-ca").cert_pem,
        old_ca,
        "add-new: the old CA still signs"
    );
    assert_eq!(pems(p.trust("etcd-ca")), 2, "add-new: hosts trust both");
    assert_eq!(pems(p.trust("ca")), 1, "other CAs are untouched");
    // Another rotation of the same CA waits for this one.
    let err = go("20261202T110000Z", Stage::AddNew)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume 20261202T100000Z"), "{err}");

    let t = go(id, Stage::Reissue).unwrap();
    assert!(t.reissued.contains(&"etcd-server-cp1".to_string()), "{t:?}");
    assert!(
        t.reissued.contains(&"apiserver-etcd-client".to_string()),
        "{t:?}"
    );
    assert!(
        !t.reissued.iter().any(|n| n == "apiserver"),
        "only the etcd CA's leaves"
    );
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    let new_ca = p.get("etcd-ca").cert_pem.clone();
    assert_ne!(new_ca, old_ca);
    assert!(
        p.trust("etcd-ca").starts_with(new_ca.trim_end()),
        "the signer comes first"
    );
    let (ok, text) = openssl_verify(
        f.tmp.path(),
        p.trust("etcd-ca"),
        &p.get("etcd-server-cp1").cert_pem,
        "sslserver",
    );
    assert!(ok, "{text}");
    let (ok, _) = openssl_verify(
        f.tmp.path(),
        &old_ca,
        &p.get("etcd-peer-cp2").cert_pem,
        "sslclient",
    );
    assert!(!ok, "reissued leaves chain to the new CA only");
    // Running the step again reissues nothing.
    assert!(go(id, Stage::Reissue).unwrap().reissued.is_empty());

    go(id, Stage::DropOld).unwrap();
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(p.trust("etcd-ca").trim_end(), new_ca.trim_end());
    assert_eq!(
        fs::read_to_string(f.dir.cert_path("etcd-ca")).unwrap(),
        old_ca,
        "the state dir keeps the old CA until the rotation is done"
    );

    // Back, one stage at a time, to the old CA alone and leaves under it.
    go(id, Stage::Reissue).unwrap();
    let t = go(id, Stage::AddNew).unwrap();
    assert!(t.reissued.contains(&"etcd-server-cp1".to_string()));
    go(id, Stage::RolledBack).unwrap();
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(p.get("etcd-ca").cert_pem, old_ca);
    assert_eq!(pems(p.trust("etcd-ca")), 1);
    let (ok, text) = openssl_verify(
        f.tmp.path(),
        &old_ca,
        &p.get("etcd-server-cp3").cert_pem,
        "sslserver",
    );
    assert!(ok, "{text}");
    assert!(!f.dir.cert_path("etcd-ca.next").exists());

    // A second rotation runs to the end: the new CA takes the old one's files.
    let id2 = "20261202T120000Z";
    for stage in [Stage::AddNew, Stage::Reissue, Stage::DropOld, Stage::Done] {
        go(id2, stage).unwrap();
    }
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_ne!(p.get("etcd-ca").cert_pem, old_ca);
    assert_eq!(pems(p.trust("etcd-ca")), 1);
    let err = go(id2, Stage::RolledBack).unwrap_err().to_string();
    assert!(err.contains("cannot go from done"), "{err}");
    // init agrees with the result: nothing to reissue.
    let (_, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(
        report.entries.iter().all(|(_, a)| *a == Issuance::Reused),
        "{report:?}"
    );

    // Renewal: new keys for the named leaves only.
    let before = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    let renewed =
        pki::renew::renew(&inv, &f.dir, &f.unlock, &["etcd-peer-cp1".into()], now()).unwrap();
    assert_eq!(renewed, ["etcd-peer-cp1"]);
    let after = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_ne!(
        before.get("etcd-peer-cp1").cert_pem,
        after.get("etcd-peer-cp1").cert_pem
    );
    assert_ne!(
        before.get("etcd-peer-cp1").key_pem.expose(),
        after.get("etcd-peer-cp1").key_pem.expose(),
        "renewal makes a new key"
    );
    assert_eq!(
        before.get("etcd-peer-cp2").cert_pem,
        after.get("etcd-peer-cp2").cert_pem
    );
}

/// The service-account key's rotation in a real state dir: at each stage
/// the apiservers sign with one key and verify with the public halves
/// `sa.pub` lists (the signer's first); a rollback after the new key
/// signed ends with the old key alone; a full rotation moves the new key
/// over the old files and `init` reuses it.
#[test]
fn service_account_key_rotation_signs_with_one_and_verifies_with_both() {
    use rampart::pki::rotation::{advance, Rotated, Stage};
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let go = |id: &str, to: Stage| {
        advance(
            &inv,
            &f.dir,
            &f.unlock,
            Rotated::ServiceAccountKey,
            id,
            to,
            now(),
        )
    };
    let public_of = |private: &rampart::secret::Secret| {
        rcgen::KeyPair::from_pem(private.expose_str())
            .unwrap()
            .public_key_pem()
    };
    let keys = |p: &pki::Pki| -> (String, Vec<String>) {
        let verify = p
            .service_account_pub()
            .split_inclusive("-----END PUBLIC KEY-----\n")
            .map(str::to_string)
            .collect();
        (public_of(p.service_account_key()), verify)
    };
    let (old, verify) = keys(&pki::load(&inv, &f.dir, &f.unlock).unwrap());
    assert_eq!(verify, std::slice::from_ref(&old));
    let id = "20261202T100000Z";

    let t = go(id, Stage::AddNew).unwrap();
    assert!(t.reissued.is_empty(), "no certificate changes: {t:?}");
    let (signer, verify) = keys(&pki::load(&inv, &f.dir, &f.unlock).unwrap());
    assert_eq!(signer, old, "add-new: the old key still signs");
    assert_eq!(verify.len(), 2);
    assert_eq!(verify[0], old);
    let new = verify[1].clone();
    assert_ne!(new, old);

    go(id, Stage::Reissue).unwrap();
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(keys(&p), (new.clone(), vec![new.clone(), old.clone()]));
    assert_eq!(
        p.get("etcd-ca").cert_pem,
        fs::read_to_string(f.dir.cert_path("etcd-ca")).unwrap(),
        "no CA moves"
    );

    go(id, Stage::DropOld).unwrap();
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(keys(&p), (new.clone(), vec![new.clone()]));
    assert_eq!(
        fs::read_to_string(f.dir.sa_pub_path()).unwrap(),
        old,
        "the state dir keeps the old key until the rotation is done"
    );

    // Back to the old key alone.
    for stage in [Stage::Reissue, Stage::AddNew, Stage::RolledBack] {
        go(id, stage).unwrap();
    }
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    assert_eq!(keys(&p), (old.clone(), vec![old.clone()]));
    assert!(!f.dir.public_key_path("sa.next").exists());
    assert!(!f.dir.key_path("sa.next").exists());

    // A full rotation: the new key takes sa.key.age and sa.pub.
    let id2 = "20261202T120000Z";
    for stage in [Stage::AddNew, Stage::Reissue, Stage::DropOld, Stage::Done] {
        go(id2, stage).unwrap();
    }
    let p = pki::load(&inv, &f.dir, &f.unlock).unwrap();
    let (signer, verify) = keys(&p);
    assert_ne!(signer, old);
    assert_eq!(verify, std::slice::from_ref(&signer));
    assert_eq!(fs::read_to_string(f.dir.sa_pub_path()).unwrap(), signer);
    let (_, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(
        report.entries.iter().all(|(_, a)| *a == Issuance::Reused),
        "{report:?}"
    );
    // The CA rotations are separate: the etcd CA can rotate meanwhile.
    advance(
        &inv,
        &f.dir,
        &f.unlock,
        Rotated::Etcd,
        id2,
        Stage::AddNew,
        now(),
    )
    .unwrap();
}

/// The encryption key's rotation in a real state dir: the apiservers'
/// EncryptionConfiguration lists the key that encrypts first and the one
/// that still decrypts after it, each under its own name (the name every
/// value carries); a full rotation leaves the new key alone under its name,
/// and `init` reuses it.
#[test]
fn encryption_key_rotation_keeps_both_keys_named_until_the_old_one_goes() {
    use rampart::pki::key_views::encryption_names;
    use rampart::pki::rotation::{advance, Rotated, Stage};
    let f = fixture();
    let inv = inventory(HA);
    pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    let go = |id: &str, to: Stage| {
        advance(
            &inv,
            &f.dir,
            &f.unlock,
            Rotated::EncryptionKey,
            id,
            to,
            now(),
        )
    };
    let keys = || -> Vec<(String, Vec<u8>)> {
        pki::load(&inv, &f.dir, &f.unlock)
            .unwrap()
            .encryption_keys
            .iter()
            .map(|k| (k.name.clone(), k.key.expose().to_vec()))
            .collect()
    };
    let first = keys();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "key1", "the name init always gave");
    let old = first[0].clone();
    let id = "20261202T100000Z";

    go(id, Stage::AddNew).unwrap();
    let k = keys();
    assert_eq!(k[0], old, "add-new: the old key still encrypts");
    assert_eq!(k[1].0, "key-20261202T100000Z");
    assert_eq!(k[1].1.len(), 32);
    assert_ne!(k[1].1, old.1);
    let new = k[1].clone();
    assert_eq!(
        encryption_names(&f.dir).unwrap(),
        ["key1", "key-20261202T100000Z"]
    );

    go(id, Stage::Reissue).unwrap();
    assert_eq!(
        keys(),
        [new.clone(), old.clone()],
        "reissue: the new key encrypts"
    );
    go(id, Stage::DropOld).unwrap();
    assert_eq!(keys(), std::slice::from_ref(&new));

    // Back to the old key alone, still called key1.
    for stage in [Stage::Reissue, Stage::AddNew, Stage::RolledBack] {
        go(id, stage).unwrap();
    }
    assert_eq!(keys(), std::slice::from_ref(&old));

    // A full rotation: the new key takes encryption-key.age and its name.
    let id2 = "20261202T120000Z";
    for stage in [Stage::AddNew, Stage::Reissue, Stage::DropOld, Stage::Done] {
        go(id2, stage).unwrap();
    }
    let k = keys();
    assert_eq!(k.len(), 1);
    assert_eq!(k[0].0, "key-20261202T120000Z");
    assert_ne!(k[0].1, old.1);
    assert!(!f.dir.sealed_path("encryption-key.next").exists());
    // The old key stays, sealed, for backups taken before the rotation.
    let retired = f.dir.sealed_path("encryption-key.retired.key1");
    assert!(retired.exists());
    assert_eq!(
        fs::metadata(&retired).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, report) = pki::init(&inv, &f.dir, &f.unlock, now()).unwrap();
    assert!(
        report.entries.iter().all(|(_, a)| *a == Issuance::Reused),
        "{report:?}"
    );
    assert_eq!(keys(), k, "init keeps the rotated key and its name");
}
