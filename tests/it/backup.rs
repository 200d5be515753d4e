//! The backup job against a real etcd member: Debian's `etcd-server` started
//! from the rendered unit with the generated PKI (as in `etcd.rs`), listening on
//! 127.0.0.3 only so it can run beside the other etcd tests. What the job writes
//! is checked with the real `age` CLI and `etcdctl snapshot status`, not with
//! rampart's own reader alone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rampart::backup::{
    self, manifest_path, AgentConfig, LastRun, Manifest, RetentionPolicy, VerifyError,
    VerifyOptions,
};
use rampart::cis::unit;
use rampart::inventory::parse;
use rampart::pki::{self, StateDir, Unlock};
use rampart::render::{self, HostBundle};
use sha2::{Digest, Sha256};

const ADDR: &str = "127.0.0.3";
const INVENTORY: &str = r#"
cluster:
  name: bk
  kubernetesVersion: "1.34"
hosts:
  - {name: e3, address: 127.0.0.3, roles: [etcd, control-plane, worker]}
  - {name: w1, address: 127.0.0.9, roles: [worker]}
backups:
  schedule: "*-*-* 00/6:00:00"
  randomizedDelay: 30min
  recipients: [age1jyqgnpk7g9dmlvchtnq05q5dek9wsatdywuums8780kt2f7lt5nqfqjtz9]
  retention: {count: 3}
"#;

/// Kills etcd when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Client TLS material of the healthcheck client, as the job uses it on a member.
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn file<'a>(hb: &'a HostBundle, path: &str) -> &'a [u8] {
    hb.file(path)
        .unwrap_or_else(|| panic!("bundle lacks {path}"))
        .contents
        .bytes()
}

/// Issues the PKI, plays systemd for the rendered etcd unit (see `etcd.rs`) and
/// waits until the member is healthy.
fn start_etcd(work: &Path) -> (Running, Tls) {
    let inv = parse(INVENTORY, Path::new("inventory.yaml"))
        .unwrap()
        .inventory;
    let id = age::x25519::Identity::generate();
    let id_path = work.join("state-id.txt");
    std::fs::write(&id_path, format!("{}\n", secret(&id))).unwrap();
    let state = StateDir::new(work.join("state"));
    let (pki, _) = pki::init(
        &inv,
        &state,
        &Unlock::Identity(id_path),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let bundle = render::render(&inv, &pki).unwrap();
    let hb = &bundle.hosts["e3"];
    let unit_text =
        String::from_utf8(file(hb, "/etc/systemd/system/etcd.service").to_vec()).unwrap();
    let creds = work.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for line in unit_text.lines() {
        if let Some((name, path)) = line
            .strip_prefix("LoadCredential=")
            .and_then(|c| c.split_once(':'))
        {
            std::fs::write(creds.join(name), file(hb, path)).unwrap();
        }
    }
    let env = [(
        "CREDENTIALS_DIRECTORY".to_string(),
        creds.display().to_string(),
    )]
    .into();
    let data = work.join("data");
    // Only 127.0.0.3: 127.0.0.1:2379/2381 belong to the etcd test running in parallel.
    let argv: Vec<String> = unit::expand(&unit::parse(&unit_text).exec_start.unwrap(), &env)
        .into_iter()
        .map(|a| {
            if a.starts_with("--data-dir=") {
                format!("--data-dir={}", data.display())
            } else if a.starts_with("--listen-client-urls=") {
                format!("--listen-client-urls=https://{ADDR}:2379")
            } else if a.starts_with("--listen-metrics-urls=") {
                format!("--listen-metrics-urls=http://{ADDR}:2381")
            } else {
                a
            }
        })
        .collect();
    let log = std::fs::File::create(work.join("etcd.log")).unwrap();
    let etcd = Running(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (install etcd-server: tests/deps.sh)"),
    );
    let pem = |name: &str, path: &str| {
        let p = work.join(name);
        std::fs::write(&p, file(hb, path)).unwrap();
        p
    };
    let tls = Tls {
        ca: pem("ca.crt", "/etc/kubernetes/pki/etcd/ca.crt"),
        cert: pem("hc.crt", "/etc/kubernetes/pki/etcd/healthcheck-client.crt"),
        key: pem("hc.key", "/etc/kubernetes/pki/etcd/healthcheck-client.key"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&tls, &["endpoint", "health"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd never became healthy:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(work.join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (etcd, tls)
}

fn etcdctl(tls: &Tls, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{ADDR}:2379"))
        .arg(format!("--cacert={}", tls.ca.display()))
        .arg(format!("--cert={}", tls.cert.display()))
        .arg(format!("--key={}", tls.key.display()))
        .arg("--dial-timeout=2s")
        .args(args)
        .output()
        .expect("etcdctl runs (install etcd-client: tests/deps.sh)")
}

fn secret(id: &age::x25519::Identity) -> String {
    use age::secrecy::ExposeSecret;
    id.to_string().expose_secret().to_string()
}

fn config(tls: &Tls, dir: &Path, recipients: Vec<String>, count: u32) -> AgentConfig {
    AgentConfig {
        cluster: "bk".into(),
        member: "e3".into(),
        etcdctl: "/usr/bin/etcdctl".into(),
        etcdutl: None,
        endpoint: format!("https://{ADDR}:2379"),
        cacert: tls.ca.clone(),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        dir: dir.to_path_buf(),
        recipients,
        retention: RetentionPolicy {
            count: Some(count),
            max_age_days: None,
        },
        target: None,
    }
}

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every path under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

fn walk_if(dir: &Path) -> Vec<PathBuf> {
    if dir.is_dir() {
        walk(dir)
    } else {
        Vec::new()
    }
}

/// `snapshot status -w json` of a plaintext snapshot, by the real etcdctl.
fn snapshot_status(db: &Path) -> serde_json::Value {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn age_decrypt(identity: &Path, file: &Path, out: &Path) {
    let r = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(out)
        .arg(file)
        .output()
        .expect("age runs (apt install age)");
    assert!(r.status.success(), "age -d failed: {}", text(&r.stderr));
}

#[test]
fn snapshot_job_against_real_etcd() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (etcd, tls) = start_etcd(w);
    for i in 0..10 {
        let k = format!("/rampart/backup/k{i}");
        assert!(etcdctl(&tls, &["put", &k, &format!("value {i}")])
            .status
            .success());
    }
    let header: serde_json::Value =
        serde_json::from_slice(&etcdctl(&tls, &["get", "/rampart/backup/k0", "-w", "json"]).stdout)
            .unwrap();
    let revision = header["header"]["revision"].as_i64().unwrap();

    // Recipients: an age key and an ssh-ed25519 key.
    let id = age::x25519::Identity::generate();
    let id_path = w.join("identity.txt");
    std::fs::write(&id_path, format!("{}\n", secret(&id))).unwrap();
    let ssh_key = w.join("id_ed25519");
    let kg = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "backup@test", "-f"])
        .arg(&ssh_key)
        .output()
        .unwrap();
    assert!(kg.status.success(), "{}", text(&kg.stderr));
    let ssh_pub = std::fs::read_to_string(w.join("id_ed25519.pub")).unwrap();
    let recipients = vec![id.to_public().to_string(), ssh_pub.trim().to_string()];

    // A plaintext left by a killed run must be gone after the next one.
    let dir = w.join("backups");
    std::fs::create_dir_all(dir.join(".work")).unwrap();
    std::fs::write(
        dir.join(".work/bk-e3-20200101T000000Z.db"),
        "stale plaintext",
    )
    .unwrap();

    let cfg = config(&tls, &dir, recipients.clone(), 3);
    let cfg_path = w.join("backup.yaml");
    std::fs::write(&cfg_path, cfg.to_yaml()).unwrap();
    let run = rampart(&["agent", "snapshot", "--config", cfg_path.to_str().unwrap()]);
    assert!(run.status.success(), "job failed: {}", text(&run.stderr));
    assert!(
        text(&run.stdout).starts_with("e3: wrote "),
        "{}",
        text(&run.stdout)
    );

    // Exactly the backup, its manifest and the last-run record; private modes.
    let files = walk(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(mode(&dir), 0o700);
    let backup_file = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".db.age"))
        .unwrap()
        .clone();
    let name = backup_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("bk-e3-") && name.len() == "bk-e3-20260101T000000Z.db.age".len(),
        "{name}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(manifest_path(&backup_file)).unwrap()).unwrap();
    let last: LastRun =
        serde_json::from_slice(&std::fs::read(dir.join("last-run.json")).unwrap()).unwrap();
    assert!(last.ok && last.error.is_none(), "{last:?}");
    assert_eq!(last.file.as_deref(), Some(name.as_str()));
    assert_eq!(manifest.file, name);
    assert_eq!(manifest.revision, revision);
    assert_eq!(manifest.member, "e3");
    assert_eq!(manifest.cluster, "bk");
    assert_eq!(manifest.recipients, recipients);
    assert!(
        manifest.etcd_version.starts_with("3."),
        "{}",
        manifest.etcd_version
    );
    let ct = std::fs::read(&backup_file).unwrap();
    assert_eq!(manifest.ciphertext_size, ct.len() as u64);
    assert_eq!(manifest.sha256, hex::encode(Sha256::digest(&ct)));
    assert!(ct.starts_with(b"age-encryption.org/v1\n"));

    // The real age CLI decrypts it with either key, and etcdctl reads the result.
    let out = w.join("out");
    std::fs::create_dir(&out).unwrap();
    for (key, plain) in [
        (&id_path, out.join("x25519.db")),
        (&ssh_key, out.join("ssh.db")),
    ] {
        age_decrypt(key, &backup_file, &plain);
        let st = snapshot_status(&plain);
        assert_eq!(st["revision"].as_i64(), Some(revision), "{st}");
        assert_eq!(st["totalKey"].as_u64(), Some(manifest.total_keys), "{st}");
        assert_eq!(st["hash"].as_u64(), Some(manifest.snapshot_hash), "{st}");
        assert_eq!(
            std::fs::metadata(&plain).unwrap().len(),
            manifest.snapshot_size
        );
        assert!(manifest.total_keys >= 10, "{manifest:?}");
    }

    // `rampart backup verify` accepts it, with either identity.
    for key in [&id_path, &ssh_key] {
        let v = rampart(&[
            "backup",
            "verify",
            backup_file.to_str().unwrap(),
            "--identity",
            key.to_str().unwrap(),
            "--output",
            "json",
        ]);
        assert!(
            v.status.success(),
            "verify refused a good backup: {}",
            text(&v.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(report["status"]["revision"].as_i64(), Some(revision));
        assert_eq!(report["sha256"].as_str(), Some(manifest.sha256.as_str()));
    }

    // Damaged copies and wrong keys are refused, each with its own error.
    let opts = |identity: &Path| VerifyOptions {
        identities: vec![identity.to_path_buf()],
        etcdctl: "etcdctl".into(),
        etcdutl: None,
        scratch: Some(w.join("scratch")),
        cancel: None,
    };
    std::fs::create_dir(w.join("scratch")).unwrap();
    let copies = w.join("copies");
    std::fs::create_dir(&copies).unwrap();
    let copy = |label: &str, bytes: &[u8], with_manifest: bool| {
        let p = copies.join(format!("{label}.db.age"));
        std::fs::write(&p, bytes).unwrap();
        if with_manifest {
            std::fs::copy(manifest_path(&backup_file), manifest_path(&p)).unwrap();
        }
        p
    };
    let truncated = &ct[..ct.len() - 1000];
    let mut flipped = ct.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;

    let e = backup::verify(&copy("trunc-m", truncated, true), &opts(&id_path)).unwrap_err();
    assert!(matches!(e, VerifyError::Truncated { .. }), "{e}");
    let e = backup::verify(&copy("flip-m", &flipped, true), &opts(&id_path)).unwrap_err();
    assert!(matches!(e, VerifyError::ShaMismatch { .. }), "{e}");
    let e = backup::verify(&copy("trunc", truncated, false), &opts(&id_path)).unwrap_err();
    assert!(matches!(e, VerifyError::Corrupt { .. }), "{e}");
    let e = backup::verify(&copy("flip", &flipped, false), &opts(&id_path)).unwrap_err();
    assert!(matches!(e, VerifyError::Corrupt { .. }), "{e}");
    let other = w.join("other.txt");
    std::fs::write(
        &other,
        format!("{}\n", secret(&age::x25519::Identity::generate())),
    )
    .unwrap();
    let e = backup::verify(&backup_file, &opts(&other)).unwrap_err();
    assert!(matches!(e, VerifyError::WrongIdentity { .. }), "{e}");
    // A file that is age but not a snapshot.
    let not_db = copies.join("text.db.age");
    let enc = age::encrypt(&id.to_public(), b"not a bolt database").unwrap();
    std::fs::write(&not_db, enc).unwrap();
    let e = backup::verify(&not_db, &opts(&id_path)).unwrap_err();
    assert!(matches!(e, VerifyError::NotSnapshot { .. }), "{e}");
    // No plaintext is left in the scratch dir, whatever the outcome.
    assert!(walk(&w.join("scratch")).is_empty());
    // The CLI: exit 1 and a message that names the file and the problem.
    let v = rampart(&[
        "backup",
        "verify",
        copies.join("flip-m.db.age").to_str().unwrap(),
        "--identity",
        id_path.to_str().unwrap(),
    ]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v.stderr).contains("does not match its manifest"),
        "{}",
        text(&v.stderr)
    );
    let v = rampart(&[
        "backup",
        "verify",
        backup_file.to_str().unwrap(),
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v.stderr).contains("none of the identities can decrypt"),
        "{}",
        text(&v.stderr)
    );

    // A job failing after the plaintext exists (a broken `snapshot status`):
    // error, no plaintext, no partial ciphertext, last run recorded as failed.
    let fail_dir = w.join("failing");
    let broken = w.join("etcdutl");
    std::fs::write(&broken, "#!/bin/sh\necho 'Error: boom' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut failing = config(&tls, &fail_dir, recipients.clone(), 3);
    failing.etcdutl = Some(broken);
    let e = backup::run_job(&failing, time::OffsetDateTime::now_utc()).unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");
    assert_eq!(walk(&fail_dir), vec![fail_dir.join("last-run.json")]);
    let last: LastRun =
        serde_json::from_slice(&std::fs::read(fail_dir.join("last-run.json")).unwrap()).unwrap();
    assert!(
        !last.ok && last.error.as_deref().unwrap().contains("boom"),
        "{last:?}"
    );

    // systemd stopping the job mid-run (SIGTERM while `snapshot status` runs):
    // exit 128+15, plaintext and partial ciphertext removed, failure recorded.
    let term_dir = w.join("terminated");
    let slow = w.join("slow-etcdutl");
    std::fs::write(&slow, "#!/bin/sh\nexec sleep 5\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut term = config(&tls, &term_dir, recipients.clone(), 3);
    term.etcdutl = Some(slow);
    let term_cfg = w.join("term.yaml");
    std::fs::write(&term_cfg, term.to_yaml()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["agent", "snapshot", "--config", term_cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !walk_if(&term_dir)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".db"))
    {
        assert!(
            Instant::now() < deadline,
            "the job never wrote its plaintext"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    assert_eq!(walk(&term_dir), vec![term_dir.join("last-run.json")]);
    let last: LastRun =
        serde_json::from_slice(&std::fs::read(term_dir.join("last-run.json")).unwrap()).unwrap();
    assert!(
        !last.ok && last.error.as_deref().unwrap().contains("signal 15"),
        "{last:?}"
    );

    // Retention: the fourth run with count=3 prunes the oldest.
    let ret_dir = w.join("retention");
    let ret = config(&tls, &ret_dir, recipients, 3);
    let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
    let mut written = Vec::new();
    for h in 0..4 {
        let o = backup::run_job(&ret, t0 + time::Duration::hours(h))
            .unwrap()
            .backup;
        written.push(o.file.clone());
        if h < 3 {
            assert!(o.pruned.is_empty(), "{:?}", o.pruned);
        } else {
            assert_eq!(o.pruned, vec![written[0].clone()]);
        }
    }
    assert!(!written[0].exists() && !manifest_path(&written[0]).exists());
    for f in &written[1..] {
        assert!(f.exists() && manifest_path(f).exists(), "{}", f.display());
    }

    // etcd stopped: the job exits 1 with the reason on stderr (the journal) and
    // records the failure; the good backups are untouched.
    drop(etcd);
    let before = walk(&dir);
    let run = rampart(&["agent", "snapshot", "--config", cfg_path.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).starts_with("error: e3: etcd backup failed: "),
        "{}",
        text(&run.stderr)
    );
    assert_eq!(walk(&dir), before);
    let last: LastRun =
        serde_json::from_slice(&std::fs::read(dir.join("last-run.json")).unwrap()).unwrap();
    assert!(!last.ok && last.error.is_some(), "{last:?}");
}

#[test]
fn job_with_unusable_client_files_fails_loudly() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = w.join("backups");
    // Empty certificate files: etcdctl gives up before dialling (nothing listens on port 9 anyway).
    let tls = Tls {
        ca: w.join("ca.crt"),
        cert: w.join("hc.crt"),
        key: w.join("hc.key"),
    };
    for p in [&tls.ca, &tls.cert, &tls.key] {
        std::fs::write(p, "").unwrap();
    }
    let mut cfg = config(
        &tls,
        &dir,
        vec![age::x25519::Identity::generate().to_public().to_string()],
        3,
    );
    cfg.endpoint = format!("https://{ADDR}:9");
    let cfg_path = w.join("backup.yaml");
    std::fs::write(&cfg_path, cfg.to_yaml()).unwrap();
    let run = rampart(&["agent", "snapshot", "--config", cfg_path.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let err = text(&run.stderr);
    assert!(err.starts_with("error: e3: etcd backup failed: "), "{err}");
    assert_eq!(walk(&dir), vec![dir.join("last-run.json")]);
    let last: LastRun =
        serde_json::from_slice(&std::fs::read(dir.join("last-run.json")).unwrap()).unwrap();
    assert!(!last.ok && last.file.is_none(), "{last:?}");
}

#[test]
fn backup_units_pass_systemd_analyze_verify() {
    if !super::systemd::have_systemd_analyze() {
        return;
    }
    let inv = parse(INVENTORY, Path::new("inventory.yaml"))
        .unwrap()
        .inventory;
    let (service, timer) = rampart::render::backup_units(&inv, inv.host("e3").unwrap())
        .unwrap()
        .unwrap();
    super::systemd::verify(&[
        ("rampart-backup.service".into(), service),
        ("rampart-backup.timer".into(), timer),
    ])
    .unwrap_or_else(|e| panic!("systemd-analyze verify failed:\n{e}"));
    assert!(rampart::render::backup_units(&inv, inv.host("w1").unwrap())
        .unwrap()
        .is_none());
}

/// A backup of `size` bytes (not a snapshot: these runs never get as far as
/// `snapshot status`, or get there with a stand-in), encrypted to a new
/// identity: (ciphertext, identity file).
fn synthetic_backup(w: &Path, size: usize) -> (Vec<u8>, PathBuf) {
    let id = age::x25519::Identity::generate();
    let id_path = w.join("verify-id.txt");
    std::fs::write(&id_path, format!("{}\n", secret(&id))).unwrap();
    let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    (age::encrypt(&id.to_public(), &plain).unwrap(), id_path)
}

/// The scratch dirs `verify` made in `dir` (and did not delete).
fn scratch_dirs(dir: &Path) -> Vec<PathBuf> {
    walk_if(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".rampart-verify-"))
        })
        .collect()
}

/// The plaintext of the one verification running in `dir` and its size, once
/// it has at least `min` bytes.
fn wait_for_plaintext(dir: &Path, min: u64, child: &mut Child) -> (PathBuf, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for d in scratch_dirs(dir) {
            let p = d.join("snapshot.db");
            if let Ok(m) = std::fs::metadata(&p) {
                if m.len() >= min {
                    return (p, m.len());
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("rampart ended ({status}) before the plaintext was there");
        }
        assert!(
            Instant::now() < deadline,
            "no plaintext in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens the FIFO at `path` for writing once `child` opened it for reading
/// (without blocking forever if it never does).
fn open_fifo_writer(path: &Path, child: &mut Child) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + Duration::from_secs(30);
    let f = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("rampart ended ({status}) before reading the backup");
                }
                assert!(Instant::now() < deadline, "rampart never read the backup");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    use std::os::fd::AsRawFd;
    // SAFETY: clearing O_NONBLOCK on a valid fd, so writes wait for the reader.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
    f
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Starts rampart (`command`, given the backup's path and the identity) on a
/// 48 MiB backup that comes through a FIFO, so the test decides where
/// "mid-way" is: half of it is fed, the plaintext is seen growing in
/// `scratch` (0600 in a 0700 dir), then SIGINT with the rest held back, or,
/// with `keep_feeding`, still fed (a process that stops between reads, not at
/// once, would otherwise wait for a read forever; the writes fail once it
/// has stopped reading, which is the point). Checks exit 130 and that nothing
/// is left in `scratch`.
fn sigint_mid_decryption(
    w: &Path,
    scratch: &Path,
    keep_feeding: bool,
    command: impl FnOnce(&Path, &Path) -> Command,
) -> Output {
    let size = 48 << 20;
    let (ct, id_path) = synthetic_backup(w, size);
    let fifo = w.join("bk-e3-20260101T000000Z.db.age");
    mkfifo(&fifo);
    let mut child = command(&fifo, &id_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = open_fifo_writer(&fifo, &mut child);
    use std::io::Write;
    pipe.write_all(&ct[..ct.len() / 2]).unwrap();
    let (plain, seen) = wait_for_plaintext(scratch, 8 << 20, &mut child);
    assert!(seen < size as u64, "not mid-way: {seen} bytes");
    assert_eq!(mode(&plain), 0o600);
    assert_eq!(mode(plain.parent().unwrap()), 0o700);
    signal(&child, libc::SIGINT);
    let feeder = std::thread::spawn(move || {
        if keep_feeding {
            let _ = pipe.write_all(&ct[ct.len() / 2..]);
        }
        pipe
    });
    let out = child.wait_with_output().unwrap();
    drop(feeder.join().unwrap());
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(
        walk(scratch),
        Vec::<PathBuf>::new(),
        "plaintext left behind"
    );
    out
}

/// Ctrl-C while `backup verify` is decrypting: exit 130 and no plaintext
/// left; the scratch dir is in `$TMPDIR`.
#[test]
fn verify_interrupted_mid_decryption_leaves_no_plaintext() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let tmp = w.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = sigint_mid_decryption(w, &tmp, false, |fifo, id_path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
        c.args(["backup", "verify"])
            .arg(fifo)
            .arg("--identity")
            .arg(id_path)
            .env("TMPDIR", &tmp);
        c
    });
    assert!(
        text(&out.stderr).contains("interrupted by signal 2"),
        "{}",
        text(&out.stderr)
    );
}

/// SIGTERM and SIGHUP while `snapshot status` reads the plaintext: exit 143
/// and 129, nothing left. SIGKILL cannot be caught: its plaintext stays until
/// the next verification in that scratch dir, which deletes it but leaves a
/// live run's dir alone.
#[test]
fn verify_stopped_by_signals_leaves_no_plaintext_and_clears_a_killed_runs() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let size = 4 << 20;
    let (ct, id_path) = synthetic_backup(w, size);
    let file = w.join("bk-e3-20260101T000000Z.db.age");
    std::fs::write(&file, &ct).unwrap();
    let scratch = w.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // `snapshot status` that takes its time; an empty PATH, so no etcdutl is preferred to it.
    let slow = w.join("slow-etcdctl");
    std::fs::write(&slow, "#!/bin/sh\nexec /bin/sleep 30\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let empty = w.join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let verify = |identity: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
        c.args(["backup", "verify"])
            .arg(&file)
            .arg("--identity")
            .arg(identity)
            .arg("--etcdctl")
            .arg(&slow)
            .arg("--scratch-dir")
            .arg(&scratch)
            .env("PATH", &empty)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let mut child = verify(&id_path).spawn().unwrap();
        wait_for_plaintext(&scratch, size as u64, &mut child);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert_eq!(walk(&scratch), Vec::<PathBuf>::new(), "signal {sig}");
    }

    let mut killed = verify(&id_path).spawn().unwrap();
    wait_for_plaintext(&scratch, size as u64, &mut killed);
    let mut live = verify(&id_path).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scratch_dirs(&scratch).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second run made no scratch dir"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&killed, libc::SIGKILL);
    killed.wait().unwrap();
    let left = scratch_dirs(&scratch);
    assert_eq!(left.len(), 2, "{left:?}");
    // Fails (wrong key) after clearing the killed run's dir, not the live one's.
    let other = w.join("other.txt");
    std::fs::write(
        &other,
        format!("{}\n", secret(&age::x25519::Identity::generate())),
    )
    .unwrap();
    let out = verify(&other).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let after = scratch_dirs(&scratch);
    assert_eq!(after.len(), 1, "{after:?}");
    let live_dir = after[0].clone();
    assert!(
        live_dir
            .to_string_lossy()
            .contains(&format!("-verify-{}-", live.id())),
        "{after:?}"
    );
    signal(&live, libc::SIGTERM);
    assert_eq!(live.wait().unwrap().code(), Some(143));
    assert_eq!(walk(&scratch), Vec::<PathBuf>::new());
}

/// `backup restore` verifies through the same guarded scratch dir; Ctrl-C
/// while it decrypts stops it within a MiB (it cancels rather than exits),
/// before any host is contacted: exit 130, no plaintext.
#[test]
fn restore_interrupted_while_verifying_leaves_no_plaintext() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let inventory = w.join("inventory.yaml");
    std::fs::write(&inventory, INVENTORY).unwrap();
    let scratch = w.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out = sigint_mid_decryption(w, &scratch, true, |fifo, id_path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
        c.args(["backup", "restore"])
            .arg(fifo)
            .arg("--identity")
            .arg(id_path)
            .arg("-i")
            .arg(&inventory)
            .arg("--state-dir")
            .arg(w.join("state"))
            .arg("--scratch-dir")
            .arg(&scratch)
            .arg("--dry-run");
        c
    });
    assert!(
        text(&out.stderr).contains("no host was contacted"),
        "{}",
        text(&out.stderr)
    );
}

/// `backup pull` once stopped at the first corrupt copy on a host, leaving
/// that host's intact copies (the target holds every member's) unpulled.
#[tokio::test]
async fn pull_takes_every_intact_copy_past_a_corrupt_one() {
    use rampart::actions::backup::{self as actions, Holder};
    use rampart::backup::Manifest;
    use rampart::remote::local::LocalRemote;

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("target");
    std::fs::create_dir(&dir).unwrap();
    for (member, body, honest) in [
        ("cp1", b"one".as_slice(), true),
        ("cp2", b"two", false),
        ("cp3", b"three", true),
    ] {
        let file = format!("lab-{member}-20261202T000000Z.db.age");
        std::fs::write(dir.join(&file), body).unwrap();
        let m = Manifest {
            file: file.clone(),
            // cp2's copy no longer matches what its manifest says.
            sha256: hex::encode(Sha256::digest(if honest { body } else { b"tw0" })),
            ciphertext_size: body.len() as u64,
            snapshot_size: 1,
            revision: 1,
            total_keys: 1,
            snapshot_hash: 1,
            etcd_version: "3.4.23".into(),
            cluster: "lab".into(),
            member: member.into(),
            created: "2026-12-02T00:00:00Z".into(),
            recipients: vec![],
            rampart_version: "0".into(),
        };
        std::fs::write(
            dir.join(format!("lab-{member}-20261202T000000Z.manifest.json")),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
    }
    let inv = parse(
        "cluster: {name: lab, kubernetesVersion: \"1.34\"}\nhosts:\n  - {name: vault, address: 192.0.2.9, roles: [etcd, control-plane]}\n",
        Path::new("."),
    )
    .unwrap()
    .inventory;
    let holder = Holder {
        host: inv.hosts[0].clone(),
        dir: dir.display().to_string(),
        target: true,
    };
    let remote = LocalRemote::new("vault", work.path().join("root"));
    let listed = actions::list(&remote, &holder).await.unwrap();
    assert_eq!(listed.backups.len(), 3);
    let wanted: Vec<&Manifest> = listed.backups.iter().collect();
    let to = work.path().join("pulled");
    let (pulled, failed) = actions::pull_all(&remote, &listed, &wanted, &to).await;
    let mut names: Vec<String> = pulled
        .iter()
        .map(|p| p.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "lab-cp1-20261202T000000Z.db.age",
            "lab-cp3-20261202T000000Z.db.age"
        ]
    );
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].file, "lab-cp2-20261202T000000Z.db.age");
    assert!(failed[0].error.contains("sha256"), "{}", failed[0].error);
    // Nothing of the corrupt copy is kept.
    assert!(!to.join("vault/lab-cp2-20261202T000000Z.db.age").exists());
    assert!(walk(&to.join("vault"))
        .iter()
        .all(|p| !p.to_string_lossy().contains("cp2")));
}
