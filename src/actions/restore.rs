//! `rampart backup restore` (and `--resume`, `--rollback`): verify the backup
//! on this machine, connect to and lock every etcd member and control plane
//! (apply's own connect and lock), read their restore facts, plan, then run
//! the restore phases.
//!
//! The order is the safety argument: nothing on any host changes before the
//! backup decrypted with the identity, matched its manifest and read as a
//! sound snapshot; a plan problem on any host stops everything before the
//! first service stops; data dirs are only ever renamed, never deleted.
//! Each member journals its finished steps, so a run cut short can be
//! resumed or rolled back from what the hosts themselves recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::actions::apply::{connect_all, lock_all, Connector};
use crate::backup::{self, Decrypted, VerifyError, VerifyOptions};
use crate::inventory::{Host, Inventory};
pub use crate::phases::restore::Checked;
use crate::phases::restore::{
    done, move_aside, note, put_back, release_idle, Check, Fence, RestoreMembers,
    StartControlPlane, StartEtcd, Stop, CONTROL_PLANE_UNITS, MEMBER_UNITS,
};
use crate::phases::{run_in_order, Cancel, Ctx, Phase, PhaseError, Reporter, StepError, Target};
use crate::remote::{Held, Input};
use crate::restore::{
    plan_restore, plan_resume, plan_rollback, script, HostFacts, PlanError, RestorePlan,
    RollbackPlan, SnapshotMeta, Step,
};

/// How to reach and hold the hosts.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    /// Take the host locks (a run), or only read (`--dry-run`).
    pub lock: bool,
    /// Written into the lock file: who holds it.
    pub owner: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the backup was refused before anything on any host changed")]
    Refused(#[source] VerifyError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Hosts(#[from] PhaseError),
    #[error("restore {id}: {reason}")]
    SavedPlan { id: String, reason: String },
    #[error("resuming restore {id} needs the backup again ({members} have not restored it yet); pass FILE and --identity")]
    NeedSnapshot { id: String, members: String },
    #[error("{file} is not the backup restore {id} started with (sha256 {actual}, the plan has {expected}); pass that file")]
    OtherSnapshot {
        id: String,
        file: String,
        actual: String,
        expected: String,
    },
}

/// Decrypts and checks the backup here, keeping the plaintext (in a 0700 dir
/// deleted when the returned value drops). Any failure is a refusal.
pub fn verify_snapshot(
    file: &Path,
    opts: &VerifyOptions,
    now: time::OffsetDateTime,
) -> Result<(SnapshotMeta, Decrypted), RestoreError> {
    let (report, plain) = backup::verify_keep(file, opts).map_err(RestoreError::Refused)?;
    let m = report.manifest.as_ref();
    let created = m.map(|m| m.created.clone());
    let age_seconds = created.as_deref().and_then(|c| {
        time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (now - t).whole_seconds())
    });
    Ok((
        SnapshotMeta {
            file: file.display().to_string(),
            sha256: report.sha256.clone(),
            plaintext_sha256: plain.sha256.clone(),
            snapshot_size: report.snapshot_size,
            revision: report.status.revision,
            total_keys: report.status.total_key,
            created,
            age_seconds,
            member: m.map(|m| m.member.clone()),
            cluster: m.map(|m| m.cluster.clone()),
            etcd_version: m.map(|m| m.etcd_version.clone()),
            manifest: m.is_some(),
        },
        plain,
    ))
}

/// The connected (and, for a run, locked) hosts of a restore, with their facts.
pub struct Session {
    pub targets: Vec<Target>,
    pub facts: BTreeMap<String, HostFacts>,
    locks: Vec<Box<dyn Held>>,
}

impl Session {
    /// Ends the lock scripts on every host.
    pub async fn release(&mut self) {
        for lock in self.locks.drain(..) {
            let _ = lock.release().await;
        }
    }
}

/// The hosts a restore touches: etcd members and control planes, in
/// inventory order.
fn restore_hosts(inv: &Inventory) -> Vec<&Host> {
    inv.hosts
        .iter()
        .filter(|h| h.roles.etcd || h.roles.control_plane)
        .collect()
}

/// Connects and locks (apply's own paths), then reads each host's restore
/// facts for restore `id`.
pub async fn connect(
    inv: &Inventory,
    id: &str,
    connector: &dyn Connector,
    o: &Options,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Session, RestoreError> {
    let hosts = restore_hosts(inv);
    reporter.phase("connect", "connect", hosts.len());
    let remotes = connect_all(&hosts, connector, o.concurrency, reporter, cancel).await?;
    let locks = if o.lock {
        lock_all(&remotes, &o.owner, reporter, cancel).await?
    } else {
        Vec::new()
    };
    reporter.phase("facts", "read host facts", remotes.len());
    let text = script::facts(&inv.binaries.etcd_dir, id);
    let read = futures::future::join_all(remotes.iter().map(|(host, remote)| {
        let text = &text;
        async move {
            reporter.step(&host.name, "facts");
            let r = match remote.run(text, Input::None).await {
                Ok(out) if out.success() => {
                    HostFacts::parse(&out.stdout_text()).map_err(StepError::Facts)
                }
                Ok(out) => Err(StepError::Script {
                    step: "facts".into(),
                    status: out.status.map_or("signal".into(), |s| s.to_string()),
                    stderr: out.stderr_tail(),
                }),
                Err(e) => Err(e.into()),
            };
            reporter.done(&host.name);
            r
        }
    }))
    .await;
    let mut facts = BTreeMap::new();
    let mut failures = Vec::new();
    let mut targets = Vec::new();
    for ((host, remote), r) in remotes.into_iter().zip(read) {
        match r {
            Ok(f) => {
                facts.insert(host.name.clone(), f);
            }
            Err(e) => failures.push((host.name.clone(), e)),
        }
        targets.push(Target {
            plan: crate::plan::HostPlan {
                host: host.name.clone(),
                ..Default::default()
            },
            host,
            remote,
            desired: Default::default(),
            facts: Default::default(),
        });
    }
    let mut session = Session {
        targets,
        facts,
        locks,
    };
    if !failures.is_empty() {
        session.release().await;
        return Err(PhaseError {
            phase: "facts",
            failures,
        }
        .into());
    }
    Ok(session)
}

/// A new restore's plan (pure; see [`plan_restore`]).
pub fn plan(
    inv: &Inventory,
    snapshot: SnapshotMeta,
    session: &Session,
    id: &str,
) -> Result<RestorePlan, RestoreError> {
    Ok(plan_restore(inv, snapshot, &session.facts, id)?)
}

/// A saved plan continued from the members' journals; `snapshot`: the
/// verified backup, needed while a member has not restored yet.
pub fn plan_continue(
    inv: &Inventory,
    saved: &RestorePlan,
    session: &Session,
    snapshot: Option<&SnapshotMeta>,
) -> Result<RestorePlan, RestoreError> {
    let p = plan_resume(inv, saved, &session.facts)?;
    let pending: Vec<&str> = p
        .members
        .iter()
        .filter(|m| !m.has(Step::Restored))
        .map(|m| m.name.as_str())
        .collect();
    match snapshot {
        None if !pending.is_empty() => Err(RestoreError::NeedSnapshot {
            id: p.id.clone(),
            members: pending.join(", "),
        }),
        Some(s) if s.plaintext_sha256 != p.snapshot.plaintext_sha256 => {
            Err(RestoreError::OtherSnapshot {
                id: p.id.clone(),
                file: s.file.clone(),
                actual: s.sha256.clone(),
                expected: p.snapshot.sha256.clone(),
            })
        }
        _ => Ok(p),
    }
}

/// A rollback's plan (pure; see [`plan_rollback`]).
pub fn plan_back(
    inv: &Inventory,
    id: &str,
    stamp: &str,
    session: &Session,
    saved: Option<&RestorePlan>,
) -> Result<RollbackPlan, RestoreError> {
    Ok(plan_rollback(inv, id, stamp, &session.facts, saved)?)
}

/// Runs a restore plan; `snapshot` is the verified plaintext (None only
/// when every member already restored, on resume).
pub async fn execute(
    inv: &Inventory,
    session: &Session,
    plan: &RestorePlan,
    snapshot: Option<&Decrypted>,
    concurrency: usize,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Checked, RestoreError> {
    let members: Vec<String> = plan.members.iter().map(|m| m.name.clone()).collect();
    let pending = |s: Step| -> Vec<String> {
        plan.members
            .iter()
            .filter(|m| !m.has(s))
            .map(|m| m.name.clone())
            .collect()
    };
    let id = plan.id.as_str();
    let checked = Mutex::new(None);
    let [stop_control_planes, stop_etcd, fence] = stops(id, &plan.control_planes, &members);
    let mut phases: Vec<Box<dyn Phase + '_>> = vec![
        Box::new(note(
            "journal",
            id,
            Step::Started,
            union(&members, &plan.control_planes),
        )),
        stop_control_planes,
        stop_etcd,
        fence,
        Box::new(move_aside(id, pending(Step::MovedAside))),
        Box::new(RestoreMembers {
            plan,
            snapshot,
            hosts: pending(Step::Restored),
        }),
        Box::new(StartEtcd {
            id,
            hosts: members.clone(),
        }),
        Box::new(Check {
            plan,
            out: &checked,
        }),
    ];
    phases.extend(starts(
        id,
        &plan.control_planes,
        &plan.apiservers,
        members,
        Step::Done,
    ));
    run_phases(inv, session, &phases, concurrency, reporter, cancel).await?;
    let out = checked.lock().expect("no panics while held").take();
    Ok(out.unwrap_or_default())
}

/// Runs a rollback plan.
pub async fn roll_back(
    inv: &Inventory,
    session: &Session,
    plan: &RollbackPlan,
    concurrency: usize,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<(), RestoreError> {
    let members: Vec<String> = plan.members.iter().map(|m| m.name.clone()).collect();
    let id = plan.id.as_str();
    let [stop_control_planes, stop_etcd, fence] = stops(id, &plan.control_planes, &members);
    let mut phases: Vec<Box<dyn Phase + '_>> = vec![
        stop_control_planes,
        stop_etcd,
        fence,
        Box::new(put_back(id, &plan.stamp, members.clone())),
        Box::new(StartEtcd {
            id,
            hosts: members.clone(),
        }),
    ];
    phases.extend(starts(
        id,
        &plan.control_planes,
        &plan.apiservers,
        members,
        Step::RolledBack,
    ));
    run_phases(inv, session, &phases, concurrency, reporter, cancel).await?;
    Ok(())
}

/// How a restore and a rollback begin: every control plane held and stopped
/// (nothing writes while etcd goes, nothing can come back), then every
/// member's backup job and etcd, then each host proves nothing held has run
/// since.
fn stops<'p>(
    id: &'p str,
    control_planes: &[String],
    members: &[String],
) -> [Box<dyn Phase + 'p>; 3] {
    [
        Box::new(Stop {
            name: "stop-control-plane",
            title: "hold and stop the control planes",
            id,
            units: &CONTROL_PLANE_UNITS,
            step: Step::StoppedApiserver,
            hosts: control_planes.to_vec(),
        }),
        Box::new(Stop {
            name: "stop-etcd",
            title: "hold and stop the backup job and etcd on every member",
            id,
            units: &MEMBER_UNITS,
            step: Step::StoppedEtcd,
            hosts: members.to_vec(),
        }),
        Box::new(Fence {
            id,
            members: members.to_vec(),
            control_planes: control_planes.to_vec(),
        }),
    ]
}

/// How they end, once etcd is healthy: the control planes that ran start
/// again one host at a time, the others are released, then the backup job
/// with the journal's `last` line.
fn starts<'p>(
    id: &'p str,
    control_planes: &[String],
    apiservers: &[String],
    members: Vec<String>,
    last: Step,
) -> [Box<dyn Phase + 'p>; 3] {
    let idle = control_planes
        .iter()
        .filter(|h| !apiservers.contains(h))
        .cloned()
        .collect();
    [
        Box::new(StartControlPlane {
            id,
            hosts: apiservers.to_vec(),
        }),
        Box::new(release_idle(id, idle)),
        Box::new(done(id, last, members)),
    ]
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|h| !a.contains(h)).cloned());
    out
}

/// The restore phases over the session's hosts, in order (the shared loop).
async fn run_phases(
    inv: &Inventory,
    session: &Session,
    phases: &[Box<dyn Phase + '_>],
    concurrency: usize,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<(), PhaseError> {
    let ctx = Ctx {
        inv,
        targets: &session.targets,
        reporter,
        cancel,
        concurrency,
        not_starting: &[],
        stamp: String::new(),
    };
    run_in_order(&ctx, phases, &[]).await
}

/// `<state dir>/restores/<id>.json`: the admin side's copy of a plan.
pub fn saved_plan_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("restores").join(format!("{id}.json"))
}

/// Writes the plan (0600, in a 0700 dir) before the first host changes.
pub fn save_plan(state_dir: &Path, plan: &RestorePlan) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = saved_plan_path(state_dir, &plan.id);
    let dir = path.parent().expect("a file in a dir");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{}.json.tmp", plan.id));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(plan).expect("a plan serializes"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The saved plan of restore `id`, if this machine has it.
pub fn load_plan(state_dir: &Path, id: &str) -> Result<Option<RestorePlan>, RestoreError> {
    let path = saved_plan_path(state_dir, id);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RestoreError::SavedPlan {
                    id: id.into(),
                    reason: format!(
                        "{} is unreadable ({e}); move it away to roll back without it",
                        path.display()
                    ),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RestoreError::SavedPlan {
            id: id.into(),
            reason: format!("cannot read {} ({e})", path.display()),
        }),
    }
}
