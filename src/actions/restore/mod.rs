//! `rampart backup restore` (and `--resume ID`, `--rollback ID`): the first
//! runbook. [`prepare`] verifies the backup on this machine, connects to and
//! locks every etcd member and control plane, reads their restore facts and
//! plans; the CLI shows the plan; [`execute`] asks, saves the plan, and runs
//! the runbook forward (a restore, new or resumed) or backward (a rollback).
//!
//! Each member journals its finished steps, so a run cut short can be
//! resumed or rolled back from what the hosts themselves recorded; the saved
//! plan keeps what was decided (the snapshot, the members, the token).

pub mod phases;
pub mod runbook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backup::{self, Decrypted, VerifyError, VerifyOptions};
use crate::engine::runbook::{new_id, valid_id, PlanStore, PlanStoreError, ReadHosts};
use crate::engine::{
    run_in_order, BoxPhase, Cancel, Connect, Connector, Env, Lock, PhaseError, Prompt, Reach,
    Reaches, Reporter,
};
use crate::inventory::{Host, Inventory};
use crate::plan::LOCK;
use crate::restore::{
    plan_restore, plan_resume, plan_rollback, script, PlanError, RestoreFacts, RestorePlan,
    RollbackPlan, SnapshotMeta, Step,
};
pub use phases::Checked;

/// Which run: a new restore, or what to do with an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    New,
    Resume(String),
    Rollback(String),
}

/// Everything a restore is asked to do.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub mode: Mode,
    /// The backup (`.db.age`); none for a rollback, or a resume whose
    /// members all restored already.
    pub file: Option<PathBuf>,
    /// How to decrypt and check it (`cancel` is set from the run's).
    pub verify: VerifyOptions,
    /// The state dir: saved plans live in `restores/` there.
    pub state_dir: PathBuf,
    pub concurrency: usize,
    /// `--dry-run`: plan only; no lock is taken.
    pub dry_run: bool,
    /// Written into the lock file: who holds it.
    pub owner: String,
    pub now: time::OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("`{0}` is not a restore id; ids look like 20261130T150000Z (see `ls /var/lib/rampart/restore` on a member)")]
    BadId(String),
    #[error("--rollback takes no backup file: it puts the moved-aside data dirs back")]
    FileWithRollback,
    #[error("which backup? give the `.db.age` file: rampart backup restore FILE --identity KEY -i INVENTORY")]
    NoFile,
    #[error("--identity is required to decrypt {0}; it is the age identity (or SSH key) the backups are encrypted to")]
    NoIdentity(String),
    #[error("the backup was refused before anything on any host changed")]
    Refused(#[source] VerifyError),
    #[error("cancelled while verifying the backup; its decrypted copy was deleted and no host was contacted")]
    CancelledVerifying,
    #[error("cancelled before any host was contacted; nothing was changed")]
    CancelledBeforeHosts,
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Hosts(#[from] PhaseError),
    #[error(transparent)]
    Store(#[from] PlanStoreError),
    #[error("no plan of restore {id} in {path}; resume on the machine that started it (or pass its --state-dir), or roll back with --rollback {id}")]
    NoSavedPlan { id: String, path: String },
    #[error("resuming restore {id} needs the backup again ({members} have not restored it yet); pass FILE and --identity")]
    NeedSnapshot { id: String, members: String },
    #[error("{file} is not the backup restore {id} started with (sha256 {actual}, the plan has {expected}); pass that file")]
    OtherSnapshot {
        id: String,
        file: String,
        actual: String,
        expected: String,
    },
    #[error(
        "the {what} was not confirmed; nothing was changed: review the plan above and pass --yes"
    )]
    NotConfirmed { what: &'static str },
    /// A restore stopped part way: the cause, and how to go on from the
    /// members' journals (the cause is part of the message: it comes first).
    #[error("{cause}\nrestore {id} stopped; each member's journal (/var/lib/rampart/restore/{id}.journal) says how far it got: continue with `rampart backup restore FILE --identity KEY -i INVENTORY --resume {id}`, or put the old data back with `rampart backup restore -i INVENTORY --rollback {id}`")]
    Stopped {
        id: String,
        cause: Box<RestoreError>,
    },
}

/// Who takes part in a run, as its plan (or the rollback's plan) says.
#[derive(Debug, Clone, Default)]
pub struct Participants<'a> {
    /// Every etcd member.
    pub members: Vec<&'a str>,
    /// Every host with a control plane: held stopped for the whole run.
    pub control_planes: &'a [String],
    /// The control planes whose apiserver ran: started again last.
    pub apiservers: &'a [String],
}

/// The state restore's phases work on.
pub struct RestoreRun<'r> {
    pub reach: Reach<'r>,
    /// The run's id: names journals, moved-aside dirs and the saved plan.
    pub id: String,
    /// Each host's restore facts, read by `facts`.
    pub facts: BTreeMap<String, RestoreFacts>,
    /// What the run does, once planned (after `facts`).
    pub planned: Option<Planned>,
    /// The verified plaintext, while some member still has to restore it.
    pub snapshot: Option<Decrypted>,
    /// What `check` found.
    pub checked: Option<Checked>,
}

impl RestoreRun<'_> {
    /// A restore's plan (None before planning, and for a rollback).
    pub fn plan(&self) -> Option<&RestorePlan> {
        match &self.planned {
            Some(Planned::Restore(p)) => Some(p),
            _ => None,
        }
    }

    /// A rollback's stamp: names the dirs it sets aside.
    pub fn stamp(&self) -> &str {
        match &self.planned {
            Some(Planned::Rollback(p)) => &p.stamp,
            _ => "",
        }
    }

    /// Who takes part (nobody before planning).
    pub fn participants(&self) -> Participants<'_> {
        match &self.planned {
            None => Participants::default(),
            Some(Planned::Restore(p)) => Participants {
                members: p.members.iter().map(|m| m.name.as_str()).collect(),
                control_planes: &p.control_planes,
                apiservers: &p.apiservers,
            },
            Some(Planned::Rollback(p)) => Participants {
                members: p.members.iter().map(|m| m.name.as_str()).collect(),
                control_planes: &p.control_planes,
                apiservers: &p.apiservers,
            },
        }
    }
}

impl<'r> Reaches<'r> for RestoreRun<'r> {
    fn reach(&self) -> &Reach<'r> {
        &self.reach
    }
    fn reach_mut(&mut self) -> &mut Reach<'r> {
        &mut self.reach
    }
}

/// `facts`: one round trip per host for its etcd, tools, units, data dirs and
/// the journal of this run.
fn read_restore_facts<'r>() -> ReadHosts<RestoreRun<'r>, RestoreFacts> {
    ReadHosts {
        title: "read host facts",
        script: |env, s| script::facts(&env.inv.binaries.etcd_dir, &s.id),
        parse: RestoreFacts::parse,
        store: |s, facts| s.facts = facts,
    }
}

/// What a run does, as data: shown, then executed (or only shown, for `--dry-run`).
pub enum Planned {
    Restore(Box<RestorePlan>),
    Rollback(RollbackPlan),
}

/// A restore planned: the plan, and the connected, locked hosts that will
/// carry it out.
pub struct Prepared<'r> {
    pub run: RestoreRun<'r>,
}

impl Prepared<'_> {
    /// What the run does.
    pub fn plan(&self) -> &Planned {
        self.run
            .planned
            .as_ref()
            .expect("a prepared run is planned")
    }

    /// Ends the lock scripts on every host.
    pub async fn release(&mut self) {
        self.run.reach.fleet.release().await;
    }
}

/// The hosts a restore touches: etcd members and control planes, in
/// inventory order.
fn restore_hosts(inv: &Inventory) -> Vec<Host> {
    inv.hosts
        .iter()
        .filter(|h| h.roles.etcd || h.roles.control_plane)
        .cloned()
        .collect()
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

/// The run's id, after checking what the request asks makes sense.
fn run_id(req: &RestoreRequest) -> Result<String, RestoreError> {
    let id = match &req.mode {
        Mode::New => new_id(req.now),
        Mode::Resume(id) | Mode::Rollback(id) => {
            if !valid_id(id) {
                return Err(RestoreError::BadId(id.clone()));
            }
            id.clone()
        }
    };
    if matches!(req.mode, Mode::Rollback(_)) && req.file.is_some() {
        return Err(RestoreError::FileWithRollback);
    }
    if req.mode == Mode::New && req.file.is_none() {
        return Err(RestoreError::NoFile);
    }
    Ok(id)
}

fn env<'a>(
    inv: &'a Inventory,
    req: &RestoreRequest,
    reporter: &'a dyn Reporter,
    cancel: &'a Cancel,
) -> Env<'a> {
    Env {
        inv,
        reporter,
        cancel,
        concurrency: req.concurrency,
    }
}

/// Verifies the backup (before anything connects: a refused backup changes
/// nothing anywhere), then connects, locks (unless `--dry-run`), reads the
/// hosts' restore facts and plans the run.
pub async fn prepare<'r>(
    inv: &Inventory,
    req: &RestoreRequest,
    connector: &'r dyn Connector,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Prepared<'r>, RestoreError> {
    let id = run_id(req)?;
    let verified = match &req.file {
        None => None,
        Some(file) => {
            if req.verify.identities.is_empty() {
                return Err(RestoreError::NoIdentity(file.display().to_string()));
            }
            let mut opts = req.verify.clone();
            opts.cancel = Some(cancel.flag());
            match verify_snapshot(file, &opts, req.now) {
                Ok(v) => Some(v),
                // Whatever failed (a Ctrl-C in a terminal also stops `snapshot
                // status`), the user asked to stop: say so, not "refused".
                Err(_) if cancel.is_cancelled() => return Err(RestoreError::CancelledVerifying),
                Err(e) => return Err(e),
            }
        }
    };
    if cancel.is_cancelled() {
        return Err(RestoreError::CancelledBeforeHosts);
    }
    let mut reach = Reach::new(restore_hosts(inv), connector);
    if !req.dry_run {
        reach.lock = Some((LOCK, req.owner.clone()));
    }
    let (meta, plain) = match verified {
        Some((m, p)) => (Some(m), Some(p)),
        None => (None, None),
    };
    let mut run = RestoreRun {
        reach,
        id: id.clone(),
        facts: BTreeMap::new(),
        planned: None,
        snapshot: plain,
        checked: None,
    };
    let first: Vec<BoxPhase<'_, RestoreRun>> = vec![
        Box::new(Connect),
        Box::new(Lock),
        Box::new(read_restore_facts()),
    ];
    let env = env(inv, req, reporter, cancel);
    let planned = match run_in_order(&env, &mut run, &first, &[]).await {
        Ok(()) => plan(inv, req, &id, meta, &run),
        Err(e) => Err(e.into()),
    };
    match planned {
        Ok(plan) => {
            run.planned = Some(plan);
            Ok(Prepared { run })
        }
        Err(e) => {
            run.reach.fleet.release().await;
            Err(e)
        }
    }
}

/// The plan of the run the request asks for, from the hosts' facts (pure but
/// for reading a saved plan).
fn plan(
    inv: &Inventory,
    req: &RestoreRequest,
    id: &str,
    snapshot: Option<SnapshotMeta>,
    run: &RestoreRun,
) -> Result<Planned, RestoreError> {
    let store = PlanStore {
        state_dir: &req.state_dir,
        kind: runbook::KIND,
    };
    match &req.mode {
        Mode::New => {
            let meta = snapshot.expect("a new restore has a verified backup");
            Ok(Planned::Restore(Box::new(plan_restore(
                inv, meta, &run.facts, id,
            )?)))
        }
        Mode::Rollback(_) => {
            let saved: Option<RestorePlan> = store.load(id)?;
            let stamp = new_id(req.now);
            Ok(Planned::Rollback(plan_rollback(
                inv,
                id,
                &stamp,
                &run.facts,
                saved.as_ref(),
            )?))
        }
        Mode::Resume(_) => {
            let Some(saved) = store.load::<RestorePlan>(id)? else {
                return Err(RestoreError::NoSavedPlan {
                    id: id.into(),
                    path: store.path(id).display().to_string(),
                });
            };
            let p = plan_resume(inv, &saved, &run.facts)?;
            let pending: Vec<&str> = p
                .members
                .iter()
                .filter(|m| !m.has(Step::Restored))
                .map(|m| m.name.as_str())
                .collect();
            match &snapshot {
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
                _ => Ok(Planned::Restore(Box::new(p))),
            }
        }
    }
}

/// What a run did.
pub enum RestoreOutcome {
    /// A restore finished and checked out.
    Restored {
        checked: Checked,
        saved: PathBuf,
    },
    RolledBack,
}

/// Asks (`prompt`), saves a restore's plan before the first host changes,
/// then runs the runbook: forward for a restore, backward for a rollback.
/// A restore that stops says how to resume or roll back.
pub async fn execute(
    inv: &Inventory,
    req: &RestoreRequest,
    prepared: &mut Prepared<'_>,
    prompt: &dyn Prompt,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<RestoreOutcome, RestoreError> {
    let what = match prepared.plan() {
        Planned::Restore(_) => "restore",
        Planned::Rollback(_) => "rollback",
    };
    if !prompt.confirm(&format!(
        "this {what} stops etcd on every member; go ahead?"
    )) {
        return Err(RestoreError::NotConfirmed { what });
    }
    let env = env(inv, req, reporter, cancel);
    let book = runbook::restore();
    let Planned::Restore(plan) = prepared.plan() else {
        book.roll_back(&env, &mut prepared.run).await?;
        return Ok(RestoreOutcome::RolledBack);
    };
    let store = PlanStore {
        state_dir: &req.state_dir,
        kind: runbook::KIND,
    };
    let saved = store.save(&plan.id, plan)?;
    let id = plan.id.clone();
    match book.run(&env, &mut prepared.run).await {
        Ok(()) => Ok(RestoreOutcome::Restored {
            checked: prepared.run.checked.take().unwrap_or_default(),
            saved,
        }),
        Err(e) => Err(RestoreError::Stopped {
            id,
            cause: Box::new(e.into()),
        }),
    }
}
