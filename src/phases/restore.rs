//! The phases of `rampart backup restore` and its rollback: each a [`Phase`]
//! over the members (or control planes) the plan names, journaling on the
//! host what it finished so a cut-short run can be resumed or rolled back.
//! The order they run in, and why, is in `crate::actions::restore`.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::backup::Decrypted;
use crate::phases::services::{control_plane_healthy, etcd_healthy, CONTROL_PLANE};
use crate::phases::{for_each, step, Ctx, Phase, PhaseError, StepError, Target};
use crate::remote::script::{self as rscript, Staged};
use crate::remote::{BoxFuture, Input};
use crate::restore::script;
use crate::restore::{upload_path, RestorePlan, Step};

/// What the check after a restore found.
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

fn selected<'a>(ctx: &'a Ctx<'a>, hosts: &[String]) -> Vec<&'a Target> {
    ctx.targets
        .iter()
        .filter(|t| hosts.contains(&t.host.name))
        .collect()
}

/// One script on each of the selected hosts, and a line to report after it:
/// the restore steps that need nothing but their script (journal notes,
/// moving a data dir aside, rolling one back).
pub(crate) struct OnHosts {
    pub(crate) name: &'static str,
    pub(crate) title: &'static str,
    /// What the progress line says while it runs.
    pub(crate) step: &'static str,
    pub(crate) script: String,
    /// Reported per host once its script succeeded.
    pub(crate) line: Option<String>,
    pub(crate) hosts: Vec<String>,
}

impl Phase for OnHosts {
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
                    step(ctx, t, self.step, &self.script, Input::None).await?;
                    if let Some(line) = &self.line {
                        ctx.reporter.line(&t.host.name, line);
                    }
                    Ok(())
                })
            },
        ))
    }
}

/// A journal note on hosts (the start and the end of a restore).
pub(crate) fn note(name: &'static str, id: &str, step: Step, hosts: Vec<String>) -> OnHosts {
    OnHosts {
        name,
        title: "write the restore journal",
        step: "journal",
        script: script::note(id, step),
        line: None,
        hosts,
    }
}

/// The backup job released on every member with the last journal line
/// (`done`, or for a rollback `rolled-back` again): it runs again when its
/// timer next fires.
pub(crate) fn done(id: &str, last: Step, hosts: Vec<String>) -> OnHosts {
    OnHosts {
        name: "done",
        title: "release the backup job; write the restore journal",
        step: "release",
        script: script::release(id, &MEMBER_UNITS[..1], last),
        line: None,
        hosts,
    }
}

/// The control planes that were not running: released, left stopped.
pub(crate) fn release_idle(id: &str, hosts: Vec<String>) -> OnHosts {
    OnHosts {
        name: "release-control-plane",
        title: "release the control planes that were not running",
        step: "release",
        script: script::release(id, &CONTROL_PLANE_UNITS, Step::StartedApiserver),
        line: Some("released (was not running; `rampart apply` starts it)".into()),
        hosts,
    }
}

/// `/var/lib/etcd` renamed to its pre-restore name (never deleted).
pub(crate) fn move_aside(id: &str, hosts: Vec<String>) -> OnHosts {
    OnHosts {
        name: "move-aside",
        title: "move the data dirs aside",
        step: "move aside",
        script: script::move_aside(id),
        line: Some(format!(
            "data dir kept as {}",
            crate::restore::pre_restore_dir(id)
        )),
        hosts,
    }
}

/// The pre-restore data dir put back; the restored one kept aside.
pub(crate) fn put_back(id: &str, stamp: &str, hosts: Vec<String>) -> OnHosts {
    OnHosts {
        name: "roll-back",
        title: "put the pre-restore data dirs back",
        step: "roll back",
        script: script::roll_back(id, stamp),
        line: Some(format!(
            "{} is back; the restored data is kept as {}",
            crate::restore::pre_restore_dir(id),
            crate::restore::rolled_back_dir(stamp)
        )),
        hosts,
    }
}

/// Holds and stops `units` on the hosts (see [`script::hold_and_stop`]).
/// With etcd among them: followers first, the leader last (see
/// `script::is_leader`).
pub(crate) struct Stop<'p> {
    pub(crate) name: &'static str,
    pub(crate) title: &'static str,
    pub(crate) id: &'p str,
    pub(crate) units: &'static [&'static str],
    pub(crate) step: Step,
    pub(crate) hosts: Vec<String>,
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
        Box::pin(async move {
            let leaders = Mutex::new(Vec::new());
            let leaders_ref = &leaders;
            for_each(ctx, self.name, selected(ctx, &self.hosts), move |t| {
                Box::pin(async move {
                    if self.units.contains(&ETCD_UNIT) {
                        let text = script::is_leader(&ctx.inv.binaries.etcd_dir, loopback(t));
                        let out = step(ctx, t, "find the etcd leader", &text, Input::None).await?;
                        if out.stdout_text().trim() == "leader" {
                            leaders_ref
                                .lock()
                                .expect("no panics while held")
                                .push(t.host.name.clone());
                            return Ok(());
                        }
                    }
                    self.stop(ctx, t).await
                })
            })
            .await?;
            let leaders = leaders.into_inner().expect("no panics while held");
            for_each(ctx, self.name, selected(ctx, &leaders), move |t| {
                Box::pin(self.stop(ctx, t))
            })
            .await
        })
    }
}

impl Stop<'_> {
    async fn stop(&self, ctx: &Ctx<'_>, t: &Target) -> Result<(), StepError> {
        let text = script::hold_and_stop(self.id, self.units, self.step);
        step(ctx, t, "hold and stop", &text, Input::None).await?;
        ctx.reporter.line(
            &t.host.name,
            &format!("held stopped: {}", self.units.join(", ")),
        );
        Ok(())
    }
}

/// etcd's unit: the members' stop waits for followers before the leader.
pub(crate) const ETCD_UNIT: &str = "etcd.service";
/// What a restore holds on an etcd member: etcd, and the backup job that talks to it.
pub(crate) const MEMBER_UNITS: [&str; 2] = ["rampart-backup.service", ETCD_UNIT];
/// What it holds on a control plane, in stop order (the apiserver last, so
/// its clients never see it gone while they run).
pub(crate) const CONTROL_PLANE_UNITS: [&str; 3] = [
    "kube-scheduler.service",
    "kube-controller-manager.service",
    "kube-apiserver.service",
];

/// Before any data moves, every host proves that what the restore holds
/// there is still held, stopped and has not run since (see [`script::fence`]).
pub(crate) struct Fence<'p> {
    pub(crate) id: &'p str,
    pub(crate) members: Vec<String>,
    pub(crate) control_planes: Vec<String>,
}

impl Fence<'_> {
    fn units(&self, host: &str) -> Vec<&'static str> {
        let mut units = Vec::new();
        if self.control_planes.iter().any(|h| h == host) {
            units.extend(CONTROL_PLANE_UNITS);
        }
        if self.members.iter().any(|h| h == host) {
            units.extend(MEMBER_UNITS);
        }
        units
    }
    fn all(&self) -> Vec<String> {
        let mut all = self.members.clone();
        all.extend(
            self.control_planes
                .iter()
                .filter(|h| !self.members.contains(h))
                .cloned(),
        );
        all
    }
}

impl Phase for Fence<'_> {
    fn name(&self) -> &'static str {
        "fence"
    }
    fn title(&self) -> &'static str {
        "check that nothing held has run since it stopped"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.all()).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let all = self.all();
            for_each(ctx, self.name(), selected(ctx, &all), move |t| {
                Box::pin(async move {
                    let units = self.units(&t.host.name);
                    let text = script::fence(self.id, &units);
                    step(ctx, t, "fence", &text, Input::None).await?;
                    ctx.reporter.line(
                        &t.host.name,
                        &format!("{} held and not run since", units.len()),
                    );
                    Ok(())
                })
            })
            .await
        })
    }
}

/// The local member's client URL.
fn loopback(t: &Target) -> &'static str {
    match t.host.address {
        std::net::IpAddr::V4(_) => "https://127.0.0.1:2379",
        std::net::IpAddr::V6(_) => "https://[::1]:2379",
    }
}

/// Upload (0600, checked against the plaintext's sha256) and restore, on
/// every member in parallel; then the restored database is read offline and
/// must hold the snapshot's revision and keys before anything starts.
pub(crate) struct RestoreMembers<'p> {
    pub(crate) plan: &'p RestorePlan,
    pub(crate) snapshot: Option<&'p Decrypted>,
    pub(crate) hosts: Vec<String>,
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
pub(crate) struct StartEtcd<'p> {
    pub(crate) id: &'p str,
    pub(crate) hosts: Vec<String>,
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
                    let text = script::start(self.id, ETCD_UNIT, Step::StartedEtcd, false);
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
pub(crate) struct Check<'p> {
    pub(crate) plan: &'p RestorePlan,
    pub(crate) out: &'p Mutex<Option<Checked>>,
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
                    let text = script::check(&ctx.inv.binaries.etcd_dir, loopback(t));
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

/// The control planes whose apiserver ran before, one host at a time: the
/// apiserver (a new process, behind `/readyz`), then the controller-manager
/// and the scheduler, each behind `/healthz`. Every apiserver is checked, not
/// only the first: one that kept running would serve its cache of the data
/// from before the restore.
pub(crate) struct StartControlPlane<'p> {
    pub(crate) id: &'p str,
    pub(crate) hosts: Vec<String>,
}

impl Phase for StartControlPlane<'_> {
    fn name(&self) -> &'static str {
        "start-control-plane"
    }
    fn title(&self) -> &'static str {
        "start the control planes that were running, one host at a time"
    }
    fn hosts(&self, ctx: &Ctx) -> usize {
        selected(ctx, &self.hosts).len()
    }
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            for t in selected(ctx, &self.hosts) {
                for_each(ctx, self.name(), vec![t], move |t| {
                    Box::pin(async move {
                        for svc in CONTROL_PLANE {
                            let unit = svc.unit();
                            let text = script::start(self.id, &unit, Step::StartedApiserver, true);
                            step(ctx, t, &format!("start {svc}"), &text, Input::None).await?;
                            control_plane_healthy(ctx, t, svc).await?;
                        }
                        Ok(())
                    })
                })
                .await?;
            }
            Ok(())
        })
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
