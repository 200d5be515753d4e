//! The rotation's steps. Every step, forward or back, is the same shape
//! ([`Carry`]): move the state dir to the step's stage, roll that out to
//! every host with `apply`, then journal the step on every host. Which
//! steps still have to run is read from the journals and the state dir
//! ([`needed`]), so a resumed run or a rollback does exactly what is left.

use time::OffsetDateTime;

use crate::actions::apply::{self, ApplyOptions};
use crate::engine::runbook::new_id;
use crate::engine::{each, step, Env, Phase, PhaseError};
use crate::pki::rotation::{self, Rotated, Rotation, Stage};
use crate::remote::{BoxFuture, Input};
use crate::rotate::Step;

use super::{Rollout, RotateError, RotateRun};

/// Whether `step` still has to run in `run` (see [`needs`]).
pub(super) fn needed(run: &RotateRun, step: Step) -> bool {
    needs(step, !run.without(step).is_empty(), run.own_marker())
}

/// Whether `step` still has to run, given whether some host has not
/// journaled it and this run's record in the state dir: forward steps until
/// every host journaled them; a rollback's steps only from the stages they
/// undo (never moving the state dir forward), and only if the rotation got
/// as far as the step they undo.
fn needs(step: Step, pending: bool, marker: Option<&Rotation>) -> bool {
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

/// One step of the rotation (see the module doc).
pub struct Carry {
    pub step: Step,
    pub what: Rotated,
}

impl Phase<RotateRun<'_>> for Carry {
    fn name(&self) -> &'static str {
        self.step.name()
    }
    fn title(&self) -> &'static str {
        if self.what == Rotated::EncryptionKey {
            return match self.step {
                Step::AddNew => "decrypt with the new key too",
                Step::Reissue => "encrypt with the new key",
                Step::DropOld => "stop decrypting with the old key",
                Step::Finish => "keep the new key alone",
                Step::RestoreOld => "decrypt with the old key again",
                Step::ReissueOld => "encrypt with the old key again",
                Step::ForgetNew => "stop decrypting with the new key",
                Step::Rewrite | Step::RewriteOld => "rewrite Secrets",
            };
        }
        if self.what == Rotated::ServiceAccountKey {
            return match self.step {
                Step::AddNew => "verify tokens with the new key too",
                Step::Reissue => "sign tokens with the new key",
                Step::DropOld => "stop verifying with the old key",
                Step::Finish => "keep the new key alone",
                Step::RestoreOld => "verify with the old key again",
                Step::ReissueOld => "sign tokens with the old key again",
                Step::ForgetNew => "stop verifying with the new key",
                Step::Rewrite | Step::RewriteOld => "rewrite Secrets",
            };
        }
        match self.step {
            Step::AddNew => "trust the new CA beside the old one",
            Step::Reissue => "reissue the leaves under the new CA",
            Step::DropOld => "stop trusting the old CA",
            Step::Finish => "keep the new CA alone",
            Step::RestoreOld => "trust the old CA again",
            Step::ReissueOld => "reissue the leaves under the old CA",
            Step::ForgetNew => "stop trusting the new CA",
            Step::Rewrite | Step::RewriteOld => "rewrite Secrets",
        }
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &RotateRun) -> usize {
        if needed(s, self.step) {
            s.reach.hosts.len()
        } else {
            0
        }
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RotateRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let r = carry(env, s, self.step).await;
            to_phase_error(s, self.step, r)
        })
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

async fn carry(env: &Env<'_>, s: &mut RotateRun<'_>, the: Step) -> Result<(), RotateError> {
    let now = OffsetDateTime::now_utc();
    // Before a step narrows trust: nothing may still need what it drops.
    super::tokens::gate(env, s, the, now).await?;
    super::kubelets::gate(env, s, the).await?;
    super::encryption::gate(env, s, the).await?;
    let r = &s.rollout;
    let t = rotation::advance(env.inv, &r.dir, r.unlock, s.what, &s.id, the.stage(), now)?;
    if !t.reissued.is_empty() {
        env.reporter.line(
            "state dir",
            &format!(
                "reissued {}",
                crate::words::count(t.reissued.len(), "certificate")
            ),
        );
    }
    // `done` changes which files hold the CA or key, not what hosts get.
    if the != Step::Finish {
        let changed = roll_out(env, &s.rollout, now).await?;
        s.changed.push((the, changed));
        // Every host carries the stage from now: a dropped signer's wait starts.
        rotation::settle(&s.rollout.dir, s.what, &s.id, OffsetDateTime::now_utc())?;
    }
    s.marker = rotation::rotation(&s.rollout.dir, s.what.state_name())?;
    journal(env, s, the).await
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

/// Renders what the state dir holds now and converges every host to it
/// with `apply`'s phases; returns how many hosts changed.
pub async fn roll_out(
    env: &Env<'_>,
    r: &Rollout<'_>,
    now: OffsetDateTime,
) -> Result<usize, RotateError> {
    let (pki, _) = crate::pki::init(env.inv, &r.dir, r.unlock, now)?;
    let bundle = crate::render::render(env.inv, &pki)?;
    let o = ApplyOptions {
        stamp: new_id(now),
        admin_time: now.unix_timestamp(),
        bootstrap: Some(crate::pki::super_admin_kubeconfig(env.inv, &pki)),
        ..r.options.clone()
    };
    let mut run =
        apply::prepare(env.inv, &bundle, r.connector, &o, env.reporter, env.cancel).await?;
    let result = apply::execute(env.inv, &mut run, &o, env.reporter, env.cancel).await;
    let changed = run.targets.iter().filter(|t| !t.plan.is_noop()).count();
    run.release().await;
    result?;
    Ok(changed)
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
