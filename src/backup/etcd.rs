//! Running `etcdctl` (and `etcdutl`, which took over offline snapshot commands in
//! etcd 3.5) and reading their JSON. rampart does not speak etcd's gRPC itself:
//! `etcdctl snapshot save` is the supported, version-matched way to stream a
//! consistent snapshot, and the package is on every member anyway.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use super::{AgentConfig, BackupError};

/// What `snapshot status` reports about a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// bbolt's CRC-32 over the keyspace, as etcd prints it.
    pub hash: u64,
    pub revision: i64,
    pub total_key: u64,
    /// Bytes of the bbolt database.
    pub total_size: u64,
}

/// `etcdctl` against the local member, with the client certificate.
///
/// `command_timeout` bounds the whole command. etcdctl 3.4 does not block on
/// the dial, so with the member down a command waits for this long: quick
/// commands get a short one, which makes `endpoint status` the job's fail-fast
/// health gate; `snapshot save` needs a long one, as 3.4 applies it to the whole
/// stream and the default 5 s would cut off any real database.
pub(crate) fn etcdctl(cfg: &AgentConfig, command_timeout: &str) -> Command {
    let mut cmd = Command::new(&cfg.etcdctl);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cfg.endpoint))
        .arg(format!("--cacert={}", cfg.cacert.display()))
        .arg(format!("--cert={}", cfg.cert.display()))
        .arg(format!("--key={}", cfg.key.display()))
        .arg("--dial-timeout=10s")
        .arg(format!("--command-timeout={command_timeout}"));
    cmd
}

/// `snapshot status -w json FILE` with etcdutl when it exists, else etcdctl.
pub(crate) fn status_command(etcdctl: &Path, etcdutl: Option<&Path>, file: &Path) -> Command {
    let mut cmd = match etcdutl.filter(|p| p.is_file()) {
        Some(u) => Command::new(u),
        None => {
            let mut c = Command::new(etcdctl);
            c.env("ETCDCTL_API", "3");
            c
        }
    };
    cmd.args(["snapshot", "status", "-w", "json"]).arg(file);
    cmd
}

/// How a command is named in errors: program and arguments, no environment.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn spawn(cmd: &mut Command) -> Result<Child, BackupError> {
    spawn_with_input(cmd, Stdio::null())
}

/// [`spawn`] with `stdin` as the child's standard input (`snapshot status`
/// reads a file the job holds open through `/proc/self/fd/0`).
pub(crate) fn spawn_with_input(cmd: &mut Command, stdin: Stdio) -> Result<Child, BackupError> {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BackupError::Spawn {
            program: cmd.get_program().into(),
            source,
        })
}

/// Waits for `child`; a non-zero exit becomes an error carrying the end of stderr.
pub(crate) fn finish(child: Child, command: &str) -> Result<Output, BackupError> {
    let out = child
        .wait_with_output()
        .map_err(|source| BackupError::Spawn {
            program: command.split(' ').next().unwrap_or_default().into(),
            source,
        })?;
    check(out, command)
}

/// `out` if its command succeeded, else an error carrying the end of stderr.
pub(crate) fn check(out: Output, command: &str) -> Result<Output, BackupError> {
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    // The last lines say why; earlier ones are usually retries.
    let tail = match stderr.char_indices().rev().nth(600) {
        Some((i, _)) => format!("…{}", &stderr[i..]),
        None => stderr.to_string(),
    };
    Err(BackupError::Etcdctl {
        command: command.to_string(),
        status: out.status.to_string(),
        stderr: tail,
    })
}

pub(crate) fn run(mut cmd: Command) -> Result<Output, BackupError> {
    let command = describe(&cmd);
    let child = spawn(&mut cmd)?;
    finish(child, &command)
}

pub(crate) fn parse_status(stdout: &[u8], command: &str) -> Result<SnapshotStatus, BackupError> {
    serde_json::from_slice(stdout).map_err(|e| BackupError::EtcdctlOutput {
        command: command.to_string(),
        reason: e.to_string(),
    })
}

/// The server version of the local member (`endpoint status`), for the manifest:
/// a restore needs an etcd at least that new.
pub(crate) fn server_version(cfg: &AgentConfig) -> Result<String, BackupError> {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(rename = "Status")]
        status: Status,
    }
    #[derive(Deserialize)]
    struct Status {
        version: String,
    }
    let mut cmd = etcdctl(cfg, "15s");
    cmd.args(["endpoint", "status", "-w", "json"]);
    let command = describe(&cmd);
    let out = run(cmd)?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&out.stdout).map_err(|e| BackupError::EtcdctlOutput {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    entries
        .into_iter()
        .next()
        .map(|e| e.status.version)
        .ok_or(BackupError::EtcdctlOutput {
            command,
            reason: "no endpoint in the answer".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_etcdctl_34_status() {
        let s = parse_status(
            br#"{"hash":3787456337,"revision":12,"totalKey":7,"totalSize":20480}"#,
            "etcdctl",
        )
        .unwrap();
        assert_eq!(
            s,
            SnapshotStatus {
                hash: 3787456337,
                revision: 12,
                total_key: 7,
                total_size: 20480
            }
        );
        assert!(parse_status(b"Error: invalid database", "etcdctl").is_err());
    }
}
