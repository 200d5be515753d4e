//! The scheduled job: `etcdctl snapshot save` into a private work dir, stream it
//! through age to the recipients while hashing the ciphertext, write the
//! manifest, delete the plaintext, prune old backups, record the outcome.
//! Hashing and writing the ciphertext run on a second thread, behind the
//! encryption (see `fsutil::write_behind`).
//!
//! The plaintext lives only in `<dir>/.work` (0700), which a guard deletes on
//! every exit path (errors and panics included) and which the next run clears
//! first in case the process was killed. `snapshot status` reads the plaintext in
//! a child process while this one encrypts it, so the check costs no wall time
//! on a two-core member.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::chain;
use super::fsutil::{
    create_private, private_dir, sync_dir, tmp_path, write_atomic, write_behind, RemoveOnDrop,
    WritebackFile,
};
use super::names::{STAMP, SUFFIX};
use super::prune::prune_dir;
use super::push::{push, PushReport};
use super::{etcd, manifest_path, signals, AgentConfig, BackupError, Manifest, TargetConfig};

/// The job's outcome, in `<dir>/last-run.json`, for monitoring and `backup list`.
pub const LAST_RUN: &str = "last-run.json";

pub(crate) const WORK: &str = ".work";

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
    let mut phases = Vec::new();
    let mut t = Instant::now();
    let mut lap = |name: &'static str| {
        phases.push((name, t.elapsed()));
        t = Instant::now();
    };
    let etcd_version = etcd::server_version(cfg)?;
    lap("endpoint status");
    let name = format!(
        "{}{}",
        cfg.prefix(),
        now.to_offset(time::UtcOffset::UTC)
            .format(STAMP)
            .expect("UTC time formats")
    );
    let plain = work.join(format!("{name}.db"));
    let mut save = etcd::etcdctl(cfg, "50m");
    save.args(["snapshot", "save"]).arg(&plain);
    etcd::run(save)?;
    lap("snapshot save");

    let mut status_cmd = etcd::status_command(&cfg.etcdctl, cfg.etcdutl.as_deref(), &plain);
    let status_desc = etcd::describe(&status_cmd);
    let status_child = KillOnDrop(Some(etcd::spawn(&mut status_cmd)?));

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
    let (file, sha256, ciphertext_size, snapshot_size) = encrypt(&plain, &tmp, &recipients)?;
    lap("encrypt");
    file.sync_all().map_err(BackupError::io("sync", &tmp))?;
    drop(file);
    lap("fsync");

    let status = etcd::finish(status_child.take(), &status_desc)?;
    let status = etcd::parse_status(&status.stdout, &status_desc)?;
    lap("wait for snapshot status");

    fs::rename(&tmp, &out).map_err(BackupError::io("rename", &tmp))?;
    tmp_guard.disarm();
    sync_dir(&cfg.dir).map_err(BackupError::io("sync", &cfg.dir))?;

    let file = out
        .file_name()
        .expect("joined a name")
        .to_string_lossy()
        .into_owned();
    let manifest = Manifest {
        file,
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

    // Explicitly, so a failure to delete plaintext is an error, not a silent Drop.
    fs::remove_dir_all(&work).map_err(BackupError::io("remove the plaintext in", &work))?;
    work_guard.disarm();

    lap("manifest + cleanup");
    let pruned = prune(cfg, now)?;
    lap("retention");
    Ok(SnapshotOutcome {
        file: out,
        manifest,
        pruned,
        phases,
    })
}

/// Streams `plain` through age into `dest` (new, 0600); the caller fsyncs.
/// Returns (the file, sha256 of the ciphertext, ciphertext bytes, plaintext bytes).
fn encrypt(
    plain: &Path,
    dest: &Path,
    recipients: &[Box<dyn age::Recipient + Send>],
) -> Result<(File, String, u64, u64), BackupError> {
    let encryptor = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| BackupError::Encrypt {
        message: e.to_string(),
    })?;
    let input = File::open(plain).map_err(BackupError::io("open", plain))?;
    let file = create_private(dest).map_err(BackupError::io("create", dest))?;
    let (plain_bytes, file, sha, size) = encrypt_stream(encryptor, input, WritebackFile::new(file))
        .map_err(BackupError::io("write", dest))?;
    Ok((file.into_inner(), sha, size, plain_bytes))
}

/// Encrypts `input` into `out`: this thread reads and encrypts, a second one
/// hashes and writes the ciphertext ([`write_behind`], which says why).
/// Returns (plaintext bytes, `out`, sha256 of the ciphertext, ciphertext bytes).
fn encrypt_stream<W: Write + Send>(
    encryptor: age::Encryptor,
    mut input: impl Read,
    out: W,
) -> io::Result<(u64, W, String, u64)> {
    write_behind(out, |pipe| {
        let mut stream = encryptor.wrap_output(pipe)?;
        // 1 MiB reads: few syscalls, and memory stays flat whatever the snapshot size.
        let mut buf = vec![0u8; 1 << 20];
        let mut plain_bytes = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
            plain_bytes += n as u64;
        }
        stream.finish()?.finish()?;
        Ok(plain_bytes)
    })
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

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&Rfc3339)
        .expect("UTC time formats")
}

/// The `snapshot status` child: killed if the job fails before waiting for it,
/// so nothing keeps reading a plaintext that is being deleted.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

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

    /// Not a multiple of age's 64 KiB chunks nor of the 1 MiB pipe buffers.
    fn input() -> Vec<u8> {
        (0..3_500_017u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn encryptor(id: &age::x25519::Identity) -> age::Encryptor {
        let r = id.to_public();
        age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap()
    }

    #[test]
    fn encrypt_stream_round_trips_and_hashes_the_ciphertext() {
        let id = age::x25519::Identity::generate();
        let plain = input();
        let (plain_bytes, out, sha, size) =
            encrypt_stream(encryptor(&id), &plain[..], Vec::new()).unwrap();
        assert_eq!(plain_bytes, plain.len() as u64);
        assert_eq!(size, out.len() as u64);
        assert_eq!(sha, hex::encode(Sha256::digest(&out)));
        assert_eq!(age::decrypt(&id, &out).unwrap(), plain);
    }

    /// Fails every write after `ok` bytes, like a full disk.
    #[derive(Debug)]
    struct FullAfter {
        ok: usize,
    }
    impl Write for FullAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::other("disk full (test)"));
            }
            let n = buf.len().min(self.ok);
            self.ok -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_fails_the_stream_with_that_error() {
        let id = age::x25519::Identity::generate();
        let plain = input();
        for ok in [0, 100, 2 << 20] {
            let e = encrypt_stream(encryptor(&id), &plain[..], FullAfter { ok })
                .expect_err("the write error is reported");
            assert_eq!(e.to_string(), "disk full (test)", "after {ok} bytes");
        }
    }

    #[test]
    fn a_read_error_fails_the_stream_with_that_error() {
        let id = age::x25519::Identity::generate();
        let plain = input();
        let failing = (&plain[..]).chain(FailingRead);
        let e = encrypt_stream(encryptor(&id), failing, Vec::new())
            .expect_err("the read error is reported");
        assert_eq!(e.to_string(), "bad sector (test)");
    }

    struct FailingRead;
    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("bad sector (test)"))
        }
    }
}
