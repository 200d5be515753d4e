//! The encryption key's own steps and gate: rewriting Secrets so the key
//! that encrypts now encrypts all of them, and never dropping a key a value
//! in etcd still needs.
//!
//! Both start from a scan of etcd itself ([`crate::rotate::etcd_scan`], on
//! an etcd member): the key name is in every encrypted value's prefix, so
//! the scan says exactly which values the leaving key (the one that only
//! decrypts at this stage) still encrypts. The rewrite sends those Secrets
//! through the API ([`crate::rotate::rewrite`], on a control-plane host)
//! and scans again, until the scan finds none; stopped half way, it starts
//! from a fresh scan with what is left. `drop-old` and `forget-new` scan
//! first and refuse while one value remains, whatever the journals say.

use crate::engine::{step, Env, Phase, PhaseError, Reachable};
use crate::pki::rotation::Rotated;
use crate::remote::{BoxFuture, Input};
use crate::rotate::etcd_scan::{self, Scan};
use crate::rotate::rewrite;
use crate::rotate::Step;

use super::progress::{journal, needed};
use super::{RotateError, RotateRun};

/// Scan, rewrite, scan again: at most this many rounds. Each round only
/// has what the previous left (values a concurrent writer stored with
/// the old key, or a batch a conflict refused), so more means something
/// still writes with the old key.
const ROUNDS: usize = 5;

/// Batches per round trip to the control-plane host.
const BATCHES_PER_TRIP: usize = 10;

/// `rewrite` (forward) or `rewrite-old` (rollback).
pub struct Rewrite(pub Step);

impl Phase<RotateRun<'_>> for Rewrite {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn title(&self) -> &'static str {
        match self.0 {
            Step::RewriteOld => "rewrite Secrets under the old key",
            _ => "rewrite Secrets under the new key",
        }
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &RotateRun) -> usize {
        usize::from(needed(s, self.0))
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut RotateRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            if !needed(s, self.0) {
                return Ok(());
            }
            let r = match rewrite_all(env, s, self.0).await {
                Ok(()) => journal(env, s, self.0).await,
                Err(e) => Err(e),
            };
            super::progress::to_phase_error(s, self.0, r)
        })
    }
}

/// The name of the key that only decrypts at the current stage: the one
/// a rewrite moves values off and the next step drops.
fn leaving(s: &RotateRun) -> Result<String, RotateError> {
    let names = crate::pki::key_views::encryption_names(&s.rollout.dir)?;
    names.get(1).cloned().ok_or_else(|| RotateError::Rewrite {
        step: "rewrite",
        reason: "the state dir holds one encryption key only: no rotation is under way".into(),
    })
}

/// Scans etcd on the first etcd member, watching `name`.
async fn scan(env: &Env<'_>, s: &RotateRun<'_>, name: &str) -> Result<Scan, RotateError> {
    let member = s
        .first_with(|r| r.etcd)
        .ok_or_else(|| RotateError::Rewrite {
            step: "scan",
            reason: "no etcd member is reachable to scan".into(),
        })?;
    let out = step(
        env,
        member,
        "scan etcd",
        &etcd_scan::script(env.inv, member.host(), name),
        Input::None,
    )
    .await
    .map_err(|e| RotateError::Rewrite {
        step: "scan",
        reason: format!("{}: {e}", member.host().name),
    })?;
    let scan = etcd_scan::parse(&out.stdout_text());
    env.reporter.line(
        &member.host().name,
        &format!(
            "etcd: {} values, {} under key {name}",
            scan.values,
            scan.under(name)
        ),
    );
    Ok(scan)
}

async fn rewrite_all(env: &Env<'_>, s: &RotateRun<'_>, the: Step) -> Result<(), RotateError> {
    let name = leaving(s)?;
    let fail = |reason: String| RotateError::Rewrite {
        step: the.name(),
        reason,
    };
    let cp = s
        .first_with(|r| r.control_plane)
        .ok_or_else(|| fail("no control-plane host is reachable to rewrite through".into()))?;
    let mut before: Option<usize> = None;
    for _ in 0..ROUNDS {
        let found = scan(env, s, &name).await?;
        let left = found.watched.len();
        if left == 0 {
            return Ok(());
        }
        if before.is_some_and(|b| left >= b) {
            return Err(fail(format!(
                "{left} values are still under key {name} after a rewrite: is an apiserver still encrypting with it?"
            )));
        }
        before = Some(left);
        let (by_ns, other) = rewrite::secrets(&found.watched);
        if !other.is_empty() {
            return Err(fail(format!(
                "values that are not Secrets are under key {name} (rampart's EncryptionConfiguration covers Secrets only): {}",
                other.join(", ")
            )));
        }
        let mut done = 0;
        let mut failed = Vec::new();
        for trip in rewrite::batches(&by_ns, rewrite::BATCH).chunks(BATCHES_PER_TRIP) {
            let out = step(
                env,
                cp,
                "rewrite Secrets",
                &rewrite::script(env.inv, trip),
                Input::None,
            )
            .await
            .map_err(|e| fail(format!("{}: {e}", cp.host().name)))?;
            let (n, f) = rewrite::parse(&out.stdout_text());
            done += n;
            failed.extend(f);
            env.reporter
                .line(&cp.host().name, &format!("rewritten {done}/{left}"));
        }
        if !failed.is_empty() {
            env.reporter.line(
                &cp.host().name,
                &format!(
                    "kubectl refused a batch in {} (scanning again)",
                    failed.join(", ")
                ),
            );
        }
    }
    Err(fail(format!(
        "values are still under key {name} after {ROUNDS} rounds"
    )))
}

/// For the plan of an encryption-key rotation: what etcd holds under each
/// key now (None for the other rotations).
pub(super) async fn census(env: &Env<'_>, s: &RotateRun<'_>) -> Result<Option<Scan>, RotateError> {
    if s.what != Rotated::EncryptionKey {
        return Ok(None);
    }
    let names = crate::pki::key_views::encryption_names(&s.rollout.dir)?;
    let watch = names.last().cloned().unwrap_or_default();
    scan(env, s, &watch).await.map(Some)
}

/// Refuses `the` step of an encryption-key rotation while the key it
/// drops still encrypts a value in etcd.
pub(super) async fn gate(env: &Env<'_>, s: &RotateRun<'_>, the: Step) -> Result<(), RotateError> {
    if s.what != Rotated::EncryptionKey || !the.narrows_trust() {
        return Ok(());
    }
    // A rollback before `add-new` finished has no second key to check.
    let Ok(name) = leaving(s) else {
        return Ok(());
    };
    let found = scan(env, s, &name).await?;
    match found.under(&name) {
        0 => Ok(()),
        n => Err(RotateError::Rewrite {
            step: the.name(),
            reason: format!(
                "{n} values in etcd are still encrypted with key {name}, which this step would drop; resume to rewrite them first"
            ),
        }),
    }
}
