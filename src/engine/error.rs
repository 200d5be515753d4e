//! What can go wrong on hosts: one host's failed step ([`StepError`]) and a
//! phase that failed on some hosts ([`PhaseError`], naming every one of
//! them). Both are typed all the way: the transport's error is kept as the
//! source, and [`crate::error::exit_code`] reads the variants, not the text.

use std::fmt;

use crate::remote::RemoteError;

/// A host could not be reached or trusted (the transport's error, kept whole).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ConnectError {
    pub error: Box<dyn std::error::Error + Send + Sync>,
    /// The host's key is unknown or not the recorded one: nothing was sent.
    pub untrusted_key: bool,
}

/// Why one host's step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{step} failed (exit {status}): {stderr}")]
    Script {
        step: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not become healthy within {seconds} s: {output}")]
    Unhealthy {
        what: String,
        seconds: u32,
        output: String,
    },
    /// The host could not be reached, or its key is not trusted. `message`
    /// is the transport's, without the host name the report puts in front.
    #[error("{message}")]
    Connect {
        message: String,
        #[source]
        error: ConnectError,
    },
    #[error("locked by another run ({holder}); if that run is gone, clear it with `rampart hosts unlock -i INVENTORY {host}`")]
    Locked { host: String, holder: String },
    /// Preflight found errors on the host (all of them); nothing changed.
    #[error("{}; nothing was changed", .0.join("; "))]
    Preflight(Vec<String>),
    /// The host's answer to a facts script could not be read.
    #[error("{0}")]
    Facts(String),
    /// A check after the work failed (e.g. the restored data is not the snapshot's).
    #[error("{0}")]
    Check(String),
    #[error("cancelled before {step}")]
    Cancelled { step: String },
}

impl StepError {
    /// The transport's error for `host`, its message without the host name.
    pub fn connect(host: &str, error: ConnectError) -> StepError {
        let text = error.to_string();
        let message = text
            .strip_prefix(&format!("{host}: "))
            .unwrap_or(&text)
            .to_string();
        StepError::Connect { message, error }
    }

    /// A script that exited non-zero: its step, status and first cause.
    pub fn script(step: &str, out: &crate::remote::Output) -> StepError {
        StepError::Script {
            step: step.to_string(),
            status: out
                .status
                .map_or_else(|| "signal".to_string(), |s| s.to_string()),
            stderr: out.stderr_tail(),
        }
    }

    /// An unknown or changed host key: nothing was sent to the host.
    pub fn is_untrusted_key(&self) -> bool {
        matches!(self, StepError::Connect { error, .. } if error.untrusted_key)
    }
}

/// A phase failed on some hosts; all of them are listed.
#[derive(Debug)]
pub struct PhaseError {
    pub phase: &'static str,
    pub failures: Vec<(String, StepError)>,
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.failures.len();
        write!(
            f,
            "phase {} failed on {}:",
            self.phase,
            crate::words::count(n, "host")
        )?;
        for (host, err) in &self.failures {
            write!(f, "\n  - {host}: {err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PhaseError {}

impl PhaseError {
    /// Every host stopped because the run was cancelled.
    pub fn cancelled(&self) -> bool {
        self.failures
            .iter()
            .all(|(_, e)| matches!(e, StepError::Cancelled { .. }))
    }

    /// The run was cancelled before `phase` started on any host.
    pub fn cancelled_before(phase: &'static str) -> PhaseError {
        PhaseError {
            phase,
            failures: vec![("all".into(), StepError::Cancelled { step: phase.into() })],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_leave_the_host_name_to_the_report() {
        let e = PhaseError {
            phase: "install-files",
            failures: vec![(
                "bravo".into(),
                crate::remote::RemoteError::Disconnected {
                    host: "bravo".into(),
                    reason: "broken pipe".into(),
                }
                .into(),
            )],
        };
        assert_eq!(
            e.to_string(),
            "phase install-files failed on 1 host:\n  - bravo: connection lost: broken pipe"
        );
    }
}
