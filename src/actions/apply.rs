//! `rampart apply` (and `plan`, and `apply --dry-run`): connect, lock, read
//! each host's facts, plan, check, then run the install phases in order.
//!
//! [`prepare`] is the single computation behind all three commands: it
//! returns the plan as data. `plan` and `--dry-run` print it; `apply`
//! hands the very same value to [`execute`]. They cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::inventory::{Host, Inventory};
use crate::phases::install::{InstallFiles, Systemd, UploadBinaries};
use crate::phases::kernel::KernelSettings;
use crate::phases::services::{
    ApplyManifests, StartBackups, StartControlPlane, StartEtcd, StartNodes,
};
use crate::phases::{run_in_order, Cancel, Ctx, Phase, PhaseError, Reporter, StepError, Target};
use crate::plan::desired::{self, ArtifactError, Desired};
use crate::plan::facts::HostFacts;
use crate::plan::preflight::{self, Finding, Level};
use crate::plan::{plan_host, HostPlan, Skips, ADDONS_STAMP, LOCK, RECORD};
use crate::remote::script::{self, FactsRequest};
use crate::remote::{BoxFuture, Held, Input, Remote, RemoteError};
use crate::render::{Bundle, Service};

/// Phases `--skip-phases` accepts, in the order they run.
pub const PHASES: [&str; 11] = [
    "connect",
    "preflight",
    "upload-binaries",
    "install-files",
    "systemd",
    "kernel-settings",
    "start-etcd",
    "start-backups",
    "start-control-plane",
    "apply-manifests",
    "start-nodes",
];

/// The install phases after planning, in order.
fn install_phases(o: &Options) -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(UploadBinaries),
        Box::new(InstallFiles),
        Box::new(Systemd),
        Box::new(KernelSettings),
        Box::new(StartEtcd),
        Box::new(StartBackups),
        Box::new(StartControlPlane),
        Box::new(ApplyManifests {
            bootstrap: o.bootstrap.clone(),
        }),
        Box::new(StartNodes),
    ]
}

/// Opens a connection to a host (SSH in the CLI, local processes in tests).
pub trait Connector: Send + Sync {
    fn connect<'a>(
        &'a self,
        host: &'a Host,
    ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>>;
}

/// A host could not be reached or trusted (the transport's error, kept whole).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ConnectError {
    pub error: Box<dyn std::error::Error + Send + Sync>,
    /// The host's key is unknown or not the recorded one: nothing was sent.
    pub untrusted_key: bool,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Only these hosts (inventory names); None: all.
    pub hosts: Option<Vec<String>>,
    /// Phase names from [`PHASES`].
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
    #[error("unknown phase `{0}` in --skip-phases; phases are: {phases}", phases = PHASES.join(", "))]
    UnknownPhase(String),
    #[error("the phase `connect` cannot be skipped: every other phase needs the hosts")]
    CannotSkipConnect,
    #[error("unknown host `{0}` in --hosts; the inventory names {1}")]
    UnknownHost(String, String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Hosts(#[from] PhaseError),
    #[error("preflight failed on {} host(s); nothing was changed:{}", .0.len(), list(.0))]
    Preflight(Vec<(String, String)>),
}

impl ApplyError {
    /// The phase that failed on hosts, if the error came from one.
    pub fn phase(&self) -> Option<&'static str> {
        match self {
            ApplyError::Hosts(e) => Some(e.phase),
            ApplyError::Preflight(_) => Some("preflight"),
            _ => None,
        }
    }
}

fn list(items: &[(String, String)]) -> String {
    items
        .iter()
        .map(|(h, m)| format!("\n  - {h}: {m}"))
        .collect()
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

/// The plan for every selected host, plus what keeps the hosts locked.
pub struct Prepared {
    pub targets: Vec<Target>,
    pub findings: BTreeMap<String, Vec<Finding>>,
    pub skip: Vec<String>,
    locks: Vec<Box<dyn Held>>,
}

impl Prepared {
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
        for lock in self.locks.drain(..) {
            let _ = lock.release().await;
        }
    }
}

/// Services whose start phase is skipped.
pub fn not_starting(skip: &[String]) -> Vec<Service> {
    let mut out = Vec::new();
    for s in skip {
        match s.as_str() {
            "start-etcd" => out.push(Service::Etcd),
            "start-backups" => out.push(Service::Backups),
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

fn check_options<'a>(inv: &'a Inventory, o: &Options) -> Result<Vec<&'a Host>, ApplyError> {
    for s in &o.skip {
        if !PHASES.contains(&s.as_str()) {
            return Err(ApplyError::UnknownPhase(s.clone()));
        }
        if s == "connect" {
            return Err(ApplyError::CannotSkipConnect);
        }
    }
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

/// A host planned (with its preflight findings), or why it could not be.
type Planned = Result<(Target, Vec<Finding>), (String, StepError)>;
/// A connection attempt: position, host, outcome.
type Connected = (usize, Host, Result<Arc<dyn Remote>, StepError>);

/// Connects, locks (when `o.lock`), reads facts and plans every selected host.
pub async fn prepare(
    inv: &Inventory,
    bundle: &Bundle,
    connector: &dyn Connector,
    o: &Options,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Prepared, ApplyError> {
    let hosts = check_options(inv, o)?;
    let skips = Skips {
        not_starting: not_starting(&o.skip),
        manifests: o.skip.iter().any(|s| s == "apply-manifests"),
        kernel: o.skip.iter().any(|s| s == "kernel-settings"),
    };
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

    reporter.phase("connect", "connect", hosts.len());
    let remotes = connect_all(&hosts, connector, o.concurrency, reporter, cancel).await?;

    let mut locks = Vec::new();
    if o.lock {
        locks = lock_all(&remotes, &o.owner, reporter, cancel).await?;
    }

    reporter.phase("facts", "read host facts and plan", remotes.len());
    let mut targets = Vec::new();
    let mut findings = BTreeMap::new();
    let planned: Vec<Planned> =
        futures::future::join_all(remotes.into_iter().map(|(host, remote)| {
            let hb = bundle.hosts.get(&host.name).cloned().unwrap_or_default();
            let needed = desired::needed_binaries(inv, &hb.services, hb.receives_backups);
            let uploads = desired::host_binaries(&needed, &artifacts);
            let desired = Desired::from_bundle(&hb, uploads);
            let skips = &skips;
            async move {
                let r = plan_one(inv, &host, &*remote, &desired, &needed, skips, o, reporter).await;
                reporter.done(&host.name);
                match r {
                    Ok((facts, plan, found)) => Ok((
                        Target {
                            host,
                            remote,
                            desired,
                            facts,
                            plan,
                        },
                        found,
                    )),
                    Err(e) => Err((host.name.clone(), e)),
                }
            }
        }))
        .await;
    let mut failures = Vec::new();
    for r in planned {
        match r {
            Ok((t, found)) => {
                findings.insert(t.host.name.clone(), found);
                targets.push(t);
            }
            Err(f) => failures.push(f),
        }
    }
    if !failures.is_empty() {
        for lock in locks {
            let _ = lock.release().await;
        }
        return Err(PhaseError {
            phase: "facts",
            failures,
        }
        .into());
    }
    Ok(Prepared {
        targets,
        findings,
        skip: o.skip.clone(),
        locks,
    })
}

/// Connects to `hosts`, at most `concurrency` at once; every failure is
/// collected (in inventory order) so one report names every broken host.
pub async fn connect_all(
    hosts: &[&Host],
    connector: &dyn Connector,
    concurrency: usize,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Vec<(Host, Arc<dyn Remote>)>, PhaseError> {
    use futures::stream::{self, StreamExt};
    let results: Vec<Connected> = stream::iter(hosts.iter().enumerate())
        .map(|(i, h)| async move {
            let r = if cancel.is_cancelled() {
                Err(StepError::Cancelled {
                    step: "connect".into(),
                })
            } else {
                reporter.step(&h.name, "connect");
                connector.connect(h).await.map_err(|e| {
                    // The transport names the host itself; the report puts
                    // it in front of every line already.
                    let msg = e.error.to_string();
                    let msg = msg
                        .strip_prefix(&format!("{}: ", h.name))
                        .unwrap_or(&msg)
                        .to_string();
                    if e.untrusted_key {
                        StepError::HostKey(msg)
                    } else {
                        StepError::Connect(msg)
                    }
                })
            };
            reporter.done(&h.name);
            (i, (*h).clone(), r)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(i, _, _)| *i);
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for (_, host, r) in results {
        match r {
            Ok(remote) => ok.push((host, remote)),
            Err(e) => failures.push((host.name, e)),
        }
    }
    if failures.is_empty() {
        Ok(ok)
    } else {
        Err(PhaseError {
            phase: "connect",
            failures,
        })
    }
}

/// Takes `/var/lib/rampart/lock` on every host, or none: a busy host names
/// its holder and how to clear a stale lock.
pub(crate) async fn lock_all(
    remotes: &[(Host, Arc<dyn Remote>)],
    owner: &str,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Vec<Box<dyn Held>>, PhaseError> {
    let text = script::lock(LOCK, owner);
    let results = futures::future::join_all(remotes.iter().map(|(host, remote)| {
        let text = &text;
        async move {
            if cancel.is_cancelled() {
                return Err(StepError::Cancelled {
                    step: "lock".into(),
                });
            }
            reporter.step(&host.name, "lock");
            match remote.hold(text).await? {
                Ok((line, held)) if line == "locked" => Ok(held),
                Ok((line, held)) => {
                    let _ = held.release().await;
                    let holder = line.strip_prefix("busy\t").unwrap_or(&line).to_string();
                    Err(StepError::Locked {
                        holder,
                        host: host.name.clone(),
                    })
                }
                Err(out) => Err(StepError::Script {
                    step: "lock".into(),
                    status: out.status.map_or("signal".into(), |s| s.to_string()),
                    stderr: out.stderr_tail(),
                }),
            }
        }
    }))
    .await;
    let mut held = Vec::new();
    let mut failures = Vec::new();
    for ((host, _), r) in remotes.iter().zip(results) {
        match r {
            Ok(h) => held.push(h),
            Err(e) => failures.push((host.name.clone(), e)),
        }
    }
    if failures.is_empty() {
        Ok(held)
    } else {
        for h in held {
            let _ = h.release().await;
        }
        Err(PhaseError {
            phase: "lock",
            failures,
        })
    }
}

/// Facts → plan → diffs → preflight findings, for one host.
#[allow(clippy::too_many_arguments)]
async fn plan_one(
    inv: &Inventory,
    host: &Host,
    remote: &dyn Remote,
    desired: &Desired,
    needed: &[desired::Needed],
    skips: &Skips,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<(HostFacts, HostPlan, Vec<Finding>), StepError> {
    reporter.step(&host.name, "facts");
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
    let mut plan = plan_host(&host.name, desired, &facts, skips);
    let diffable = plan.diffable();
    if !diffable.is_empty() {
        reporter.step(&host.name, "diff");
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
            not_starting: &skips.not_starting,
            kube_minor: (inv.cluster.version.major, inv.cluster.version.minor),
            admin_time: o.admin_time,
            sysctls: &plan.sysctls_unsettable,
        },
    );
    if o.skip.iter().any(|s| s == "preflight") {
        for f in &mut found {
            f.level = Level::Warning;
        }
    }
    Ok((facts, plan, found))
}

async fn read_facts(remote: &dyn Remote, req: &FactsRequest) -> Result<HostFacts, StepError> {
    let out = remote.run(&script::facts(req), Input::None).await?;
    if !out.success() {
        return Err(StepError::Script {
            step: "facts".into(),
            status: out.status.map_or("signal".into(), |s| s.to_string()),
            stderr: out.stderr_tail(),
        });
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

/// Refuses to go on when any host has a preflight error (nothing changed yet).
pub fn check_preflight(p: &Prepared) -> Result<(), ApplyError> {
    let errors: Vec<(String, String)> = p
        .findings
        .iter()
        .flat_map(|(h, fs)| {
            fs.iter()
                .filter(|f| f.level == Level::Error)
                .map(move |f| (h.clone(), f.message.clone()))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Preflight(errors))
    }
}

/// Runs the install phases over a prepared plan; stops after the first
/// phase that failed on any host (its other hosts finish their step).
pub async fn execute(
    inv: &Inventory,
    prepared: &Prepared,
    o: &Options,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<(), ApplyError> {
    check_preflight(prepared)?;
    let not_starting = not_starting(&prepared.skip);
    let ctx = Ctx {
        inv,
        targets: &prepared.targets,
        reporter,
        cancel,
        concurrency: o.concurrency,
        not_starting: &not_starting,
        stamp: o.stamp.clone(),
    };
    run_in_order(&ctx, &install_phases(o), &prepared.skip).await?;
    Ok(())
}

/// `rampart hosts unlock`: ends the holder of a host's lock.
pub async fn unlock(remote: &dyn Remote) -> Result<String, RemoteError> {
    let out = remote.run(&script::unlock(LOCK), Input::None).await?;
    Ok(out.stdout_text().trim().to_string())
}
