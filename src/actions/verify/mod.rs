//! `rampart verify`: connect, then one round trip per host (the facts script
//! `plan` runs, followed by [`probe`]), then the pure verdict ([`judge`]):
//!
//! - **cis**: every CIS check on what is *running* ([`live`]);
//! - **drift**: every managed file, directory and binary against the rendered
//!   bundle, and unit files rampart does not render;
//! - **health**: units, etcd quorum, apiserver `/readyz`, components'
//!   `/healthz`, node readiness, the backup job, certificate expiry.
//!
//! Read-only: no lock is taken and nothing on a host is written, so it can
//! run beside an `apply` and from a cron job. The host-side scan between two
//! runs is `render::scan`.

use std::collections::BTreeMap;

use crate::actions::apply::facts::{facts_request, Wanted};
use crate::actions::apply::{self, ApplyError};
use crate::actions::backup::{holders, Holder};
use crate::cis::Benchmark;
use crate::engine::{
    each, run_in_order, BoxPhase, Cancel, Connect, Connector, Env, Phase, PhaseError, Reach,
    Reaches, Reporter, StepError,
};
use crate::inventory::{Host, Inventory};
use crate::plan::facts::HostFacts;
use crate::remote::{script, BoxFuture, Input};
use crate::render::Bundle;
use judge::{HostInput, Limits};
use probe::{Probe, ProbeRequest};

pub mod judge;
pub mod junit;
pub mod live;
pub mod probe;
mod report;
pub use report::{Area, Checked, Finding, HostVerdict, Report, Severity};

/// How `verify` runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only these hosts (inventory names); None: all.
    pub hosts: Option<Vec<String>>,
    pub concurrency: usize,
    pub limits: Limits,
    pub scope: Scope,
}

/// What a run looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `verify`: CIS, drift, health, backups, certificates.
    Everything,
    /// `certs check`: the certificates installed (files, kubeconfigs, the
    /// kubelet's rotated one), their expiry and chain, and drift of the
    /// PKI files from the state dir.
    Certificates,
}

/// One host's question and, once asked, its answer.
struct Asked {
    wanted: Wanted,
    probe: ProbeRequest,
    holder: Option<Holder>,
    answer: Option<(HostFacts, Probe)>,
}

/// The state `verify`'s phases work on.
pub struct VerifyRun<'c> {
    reach: Reach<'c>,
    asked: BTreeMap<String, Asked>,
}

impl<'c> Reaches<'c> for VerifyRun<'c> {
    fn reach(&self) -> &Reach<'c> {
        &self.reach
    }
    fn reach_mut(&mut self) -> &mut Reach<'c> {
        &mut self.reach
    }
}

/// `probe`: the facts and the probe, in one script per host.
struct ProbeHosts;

impl Phase<VerifyRun<'_>> for ProbeHosts {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn title(&self) -> &'static str {
        "read each host: files, processes, health"
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &VerifyRun) -> usize {
        s.reach.fleet.members().len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut VerifyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let answers = {
                let asked = &s.asked;
                each(
                    env,
                    "probe",
                    s.reach.fleet.members().iter().collect(),
                    |m| {
                        Box::pin(async move {
                            env.reporter.step(&m.host.name, "probe");
                            let a = &asked[&m.host.name];
                            let text = format!(
                                "{}{}",
                                script::facts(&facts_request(&m.host, &a.wanted)),
                                probe::script(&a.probe)
                            );
                            let out = m.remote.run(&text, Input::None).await?;
                            if !out.success() {
                                return Err(StepError::script("probe", &out));
                            }
                            let text = out.stdout_text();
                            let facts_part: String = text
                                .lines()
                                .filter(|l| !l.starts_with("v\t"))
                                .map(|l| format!("{l}\n"))
                                .collect();
                            let facts = HostFacts::parse(&facts_part)
                                .map_err(|e| StepError::Facts(e.to_string()))?;
                            let probe =
                                probe::parse(&text).map_err(|e| StepError::Facts(e.to_string()))?;
                            Ok((m.host.name.clone(), facts, probe))
                        })
                    },
                )
                .await?
            };
            for (name, facts, probe) in answers {
                if let Some(a) = s.asked.get_mut(&name) {
                    a.answer = Some((facts, probe));
                }
            }
            Ok(())
        })
    }
}

/// Why `verify` could not judge the fleet.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("unknown host `{0}` in --hosts; the inventory names {1}")]
    UnknownHost(String, String),
    #[error(transparent)]
    Wanted(#[from] ApplyError),
    #[error(transparent)]
    Hosts(#[from] PhaseError),
}

/// Reads every selected host and judges it.
pub async fn run(
    inv: &Inventory,
    bundle: &Bundle,
    benchmark: &Benchmark,
    connector: &dyn Connector,
    o: &VerifyOptions,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Report, VerifyError> {
    let hosts = select(inv, o.hosts.as_deref())?;
    let mut wanted = apply::wanted(inv, bundle, &hosts)?;
    let holders = holders(inv);
    let asked = hosts
        .iter()
        .map(|h| {
            let rendered = bundle.hosts.get(&h.name).cloned().unwrap_or_default();
            let (holder, probe) = match o.scope {
                Scope::Everything => {
                    let holder = holders.iter().find(|x| x.host.name == h.name).cloned();
                    let probe = judge::request(inv, h, &rendered, benchmark, holder.as_ref());
                    (holder, probe)
                }
                Scope::Certificates => (None, judge::cert_request(&rendered)),
            };
            let asked = Asked {
                wanted: wanted
                    .remove(&h.name)
                    .expect("wanted covers every selected host"),
                probe,
                holder,
                answer: None,
            };
            (h.name.clone(), asked)
        })
        .collect();
    let mut run = VerifyRun {
        reach: Reach::new(hosts.into_iter().cloned().collect(), connector),
        asked,
    };
    let env = Env {
        inv,
        reporter,
        cancel,
        concurrency: o.concurrency,
    };
    let phases: Vec<BoxPhase<VerifyRun>> = vec![Box::new(Connect), Box::new(ProbeHosts)];
    let result = run_in_order(&env, &mut run, &phases, &[]).await;
    run.reach.fleet.release().await;
    result?;
    let empty = Default::default();
    let verdicts = run
        .reach
        .hosts
        .iter()
        .filter_map(|h| {
            let a = &run.asked[&h.name];
            let (facts, probe) = a.answer.as_ref()?;
            let input = HostInput {
                inv,
                host: h,
                rendered: bundle.hosts.get(&h.name).unwrap_or(&empty),
                desired: &a.wanted.desired,
                facts,
                probe,
                holder: a.holder.as_ref(),
            };
            Some(judge::host(&input, benchmark, &o.limits, o.scope))
        })
        .collect();
    Ok(Report {
        cluster: inv.cluster.name.clone(),
        benchmark: benchmark.benchmark.clone(),
        hosts: verdicts,
    })
}

fn select<'a>(inv: &'a Inventory, names: Option<&[String]>) -> Result<Vec<&'a Host>, VerifyError> {
    let Some(names) = names else {
        return Ok(inv.hosts.iter().collect());
    };
    if let Some(n) = names.iter().find(|n| inv.host(n).is_none()) {
        let all: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(VerifyError::UnknownHost(n.clone(), all.join(", ")));
    }
    Ok(inv
        .hosts
        .iter()
        .filter(|h| names.contains(&h.name))
        .collect())
}
