//! The install engine on real shell, real files and real renames, without
//! SSH: each "host" is a [`LocalRemote`] whose `/` is a temp dir. `systemctl`
//! and `systemd-analyze` are recording stand-ins (no systemd as PID 1 here).
//! The same engine over real SSH, systemd and etcd is proven in `lab`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart::actions::apply::{self, ApplyError, ApplyOptions, ApplyRun};
use rampart::engine::{Cancel, Silent};
use rampart::engine::{ConnectError, Connector};
use rampart::inventory::{parse, Host, Inventory};
use rampart::pki::{self, StateDir, Unlock};
use rampart::plan::FileAction;
use rampart::remote::local::LocalRemote;
use rampart::remote::{BoxFuture, Input, Remote};
use rampart::render::{self, Bundle};
use sha2::{Digest, Sha256};

const INVENTORY: &str = r#"
cluster:
  name: engine
  kubernetesVersion: "1.34"
hosts:
  - {name: cp1, address: 192.0.2.11, roles: [etcd, control-plane]}
  - {name: w1, address: 192.0.2.21, roles: [worker]}
"#;

/// Starts of services are skipped: there is no systemd, etcd or apiserver
/// here; nor kernel settings: there is no /proc/sys under the scratch root.
const SKIP: [&str; 6] = [
    "kernel-settings",
    "start-etcd",
    "start-control-plane",
    "apply-manifests",
    "start-nodes",
    "start-scan",
];

/// `systemctl` remembering enabled units in `$ROOT/../systemctl.state` and
/// logging every call; `systemd-analyze verify` accepting everything.
const SYSTEMCTL: &str = r#"#!/bin/sh
log="$ROOT/../systemctl.log"; state="$ROOT/../systemctl.state"
echo "$*" >> "$log"
case "$1" in
  --version) echo "systemd 252 (252.39-1~deb12u1)";;
  is-active) echo inactive; exit 3;;
  is-enabled) grep -qx "$2" "$state" 2>/dev/null && echo enabled || { echo disabled; exit 1; };;
  enable) shift; for u in "$@"; do case "$u" in -*) ;; *) echo "$u" >> "$state";; esac; done;;
esac
exit 0
"#;

struct Lab {
    work: tempfile::TempDir,
    identity: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let work = tempfile::tempdir().unwrap();
        let bin = work.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, text) in [
            ("systemctl", SYSTEMCTL),
            ("systemd-analyze", "#!/bin/sh\nexit 0\n"),
            // This machine's listeners are not the "host's": other tests run
            // etcd on loopback at the same time, which preflight would see.
            ("ss", "#!/bin/sh\nexit 0\n"),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let id = age::x25519::Identity::generate();
        let identity = work.path().join("id.txt");
        use age::secrecy::ExposeSecret;
        std::fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
        Lab { work, identity }
    }
    fn root(&self, host: &str) -> PathBuf {
        self.work.path().join("hosts").join(host).join("root")
    }
    fn bundle(&self, inv: &Inventory) -> Bundle {
        let state = StateDir::new(self.work.path().join("state"));
        let unlock = Unlock::Identity(self.identity.clone());
        let (pki, _) = pki::init(inv, &state, &unlock, time::OffsetDateTime::now_utc()).unwrap();
        render::render(inv, &pki).unwrap()
    }
    fn systemctl_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.root(host).join("../systemctl.log")).unwrap_or_default()
    }
}

impl Connector for Lab {
    fn connect<'a>(
        &'a self,
        host: &'a Host,
    ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>> {
        Box::pin(async move {
            let root = self.root(&host.name);
            std::fs::create_dir_all(&root).unwrap();
            let remote =
                LocalRemote::new(&host.name, root).with_path_prefix(self.work.path().join("bin"));
            Ok(Arc::new(remote) as Arc<dyn Remote>)
        })
    }
}

fn inventory(extra: &str) -> Inventory {
    parse(&format!("{INVENTORY}{extra}"), Path::new("inventory.yaml"))
        .unwrap()
        .inventory
}

fn options(lock: bool) -> ApplyOptions {
    ApplyOptions {
        hosts: None,
        skip: SKIP.iter().map(|s| s.to_string()).collect(),
        concurrency: 4,
        lock,
        owner: "engine test".into(),
        admin_time: time::OffsetDateTime::now_utc().unix_timestamp(),
        stamp: "20261130T120000Z".into(),
        bootstrap: None,
    }
}

async fn prepare<'l>(
    lab: &'l Lab,
    inv: &Inventory,
    bundle: &Bundle,
    lock: bool,
) -> Result<ApplyRun<'l>, ApplyError> {
    apply::prepare(
        inv,
        bundle,
        lab,
        &options(lock),
        &Silent,
        &Cancel::default(),
    )
    .await
}

async fn apply<'l>(lab: &'l Lab, inv: &Inventory, bundle: &Bundle) -> ApplyRun<'l> {
    let mut p = prepare(lab, inv, bundle, true).await.unwrap();
    apply::execute(inv, &mut p, &options(true), &Silent, &Cancel::default())
        .await
        .unwrap();
    p.release().await;
    p
}

fn uid_name(uid: u32) -> String {
    let out = std::process::Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file of the bundle is on the "host" with its mode, owner and sha256.
fn assert_installed(lab: &Lab, bundle: &Bundle) {
    for (host, hb) in &bundle.hosts {
        let root = lab.root(host);
        for f in &hb.files {
            let p = root.join(f.path.trim_start_matches('/'));
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{host}: {}: {e}", f.path));
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                f.sha256(),
                "{host}: {}",
                f.path
            );
            let meta = std::fs::metadata(&p).unwrap();
            assert_eq!(meta.mode() & 0o7777, f.mode, "{host}: mode of {}", f.path);
            assert_eq!(uid_name(meta.uid()), f.owner, "{host}: owner of {}", f.path);
        }
        for d in &hb.dirs {
            let meta = std::fs::metadata(root.join(d.path.trim_start_matches('/'))).unwrap();
            assert_eq!(meta.mode() & 0o7777, d.mode, "{host}: mode of {}/", d.path);
            assert_eq!(
                uid_name(meta.uid()),
                d.owner,
                "{host}: owner of {}/",
                d.path
            );
        }
    }
}

fn staged_leftovers(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().ends_with(".rampart-new") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_installs_the_bundle_then_converges_to_no_changes() {
    let lab = Lab::new();
    let inv = inventory("");
    let bundle = lab.bundle(&inv);

    let first = apply(&lab, &inv, &bundle).await;
    let created: usize = first.targets.iter().map(|t| t.plan.files.len()).sum();
    let expected: usize = bundle.hosts.values().map(|h| h.files.len()).sum();
    assert_eq!(
        created, expected,
        "every file is created on the first apply"
    );
    assert_installed(&lab, &bundle);
    // Workers hold no CA key and no etcd material.
    let w1 = lab.root("w1");
    assert!(!w1.join("etc/kubernetes/pki/ca.key").exists());
    assert!(!w1.join("etc/kubernetes/pki/etcd").exists());
    assert!(lab.systemctl_log("cp1").contains("daemon-reload"));
    assert!(lab
        .systemctl_log("cp1")
        .contains("enable --no-reload etcd.service kube-apiserver.service"));

    // Second run: nothing to do, nothing restarted, nothing enabled again.
    let log_before = lab.systemctl_log("cp1");
    let mut second = prepare(&lab, &inv, &bundle, true).await.unwrap();
    assert!(
        second.is_noop(),
        "{:#?}",
        second.reports().iter().map(|r| &r.plan).collect::<Vec<_>>()
    );
    apply::execute(
        &inv,
        &mut second,
        &options(true),
        &Silent,
        &Cancel::default(),
    )
    .await
    .unwrap();
    let calls: Vec<String> = lab.systemctl_log("cp1")[log_before.len()..]
        .lines()
        // Reads only: is-active, is-enabled, show.
        .filter(|l| !l.starts_with("is-") && !l.starts_with("--version") && !l.starts_with("show "))
        .map(str::to_string)
        .collect();
    assert!(calls.is_empty(), "a no-op apply called systemctl {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_value_changes_exactly_its_files_and_restarts_only_their_services() {
    let lab = Lab::new();
    let inv = inventory("");
    let bundle = lab.bundle(&inv);
    apply(&lab, &inv, &bundle).await;

    let inv = inventory("security:\n  auditLog:\n    maxAgeDays: 45\n");
    let bundle = lab.bundle(&inv);
    let mut skip_nothing = options(false);
    skip_nothing.skip.clear();
    let p = apply::prepare(
        &inv,
        &bundle,
        &lab,
        &skip_nothing,
        &Silent,
        &Cancel::default(),
    )
    .await
    .unwrap();
    let by_host: BTreeMap<&str, _> = p
        .targets
        .iter()
        .map(|t| (t.host.name.as_str(), &t.plan))
        .collect();
    let cp1 = by_host["cp1"];
    let changed: Vec<&str> = cp1.files.iter().map(|c| c.path.as_str()).collect();
    // The host scan's manifest records every file's sha256, so it changes
    // with any file; it restarts nothing (the scan reads it on each run).
    assert_eq!(
        changed,
        [
            "/etc/rampart/scan/manifest",
            "/etc/systemd/system/kube-apiserver.service"
        ]
    );
    assert!(cp1.files[0].services.is_empty());
    assert_eq!(cp1.files[1].action, FileAction::Update);
    let diff = cp1.files[1]
        .diff
        .as_deref()
        .expect("a unit file gets a diff");
    assert!(diff.contains("+  --audit-log-maxage=45"), "{diff}");
    let restarts: Vec<String> = cp1.services.keys().map(|s| s.to_string()).collect();
    // Nothing runs here, so every service would be started; the change
    // itself restarts the apiserver only.
    assert!(
        matches!(
            cp1.services[&rampart::render::Service::KubeApiserver],
            rampart::plan::ServiceAction::Restart { .. }
        ),
        "{restarts:?}"
    );
    assert!(by_host["w1"].files.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_named_in_plans_but_never_shown() {
    let lab = Lab::new();
    let inv = inventory("");
    let bundle = lab.bundle(&inv);
    apply(&lab, &inv, &bundle).await;
    // Hand-edit a secret and a plain file on the host: both are planned back.
    let root = lab.root("cp1");
    std::fs::write(
        root.join("etc/kubernetes/encryption-config.yaml"),
        "tampered\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/kubernetes/audit-policy.yaml"), "tampered\n").unwrap();
    let p = prepare(&lab, &inv, &bundle, false).await.unwrap();
    let text = rampart::plan::show::host(&p.targets[0].plan);
    assert!(
        text.contains("/etc/kubernetes/encryption-config.yaml (0600 root:root) [secret]: content"),
        "{text}"
    );
    assert!(text.contains("-tampered"), "plain files get a diff: {text}");
    let json = serde_json::to_string(&p.reports()).unwrap();
    let hb = &bundle.hosts["cp1"];
    for f in hb.files.iter().filter(|f| f.contents.is_secret()) {
        let secret = String::from_utf8_lossy(f.contents.bytes());
        let line = secret.lines().find(|l| l.len() > 20).unwrap_or(&secret);
        assert!(
            !text.contains(line) && !json.contains(line),
            "{} leaked",
            f.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_short_leaves_no_partial_file() {
    let lab = Lab::new();
    let root = lab.root("cp1");
    std::fs::create_dir_all(root.join("etc/kubernetes")).unwrap();
    let remote = LocalRemote::new("cp1", root.clone());
    let staged = [rampart::remote::script::Staged {
        path: "/etc/kubernetes/admin.conf".into(),
        mode: 0o600,
        owner: "root".into(),
        group: "root".into(),
        size: 1000,
    }];
    // 10 of the 1000 bytes arrive, then the stream ends (a dropped connection).
    let out = remote
        .run(
            &rampart::remote::script::stage(&staged),
            Input::Bytes(vec![b'x'; 10]),
        )
        .await
        .unwrap();
    assert!(!out.success());
    assert!(
        out.stderr_tail().contains("ended early"),
        "{}",
        out.stderr_tail()
    );
    assert!(
        staged_leftovers(&root).is_empty(),
        "{:?}",
        staged_leftovers(&root)
    );
    assert!(!root.join("etc/kubernetes/admin.conf").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_is_refused_while_the_host_is_locked() {
    let lab = Lab::new();
    let inv = inventory("");
    let bundle = lab.bundle(&inv);
    let mut holder = prepare(&lab, &inv, &bundle, true).await.unwrap();
    let Err(err) = prepare(&lab, &inv, &bundle, true).await else {
        panic!("a second run got the lock");
    };
    let msg = err.to_string();
    assert!(msg.contains("locked by another run (engine test"), "{msg}");
    assert!(msg.contains("rampart hosts unlock"), "{msg}");
    holder.release().await;
    let mut again = prepare(&lab, &inv, &bundle, true).await.unwrap();
    again.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_refused_before_any_connection() {
    let lab = Lab::new();
    let inv = inventory("");
    let bundle = lab.bundle(&inv);
    let mut o = options(false);
    o.skip.push("install-everything".into());
    let err = apply::prepare(&inv, &bundle, &lab, &o, &Silent, &Cancel::default())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("unknown phase `install-everything`"),
        "{err}"
    );
    let mut o = options(false);
    o.hosts = Some(vec!["cp9".into()]);
    let err = apply::prepare(&inv, &bundle, &lab, &o, &Silent, &Cancel::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "unknown host `cp9` in --hosts; the inventory names cp1, w1"
    );
    assert!(
        !lab.work.path().join("hosts").exists(),
        "nothing was contacted"
    );
}

/// Binaries from `binaries.artifacts`: streamed, sha256-checked on the host
/// before they replace anything, then left alone while they match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_uploaded_once_and_checked_against_their_pins() {
    let lab = Lab::new();
    let artifacts = lab.work.path().join("artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    // 3 MiB, so the upload spans many stdin chunks.
    let mut kubelet = b"#!/bin/sh\necho Kubernetes v1.34.1\nexit 0\n".to_vec();
    kubelet.resize(3 << 20, b'#');
    std::fs::write(artifacts.join("kubelet"), &kubelet).unwrap();
    let sha = hex::encode(Sha256::digest(&kubelet));
    let binaries = format!(
        "binaries:\n  artifacts: {}\n  sha256:\n    kubelet: {sha}\n",
        artifacts.display()
    );
    let inv = inventory(&binaries);
    let bundle = lab.bundle(&inv);
    let first = apply(&lab, &inv, &bundle).await;
    let w1 = first.targets.iter().find(|t| t.host.name == "w1").unwrap();
    assert_eq!(w1.plan.binaries.len(), 1);
    for host in ["cp1", "w1"] {
        let p = lab.root(host).join("usr/local/bin/kubelet");
        assert_eq!(std::fs::read(&p).unwrap(), kubelet, "{host}");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
    }
    let again = prepare(&lab, &inv, &bundle, false).await.unwrap();
    assert!(again.is_noop());

    // A pin that does not match the artifact: refused before any connection.
    let wrong = inventory(&binaries.replace(&sha, &"0".repeat(64)));
    let err = prepare(&lab, &wrong, &bundle, false).await.err().unwrap();
    assert!(err.to_string().contains("binaries.sha256.kubelet"), "{err}");
}

/// A file whose contents are right but whose mode or owner were changed by
/// hand is fixed in place: planned as such, nothing uploaded, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loosened_mode_is_fixed_in_place() {
    let lab = Lab::new();
    let inv = inventory("");
    let bundle = lab.bundle(&inv);
    apply(&lab, &inv, &bundle).await;
    let key = lab.root("cp1").join("etc/kubernetes/pki/ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = prepare(&lab, &inv, &bundle, false).await.unwrap();
    let cp1 = &p.targets[0].plan;
    assert_eq!(cp1.files.len(), 1);
    assert_eq!(cp1.files[0].what, ["mode 0644 -> 0600"]);
    assert!(!cp1.files[0].needs_upload());
    let mut skip_nothing = options(false);
    skip_nothing.skip.clear();
    let all = apply::prepare(
        &inv,
        &bundle,
        &lab,
        &skip_nothing,
        &Silent,
        &Cancel::default(),
    )
    .await
    .unwrap();
    assert!(
        !all.targets[0]
            .plan
            .services
            .values()
            .any(|a| matches!(a, rampart::plan::ServiceAction::Restart { .. })),
        "a mode fix restarts nothing: {:?}",
        all.targets[0].plan.services
    );
    let fixed = apply(&lab, &inv, &bundle).await;
    assert!(fixed.targets[0].remote.bytes_sent() < 20_000, "no upload");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o7777, 0o600);
    assert!(prepare(&lab, &inv, &bundle, false).await.unwrap().is_noop());
}
