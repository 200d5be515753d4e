//! The phases of `rampart backup restore` and its rollback: each a [`Phase`]
//! over [`RestoreRun`], selecting its hosts from the run's roles (and, for a
//! resumed run, from what the members' journals record), and journaling on
//! the host what it finished there. The order they run in, and what undoes
//! each, is the runbook in `super::runbook`.

use serde::{Deserialize, Serialize};

use super::RestoreRun;
use crate::actions::gates::{control_plane_healthy, etcd_healthy, CONTROL_PLANE};
use crate::engine::{each, step, ConnectedHost, Env, Phase, PhaseError, StepError};
use crate::remote::script::{self as rscript, Staged};
use crate::remote::{BoxFuture, Input};
use crate::restore::script;
use crate::restore::{upload_path, Step};

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

/// Which hosts of the run a phase works on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hosts {
    /// Every etcd member.
    Members,
    /// Every host with a control plane (held stopped for the whole run).
    ControlPlanes,
    /// Members and control planes.
    All,
    /// The control planes whose apiserver ran before: started again.
    Apiservers,
    /// The control planes whose apiserver did not run: released, left stopped.
    IdleControlPlanes,
    /// The members whose journal does not record this step yet.
    Pending(Step),
}

impl Hosts {
    fn names(self, s: &RestoreRun) -> Vec<String> {
        let r = s.participants();
        let owned = |hs: &[&str]| hs.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        match self {
            Hosts::Members => owned(&r.members),
            Hosts::ControlPlanes => r.control_planes.to_vec(),
            Hosts::All => {
                let mut all = owned(&r.members);
                all.extend(
                    r.control_planes
                        .iter()
                        .filter(|h| !r.members.contains(&h.as_str()))
                        .cloned(),
                );
                all
            }
            Hosts::Apiservers => r.apiservers.to_vec(),
            Hosts::IdleControlPlanes => r
                .control_planes
                .iter()
                .filter(|h| !r.apiservers.contains(h))
                .cloned()
                .collect(),
            Hosts::Pending(step) => s.plan().map_or_else(Vec::new, |p| {
                p.members
                    .iter()
                    .filter(|m| !m.has(step))
                    .map(|m| m.name.clone())
                    .collect()
            }),
        }
    }

    fn select<'a>(self, s: &'a RestoreRun) -> Vec<&'a ConnectedHost> {
        s.reach.fleet.select(&self.names(s))
    }
}

/// A restore step that needs nothing but its script on each host.
pub(crate) type OnHosts<'r> = crate::engine::runbook::OnHosts<RestoreRun<'r>>;

fn no_line(_: &RestoreRun) -> Option<String> {
    None
}

/// The restore's first journal line, on every host it touches.
pub(crate) fn started<'r>() -> OnHosts<'r> {
    OnHosts {
        name: "journal",
        title: "write the restore journal",
        step: "journal",
        hosts: |s| Hosts::All.names(s),
        script: |s| script::note(&s.id, Step::Started),
        line: no_line,
    }
}

/// The backup job released on every member with the last journal line
/// (`done`, or for a rollback `rolled-back`): it runs again when its timer
/// next fires.
pub(crate) fn done<'r>(last: Step) -> OnHosts<'r> {
    OnHosts {
        name: "done",
        title: "release the backup job; write the restore journal",
        step: "release",
        hosts: |s| Hosts::Members.names(s),
        script: if last == Step::RolledBack {
            |s| script::release(&s.id, &MEMBER_UNITS[..1], Step::RolledBack)
        } else {
            |s| script::release(&s.id, &MEMBER_UNITS[..1], Step::Done)
        },
        line: no_line,
    }
}

/// The control planes that were not running: released, left stopped.
pub(crate) fn release_idle<'r>() -> OnHosts<'r> {
    OnHosts {
        name: "release-control-plane",
        title: "release the control planes that were not running",
        step: "release",
        hosts: |s| Hosts::IdleControlPlanes.names(s),
        script: |s| script::release(&s.id, &CONTROL_PLANE_UNITS, Step::StartedApiserver),
        line: |_| Some("released (was not running; `rampart apply` starts it)".into()),
    }
}

/// `/var/lib/etcd` renamed to its pre-restore name (never deleted).
pub(crate) fn move_aside<'r>() -> OnHosts<'r> {
    OnHosts {
        name: "move-aside",
        title: "move the data dirs aside",
        step: "move aside",
        hosts: |s| Hosts::Pending(Step::MovedAside).names(s),
        script: |s| script::move_aside(&s.id),
        line: |s| {
            Some(format!(
                "data dir kept as {}",
                crate::restore::pre_restore_dir(&s.id)
            ))
        },
    }
}

/// The pre-restore data dir put back; the restored one kept aside.
pub(crate) fn put_back<'r>() -> OnHosts<'r> {
    OnHosts {
        name: "roll-back",
        title: "put the pre-restore data dirs back",
        step: "roll back",
        hosts: |s| Hosts::Members.names(s),
        script: |s| script::roll_back(&s.id, s.stamp()),
        line: |s| {
            Some(format!(
                "{} is back; the restored data is kept as {}",
                crate::restore::pre_restore_dir(&s.id),
                crate::restore::rolled_back_dir(s.stamp())
            ))
        },
    }
}

/// Holds and stops `units` on the hosts (see [`script::hold_and_stop`]).
/// With etcd among them: followers first, the leader last (see
/// `script::is_leader`).
pub(crate) struct Stop {
    pub(crate) name: &'static str,
    pub(crate) title: &'static str,
    pub(crate) units: &'static [&'static str],
    pub(crate) step: Step,
    pub(crate) hosts: Hosts,
}

/// Every control plane held and stopped: nothing writes while etcd goes,
/// nothing can come back.
pub(crate) fn stop_control_planes() -> Stop {
    Stop {
        name: "stop-control-plane",
        title: "hold and stop the control planes",
        units: &CONTROL_PLANE_UNITS,
        step: Step::StoppedApiserver,
        hosts: Hosts::ControlPlanes,
    }
}

/// Every member's backup job and etcd held and stopped.
pub(crate) fn stop_etcd() -> Stop {
    Stop {
        name: "stop-etcd",
        title: "hold and stop the backup job and etcd on every member",
        units: &MEMBER_UNITS,
        step: Step::StoppedEtcd,
        hosts: Hosts::Members,
    }
}

impl Phase<RestoreRun<'_>> for Stop {
    fn name(&self) -> &'static str {
        self.name
    }
    fn title(&self) -> &'static str {
        self.title
    }
    fn hosts(&self, s: &RestoreRun) -> usize {
        self.hosts.select(s).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RestoreRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let s = &*s;
            let id = s.id.as_str();
            let leaders: Vec<Option<String>> =
                each(env, self.name, self.hosts.select(s), move |m| {
                    Box::pin(async move {
                        if self.units.contains(&ETCD_UNIT) {
                            let text = script::is_leader(&env.inv.binaries.etcd_dir, loopback(m));
                            let out =
                                step(env, m, "find the etcd leader", &text, Input::None).await?;
                            if out.stdout_text().trim() == "leader" {
                                return Ok(Some(m.host.name.clone()));
                            }
                        }
                        self.stop(env, id, m).await?;
                        Ok(None)
                    })
                })
                .await?;
            let leaders: Vec<String> = leaders.into_iter().flatten().collect();
            each(env, self.name, s.reach.fleet.select(&leaders), move |m| {
                Box::pin(self.stop(env, id, m))
            })
            .await
            .map(drop)
        })
    }
}

impl Stop {
    async fn stop(&self, env: &Env<'_>, id: &str, m: &ConnectedHost) -> Result<(), StepError> {
        let text = script::hold_and_stop(id, self.units, self.step);
        step(env, m, "hold and stop", &text, Input::None).await?;
        env.reporter.line(
            &m.host.name,
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
pub(crate) struct Fence;

impl Fence {
    fn units(s: &RestoreRun, host: &str) -> Vec<&'static str> {
        let mut units = Vec::new();
        let r = s.participants();
        if r.control_planes.iter().any(|h| h == host) {
            units.extend(CONTROL_PLANE_UNITS);
        }
        if r.members.contains(&host) {
            units.extend(MEMBER_UNITS);
        }
        units
    }
}

impl Phase<RestoreRun<'_>> for Fence {
    fn name(&self) -> &'static str {
        "fence"
    }
    fn title(&self) -> &'static str {
        "check that nothing held has run since it stopped"
    }
    fn hosts(&self, s: &RestoreRun) -> usize {
        Hosts::All.select(s).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RestoreRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let s = &*s;
            each(env, self.name(), Hosts::All.select(s), move |m| {
                Box::pin(async move {
                    let units = Fence::units(s, &m.host.name);
                    let text = script::fence(&s.id, &units);
                    step(env, m, "fence", &text, Input::None).await?;
                    env.reporter.line(
                        &m.host.name,
                        &format!("{} held and not run since", units.len()),
                    );
                    Ok(())
                })
            })
            .await
            .map(drop)
        })
    }
}

/// The local member's client URL.
fn loopback(m: &ConnectedHost) -> &'static str {
    crate::remote::script::etcd_loopback(m.host.address)
}

/// Upload (0600, checked against the plaintext's sha256) and restore, on
/// every member in parallel; then the restored database is read offline and
/// must hold the snapshot's revision and keys before anything starts.
pub(crate) struct RestoreMembers;

impl Phase<RestoreRun<'_>> for RestoreMembers {
    fn name(&self) -> &'static str {
        "restore"
    }
    fn title(&self) -> &'static str {
        "upload and restore the snapshot on every member"
    }
    fn hosts(&self, s: &RestoreRun) -> usize {
        Hosts::Pending(Step::Restored).select(s).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RestoreRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let s = &*s;
            let hosts = Hosts::Pending(Step::Restored).select(s);
            each(env, self.name(), hosts, move |m| {
                Box::pin(async move {
                    let p = s.plan().expect("a restore runs with its plan");
                    let Some(snap) = s.snapshot.as_ref() else {
                        return Err(StepError::Check(
                            "no snapshot to upload; resume with FILE and --identity".into(),
                        ));
                    };
                    let mp = p
                        .members
                        .iter()
                        .find(|mp| mp.name == m.host.name)
                        .expect("hosts are the plan's members");
                    let staged = Staged {
                        path: upload_path(&p.id),
                        mode: 0o600,
                        owner: "root".into(),
                        group: "root".into(),
                        size: snap.size,
                    };
                    step(
                        env,
                        m,
                        "upload snapshot",
                        &rscript::stage(&[staged]),
                        Input::File(snap.path.clone()),
                    )
                    .await?;
                    let text = script::restore(
                        &p.id,
                        &env.inv.binaries.etcd_dir,
                        mp,
                        &p.initial_cluster,
                        &p.token,
                        &snap.sha256,
                    );
                    let out = step(
                        env,
                        m,
                        &format!("{} snapshot restore", mp.tool.binary()),
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
                    env.reporter.line(
                        &m.host.name,
                        &format!(
                            "restored revision {revision}, {keys} keys ({})",
                            mp.tool.binary()
                        ),
                    );
                    Ok(())
                })
            })
            .await
            .map(drop)
        })
    }
}

/// All members start together (`--no-block`: each waits for a quorum), then
/// each waits for the health of the whole cluster.
pub(crate) struct StartMembers;

impl Phase<RestoreRun<'_>> for StartMembers {
    fn name(&self) -> &'static str {
        "start-etcd"
    }
    fn title(&self) -> &'static str {
        "start etcd on every member"
    }
    fn hosts(&self, s: &RestoreRun) -> usize {
        Hosts::Members.select(s).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RestoreRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let s = &*s;
            let all = Hosts::Members.select(s);
            let text = script::start(&s.id, ETCD_UNIT, Step::StartedEtcd, false);
            let text = &text;
            each(env, self.name(), all.clone(), move |m| {
                Box::pin(async move {
                    step(env, m, "start etcd", text, Input::None).await?;
                    Ok(())
                })
            })
            .await?;
            // Every member polls at once: the gate needs them all.
            each(env, self.name(), all, move |m| {
                Box::pin(etcd_healthy(env, m))
            })
            .await
            .map(drop)
        })
    }
}

/// Revision and keys, read through the first member once the cluster is
/// healthy; the result is the run's [`RestoreRun::checked`].
pub(crate) struct CheckRestored;

impl CheckRestored {
    fn first<'a>(s: &'a RestoreRun) -> Option<&'a ConnectedHost> {
        let name = &s.plan()?.members.first()?.name;
        s.reach
            .fleet
            .members()
            .iter()
            .find(|m| &m.host.name == name)
    }
}

impl Phase<RestoreRun<'_>> for CheckRestored {
    fn name(&self) -> &'static str {
        "check"
    }
    fn title(&self) -> &'static str {
        "check revision and keys against the snapshot"
    }
    fn hosts(&self, s: &RestoreRun) -> usize {
        usize::from(CheckRestored::first(s).is_some())
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RestoreRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let checked = {
                let s = &*s;
                let plan = s.plan().expect("a check runs with its plan");
                each(env, self.name(), CheckRestored::first(s).into_iter().collect(), move |m| {
                    Box::pin(async move {
                        let text = script::check(&env.inv.binaries.etcd_dir, loopback(m));
                        let out = step(env, m, "check", &text, Input::None).await?;
                        let checked = parse_check(&out.stdout_text(), &m.host.name)?;
                        let snap = &plan.snapshot;
                        if checked.revision < snap.revision {
                            return Err(StepError::Check(format!(
                            "the cluster is at revision {}, older than the snapshot's {}; roll back with `rampart backup restore --rollback {}`",
                            checked.revision, snap.revision, plan.id
                        )));
                        }
                        if checked.keys > snap.total_keys {
                            return Err(StepError::Check(format!(
                            "the cluster holds {} keys, more than the snapshot's {}; roll back with `rampart backup restore --rollback {}`",
                            checked.keys, snap.total_keys, plan.id
                        )));
                        }
                        env.reporter.line(
                            &m.host.name,
                            &format!(
                                "revision {} (snapshot {}), {} live keys",
                                checked.revision, snap.revision, checked.keys
                            ),
                        );
                        Ok(checked)
                    })
                })
                .await?
            };
            s.checked = checked.into_iter().next();
            Ok(())
        })
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
pub(crate) struct RestartControlPlanes;

impl Phase<RestoreRun<'_>> for RestartControlPlanes {
    fn name(&self) -> &'static str {
        "start-control-plane"
    }
    fn title(&self) -> &'static str {
        "start the control planes that were running, one host at a time"
    }
    fn hosts(&self, s: &RestoreRun) -> usize {
        Hosts::Apiservers.select(s).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RestoreRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let s = &*s;
            let id = s.id.as_str();
            for m in Hosts::Apiservers.select(s) {
                each(env, self.name(), vec![m], move |m| {
                    Box::pin(async move {
                        for svc in CONTROL_PLANE {
                            let unit = svc.unit();
                            let text = script::start(id, &unit, Step::StartedApiserver, true);
                            step(env, m, &format!("start {svc}"), &text, Input::None).await?;
                            control_plane_healthy(env, m, svc).await?;
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
