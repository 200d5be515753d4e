//! How rampart talks to one host: the [`Remote`] trait and its implementations.
//!
//! Everything rampart does on a host is a POSIX `sh` script run as root (through
//! `sudo -n` when the login user is not root), with bytes on stdin and output
//! collected. Keeping the contract this small is deliberate:
//! - the install engine (`crate::phases`) is written once against the trait;
//! - [`local::LocalRemote`] runs the very same scripts on this machine under a
//!   scratch root (`$ROOT`), so engine tests exercise real shell, real files,
//!   real renames, without SSH;
//! - [`ssh`] runs them over a real OpenSSH connection (russh).
//!
//! Scripts prefix every host path with `"$ROOT"`, which is empty on real hosts.

pub mod local;
pub mod script;
pub mod ssh;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, so `dyn Remote` works (SSH and local remotes side by side).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a script reads on stdin.
#[derive(Debug, Clone, Default)]
pub enum Input {
    #[default]
    None,
    Bytes(Vec<u8>),
    /// Streamed from a local file (binaries: never held in memory whole).
    File(PathBuf),
}

/// The outcome of one script.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit status; `None` when the remote side gave none (killed by a signal).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// What a failed script said, in one line: its first non-empty stderr
    /// line (the first cause: kubectl, etcdctl and `set -e` scripts print the
    /// error that started it first), and when more followed, how many and the
    /// last one (where a script's own summary goes).
    pub fn stderr_tail(&self) -> String {
        excerpt(&String::from_utf8_lossy(&self.stderr))
    }
}

/// A program's error output cut to one line: see [`Output::stderr_tail`].
pub fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::new(),
        [only] => only.to_string(),
        [first, last] => format!("{first}; then: {last}"),
        [first, .., last] => format!(
            "{first} (and {} more lines, the last: {last})",
            lines.len() - 1
        ),
    }
}

/// What [`Remote::hold`] yields: the first line and the handle keeping the
/// script alive, or the script's output when it exited before printing a line.
pub type Hold = Result<(String, Box<dyn Held>), Output>;

/// A long-running script kept alive until dropped (the host lock is one):
/// when rampart exits or the connection dies, its stdin closes and it ends.
pub trait Held: Send + Sync {
    /// Closes stdin and waits for the script to exit.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), RemoteError>>;
}

/// One host, reachable. Cheap to share (`Arc<dyn Remote>`); scripts may run
/// concurrently on one remote (SSH channels of one session).
pub trait Remote: Send + Sync {
    /// The inventory name of the host, for messages.
    fn host(&self) -> &str;

    /// Runs `script` with `sh -c` as root and waits for it.
    ///
    /// A non-zero exit is not an error here (`Output::status` says it); errors
    /// are transport failures: the connection dropped, sudo refused, ….
    fn run<'a>(
        &'a self,
        script: &'a str,
        input: Input,
    ) -> BoxFuture<'a, Result<Output, RemoteError>>;

    /// Runs `script` like [`Remote::run`], streaming its stdout into a new
    /// file `dest` (mode 0600) instead of memory: for pulling backups, which
    /// may be larger than memory should hold. `Output::stdout` stays empty.
    fn run_to_file<'a>(
        &'a self,
        script: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<Output, RemoteError>>;

    /// Starts `script` as root, waits for its first stdout line and returns it
    /// with a handle that keeps the script running. A script that exits before
    /// printing a line yields its [`Output`] instead (`Err(output)` inside `Ok`).
    fn hold<'a>(&'a self, script: &'a str) -> BoxFuture<'a, Result<Hold, RemoteError>>;

    /// Bytes written to the host so far (scripts and stdin), for the
    /// "a no-op apply only sends what hashing needs" measurement.
    fn bytes_sent(&self) -> u64;
}

/// Transport failures (not script failures) talking to a host.
///
/// Messages do not name the host: they are shown after it (`cp2: connection
/// lost: …` in a phase's report), and naming it twice read
/// `cp2: cp2: connection lost`. The `host` fields are for code.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("connection lost: {reason}")]
    Disconnected { host: String, reason: String },
    #[error("cannot write {path}")]
    Output {
        host: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Input {
        host: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `sh` locally")]
    Spawn {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "sudo refused to run without a password; give {user} passwordless sudo or connect as root"
    )]
    SudoPassword { host: String, user: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubectl prints one line per refused object; the first is the cause
    /// (a fresh cluster's apply-manifests once reported only an unrelated
    /// RoleBinding, the last line).
    #[test]
    fn failed_scripts_report_the_first_cause() {
        let out = Output {
            status: Some(1),
            stdout: Vec::new(),
            stderr: b"Error from server (Forbidden): clusterrolebindings \"kubeadm:cluster-admins\" is forbidden\nError from server (Forbidden): namespaces \"team-a\" is forbidden\n\nError from server (Forbidden): rolebindings \"team-a-view\" is forbidden\n".to_vec(),
        };
        assert_eq!(
            out.stderr_tail(),
            "Error from server (Forbidden): clusterrolebindings \"kubeadm:cluster-admins\" is forbidden (and 2 more lines, the last: Error from server (Forbidden): rolebindings \"team-a-view\" is forbidden)"
        );
        assert_eq!(excerpt("  only one\n\n"), "only one");
        assert_eq!(excerpt("a\nb\n"), "a; then: b");
        assert_eq!(excerpt("\n \n"), "");
    }
}
