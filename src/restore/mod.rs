//! `rampart backup restore`: bring a whole etcd cluster back from one backup.
//!
//! The pure parts live here, so `--dry-run`, the golden tests and the run
//! itself share them; [`crate::actions::restore`] connects, locks and runs the
//! phases.
//!
//! - `plan`: the [`RestorePlan`] (data, serde) from the inventory, the verified
//!   snapshot's metadata and each host's restore facts; also the rollback plan.
//! - `journal`: the steps a member records in `/var/lib/rampart/restore/<id>.journal`,
//!   which `--resume` and `--rollback` read back.
//! - `script`: the `sh` scripts of each step (pure strings, golden-tested).

pub mod journal;
pub mod plan;
pub mod script;

pub use journal::Step;
pub use plan::{
    plan_restore, plan_resume, plan_rollback, MemberPlan, PlanError, RestoreFacts, RestorePlan,
    RollbackPlan, SnapshotMeta, Tool,
};

/// The runbook's kind: names its journals (`/var/lib/rampart/restore/`) and
/// its saved plans (`<state dir>/restores/`).
pub const RUNBOOK: &str = "restore";

/// Where every member's data lives (the unit's `--data-dir`).
pub const DATA_DIR: &str = "/var/lib/etcd";
/// Journals, uploaded snapshots and partial restores on the members.
pub const RESTORE_DIR: &str = "/var/lib/rampart/restore";

/// `/var/lib/etcd.pre-restore-<id>`: the data dir as it was before restore `id`.
pub fn pre_restore_dir(id: &str) -> String {
    format!("{DATA_DIR}.pre-restore-{id}")
}

/// `/var/lib/etcd.rolled-back-<stamp>`: a restored data dir a rollback set aside.
pub fn rolled_back_dir(stamp: &str) -> String {
    format!("{DATA_DIR}.rolled-back-{stamp}")
}

/// The member's journal of restore `id`.
pub fn journal_path(id: &str) -> String {
    crate::engine::runbook::journal_path(RUNBOOK, id)
}

/// Where the plaintext snapshot is uploaded (0600, removed once restored).
pub fn upload_path(id: &str) -> String {
    format!("{RESTORE_DIR}/{id}.db")
}

/// A restore id: `YYYYmmddTHHMMSSZ` (UTC), also the token suffix and the
/// moved-aside dir's suffix (see [`crate::engine::runbook::valid_id`]).
pub use crate::engine::runbook::valid_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stamps_only() {
        assert!(valid_id("20261130T150000Z"));
        assert!(!valid_id("20261130T150000"));
        assert!(!valid_id("../../etc/passwdZ"));
        assert_eq!(
            pre_restore_dir("20261130T150000Z"),
            "/var/lib/etcd.pre-restore-20261130T150000Z"
        );
    }
}
