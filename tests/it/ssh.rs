//! The SSH transport against real OpenSSH servers started by the tests.
//!
//! Each test runs its own `sshd -D -e` on 127.0.0.1 (loopback only) on a free
//! high port, with a host key from `ssh-keygen` and an `AuthorizedKeysFile` in
//! a temp dir. They need root (sshd, useradd, sudoers) and `/usr/sbin/sshd`;
//! elsewhere they print a line and pass. `tests/deps.sh` installs
//! openssh-server, openssh-client and sudo, so CI always runs them.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart::inventory::{Bastion, Become, Host, SshTarget};
use rampart::remote::ssh::{self, ConnectOptions, KeyStatus, SshError};
use rampart::remote::{Input, Remote, RemoteError};
use sha2::{Digest, Sha256};

const SSHD: &str = "/usr/sbin/sshd";

pub(super) fn can_run() -> bool {
    // sshd, useradd and the sudoers drop-in need root.
    let root = uid() == 0;
    if !root || !Path::new(SSHD).exists() {
        eprintln!(
            "ssh tests skipped: need root and {SSHD} (tests/deps.sh installs openssh-server)"
        );
        return false;
    }
    fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
    true
}

fn uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(1)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ssh-keygen -t TYPE` into `dir/name`; returns the private key path.
pub(super) fn keygen(dir: &Path, name: &str, kind: &str, pass: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", pass, "-C", name, "-f"])
        .arg(&path);
    if kind == "rsa" {
        cmd.args(["-b", "3072"]);
    }
    let st = cmd.status().expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen -t {kind}");
    path
}

pub(super) fn pubkey(path: &Path) -> String {
    fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// `SHA256:…` of a public key file, from `ssh-keygen -lf`.
pub(super) fn keygen_fingerprint(pub_path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// One sshd, killed when dropped.
pub(super) struct Sshd {
    child: Child,
    pub(super) port: u16,
    host_key: PathBuf,
    log: PathBuf,
}

impl Sshd {
    pub(super) fn start(dir: &Path, name: &str, authorized_keys: &Path, extra: &str) -> Sshd {
        let sdir = dir.join(name);
        fs::create_dir_all(&sdir).unwrap();
        let host_key = keygen(&sdir, "host_ed25519", "ed25519", "");
        let port = free_port();
        let cfg = sdir.join("sshd_config");
        fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nStrictModes no\nUsePAM no\nLogLevel DEBUG1\n{extra}\n",
                hk = host_key.display(),
                pid = sdir.join("sshd.pid").display(),
                ak = authorized_keys.display(),
            ),
        )
        .unwrap();
        let log = sdir.join("sshd.log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("sshd starts");
        let sshd = Sshd {
            child,
            port,
            host_key,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                sshd.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    pub(super) fn host_pub(&self) -> String {
        pubkey(&self.host_key)
    }

    pub(super) fn fingerprint(&self) -> String {
        keygen_fingerprint(&self.host_key.with_extension("pub"))
    }

    pub(super) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp dir with a client key authorized for every user of the sshd.
struct Lab {
    dir: tempfile::TempDir,
    key: PathBuf,
    authorized: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let key = keygen(dir.path(), "client_ed25519", "ed25519", "");
        let authorized = dir.path().join("authorized_keys");
        fs::write(&authorized, format!("{}\n", pubkey(&key))).unwrap();
        Lab {
            dir,
            key,
            authorized,
        }
    }

    fn authorize(&self, key: &Path) {
        let mut text = fs::read_to_string(&self.authorized).unwrap();
        text.push_str(&pubkey(key));
        text.push('\n');
        fs::write(&self.authorized, text).unwrap();
    }

    fn sshd(&self, name: &str, extra: &str) -> Sshd {
        Sshd::start(self.dir.path(), name, &self.authorized, extra)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A host at the sshd, its key pinned.
    fn host(&self, sshd: &Sshd) -> Host {
        let mut h = self.host_unpinned(sshd);
        h.ssh.host_key = Some(sshd.host_pub());
        h
    }

    fn host_unpinned(&self, sshd: &Sshd) -> Host {
        Host {
            name: "cp1".into(),
            address: "127.0.0.1".parse().unwrap(),
            roles: Default::default(),
            extra_sans: vec![],
            labels: Default::default(),
            ssh: SshTarget {
                user: "root".into(),
                port: sshd.port,
                identity_file: Some(self.key.clone()),
                agent: false,
                become_: Become::None,
                known_hosts_file: Some(self.path("known_hosts")),
                bastion: None,
                host_key: None,
            },
        }
    }

    fn opts(&self) -> ConnectOptions {
        let cfg = self.path("ssh_config");
        if !cfg.exists() {
            fs::write(&cfg, "").unwrap();
        }
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            retries: 0,
            // Never the workstation's ~/.ssh/config.
            ssh_config: Some(cfg),
            ..Default::default()
        }
    }
}

#[tokio::test]
async fn runs_scripts_with_stdin_and_reports_status() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let remote = ssh::connect(&lab.host(&sshd), &lab.opts()).await.unwrap();
    assert_eq!(remote.host(), "cp1");

    let script = "set -eu\ntr a-z A-Z\necho 'to stderr' >&2\nexit 3\n";
    let out = remote
        .run(script, Input::Bytes(b"hello 'world'\n".to_vec()))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "HELLO 'WORLD'\n");
    // (the test sshd runs with -d and adds its own lines before ours)
    assert_eq!(last_stderr_line(&out), "to stderr");
    assert_eq!(out.status, Some(3));
    assert_eq!(remote.bytes_sent(), (script.len() + 14) as u64);

    let out = remote
        .run("id -u; echo \"[$ROOT]\"", Input::None)
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout_text(), "0\n[]\n");

    // Many scripts at once on the one session, proven without a clock: each
    // of the first 8 (the channel limit) waits until all 8 have started, which
    // only ends if they run side by side; 4 more queue for a free channel.
    let barrier = tempfile::tempdir().unwrap();
    let dir = barrier.path().display().to_string();
    let runs = (0..12).map(|i| {
        let remote = &remote;
        let script = if i < 8 {
            format!(
                "touch {dir}/{i}; n=0; while [ $(ls {dir} | wc -l) -lt 8 ]; do n=$((n+1)); [ $n -lt 600 ] || exit 9; sleep 0.05; done; echo {i}"
            )
        } else {
            format!("echo {i}")
        };
        async move {
            remote
                .run(&script, Input::None)
                .await
                .unwrap()
                .stdout_text()
        }
    });
    let outs = futures::future::join_all(runs).await;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o, &format!("{i}\n"), "script {i} (8 must run at once)");
    }
}

#[tokio::test]
async fn streams_a_large_file_to_stdin() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let remote = ssh::connect(&lab.host(&sshd), &lab.opts()).await.unwrap();

    // 20 MiB that do not compress to nothing.
    let path = lab.path("blob");
    let mut data = Vec::with_capacity(20 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(&path, &data).unwrap();
    let want = hex(&Sha256::digest(&data));

    let script = "sha256sum | cut -d' ' -f1";
    let out = remote.run(script, Input::File(path)).await.unwrap();
    assert!(out.success(), "{}", out.stderr_tail());
    assert_eq!(out.stdout_text().trim(), want);
    assert_eq!(remote.bytes_sent(), (script.len() + data.len()) as u64);

    // A missing file runs nothing.
    let err = remote
        .run("touch /tmp/never", Input::File(lab.path("missing")))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Input { .. }), "{err}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn unknown_host_key_is_refused_before_anything_is_sent() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let host = lab.host_unpinned(&sshd);
    let err = match ssh::connect(&host, &lab.opts()).await {
        Ok(_) => panic!("an unknown host key was accepted"),
        Err(e) => e,
    };
    match &err {
        SshError::UnknownHostKey {
            host,
            fingerprint,
            key_type,
        } => {
            assert_eq!(host, "cp1");
            assert_eq!(fingerprint, &sshd.fingerprint());
            assert_eq!(key_type, "ssh-ed25519");
        }
        other => panic!("unexpected: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("rampart hosts trust"), "{msg}");
    assert!(!lab.path("known_hosts").exists());
    // The client never got as far as offering a key, let alone a command.
    std::thread::sleep(Duration::from_millis(200));
    let log = sshd.log_text();
    assert!(!log.contains("userauth-request"), "{log}");
    assert!(!log.contains("Accepted publickey"), "{log}");
}

#[tokio::test]
async fn changed_host_key_is_refused_even_when_accepting_new_keys() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let other = keygen(lab.dir.path(), "other_host", "ed25519", "");
    let mut host = lab.host_unpinned(&sshd);
    host.ssh.host_key = Some(pubkey(&other));
    let mut opts = lab.opts();
    opts.accept_new_host_keys = true;
    opts.retries = 3;
    let err = ssh::connect(&host, &opts).await.err().expect("refused");
    match &err {
        SshError::ChangedHostKey {
            host,
            expected,
            actual,
        } => {
            assert_eq!(host, "cp1");
            assert_eq!(
                expected,
                &vec![keygen_fingerprint(&other.with_extension("pub"))]
            );
            assert_eq!(actual, &sshd.fingerprint());
        }
        other => panic!("unexpected: {other}"),
    }
    // Refused once, never retried: sshd saw the harness's readiness probe
    // and this one connection. A retry would come 0.5 s later; wait past it.
    let count = || sshd.log_text().matches("Connection from").count();
    for _ in 0..100 {
        if count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(), 2, "retried:\n{}", sshd.log_text());
    assert!(!lab.path("known_hosts").exists());

    // The same through known_hosts.
    fs::write(
        lab.path("known_hosts"),
        format!("[127.0.0.1]:{} {}\n", sshd.port, pubkey(&other)),
    )
    .unwrap();
    let err = ssh::connect(&lab.host_unpinned(&sshd), &opts)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, SshError::ChangedHostKey { .. }), "{err}");
    let scanned = ssh::scan_host_key(&lab.host_unpinned(&sshd), &lab.opts())
        .await
        .unwrap();
    assert!(matches!(scanned.status, KeyStatus::Changed { .. }));
}

#[tokio::test]
async fn accept_new_records_the_key_and_trust_pins_it() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let host = lab.host_unpinned(&sshd);
    let kh = lab.path("known_hosts");

    // hosts trust: scan, pin, scan again.
    let scanned = ssh::scan_host_key(&host, &lab.opts()).await.unwrap();
    assert_eq!(scanned.status, KeyStatus::Unknown);
    assert_eq!(scanned.fingerprint(), sshd.fingerprint());
    let server_line = sshd.host_pub();
    assert!(server_line.starts_with(&scanned.openssh()), "{server_line}");
    let pins = lab.path("pins/known_hosts");
    ssh::pin_host_key(&pins, &host, &scanned).unwrap();
    let text = fs::read_to_string(&pins).unwrap();
    assert_eq!(
        text,
        format!("[127.0.0.1]:{} {}\n", sshd.port, scanned.openssh())
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&pins).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut pinned = host.clone();
    pinned.ssh.known_hosts_file = Some(pins.clone());
    let again = ssh::scan_host_key(&pinned, &lab.opts()).await.unwrap();
    assert_eq!(again.status, KeyStatus::Known);
    // The scan authenticated nobody.
    assert!(!sshd.log_text().contains("Accepted publickey"));

    // accept-new: recorded on first contact, trusted afterwards.
    let mut opts = lab.opts();
    opts.accept_new_host_keys = true;
    let remote = ssh::connect(&host, &opts).await.unwrap();
    assert!(remote.run("true", Input::None).await.unwrap().success());
    let text = fs::read_to_string(&kh).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)));
    assert_eq!(
        fs::metadata(&kh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    assert!(remote.run("true", Input::None).await.unwrap().success());
    assert_eq!(fs::read_to_string(&kh).unwrap(), text, "appended twice");

    // Hashed known_hosts entries (ssh-keygen -H) are honoured.
    let st = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(fs::read_to_string(&kh).unwrap().starts_with("|1|"));
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    assert!(remote.run("true", Input::None).await.unwrap().success());
}

#[tokio::test]
async fn encrypted_and_rsa_keys_authenticate() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let enc = keygen(lab.dir.path(), "enc_ed25519", "ed25519", "pass phrase");
    let rsa = keygen(lab.dir.path(), "id_rsa", "rsa", "");
    lab.authorize(&enc);
    lab.authorize(&rsa);
    let sshd = lab.sshd("sshd", "");

    let mut host = lab.host(&sshd);
    host.ssh.identity_file = Some(enc.clone());
    // The only test touching this variable.
    std::env::remove_var("RAMPART_SSH_PASSPHRASE");
    let err = ssh::connect(&host, &lab.opts())
        .await
        .err()
        .expect("locked");
    assert!(matches!(err, SshError::KeyPassphrase { .. }), "{err}");
    assert!(err.to_string().contains("RAMPART_SSH_PASSPHRASE"), "{err}");
    std::env::set_var("RAMPART_SSH_PASSPHRASE", "wrong");
    let err = ssh::connect(&host, &lab.opts()).await.err().expect("wrong");
    assert!(matches!(err, SshError::Key { .. }), "{err}");
    std::env::set_var("RAMPART_SSH_PASSPHRASE", "pass phrase");
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    std::env::remove_var("RAMPART_SSH_PASSPHRASE");
    assert!(remote.run("true", Input::None).await.unwrap().success());

    host.ssh.identity_file = Some(rsa);
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    assert_eq!(
        remote
            .run("echo rsa", Input::None)
            .await
            .unwrap()
            .stdout_text(),
        "rsa\n"
    );
    let log = sshd.log_text();
    assert!(log.contains("Accepted publickey for root"), "{log}");
    assert!(log.contains("RSA SHA256:"), "{log}");

    // A key the host does not know: an Auth error listing what was tried.
    let stranger = keygen(lab.dir.path(), "stranger", "ed25519", "");
    host.ssh.identity_file = Some(stranger.clone());
    let err = ssh::connect(&host, &lab.opts())
        .await
        .err()
        .expect("refused");
    match &err {
        SshError::Auth { host, user, tried } => {
            assert_eq!((host.as_str(), user.as_str()), ("cp1", "root"));
            assert!(
                tried
                    .iter()
                    .any(|t| t.contains(&stranger.display().to_string())),
                "{tried:?}"
            );
        }
        other => panic!("unexpected: {other}"),
    }
}

/// Creates a login user (unlocked, no password) and, for `sudo`, a NOPASSWD
/// drop-in that is removed when dropped.
struct TestUser {
    sudoers: Option<PathBuf>,
}

impl TestUser {
    fn new(name: &str, sudo: bool) -> TestUser {
        if Command::new("id")
            .arg(name)
            .output()
            .unwrap()
            .status
            .success()
        {
            // A '*' password: no password login, but not "locked" for sshd.
            let _ = Command::new("usermod").args(["-p", "*", name]).status();
        } else {
            let st = Command::new("useradd")
                .args(["-m", "-s", "/bin/sh", "-p", "*", name])
                .status()
                .unwrap();
            assert!(st.success(), "useradd {name}");
        }
        let sudoers = sudo.then(|| {
            let p = PathBuf::from(format!("/etc/sudoers.d/{name}"));
            fs::write(&p, format!("{name} ALL=(ALL) NOPASSWD: ALL\n")).unwrap();
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
            p
        });
        TestUser { sudoers }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Some(p) = &self.sudoers {
            let _ = fs::remove_file(p);
        }
    }
}

#[tokio::test]
async fn non_root_login_goes_through_sudo() {
    if !can_run() {
        return;
    }
    if !Path::new("/usr/bin/sudo").exists() {
        eprintln!("sudo test skipped: sudo is not installed (tests/deps.sh installs it)");
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let _with = TestUser::new("rampart-test", true);
    let _without = TestUser::new("rampart-nosudo", false);

    let mut host = lab.host(&sshd);
    host.ssh.user = "rampart-test".into();
    host.ssh.become_ = Become::Sudo;
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    let out = remote
        .run("id -un; cat", Input::Bytes(b"via sudo\n".to_vec()))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_tail());
    assert_eq!(out.stdout_text(), "root\nvia sudo\n");
    let (line, held) = remote.hold("id -u; cat").await.unwrap().unwrap();
    assert_eq!(line, "0");
    held.release().await.unwrap();

    host.ssh.user = "rampart-nosudo".into();
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    let err = remote
        .run("touch /root/never", Input::None)
        .await
        .unwrap_err();
    match &err {
        RemoteError::SudoPassword { host, user } => {
            assert_eq!((host.as_str(), user.as_str()), ("cp1", "rampart-nosudo"));
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(!Path::new("/root/never").exists());
    let err = remote
        .hold("echo locked; cat")
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, RemoteError::SudoPassword { .. }), "{err}");
}

#[tokio::test]
async fn bastion_carries_the_session_over_direct_tcpip() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let bastion = lab.sshd("bastion", "AllowTcpForwarding yes\n");
    let target = lab.sshd("target", "AllowTcpForwarding no\n");
    let mut host = lab.host(&target);
    host.ssh.bastion = Some(Bastion {
        address: "127.0.0.1".into(),
        port: bastion.port,
        user: "root".into(),
        identity_file: None,
        host_key: Some(bastion.host_pub()),
    });
    let remote = ssh::connect(&host, &lab.opts()).await.unwrap();
    let out = remote.run("echo through", Input::None).await.unwrap();
    assert_eq!(out.stdout_text(), "through\n");

    let log = bastion.log_text();
    assert!(
        log.contains("direct-tcpip") && log.contains(&format!("port {}", target.port)),
        "bastion log shows no forwarding to the target:\n{log}"
    );
    drop(remote);

    // hosts trust scans the target through the bastion, the target's key.
    let scanned = ssh::scan_host_key(&host, &lab.opts()).await.unwrap();
    assert_eq!(scanned.status, KeyStatus::Known);
    assert_eq!(scanned.fingerprint(), target.fingerprint());

    // The bastion's key is verified the same strict way.
    let other = keygen(lab.dir.path(), "other_bastion", "ed25519", "");
    host.ssh.bastion.as_mut().unwrap().host_key = Some(pubkey(&other));
    let err = ssh::connect(&host, &lab.opts())
        .await
        .err()
        .expect("refused");
    match &err {
        SshError::ChangedHostKey { host, actual, .. } => {
            assert!(host.contains("bastion of cp1"), "{host}");
            assert_eq!(actual, &bastion.fingerprint());
        }
        other => panic!("unexpected: {other}"),
    }
    let err = ssh::scan_host_key(&host, &lab.opts())
        .await
        .expect_err("refused");
    assert!(matches!(err, SshError::ChangedHostKey { .. }), "{err}");

    // ProxyJump from the ssh config does the same when the inventory has no bastion.
    let cfg = lab.path("jump_config");
    fs::write(
        &cfg,
        format!(
            "Host cp1\n  ProxyJump root@jump\nHost jump\n  HostName 127.0.0.1\n  Port {}\n",
            bastion.port
        ),
    )
    .unwrap();
    fs::write(
        lab.path("known_hosts"),
        format!("[127.0.0.1]:{} {}\n", bastion.port, bastion.host_pub()),
    )
    .unwrap();
    host.ssh.bastion = None;
    let mut opts = lab.opts();
    opts.ssh_config = Some(cfg);
    let before = bastion.log_text().matches("direct-tcpip").count();
    let remote = ssh::connect(&host, &opts).await.unwrap();
    assert_eq!(
        remote
            .run("echo jumped", Input::None)
            .await
            .unwrap()
            .stdout_text(),
        "jumped\n"
    );
    assert!(bastion.log_text().matches("direct-tcpip").count() > before);
}

#[tokio::test]
async fn hold_keeps_a_script_running_until_released() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let remote = ssh::connect(&lab.host(&sshd), &lab.opts()).await.unwrap();
    let marker = lab.path("released");
    let script = format!(
        "echo locked; echo noise; cat >/dev/null; echo done > {}",
        marker.display()
    );
    let (line, held) = remote.hold(&script).await.unwrap().unwrap();
    assert_eq!(line, "locked");
    // Other scripts run while it is held.
    let out = remote.run("echo meanwhile", Input::None).await.unwrap();
    assert_eq!(out.stdout_text(), "meanwhile\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "ended before release");
    held.release().await.unwrap();
    assert_eq!(fs::read_to_string(&marker).unwrap(), "done\n");

    // A script that exits before its first line yields its output.
    let out = remote
        .hold("echo nope >&2; exit 7")
        .await
        .unwrap()
        .err()
        .expect("no line");
    assert_eq!(out.status, Some(7));
    assert_eq!(last_stderr_line(&out), "nope");

    // Dropping the handle closes stdin too.
    let marker2 = lab.path("dropped");
    let script = format!("echo locked; cat >/dev/null; touch {}", marker2.display());
    let (_, held) = remote.hold(&script).await.unwrap().unwrap();
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker2.exists() {
        assert!(Instant::now() < deadline, "drop did not close stdin");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refused_connection_is_a_connect_error_after_bounded_retries() {
    let lab = Lab::new();
    let port = free_port();
    let mut host = Host {
        name: "cp9".into(),
        address: "127.0.0.1".parse().unwrap(),
        roles: Default::default(),
        extra_sans: vec![],
        labels: Default::default(),
        ssh: SshTarget {
            user: "root".into(),
            port,
            identity_file: Some(lab.key.clone()),
            agent: false,
            become_: Become::None,
            known_hosts_file: Some(lab.path("known_hosts")),
            bastion: None,
            host_key: None,
        },
    };
    let mut opts = lab.opts();
    opts.retries = 2;
    let started = Instant::now();
    let err = ssh::connect(&host, &opts).await.err().expect("refused");
    let took = started.elapsed();
    match &err {
        SshError::Connect { host, addr, reason } => {
            assert_eq!(host, "cp9");
            assert_eq!(addr, &format!("127.0.0.1:{port}"));
            assert!(reason.contains("refused"), "{reason}");
        }
        other => panic!("unexpected: {other}"),
    }
    // Two retries: 0.5 s + 1 s of backoff, no more.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cp9: cannot connect to 127.0.0.1:"),
        "{msg}"
    );

    host.ssh.identity_file = Some(lab.path("no-such-key"));
    let err = ssh::connect(&host, &opts).await.err().expect("no key");
    assert!(matches!(err, SshError::Key { .. }), "{err}");
}

#[tokio::test]
async fn a_dropped_connection_is_reported_as_disconnected() {
    if !can_run() {
        return;
    }
    let lab = Lab::new();
    let sshd = lab.sshd("sshd", "");
    let remote = ssh::connect(&lab.host(&sshd), &lab.opts()).await.unwrap();
    let (_, held) = remote.hold("echo locked; cat").await.unwrap().unwrap();
    // The script's parent is the sshd process serving this connection.
    let err = remote
        .run("kill -9 $PPID; sleep 5", Input::None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RemoteError::Disconnected { host, .. } if host == "cp1"),
        "{err}"
    );
    // The host is named by whoever reports it (`cp1: connection lost: …`).
    assert!(err.to_string().starts_with("connection lost"), "{err}");
    let err = remote.run("true", Input::None).await.unwrap_err();
    assert!(matches!(err, RemoteError::Disconnected { .. }), "{err}");
    let err = held.release().await.unwrap_err();
    assert!(matches!(err, RemoteError::Disconnected { .. }), "{err}");
}

/// The script's own last stderr line (the debug sshd writes lines before it).
fn last_stderr_line(out: &rampart::remote::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}
