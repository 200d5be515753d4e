//! A [`Remote`] that runs the host scripts on this machine under a scratch root.
//!
//! Engine tests use it to run the real scripts (real `sh`, `dd`, `sha256sum`,
//! renames, `flock`) against a directory standing in for a host's `/`, without
//! SSH. `systemctl` and friends are whatever `PATH` gives: tests put recording
//! stand-ins first. The proof against real hosts is the lab (tests/it/lab).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::{BoxFuture, Held, Hold, Input, Output, Remote, RemoteError};

/// Runs scripts with `ROOT=<root>` and an optional `PATH` prefix.
pub struct LocalRemote {
    name: String,
    root: PathBuf,
    path_prefix: Option<PathBuf>,
    sent: AtomicU64,
}

impl LocalRemote {
    pub fn new(name: &str, root: PathBuf) -> Self {
        LocalRemote {
            name: name.to_string(),
            root,
            path_prefix: None,
            sent: AtomicU64::new(0),
        }
    }

    /// Looks up commands in `dir` first (stand-ins for `systemctl`, …).
    pub fn with_path_prefix(mut self, dir: PathBuf) -> Self {
        self.path_prefix = Some(dir);
        self
    }

    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env("ROOT", &self.root);
        if let Some(dir) = &self.path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn spawn(&self, script: &str) -> Result<Child, RemoteError> {
        self.sent.fetch_add(script.len() as u64, Ordering::Relaxed);
        self.command(script)
            .spawn()
            .map_err(|source| RemoteError::Spawn {
                host: self.name.clone(),
                source,
            })
    }

    async fn feed(&self, child: &mut Child, input: Input) -> Result<(), RemoteError> {
        let Some(mut stdin) = child.stdin.take() else {
            return Ok(());
        };
        let bytes = match input {
            Input::None => return Ok(()),
            Input::Bytes(b) => b,
            Input::File(path) => std::fs::read(&path).map_err(|source| RemoteError::Input {
                host: self.name.clone(),
                path,
                source,
            })?,
        };
        self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // A script that exits without reading all of stdin is not a transport
        // failure; its exit status tells.
        let _ = stdin.write_all(&bytes).await;
        Ok(())
    }
}

impl Remote for LocalRemote {
    fn host(&self) -> &str {
        &self.name
    }

    fn run<'a>(
        &'a self,
        script: &'a str,
        input: Input,
    ) -> BoxFuture<'a, Result<Output, RemoteError>> {
        Box::pin(async move {
            let mut child = self.spawn(script)?;
            self.feed(&mut child, input).await?;
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| RemoteError::Disconnected {
                    host: self.name.clone(),
                    reason: e.to_string(),
                })?;
            Ok(Output {
                status: out.status.code().map(|c| c as u32),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        })
    }

    fn run_to_file<'a>(
        &'a self,
        script: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<Output, RemoteError>> {
        Box::pin(async move {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dest)
                .map_err(|source| RemoteError::Output {
                    host: self.name.clone(),
                    path: dest.to_path_buf(),
                    source,
                })?;
            self.sent.fetch_add(script.len() as u64, Ordering::Relaxed);
            // spawn + wait, not `output()`: tokio's `output()` pipes stdout
            // whatever was set, and the file would stay empty.
            let spawn_err = |source| RemoteError::Spawn {
                host: self.name.clone(),
                source,
            };
            let out = self
                .command(script)
                .stdin(Stdio::null())
                .stdout(Stdio::from(file))
                .spawn()
                .map_err(spawn_err)?
                .wait_with_output()
                .await
                .map_err(spawn_err)?;
            Ok(Output {
                status: out.status.code().map(|c| c as u32),
                stdout: Vec::new(),
                stderr: out.stderr,
            })
        })
    }

    fn hold<'a>(&'a self, script: &'a str) -> BoxFuture<'a, Result<Hold, RemoteError>> {
        Box::pin(async move {
            let mut child = self.spawn(script)?;
            let stdout = child.stdout.take().expect("piped stdout");
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let lost = |e: std::io::Error| RemoteError::Disconnected {
                host: self.name.clone(),
                reason: e.to_string(),
            };
            reader.read_line(&mut line).await.map_err(lost)?;
            if line.is_empty() || !child.try_wait().map_err(lost)?.is_none_or(|s| s.success()) {
                let mut stderr = Vec::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_end(&mut stderr).await;
                }
                let status = child.wait().await.map_err(lost)?;
                return Ok(Err(Output {
                    status: status.code().map(|c| c as u32),
                    stdout: line.into_bytes(),
                    stderr,
                }));
            }
            let held: Box<dyn Held> = Box::new(LocalHeld { child });
            Ok(Ok((line.trim_end().to_string(), held)))
        })
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

struct LocalHeld {
    child: Child,
}

impl Held for LocalHeld {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), RemoteError>> {
        Box::pin(async move {
            drop(self.child.stdin.take());
            let _ = self.child.wait().await;
            Ok(())
        })
    }
}
