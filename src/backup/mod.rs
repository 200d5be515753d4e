//! Encrypted etcd backups: the scheduled job that runs on each etcd member
//! (`rampart agent snapshot`), the check an admin runs on a copy
//! (`rampart backup verify`), and the copies to a backup target. The systemd
//! units that schedule the job are rendered with the rest (`crate::render`).
//!
//! - `config`: the job's YAML config (`/etc/rampart/backup.yaml`), derived from the inventory.
//! - `etcd`: running `etcdctl`/`etcdutl` and reading `snapshot status`.
//! - `snapshot`: the job itself: save, check, stream-encrypt, manifest, prune;
//!   `follow`: encrypting the snapshot while etcdctl writes it.
//! - `names`: backup file names, made and read back.
//! - `retention`: which backups to delete (pure); `prune`: applying it to a dir.
//! - `push`: copying a new backup to the backup target over SSH.
//! - `receive`: the target's end of that copy (`rampart agent receive`);
//!   `protocol`: the stream between them; `authorized_keys`: the line on the
//!   target that ties a member's push key to its receive.
//! - `verify`: decrypt a backup with identity files and check it is a sound snapshot.
//! - `signals`: deleting plaintext when a signal stops the job or `verify`.
//!
//! Hosts only ever hold recipients (public keys): a compromised etcd member can
//! write new backups but cannot read old ones.

mod authorized_keys;
mod config;
mod error;
mod etcd;
mod follow;
mod fsutil;
mod manifest;
mod names;
mod protocol;
mod prune;
mod push;
mod receive;
mod retention;
mod signals;
mod snapshot;
mod verify;

pub use authorized_keys::authorized_keys_line;
pub use config::{
    AgentConfig, TargetConfig, CONFIG_PATH, PUSH_KEY_PATH, RAMPART_PATH, SERVICE_PATH, TIMER_PATH,
};
pub use error::{BackupError, ReceiveError, VerifyError};
pub use etcd::SnapshotStatus;
pub use manifest::{manifest_path, Manifest};
pub use protocol::ReceiveReport;
pub use push::{push, PushReport};
pub use receive::{cleanup_receive_on_signal, receive, ReceiveRequest};
pub use retention::{to_prune, Candidate, RetentionPolicy};
pub use signals::{cleanup_on_signal, exit_on_signal};
pub use snapshot::{run_job, CopyOutcome, JobOutcome, LastRun, SnapshotOutcome, LAST_RUN};
pub use verify::{verify, verify_keep, Decrypted, VerifyOptions, VerifyReport};
