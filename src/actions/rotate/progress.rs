//! Where a rotation run stands: which steps still have to run (from the
//! hosts' journals and the state dir's record), recording a step as done
//! on every host, and how a step's failure reaches the engine. Shared by
//! both phase types ([`super::phases::Carry`], [`super::encryption::Rewrite`]).

use crate::engine::{each, step, Env, PhaseError};
use crate::pki::rotation::{Rotation, Stage};
use crate::remote::Input;
use crate::rotate::Step;

use super::{RotateError, RotateRun};

/// Whether `step` still has to run in `run` (see [`needs`]).
pub(super) fn needed(run: &RotateRun, step: Step) -> bool {
    needs(step, !run.without(step).is_empty(), run.own_marker())
}

/// Whether `step` still has to run, given whether some host has not
/// journaled it and this run's record in the state dir: forward steps until
/// every host journaled them; a rollback's steps only from the stages they
/// undo (never moving the state dir forward), and only if the rotation got
/// as far as the step they undo.
pub(super) fn needs(step: Step, pending: bool, marker: Option<&Rotation>) -> bool {
    let at = |stages: &[Stage]| marker.is_some_and(|m| stages.contains(&m.stage));
    let reached = |stage: Stage| marker.is_some_and(|m| m.furthest >= stage);
    match step {
        // A rewrite runs again whenever its stage holds (journaled or not):
        // it is one etcd scan when nothing is left, and the gate of the
        // step after it sends a resumed run back through it.
        Step::Rewrite => at(&[Stage::Reissue]),
        Step::RewriteOld => at(&[Stage::AddNew]) && reached(Stage::Reissue),
        _ if !pending => false,
        Step::AddNew | Step::Reissue | Step::DropOld | Step::Finish => true,
        Step::RestoreOld => at(&[Stage::DropOld, Stage::Reissue]) && reached(Stage::DropOld),
        Step::ReissueOld => at(&[Stage::Reissue, Stage::AddNew]) && reached(Stage::Reissue),
        Step::ForgetNew => at(&[Stage::AddNew, Stage::RolledBack]),
    }
}

/// A step's result as the engine takes it: a host's failure as is; one on
/// this machine (the state dir, render, a gate) kept whole in `s.fault`
/// for `execute` to report, behind a failed phase with no host.
pub(super) fn to_phase_error(
    s: &mut RotateRun<'_>,
    the: Step,
    r: Result<(), RotateError>,
) -> Result<(), PhaseError> {
    match r {
        Ok(()) => Ok(()),
        Err(RotateError::Hosts(e)) => Err(e),
        Err(other) => {
            s.fault = Some(other);
            Err(PhaseError {
                phase: the.name(),
                failures: Vec::new(),
            })
        }
    }
}

/// Records `the` step in this run's journal on every host.
pub(super) async fn journal(
    env: &Env<'_>,
    s: &mut RotateRun<'_>,
    the: Step,
) -> Result<(), RotateError> {
    let text = &crate::rotate::note(crate::rotate::kind(s.what), &s.id, the);
    each(
        env,
        the.name(),
        s.reach.fleet.members().iter().collect(),
        |m| Box::pin(async move { step(env, m, "journal", text, Input::None).await.map(drop) }),
    )
    .await?;
    for h in &s.reach.hosts {
        s.journals.entry(h.name.clone()).or_default().push(the);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stage: Stage, furthest: Stage) -> Option<Rotation> {
        Some(Rotation {
            id: "20261202T100000Z".into(),
            stage,
            furthest,
            settled_at: None,
        })
    }

    /// A rollback undoes exactly what the rotation got to, in order, and
    /// never moves the state dir forward; a journaled step is never redone.
    #[test]
    fn a_rollback_undoes_only_what_happened() {
        use Stage::{AddNew, Done, DropOld, Reissue, RolledBack};
        use Step::{ForgetNew, ReissueOld, RestoreOld};
        let rollback = |m: Option<Rotation>| -> Vec<Step> {
            [RestoreOld, ReissueOld, ForgetNew]
                .into_iter()
                .filter(|s| needs(*s, true, m.as_ref()))
                .collect()
        };
        assert_eq!(rollback(None), []);
        assert_eq!(rollback(at(AddNew, AddNew)), [ForgetNew]);
        assert_eq!(rollback(at(Reissue, Reissue)), [ReissueOld]);
        assert_eq!(rollback(at(DropOld, DropOld)), [RestoreOld]);
        // Stopped after restore-old moved the state dir, before its rollout
        // finished: restore-old again (hosts may still trust the new CA
        // alone), then the rest.
        assert_eq!(rollback(at(Reissue, DropOld)), [RestoreOld, ReissueOld]);
        // Stopped inside reissue-old: never reissue forward again.
        assert_eq!(rollback(at(AddNew, DropOld)), [ReissueOld, ForgetNew]);
        assert_eq!(rollback(at(RolledBack, RolledBack)), [ForgetNew]);
        assert_eq!(rollback(at(Done, Done)), []);
        assert!(!needs(Step::AddNew, false, at(AddNew, AddNew).as_ref()));
        // A rewrite runs again while its stage holds, journaled or not (one
        // scan when nothing is left), and never outside it.
        assert!(needs(Step::Rewrite, false, at(Reissue, Reissue).as_ref()));
        assert!(!needs(Step::Rewrite, true, at(DropOld, DropOld).as_ref()));
        assert!(needs(Step::RewriteOld, false, at(AddNew, DropOld).as_ref()));
        assert!(!needs(Step::RewriteOld, true, at(AddNew, AddNew).as_ref()));
        assert!(needs(Step::Reissue, true, at(AddNew, AddNew).as_ref()));
    }
}
