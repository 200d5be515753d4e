//! The member's end of the copy to the backup target: one SSH session (the
//! target's host key checked against the pins in the config, no known_hosts,
//! no trust on first use; the member's own push key), one `exec`, the stream
//! [`super::protocol`] describes on its stdin, and the receiver's JSON report
//! on its stdout.
//!
//! The command sent is `rampart agent receive`, but the target's
//! `authorized_keys` forces its own (with this member's name) whatever is sent.
//! Connecting is retried on transient failures (refused, reset, timed out);
//! a connection lost during the transfer is retried once, after a pause. A
//! host key or authentication failure, and a refusal by the receiver, never
//! are: retrying cannot fix them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::client::Handle;
use russh::ChannelWriteHalf;
use tokio::io::AsyncReadExt;

use super::protocol::{Header, ReceiveReport, VERSION};
use super::{BackupError, Manifest, TargetConfig};
use crate::remote::ssh::config::{Endpoint, Route};
use crate::remote::ssh::exec::feed_while_collecting;
use crate::remote::ssh::host_keys::{parse_pin, Trust};
use crate::remote::ssh::{open_session, Client, ConnectOptions, SshError};
use crate::remote::Output;

/// What the member asks to run; the target's forced command replaces it.
const COMMAND: &str = "rampart agent receive";
/// Stdin chunks: one channel on the session, so larger than a script's.
const CHUNK: usize = 256 << 10;
/// Before the one retry of a copy whose connection dropped.
const RETRY_PAUSE: Duration = Duration::from_secs(3);

/// A backup stored on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The target's inventory name.
    pub host: String,
    /// What the target's receiver reported.
    pub received: ReceiveReport,
}

/// Copies `file` and its `manifest` to `target` and returns what the target
/// stored and pruned. Blocking: it runs its own single-threaded runtime, so
/// it must not be called from async code.
pub fn push(
    target: &TargetConfig,
    file: &Path,
    manifest: &Path,
) -> Result<PushReport, BackupError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BackupError::PushRuntime)?;
    match rt.block_on(push_once(target, file, manifest)) {
        Err(BackupError::PushLost { .. }) => {
            std::thread::sleep(RETRY_PAUSE);
            rt.block_on(push_once(target, file, manifest))
        }
        r => r,
    }
}

/// The connection settings of a push: a short timeout, keepalives so a dead
/// target ends the copy, and two retries of a failed connect.
fn options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(10),
        keepalive: Duration::from_secs(15),
        retries: 2,
        accept_new_host_keys: false,
        ssh_config: None,
    }
}

/// The route to the target from the config alone (no ssh config, no
/// bastion): the push key and nothing else, the pinned host keys and
/// nothing else.
fn route(target: &TargetConfig) -> Result<Route, BackupError> {
    if target.host_keys.is_empty() {
        return Err(BackupError::TargetUnpinned {
            host: target.host.clone(),
        });
    }
    let pins = target
        .host_keys
        .iter()
        .map(|k| {
            parse_pin(k).map_err(|reason| BackupError::Push {
                host: target.host.clone(),
                source: SshError::PinnedKey {
                    host: target.host.clone(),
                    reason,
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Route {
        target: Endpoint {
            name: target.host.clone(),
            address: target.address.clone(),
            port: target.port,
            user: target.user.clone(),
            identities: vec![target.identity.clone()],
            explicit_identity: true,
            agent_first: false,
            trust: Trust {
                pins,
                // With pins, known_hosts is never read; nothing is ever appended.
                known_hosts: PathBuf::from("/dev/null"),
                address: target.address.clone(),
                port: target.port,
            },
        },
        bastion: None,
        sudo: false,
    })
}

async fn push_once(
    target: &TargetConfig,
    file: &Path,
    manifest_path: &Path,
) -> Result<PushReport, BackupError> {
    let host = &target.host;
    // Everything local is read before dialling: a missing file sends nothing.
    let manifest_bytes =
        std::fs::read(manifest_path).map_err(BackupError::io("read", manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        BackupError::io("read", manifest_path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        ))
    })?;
    let input = tokio::fs::File::open(file)
        .await
        .map_err(BackupError::io("open", file))?;
    let size = input
        .metadata()
        .await
        .map_err(BackupError::io("read", file))?
        .len();
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let header = Header {
        version: VERSION,
        file: name.clone(),
        manifest_size: manifest_bytes.len() as u64,
        size,
    };
    let route = route(target)?;

    let (session, _) = open_session(&route, &options())
        .await
        .map_err(|source| match source {
            SshError::Auth { user, .. } => BackupError::PushAuth {
                host: host.clone(),
                user,
                key: target.identity.clone(),
            },
            SshError::Key { path, reason } => BackupError::PushKey { key: path, reason },
            SshError::KeyPassphrase { path } => BackupError::PushKey {
                key: path,
                reason: "it is encrypted".into(),
            },
            source => BackupError::Push {
                host: host.clone(),
                source,
            },
        })?;
    let out = run(&session, host, file, [header.line(), manifest_bytes], input).await;
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let out = out?;

    if out.status != Some(0) {
        return Err(BackupError::PushRefused {
            host: host.clone(),
            status: match out.status {
                Some(n) => format!("exited {n}"),
                None => "was killed".into(),
            },
            stderr: refusal(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    let unreadable = |reason: String| BackupError::PushReport {
        host: host.clone(),
        reason,
    };
    let stdout = out.stdout_text();
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let received: ReceiveReport = serde_json::from_str(line.unwrap_or(""))
        .map_err(|e| unreadable(format!("{e} in {:?}", stdout.trim())))?;
    if received.file != name || received.sha256 != manifest.sha256 {
        return Err(unreadable(format!(
            "it stored {} with sha256 {}, not {name} with {}",
            received.file, received.sha256, manifest.sha256
        )));
    }
    Ok(PushReport {
        host: host.clone(),
        received,
    })
}

/// Runs the command, feeding `prefix` then `input` to its stdin while reading
/// its output (the receiver may fail, and say why, before reading it all).
async fn run(
    session: &Handle<Client>,
    host: &str,
    file: &Path,
    prefix: [Vec<u8>; 2],
    input: tokio::fs::File,
) -> Result<Output, BackupError> {
    let lost = |reason: String| BackupError::PushLost {
        host: host.to_string(),
        reason,
    };
    let channel = session
        .channel_open_session()
        .await
        .map_err(|e| lost(format!("cannot open a channel: {e}")))?;
    channel
        .exec(true, COMMAND)
        .await
        .map_err(|e| lost(format!("cannot start the receiver: {e}")))?;
    let (mut rx, tx) = channel.split();
    let got = feed_while_collecting(&mut rx, feed(&tx, file, prefix, input), None).await?;
    // Only a sink's write fails the collecting, and there is none.
    let got = got.map_err(|e| lost(e.to_string()))?;
    if got.refused {
        return Err(BackupError::PushRefused {
            host: host.to_string(),
            status: "could not start".into(),
            stderr: "the server refused to run the command".into(),
        });
    }
    if !got.complete {
        return Err(lost(
            "the connection closed before the receiver finished".into(),
        ));
    }
    Ok(got.out)
}

/// Writes the stream, then EOF. A write refused because the receiver stopped
/// reading is not an error here: its exit status and stderr tell why.
async fn feed(
    tx: &ChannelWriteHalf<russh::client::Msg>,
    file: &Path,
    prefix: [Vec<u8>; 2],
    mut input: tokio::fs::File,
) -> Result<(), BackupError> {
    for bytes in prefix {
        if tx.data_bytes(bytes).await.is_err() {
            return Ok(());
        }
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(BackupError::io("read", file))?;
        if n == 0 {
            break;
        }
        if tx.data_bytes(buf[..n].to_vec()).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx.eof().await;
    Ok(())
}

/// The receiver's reason from its stderr: rampart's `error: …` line (and
/// what follows it), not whatever the target's shell or sshd printed before;
/// anything else (`rampart: not found`) as it is, its end if it is long.
fn refusal(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    let reason = match lines.iter().rposition(|l| l.starts_with("error: ")) {
        Some(i) => lines[i..].join(" "),
        None => lines.join(" "),
    };
    let reason = reason.trim();
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    match reason.char_indices().rev().nth(1000) {
        Some((i, _)) => format!("…{}", &reason[i..]),
        None => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_rampart_s_error_line() {
        let stderr = "debug1: permanently_set_uid: 0/0\nerror: `x` is not the name of a backup\n";
        assert_eq!(refusal(stderr), "`x` is not the name of a backup");
        assert_eq!(
            refusal("sh: 1: /usr/local/bin/rampart: not found\n"),
            "sh: 1: /usr/local/bin/rampart: not found"
        );
        assert_eq!(refusal(""), "");
    }
}
