//! Scripts over an authenticated session: one `session` channel per script.
//!
//! A script runs as `sh -c '<script>'`, or `sudo -n -- sh -c '<script>'` for a
//! non-root login. Stdin is fed while output is read (a script may fill its
//! stdout window before it has read all of stdin), files in 32 KiB chunks so
//! a binary never sits in memory whole. Channels are independent, so scripts
//! run concurrently on one session, up to [`MAX_CHANNELS`] at a time: OpenSSH
//! refuses channels beyond `MaxSessions` (10 by default), so more scripts wait
//! for a free channel instead of failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use russh::client::Handle;
use russh::{ChannelMsg, ChannelReadHalf};

use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::Client;
use crate::remote::script::quote;
use crate::remote::{BoxFuture, Held, Hold, Input, Output, Remote, RemoteError};

/// Stdin chunk size: big enough for throughput, small enough to interleave
/// with other channels on the session.
const CHUNK: usize = 32 * 1024;

/// Channels open at once on one session (held scripts included); below
/// OpenSSH's default `MaxSessions` of 10.
pub const MAX_CHANNELS: usize = 8;

/// An authenticated SSH session to one host.
pub struct SshRemote {
    name: String,
    user: String,
    sudo: bool,
    session: Handle<Client>,
    /// The bastion session carrying this one; kept alive as long as it.
    _jump: Option<Handle<Client>>,
    sent: AtomicU64,
    slots: Arc<Semaphore>,
}

impl SshRemote {
    pub(super) fn new(
        name: String,
        user: String,
        sudo: bool,
        session: Handle<Client>,
        jump: Option<Handle<Client>>,
    ) -> Self {
        SshRemote {
            name,
            user,
            sudo,
            session,
            _jump: jump,
            sent: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
        }
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether scripts go through `sudo -n`.
    pub fn uses_sudo(&self) -> bool {
        self.sudo
    }

    /// Ends the session politely (otherwise it ends when dropped).
    pub async fn close(&self) {
        let _ = self
            .session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    fn command(&self, script: &str) -> String {
        if self.sudo {
            format!("sudo -n -- sh -c {}", quote(script))
        } else {
            format!("sh -c {}", quote(script))
        }
    }

    fn lost(&self, reason: impl std::fmt::Display) -> RemoteError {
        RemoteError::Disconnected {
            host: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Opens a channel (waiting for a free slot) and starts `script` on it.
    async fn start(&self, script: &str) -> Result<Started, RemoteError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| self.lost(e))?;
        let channel = self.open_channel().await?;
        channel
            .exec(true, self.command(script))
            .await
            .map_err(|e| self.lost(format!("cannot start the script: {e}")))?;
        self.sent.fetch_add(script.len() as u64, Ordering::Relaxed);
        let (rx, tx) = channel.split();
        Ok((rx, tx, permit))
    }

    /// Opens a session channel. sshd counts a channel against `MaxSessions`
    /// until it has processed our close of it, which can come after our
    /// slot is free again; so a refused open is that race, not a limit we
    /// exceed, and is retried briefly (about 3 s in all) before it counts as
    /// a lost connection.
    async fn open_channel(&self) -> Result<russh::Channel<russh::client::Msg>, RemoteError> {
        let mut pause = std::time::Duration::from_millis(20);
        for _ in 0..7 {
            match self.session.channel_open_session().await {
                Err(russh::Error::ChannelOpenFailure(_)) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                r => return r.map_err(|e| self.lost(format!("cannot open a channel: {e}"))),
            }
        }
        self.session
            .channel_open_session()
            .await
            .map_err(|e| self.lost(format!("cannot open a channel: {e}")))
    }

    /// sudo refusing for want of a password, before the script ran.
    fn sudo_refused(&self, out: &Output) -> Option<RemoteError> {
        if !self.sudo || out.status != Some(1) || !out.stdout.is_empty() {
            return None;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let refused = err.lines().any(|l| {
            l.starts_with("sudo:")
                && (l.contains("a password is required") || l.contains("a terminal is required"))
        });
        refused.then(|| RemoteError::SudoPassword {
            host: self.name.clone(),
            user: self.user.clone(),
        })
    }

    /// Runs one script: feeds stdin while reading stdout (into memory or
    /// `sink`), stderr and the exit status.
    async fn exec(
        &self,
        script: &str,
        source: Source,
        sink: Option<&mut tokio::fs::File>,
    ) -> Result<Output, RemoteError> {
        let (mut rx, tx, _slot) = self.start(script).await?;
        let got = feed_while_collecting(&mut rx, self.feed(&tx, source), sink).await?;
        let got = got.map_err(|e| self.lost(format!("cannot write the output locally: {e}")))?;
        if got.refused {
            return Err(self.lost("the server refused to run the command"));
        }
        if !got.complete {
            return Err(self.lost("the connection dropped while the script ran"));
        }
        if let Some(e) = self.sudo_refused(&got.out) {
            return Err(e);
        }
        Ok(got.out)
    }

    /// Writes `input` to the channel, then EOF. A write refused because the
    /// script closed its stdin is not an error: its exit status tells.
    async fn feed(
        &self,
        tx: &russh::ChannelWriteHalf<russh::client::Msg>,
        input: Source,
    ) -> Result<(), RemoteError> {
        match input {
            Source::None => {}
            Source::Bytes(b) => {
                let n = b.len() as u64;
                if tx.data_bytes(b).await.is_ok() {
                    self.sent.fetch_add(n, Ordering::Relaxed);
                }
            }
            Source::File(path, mut file) => {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = file
                        .read(&mut buf)
                        .await
                        .map_err(|source| RemoteError::Input {
                            host: self.name.clone(),
                            path: path.clone(),
                            source,
                        })?;
                    if n == 0 {
                        break;
                    }
                    if tx.data_bytes(buf[..n].to_vec()).await.is_err() {
                        return Ok(());
                    }
                    self.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        let _ = tx.eof().await;
        Ok(())
    }
}

/// A started script's channel halves and its slot.
type Started = (
    ChannelReadHalf,
    russh::ChannelWriteHalf<russh::client::Msg>,
    OwnedSemaphorePermit,
);

/// Stdin, opened before the script starts so a missing file runs nothing.
enum Source {
    None,
    Bytes(Vec<u8>),
    File(std::path::PathBuf, tokio::fs::File),
}

/// Runs `feed` (which writes the command's stdin) while reading the channel
/// to its end with [`collect`]: a command may fill its stdout window before it
/// has read all of its stdin, or exit without reading it all. An error from
/// `feed` ends both; the outer result is `feed`'s, the inner one `collect`'s.
pub(crate) async fn feed_while_collecting<E>(
    rx: &mut ChannelReadHalf,
    feed: impl std::future::Future<Output = Result<(), E>>,
    sink: Option<&mut tokio::fs::File>,
) -> Result<Result<Collected, std::io::Error>, E> {
    let read = collect(rx, Output::default(), sink);
    tokio::pin!(feed, read);
    let mut fed = false;
    loop {
        tokio::select! {
            r = &mut feed, if !fed => { fed = true; r?; }
            got = &mut read => return Ok(got),
        }
    }
}

/// Reads a channel to its end: stdout, stderr, exit status.
pub(crate) struct Collected {
    pub(crate) out: Output,
    /// The channel ended orderly (exit status, signal or close) rather than
    /// with the connection.
    pub(crate) complete: bool,
    /// The server refused the exec request.
    pub(crate) refused: bool,
}

/// Reads `rx` until the channel closes: stdout (into `out` or `sink`), stderr,
/// the exit status.
async fn collect(
    rx: &mut ChannelReadHalf,
    mut out: Output,
    mut sink: Option<&mut tokio::fs::File>,
) -> Result<Collected, std::io::Error> {
    use tokio::io::AsyncWriteExt;
    let mut complete = false;
    let mut refused = false;
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::Data { data } => match sink.as_deref_mut() {
                Some(file) => file.write_all(&data).await?,
                None => out.stdout.extend_from_slice(&data),
            },
            ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => {
                out.status = Some(exit_status);
                complete = true;
            }
            ChannelMsg::ExitSignal { .. } => complete = true,
            ChannelMsg::Failure => refused = true,
            ChannelMsg::Close => {
                complete = true;
                break;
            }
            _ => {}
        }
    }
    if let Some(file) = sink {
        file.flush().await?;
    }
    Ok(Collected {
        out,
        complete,
        refused,
    })
}

impl Remote for SshRemote {
    fn host(&self) -> &str {
        &self.name
    }

    fn run<'a>(
        &'a self,
        script: &'a str,
        input: Input,
    ) -> BoxFuture<'a, Result<Output, RemoteError>> {
        Box::pin(async move {
            let source = match input {
                Input::None => Source::None,
                Input::Bytes(b) => Source::Bytes(b),
                Input::File(path) => match tokio::fs::File::open(&path).await {
                    Ok(f) => Source::File(path, f),
                    Err(source) => {
                        return Err(RemoteError::Input {
                            host: self.name.clone(),
                            path,
                            source,
                        })
                    }
                },
            };
            self.exec(script, source, None).await
        })
    }

    fn run_to_file<'a>(
        &'a self,
        script: &'a str,
        dest: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<Output, RemoteError>> {
        Box::pin(async move {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dest)
                .await
                .map_err(|source| RemoteError::Output {
                    host: self.name.clone(),
                    path: dest.to_path_buf(),
                    source,
                })?;
            self.exec(script, Source::None, Some(&mut file)).await
        })
    }

    fn hold<'a>(&'a self, script: &'a str) -> BoxFuture<'a, Result<Hold, RemoteError>> {
        Box::pin(async move {
            let (mut rx, tx, slot) = self.start(script).await?;
            let mut out = Output::default();
            let mut line = None;
            let mut refused = false;
            let mut closed = false;
            while let Some(msg) = rx.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        out.stdout.extend_from_slice(&data);
                        if let Some(i) = out.stdout.iter().position(|b| *b == b'\n') {
                            line = Some(String::from_utf8_lossy(&out.stdout[..i]).into_owned());
                            break;
                        }
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { .. } => closed = true,
                    ChannelMsg::Failure => refused = true,
                    ChannelMsg::Close => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
            if refused {
                return Err(self.lost("the server refused to run the command"));
            }
            let Some(line) = line else {
                // Exited (or died) before its first line.
                if !closed && out.status.is_none() {
                    return Err(self.lost("the connection dropped before the script printed"));
                }
                if let Some(e) = self.sudo_refused(&out) {
                    return Err(e);
                }
                return Ok(Err(out));
            };
            let (release, released) = oneshot::channel::<()>();
            let host = self.name.clone();
            // The channel is drained until it closes: an unread channel would
            // stall the whole session once its buffer fills.
            let task = tokio::spawn(async move {
                let _slot = slot;
                let mut released = released;
                let mut eof_sent = false;
                let mut complete = false;
                loop {
                    tokio::select! {
                        // A release or a dropped handle both close stdin.
                        _ = &mut released, if !eof_sent => {
                            eof_sent = true;
                            let _ = tx.eof().await;
                        }
                        msg = rx.wait() => match msg {
                            Some(ChannelMsg::ExitStatus { .. }) | Some(ChannelMsg::ExitSignal { .. }) => complete = true,
                            Some(ChannelMsg::Close) => { complete = true; break; }
                            Some(_) => {}
                            None => break,
                        },
                    }
                }
                if complete {
                    Ok(())
                } else {
                    Err(RemoteError::Disconnected {
                        host,
                        reason: "the connection dropped while a held script ran".into(),
                    })
                }
            });
            let held: Box<dyn Held> = Box::new(SshHeld {
                host: self.name.clone(),
                release: Some(release),
                task,
            });
            Ok(Ok((line.trim_end_matches('\r').to_string(), held)))
        })
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A script kept running on its channel; stdin closes on release or drop.
struct SshHeld {
    host: String,
    release: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RemoteError>>,
}

impl Held for SshHeld {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), RemoteError>> {
        Box::pin(async move {
            if let Some(tx) = self.release.take() {
                let _ = tx.send(());
            }
            match (&mut self.task).await {
                Ok(r) => r,
                // The drain task does not panic; a cancelled runtime ends it.
                Err(e) => Err(RemoteError::Disconnected {
                    host: self.host.clone(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}
