//! `rampart rotate ca` (and `--resume ID`, `--rollback ID`): a runbook over
//! the stages of [`crate::pki::rotation`]. [`prepare`] connects to and
//! locks every host, reads this run's journals and plans; the CLI shows the
//! plan; [`execute`] asks, saves the plan, and runs the runbook forward or
//! backward. Each step moves the state dir one stage and rolls it out with
//! `apply`'s own phases (so etcd members restart one at a time behind the
//! cluster's health, control planes behind `/readyz`), then every host
//! journals it.

pub mod phases;
pub mod renew;
pub mod runbook;

use std::collections::BTreeMap;

use crate::engine::runbook::{
    new_id, parse_journal, valid_id, PlanStore, PlanStoreError, ReadHosts,
};
use crate::engine::{
    run_in_order, BoxPhase, Cancel, Connect, Connector, Env, Lock, PhaseError, Prompt, Reach,
    Reaches, Reporter,
};
use crate::inventory::Inventory;
use crate::pki::rotation::{self, Authority, Rotation, Stage};
use crate::pki::{catalogue, PkiError, StateDir, Unlock};
use crate::plan::LOCK;
use crate::rotate::{Direction, PlannedStep, RotationPlan, Step, BACKWARD, FORWARD, KIND};

use super::apply::{ApplyError, ApplyOptions};

/// Which run: a new rotation, or what to do with an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    New,
    Resume(String),
    Rollback(String),
}

/// Everything a rotation is asked to do.
pub struct RotateRequest<'r> {
    pub ca: Authority,
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
    #[error("`{0}` is not a rotation id; ids look like 20261202T150000Z (see `ls <state dir>/rotate-cas`)")]
    BadId(String),
    #[error("rotation {id} of the {ca} CA is at stage {stage}; continue it with `--resume {id}` or undo it with `--rollback {id}`")]
    InProgress {
        id: String,
        ca: &'static str,
        stage: &'static str,
    },
    #[error("no plan of rotation {id} in {path}; resume or roll back on the machine that started it (or pass its --state-dir)")]
    NoSavedPlan { id: String, path: String },
    #[error("rotation {id} rotates the {saved} CA, not {asked}; pass --ca {saved}")]
    OtherCa {
        id: String,
        saved: &'static str,
        asked: &'static str,
    },
    #[error("rotation {id} finished: the old CA is gone from every host and the state dir, so it cannot be rolled back; rotate again to replace the new CA")]
    Finished { id: String },
    #[error("rotation {id} is being rolled back (a host journaled {step}); finish that with `--rollback {id}`")]
    RollingBack { id: String, step: &'static str },
    #[error("--skip-phases {phase}: rotating the {ca} CA needs it, or the hosts keep trusting only the old CA in memory while their files trust the new one")]
    NeedsPhase {
        ca: &'static str,
        phase: &'static str,
    },
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
    #[error("{cause}\nrotation {id} stopped at step {step}; every host's journal (/var/lib/rampart/rotate-ca/{id}.journal) and the state dir say how far it got: continue with `rampart rotate ca --ca {ca} -i INVENTORY --resume {id}`, or undo it with `--rollback {id}`")]
    Stopped {
        id: String,
        ca: &'static str,
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
    pub ca: Authority,
    pub id: String,
    /// Each host's journal of this run, read by `facts`, kept up to date.
    pub journals: BTreeMap<String, Vec<Step>>,
    /// The state dir's record of this CA's rotation, kept up to date.
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

    /// Ends the lock scripts on every host.
    pub async fn release(&mut self) {
        self.reach.fleet.release().await;
    }
}

/// `facts`: this run's journal on every host.
fn read_journals<'r>() -> ReadHosts<RotateRun<'r>, Vec<Step>> {
    ReadHosts {
        title: "read the rotation's journals",
        script: |_, s| crate::rotate::read_journal(&s.id),
        parse: |text| Ok(parse_journal(text)),
        store: |s, journals| s.journals = journals,
    }
}

/// The start phases that restart what reads the CA's files: a rotation
/// that skipped them would only look done.
fn required_phases(ca: Authority) -> &'static [&'static str] {
    match ca {
        Authority::Etcd => &["start-etcd"],
        Authority::Kubernetes => &["start-control-plane", "start-nodes"],
        Authority::FrontProxy => &["start-control-plane"],
    }
}

/// The run's id, after checking the request against the state dir and the
/// saved plans.
fn run_id(req: &RotateRequest) -> Result<String, RotateError> {
    if let Some(phase) = required_phases(req.ca)
        .iter()
        .find(|p| req.apply.skip.iter().any(|s| s == *p))
    {
        return Err(RotateError::NeedsPhase {
            ca: req.ca.as_str(),
            phase,
        });
    }
    let ca = req.ca.cert_name();
    let marker = rotation::rotation(&req.dir, ca)?;
    let id = match &req.mode {
        Mode::New => {
            if let Some(m) = marker.filter(|m| m.stage.in_progress()) {
                return Err(RotateError::InProgress {
                    id: m.id,
                    ca: req.ca.as_str(),
                    stage: m.stage.as_str(),
                });
            }
            return Ok(new_id(req.now));
        }
        Mode::Resume(id) | Mode::Rollback(id) => id.clone(),
    };
    if !valid_id(&id) {
        return Err(RotateError::BadId(id));
    }
    let store = store(&req.dir);
    let Some(saved) = store.load::<RotationPlan>(&id)? else {
        return Err(RotateError::NoSavedPlan {
            path: store.path(&id).display().to_string(),
            id,
        });
    };
    if saved.ca != req.ca {
        return Err(RotateError::OtherCa {
            id,
            saved: saved.ca.as_str(),
            asked: req.ca.as_str(),
        });
    }
    Ok(id)
}

fn store(dir: &StateDir) -> PlanStore<'_> {
    PlanStore {
        state_dir: dir.root(),
        kind: KIND,
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
    let id = run_id(&req)?;
    let mut reach = Reach::new(inv.hosts.clone(), connector);
    if !req.dry_run {
        reach.lock = Some((LOCK, req.apply.owner.clone()));
    }
    let mut run = RotateRun {
        reach,
        ca: req.ca,
        id,
        journals: BTreeMap::new(),
        marker: rotation::rotation(&req.dir, req.ca.cert_name())?,
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
        Ok(()) => plan(inv, &req.mode, &run),
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
        .find(|s| BACKWARD.contains(s))
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
        Direction::Rotate => &FORWARD[..],
        Direction::Rollback => &BACKWARD[..],
    };
    let ca = run.ca.cert_name();
    Ok(RotationPlan {
        id: id.clone(),
        ca: run.ca,
        direction,
        stage: marker.map(|m| m.stage),
        hosts: run.reach.hosts.iter().map(|h| h.name.clone()).collect(),
        leaves: catalogue(inv)
            .into_iter()
            .filter(|s| s.ca.as_deref() == Some(ca))
            .map(|s| s.name)
            .collect(),
        steps: steps
            .iter()
            .map(|&step| PlannedStep {
                step,
                effect: step.effect(run.ca),
                done: !phases::needed(run, step),
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
            "rotate the {} CA on {} (every host restarts what uses it, one at a time where it matters)",
            plan.ca.as_str(),
            crate::words::count(plan.hosts.len(), "host")
        ),
        Direction::Rollback => format!("roll rotation {} back", plan.id),
    };
    if !prompt.confirm(&question) {
        return Err(RotateError::NotConfirmed);
    }
    if plan.direction == Direction::Rotate {
        store(&run.rollout.dir).save(&plan.id, &plan)?;
    }
    let env = Env {
        inv,
        reporter,
        cancel,
        concurrency: run.rollout.options.concurrency,
    };
    let book = runbook::rotation();
    let result = match plan.direction {
        Direction::Rotate => book.run(&env, run).await,
        Direction::Rollback => book.roll_back(&env, run).await,
    };
    result.map_err(|e| {
        let step = e.phase;
        let cause = run.fault.take().unwrap_or(RotateError::Hosts(e));
        RotateError::Stopped {
            id: plan.id.clone(),
            ca: plan.ca.as_str(),
            step,
            cause: Box::new(cause),
        }
    })
}
