//! The rotation's steps. Every step but the encryption key's rewrite,
//! forward or back, is the same shape ([`Carry`]): check the gates of a
//! step that narrows trust, move the state dir to the step's stage, roll
//! that out to every host with `apply`, then journal the step on every
//! host. Which steps still have to run: [`super::progress`].

use time::OffsetDateTime;

use crate::actions::apply::{self, ApplyOptions};
use crate::engine::runbook::new_id;
use crate::engine::{Env, Phase, PhaseError};
use crate::pki::rotation::{self, Rotated};
use crate::remote::BoxFuture;
use crate::rotate::Step;

use super::progress::{journal, needed, to_phase_error};
use super::{Rollout, RotateError, RotateRun};

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
