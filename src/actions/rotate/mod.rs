//! `rampart rotate ca` and `rampart rotate service-account-key` (and
//! `--resume ID`, `--rollback ID`): a runbook over the stages of
//! [`crate::pki::rotation`]. [`prepare`] connects to and
//! locks every host, reads this run's journals and plans; the CLI shows the
//! plan; [`execute`] asks, saves the plan, and runs the runbook forward or
//! backward. Each step moves the state dir one stage and rolls it out with
//! `apply`'s own phases (so etcd members restart one at a time behind the
//! cluster's health, control planes behind `/readyz`), then every host
//! journals it. A step that drops a service-account key first waits for
//! the tokens it signed to expire ([`tokens`]).

pub mod encryption;
pub mod kubelets;
pub mod phases;
pub mod progress;
pub mod renew;
pub mod runbook;
pub mod tokens;

use std::collections::BTreeMap;

use crate::engine::runbook::{
    new_id, parse_journal, valid_id, PlanStore, PlanStoreError, ReadHosts,
};
use crate::engine::{
    run_in_order, BoxPhase, Cancel, Connect, Connector, Env, Lock, PhaseError, Prompt, Reach,
    Reaches, Reporter,
};
use crate::inventory::Inventory;
use crate::pki::rotation::{self, Rotated, Rotation, Stage};
use crate::pki::{catalogue, PkiError, StateDir, Unlock};
use crate::plan::LOCK;
use crate::render::Service;
use crate::rotate::{backward, forward, kind, Direction, PlannedStep, RotationPlan, Step};

use super::apply::{not_starting, ApplyError, ApplyOptions};

/// Which run: a new rotation, or what to do with an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    New,
    Resume(String),
    Rollback(String),
}

/// Everything a rotation is asked to do.
pub struct RotateRequest<'r> {
    pub what: Rotated,
    pub mode: Mode,
    pub dir: StateDir,
    pub unlock: &'r Unlock,
    /// How each rollout's `apply` runs (`--skip-phases`, concurrency,
    /// owner); hosts are always all of them, and the rollouts take no lock
    /// of their own: the rotation holds the hosts' lock throughout.
    pub apply: ApplyOptions,
    /// `--dry-run`: plan only; no lock is taken.
    pub dry_run: bool,
    pub now: time::OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("`{0}` is not a rotation id; ids look like 20261202T150000Z (see `ls <state dir>/rotate-cas` or `rotate-sa-keys`)")]
    BadId(String),
    #[error("rotation {id} of {what} is at stage {stage}; continue it with `--resume {id}` or undo it with `--rollback {id}`")]
    InProgress {
        id: String,
        what: &'static str,
        stage: &'static str,
    },
    #[error("no plan of rotation {id} in {path}; resume or roll back on the machine that started it (or pass its --state-dir)")]
    NoSavedPlan { id: String, path: String },
    #[error("rotation {id} rotates {saved}, not {asked}")]
    OtherCa {
        id: String,
        saved: &'static str,
        asked: &'static str,
    },
    #[error("rotation {id} finished: the old one is gone from every host and the state dir, so it cannot be rolled back; rotate again to replace the new one")]
    Finished { id: String },
    #[error("rotation {id} is being rolled back (a host journaled {step}); finish that with `--rollback {id}`")]
    RollingBack { id: String, step: &'static str },
    #[error("--skip-phases: rotating {what} needs {service} restarted, or it keeps the old one in memory while its files hold the new one")]
    NeedsPhase {
        what: &'static str,
        service: &'static str,
    },
    /// A step that drops a service-account key, while tokens it signed
    /// may be in use (see [`tokens`]).
    #[error("{step} waits: {reason}")]
    TokensLive { step: &'static str, reason: String },
    /// A step that drops a CA while a kubelet's own client certificate
    /// needs it (see [`kubelets`]).
    #[error("{step} refused: {reason}")]
    KubeletCerts { step: &'static str, reason: String },
    /// Rewriting Secrets under the encryption key that encrypts now, or a
    /// step that would drop a key a value in etcd still needs (see
    /// [`encryption`]).
    #[error("{step}: {reason}")]
    Rewrite { step: &'static str, reason: String },
    #[error(
        "the rotation was not confirmed; nothing was changed: review the plan above and pass --yes"
    )]
    NotConfirmed,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    Rollout(ApplyError),
    #[error(transparent)]
    Hosts(#[from] PhaseError),
    #[error(transparent)]
    Store(#[from] PlanStoreError),
    /// `certs renew` reissued in the state dir, but the rollout stopped.
    #[error("{cause}\nthe state dir holds the {renewed} renewed certificate(s), but not every host has them yet: finish the rollout with `rampart apply -i INVENTORY`")]
    Unfinished {
        renewed: usize,
        cause: Box<RotateError>,
    },
    /// A run stopped part way: the cause, and how to go on.
    #[error("{cause}\nrotation {id} stopped at step {step}; every host's journal (/var/lib/rampart/{kind}/{id}.journal) and the state dir say how far it got: continue with `{command} -i INVENTORY --resume {id}`, or undo it with `--rollback {id}`")]
    Stopped {
        id: String,
        kind: &'static str,
        command: String,
        step: &'static str,
        cause: Box<RotateError>,
    },
}

impl From<ApplyError> for RotateError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Hosts(p) => RotateError::Hosts(p),
            other => RotateError::Rollout(other),
        }
    }
}

/// How a step carries a stage to the hosts: what each rollout needs.
pub struct Rollout<'r> {
    pub dir: StateDir,
    pub unlock: &'r Unlock,
    pub connector: &'r dyn Connector,
    pub options: ApplyOptions,
}

/// The state the rotation's phases work on.
pub struct RotateRun<'r> {
    pub reach: Reach<'r>,
    pub what: Rotated,
    pub id: String,
    /// Each host's journal of this run, read by `facts`, kept up to date.
    pub journals: BTreeMap<String, Vec<Step>>,
    /// The state dir's record of this rotation, kept up to date.
    pub marker: Option<Rotation>,
    /// The plan, once made (after `facts`).
    pub plan: Option<RotationPlan>,
    pub rollout: Rollout<'r>,
    /// What each step's rollout changed: hosts with changes.
    pub changed: Vec<(Step, usize)>,
    /// An error on this machine (state dir, render) that stopped a step;
    /// the phase reports it as a failed phase with no host.
    pub(crate) fault: Option<RotateError>,
}

impl<'r> Reaches<'r> for RotateRun<'r> {
    fn reach(&self) -> &Reach<'r> {
        &self.reach
    }
    fn reach_mut(&mut self) -> &mut Reach<'r> {
        &mut self.reach
    }
}

impl RotateRun<'_> {
    /// The hosts whose journal lacks `step`.
    pub fn without(&self, step: Step) -> Vec<String> {
        self.reach
            .hosts
            .iter()
            .filter(|h| {
                !self
                    .journals
                    .get(&h.name)
                    .is_some_and(|j| j.contains(&step))
            })
            .map(|h| h.name.clone())
            .collect()
    }

    /// This run's record in the state dir (None: another run's, or none).
    pub fn own_marker(&self) -> Option<&Rotation> {
        self.marker.as_ref().filter(|m| m.id == self.id)
    }

    pub fn plan(&self) -> &RotationPlan {
        self.plan.as_ref().expect("a prepared rotation is planned")
    }

    /// The first connected host with a role (`|r| r.etcd`,
    /// `|r| r.control_plane`): where a cluster-wide read or rewrite runs.
    pub fn first_with(
        &self,
        role: fn(&crate::inventory::Roles) -> bool,
    ) -> Option<&crate::engine::ConnectedHost> {
        self.reach
            .fleet
            .members()
            .iter()
            .find(|m| role(&m.host.roles))
    }

    /// Ends the lock scripts on every host.
    pub async fn release(&mut self) {
        self.reach.fleet.release().await;
    }
}

/// `facts`: this run's journal on every host.
fn read_journals<'r>() -> ReadHosts<RotateRun<'r>, Vec<Step>> {
    ReadHosts {
        title: "read the rotation's journals",
        script: |_, s| crate::rotate::read_journal(kind(s.what), &s.id),
        parse: |text| Ok(parse_journal(text)),
        store: |s, journals| s.journals = journals,
    }
}

/// The services that read what is rotated: a rotation whose rollouts do
/// not restart them (`--skip-phases`) would only look done.
fn readers(what: Rotated) -> &'static [Service] {
    match what {
        Rotated::Etcd => &[Service::Etcd],
        Rotated::Kubernetes => &[Service::KubeApiserver, Service::Kubelet],
        Rotated::FrontProxy => &[Service::KubeApiserver],
        Rotated::ServiceAccountKey => &[Service::KubeApiserver, Service::KubeControllerManager],
        Rotated::EncryptionKey => &[Service::KubeApiserver],
    }
}

/// The run's id and the state dir's record of the rotation, after checking
/// the request against both and the saved plans.
fn run_id(req: &RotateRequest) -> Result<(String, Option<Rotation>), RotateError> {
    if let Some(service) = not_starting(&req.apply.skip)
        .into_iter()
        .find(|s| readers(req.what).contains(s))
    {
        return Err(RotateError::NeedsPhase {
            what: req.what.describe(),
            service: service.name(),
        });
    }
    let marker = rotation::rotation(&req.dir, req.what.state_name())?;
    let id = match &req.mode {
        Mode::New => {
            if let Some(m) = marker.as_ref().filter(|m| m.stage.in_progress()) {
                return Err(RotateError::InProgress {
                    id: m.id.clone(),
                    what: req.what.describe(),
                    stage: m.stage.as_str(),
                });
            }
            return Ok((new_id(req.now), marker));
        }
        Mode::Resume(id) | Mode::Rollback(id) => id.clone(),
    };
    if !valid_id(&id) {
        return Err(RotateError::BadId(id));
    }
    let store = store(&req.dir, req.what);
    let Some(saved) = store.load::<RotationPlan>(&id)? else {
        return Err(RotateError::NoSavedPlan {
            path: store.path(&id).display().to_string(),
            id,
        });
    };
    if saved.rotates != req.what {
        return Err(RotateError::OtherCa {
            id,
            saved: saved.rotates.describe(),
            asked: req.what.describe(),
        });
    }
    Ok((id, marker))
}

fn store(dir: &StateDir, what: Rotated) -> PlanStore<'_> {
    PlanStore {
        state_dir: dir.root(),
        kind: kind(what),
    }
}

/// Connects, locks (unless `--dry-run`), reads this run's journals and
/// plans the run.
pub async fn prepare<'r>(
    inv: &Inventory,
    req: RotateRequest<'r>,
    connector: &'r dyn Connector,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<RotateRun<'r>, RotateError> {
    let (id, marker) = run_id(&req)?;
    let mut reach = Reach::new(inv.hosts.clone(), connector);
    if !req.dry_run {
        reach.lock = Some((LOCK, req.apply.owner.clone()));
    }
    let mut run = RotateRun {
        reach,
        what: req.what,
        id,
        journals: BTreeMap::new(),
        marker,
        plan: None,
        rollout: Rollout {
            dir: req.dir,
            unlock: req.unlock,
            connector,
            options: ApplyOptions {
                hosts: None,
                lock: false,
                ..req.apply
            },
        },
        changed: Vec::new(),
        fault: None,
    };
    let first: Vec<BoxPhase<'_, RotateRun>> =
        vec![Box::new(Connect), Box::new(Lock), Box::new(read_journals())];
    let env = Env {
        inv,
        reporter,
        cancel,
        concurrency: run.rollout.options.concurrency,
    };
    let planned = match run_in_order(&env, &mut run, &first, &[]).await {
        Ok(()) => match encryption::census(&env, &run).await {
            Ok(etcd) => plan(inv, &req.mode, &run).map(|p| RotationPlan { etcd, ..p }),
            Err(e) => Err(e),
        },
        Err(e) => Err(e.into()),
    };
    match planned {
        Ok(p) => {
            run.plan = Some(p);
            Ok(run)
        }
        Err(e) => {
            run.release().await;
            Err(e)
        }
    }
}

/// The plan of the run, from the journals and the state dir (pure).
fn plan(inv: &Inventory, mode: &Mode, run: &RotateRun) -> Result<RotationPlan, RotateError> {
    let id = &run.id;
    let marker = run.own_marker();
    let finished = marker.is_some_and(|m| m.stage == Stage::Done)
        || run.journals.values().any(|j| j.contains(&Step::Finish));
    let rolling_back = run
        .journals
        .values()
        .flatten()
        .find(|s| backward(run.what).contains(s))
        .copied();
    let direction = match mode {
        Mode::Rollback(_) if finished => return Err(RotateError::Finished { id: id.clone() }),
        Mode::Rollback(_) => Direction::Rollback,
        Mode::Resume(_) => match rolling_back.or_else(|| {
            // The state dir went back a stage: a rollback began there.
            marker
                .filter(|m| m.stage < m.furthest && m.stage.in_progress())
                .map(|_| Step::RestoreOld)
        }) {
            Some(step) => {
                return Err(RotateError::RollingBack {
                    id: id.clone(),
                    step: step.name(),
                })
            }
            None => Direction::Rotate,
        },
        Mode::New => Direction::Rotate,
    };
    let steps = match direction {
        Direction::Rotate => forward(run.what),
        Direction::Rollback => backward(run.what),
    };
    let hours = inv.security.service_account_token_max_hours;
    Ok(RotationPlan {
        id: id.clone(),
        rotates: run.what,
        direction,
        stage: marker.map(|m| m.stage),
        hosts: run.reach.hosts.iter().map(|h| h.name.clone()).collect(),
        etcd: None,
        leaves: catalogue(inv)
            .into_iter()
            .filter(|s| s.ca.is_some() && s.ca.as_deref() == run.what.ca_name())
            .map(|s| s.name)
            .collect(),
        steps: steps
            .iter()
            .map(|&step| PlannedStep {
                step,
                effect: step.effect(run.what),
                done: !progress::needed(run, step),
                not_before: match tokens::wait(step, marker, hours) {
                    tokens::Wait::Until(t) if run.what == Rotated::ServiceAccountKey => {
                        Some(tokens::rfc3339(t))
                    }
                    _ => None,
                },
            })
            .collect(),
    })
}

/// Asks, saves the plan (before the first host changes), then runs the
/// runbook forward or backward.
pub async fn execute(
    inv: &Inventory,
    run: &mut RotateRun<'_>,
    prompt: &dyn Prompt,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<(), RotateError> {
    let plan = run.plan().clone();
    let question = match plan.direction {
        Direction::Rotate => format!(
            "rotate {} on {} (every host restarts what uses it, one at a time where it matters)",
            plan.rotates.describe(),
            crate::words::count(plan.hosts.len(), "host")
        ),
        Direction::Rollback => format!("roll rotation {} back", plan.id),
    };
    if !prompt.confirm(&question) {
        return Err(RotateError::NotConfirmed);
    }
    if plan.direction == Direction::Rotate {
        store(&run.rollout.dir, plan.rotates).save(&plan.id, &plan)?;
    }
    let env = Env {
        inv,
        reporter,
        cancel,
        concurrency: run.rollout.options.concurrency,
    };
    let book = runbook::rotation(plan.rotates);
    let result = match plan.direction {
        Direction::Rotate => book.run(&env, run).await,
        Direction::Rollback => book.roll_back(&env, run).await,
    };
    result.map_err(|e| {
        let step = e.phase;
        let cause = run.fault.take().unwrap_or(RotateError::Hosts(e));
        RotateError::Stopped {
            id: plan.id.clone(),
            kind: kind(plan.rotates),
            command: crate::rotate::command(plan.rotates),
            step,
            cause: Box::new(cause),
        }
    })
}
