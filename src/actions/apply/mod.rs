//! `rampart apply` (and `plan`, and `apply --dry-run`): connect, lock, read
//! each host's facts, plan, check, then run the install phases in order.
//!
//! [`prepare`] is the single computation behind all three commands: it
//! returns the plan as data. `plan` and `--dry-run` print it; `apply`
//! hands the very same value to [`execute`]. They cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub mod facts;
pub mod install;
pub mod kernel;
pub mod services;

use crate::engine::phase::{catalogue, check_skips, SkipError};
use crate::engine::{
    run_in_order, BoxPhase, Cancel, Connect, Connector, Env, Lock, OnHost, PhaseError, PhaseInfo,
    Reach, Reachable, Reaches, Reporter,
};
use crate::inventory::{Host, Inventory};
use crate::plan::desired::{self, ArtifactError, Desired};
use crate::plan::facts::HostFacts;
use crate::plan::preflight::Finding;
use crate::plan::{HostPlan, Skips, LOCK};
use crate::remote::{script, Input, Remote, RemoteError};
use crate::render::{Bundle, Service};
use facts::{Facts, Preflight, Wanted};
use install::{InstallFiles, Systemd, UploadBinaries};
use kernel::KernelSettings;
use services::{ApplyManifests, StartBackups, StartControlPlane, StartEtcd, StartNodes, StartScan};

/// Every phase of `apply`, in the order they run: the one definition behind
/// the run, `--skip-phases`, its help text and the table in docs/apply.md.
pub fn phases<'c>() -> Vec<BoxPhase<'static, ApplyRun<'c>>> {
    vec![
        Box::new(Connect),
        Box::new(Lock),
        Box::new(Facts),
        Box::new(Preflight),
        Box::new(UploadBinaries),
        Box::new(InstallFiles),
        Box::new(Systemd),
        Box::new(KernelSettings),
        Box::new(StartEtcd),
        Box::new(StartBackups),
        Box::new(StartControlPlane),
        Box::new(ApplyManifests),
        Box::new(StartNodes),
        Box::new(StartScan),
    ]
}

/// `apply`'s phases as `--help` and the docs list them.
pub fn phase_catalogue() -> Vec<PhaseInfo> {
    catalogue(&phases())
}

/// The phases that read and plan (`plan`, `apply --dry-run`, and the first
/// part of `apply`): everything up to and including `facts`.
const PREPARE: usize = 3;

/// How `plan` and `apply` run.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Only these hosts (inventory names); None: all.
    pub hosts: Option<Vec<String>>,
    /// Phase names from [`phases`].
    pub skip: Vec<String>,
    pub concurrency: usize,
    /// Take the host locks (apply), or only read (plan, dry-run).
    pub lock: bool,
    /// Written into the lock file: who holds it.
    pub owner: String,
    /// Admin clock (seconds since the epoch) for the clock-skew check.
    pub admin_time: i64,
    /// Names this run's backup dir on the hosts.
    pub stamp: String,
    /// The super-admin kubeconfig, for the one binding admin.conf cannot
    /// create itself (see [`ApplyManifests`]); None: never sent.
    pub bootstrap: Option<crate::secret::Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Skip(#[from] SkipError),
    #[error("unknown host `{0}` in --hosts; the inventory names {1}")]
    UnknownHost(String, String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Hosts(#[from] PhaseError),
}

impl ApplyError {
    /// The phase that failed on hosts, if the error came from one.
    pub fn phase(&self) -> Option<&'static str> {
        match self {
            ApplyError::Hosts(e) => Some(e.phase),
            _ => None,
        }
    }
}

/// One host, planned.
#[derive(Debug, Serialize)]
pub struct HostReport {
    pub host: String,
    pub plan: HostPlan,
    pub findings: Vec<Finding>,
    /// Bytes sent to the host so far (scripts and file contents).
    pub bytes_sent: u64,
}

/// One host in this run, planned: how to reach it, what it must hold, what
/// it had, what changes.
pub struct PlannedHost {
    pub host: Host,
    pub remote: Arc<dyn Remote>,
    pub desired: Desired,
    /// What the host reported before planning.
    pub facts: HostFacts,
    pub plan: HostPlan,
}

impl OnHost for PlannedHost {
    fn host_name(&self) -> &str {
        &self.host.name
    }
}

impl Reachable for PlannedHost {
    fn host(&self) -> &Host {
        &self.host
    }
    fn remote(&self) -> &dyn Remote {
        &*self.remote
    }
}

/// The state `apply`'s phases work on: filled by `connect`, `lock` and
/// `facts`, read by the rest. After [`prepare`] it is the plan as data:
/// `plan` and `--dry-run` print it, `apply` hands the same value to
/// [`execute`].
pub struct ApplyRun<'c> {
    pub reach: Reach<'c>,
    /// Every selected host, planned (in inventory order).
    pub targets: Vec<PlannedHost>,
    pub findings: BTreeMap<String, Vec<Finding>>,
    pub skip: Vec<String>,
    /// What `--skip-phases` changes in the plan (services not started, …).
    pub(crate) skips: Skips,
    /// `YYYYmmddTHHMMSSZ` of this run: names the backup dir on every host.
    pub stamp: String,
    pub(crate) admin_time: i64,
    pub(crate) bootstrap: Option<crate::secret::Secret>,
    /// What each host must hold, until `facts` turns it into a target.
    wanted: BTreeMap<String, Wanted>,
}

impl<'c> Reaches<'c> for ApplyRun<'c> {
    fn reach(&self) -> &Reach<'c> {
        &self.reach
    }
    fn reach_mut(&mut self) -> &mut Reach<'c> {
        &mut self.reach
    }
}

impl ApplyRun<'_> {
    pub fn reports(&self) -> Vec<HostReport> {
        self.targets
            .iter()
            .map(|t| HostReport {
                host: t.host.name.clone(),
                plan: t.plan.clone(),
                findings: self.findings.get(&t.host.name).cloned().unwrap_or_default(),
                bytes_sent: t.remote.bytes_sent(),
            })
            .collect()
    }
    pub fn is_noop(&self) -> bool {
        self.targets.iter().all(|t| t.plan.is_noop())
    }
    /// Ends the lock scripts on every host (also done when dropped, as the
    /// connections close).
    pub async fn release(&mut self) {
        self.reach.fleet.release().await;
    }
}

/// What apply's install and start phases read while they run: the engine's
/// environment (it derefs to it) and the run's state, side by side.
pub struct Ctx<'a> {
    pub env: &'a Env<'a>,
    pub targets: &'a [PlannedHost],
    pub not_starting: &'a [Service],
    pub stamp: &'a str,
    pub bootstrap: Option<&'a crate::secret::Secret>,
}

impl<'a> Ctx<'a> {
    fn new(env: &'a Env<'a>, run: &'a ApplyRun<'_>) -> Ctx<'a> {
        Ctx {
            env,
            targets: &run.targets,
            not_starting: &run.skips.not_starting,
            stamp: &run.stamp,
            bootstrap: run.bootstrap.as_ref(),
        }
    }
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = Env<'a>;
    fn deref(&self) -> &Env<'a> {
        self.env
    }
}

/// [`crate::engine::each`] over apply's targets, for phases whose work
/// returns nothing.
async fn for_each<'a, F>(
    ctx: &'a Ctx<'a>,
    phase: &'static str,
    targets: Vec<&'a PlannedHost>,
    work: F,
) -> Result<(), PhaseError>
where
    F: Fn(&'a PlannedHost) -> crate::remote::BoxFuture<'a, Result<(), crate::engine::StepError>>,
{
    crate::engine::each(ctx.env, phase, targets, work)
        .await
        .map(drop)
}

/// Services whose start phase is skipped.
pub fn not_starting(skip: &[String]) -> Vec<Service> {
    let mut out = Vec::new();
    for s in skip {
        match s.as_str() {
            "start-etcd" => out.push(Service::Etcd),
            "start-backups" => out.push(Service::Backups),
            "start-scan" => out.push(Service::Scan),
            "start-control-plane" => out.extend([
                Service::KubeApiserver,
                Service::KubeControllerManager,
                Service::KubeScheduler,
            ]),
            "start-nodes" => {
                out.extend([Service::Containerd, Service::Kubelet, Service::KubeProxy])
            }
            _ => {}
        }
    }
    out
}

fn check_options<'a>(inv: &'a Inventory, o: &ApplyOptions) -> Result<Vec<&'a Host>, ApplyError> {
    check_skips(&phases(), &o.skip)?;
    match &o.hosts {
        None => Ok(inv.hosts.iter().collect()),
        Some(names) => {
            for n in names {
                if inv.host(n).is_none() {
                    let all: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
                    return Err(ApplyError::UnknownHost(n.clone(), all.join(", ")));
                }
            }
            Ok(inv
                .hosts
                .iter()
                .filter(|h| names.contains(&h.name))
                .collect())
        }
    }
}

/// What each selected host must hold: the bundle's files and the binaries
/// it needs, with the artifacts hashed once (cached by digest). Pure but for
/// reading the artifacts.
pub(crate) fn wanted(
    inv: &Inventory,
    bundle: &Bundle,
    hosts: &[&Host],
) -> Result<BTreeMap<String, Wanted>, ApplyError> {
    let all_services: Vec<Service> = bundle
        .hosts
        .values()
        .flat_map(|h| h.services.iter().copied())
        .collect();
    let receives = bundle.hosts.values().any(|h| h.receives_backups);
    let names: Vec<&str> = desired::needed_binaries(inv, &all_services, receives)
        .iter()
        .filter(|n| n.source == desired::Source::Artifact)
        .map(|n| n.name)
        .collect();
    let mut cache = crate::digest::DigestCache::open_default();
    let mut artifacts = desired::artifacts(inv, &names, &mut cache)?;
    if names.contains(&Service::Backups.binary()) {
        artifacts.insert(
            Service::Backups.binary().to_string(),
            desired::self_artifact(&mut cache)?,
        );
    }
    cache.save();
    Ok(hosts
        .iter()
        .map(|host| {
            let hb = bundle.hosts.get(&host.name).cloned().unwrap_or_default();
            let needed = desired::needed_binaries(inv, &hb.services, hb.receives_backups);
            let uploads = desired::host_binaries(&needed, &artifacts);
            let desired = Desired::from_bundle(&hb, uploads);
            (host.name.clone(), Wanted { desired, needed })
        })
        .collect())
}

/// Checks the options, then connects, locks (when `o.lock`), reads facts
/// and plans every selected host: the first phases of [`phases`].
pub async fn prepare<'c>(
    inv: &Inventory,
    bundle: &Bundle,
    connector: &'c dyn Connector,
    o: &ApplyOptions,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<ApplyRun<'c>, ApplyError> {
    let hosts = check_options(inv, o)?;
    let skips = Skips {
        not_starting: not_starting(&o.skip),
        manifests: o.skip.iter().any(|s| s == "apply-manifests"),
        kernel: o.skip.iter().any(|s| s == "kernel-settings"),
    };
    let wanted = wanted(inv, bundle, &hosts)?;
    let mut reach = Reach::new(hosts.into_iter().cloned().collect(), connector);
    if o.lock {
        reach.lock = Some((LOCK, o.owner.clone()));
    }
    let mut run = ApplyRun {
        reach,
        targets: Vec::new(),
        findings: BTreeMap::new(),
        skip: o.skip.clone(),
        skips,
        stamp: o.stamp.clone(),
        admin_time: o.admin_time,
        bootstrap: o.bootstrap.clone(),
        wanted,
    };
    let env = env(inv, o, reporter, cancel);
    let all = phases();
    if let Err(e) = run_in_order(&env, &mut run, &all[..PREPARE], &[]).await {
        run.release().await;
        return Err(e.into());
    }
    Ok(run)
}

fn env<'a>(
    inv: &'a Inventory,
    o: &ApplyOptions,
    reporter: &'a dyn Reporter,
    cancel: &'a Cancel,
) -> Env<'a> {
    Env {
        inv,
        reporter,
        cancel,
        concurrency: o.concurrency,
    }
}

/// Runs the rest of the phases over a prepared run, preflight first;
/// stops after the first phase that failed on any host (its other hosts
/// finish their step).
pub async fn execute(
    inv: &Inventory,
    run: &mut ApplyRun<'_>,
    o: &ApplyOptions,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<(), ApplyError> {
    let env = env(inv, o, reporter, cancel);
    let all = phases();
    let skip = run.skip.clone();
    run_in_order(&env, run, &all[PREPARE..], &skip).await?;
    Ok(())
}

/// `rampart hosts unlock`: ends the holder of a host's lock.
pub async fn unlock(remote: &dyn Remote) -> Result<String, RemoteError> {
    let out = remote.run(&script::unlock(LOCK), Input::None).await?;
    Ok(out.stdout_text().trim().to_string())
}
