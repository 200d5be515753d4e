//! The restore runbook: its steps in order, and what undoes each. A new or
//! resumed restore runs the steps; `--rollback` runs the undo phases of
//! every step, the last step's first, which gives the rollback's order:
//! hold and stop the control planes, then etcd, fence, put the pre-restore
//! data back, start etcd, start the control planes that ran, release the
//! others, and journal `rolled-back`.
//!
//! Why this order (it is the safety argument): nothing on any host changes
//! before the backup decrypted, matched its manifest and read as a sound
//! snapshot (checked before the runbook starts); every control plane is held
//! and stopped before etcd goes, so nothing writes and nothing can come
//! back; each host proves nothing held has run since before any data moves;
//! data dirs are only ever renamed, never deleted.

use super::phases::{
    done, move_aside, put_back, release_idle, started, stop_control_planes, stop_etcd,
    CheckRestored, Fence, RestartControlPlanes, RestoreMembers, StartMembers,
};
use super::RestoreRun;
use crate::engine::runbook::{Runbook, RunbookStep};
use crate::restore::Step;

pub use crate::restore::RUNBOOK as KIND;

/// The restore, step by step, each with its undo.
pub fn restore<'p, 'r: 'p>() -> Runbook<'p, RestoreRun<'r>> {
    Runbook {
        kind: KIND,
        steps: vec![
            RunbookStep::new(started()).undone_by(done(Step::RolledBack)),
            RunbookStep::new(stop_control_planes())
                .undone_by(RestartControlPlanes)
                .undone_by(release_idle()),
            RunbookStep::new(stop_etcd()).undone_by(StartMembers),
            RunbookStep::new(Fence),
            RunbookStep::new(move_aside()).undone_by(put_back()),
            // The restored data dir needs no undo of its own: putting the
            // pre-restore one back sets it aside.
            RunbookStep::new(RestoreMembers),
            RunbookStep::new(StartMembers)
                .undone_by(stop_etcd())
                .undone_by(Fence),
            RunbookStep::new(CheckRestored),
            RunbookStep::new(RestartControlPlanes).undone_by(stop_control_planes()),
            RunbookStep::new(release_idle()),
            RunbookStep::new(done(Step::Done)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(phases: Vec<&dyn crate::engine::Phase<RestoreRun<'static>>>) -> Vec<&'static str> {
        phases.iter().map(|p| p.name()).collect()
    }

    /// The order restore has always run in, and its rollback's: the runbook
    /// must give both, byte for byte the same phases.
    #[test]
    fn steps_and_undos_give_the_restore_and_rollback_orders() {
        let book = restore();
        assert_eq!(
            names(book.forward()),
            [
                "journal",
                "stop-control-plane",
                "stop-etcd",
                "fence",
                "move-aside",
                "restore",
                "start-etcd",
                "check",
                "start-control-plane",
                "release-control-plane",
                "done"
            ]
        );
        assert_eq!(
            names(book.backward()),
            [
                "stop-control-plane",
                "stop-etcd",
                "fence",
                "roll-back",
                "start-etcd",
                "start-control-plane",
                "release-control-plane",
                "done"
            ]
        );
    }
}
