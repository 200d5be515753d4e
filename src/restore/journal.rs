//! The restore journal: one line per finished step, `<step>\t<UTC time>`,
//! appended by the step's own script on the member it ran on.
//!
//! Each line is written with a single `printf >>` (an `O_APPEND` write far
//! below `PIPE_BUF`) and fsynced, so a line is either whole or absent, even
//! when the connection or the host dies. Resume and rollback trust only what
//! a member wrote itself, never the admin machine's memory of a run.

use serde::{Deserialize, Serialize};

/// A step a member records once it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The restore began on this host (the plan was accepted).
    Started,
    StoppedApiserver,
    StoppedEtcd,
    /// `/var/lib/etcd` is now `/var/lib/etcd.pre-restore-<id>` (or there was none).
    MovedAside,
    /// The snapshot was restored into `/var/lib/etcd` and the upload removed.
    Restored,
    StartedEtcd,
    StartedApiserver,
    /// The whole restore finished and checked out.
    Done,
    /// The old data dir was put back.
    RolledBack,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Started => "started",
            Step::StoppedApiserver => "stopped-apiserver",
            Step::StoppedEtcd => "stopped-etcd",
            Step::MovedAside => "moved-aside",
            Step::Restored => "restored",
            Step::StartedEtcd => "started-etcd",
            Step::StartedApiserver => "started-apiserver",
            Step::Done => "done",
            Step::RolledBack => "rolled-back",
        }
    }
}

impl crate::engine::runbook::JournalStep for Step {
    const ALL: &'static [Step] = &[
        Step::Started,
        Step::StoppedApiserver,
        Step::StoppedEtcd,
        Step::MovedAside,
        Step::Restored,
        Step::StartedEtcd,
        Step::StartedApiserver,
        Step::Done,
        Step::RolledBack,
    ];
    fn name(self) -> &'static str {
        Step::name(self)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whole_lines_only() {
        let steps: Vec<Step> = crate::engine::runbook::parse_journal(
            "started\t2026-11-30T15:00:00Z\nstopped-etcd\t2026-11-30T15:00:01Z\nmoved-aside\t2026-11-30T15:00:02Z\nrestored\n",
        );
        assert_eq!(
            steps,
            vec![Step::Started, Step::StoppedEtcd, Step::MovedAside]
        );
    }
}
