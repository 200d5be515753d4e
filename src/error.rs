//! How commands end: the documented exit codes, and [`exit_code`], the one
//! mapping from a typed error to its code. Library errors stay typed
//! (`thiserror`, sources kept) all the way to `main`, which prints the chain
//! once and asks this module for the code.

use crate::actions::apply::ApplyError;
use crate::actions::restore::RestoreError;
use crate::actions::rotate::RotateError;
use crate::actions::verify::VerifyError;
use crate::engine::{PhaseError, StepError};
use crate::inventory::InventoryError;

/// Documented exit codes (see docs/getting-started.md).
pub mod code {
    /// Something failed at run time (I/O, PKI, rendering).
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage: what clap refuses (unknown flag, missing
    /// argument) and what rampart refuses after it for the same reason
    /// (options that conflict, a host or phase name that does not exist).
    pub const USAGE: u8 = 2;
    /// The inventory is invalid; nothing was done.
    pub const INVALID_INVENTORY: u8 = 3;
    /// The CIS self-check found failing automated checks.
    pub const CIS_FAILED: u8 = 4;
    /// A phase failed on one or more hosts (all are listed).
    pub const HOSTS_FAILED: u8 = 5;
    /// A host key is unknown or changed; nothing was sent to that host.
    pub const HOST_KEY: u8 = 6;
    /// A host is locked by another run.
    pub const LOCKED: u8 = 7;
    /// Preflight (or a restore's plan) found errors; nothing was changed.
    pub const PREFLIGHT: u8 = 8;
    /// A host could not be reached or authenticated.
    pub const UNREACHABLE: u8 = 9;
    /// `backup restore`: the backup does not verify (corrupt, truncated, wrong
    /// identity); nothing on any host changed.
    pub const BACKUP_REFUSED: u8 = 10;
    /// A destructive command was not confirmed (no `--yes`, no terminal to ask).
    pub const NOT_CONFIRMED: u8 = 11;
    /// `verify` found warnings and nothing worse (a certificate expiring
    /// within `--warn-days`, an old backup).
    pub const VERIFY_WARNINGS: u8 = 12;
    /// `verify` found failures: a failed automated CIS check, drift, a
    /// service down, an expired certificate, a failed backup run.
    pub const VERIFY_FAILURES: u8 = 13;
    /// A rotation step has to wait (the service-account key's old tokens
    /// may still be valid); nothing is wrong: `--resume` it later.
    pub const NOT_YET: u8 = 14;
    /// Interrupted (Ctrl-C, SIGTERM, SIGHUP) between steps.
    pub const CANCELLED: u8 = 130;
}

/// Endings that are verdicts, not faults: a check that found problems, keys
/// the admin did not trust.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{} failed", crate::words::count(*.0, "automated CIS check"))]
    CisFailed(usize),
    #[error("not trusted: {hosts}{hint}")]
    NotTrusted { hosts: String, hint: &'static str },
}

/// The exit code of a `verify` that ran: 0 when nothing worse than info
/// was found, else the code of the worst severity.
pub fn verify_code(report: &crate::actions::verify::Report) -> u8 {
    use crate::actions::verify::Severity;
    match report.worst() {
        Some(Severity::Failure) => code::VERIFY_FAILURES,
        Some(Severity::Warning) => code::VERIFY_WARNINGS,
        _ => 0,
    }
}

/// A command line that clap accepted but that cannot be run as given:
/// checked by hand because it depends on the inventory (an unknown name in
/// `--hosts`) or on several options together. It exits like clap's own
/// usage errors, so scripts see one code for "fix the command".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The exit code of an error chain: the code of the first error in it that
/// rampart knows (the outermost is the most specific), else [`code::FAILURE`].
pub fn exit_code<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> u8 {
    chain.into_iter().find_map(code_of).unwrap_or(code::FAILURE)
}

fn code_of(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if let Some(e) = e.downcast_ref::<PhaseError>() {
        return Some(hosts_code(e));
    }
    if let Some(e) = e.downcast_ref::<ApplyError>() {
        return Some(match e {
            ApplyError::Hosts(pe) => hosts_code(pe),
            ApplyError::Skip(_) | ApplyError::UnknownHost(..) => code::USAGE,
            ApplyError::Artifact(_) => code::FAILURE,
        });
    }
    if let Some(e) = e.downcast_ref::<VerifyError>() {
        return Some(match e {
            VerifyError::Hosts(pe) => hosts_code(pe),
            VerifyError::Wanted(ApplyError::Hosts(pe)) => hosts_code(pe),
            VerifyError::UnknownHost(..) => code::USAGE,
            _ => code::FAILURE,
        });
    }
    if let Some(e) = e.downcast_ref::<RestoreError>() {
        return Some(restore_code(e));
    }
    if let Some(e) = e.downcast_ref::<RotateError>() {
        return Some(rotate_code(e));
    }
    if e.is::<Usage>() {
        return Some(code::USAGE);
    }
    if let Some(e) = e.downcast_ref::<Refusal>() {
        return Some(match e {
            Refusal::CisFailed(_) => code::CIS_FAILED,
            Refusal::NotTrusted { .. } => code::HOST_KEY,
        });
    }
    if let Some(e) = e.downcast_ref::<InventoryError>() {
        // A file that cannot be read is not an invalid inventory: it is an
        // I/O failure like any other, and says which file and why.
        return Some(match e {
            InventoryError::Read { .. } => code::FAILURE,
            _ => code::INVALID_INVENTORY,
        });
    }
    None
}

fn restore_code(e: &RestoreError) -> u8 {
    match e {
        RestoreError::BadId(_)
        | RestoreError::FileWithRollback
        | RestoreError::NoFile
        | RestoreError::NoIdentity(_) => code::USAGE,
        RestoreError::Refused(_) => code::BACKUP_REFUSED,
        RestoreError::Plan(_) => code::PREFLIGHT,
        RestoreError::Hosts(pe) => hosts_code(pe),
        RestoreError::NotConfirmed { .. } => code::NOT_CONFIRMED,
        RestoreError::CancelledVerifying | RestoreError::CancelledBeforeHosts => code::CANCELLED,
        RestoreError::Stopped { cause, .. } => restore_code(cause),
        _ => code::FAILURE,
    }
}

/// A phase that failed on hosts: the most specific cause any host had.
fn rotate_code(e: &RotateError) -> u8 {
    match e {
        RotateError::BadId(_)
        | RotateError::OtherCa { .. }
        | RotateError::InProgress { .. }
        | RotateError::Finished { .. }
        | RotateError::RollingBack { .. }
        | RotateError::NeedsPhase { .. }
        | RotateError::NoSavedPlan { .. } => code::USAGE,
        RotateError::NotConfirmed => code::NOT_CONFIRMED,
        RotateError::TokensLive { .. } => code::NOT_YET,
        RotateError::KubeletCerts { .. } => code::HOSTS_FAILED,
        RotateError::Hosts(pe) => hosts_code(pe),
        RotateError::Rollout(ApplyError::Skip(_) | ApplyError::UnknownHost(..)) => code::USAGE,
        RotateError::Stopped { cause, .. } | RotateError::Unfinished { cause, .. } => {
            rotate_code(cause)
        }
        _ => code::FAILURE,
    }
}

fn hosts_code(pe: &PhaseError) -> u8 {
    let any = |f: fn(&StepError) -> bool| pe.failures.iter().any(|(_, e)| f(e));
    if pe.cancelled() {
        code::CANCELLED
    } else if any(|e| matches!(e, StepError::Locked { .. })) {
        code::LOCKED
    } else if any(StepError::is_untrusted_key) {
        code::HOST_KEY
    } else if pe.phase == "connect" {
        code::UNREACHABLE
    } else if pe.phase == "preflight" {
        code::PREFLIGHT
    } else {
        code::HOSTS_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(phase: &'static str, e: StepError) -> PhaseError {
        PhaseError {
            phase,
            failures: vec![("cp1".into(), e)],
        }
    }

    #[test]
    fn each_ending_has_its_documented_code() {
        let code = |e: &(dyn std::error::Error + 'static)| exit_code([e]);
        let script = || StepError::Check("no".into());
        assert_eq!(code(&failed("start-etcd", script())), code::HOSTS_FAILED);
        assert_eq!(
            code(&failed("connect", StepError::Facts("x".into()))),
            code::UNREACHABLE
        );
        assert_eq!(
            code(&failed("preflight", StepError::Preflight(vec![]))),
            code::PREFLIGHT
        );
        assert_eq!(
            code(&PhaseError::cancelled_before("systemd")),
            code::CANCELLED
        );
        let locked = StepError::Locked {
            host: "cp1".into(),
            holder: "x".into(),
        };
        assert_eq!(
            code(&ApplyError::Hosts(failed("lock", locked))),
            code::LOCKED
        );
        let stopped = RestoreError::Stopped {
            id: "20261130T150000Z".into(),
            cause: Box::new(RestoreError::Hosts(failed("fence", script()))),
        };
        assert_eq!(code(&stopped), code::HOSTS_FAILED);
        assert_eq!(
            code(&RestoreError::NotConfirmed { what: "restore" }),
            code::NOT_CONFIRMED
        );
        assert_eq!(code(&Refusal::CisFailed(2)), code::CIS_FAILED);
        assert_eq!(code(&RestoreError::FileWithRollback), code::USAGE);
        assert_eq!(
            code(&ApplyError::UnknownHost("cp9".into(), "cp1".into())),
            code::USAGE
        );
        assert_eq!(code(&Usage("unknown host `cp9`".into())), code::USAGE);
        let io = std::io::Error::other("disk full");
        assert_eq!(code(&io), code::FAILURE);
    }
}
