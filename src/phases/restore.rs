//! The phases of `rampart backup restore` and its rollback: each a [`Phase`]
//! over the members (or control planes) the plan names, journaling on the
//! host what it finished so a cut-short run can be resumed or rolled back.
//! The order they run in, and why, is in `crate::actions::restore`.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::backup::Decrypted;
use crate::phases::services::{apiserver_ready_cmd, etcd_healthy, poll};
use crate::phases::{for_each, step, Ctx, Phase, PhaseError, StepError, Target};
use crate::remote::script::{self as rscript, Staged};
use crate::remote::{BoxFuture, Input};
use crate::restore::script;
use crate::restore::{upload_path, RestorePlan, Step};

const APISERVER_HEALTH_SECS: u32 = 180;

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

pub(crate) struct Stop<'p> {
    pub(crate) name: &'static str,
    pub(crate) title: &'static str,
    pub(crate) id: &'p str,
    pub(crate) unit: &'static str,
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
            // etcd: followers first, the leader last (see script::is_leader).
            let leaders = Mutex::new(Vec::new());
            let leaders_ref = &leaders;
            for_each(ctx, self.name, selected(ctx, &self.hosts), move |t| {
                Box::pin(async move {
                    if self.unit == "etcd" {
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
        let text = script::stop(self.id, self.unit, self.step);
        step(ctx, t, &format!("stop {}", self.unit), &text, Input::None).await?;
        ctx.reporter
            .line(&t.host.name, &format!("{} stopped", self.unit));
        Ok(())
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

/// The apiservers that ran before, one at a time, each behind `/readyz`.
pub(crate) struct StartApiservers<'p> {
    pub(crate) id: &'p str,
    pub(crate) hosts: Vec<String>,
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
