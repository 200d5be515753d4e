//! CA and service-account key rotation as data: the runbook's journal
//! steps, its plan, and the scripts it runs on hosts. Pure;
//! `crate::actions::rotate` runs it.
//!
//! A rotation moves the state dir through the stages of
//! [`crate::pki::rotation`] and rolls each stage out to every host with
//! `apply` (etcd members one at a time behind cluster health, control
//! planes one at a time behind `/readyz`). A host journals a step once the
//! rollout that carries it succeeded on every host, so `--resume` starts
//! again at the first step some host has not recorded.

pub mod etcd_scan;
pub mod rewrite;

use serde::{Deserialize, Serialize};

use crate::engine::runbook::{journal_path, journal_prelude, JournalStep};
use crate::pki::rotation::{Rotated, Stage};
use crate::remote::script::at;

/// Names the journals (`/var/lib/rampart/<kind>/<id>.journal`) and the
/// saved plans (`<state dir>/<kind>s/<id>.json`): `rotate-ca` for the CAs,
/// `rotate-sa-key` for the service-account key.
pub fn kind(what: Rotated) -> &'static str {
    match what {
        Rotated::ServiceAccountKey => "rotate-sa-key",
        Rotated::EncryptionKey => "rotate-encryption-key",
        _ => "rotate-ca",
    }
}

/// The command that rotates `what`, for messages.
pub fn command(what: Rotated) -> String {
    match what {
        Rotated::ServiceAccountKey => "rampart rotate service-account-key".into(),
        Rotated::EncryptionKey => "rampart rotate encryption-key".into(),
        ca => format!("rampart rotate ca --ca {}", ca.as_str()),
    }
}

/// A step every host records once the fleet carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Every trust bundle holds the old and the new CA.
    AddNew,
    /// Every leaf of the CA is reissued under the new one.
    Reissue,
    /// Every value the old encryption key encrypts is rewritten under the
    /// new one (encryption key only).
    Rewrite,
    /// The old CA is gone from every bundle.
    DropOld,
    /// The state dir keeps the new CA alone; the rotation is over.
    Finish,
    /// Rollback: the bundles hold both CAs again.
    RestoreOld,
    /// Rollback: the leaves are reissued under the old CA.
    ReissueOld,
    /// Rollback: every value the new encryption key encrypts is rewritten
    /// under the old one.
    RewriteOld,
    /// Rollback: the new CA is gone from every bundle; the rotation is over.
    ForgetNew,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::AddNew => "add-new",
            Step::Reissue => "reissue",
            Step::Rewrite => "rewrite",
            Step::DropOld => "drop-old",
            Step::Finish => "finish",
            Step::RestoreOld => "restore-old",
            Step::ReissueOld => "reissue-old",
            Step::RewriteOld => "rewrite-old",
            Step::ForgetNew => "forget-new",
        }
    }

    /// The state-dir stage this step rolls out (a rewrite works within one).
    pub fn stage(self) -> Stage {
        match self {
            Step::AddNew | Step::ReissueOld | Step::RewriteOld => Stage::AddNew,
            Step::Reissue | Step::RestoreOld | Step::Rewrite => Stage::Reissue,
            Step::DropOld => Stage::DropOld,
            Step::Finish => Stage::Done,
            Step::ForgetNew => Stage::RolledBack,
        }
    }

    /// What hosts trust and what signs once the step is done, for the plan.
    pub fn effect(self, what: Rotated) -> String {
        if what == Rotated::EncryptionKey {
            return match self {
                Step::AddNew => "generate a new encryption key; every apiserver decrypts with old + new".into(),
                Step::Reissue => "encrypt new writes with the new key".into(),
                Step::Rewrite => "rewrite every Secret the etcd scan finds under the old key, until it finds none".into(),
                Step::DropOld => "drop the old key once a scan of etcd finds no value it encrypts".into(),
                Step::Finish => "keep the new key alone in the state dir".into(),
                Step::RestoreOld => "decrypt with old + new again".into(),
                Step::ReissueOld => "encrypt new writes with the old key again".into(),
                Step::RewriteOld => "rewrite every Secret the new key encrypts under the old one".into(),
                Step::ForgetNew => "drop the new key once a scan of etcd finds no value it encrypts".into(),
            };
        }
        if what == Rotated::ServiceAccountKey {
            return match self {
                Step::AddNew => "generate a new service-account key; every apiserver verifies with old + new".into(),
                Step::Reissue => "sign tokens with the new key (both still verify)".into(),
                Step::DropOld => "drop the old key once every token it signed has expired".into(),
                Step::Finish => "keep the new key alone in the state dir".into(),
                Step::RestoreOld => "verify with old + new again".into(),
                Step::ReissueOld => "sign tokens with the old key again".into(),
                Step::ForgetNew => "drop the new key (once the tokens it signed have expired) from every apiserver and the state dir".into(),
                Step::Rewrite | Step::RewriteOld => "(only for the encryption key)".into(),
            };
        }
        let ca = what.as_str();
        match self {
            Step::AddNew => format!("generate a new {ca} CA; every bundle trusts old + new"),
            Step::Reissue => format!("reissue every {ca} leaf under the new CA (new keys)"),
            Step::DropOld => format!("drop the old {ca} CA from every bundle"),
            Step::Finish => "keep the new CA alone in the state dir".into(),
            Step::RestoreOld => "every bundle trusts old + new again".into(),
            Step::ReissueOld => format!("reissue every {ca} leaf under the old CA"),
            Step::ForgetNew => "drop the new CA from every bundle and the state dir".into(),
            Step::Rewrite | Step::RewriteOld => "(only for the encryption key)".into(),
        }
    }

    /// Whether this step takes the old or the new CA or key out of what
    /// hosts trust: what must no longer be in use first (the gates in
    /// `crate::actions::rotate::tokens` and `kubelets`).
    pub fn narrows_trust(self) -> bool {
        matches!(self, Step::DropOld | Step::ForgetNew)
    }
}

impl JournalStep for Step {
    const ALL: &'static [Step] = &[
        Step::AddNew,
        Step::Reissue,
        Step::Rewrite,
        Step::DropOld,
        Step::Finish,
        Step::RestoreOld,
        Step::ReissueOld,
        Step::RewriteOld,
        Step::ForgetNew,
    ];
    fn name(self) -> &'static str {
        Step::name(self)
    }
}

/// The forward steps of rotating `what`, in order.
pub fn forward(what: Rotated) -> &'static [Step] {
    match what {
        Rotated::EncryptionKey => &[
            Step::AddNew,
            Step::Reissue,
            Step::Rewrite,
            Step::DropOld,
            Step::Finish,
        ],
        _ => &[Step::AddNew, Step::Reissue, Step::DropOld, Step::Finish],
    }
}

/// The rollback's steps, in order (each undoes one forward step, last first).
pub fn backward(what: Rotated) -> &'static [Step] {
    match what {
        Rotated::EncryptionKey => &[
            Step::RestoreOld,
            Step::ReissueOld,
            Step::RewriteOld,
            Step::ForgetNew,
        ],
        _ => &[Step::RestoreOld, Step::ReissueOld, Step::ForgetNew],
    }
}

/// What a rotation run does, as data: shown by `--dry-run`, saved before
/// the first host changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationPlan {
    pub id: String,
    /// What it rotates (`ca` in plans saved before the service-account key
    /// could be rotated).
    #[serde(alias = "ca")]
    pub rotates: Rotated,
    /// `rotate` (a new or resumed run) or `rollback`.
    pub direction: Direction,
    /// Where the state dir stands now (None: no rotation recorded).
    pub stage: Option<Stage>,
    /// Every host of the inventory: each rollout converges all of them.
    pub hosts: Vec<String>,
    /// The leaves the CA signs (reissued by `reissue` and `reissue-old`).
    pub leaves: Vec<String>,
    /// The encryption key: what a scan of etcd found when the plan was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<etcd_scan::Scan>,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Rotate,
    Rollback,
}

/// One step of the plan and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub step: Step,
    pub effect: String,
    /// Every host recorded it already: the run skips it.
    pub done: bool,
    /// The earliest it may run (RFC 3339, UTC), when it waits for tokens
    /// to expire; None when it need not wait or its wait starts later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
}

/// Prints each host's journal of run `id` of `kind` (empty when there is none).
pub fn read_journal(kind: &str, id: &str) -> String {
    format!("cat {} 2>/dev/null || true\n", at(&journal_path(kind, id)))
}

/// Records `step` in the journal of run `id` of `kind`.
pub fn note(kind: &str, id: &str, step: Step) -> String {
    let mut s = journal_prelude(kind, id);
    s.push_str(&format!("note {}\n", step.name()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runbook::parse_journal;

    #[test]
    fn each_step_rolls_out_its_stage_and_the_journal_names_round_trip() {
        let stages: Vec<Stage> = forward(Rotated::Etcd).iter().map(|s| s.stage()).collect();
        assert_eq!(
            stages,
            [Stage::AddNew, Stage::Reissue, Stage::DropOld, Stage::Done]
        );
        let back: Vec<Stage> = backward(Rotated::Etcd).iter().map(|s| s.stage()).collect();
        assert_eq!(back, [Stage::Reissue, Stage::AddNew, Stage::RolledBack]);
        let text: String = Step::ALL
            .iter()
            .map(|s| format!("{}\t2026-12-02T10:00:00Z\n", s.name()))
            .collect();
        assert_eq!(parse_journal::<Step>(&text), Step::ALL);
    }

    #[test]
    fn the_note_script_appends_one_line_to_this_runs_journal() {
        let s = note("rotate-ca", "20261202T100000Z", Step::Reissue);
        assert!(s.contains("/var/lib/rampart/rotate-ca/20261202T100000Z.journal"));
        assert!(s.trim_end().ends_with("note reissue"), "{s}");
    }
}
