//! Phases: the steps of work on hosts, each a [`Phase`] with a name (for
//! `--skip-phases`) and a title, run in order by [`crate::actions::apply`].
//!
//! Phases execute a plan computed beforehand ([`crate::plan`]); they decide
//! nothing about *what* changes, only carry it out in a safe order, behind
//! health gates. Work on hosts goes through [`for_each`]: bounded
//! concurrency, cancellation checked between steps, every host's failure
//! collected so one report names them all.

pub mod install;
pub mod kernel;
pub mod restore;
pub mod services;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::inventory::{Host, Inventory};
use crate::plan::desired::Desired;
use crate::plan::facts::HostFacts;
use crate::plan::HostPlan;
use crate::remote::{BoxFuture, Input, Output, Remote, RemoteError};
use crate::render::Service;

/// Progress sink of the engine. The CLI implements it with indicatif or plain
/// lines; the engine never prints.
pub trait Reporter: Send + Sync {
    /// A phase begins, over `hosts` hosts.
    fn phase(&self, name: &str, title: &str, hosts: usize);
    /// A host's current step (transient: a progress line).
    fn step(&self, host: &str, step: &str);
    /// Something worth keeping about a host: `cp1: etcd healthy (3/3)`.
    fn line(&self, host: &str, line: &str);
    /// A host is done with the current phase.
    fn done(&self, host: &str);
}

/// A reporter that drops everything (tests, `--output json`).
pub struct Silent;

impl Reporter for Silent {
    fn phase(&self, _: &str, _: &str, _: usize) {}
    fn step(&self, _: &str, _: &str) {}
    fn line(&self, _: &str, _: &str) {}
    fn done(&self, _: &str) {}
}

/// Set by Ctrl-C; checked before every step, so a step in flight finishes
/// (never half a file) and nothing new starts.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// The flag itself, for code below the phases that polls it (decryption).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// One host in this run: how to reach it, what it must hold, what changes.
pub struct Target {
    pub host: Host,
    pub remote: Arc<dyn Remote>,
    pub desired: Desired,
    /// What the host reported before planning.
    pub facts: HostFacts,
    pub plan: HostPlan,
}

/// What every phase sees.
pub struct Ctx<'a> {
    pub inv: &'a Inventory,
    pub targets: &'a [Target],
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a Cancel,
    pub concurrency: usize,
    /// Services whose start phase this run skips.
    pub not_starting: &'a [Service],
    /// `YYYYmmddTHHMMSSZ` of this run: names the backup dir on every host.
    pub stamp: String,
}

/// Why one host's step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{step} failed (exit {status}): {stderr}")]
    Script {
        step: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not become healthy within {seconds} s: {output}")]
    Unhealthy {
        what: String,
        seconds: u32,
        output: String,
    },
    /// The transport's message, whole (it names host keys, auth, addresses).
    #[error("{0}")]
    Connect(String),
    /// Unknown or changed host key: refused before anything was sent.
    #[error("{0}")]
    HostKey(String),
    #[error("locked by another run ({holder}); if that run is gone, clear it with `rampart hosts unlock -i INVENTORY {host}`")]
    Locked { host: String, holder: String },
    #[error("{0}")]
    Facts(String),
    /// A check after the work failed (e.g. the restored data is not the snapshot's).
    #[error("{0}")]
    Check(String),
    #[error("cancelled before {step}")]
    Cancelled { step: String },
}

/// A phase failed on some hosts; all of them are listed.
#[derive(Debug)]
pub struct PhaseError {
    pub phase: &'static str,
    pub failures: Vec<(String, StepError)>,
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.failures.len();
        write!(
            f,
            "phase {} failed on {n} host{}:",
            self.phase,
            if n == 1 { "" } else { "s" }
        )?;
        for (host, err) in &self.failures {
            write!(f, "\n  - {host}: {err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PhaseError {}

impl PhaseError {
    pub fn cancelled(&self) -> bool {
        self.failures
            .iter()
            .all(|(_, e)| matches!(e, StepError::Cancelled { .. }))
    }
}

/// One step of work on hosts.
pub trait Phase: Send + Sync {
    /// The name `--skip-phases` takes.
    fn name(&self) -> &'static str;
    fn title(&self) -> &'static str;
    /// The hosts this phase touches (for the progress bar).
    fn hosts(&self, ctx: &Ctx) -> usize;
    fn run<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), PhaseError>>;
}

/// Runs `phases` in order over `ctx`, leaving out those named in `skip` and
/// those with no host to work on; cancellation is checked between phases, and
/// the first phase that failed on any host ends the run (its other hosts
/// finished their step). Every action (apply, restore, rollback) runs this.
pub async fn run_in_order(
    ctx: &Ctx<'_>,
    phases: &[Box<dyn Phase + '_>],
    skip: &[String],
) -> Result<(), PhaseError> {
    for phase in phases {
        if skip.iter().any(|s| s == phase.name()) {
            continue;
        }
        let n = phase.hosts(ctx);
        if n == 0 {
            continue;
        }
        if ctx.cancel.is_cancelled() {
            return Err(PhaseError {
                phase: phase.name(),
                failures: vec![(
                    "all".into(),
                    StepError::Cancelled {
                        step: phase.name().into(),
                    },
                )],
            });
        }
        ctx.reporter.phase(phase.name(), phase.title(), n);
        phase.run(ctx).await?;
    }
    Ok(())
}

/// One host's result in [`for_each`]: its position, name and outcome.
type Outcome = (usize, String, Result<(), StepError>);

/// Runs `work` on each selected target with at most `ctx.concurrency` at
/// once; collects every failure (in inventory order) instead of stopping at
/// the first, so one report names every broken host.
pub async fn for_each<'a, F>(
    ctx: &'a Ctx<'a>,
    phase: &'static str,
    targets: Vec<&'a Target>,
    work: F,
) -> Result<(), PhaseError>
where
    F: Fn(&'a Target) -> BoxFuture<'a, Result<(), StepError>>,
{
    // Futures are built up front and boxed (they are lazy: nothing runs
    // until polled), so the stream holds no closure types; that keeps the
    // whole future provably `Send` for the multi-threaded runtime.
    let futures: Vec<BoxFuture<'a, Outcome>> = targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let work = work(t);
            let fut: BoxFuture<'a, _> = Box::pin(async move {
                let r = if ctx.cancel.is_cancelled() {
                    Err(StepError::Cancelled {
                        step: phase.to_string(),
                    })
                } else {
                    work.await
                };
                ctx.reporter.done(&t.host.name);
                (i, t.host.name.clone(), r)
            });
            fut
        })
        .collect();
    let mut results: Vec<Outcome> = stream::iter(futures)
        .buffer_unordered(ctx.concurrency.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _, _)| *i);
    let failures: Vec<(String, StepError)> = results
        .into_iter()
        .filter_map(|(_, host, r)| r.err().map(|e| (host, e)))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(PhaseError { phase, failures })
    }
}

/// Runs a script as one named step: reports it, checks cancellation first,
/// and turns a non-zero exit into [`StepError::Script`] with stderr's last line.
pub async fn step(
    ctx: &Ctx<'_>,
    t: &Target,
    step: &str,
    script: &str,
    input: Input,
) -> Result<Output, StepError> {
    if ctx.cancel.is_cancelled() {
        return Err(StepError::Cancelled {
            step: step.to_string(),
        });
    }
    ctx.reporter.step(&t.host.name, step);
    let out = t.remote.run(script, input).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(StepError::Script {
            step: step.to_string(),
            status: out
                .status
                .map_or_else(|| "signal".to_string(), |s| s.to_string()),
            stderr: out.stderr_tail(),
        })
    }
}
