//! Phases: the named steps a command runs in order, over the command's own
//! state `S`.
//!
//! One list of phases is the single definition of a command's work: the run
//! order, the names `--skip-phases` accepts, the help text listing them and
//! the table in the docs are all read off it (see [`catalogue`]), so they
//! cannot disagree (kubeadm's phase tree is the model). A phase reads the
//! state and may write its typed results into it (connect fills the fleet,
//! facts the plan, a check its findings): nothing is handed back through
//! side channels.

use super::error::PhaseError;
use super::fleet::Env;
use crate::remote::BoxFuture;

/// One step of a command's work on hosts.
pub trait Phase<S>: Send + Sync {
    /// The name `--skip-phases` takes and progress shows.
    fn name(&self) -> &'static str;
    /// One line for humans: progress, `--help` and the docs.
    fn title(&self) -> &'static str;
    /// Whether `--skip-phases` may leave it out (connecting, locking and
    /// reading facts cannot be: everything after needs them).
    fn skippable(&self) -> bool {
        true
    }
    /// The hosts this phase touches; a phase with none is not run.
    fn hosts(&self, state: &S) -> usize;
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        state: &'a mut S,
    ) -> BoxFuture<'a, Result<(), PhaseError>>;
}

/// A boxed phase over state `S`, as lists hold them.
pub type BoxPhase<'p, S> = Box<dyn Phase<S> + 'p>;

/// A phase's name, title and whether it can be skipped: what help and docs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PhaseInfo {
    pub name: &'static str,
    pub title: &'static str,
    pub skippable: bool,
}

/// The list's phases as help and docs show them, in run order.
pub fn catalogue<S>(phases: &[BoxPhase<'_, S>]) -> Vec<PhaseInfo> {
    phases
        .iter()
        .map(|p| PhaseInfo {
            name: p.name(),
            title: p.title(),
            skippable: p.skippable(),
        })
        .collect()
}

/// Why a `--skip-phases` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipError {
    #[error("unknown phase `{name}` in --skip-phases; phases are: {known}")]
    Unknown { name: String, known: String },
    #[error("the phase `{0}` cannot be skipped: every other phase needs what it does")]
    NotSkippable(String),
}

/// Checks `skip` against the list: every name known and skippable.
pub fn check_skips<S>(phases: &[BoxPhase<'_, S>], skip: &[String]) -> Result<(), SkipError> {
    for s in skip {
        match phases.iter().find(|p| p.name() == s) {
            None => {
                return Err(SkipError::Unknown {
                    name: s.clone(),
                    known: phases
                        .iter()
                        .filter(|p| p.skippable())
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            Some(p) if !p.skippable() => return Err(SkipError::NotSkippable(s.clone())),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Runs `phases` in order over `state`, leaving out those named in `skip` and
/// those with no host to work on; cancellation is checked between phases, and
/// the first phase that failed on any host ends the run (its other hosts
/// finished their step). Every command runs its phases through this.
pub async fn run_in_order<S: Send>(
    env: &Env<'_>,
    state: &mut S,
    phases: &[BoxPhase<'_, S>],
    skip: &[String],
) -> Result<(), PhaseError> {
    let phases: Vec<&dyn Phase<S>> = phases.iter().map(|p| &**p).collect();
    run_phases(env, state, &phases, skip).await
}

/// [`run_in_order`] over borrowed phases (a runbook's steps or undos).
pub async fn run_phases<S: Send>(
    env: &Env<'_>,
    state: &mut S,
    phases: &[&dyn Phase<S>],
    skip: &[String],
) -> Result<(), PhaseError> {
    for phase in phases {
        if skip.iter().any(|s| s == phase.name()) {
            continue;
        }
        let n = phase.hosts(state);
        if n == 0 {
            continue;
        }
        if env.cancel.is_cancelled() {
            return Err(PhaseError::cancelled_before(phase.name()));
        }
        env.reporter.phase(phase.name(), phase.title(), n);
        phase.run(env, state).await?;
    }
    Ok(())
}
