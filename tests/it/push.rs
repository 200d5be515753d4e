//! Copies to a backup target through a real OpenSSH sshd on 127.0.0.1 (see
//! `ssh.rs`, whose harness this uses): the target's `authorized_keys` holds
//! the line rampart renders, forcing the built binary's `agent receive`. The
//! member's side is the real job (`rampart agent snapshot` and `run_job`) with
//! a stand-in `etcdctl`, so what travels is a real age file with the job's own
//! manifest. Like `ssh.rs`, these need root and sshd and say so when skipped;
//! the signal test needs neither.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rampart::backup::{
    self, authorized_keys_line, manifest_path, push, AgentConfig, BackupError, LastRun, Manifest,
    RetentionPolicy, TargetConfig,
};
use rampart::remote::ssh::SshError;
use sha2::{Digest, Sha256};

use super::ssh::{can_run, keygen, keygen_fingerprint, pubkey, Sshd};

const RAMPART: &str = env!("CARGO_BIN_EXE_rampart");

/// A target sshd whose authorized_keys ties a push key to cp1's receive, and
/// a member dir whose job pushes there.
struct Setup {
    dir: tempfile::TempDir,
    sshd: Sshd,
    push_key: PathBuf,
    /// The target's backup dir (made by the first receive).
    target_dir: PathBuf,
    identity: age::x25519::Identity,
}

impl Setup {
    fn new(keep: Option<u32>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let push_key = keygen(dir.path(), "push_ed25519", "ed25519", "");
        let target_dir = dir.path().join("target/etcd-backups");
        let line = authorized_keys_line(
            RAMPART,
            "prod",
            "cp1",
            target_dir.to_str().unwrap(),
            &RetentionPolicy {
                count: keep,
                max_age_days: None,
            },
            &pubkey(&push_key),
        )
        .unwrap();
        let authorized = dir.path().join("authorized_keys");
        fs::write(&authorized, format!("{line}\n")).unwrap();
        let sshd = Sshd::start(dir.path(), "target", &authorized, "");
        Setup {
            dir,
            sshd,
            push_key,
            target_dir,
            identity: age::x25519::Identity::generate(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn target(&self) -> TargetConfig {
        TargetConfig {
            host: "bk1".into(),
            address: "127.0.0.1".into(),
            port: self.sshd.port,
            user: "root".into(),
            host_keys: vec![self.sshd.host_pub()],
            identity: self.push_key.clone(),
        }
    }

    /// cp1's job config: a stand-in etcdctl that "saves" 3 MB of noise.
    fn member(&self, name: &str) -> AgentConfig {
        let bin = self.path("bin");
        fs::create_dir_all(&bin).unwrap();
        let etcdctl = bin.join("etcdctl");
        let etcdutl = bin.join("etcdutl");
        script(
            &etcdctl,
            "for a; do last=$a; done\n\
             case \"$*\" in\n\
             *'endpoint status'*) echo '[{\"Status\":{\"version\":\"3.5.21\"}}]' ;;\n\
             *'snapshot save'*) head -c 3000000 /dev/urandom > \"$last\" ;;\n\
             *) echo \"unexpected: $*\" >&2; exit 2 ;;\n\
             esac\n",
        );
        script(
            &etcdutl,
            "echo '{\"hash\":1,\"revision\":42,\"totalKey\":7,\"totalSize\":3000000}'\n",
        );
        AgentConfig {
            cluster: "prod".into(),
            member: "cp1".into(),
            etcdctl,
            etcdutl: Some(etcdutl),
            endpoint: "https://127.0.0.1:2379".into(),
            cacert: self.path("ca.crt"),
            cert: self.path("hc.crt"),
            key: self.path("hc.key"),
            dir: self.path(name),
            recipients: vec![self.identity.to_public().to_string()],
            retention: RetentionPolicy::default(),
            target: Some(self.target()),
        }
    }
}

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every name in `dir` (hidden ones too); none when it does not exist.
fn listing(dir: &Path) -> BTreeSet<String> {
    let entries = fs::read_dir(dir).into_iter().flatten();
    entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn last_run(dir: &Path) -> LastRun {
    serde_json::from_slice(&fs::read(dir.join(backup::LAST_RUN)).unwrap()).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn agent_snapshot(cfg: &AgentConfig, path: &Path) -> Output {
    fs::write(path, cfg.to_yaml()).unwrap();
    Command::new(RAMPART)
        .args(["agent", "snapshot", "--config", path.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn the_job_copies_each_backup_to_the_target() {
    if !can_run() {
        return;
    }
    let s = Setup::new(Some(2));
    let cfg = s.member("member");

    // The scheduled job, as systemd runs it.
    let run = agent_snapshot(&cfg, &s.path("backup.yaml"));
    assert!(run.status.success(), "{}", text(&run.stderr));
    let last = last_run(&cfg.dir);
    let first = last.file.clone().unwrap();
    assert!(last.ok, "{last:?}");
    let copy = last.copy.as_ref().expect("the copy is recorded");
    assert_eq!((copy.host.as_str(), copy.ok), ("bk1", true), "{copy:?}");
    assert!(
        text(&run.stdout).contains(&format!("cp1: {first} copied to bk1")),
        "{}",
        text(&run.stdout)
    );

    // The copy: the same bytes, the job's manifest, private modes, and a real
    // age file that the admin's identity opens.
    let local = cfg.dir.join(&first);
    let remote = s.target_dir.join(&first);
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(manifest_path(&remote)).unwrap()).unwrap();
    assert_eq!(
        fs::read(manifest_path(&remote)).unwrap(),
        fs::read(manifest_path(&local)).unwrap()
    );
    assert_eq!(sha256(&remote), manifest.sha256);
    assert_eq!(
        fs::metadata(&remote).unwrap().len(),
        manifest.ciphertext_size
    );
    assert_eq!(fs::read(&remote).unwrap(), fs::read(&local).unwrap());
    assert_eq!(mode(&s.target_dir), 0o700);
    assert_eq!(mode(&remote), 0o600);
    assert_eq!(mode(&manifest_path(&remote)), 0o600);
    let plain = age::decrypt(&s.identity, &fs::read(&remote).unwrap()).unwrap();
    assert_eq!(plain.len() as u64, manifest.snapshot_size);
    assert_eq!(plain.len(), 3_000_000);
    let stored = listing(&s.target_dir);
    assert_eq!(
        stored,
        BTreeSet::from([
            ".prod-cp1-lock".to_string(),
            first.clone(),
            manifest_path(Path::new(&first)).display().to_string()
        ])
    );

    // A re-send (its first report lost) is success and changes nothing.
    let again = push(&s.target(), &local, &manifest_path(&local)).unwrap();
    assert!(again.received.already_stored);
    assert_eq!(again.received.sha256, manifest.sha256);
    assert_eq!(listing(&s.target_dir), stored);

    // Two more runs: the target keeps cp1's newest two, and says so.
    let t0 = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let second = backup::run_job(&cfg, t0).unwrap();
    assert!(second.copy.as_ref().unwrap().received.pruned.is_empty());
    let third = backup::run_job(&cfg, t0 + time::Duration::hours(1)).unwrap();
    let copy = third.copy.unwrap();
    assert_eq!(copy.received.pruned, vec![first.clone()]);
    assert_eq!(last_run(&cfg.dir).copy.unwrap().pruned, vec![first.clone()]);
    assert!(!remote.exists() && !manifest_path(&remote).exists());
    assert!(local.exists(), "the member's own retention is its own");
    for o in [&second.backup, &third.backup] {
        let name = o.file.file_name().unwrap();
        assert_eq!(sha256(&s.target_dir.join(name)), o.manifest.sha256);
    }
}

#[test]
fn a_wrong_host_key_fails_the_job_loudly_but_keeps_the_backup() {
    if !can_run() {
        return;
    }
    let s = Setup::new(None);
    let impostor = keygen(s.dir.path(), "impostor", "ed25519", "");
    let mut cfg = s.member("member");
    let target = cfg.target.as_mut().unwrap();
    target.host_keys = vec![pubkey(&impostor)];

    // The API: refused at the host key, naming both fingerprints.
    let err = backup::run_job(&cfg, time::OffsetDateTime::now_utc()).unwrap_err();
    let BackupError::Copy { file, host, source } = &err else {
        panic!("{err}");
    };
    assert_eq!(host, "bk1");
    match &**source {
        BackupError::Push {
            source: SshError::ChangedHostKey {
                expected, actual, ..
            },
            ..
        } => {
            assert_eq!(actual, &s.sshd.fingerprint());
            assert_eq!(
                expected,
                &vec![keygen_fingerprint(&impostor.with_extension("pub"))]
            );
        }
        other => panic!("{other}"),
    }
    assert!(file.exists() && manifest_path(file).exists());
    let last = last_run(&cfg.dir);
    assert!(!last.ok, "{last:?}");
    assert_eq!(last.file.as_deref(), file.file_name().unwrap().to_str());
    let error = last.error.unwrap();
    assert!(error.contains("host key changed"), "{error}");
    assert!(error.contains(&s.sshd.fingerprint()), "{error}");
    let copy = last.copy.unwrap();
    assert!(!copy.ok && copy.error.unwrap().contains("host key changed"));

    // The command, as systemd sees it: exit 1, the reason on stderr.
    std::thread::sleep(Duration::from_millis(1100)); // a new name
    let run = agent_snapshot(&cfg, &s.path("backup.yaml"));
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(
        stderr.starts_with("error: cp1: backup copy failed: ") && stderr.contains("is kept here"),
        "{stderr}"
    );
    assert_eq!(
        listing(&cfg.dir)
            .iter()
            .filter(|n| n.ends_with(".db.age"))
            .count(),
        2
    );

    // Nothing reached the target, not even an authentication attempt.
    assert!(!s.target_dir.exists());
    let log = s.sshd.log_text();
    assert!(!log.contains("userauth-request"), "{log}");
    assert!(!log.contains("Accepted publickey"), "{log}");
}

/// A backup of `member` (synthetic: any bytes with a matching manifest).
fn synthetic(dir: &Path, member: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let file = format!("prod-{member}-20260101T000000Z.db.age");
    let data = vec![7u8; 100_000];
    let path = dir.join(&file);
    fs::write(&path, &data).unwrap();
    let m = Manifest {
        file,
        sha256: hex::encode(Sha256::digest(&data)),
        ciphertext_size: data.len() as u64,
        snapshot_size: 1,
        revision: 1,
        total_keys: 1,
        snapshot_hash: 1,
        etcd_version: "3.5.21".into(),
        cluster: "prod".into(),
        member: member.into(),
        created: "2026-01-01T00:00:00Z".into(),
        recipients: vec![],
        rampart_version: "test".into(),
    };
    fs::write(manifest_path(&path), serde_json::to_vec(&m).unwrap()).unwrap();
    path
}

#[test]
fn the_push_key_runs_the_receiver_for_its_member_and_nothing_else() {
    if !can_run() {
        return;
    }
    let s = Setup::new(None);

    // Another member's backup sent with cp1's key: the forced command says cp1.
    let theirs = synthetic(&s.path("elsewhere"), "cp2");
    let err = push(&s.target(), &theirs, &manifest_path(&theirs)).unwrap_err();
    match &err {
        BackupError::PushRefused { host, stderr, .. } => {
            assert_eq!(host, "bk1");
            assert!(
                stderr.contains("may only send cp1's own backups"),
                "{stderr}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(!s.target_dir.exists());

    // OpenSSH's own client asking for a command gets the receiver instead,
    // which refuses the missing header and creates nothing.
    let known = s.path("known_hosts");
    fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", s.sshd.port, s.sshd.host_pub()),
    )
    .unwrap();
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-i")
        .arg(&s.push_key)
        .args([
            "-p",
            &s.sshd.port.to_string(),
            "root@127.0.0.1",
            "cat /etc/hostname",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not start with a rampart backup header"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.target_dir.exists());

    // An unknown key gets nothing at all.
    let stranger = keygen(s.dir.path(), "stranger", "ed25519", "");
    let mut target = s.target();
    target.identity = stranger.clone();
    let mine = synthetic(&s.path("member"), "cp1");
    let err = push(&target, &mine, &manifest_path(&mine)).unwrap_err();
    assert!(matches!(err, BackupError::PushAuth { .. }), "{err}");
    assert!(
        err.to_string().contains(&stranger.display().to_string()),
        "{err}"
    );
    assert!(!s.target_dir.exists());
}

/// A target that is down: a few quick retries, then an error that says where
/// it tried. No sshd needed.
#[test]
fn a_target_that_is_down_fails_after_two_quick_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "push", "ed25519", "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = TargetConfig {
        host: "bk1".into(),
        address: "127.0.0.1".into(),
        port,
        user: "root".into(),
        host_keys: vec![pubkey(&key)],
        identity: key,
    };
    let backup = synthetic(&tmp.path().join("member"), "cp1");
    let started = Instant::now();
    let err = push(&target, &backup, &manifest_path(&backup)).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            &err,
            BackupError::Push {
                source: SshError::Connect { .. },
                ..
            }
        ),
        "{err}"
    );
    // Backoff 0.5 s + 1 s between three attempts, no more.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // No push key: refused before dialling.
    let mut keyless = target.clone();
    keyless.identity = tmp.path().join("missing.key");
    let err = push(&keyless, &backup, &manifest_path(&backup)).unwrap_err();
    assert!(matches!(err, BackupError::PushKey { .. }), "{err}");
    assert!(err.to_string().contains("missing.key"), "{err}");

    // No pinned key: refused before dialling.
    let mut unpinned = target.clone();
    unpinned.host_keys.clear();
    let err = push(&unpinned, &backup, &manifest_path(&backup)).unwrap_err();
    assert!(matches!(err, BackupError::TargetUnpinned { .. }), "{err}");
}

/// sshd ends the forced command with SIGHUP when the session goes; the
/// receiver must not leave a partial backup behind. No sshd needed.
#[test]
fn a_hangup_mid_stream_leaves_no_partial_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("target");
    let backup = synthetic(&tmp.path().join("member"), "cp1");
    let manifest = fs::read(manifest_path(&backup)).unwrap();
    let data = fs::read(&backup).unwrap();
    let header = format!(
        "{{\"version\":1,\"file\":\"{}\",\"manifestSize\":{},\"size\":{}}}\n",
        backup.file_name().unwrap().to_str().unwrap(),
        manifest.len(),
        data.len()
    );
    let mut child = Command::new(RAMPART)
        .args([
            "agent",
            "receive",
            "--cluster",
            "prod",
            "--member",
            "cp1",
            "--dir",
        ])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(header.as_bytes()).unwrap();
    stdin.write_all(&manifest).unwrap();
    stdin.write_all(&data[..data.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listing(&dir).iter().any(|n| n.ends_with(".tmp")) {
        assert!(Instant::now() < deadline, "no temp file appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(128 + libc::SIGHUP));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("signal 1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        listing(&dir),
        BTreeSet::from([".prod-cp1-lock".to_string()])
    );
}
