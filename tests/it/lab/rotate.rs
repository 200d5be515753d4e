//! `rampart rotate ca --ca etcd` and `rampart certs renew` on real hosts: a
//! 3-member etcd cluster (Debian's etcd-server under systemd) installed by
//! `apply`, while a client on the first member writes continuously with
//! the credentials installed on disk, read afresh for every write.
//!
//! One ordered scenario: a rotation SIGKILLed in each of its three
//! rollouts and resumed each time; a renewal of every etcd leaf; a second
//! rotation killed in its reissue step and rolled back. Through all of it
//! no write fails and quorum holds; at the end of each part every member's
//! certificates chain (`openssl verify`) to the CA the state dir says.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::apply::{etcd_healthy_members, reset, SKIP};
use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

const PKI: &str = "/etc/kubernetes/pki/etcd";

/// The client: one `etcdctl put` per loop over all three members, with a
/// copy of the CA bundle, certificate and key taken just before. A pair
/// read while `apply` renames its two files can mismatch; a client that
/// reloads credentials from disk keeps its last working pair then (as
/// Kubernetes' certificate reloaders do), and the write goes out with it.
/// `reload` lines count those. A write that reached a member while it
/// restarted gets a transport error before etcd processed it (`transport:
/// missing content-type field` while the member's gRPC server starts,
/// `Unavailable`, or `server closed the stream without sending trailers`
/// while it stops); it is sent again (each put writes the same value, so a
/// second copy changes nothing) and counted on a `retry` line. A TLS failure
/// (handshake, x509: what a rotation could break) is never retried. `fail`
/// lines are writes the cluster refused or could not take in three tries.
fn writer(endpoints: &str) -> String {
    format!(
        r#"P={PKI}; W=/tmp/rotate-writer; mkdir -p $W; rm -f $W/stop $W/log
once() {{ ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert=$W/$1.ca --cert=$W/$1.crt --key=$W/$1.key --command-timeout=15s put /rotate-test/$2 $2 2>&1; }}
put() {{
  for t in 1 2 3; do
    if out=$(once "$1" "$2"); then return 0; fi
    case "$out" in
      *handshake*|*x509*|*certificate*) break ;;
      *'transport:'*|*'code = Unavailable'*|*'closed the stream without sending trailers'*) echo "retry $2 $out" | tr '\n' ' ' >> $W/log; echo >> $W/log; sleep 0.2 ;;
      *) break ;;
    esac
  done
  echo "$out"; return 1
}}
i=0
while [ ! -e $W/stop ]; do
  i=$((i+1))
  cp $P/ca.crt $W/try.ca; cp $P/healthcheck-client.crt $W/try.crt; cp $P/healthcheck-client.key $W/try.key
  if out=$(put try $i); then
    for f in ca crt key; do mv -f $W/try.$f $W/good.$f; done
    echo "ok $i" >> $W/log
  elif [ -e $W/good.key ] && echo "$out" | grep -q 'private key does not match'; then
    if out=$(put good $i); then echo "reload $i" >> $W/log; echo "ok $i" >> $W/log
    else echo "fail $i $(date +%T) $out" | tr '\n' ' ' >> $W/log; echo >> $W/log; fi
  else
    echo "fail $i $(date +%T) $out" | tr '\n' ' ' >> $W/log; echo >> $W/log
  fi
done
echo done >> $W/log
"#
    )
}

fn start_writer(lab: &Lab) {
    let endpoints: Vec<String> = lab.hosts[..3]
        .iter()
        .map(|h| format!("https://{}:2379", h.cluster_ip))
        .collect();
    let script = writer(&endpoints.join(","));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, script);
    lab.ssh_ok(
        0,
        &format!(
            "echo {b64} | base64 -d > /tmp/rotate-writer.sh; \
             nohup setsid sh /tmp/rotate-writer.sh >/dev/null 2>&1 </dev/null &"
        ),
    );
    // It is writing before anything changes.
    wait_for("the writer's first write", Duration::from_secs(20), || {
        lab.ssh_ok(
            0,
            "grep -c '^ok' /tmp/rotate-writer/log 2>/dev/null || true",
        )
        .parse::<u32>()
        .is_ok_and(|n| n > 0)
    });
}

/// Stops the writer when the test ends, however it ends.
struct WriterGuard<'a>(&'a Lab);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.ssh(
            0,
            "mkdir -p /tmp/rotate-writer; touch /tmp/rotate-writer/stop",
        );
    }
}

/// Writes, writes that went out with the last working pair, failed writes
/// (with the first failures' lines) since the writer started.
struct Written {
    ok: usize,
    reloads: usize,
    retries: usize,
    failed: Vec<String>,
}

fn written(lab: &Lab) -> Written {
    let log = lab.ssh_ok(0, "cat /tmp/rotate-writer/log");
    Written {
        ok: log.lines().filter(|l| l.starts_with("ok ")).count(),
        reloads: log.lines().filter(|l| l.starts_with("reload ")).count(),
        retries: log.lines().filter(|l| l.starts_with("retry ")).count(),
        failed: log
            .lines()
            .filter(|l| l.starts_with("fail "))
            .map(String::from)
            .collect(),
    }
}

fn stop_writer(lab: &Lab) -> Written {
    lab.ssh_ok(0, "touch /tmp/rotate-writer/stop");
    wait_for("the writer to stop", Duration::from_secs(30), || {
        lab.ssh_ok(0, "tail -1 /tmp/rotate-writer/log") == "done"
    });
    written(lab)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stage `<state>/pki/etcd-ca.rotation.json` records, if any.
fn stage(c: &Cluster) -> Option<String> {
    let text = std::fs::read_to_string(c.state_dir.join("pki/etcd-ca.rotation.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["stage"].as_str().map(String::from)
}

fn rotate_args<'a>(c: &'a Cluster, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "rotate",
        "ca",
        "--ca",
        "etcd",
        "-i",
        c.inventory.to_str().unwrap(),
        "--yes",
        "--skip-phases",
        SKIP,
    ];
    args.extend_from_slice(extra);
    args
}

fn spawn(c: &Cluster, args: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rampart"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RAMPART_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(c.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the rampart binary runs")
}

/// Runs rotate with `extra`, SIGKILLs it a moment after the state dir
/// reached `at` (inside that step's rollout: etcd members are restarting).
fn kill_during(c: &Cluster, at: &str, extra: &[&str]) {
    let mut child = spawn(c, &rotate_args(c, extra));
    wait_for(&format!("stage {at}"), Duration::from_secs(120), || {
        stage(c).as_deref() == Some(at)
    });
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "rotate finished before it was killed in {at}"
    );
}

/// The one saved plan's id (`<state>/rotate-cas/<id>.json`) newer than `not`.
fn run_id(c: &Cluster, not: Option<&str>) -> String {
    let mut ids: Vec<String> = std::fs::read_dir(c.state_dir.join("rotate-cas"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string()
        })
        .filter(|id| Some(id.as_str()) != not)
        .collect();
    ids.sort();
    ids.pop().expect("a saved rotation plan")
}

fn pems(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|p| p.contains("BEGIN CERTIFICATE"))
        .map(|p| p.trim().to_string())
        .collect()
}

/// Every member trusts exactly `ca` (and not `gone`), and its server, peer
/// and health-check certificates verify against it with `openssl verify`.
fn assert_chains_to(lab: &Lab, c: &Cluster, ca: &Path, gone: &str, what: &str) {
    let want = std::fs::read_to_string(ca).unwrap();
    let dir = c.dir.path().join("fetched");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3 {
        let h = &lab.hosts[i].name;
        let bundle = lab.ssh_ok(i, &format!("cat {PKI}/ca.crt"));
        assert_eq!(pems(&bundle), pems(&want), "{what}: {h} trusts other CAs");
        assert!(
            !bundle.contains(gone.trim()),
            "{what}: {h} still trusts the old CA"
        );
        for leaf in ["server", "peer", "healthcheck-client"] {
            let file = dir.join(format!("{h}-{leaf}.crt"));
            std::fs::write(&file, lab.ssh_ok(i, &format!("cat {PKI}/{leaf}.crt"))).unwrap();
            let out = Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(ca)
                .arg(&file)
                .output()
                .unwrap();
            assert_success(&out, &format!("{what}: openssl verify {h} {leaf}.crt"));
        }
        assert_eq!(etcd_healthy_members(lab, i), 3, "{what}: seen from {h}");
    }
}

fn read(p: &PathBuf) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn lab_rotate_etcd_ca_and_renew_leaves_without_a_failed_write() {
    let Some(lab) = main_lab() else { return };
    let _lab = lock();
    reset(&lab);
    let c = Cluster::init(&lab.inventory(&InventorySpec::default()));
    let inv = c.inventory.to_str().unwrap().to_string();
    assert_success(
        &c.run(&["apply", "-i", &inv, "--skip-phases", SKIP]),
        "apply",
    );
    let ca = c.state_dir.join("pki/etcd-ca.crt");
    let first_ca = read(&ca);
    start_writer(&lab);
    let _writer = WriterGuard(&lab);

    // The plan, without a change.
    let out = c.run(&rotate_args(&c, &["--dry-run"]));
    assert_success(&out, "rotate --dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1. add-new") && text.contains("[to do]"),
        "{text}"
    );
    assert!(stage(&c).is_none(), "a dry run moved the state dir");
    // Skipping etcd's restarts would leave it trusting the old CA only.
    let out = c.run(&[
        "rotate",
        "ca",
        "--ca",
        "etcd",
        "-i",
        &inv,
        "--yes",
        "--skip-phases",
        "start-etcd",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stage(&c).is_none());
    // The service-account key's plan on the same hosts. Its rollouts
    // restart kube-apiserver, which this lab does not run: skipping that
    // is refused before anything changes.
    let out = c.run(&["rotate", "service-account-key", "-i", &inv, "--dry-run"]);
    assert_success(&out, "rotate service-account-key --dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rotate the service-account key")
            && text.contains("1. add-new")
            && text.contains("3. drop-old")
            && !text.contains("leaves it signs"),
        "{text}"
    );
    let out = c.run(&[
        "rotate",
        "service-account-key",
        "-i",
        &inv,
        "--yes",
        "--skip-phases",
        SKIP,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs kube-apiserver restarted"), "{err}");
    assert!(!c.state_dir.join("pki/sa.rotation.json").exists());

    // Killed inside each step's rollout, resumed each time.
    kill_during(&c, "add-new", &[]);
    let id = run_id(&c, None);
    kill_during(&c, "reissue", &["--resume", &id]);
    kill_during(&c, "drop-old", &["--resume", &id]);
    let out = c.run(&rotate_args(&c, &["--resume", &id]));
    assert_success(&out, "rotate --resume");
    assert_eq!(stage(&c).as_deref(), Some("done"));
    let second_ca = read(&ca);
    assert_ne!(
        first_ca, second_ca,
        "the state dir's etcd CA was not replaced"
    );
    assert_chains_to(&lab, &c, &ca, &first_ca, "after the rotation");
    // Finished: nothing to roll back.
    let out = c.run(&rotate_args(&c, &["--rollback", &id]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "rollback of a finished rotation"
    );

    // Renewal of every etcd leaf (new keys), under the new CA.
    let serial = |i: usize| {
        lab.ssh_ok(
            i,
            &format!("openssl x509 -noout -serial -in {PKI}/server.crt"),
        )
    };
    let before: Vec<String> = (0..3).map(serial).collect();
    let mut renew = vec![
        "certs",
        "renew",
        "-i",
        inv.as_str(),
        "--yes",
        "--skip-phases",
        SKIP,
    ];
    let leaves: Vec<String> = lab.hosts[..3]
        .iter()
        .flat_map(|h| {
            [
                format!("etcd-server-{}", h.name),
                format!("etcd-peer-{}", h.name),
            ]
        })
        .chain(["etcd-healthcheck-client".to_string()])
        .collect();
    renew.extend(leaves.iter().map(String::as_str));
    assert_success(&c.run(&renew), "certs renew");
    for (i, b) in before.iter().enumerate() {
        assert_ne!(
            &serial(i),
            b,
            "{} kept its server certificate",
            lab.hosts[i].name
        );
    }
    assert_chains_to(&lab, &c, &ca, &first_ca, "after the renewal");

    // A second rotation, killed once its leaves are reissued, rolled back:
    // the hosts trust and use the second CA again, and only it.
    kill_during(&c, "reissue", &[]);
    let id2 = run_id(&c, Some(&id));
    let out = c.run(&rotate_args(&c, &["--resume", &id2, "--dry-run"]));
    assert_success(&out, "dry run of the resume");
    let out = c.run(&rotate_args(&c, &["--rollback", &id2]));
    assert_success(&out, "rotate --rollback");
    assert_eq!(stage(&c).as_deref(), Some("rolled-back"));
    assert_eq!(read(&ca), second_ca, "a rollback replaced the CA");
    assert!(!c.state_dir.join("pki/etcd-ca.next.crt").exists());
    assert_chains_to(&lab, &c, &ca, &first_ca, "after the rollback");

    let w = stop_writer(&lab);
    eprintln!(
        "writer: {} writes, {} sent with the last working pair while apply renamed the files, \
         {} sent again after a transport error from a restarting member, {} failed",
        w.ok,
        w.reloads,
        w.retries,
        w.failed.len()
    );
    assert!(
        w.failed.is_empty(),
        "failed writes:\n{}",
        w.failed.join("\n")
    );
    assert!(w.ok > 100, "the writer wrote only {} times", w.ok);
}
