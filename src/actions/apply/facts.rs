//! `facts` and `preflight`: one round trip per host for what it has (every
//! managed file's sha256, mode and owner, services, binaries, users, kernel
//! settings, clock, disk), the plan computed from it, the diffs of what
//! changes, and the checks that must pass before anything changes.

use std::collections::BTreeMap;

use super::{ApplyRun, PlannedHost};
use crate::engine::{each, Env, Phase, PhaseError, Reachable, StepError};
use crate::inventory::Host;
use crate::plan::desired::{Desired, Needed};
use crate::plan::facts::HostFacts;
use crate::plan::preflight::{self, Finding, Level};
use crate::plan::{plan_host, HostPlan, ADDONS_STAMP, RECORD};
use crate::remote::script::{self, FactsRequest};
use crate::remote::{BoxFuture, Input, Remote};

/// What one host must end up with, computed before anything connects.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub desired: Desired,
    pub needed: Vec<Needed>,
}

/// `facts`: reads every host and plans it.
pub struct Facts;

impl Phase<ApplyRun<'_>> for Facts {
    fn name(&self) -> &'static str {
        "facts"
    }
    fn title(&self) -> &'static str {
        "read host facts and plan"
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        s.reach.fleet.members().len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let planned = {
                let run = &*s;
                each(
                    env,
                    "facts",
                    run.reach.fleet.members().iter().collect(),
                    |m| {
                        Box::pin(async move {
                            let w = &run.wanted[&m.host.name];
                            let (facts, plan, found) =
                                plan_one(env, run, &m.host, m.remote(), w).await?;
                            Ok((m.host.clone(), m.remote.clone(), facts, plan, found))
                        })
                    },
                )
                .await?
            };
            for (host, remote, facts, plan, found) in planned {
                let desired = s
                    .wanted
                    .remove(&host.name)
                    .map(|w| w.desired)
                    .unwrap_or_default();
                s.findings.insert(host.name.clone(), found);
                s.targets.push(PlannedHost {
                    host,
                    remote,
                    desired,
                    facts,
                    plan,
                });
            }
            Ok(())
        })
    }
}

/// `preflight`: refuses to go on when any host has a preflight error;
/// nothing has changed yet. Skipped, its errors were already made warnings.
pub struct Preflight;

impl Phase<ApplyRun<'_>> for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }
    fn title(&self) -> &'static str {
        "check every host before changing any"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        s.targets.len()
    }
    fn run<'a>(
        &'a self,
        _env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move { check_preflight(&s.findings) })
    }
}

/// Every host with a preflight error, all of its errors listed.
pub fn check_preflight(findings: &BTreeMap<String, Vec<Finding>>) -> Result<(), PhaseError> {
    let failures: Vec<(String, StepError)> = findings
        .iter()
        .filter_map(|(h, fs)| {
            let errors: Vec<String> = fs
                .iter()
                .filter(|f| f.level == Level::Error)
                .map(|f| f.message.clone())
                .collect();
            (!errors.is_empty()).then(|| (h.clone(), StepError::Preflight(errors)))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(PhaseError {
            phase: "preflight",
            failures,
        })
    }
}

/// What to ask a host before planning it: every managed file, binary,
/// directory, unit, user and kernel setting. `verify` asks the same.
pub fn facts_request(host: &Host, w: &Wanted) -> FactsRequest {
    let (desired, needed) = (&w.desired, &w.needed);
    let mut req = FactsRequest {
        files: desired.files.iter().map(|w| w.path.clone()).collect(),
        cached: desired.binaries.iter().map(|w| w.path.clone()).collect(),
        dirs: desired.dirs.iter().map(|d| d.path.clone()).collect(),
        services: desired.services.iter().map(|s| s.unit()).collect(),
        binaries: needed
            .iter()
            .map(|n| {
                (
                    n.name.to_string(),
                    n.path.clone(),
                    n.version_args.to_string(),
                )
            })
            .collect(),
        users: host
            .roles
            .etcd
            .then(|| "etcd".to_string())
            .into_iter()
            .chain(desired.users.iter().map(|u| u.name.clone()))
            .collect(),
        record: RECORD.into(),
        disk: "/var/lib".into(),
        sysctls: crate::plan::kernel::wanted(desired)
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
    };
    req.files.push(ADDONS_STAMP.into());
    req
}

/// Facts → plan → diffs → preflight findings, for one host.
async fn plan_one(
    env: &Env<'_>,
    run: &ApplyRun<'_>,
    host: &Host,
    remote: &dyn Remote,
    w: &Wanted,
) -> Result<(HostFacts, HostPlan, Vec<Finding>), StepError> {
    let (desired, needed) = (&w.desired, &w.needed);
    env.reporter.step(&host.name, "facts");
    let req = facts_request(host, w);
    let mut facts = read_facts(remote, &req).await?;
    // Files rampart installed before and no longer manages: a second,
    // small round trip only when the record names such paths.
    if let Some(record) = &facts.record {
        let retired: Vec<String> = record
            .files
            .iter()
            .filter(|p| !req.files.contains(p) && !req.cached.contains(p))
            .cloned()
            .collect();
        if !retired.is_empty() {
            let more = read_facts(
                remote,
                &FactsRequest {
                    files: retired,
                    record: RECORD.into(),
                    disk: "/var/lib".into(),
                    ..Default::default()
                },
            )
            .await?;
            facts.files.extend(more.files);
        }
    }
    let mut plan = plan_host(&host.name, desired, &facts, &run.skips);
    let diffable = plan.diffable();
    if !diffable.is_empty() {
        env.reporter.step(&host.name, "diff");
        let out = remote.run(&script::fetch(&diffable), Input::None).await?;
        plan.attach_diffs(&parse_fetched(&out.stdout_text()), desired);
    }
    let uploading: Vec<&str> = plan
        .binaries
        .iter()
        .filter_map(|c| c.path.rsplit('/').next())
        .collect();
    let mut found = preflight::check(
        &facts,
        &preflight::Expect {
            services: &desired.services,
            binaries: needed,
            uploading: &uploading,
            not_starting: &run.skips.not_starting,
            kube_minor: (env.inv.cluster.version.major, env.inv.cluster.version.minor),
            admin_time: run.admin_time,
            sysctls: &plan.sysctls_unsettable,
        },
    );
    if run.skip.iter().any(|s| s == "preflight") {
        for f in &mut found {
            f.level = Level::Warning;
        }
    }
    Ok((facts, plan, found))
}

async fn read_facts(remote: &dyn Remote, req: &FactsRequest) -> Result<HostFacts, StepError> {
    let out = remote.run(&script::facts(req), Input::None).await?;
    if !out.success() {
        return Err(StepError::script("facts", &out));
    }
    HostFacts::parse(&out.stdout_text()).map_err(|e| StepError::Facts(e.to_string()))
}

fn parse_fetched(text: &str) -> BTreeMap<String, Vec<u8>> {
    use base64::Engine;
    text.lines()
        .filter_map(|l| {
            let mut cols = l.splitn(3, '\t');
            match (cols.next(), cols.next(), cols.next()) {
                (Some("file"), Some(path), Some(b64)) => Some((
                    path.to_string(),
                    base64::engine::general_purpose::STANDARD.decode(b64).ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}
