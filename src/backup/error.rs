//! Why a backup job, its copy to the backup target, a receive on the target
//! or a verification failed. Each variant names the file, host, command or
//! recipient involved and ends with what to do about it.

use std::path::PathBuf;

use crate::remote::ssh::SshError;

/// A failure of the scheduled job (`rampart agent snapshot`).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read the backup config {path}; it is written by `rampart apply` from the inventory's `backups:` section")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup config {path} is invalid; re-run `rampart apply` to rewrite it")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("backup recipient #{index} `{recipient}` is not an age (age1…) or SSH public key; fix `backups.recipients` in the inventory")]
    Recipient { index: usize, recipient: String },
    #[error("no backup recipients are configured; add at least one to `backups.recipients`")]
    NoRecipients,
    #[error("cannot {action} {path}; check the backup dir's filesystem and permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}; is etcd-client installed at that path?")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}; check that etcd is healthy (`etcdctl endpoint health`) and the client certificate is valid")]
    Etcdctl {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "`{command}` printed output rampart cannot read ({reason}); is this etcd 3.4 or later?"
    )]
    EtcdctlOutput { command: String, reason: String },
    #[error("cannot encrypt to the backup recipients: {message}; check `backups.recipients`")]
    Encrypt { message: String },
    #[error("the snapshot etcdctl saved as {path} is not what was encrypted ({reason}); no backup was written; if the next run fails the same way, report it with the etcdctl version")]
    SnapshotChanged { path: PathBuf, reason: String },
    #[error("{} was written here but not copied to the backup target {host} (it is kept here; the next run copies its own backup)", file.display())]
    Copy {
        file: PathBuf,
        host: String,
        #[source]
        source: Box<BackupError>,
    },
    #[error("no host key is pinned for the backup target {host}, and a copy is never sent to an unverified host; pin it (`rampart hosts trust`) and re-run `rampart apply`")]
    TargetUnpinned { host: String },
    #[error("no SSH session to {host}")]
    Push {
        host: String,
        #[source]
        source: SshError,
    },
    #[error("cannot use this member's push key {} ({reason}); `rampart apply` installs it there (an unencrypted OpenSSH private key)", key.display())]
    PushKey { key: PathBuf, reason: String },
    #[error("{host} does not accept this member's push key {} for {user}; `rampart apply` installs it in the target's authorized_keys", key.display())]
    PushAuth {
        host: String,
        user: String,
        key: PathBuf,
    },
    #[error("the connection to {host} dropped while copying the backup ({reason}); check the network and that sshd on {host} runs")]
    PushLost { host: String, reason: String },
    #[error("{host} refused the backup: `rampart agent receive` {status}: {stderr}")]
    PushRefused {
        host: String,
        status: String,
        stderr: String,
    },
    #[error("{host} answered the copy with a report rampart cannot read ({reason}); install the same rampart on the members and the target")]
    PushReport { host: String, reason: String },
    #[error("cannot start the SSH client for the copy to the backup target")]
    PushRuntime(#[source] std::io::Error),
}

/// Why `rampart agent receive`, on the backup target, refused what a member
/// sent. The member sees the message (it is the command's stderr), so each
/// one says what was wrong with what was sent.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the forced command is invalid ({reason}); re-run `rampart apply` to rewrite the target's authorized_keys")]
    Command { reason: String },
    #[error("the stream does not start with a rampart backup header ({reason}); only `rampart agent snapshot` sends here")]
    Header { reason: String },
    #[error("`{file}` is not the name of a backup of {cluster}/{member} (`{cluster}-{member}-<YYYYmmddTHHMMSSZ>.db.age`); this key may only send {member}'s own backups")]
    Name {
        file: String,
        cluster: String,
        member: String,
    },
    #[error("the manifest sent with {file} is not acceptable: {reason}; nothing was stored")]
    Manifest { file: String, reason: String },
    #[error("the stream ended early: {what} has {got} of {expected} bytes; nothing was stored (did the connection drop?)")]
    Truncated {
        what: &'static str,
        got: u64,
        expected: u64,
    },
    #[error("more bytes follow {file}; nothing was stored; install the same rampart on the members and the target")]
    Trailing { file: String },
    #[error(
        "{file} arrived with sha256 {actual}, its manifest says {expected}; nothing was stored"
    )]
    ShaMismatch {
        file: String,
        actual: String,
        expected: String,
    },
    #[error("{file} is stored here already with other content (sha256 {existing}, sent {sent}); the stored one is kept: move it away if the new one should replace it")]
    Conflict {
        file: String,
        existing: String,
        sent: String,
    },
    #[error("another receive for {cluster}/{member} is running (it holds {}); wait for it to end or stop it", path.display())]
    Busy {
        cluster: String,
        member: String,
        path: PathBuf,
    },
    #[error("cannot read the stream")]
    Input(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] BackupError),
}

/// Why `rampart backup verify` refused a file. Each refusal is its own variant so
/// scripts (and tests) can tell a wrong key from a damaged file.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable identity ({reason}); give an age identity file (AGE-SECRET-KEY-…) or an unencrypted SSH private key")]
    Identity { path: PathBuf, reason: String },
    #[error("the manifest {path} is unreadable ({reason}); move it away to verify the backup without it")]
    Manifest { path: PathBuf, reason: String },
    #[error(
        "{path} is truncated: {actual} bytes, the manifest says {expected}; copy the file again"
    )]
    Truncated {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{path} does not match its manifest: sha256 {actual}, expected {expected}; the file is corrupt or was replaced, so it was not decrypted")]
    ShaMismatch {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("{path} is not an age file ({reason}); is this a rampart backup?")]
    NotAge { path: PathBuf, reason: String },
    #[error("none of the identities can decrypt {path}; it was encrypted to other recipients (see its manifest)")]
    WrongIdentity { path: PathBuf },
    #[error("{path} is corrupt or truncated: decryption failed after {offset} plaintext bytes ({reason}); use another copy")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path} decrypts, but not to an etcd snapshot: {reason}")]
    NotSnapshot { path: PathBuf, reason: String },
    #[error("{path} decrypts to a snapshot that differs from its manifest: {field} is {actual}, the manifest says {expected}")]
    ManifestDisagrees {
        path: PathBuf,
        field: &'static str,
        actual: String,
        expected: String,
    },
    #[error("cannot check the decrypted snapshot")]
    Tool(#[source] Box<BackupError>),
    #[error("verifying {path} was cancelled; its decrypted copy was deleted")]
    Cancelled { path: PathBuf },
    #[error("cannot {action} {path} for the decrypted copy; pass --scratch-dir with room for the snapshot")]
    Scratch {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BackupError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Io {
            action,
            path,
            source,
        }
    }
}

/// `error: a: b: c` as the CLI prints it, for the last-run record and the journal.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
