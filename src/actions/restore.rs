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

use serde::{Deserialize, Serialize};

use crate::actions::apply::{connect_all, lock_all, Connector};
use crate::backup::{self, Decrypted, VerifyError, VerifyOptions};
use crate::inventory::{Host, Inventory};
use crate::phases::services::{apiserver_ready_cmd, etcd_healthy, poll};
use crate::phases::{for_each, step, Cancel, Ctx, Phase, PhaseError, Reporter, StepError, Target};
use crate::remote::script::{self as rscript, Staged};
use crate::remote::{BoxFuture, Held, Input};
use crate::restore::script;
use crate::restore::{
    plan_restore, plan_resume, plan_rollback, upload_path, HostFacts, PlanError, RestorePlan,
    RollbackPlan, SnapshotMeta, Step,
};

const APISERVER_HEALTH_SECS: u32 = 180;

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

/// What a finished restore found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    /// The cluster's revision after the restore (≥ the snapshot's).
    pub revision: i64,
    /// Live keys (the snapshot's totalKey also counts old revisions).
    pub keys: u64,
    /// The member that answered.
    pub member: String,
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
    let phases: Vec<Box<dyn Phase + '_>> = vec![
        Box::new(Note {
            name: "journal",
            id,
            step: Step::Started,
            hosts: union(&members, &plan.apiservers),
        }),
        Box::new(Stop {
            name: "stop-apiservers",
            title: "stop kube-apiservers",
            id,
            unit: "kube-apiserver",
            step: Step::StoppedApiserver,
            hosts: plan.apiservers.clone(),
        }),
        Box::new(Stop {
            name: "stop-etcd",
            title: "stop etcd on every member",
            id,
            unit: "etcd",
            step: Step::StoppedEtcd,
            hosts: members.clone(),
        }),
        Box::new(MoveAside {
            id,
            hosts: pending(Step::MovedAside),
        }),
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
        Box::new(StartApiservers {
            id,
            hosts: plan.apiservers.clone(),
        }),
        Box::new(Note {
            name: "done",
            id,
            step: Step::Done,
            hosts: members,
        }),
    ];
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
    let phases: Vec<Box<dyn Phase + '_>> = vec![
        Box::new(Stop {
            name: "stop-apiservers",
            title: "stop kube-apiservers",
            id,
            unit: "kube-apiserver",
            step: Step::StoppedApiserver,
            hosts: plan.apiservers.clone(),
        }),
        Box::new(Stop {
            name: "stop-etcd",
            title: "stop etcd on every member",
            id,
            unit: "etcd",
            step: Step::StoppedEtcd,
            hosts: members.clone(),
        }),
        Box::new(RollBack {
            id,
            stamp: &plan.stamp,
            hosts: members.clone(),
        }),
        Box::new(StartEtcd { id, hosts: members }),
        Box::new(StartApiservers {
            id,
            hosts: plan.apiservers.clone(),
        }),
    ];
    run_phases(inv, session, &phases, concurrency, reporter, cancel).await?;
    Ok(())
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|h| !a.contains(h)).cloned());
    out
}

/// Apply's phase loop: in order, skipping phases with no hosts, checking
/// cancellation between them, stopping at the first that failed anywhere.
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
    for phase in phases {
        let n = phase.hosts(&ctx);
        if n == 0 {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(PhaseError {
                phase: phase.name(),
                failures: vec![(
                    "all".into(),
                    StepError::Cancelled {
                        step: phase.name().into(),
                    },
                )],
            });
        }
        reporter.phase(phase.name(), phase.title(), n);
        phase.run(&ctx).await?;
    }
    Ok(())
}

fn selected<'a>(ctx: &'a Ctx<'a>, hosts: &[String]) -> Vec<&'a Target> {
    ctx.targets
        .iter()
        .filter(|t| hosts.contains(&t.host.name))
        .collect()
}

/// Records a step on hosts (the start and the end of a restore).
struct Note<'p> {
    name: &'static str,
    id: &'p str,
    step: Step,
    hosts: Vec<String>,
}

impl Phase for Note<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn title(&self) -> &'static str {
        "write the restore journal"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(for_each(
            ctx,
            self.name,
            selected(ctx, &self.hosts),
            move |t| {
                Box::pin(async move {
                    step(
                        ctx,
                        t,
                        "journal",
                        &script::note(self.id, self.step),
                        Input::None,
                    )
                    .await?;
                    Ok(())
                })
            },
        ))
    }
}

/// `systemctl stop` of one unit on hosts, in parallel.
struct Stop<'p> {
    name: &'static str,
    title: &'static str,
    id: &'p str,
    unit: &'static str,
    step: Step,
    hosts: Vec<String>,
}

impl Phase for Stop<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn title(&self) -> &'static str {
        self.title
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(for_each(
            ctx,
            self.name,
            selected(ctx, &self.hosts),
            move |t| {
                Box::pin(async move {
                    let text = script::stop(self.id, self.unit, self.step);
                    step(ctx, t, &format!("stop {}", self.unit), &text, Input::None).await?;
                    ctx.reporter
                        .line(&t.host.name, &format!("{} stopped", self.unit));
                    Ok(())
                })
            },
        ))
    }
}

struct MoveAside<'p> {
    id: &'p str,
    hosts: Vec<String>,
}

impl Phase for MoveAside<'_> {
    fn name(&self) -> &'static str {
        "move-aside"
    }
    fn title(&self) -> &'static str {
        "move the data dirs aside"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(for_each(
            ctx,
            self.name(),
            selected(ctx, &self.hosts),
            move |t| {
                Box::pin(async move {
                    step(
                        ctx,
                        t,
                        "move aside",
                        &script::move_aside(self.id),
                        Input::None,
                    )
                    .await?;
                    ctx.reporter.line(
                        &t.host.name,
                        &format!(
                            "data dir kept as {}",
                            crate::restore::pre_restore_dir(self.id)
                        ),
                    );
                    Ok(())
                })
            },
        ))
    }
}

/// Upload (0600, checked against the plaintext's sha256) and restore, on
/// every member in parallel; then the restored database is read offline and
/// must hold the snapshot's revision and keys before anything starts.
struct RestoreMembers<'p> {
    plan: &'p RestorePlan,
    snapshot: Option<&'p Decrypted>,
    hosts: Vec<String>,
}

impl Phase for RestoreMembers<'_> {
    fn name(&self) -> &'static str {
        "restore"
    }
    fn title(&self) -> &'static str {
        "upload and restore the snapshot on every member"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(for_each(
            ctx,
            self.name(),
            selected(ctx, &self.hosts),
            move |t| {
                Box::pin(async move {
                    let p = self.plan;
                    let Some(snap) = self.snapshot else {
                        return Err(StepError::Check(
                            "no snapshot to upload; resume with FILE and --identity".into(),
                        ));
                    };
                    let m = p
                        .members
                        .iter()
                        .find(|m| m.name == t.host.name)
                        .expect("hosts are the plan's members");
                    let staged = Staged {
                        path: upload_path(&p.id),
                        mode: 0o600,
                        owner: "root".into(),
                        group: "root".into(),
                        size: snap.size,
                    };
                    step(
                        ctx,
                        t,
                        "upload snapshot",
                        &rscript::stage(&[staged]),
                        Input::File(snap.path.clone()),
                    )
                    .await?;
                    let text = script::restore(
                        &p.id,
                        &ctx.inv.binaries.etcd_dir,
                        m,
                        &p.initial_cluster,
                        &p.token,
                        &snap.sha256,
                    );
                    let out = step(
                        ctx,
                        t,
                        &format!("{} snapshot restore", m.tool.binary()),
                        &text,
                        Input::None,
                    )
                    .await?;
                    let text = out.stdout_text();
                    let status = text
                        .lines()
                        .find_map(|l| l.strip_prefix("status\t"))
                        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                        .ok_or_else(|| {
                            StepError::Check("the restored database could not be read back".into())
                        })?;
                    let revision = status["revision"].as_i64().unwrap_or(-1);
                    let keys = status["totalKey"].as_u64().unwrap_or(0);
                    if revision != p.snapshot.revision || keys != p.snapshot.total_keys {
                        return Err(StepError::Check(format!(
                        "the restored database has revision {revision} and {keys} keys, the snapshot {} and {}; the data dir is kept, roll back with `rampart backup restore --rollback {}`",
                        p.snapshot.revision, p.snapshot.total_keys, p.id
                    )));
                    }
                    ctx.reporter.line(
                        &t.host.name,
                        &format!(
                            "restored revision {revision}, {keys} keys ({})",
                            m.tool.binary()
                        ),
                    );
                    Ok(())
                })
            },
        ))
    }
}

/// All members start together (`--no-block`: each waits for a quorum), then
/// each waits for the health of the whole cluster.
struct StartEtcd<'p> {
    id: &'p str,
    hosts: Vec<String>,
}

impl Phase for StartEtcd<'_> {
    fn name(&self) -> &'static str {
        "start-etcd"
    }
    fn title(&self) -> &'static str {
        "start etcd on every member"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let all = selected(ctx, &self.hosts);
            for_each(ctx, self.name(), all.clone(), move |t| {
                Box::pin(async move {
                    let text = script::start(self.id, "etcd", Step::StartedEtcd, false);
                    step(ctx, t, "start etcd", &text, Input::None).await?;
                    Ok(())
                })
            })
            .await?;
            // Every member polls at once: the gate needs them all.
            for_each(ctx, self.name(), all, move |t| {
                Box::pin(etcd_healthy(ctx, t))
            })
            .await
        })
    }
}

/// Revision and keys, read through the first member once the cluster is healthy.
struct Check<'p> {
    plan: &'p RestorePlan,
    out: &'p Mutex<Option<Checked>>,
}

impl Phase for Check<'_> {
    fn name(&self) -> &'static str {
        "check"
    }
    fn title(&self) -> &'static str {
        "check revision and keys against the snapshot"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        usize::from(self.first(ctx).is_some())
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(for_each(
            ctx,
            self.name(),
            self.first(ctx).into_iter().collect(),
            move |t| {
                Box::pin(async move {
                    let loopback = match t.host.address {
                        std::net::IpAddr::V4(_) => "https://127.0.0.1:2379",
                        std::net::IpAddr::V6(_) => "https://[::1]:2379",
                    };
                    let text = script::check(&ctx.inv.binaries.etcd_dir, loopback);
                    let out = step(ctx, t, "check", &text, Input::None).await?;
                    let checked = parse_check(&out.stdout_text(), &t.host.name)?;
                    let snap = &self.plan.snapshot;
                    if checked.revision < snap.revision {
                        return Err(StepError::Check(format!(
                        "the cluster is at revision {}, older than the snapshot's {}; roll back with `rampart backup restore --rollback {}`",
                        checked.revision, snap.revision, self.plan.id
                    )));
                    }
                    if checked.keys > snap.total_keys {
                        return Err(StepError::Check(format!(
                        "the cluster holds {} keys, more than the snapshot's {}; roll back with `rampart backup restore --rollback {}`",
                        checked.keys, snap.total_keys, self.plan.id
                    )));
                    }
                    ctx.reporter.line(
                        &t.host.name,
                        &format!(
                            "revision {} (snapshot {}), {} live keys",
                            checked.revision, snap.revision, checked.keys
                        ),
                    );
                    *self.out.lock().expect("no panics while held") = Some(checked);
                    Ok(())
                })
            },
        ))
    }
}

impl Check<'_> {
    fn first<'a>(&self, ctx: &'a Ctx<'a>) -> Option<&'a Target> {
        let name = &self.plan.members.first()?.name;
        ctx.targets.iter().find(|t| &t.host.name == name)
    }
}

/// `status\t<endpoint status JSON>` and `count\t<get JSON>`.
fn parse_check(text: &str, host: &str) -> Result<Checked, StepError> {
    let field = |prefix: &str| -> Option<serde_json::Value> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|j| serde_json::from_str(j).ok())
    };
    let bad = || StepError::Check("etcdctl printed no revision or key count".into());
    let status = field("status\t").ok_or_else(bad)?;
    let count = field("count\t").ok_or_else(bad)?;
    let revision = status[0]["Status"]["header"]["revision"]
        .as_i64()
        .ok_or_else(bad)?;
    // proto3 JSON leaves out a zero count.
    let keys = count["count"].as_u64().unwrap_or(0);
    Ok(Checked {
        revision,
        keys,
        member: host.to_string(),
    })
}

/// The apiservers that ran before, one at a time, each behind `/readyz`.
struct StartApiservers<'p> {
    id: &'p str,
    hosts: Vec<String>,
}

impl Phase for StartApiservers<'_> {
    fn name(&self) -> &'static str {
        "start-apiservers"
    }
    fn title(&self) -> &'static str {
        "start the kube-apiservers that were running"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            for t in selected(ctx, &self.hosts) {
                for_each(ctx, self.name(), vec![t], move |t| {
                    Box::pin(async move {
                        let text =
                            script::start(self.id, "kube-apiserver", Step::StartedApiserver, true);
                        step(ctx, t, "start kube-apiserver", &text, Input::None).await?;
                        let cmd = apiserver_ready_cmd(ctx.inv, &t.host);
                        poll(ctx, t, "apiserver /readyz", &cmd, APISERVER_HEALTH_SECS).await?;
                        ctx.reporter.line(&t.host.name, "kube-apiserver healthy");
                        Ok(())
                    })
                })
                .await?;
            }
            Ok(())
        })
    }
}

struct RollBack<'p> {
    id: &'p str,
    stamp: &'p str,
    hosts: Vec<String>,
}

impl Phase for RollBack<'_> {
    fn name(&self) -> &'static str {
        "roll-back"
    }
    fn title(&self) -> &'static str {
        "put the pre-restore data dirs back"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(for_each(
            ctx,
            self.name(),
            selected(ctx, &self.hosts),
            move |t| {
                Box::pin(async move {
                    step(
                        ctx,
                        t,
                        "roll back",
                        &script::roll_back(self.id, self.stamp),
                        Input::None,
                    )
                    .await?;
                    ctx.reporter.line(
                        &t.host.name,
                        &format!(
                            "{} is back; the restored data is kept as {}",
                            crate::restore::pre_restore_dir(self.id),
                            crate::restore::rolled_back_dir(self.stamp)
                        ),
                    );
                    Ok(())
                })
            },
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_check_output_of_etcdctl_34() {
        let c = parse_check(
            "status\t[{\"Endpoint\":\"https://127.0.0.1:2379\",\"Status\":{\"header\":{\"cluster_id\":1,\"member_id\":2,\"revision\":42,\"raft_term\":3},\"version\":\"3.4.23\"}}]\ncount\t{\"header\":{\"revision\":42},\"kvs\":[{\"key\":\"YQ==\"}],\"more\":true,\"count\":5}\n",
            "cp1",
        )
        .unwrap();
        assert_eq!((c.revision, c.keys), (42, 5));
        let empty = parse_check(
            "status\t[{\"Status\":{\"header\":{\"revision\":1}}}]\ncount\t{\"header\":{\"revision\":1}}\n",
            "cp1",
        )
        .unwrap();
        assert_eq!(empty.keys, 0);
    }
}
