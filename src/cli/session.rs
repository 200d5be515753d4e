//! What every command that works on hosts sets up, whatever it does: the
//! async runtime, the signals that cancel between steps, the SSH connector,
//! the answer to the engine's questions, and where helper tools are found.
//! Command files use these; they never import each other.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use rampart::engine::{Answer, Cancel, ConnectError, Connector, Prompt};
use rampart::inventory::Host;
use rampart::remote::ssh::{self, ConnectOptions, SshError};
use rampart::remote::{BoxFuture, Remote};

/// Connects over SSH with the CLI's options.
pub(crate) struct Ssh(pub(crate) ConnectOptions);

impl Connector for Ssh {
    fn connect<'a>(
        &'a self,
        host: &'a Host,
    ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>> {
        Box::pin(async move {
            match ssh::connect(host, &self.0).await {
                Ok(r) => Ok(Arc::new(r) as Arc<dyn Remote>),
                Err(e) => Err(ConnectError {
                    untrusted_key: matches!(
                        e,
                        SshError::UnknownHostKey { .. } | SshError::ChangedHostKey { .. }
                    ),
                    error: Box::new(e),
                }),
            }
        })
    }
}

/// Who holds a host lock, as the lock file records it:
/// `rampart <command> by <user>@<machine> pid <pid>`.
pub(crate) fn owner(command: &str) -> String {
    format!(
        "rampart {command} by {}@{} pid {}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim(),
        std::process::id()
    )
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Cancels between steps on the first Ctrl-C.
pub(crate) fn on_ctrl_c(cancel: &Cancel) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: steps in flight finish, nothing new starts");
            cancel.cancel();
        }
    });
}

/// The CLI's answer to the engine's questions: `--yes`, else the terminal's
/// answer, else no (a script without `--yes` never changes anything).
pub(crate) struct Ask {
    pub(crate) yes: bool,
}

impl Prompt for Ask {
    fn confirm(&self, question: &str) -> bool {
        if self.yes {
            return Answer(true).confirm(question);
        }
        let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        terminal && confirm(question).unwrap_or(false)
    }
}

pub(crate) fn confirm(question: &str) -> Result<bool> {
    use std::io::Write;
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `name` found in a PATH directory, as a shell would.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// SIGTERM and SIGHUP cancel between steps like Ctrl-C, so the run ends
/// through its normal path and the decrypted snapshot's dir is removed.
pub(crate) fn on_terminate(cancel: &Cancel) {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::terminate(), SignalKind::hangup()] {
        let cancel = cancel.clone();
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move {
                if s.recv().await.is_some() {
                    eprintln!("cancelling: steps in flight finish, nothing new starts");
                    cancel.cancel();
                }
            });
        }
    }
}
