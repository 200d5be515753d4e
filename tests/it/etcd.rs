//! The rendered etcd unit, the generated etcd certificates and Debian's real
//! `etcd-server` form a working member: healthy over mTLS with the healthcheck
//! client certificate, closed to clients without one or with a certificate from
//! another CA.
//!
//! There is no systemd as PID 1 here, so the test plays systemd's part: it runs
//! the unit's `ExecStart` as written, with `${CREDENTIALS_DIRECTORY}` pointing at a
//! directory filled from the unit's `LoadCredential=` lines. Only the data dir is
//! moved to a temp dir. The member listens on 127.0.0.2 (its inventory address)
//! and 127.0.0.1, both loopback: nothing leaves the machine.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rampart::cis::unit;
use rampart::inventory::parse;
use rampart::pki::{self, StateDir, Unlock};
use rampart::render::{self, HostBundle};

const INVENTORY: &str = r#"
cluster:
  name: etcd-test
  kubernetesVersion: "1.34"
hosts:
  - {name: e1, address: 127.0.0.2, roles: [etcd, control-plane, worker]}
"#;

/// Kills etcd when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn file<'a>(hb: &'a HostBundle, path: &str) -> &'a [u8] {
    hb.file(path)
        .unwrap_or_else(|| panic!("bundle lacks {path}"))
        .contents
        .bytes()
}

/// `LoadCredential=NAME:PATH` pairs.
fn credentials(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|c| {
            let (name, path) = c.split_once(':').expect("NAME:PATH");
            (name.to_string(), path.to_string())
        })
        .collect()
}

fn etcdctl(endpoint: &str, tls: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s");
    for (flag, path) in tls {
        cmd.arg(format!("--{flag}={}", path.display()));
    }
    cmd.args(args)
        .output()
        .expect("etcdctl runs (install etcd-client: tests/deps.sh)")
}

#[test]
fn rendered_etcd_member_serves_mtls_and_rejects_clients_without_a_cert() {
    let work = tempfile::tempdir().unwrap();
    let inv = parse(INVENTORY, Path::new("inventory.yaml"))
        .unwrap()
        .inventory;
    let id = age::x25519::Identity::generate();
    let id_path = work.path().join("id.txt");
    std::fs::write(&id_path, format!("{}\n", secrecy_str(&id))).unwrap();
    let state = StateDir::new(work.path().join("state"));
    let (pki, _) = pki::init(
        &inv,
        &state,
        &Unlock::Identity(id_path),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let bundle = render::render(&inv, &pki).unwrap();
    let hb = &bundle.hosts["e1"];

    // Play systemd: credentials dir from LoadCredential=, then ExecStart as written.
    let unit = String::from_utf8(file(hb, "/etc/systemd/system/etcd.service").to_vec()).unwrap();
    let creds = work.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for (name, path) in credentials(&unit) {
        std::fs::write(creds.join(&name), file(hb, &path)).unwrap();
    }
    let data = work.path().join("data");
    // The same reading of ExecStart the CIS self-check uses.
    let exec_start = unit::parse(&unit)
        .exec_start
        .expect("ExecStart= in etcd.service");
    let env = [(
        "CREDENTIALS_DIRECTORY".to_string(),
        creds.display().to_string(),
    )]
    .into();
    let argv: Vec<String> = unit::expand(&exec_start, &env)
        .into_iter()
        .map(|a| {
            a.replace(
                "--data-dir=/var/lib/etcd",
                &format!("--data-dir={}", data.display()),
            )
        })
        .collect();
    assert!(
        argv.iter().any(|a| a == "--client-cert-auth=true"),
        "{argv:?}"
    );
    let log = std::fs::File::create(work.path().join("etcd.log")).unwrap();
    let _etcd = Running(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install etcd-server: tests/deps.sh): {e}",
                    argv[0]
                )
            }),
    );

    // Client material as an admin would use it: the healthcheck client of the bundle.
    let pem = |name: &str, path: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, file(hb, path)).unwrap();
        p
    };
    let ca = pem("etcd-ca.crt", "/etc/kubernetes/pki/etcd/ca.crt");
    let hc_cert = pem("hc.crt", "/etc/kubernetes/pki/etcd/healthcheck-client.crt");
    let hc_key = pem("hc.key", "/etc/kubernetes/pki/etcd/healthcheck-client.key");
    let api_cert = pem("api.crt", "/etc/kubernetes/pki/apiserver-etcd-client.crt");
    let api_key = pem("api.key", "/etc/kubernetes/pki/apiserver-etcd-client.key");
    // A valid certificate, but from the kubernetes CA: etcd must not trust it.
    let kubelet_cert = pem("kubelet.crt", "/var/lib/kubelet/pki/kubelet.crt");
    let kubelet_key = pem("kubelet.key", "/var/lib/kubelet/pki/kubelet.key");

    let with_cert = [
        ("cacert", ca.as_path()),
        ("cert", &hc_cert),
        ("key", &hc_key),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(
            "https://127.0.0.2:2379",
            &with_cert,
            &["endpoint", "health"],
        );
        if out.status.success() {
            break;
        }
        let log = std::fs::read_to_string(work.path().join("etcd.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "etcd never became healthy:\n{}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Also on 127.0.0.1, and the apiserver's client can write and read.
    let local = etcdctl(
        "https://127.0.0.1:2379",
        &with_cert,
        &["endpoint", "health"],
    );
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let api = [
        ("cacert", ca.as_path()),
        ("cert", &api_cert),
        ("key", &api_key),
    ];
    assert!(etcdctl(
        "https://127.0.0.2:2379",
        &api,
        &["put", "/rampart/test", "ok"]
    )
    .status
    .success());
    let got = etcdctl(
        "https://127.0.0.2:2379",
        &api,
        &["get", "--print-value-only", "/rampart/test"],
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "ok");

    // No client certificate: refused.
    let anon = etcdctl(
        "https://127.0.0.2:2379",
        &[("cacert", ca.as_path())],
        &["endpoint", "health"],
    );
    assert!(
        !anon.status.success(),
        "etcd accepted a client without a certificate"
    );
    // A certificate from the kubernetes CA: refused.
    let foreign = [
        ("cacert", ca.as_path()),
        ("cert", &kubelet_cert),
        ("key", &kubelet_key),
    ];
    let out = etcdctl("https://127.0.0.2:2379", &foreign, &["endpoint", "health"]);
    assert!(
        !out.status.success(),
        "etcd accepted a certificate from another CA"
    );
    // Plain HTTP on the client port: refused.
    let plain = etcdctl("http://127.0.0.2:2379", &[], &["endpoint", "health"]);
    assert!(!plain.status.success(), "etcd answered plain HTTP");

    let log = std::fs::read_to_string(work.path().join("etcd.log")).unwrap();
    assert!(
        log.contains("client didn't provide a certificate") || log.contains("bad certificate"),
        "etcd's log does not show the refused client:\n{log}"
    );
}

fn secrecy_str(id: &age::x25519::Identity) -> String {
    use age::secrecy::ExposeSecret;
    id.to_string().expose_secret().to_string()
}
