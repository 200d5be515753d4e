//! The encryption key's own steps and gate: rewriting Secrets so the key
//! that encrypts now encrypts all of them, and never dropping a key a value
//! in etcd still needs.
//!
//! Both start from a scan of etcd itself ([`crate::rotate::etcd_scan`], on
//! an etcd member): the key name is in every encrypted value's prefix, so
//! the scan says exactly which values the leaving key (the one that only
//! decrypts at this stage) still encrypts. The rewrite sends those Secrets
//! through the API ([`crate::rotate::rewrite`], on a control-plane host)
//! and scans again, until the scan finds none; stopped half way, it starts
//! from a fresh scan with what is left. `drop-old` and `forget-new` scan
//! first and refuse while one value remains, whatever the journals say.

use crate::engine::{step, Env, Phase, PhaseError, Reachable};
use crate::pki::rotation::Rotated;
use crate::remote::{BoxFuture, Input};
use crate::rotate::etcd_scan::{self, Scan};
use crate::rotate::rewrite;
use crate::rotate::Step;

use super::progress::{journal, needed};
use super::{RotateError, RotateRun};

/// Scan, rewrite, scan again: at most this many rounds. Each round only
/// has what the previous left (values a concurrent writer stored with
/// the old key, or a batch a conflict refused), so more means something
/// still writes with the old key.
const ROUNDS: usize = 5;

/// Batches per round trip to the control-plane host.
const BATCHES_PER_TRIP: usize = 10;

/// `rewrite` (forward) or `rewrite-old` (rollback).
pub struct Rewrite(pub Step);

impl Phase<RotateRun<'_>> for Rewrite {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn title(&self) -> &'static str {
        match self.0 {
            Step::RewriteOld => "rewrite Secrets under the old key",
            _ => "rewrite Secrets under the new key",
        }
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &RotateRun) -> usize {
        usize::from(needed(s, self.0))
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RotateRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            if !needed(s, self.0) {
                return Ok(());
            }
            let r = match rewrite_all(env, s, self.0).await {
                Ok(()) => journal(env, s, self.0).await,
                Err(e) => Err(e),
            };
            super::progress::to_phase_error(s, self.0, r)
        })
    }
}

/// The name of the key that only decrypts at the current stage: the one
/// a rewrite moves values off and the next step drops.
fn leaving(s: &RotateRun) -> Result<String, RotateError> {
    let names = crate::pki::key_views::encryption_names(&s.rollout.dir)?;
    names.get(1).cloned().ok_or_else(|| RotateError::Rewrite {
        step: "rewrite",
        reason: "the state dir holds one encryption key only: no rotation is under way".into(),
    })
}

/// Scans etcd on the first etcd member, watching `name`.
async fn scan(env: &Env<'_>, s: &RotateRun<'_>, name: &str) -> Result<Scan, RotateError> {
    let member = s
        .first_with(|r| r.etcd)
        .ok_or_else(|| RotateError::Rewrite {
            step: "scan",
            reason: "no etcd member is reachable to scan".into(),
        })?;
    let out = step(
        env,
        member,
        "scan etcd",
        &etcd_scan::script(env.inv, member.host(), name),
        Input::None,
    )
    .await
    .map_err(|e| RotateError::Rewrite {
        step: "scan",
        reason: format!("{}: {e}", member.host().name),
    })?;
    let scan = etcd_scan::parse(&out.stdout_text());
    env.reporter.line(
        &member.host().name,
        &format!(
            "etcd: {} values, {} under key {name}",
            scan.values,
            scan.under(name)
        ),
    );
    Ok(scan)
}

async fn rewrite_all(env: &Env<'_>, s: &RotateRun<'_>, the: Step) -> Result<(), RotateError> {
    let name = leaving(s)?;
    let fail = |reason: String| RotateError::Rewrite {
        step: the.name(),
        reason,
    };
    let cp = s
        .first_with(|r| r.control_plane)
        .ok_or_else(|| fail("no control-plane host is reachable to rewrite through".into()))?;
    let mut before: Option<usize> = None;
    for _ in 0..ROUNDS {
        let found = scan(env, s, &name).await?;
        let left = found.watched.len();
        if left == 0 {
            return Ok(());
        }
        if before.is_some_and(|b| left >= b) {
            return Err(fail(format!(
                "{left} values are still under key {name} after a rewrite: is an apiserver still encrypting with it?"
            )));
        }
        before = Some(left);
        let (by_ns, other) = rewrite::secrets(&found.watched);
        if !other.is_empty() {
            return Err(fail(format!(
                "values that are not Secrets are under key {name} (rampart's EncryptionConfiguration covers Secrets only): {}",
                other.join(", ")
            )));
        }
        let mut done = 0;
        let mut failed = Vec::new();
        for trip in rewrite::batches(&by_ns, rewrite::BATCH).chunks(BATCHES_PER_TRIP) {
            let out = step(
                env,
                cp,
                "rewrite Secrets",
                &rewrite::script(env.inv, trip),
                Input::None,
            )
            .await
            .map_err(|e| fail(format!("{}: {e}", cp.host().name)))?;
            let (n, f) = rewrite::parse(&out.stdout_text());
            done += n;
            failed.extend(f);
            env.reporter
                .line(&cp.host().name, &format!("rewritten {done}/{left}"));
        }
        if !failed.is_empty() {
            env.reporter.line(
                &cp.host().name,
                &format!(
                    "kubectl refused a batch in {} (scanning again)",
                    failed.join(", ")
                ),
            );
        }
    }
    Err(fail(format!(
        "values are still under key {name} after {ROUNDS} rounds"
    )))
}

/// For the plan of an encryption-key rotation: what etcd holds under each
/// key now (None for the other rotations).
pub(super) async fn census(env: &Env<'_>, s: &RotateRun<'_>) -> Result<Option<Scan>, RotateError> {
    if s.what != Rotated::EncryptionKey {
        return Ok(None);
    }
    let names = crate::pki::key_views::encryption_names(&s.rollout.dir)?;
    let watch = names.last().cloned().unwrap_or_default();
    scan(env, s, &watch).await.map(Some)
}

/// Refuses `the` step of an encryption-key rotation while the key it
/// drops still encrypts a value in etcd.
pub(super) async fn gate(env: &Env<'_>, s: &RotateRun<'_>, the: Step) -> Result<(), RotateError> {
    if s.what != Rotated::EncryptionKey || !the.narrows_trust() {
        return Ok(());
    }
    // A rollback before `add-new` finished has no second key to check.
    let Ok(name) = leaving(s) else {
        return Ok(());
    };
    let found = scan(env, s, &name).await?;
    match found.under(&name) {
        0 => Ok(()),
        n => Err(RotateError::Rewrite {
            step: the.name(),
            reason: format!(
                "{n} values in etcd are still encrypted with key {name}, which this step would drop; resume to rewrite them first"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! The rewrite's loop and the gate, run for real on this machine: the
    //! scan script against a real etcd (through a stand-in `etcdctl` that
    //! drops the TLS flags for the local plain-HTTP member), the rewrite
    //! script against a stand-in `kubectl` that stores each Secret it is
    //! given under the writer key, as the apiserver does. Only the
    //! apiserver is scripted; the lab runs the scan over SSH with mTLS.

    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::*;
    use crate::actions::apply::ApplyOptions;
    use crate::engine::{
        run_in_order, BoxPhase, Cancel, Connect, ConnectError, Connector, Reach, Silent,
    };
    use crate::inventory::Host;
    use crate::pki::{StateDir, Unlock};
    use crate::remote::local::LocalRemote;
    use crate::remote::Remote;
    use crate::rotate::etcd_scan::local_etcd;

    struct Local {
        root: PathBuf,
        bin: PathBuf,
    }

    impl Connector for Local {
        fn connect<'a>(
            &'a self,
            host: &'a Host,
        ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>> {
            Box::pin(async move {
                let r = LocalRemote::new(&host.name, self.root.clone())
                    .with_path_prefix(self.bin.clone());
                Ok(Arc::new(r) as Arc<dyn Remote>)
            })
        }
    }

    fn tool(bin: &Path, name: &str, body: &str) {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn put(etcd: &local_etcd::LocalEtcd, ns: &str, n: usize, key: &str) {
        let mut t = String::from("\n");
        for i in 0..n {
            t.push_str(&format!(
                "put /registry/secrets/{ns}/s-{i} \"k8s:enc:secretbox:v1:{key}:x\"\n"
            ));
        }
        t.push_str("\n\n");
        let path = std::env::temp_dir().join(format!("txn-{}-{ns}-{key}", std::process::id()));
        std::fs::write(&path, t).unwrap();
        let out = etcd.sh(&format!("{} txn < {}", etcd.ctl, path.display()));
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_rewrite_moves_every_secret_off_the_leaving_key_and_the_gate_counts() {
        let Some(etcd) = local_etcd::start() else {
            return;
        };
        let work = tempfile::tempdir().unwrap();
        let (root, bin) = (work.path().join("root"), work.path().join("bin"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let real = |name: &str| -> String {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {name}"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let etcdctl = real("etcdctl");
        tool(
            &bin,
            "etcdctl",
            &format!(
                "for a in \"$@\"; do shift; case \"$a\" in --endpoints=*|--cacert=*|--cert=*|--key=*) ;; *) set -- \"$@\" \"$a\" ;; esac; done\nexec {etcdctl} --endpoints={} \"$@\"",
                etcd.url
            ),
        );
        let d = work.path().display();
        tool(
            &bin,
            "kubectl",
            &format!(
                "case \"$3\" in\n\
                 get) ns=$6; shift 9; for n in \"$@\"; do echo \"$ns $n\"; done ;;\n\
                 replace) [ -e {d}/stuck ] && {{ cat >/dev/null; exit 0; }}\n\
                 \x20 {{ echo; while read -r ns n || [ -n \"$n\" ]; do echo \"put /registry/secrets/$ns/$n \\\"k8s:enc:secretbox:v1:key-new:y\\\"\"; done; echo; echo; }} | {etcdctl} --endpoints={} txn >/dev/null ;;\n\
                 esac",
                etcd.url
            ),
        );
        put(&etcd, "big", 740, "key1");
        put(&etcd, "small", 3, "key1");
        put(&etcd, "done", 5, "key-new");

        let inv = crate::inventory::parse(
            &format!(
                "cluster: {{name: t, kubernetesVersion: \"1.34\"}}\nbinaries: {{dir: {b}, etcdDir: {b}}}\nhosts:\n  - {{name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}}\n",
                b = bin.display()
            ),
            Path::new("i.yaml"),
        )
        .unwrap()
        .inventory;
        // The state dir at `reissue`: key-new encrypts, key1 leaves.
        let dir = StateDir::new(work.path().join("state"));
        std::fs::create_dir_all(dir.root().join("pki")).unwrap();
        let id = "20261202T100000Z";
        std::fs::write(
            dir.rotation_path("encryption-key"),
            format!(r#"{{"id":"{id}","stage":"reissue","furthest":"reissue"}}"#),
        )
        .unwrap();
        std::fs::write(dir.name_path("encryption-key.next"), "key-new").unwrap();

        let connector = Local { root, bin };
        let unlock = Unlock::Passphrase("unused".to_string().into());
        let mut run = RotateRun {
            reach: Reach::new(inv.hosts.clone(), &connector),
            what: Rotated::EncryptionKey,
            id: id.into(),
            journals: Default::default(),
            marker: crate::pki::rotation::rotation(&dir, "encryption-key").unwrap(),
            plan: None,
            rollout: super::super::Rollout {
                dir,
                unlock: &unlock,
                connector: &connector,
                options: ApplyOptions {
                    hosts: None,
                    skip: Vec::new(),
                    concurrency: 1,
                    lock: false,
                    owner: "test".into(),
                    admin_time: 0,
                    stamp: id.into(),
                    bootstrap: None,
                },
            },
            changed: Vec::new(),
            fault: None,
        };
        let cancel = Cancel::default();
        let env = Env {
            inv: &inv,
            reporter: &Silent,
            cancel: &cancel,
            concurrency: 1,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let connect: Vec<BoxPhase<'_, RotateRun>> = vec![Box::new(Connect)];
            run_in_order(&env, &mut run, &connect, &[]).await.unwrap();

            // Refused while key1 holds values; the rewrite empties it.
            let e = gate(&env, &run, Step::DropOld)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("743 values in etcd are still encrypted with key key1"),
                "{e}"
            );
            assert!(needed(&run, Step::Rewrite));
            if Rewrite(Step::Rewrite).run(&env, &mut run).await.is_err() {
                panic!(
                    "rewrite failed: {}",
                    run.fault.take().map(|e| e.to_string()).unwrap_or_default()
                );
            }
            let after = scan(&env, &run, "key1").await.unwrap();
            assert_eq!(after.under("key1"), 0);
            assert_eq!(after.under("key-new"), 748);
            gate(&env, &run, Step::DropOld).await.unwrap();
            let journal = connector
                .root
                .join("var/lib/rampart/rotate-encryption-key")
                .join(format!("{id}.journal"));
            let text = std::fs::read_to_string(&journal).unwrap();
            assert!(text.starts_with("rewrite\t"), "{text}");

            // Something still writing with key1 while the rewrite cannot
            // move it: the run stops and says so, instead of looping.
            put(&etcd, "late", 2, "key1");
            std::fs::write(work.path().join("stuck"), "").unwrap();
            let e = rewrite_all(&env, &run, Step::Rewrite)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("2 values are still under key key1 after a rewrite"),
                "{e}"
            );
        });
    }
}
