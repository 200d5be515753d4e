//! The scheduled job: `etcdctl snapshot save` into a private work dir, stream it
//! through age to the recipients while hashing the ciphertext, write the
//! manifest, delete the plaintext, prune old backups, record the outcome.
//! The encryption follows the file while etcdctl is still writing it (see
//! `save_encrypting`); hashing and writing the ciphertext run on a second
//! thread, behind the encryption (see `fsutil::write_behind`).
//!
//! The plaintext lives only in `<dir>/.work` (0700), which a guard deletes on
//! every exit path (errors and panics included) and which the next run clears
//! first in case the process was killed. `snapshot status` reads the finished
//! plaintext in a child process while this one encrypts what is left of it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::chain;
use super::follow::{encrypt, save_encrypting, Saved, STATUS_INPUT};
use super::fsutil::{private_dir, sync_dir, tmp_path, write_atomic, RemoveOnDrop};
use super::names::{rfc3339, STAMP, SUFFIX, WORK};
use super::prune::prune_dir;
use super::push::{push, PushReport};
use super::{etcd, manifest_path, signals, AgentConfig, BackupError, Manifest, TargetConfig};

/// The job's outcome, in `<dir>/last-run.json`, for monitoring and `backup list`.
pub const LAST_RUN: &str = "last-run.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// RFC 3339, UTC.
    pub time: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup written (file name): when ok, and when only its copy failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The copy to the backup target, when one is configured and the backup
    /// was written. Absent in records of older rampart versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyOutcome>,
}

/// How the copy of a run's backup to the backup target went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOutcome {
    /// The target's inventory name.
    pub host: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This member's older backups the target deleted by its retention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub backup: SnapshotOutcome,
    /// The copy on the backup target, when one is configured.
    pub copy: Option<PushReport>,
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct SnapshotOutcome {
    pub file: PathBuf,
    pub manifest: Manifest,
    /// Older backups deleted by retention.
    pub pruned: Vec<PathBuf>,
    /// Wall time of each step, for `-v` and the benchmark.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Runs the job, copies the new backup to the backup target when one is
/// configured, and records the outcome in `<dir>/last-run.json`, success or
/// not. `now` names the backup and drives retention.
///
/// A failed copy fails the job ([`BackupError::Copy`], so systemd and
/// `backup list` show it) but keeps the local backup, which the record names.
pub fn run_job(cfg: &AgentConfig, now: OffsetDateTime) -> Result<JobOutcome, BackupError> {
    let result = snapshot(cfg, now);
    let copied = match (&result, &cfg.target) {
        (Ok(o), Some(target)) => Some(copy(target, o)),
        _ => None,
    };
    let copy_error = copied.as_ref().and_then(|(_, r)| r.as_ref().err());
    let failure = result.as_ref().err().or(copy_error);
    let record = LastRun {
        time: rfc3339(now),
        ok: failure.is_none(),
        error: failure.map(|e| chain(e)),
        file: result.as_ref().ok().map(|o| o.manifest.file.clone()),
        copy: copied.as_ref().map(|(c, _)| c.clone()),
    };
    let path = cfg.dir.join(LAST_RUN);
    let json = serde_json::to_vec_pretty(&record).expect("plain struct serializes");
    let written = private_dir(&cfg.dir)
        .and_then(|()| write_atomic(&path, &json))
        .map_err(BackupError::io("write", &path));
    // The job's own error matters more than a failure to record it.
    let backup = result?;
    let copy = copied.map(|(_, r)| r).transpose()?;
    written?;
    Ok(JobOutcome { backup, copy })
}

/// Pushes a new backup to the target: the record of how it went, and the
/// target's report or [`BackupError::Copy`].
fn copy(
    target: &TargetConfig,
    o: &SnapshotOutcome,
) -> (CopyOutcome, Result<PushReport, BackupError>) {
    // From here on, a signal stops a copy, not a backup (see signals).
    signals::note_written(&o.manifest.file);
    let pushed = push(target, &o.file, &manifest_path(&o.file));
    let outcome = CopyOutcome {
        host: target.host.clone(),
        ok: pushed.is_ok(),
        error: pushed.as_ref().err().map(|e| chain(e)),
        pruned: pushed
            .as_ref()
            .map(|p| p.received.pruned.clone())
            .unwrap_or_default(),
    };
    let pushed = pushed.map_err(|e| BackupError::Copy {
        file: o.file.clone(),
        host: target.host.clone(),
        source: Box::new(e),
    });
    (outcome, pushed)
}

fn snapshot(cfg: &AgentConfig, now: OffsetDateTime) -> Result<SnapshotOutcome, BackupError> {
    // Bad recipients fail before etcd is asked for anything.
    let recipients = parse_recipients(&cfg.recipients)?;
    private_dir(&cfg.dir).map_err(BackupError::io("create", &cfg.dir))?;

    // A run killed by SIGKILL or a power cut leaves plaintext here: clear it first.
    let work = cfg.dir.join(WORK);
    if work.exists() {
        fs::remove_dir_all(&work).map_err(BackupError::io("remove the stale", &work))?;
    }
    private_dir(&work).map_err(BackupError::io("create", &work))?;
    let work_guard = RemoveOnDrop::new(work.clone());

    // Also the health gate: with the member down this fails in seconds, where
    // `snapshot save` would wait for its whole (long) timeout.
    let mut laps = Laps {
        phases: Vec::new(),
        t: Instant::now(),
    };
    let etcd_version = etcd::server_version(cfg)?;
    laps.lap("endpoint status");
    let name = format!(
        "{}{}",
        cfg.prefix(),
        now.to_offset(time::UtcOffset::UTC)
            .format(STAMP)
            .expect("UTC time formats")
    );
    let plain = work.join(format!("{name}.db"));
    let out = cfg.dir.join(format!("{name}{SUFFIX}"));
    if out.exists() {
        return Err(BackupError::Io {
            action: "write",
            path: out,
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a backup with this name exists",
            ),
        });
    }
    let tmp = tmp_path(&out);
    let _ = fs::remove_file(&tmp);
    let tmp_guard = RemoveOnDrop::new(tmp.clone());

    let mut save = etcd::etcdctl(cfg, "50m");
    save.args(["snapshot", "save"]).arg(&plain);
    // One Go scheduler thread: measured alone, the save took as long with it
    // (1.77–1.87 s for 300 MB against 1.77–1.98 s) and ≈0.15 s less CPU, which
    // Go's idle threads otherwise spend spinning; next to the encryption on a
    // two-core member that CPU is the job's (job 2.2 → 2.0 s in alternating
    // runs). On a member it also leaves etcd itself more room.
    save.env("GOMAXPROCS", "1");
    let mut status_cmd = etcd::status_command(
        &cfg.etcdctl,
        cfg.etcdutl.as_deref(),
        Path::new(STATUS_INPUT),
    );
    let status_desc = etcd::describe(&status_cmd);
    let saved = save_encrypting(save, &plain, &tmp, &recipients, &mut status_cmd)?;
    laps.lap_until("snapshot save (encrypting alongside)", saved.saved_at);
    let Saved {
        mut file,
        mut sha256,
        mut ciphertext_size,
        mut snapshot_size,
        checked,
        status: status_child,
        ..
    } = saved;
    if !checked {
        // No etcd checksum at the end to prove the followed copy right:
        // encrypt the finished file again, as before following.
        drop(file);
        fs::remove_file(&tmp).map_err(BackupError::io("remove", &tmp))?;
        (file, sha256, ciphertext_size, snapshot_size) = encrypt(&plain, &tmp, &recipients)?;
    }
    laps.lap("encrypt the rest");
    file.sync_all().map_err(BackupError::io("sync", &tmp))?;
    drop(file);
    laps.lap("fsync");

    let status = etcd::finish(status_child.take(), &status_desc)?;
    let status = etcd::parse_status(&status.stdout, &status_desc)?;
    laps.lap("wait for snapshot status");

    // Deleting the plaintext frees ≈ 300 MB of blocks, which took 60–70 ms on
    // ext4 at the end of the job: it now runs on a second thread while this
    // one commits the backup and prunes. The plaintext is not needed any more
    // (the ciphertext is complete and synced, status has read it), and the
    // job does not return before the deletion is done (a failure is an error).
    let (manifest, pruned) = std::thread::scope(|s| {
        let removing = s.spawn(|| fs::remove_dir_all(&work));
        let committed = (|| {
            fs::rename(&tmp, &out).map_err(BackupError::io("rename", &tmp))?;
            tmp_guard.disarm();
            sync_dir(&cfg.dir).map_err(BackupError::io("sync", &cfg.dir))?;
            let manifest = Manifest {
                file: out
                    .file_name()
                    .expect("joined a name")
                    .to_string_lossy()
                    .into_owned(),
                sha256,
                ciphertext_size,
                snapshot_size,
                revision: status.revision,
                total_keys: status.total_key,
                snapshot_hash: status.hash,
                etcd_version,
                cluster: cfg.cluster.clone(),
                member: cfg.member.clone(),
                created: rfc3339(now),
                recipients: cfg.recipients.clone(),
                rampart_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let mpath = manifest_path(&out);
            let json = serde_json::to_vec_pretty(&manifest).expect("plain struct serializes");
            write_atomic(&mpath, &json).map_err(BackupError::io("write", &mpath))?;
            let pruned = prune(cfg, now)?;
            Ok::<_, BackupError>((manifest, pruned))
        })();
        let removed = removing
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let committed = committed?;
        removed.map_err(BackupError::io("remove the plaintext in", &work))?;
        Ok::<_, BackupError>(committed)
    })?;
    work_guard.disarm();
    laps.lap("manifest + retention (plaintext deleted alongside)");
    Ok(SnapshotOutcome {
        file: out,
        manifest,
        pruned,
        phases: laps.phases,
    })
}

/// Wall time of each step, for `-v` and the benchmark.
struct Laps {
    phases: Vec<(&'static str, Duration)>,
    t: Instant,
}

impl Laps {
    fn lap(&mut self, name: &'static str) {
        self.lap_until(name, Instant::now());
    }
    fn lap_until(&mut self, name: &'static str, end: Instant) {
        self.phases
            .push((name, end.saturating_duration_since(self.t)));
        self.t = end;
    }
}

fn parse_recipients(rs: &[String]) -> Result<Vec<Box<dyn age::Recipient + Send>>, BackupError> {
    if rs.is_empty() {
        return Err(BackupError::NoRecipients);
    }
    rs.iter()
        .enumerate()
        .map(|(index, r)| {
            let r = r.trim();
            if let Ok(x) = r.parse::<age::x25519::Recipient>() {
                Ok(Box::new(x) as Box<dyn age::Recipient + Send>)
            } else if let Ok(s) = r.parse::<age::ssh::Recipient>() {
                Ok(Box::new(s) as Box<dyn age::Recipient + Send>)
            } else {
                Err(BackupError::Recipient {
                    index,
                    recipient: r.to_string(),
                })
            }
        })
        .collect()
}

/// Applies retention to this member's backups in `dir`; returns what was deleted.
fn prune(cfg: &AgentConfig, now: OffsetDateTime) -> Result<Vec<PathBuf>, BackupError> {
    prune_dir(&cfg.dir, &cfg.cluster, &cfg.member, &cfg.retention, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_run_records_without_a_copy_read_and_write_as_before() {
        let old =
            r#"{"time":"2026-01-01T00:00:00Z","ok":true,"file":"c-m-20260101T000000Z.db.age"}"#;
        let record: LastRun = serde_json::from_str(old).unwrap();
        assert_eq!(record.copy, None);
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
        let failed = r#"{"time":"t","ok":false,"error":"e","file":"f","copy":{"host":"bk1","ok":false,"error":"e"}}"#;
        let record: LastRun = serde_json::from_str(failed).unwrap();
        assert_eq!(record.copy.as_ref().unwrap().pruned, Vec::<String>::new());
        assert_eq!(serde_json::to_string(&record).unwrap(), failed);
    }
}
