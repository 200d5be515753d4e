//! The restore engine on real shell, files and Debian's real `etcdctl`,
//! without SSH or systemd: each member is a [`LocalRemote`] whose `/` is a
//! temp dir (with the real etcd binaries linked in), `systemctl` a recording
//! stand-in. The snapshot is a real one, saved from a throwaway plain-HTTP
//! etcd on 127.0.0.4:23791 (loopback only) and encrypted with age.
//!
//! The health gates need real members on real addresses; they are proven in
//! `lab::restore`, like the whole command.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart::actions::restore::{
    self as engine, Mode, Planned, Prepared, RestoreError, RestoreRequest,
};
use rampart::backup::{VerifyError, VerifyOptions};
use rampart::engine::runbook::PlanStore;
use rampart::engine::{Cancel, Silent};
use rampart::engine::{ConnectError, Connector};
use rampart::inventory::{parse, Host, Inventory};
use rampart::remote::local::LocalRemote;
use rampart::remote::script::{stage, Staged};
use rampart::remote::{BoxFuture, Input, Remote};
use rampart::restore::{script, upload_path, PlanError, Step, Tool};

const ADDR: &str = "127.0.0.4";
// Not etcd's usual ports: the apply engine tests' preflight reads this
// machine's listening ports and would see 2379/2380 taken.
const CLIENT: u16 = 23791;
const PEER: u16 = 23801;
const ID: &str = "20261130T150000Z";
const INVENTORY: &str = r#"
cluster:
  name: rs
  kubernetesVersion: "1.34"
  apiEndpoint: 192.0.2.11:6443
hosts:
  - {name: cp1, address: 192.0.2.11, roles: [etcd, control-plane]}
  - {name: cp2, address: 192.0.2.12, roles: [etcd, control-plane]}
  - {name: cp3, address: 192.0.2.13, roles: [etcd, control-plane]}
  - {name: w1, address: 192.0.2.21, roles: [worker]}
"#;

/// Remembers active units in `$ROOT/../units` and each start's invocation
/// id in `$ROOT/../invocation.<unit>`, logs every call. `show -p P --value U`
/// answers ActiveState and InvocationID; any other property is `loaded`.
const SYSTEMCTL: &str = r#"#!/bin/sh
s="$ROOT/../units"; echo "$*" >> "$ROOT/../systemctl.log"; touch "$s"
[ "$2" = --no-block ] && set -- "$1" "$3"
case "$1" in
  show) case "$3" in
      ActiveState) if grep -qx "$5" "$s"; then echo active; else echo inactive; fi;;
      InvocationID) cat "$ROOT/../invocation.$5" 2>/dev/null || echo;;
      *) echo loaded;;
    esac;;
  is-active) if grep -qx "$4$2" "$s"; then echo active; else echo inactive; exit 3; fi;;
  stop) grep -vx "$2" "$s" > "$s.n"; mv "$s.n" "$s";;
  start) grep -qx "$2" "$s" || { echo "$2" >> "$s"; date +%s%N > "$ROOT/../invocation.$2"; };;
esac
exit 0
"#;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Hosts {
    work: tempfile::TempDir,
}

impl Hosts {
    fn new() -> Hosts {
        let work = tempfile::tempdir().unwrap();
        let bin = work.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("systemctl"), SYSTEMCTL).unwrap();
        std::fs::set_permissions(
            bin.join("systemctl"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let hosts = Hosts { work };
        for h in ["cp1", "cp2", "cp3"] {
            let root = hosts.root(h);
            std::fs::create_dir_all(root.join("usr/bin")).unwrap();
            for b in ["etcd", "etcdctl"] {
                std::os::unix::fs::symlink(
                    Path::new("/usr/bin").join(b),
                    root.join("usr/bin").join(b),
                )
                .unwrap();
            }
            // An old member's data, and etcd running.
            std::fs::create_dir_all(root.join("var/lib/etcd/member")).unwrap();
            std::fs::write(root.join("var/lib/etcd/member/old"), h).unwrap();
            std::fs::write(root.join("../units"), "etcd.service\n").unwrap();
        }
        hosts
    }
    fn root(&self, host: &str) -> PathBuf {
        self.work.path().join("hosts").join(host).join("root")
    }
}

impl Connector for Hosts {
    fn connect<'a>(
        &'a self,
        host: &'a Host,
    ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>> {
        Box::pin(async move {
            let root = self.root(&host.name);
            std::fs::create_dir_all(&root).unwrap();
            let r =
                LocalRemote::new(&host.name, root).with_path_prefix(self.work.path().join("bin"));
            Ok(Arc::new(r) as Arc<dyn Remote>)
        })
    }
}

fn etcdctl(args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://{ADDR}:{CLIENT}"))
        .arg("--dial-timeout=2s")
        .args(args)
        .output()
        .expect("etcdctl runs (install etcd-client: tests/deps.sh)")
}

/// A real snapshot with 5 keys, encrypted to a new identity: (backup, identity, work dir).
fn backup() -> (PathBuf, PathBuf, tempfile::TempDir) {
    // One throwaway etcd at a time: they share the address.
    static ETCD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ETCD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let work = tempfile::tempdir().unwrap();
    let etcd = Running(
        Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(work.path().join("data"))
            .arg(format!("--listen-client-urls=http://{ADDR}:{CLIENT}"))
            .arg(format!("--advertise-client-urls=http://{ADDR}:{CLIENT}"))
            .arg(format!("--listen-peer-urls=http://{ADDR}:{PEER}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{ADDR}:{PEER}"
            ))
            .arg(format!("--initial-cluster=t=http://{ADDR}:{PEER}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (install etcd-server: tests/deps.sh)"),
    );
    let t0 = Instant::now();
    while !etcdctl(&["endpoint", "health"]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "etcd never became healthy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for k in 1..=5 {
        assert!(etcdctl(&["put", &format!("/k{k}"), "v"]).status.success());
    }
    let db = work.path().join("snap.db");
    assert!(etcdctl(&["snapshot", "save", db.to_str().unwrap()])
        .status
        .success());
    drop(etcd);
    let id = age::x25519::Identity::generate();
    let identity = work.path().join("id.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let file = work.path().join("rs-t-20261130T140000Z.db.age");
    let enc = age::Encryptor::with_recipients(std::iter::once(&id.to_public() as _)).unwrap();
    let mut w = enc
        .wrap_output(std::fs::File::create(&file).unwrap())
        .unwrap();
    w.write_all(&std::fs::read(&db).unwrap()).unwrap();
    w.finish().unwrap();
    (file, identity, work)
}

fn opts(identity: &Path, scratch: &Path) -> VerifyOptions {
    VerifyOptions {
        identities: vec![identity.to_path_buf()],
        etcdctl: "/usr/bin/etcdctl".into(),
        etcdutl: None,
        scratch: Some(scratch.to_path_buf()),
        cancel: None,
    }
}

fn inventory() -> Inventory {
    parse(INVENTORY, Path::new("inventory.yaml"))
        .unwrap()
        .inventory
}

/// A restore of restore `ID` (a new one starts at the time its id names).
fn request(mode: Mode, file: Option<&Path>, verify: VerifyOptions, state: &Path) -> RestoreRequest {
    RestoreRequest {
        mode,
        file: file.map(Path::to_path_buf),
        verify,
        state_dir: state.to_path_buf(),
        concurrency: 4,
        dry_run: false,
        owner: "restore engine test".into(),
        now: time::macros::datetime!(2026-11-30 15:00:00 UTC),
    }
}

async fn prepare<'r>(
    inv: &Inventory,
    req: &RestoreRequest,
    hosts: &'r Hosts,
) -> Result<Prepared<'r>, RestoreError> {
    engine::prepare(inv, req, hosts, &Silent, &Cancel::default()).await
}

fn restore_plan(p: &Prepared) -> rampart::restore::RestorePlan {
    match p.plan() {
        Planned::Restore(p) => (**p).clone(),
        Planned::Rollback(_) => panic!("not a restore"),
    }
}

#[test]
fn restore_refuses_corrupt_truncated_and_wrongly_keyed_backups_and_leaves_no_plaintext() {
    let (file, identity, work) = backup();
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let bytes = std::fs::read(&file).unwrap();

    let flipped = work.path().join("flipped.db.age");
    let mut b = bytes.clone();
    let at = b.len() / 2;
    b[at] ^= 1;
    std::fs::write(&flipped, b).unwrap();
    let truncated = work.path().join("truncated.db.age");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let other = work.path().join("other.txt");
    {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        std::fs::write(&other, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    for (f, id) in [
        (&flipped, &identity),
        (&truncated, &identity),
        (&file, &other),
    ] {
        match engine::verify_snapshot(f, &opts(id, &scratch), now) {
            Err(RestoreError::Refused(e)) => {
                assert!(
                    matches!(
                        e,
                        VerifyError::Corrupt { .. } | VerifyError::WrongIdentity { .. }
                    ),
                    "{}: {e:?}",
                    f.display()
                );
                if id == &other {
                    assert!(matches!(e, VerifyError::WrongIdentity { .. }));
                }
            }
            other => panic!("{}: not refused: {other:?}", f.display()),
        }
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "plaintext left behind"
        );
    }
    // The good one verifies; its plaintext lives until the value drops.
    let (meta, plain) = engine::verify_snapshot(&file, &opts(&identity, &scratch), now).unwrap();
    assert!(
        meta.revision >= 6 && meta.total_keys >= 5 && !meta.manifest,
        "{meta:?}"
    );
    let dir = plain.path.parent().unwrap().to_path_buf();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(&plain.path).unwrap().mode() & 0o777,
        0o600
    );
    drop(plain);
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_scripts_restore_a_real_snapshot_journal_it_and_roll_back() {
    let (file, identity, work) = backup();
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let hosts = Hosts::new();
    let inv = inventory();
    let state = work.path().join("state");
    let new = request(Mode::New, Some(&file), opts(&identity, &scratch), &state);

    let mut session = prepare(&inv, &new, &hosts).await.unwrap();
    let meta = restore_plan(&session).snapshot;
    let plain = session.run.snapshot.take().unwrap();
    // Members and control planes only: the worker is not contacted.
    let names: Vec<&str> = session
        .run
        .reach
        .fleet
        .members()
        .iter()
        .map(|t| t.host.name.as_str())
        .collect();
    assert_eq!(names, ["cp1", "cp2", "cp3"]);
    let plan = restore_plan(&session);
    assert_eq!(plan.token, format!("rs-restore-{ID}"));
    assert_eq!(
        plan.initial_cluster,
        "cp1=https://192.0.2.11:2380,cp2=https://192.0.2.12:2380,cp3=https://192.0.2.13:2380"
    );
    assert!(plan.apiservers.is_empty());
    for m in &plan.members {
        assert_eq!(m.tool, Tool::Etcdctl, "Debian's etcd is 3.4: {m:?}");
        assert!(m.data_dir && m.etcd_active && m.done.is_empty());
    }

    // The data phases, script by script, on every member.
    for t in session.run.reach.fleet.members() {
        let m = plan.members.iter().find(|m| m.name == t.host.name).unwrap();
        for text in [
            script::hold_and_stop(ID, &MEMBER_UNITS, Step::StoppedEtcd),
            script::fence(ID, &MEMBER_UNITS),
            script::move_aside(ID),
            stage(&[Staged {
                path: upload_path(ID),
                mode: 0o600,
                owner: "root".into(),
                group: "root".into(),
                size: plain.size,
            }]),
        ] {
            let input = if text.contains("dd of=") {
                Input::File(plain.path.clone())
            } else {
                Input::None
            };
            let out = t.remote.run(&text, input).await.unwrap();
            assert!(
                out.success(),
                "{}: {}",
                t.host.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = script::restore(
            ID,
            "/usr/bin",
            m,
            &plan.initial_cluster,
            &plan.token,
            &plain.sha256,
        );
        let out = t.remote.run(&text, Input::None).await.unwrap();
        assert!(
            out.success(),
            "{}: {}",
            t.host.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_str(
            out.stdout_text()
                .lines()
                .find_map(|l| l.strip_prefix("status\t"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["revision"].as_i64(), Some(meta.revision));
        assert_eq!(status["totalKey"].as_u64(), Some(meta.total_keys));

        let root = hosts.root(&t.host.name);
        let data = std::fs::metadata(root.join("var/lib/etcd")).unwrap();
        assert_eq!(data.mode() & 0o777, 0o700);
        let etcd_uid = Command::new("id").args(["-u", "etcd"]).output().unwrap();
        assert_eq!(
            data.uid().to_string(),
            String::from_utf8_lossy(&etcd_uid.stdout).trim()
        );
        assert!(root.join("var/lib/etcd/member/snap/db").is_file());
        // The old data is kept, the upload is gone.
        assert_eq!(
            std::fs::read_to_string(root.join(format!("var/lib/etcd.pre-restore-{ID}/member/old")))
                .unwrap(),
            t.host.name
        );
        let left: Vec<_> = std::fs::read_dir(root.join("var/lib/rampart/restore"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [format!("{ID}.journal")]);
    }
    session.release().await;

    // What the members journaled is what a resume skips; a new restore
    // with the same id is refused (its moved-aside dir exists).
    PlanStore {
        state_dir: &state,
        kind: "restore",
    }
    .save(ID, &plan)
    .unwrap();
    let resume = request(
        Mode::Resume(ID.into()),
        None,
        opts(&identity, &scratch),
        &state,
    );
    let mut session = prepare(&inv, &resume, &hosts).await.unwrap();
    let resumed = restore_plan(&session);
    for m in &resumed.members {
        assert_eq!(
            m.done,
            [Step::StoppedEtcd, Step::MovedAside, Step::Restored]
        );
    }
    assert!(resumed.resumed);
    session.release().await;
    match prepare(&inv, &new, &hosts).await.map(|p| restore_plan(&p)) {
        Err(RestoreError::Plan(PlanError::Problems(p))) => {
            assert_eq!(p.len(), 3);
            assert!(p[0].1.contains("already exists"), "{p:?}");
        }
        other => panic!("{other:?}"),
    }

    // Rollback: the old data comes back; the restored data is kept aside.
    let facts: BTreeMap<_, _> = session.run.facts.clone();
    let back =
        rampart::restore::plan_rollback(&inv, ID, "20261130T160000Z", &facts, Some(&plan)).unwrap();
    assert_eq!(back.members.len(), 3);
    for t in session.run.reach.fleet.members() {
        let out = t
            .remote
            .run(&script::roll_back(ID, "20261130T160000Z"), Input::None)
            .await
            .unwrap();
        assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let root = hosts.root(&t.host.name);
        assert_eq!(
            std::fs::read_to_string(root.join("var/lib/etcd/member/old")).unwrap(),
            t.host.name
        );
        assert!(root
            .join("var/lib/etcd.rolled-back-20261130T160000Z/member/snap/db")
            .is_file());
        assert!(!root.join(format!("var/lib/etcd.pre-restore-{ID}")).exists());
    }
    let log = std::fs::read_to_string(hosts.root("cp1").join("../systemctl.log")).unwrap();
    assert!(log.contains("stop etcd.service"), "{log}");
}

/// The members' units a restore holds.
const MEMBER_UNITS: [&str; 2] = ["rampart-backup.service", "etcd.service"];

/// A restore once swapped etcd's data while an apiserver that something had
/// started again kept serving the old data. Now every host proves, before any
/// data moves, that nothing held ran since it stopped, and every apiserver
/// start must make a new process.
#[tokio::test]
async fn restore_refuses_to_swap_data_when_a_held_unit_ran_again() {
    let hosts = Hosts::new();
    let inv = inventory();
    let host = inv.host("cp1").unwrap();
    let remote = hosts.connect(host).await.unwrap();
    let units = ["kube-apiserver.service", "etcd.service"];
    std::fs::write(
        hosts.root("cp1").join("../units"),
        "etcd.service\nkube-apiserver.service\n",
    )
    .unwrap();
    let run = |text: String| {
        let remote = remote.clone();
        async move { remote.run(&text, Input::None).await.unwrap() }
    };
    let out = run(script::hold_and_stop(ID, &units, Step::StoppedEtcd)).await;
    assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let held = std::fs::read_to_string(
        hosts
            .root("cp1")
            .join("var/lib/rampart/hold/kube-apiserver.service"),
    )
    .unwrap();
    assert!(held.starts_with(&format!("{ID}\t")), "{held}");
    assert!(run(script::fence(ID, &units)).await.success());

    // Something starts the apiserver behind the restore's back.
    let out = run("systemctl start kube-apiserver.service".into()).await;
    assert!(out.success());
    let out = run(script::fence(ID, &units)).await;
    assert_eq!(out.status, Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "kube-apiserver.service is active, although restore 20261130T150000Z stopped it"
        ),
        "{err}"
    );
    assert!(
        err.contains("kube-apiserver.service ran again after restore"),
        "{err}"
    );
    assert!(err.contains("nothing was moved or restored"), "{err}");
    // The data was not touched.
    assert!(hosts.root("cp1").join("var/lib/etcd/member/old").is_file());

    // The restore's own start of an apiserver that kept running is refused:
    // it would serve what it read before the restore.
    let out = run(script::hold_and_stop(ID, &units, Step::StoppedEtcd)).await;
    assert!(out.success());
    std::fs::write(
        hosts.root("cp1").join("../units"),
        "kube-apiserver.service\n",
    )
    .unwrap();
    let out = run(script::start(
        ID,
        "kube-apiserver.service",
        Step::StartedApiserver,
        true,
    ))
    .await;
    assert_eq!(out.status, Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not started anew"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A real start after a stop is a new invocation, and releases the hold.
    run(script::hold_and_stop(ID, &units, Step::StoppedEtcd)).await;
    let out = run(script::start(
        ID,
        "kube-apiserver.service",
        Step::StartedApiserver,
        true,
    ))
    .await;
    assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!hosts
        .root("cp1")
        .join("var/lib/rampart/hold/kube-apiserver.service")
        .exists());
}

#[test]
fn restore_plan_refuses_members_without_etcd_or_its_unit_or_too_old() {
    use rampart::restore::{plan_restore, RestoreFacts, SnapshotMeta};
    let inv = inventory();
    let snap = SnapshotMeta {
        file: "b.db.age".into(),
        sha256: "ab".into(),
        plaintext_sha256: "cd".into(),
        snapshot_size: 1,
        revision: 9,
        total_keys: 9,
        created: None,
        age_seconds: None,
        member: None,
        cluster: None,
        etcd_version: Some("3.5.17".into()),
        manifest: true,
    };
    let ok = RestoreFacts {
        etcd_version: Some("3.5.17".into()),
        etcdctl: true,
        etcdutl: true,
        etcd_unit: true,
        etcd_active: true,
        data_dir: true,
        ..Default::default()
    };
    let mut facts: BTreeMap<String, RestoreFacts> = BTreeMap::new();
    facts.insert("cp1".into(), ok.clone());
    facts.insert(
        "cp2".into(),
        RestoreFacts {
            etcd_version: Some("3.4.23".into()),
            ..ok.clone()
        },
    );
    facts.insert(
        "cp3".into(),
        RestoreFacts {
            etcd_unit: false,
            etcd_version: None,
            ..ok.clone()
        },
    );
    let Err(PlanError::Problems(p)) = plan_restore(&inv, snap.clone(), &facts, ID) else {
        panic!("not refused")
    };
    let msgs: Vec<String> = p.iter().map(|(h, m)| format!("{h}: {m}")).collect();
    assert_eq!(
        msgs,
        [
            "cp2: the snapshot comes from etcd 3.5.17, this member runs 3.4.23; upgrade etcd first",
            "cp3: no etcd at /usr/bin/etcd (or it printed no version); install etcd 3.4 or later",
        ]
    );
    facts.insert("cp2".into(), ok.clone());
    facts.insert(
        "cp3".into(),
        RestoreFacts {
            etcdutl: false,
            apiserver_active: true,
            ..ok
        },
    );
    let plan = plan_restore(&inv, snap, &facts, ID).unwrap();
    let tools: Vec<Tool> = plan.members.iter().map(|m| m.tool).collect();
    assert_eq!(tools, [Tool::Etcdutl, Tool::Etcdutl, Tool::Etcdctl]);
    assert_eq!(plan.apiservers, ["cp3"]);
    assert_eq!(plan.control_planes, ["cp3"]);
    assert_eq!(
        plan.steps.first().unwrap(),
        "hold and stop kube-scheduler, kube-controller-manager and kube-apiserver on cp3"
    );
}
