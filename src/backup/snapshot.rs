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

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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

/// What [`save_encrypting`] produced.
struct Saved {
    /// The ciphertext, not yet synced.
    file: File,
    /// sha256 of the ciphertext, hex.
    sha256: String,
    ciphertext_size: u64,
    snapshot_size: u64,
    /// Whether the plaintext encrypted matched etcd's own sha256 at its end;
    /// false when the snapshot had none (a mismatch is an error).
    checked: bool,
    /// When etcdctl was seen to have finished.
    saved_at: Instant,
    /// `snapshot status` of the finished snapshot.
    status: KillOnDrop,
}

/// How often the encryption looks for more of the snapshot while etcdctl
/// writes it: short next to a save (seconds), long next to a syscall.
const FOLLOW_POLL: Duration = Duration::from_millis(2);

/// Where `snapshot status` finds the snapshot: its standard input, a file
/// the job opened (through `/proc`, so a rename or the deletion of the name
/// does not matter, and it may start before etcdctl has renamed the file).
pub(crate) const STATUS_INPUT: &str = "/proc/self/fd/0";

/// Runs `save` (`etcdctl snapshot save <plain>`) and encrypts the snapshot
/// into `dest` (new, 0600) *while etcdctl writes it*, instead of after: the
/// save is bound by etcd and the network and leaves CPU free, so the
/// encryption (≈0.4 s for 300 MB, most of the job's overhead) mostly
/// disappears into it. `status_cmd` (`snapshot status` of [`STATUS_INPUT`])
/// starts as soon as the snapshot is complete.
///
/// etcdctl 3.4 creates `<plain>.part`, appends the stream to it, fsyncs it
/// and renames it to `<plain>`. So the file is opened as soon as it exists and
/// read as it grows ([`Follow`]); once etcdctl has exited 0, it is read to its
/// end through the same descriptor, which the rename does not change. An
/// etcdctl that names its file otherwise is not followed: its file is found
/// under `<plain>` once it exits, and encrypted then, as before. Why what was
/// encrypted is exactly the file etcdctl finished:
///
/// - the descriptor's inode is `<plain>`'s (checked), and everything up to its
///   final size was read through it (checked): nothing else could be read;
/// - etcd ends the stream with the sha256 of the database before it, which
///   etcdctl keeps in the file (`snapshot restore` checks it). The plaintext
///   is hashed on its way into the encryption ([`EtcdSum`]) and compared with
///   it, so bytes read before etcdctl wrote them, or that it rewrote later,
///   would not go unnoticed. That check is end to end, from etcd's memory to
///   what was encrypted, which the previous encrypt-after-save never had. A
///   snapshot without the checksum is reported unchecked, and the caller
///   encrypts the finished file again.
///
/// The checksum also says when the snapshot is complete: once what has been
/// read ends with the sha256 of what came before it, the stream is over, and
/// `snapshot status` starts then, while etcdctl is still fsyncing (≈0.1 s of
/// its 300 MB). It reads the same inode, and that nothing was added after is
/// checked (the size); without a checksum it starts when etcdctl exits.
///
/// If etcdctl fails, its error is returned and the ciphertext discarded by
/// the caller's guard; if anything here fails first, etcdctl is killed.
fn save_encrypting(
    mut save: Command,
    plain: &Path,
    dest: &Path,
    recipients: &[Box<dyn age::Recipient + Send>],
    status_cmd: &mut Command,
) -> Result<Saved, BackupError> {
    let encryptor = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| BackupError::Encrypt {
        message: e.to_string(),
    })?;
    let file = create_private(dest).map_err(BackupError::io("create", dest))?;
    let save_desc = etcd::describe(&save);
    // stderr to a file in the work dir rather than a pipe: nothing has to
    // drain it while this thread encrypts, and it goes with the work dir.
    let err_path = plain.with_extension("save-stderr");
    let err_file = create_private(&err_path).map_err(BackupError::io("create", &err_path))?;
    save.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    let child = save.spawn().map_err(|source| BackupError::Spawn {
        program: save.get_program().into(),
        source,
    })?;
    let mut save_child = KillOnDrop(Some(child));
    let failed = |status: ExitStatus| {
        let stderr = fs::read(&err_path).unwrap_or_default();
        etcd::check(
            Output {
                status,
                stdout: Vec::new(),
                stderr,
            },
            &save_desc,
        )
        .err()
        .unwrap_or_else(|| BackupError::EtcdctlOutput {
            command: save_desc.clone(),
            reason: "it failed".into(),
        })
    };

    let (input, exited) =
        open_growing(plain, save_child.child()).map_err(BackupError::io("read", plain))?;
    if let Some(status) = exited.filter(|s| !s.success()) {
        return Err(failed(status));
    }
    // Its own open file (not a dup sharing this one's offset).
    let status_input = File::open(format!("/proc/self/fd/{}", input.as_raw_fd()))
        .map_err(BackupError::io("open", plain))?;

    let mut status_child = None;
    let mut follow = Follow {
        file: input,
        writer: save_child.child(),
        exited,
        exited_at: exited.map(|_| Instant::now()),
        sum: EtcdSum::default(),
        complete_at: None,
        // Killed if this returns early (an etcdctl failing after all): it
        // must not go on reading the plaintext after the job.
        on_complete: Some(|| {
            status_child = Some(
                etcd::spawn_with_input(status_cmd, status_input.into())
                    .map(|c| KillOnDrop(Some(c))),
            )
        }),
    };
    if exited.is_some() {
        follow.completed();
    }
    let encrypted = encrypt_stream(encryptor, &mut follow, WritebackFile::new(file));
    let Follow {
        file: input,
        exited,
        exited_at,
        sum,
        complete_at,
        ..
    } = follow;
    match exited {
        Some(s) if s.success() => {}
        Some(s) => return Err(failed(s)),
        // Only an error of ours stops the reading before etcdctl exits.
        None => {}
    }
    let (snapshot_size, file, sha256, ciphertext_size) =
        encrypted.map_err(BackupError::io("write", dest))?;
    let status = status_child.expect("started when the snapshot was complete")?;
    drop(save_child);

    let changed = |reason: String| BackupError::SnapshotChanged {
        path: plain.to_path_buf(),
        reason,
    };
    let read = input.metadata().map_err(BackupError::io("stat", plain))?;
    let done = fs::metadata(plain).map_err(BackupError::io("stat", plain))?;
    if (read.dev(), read.ino()) != (done.dev(), done.ino()) {
        return Err(changed("etcdctl renamed another file into place".into()));
    }
    if snapshot_size != done.len() {
        return Err(changed(format!(
            "{snapshot_size} bytes were encrypted, the file has {}",
            done.len()
        )));
    }
    if complete_at.is_some_and(|at| at != snapshot_size) {
        return Err(changed(format!(
            "it ended with etcd's checksum at {} bytes, then grew to {snapshot_size}",
            complete_at.unwrap_or_default()
        )));
    }
    let checked = match sum.finish() {
        Some(Ok(())) => true,
        None => false,
        Some(Err(sha)) => {
            return Err(changed(format!(
                "sha256 of what was encrypted {sha} differs from etcd's checksum at its end"
            )))
        }
    };
    Ok(Saved {
        file: file.into_inner(),
        sha256,
        ciphertext_size,
        snapshot_size,
        checked,
        saved_at: exited_at.unwrap_or_else(Instant::now),
        status,
    })
}

/// Opens the snapshot etcdctl is writing as soon as it exists: `<plain>.part`,
/// or `<plain>` (after the rename, when the save was quick). Also returns
/// etcdctl's exit status if it was seen to exit meanwhile; if it failed
/// before making a file, the file is not needed: `/dev/null` stands in.
fn open_growing(plain: &Path, writer: &mut Child) -> io::Result<(File, Option<ExitStatus>)> {
    let mut part = plain.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    loop {
        // Looked up before the names, so a save that finished in between is
        // still found under its final name.
        let exited = writer.try_wait()?;
        for p in [&part, plain] {
            match File::open(p) {
                Ok(f) => return Ok((f, exited)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match exited {
            Some(s) if !s.success() => return Ok((File::open("/dev/null")?, Some(s))),
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "etcdctl succeeded but wrote no snapshot file",
                ))
            }
            None => std::thread::sleep(FOLLOW_POLL),
        }
    }
}

/// Reads a snapshot `writer` (etcdctl) is still appending to, hashing it on
/// the way ([`EtcdSum`]): at its end, waits for more until the writer has
/// exited, then reads what is left and ends; if the writer failed, reading
/// stops with an error (the caller reports the writer's own).
///
/// `on_complete` runs once, as soon as the snapshot is known complete: what
/// has been read ends with etcd's checksum of what came before, or else the
/// writer has exited 0.
struct Follow<'a, F: FnOnce()> {
    file: File,
    writer: &'a mut Child,
    exited: Option<ExitStatus>,
    /// When the writer was seen to have exited.
    exited_at: Option<Instant>,
    sum: EtcdSum,
    /// How much had been read when the checksum said the snapshot was complete.
    complete_at: Option<u64>,
    on_complete: Option<F>,
}

impl<F: FnOnce()> Follow<'_, F> {
    fn completed(&mut self) {
        if let Some(f) = self.on_complete.take() {
            f();
        }
    }
}

impl<F: FnOnce()> Read for Follow<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            self.sum.feed(&buf[..n]);
            match self.exited {
                _ if n > 0 => return Ok(n),
                Some(s) if s.success() => return Ok(0),
                Some(_) => return Err(io::Error::other("etcdctl snapshot save failed")),
                None => {}
            }
            if self.on_complete.is_some() && self.sum.complete() {
                self.complete_at = Some(self.sum.total);
                self.completed();
            }
            match self.writer.try_wait()? {
                // Loop: what it wrote before exiting is read on the next turn.
                Some(s) => {
                    self.exited = Some(s);
                    self.exited_at = Some(Instant::now());
                    if s.success() {
                        self.completed();
                    }
                }
                None => std::thread::sleep(FOLLOW_POLL),
            }
        }
    }
}

/// Hashes a snapshot as it is read, holding back the last 32 bytes seen: etcd
/// ends the stream `snapshot save` receives with the sha256 of the database
/// before it, and etcdctl keeps it in the file. A snapshot has it when its
/// size is 32 more than a multiple of 512 (bbolt's pages are multiples of
/// 512), the test etcd's own `snapshot restore` uses.
#[derive(Clone, Default)]
struct EtcdSum {
    hasher: Sha256,
    /// The last `held` bytes read, not yet hashed.
    tail: [u8; 32],
    held: usize,
    total: u64,
}

impl EtcdSum {
    fn feed(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.held + data.len() <= 32 {
            self.tail[self.held..self.held + data.len()].copy_from_slice(data);
            self.held += data.len();
            return;
        }
        // Hash all but the last 32 bytes of `tail[..held] ++ data`.
        let release = self.held + data.len() - 32;
        if release <= self.held {
            self.hasher.update(&self.tail[..release]);
            self.tail.copy_within(release..self.held, 0);
            self.held -= release;
            self.tail[self.held..32].copy_from_slice(data);
        } else {
            self.hasher.update(&self.tail[..self.held]);
            let from_data = release - self.held;
            self.hasher.update(&data[..from_data]);
            self.tail.copy_from_slice(&data[from_data..]);
        }
        self.held = 32;
    }

    /// Whether what was fed so far is a whole snapshot: it ends with the
    /// sha256 of what came before. (A false positive would need a sha256
    /// collision with 32 bytes of bbolt pages.)
    fn complete(&self) -> bool {
        self.held == 32
            && self.total % 512 == 32
            && self.hasher.clone().finalize().as_slice() == self.tail
    }

    /// None when the snapshot carries no checksum; else whether it matched
    /// (the hex sha256 of what was read when it did not).
    fn finish(self) -> Option<Result<(), String>> {
        if self.held < 32 || self.total % 512 != 32 {
            return None;
        }
        let sum = self.hasher.finalize();
        if sum.as_slice() == self.tail {
            Some(Ok(()))
        } else {
            Some(Err(hex::encode(sum)))
        }
    }
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
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not taken")
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

    /// Feeds `data` in pieces of the given sizes, in turn; checks that it is
    /// complete only after the last piece.
    fn etcd_sum(data: &[u8], sizes: &[usize]) -> Option<Result<(), String>> {
        let mut sum = EtcdSum::default();
        let mut rest = data;
        for &size in sizes.iter().cycle() {
            assert!(!sum.complete(), "complete with {} bytes left", rest.len());
            let n = size.min(rest.len());
            sum.feed(&rest[..n]);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
        assert_eq!(sum.complete(), matches!(sum.clone().finish(), Some(Ok(()))));
        sum.finish()
    }

    /// A database as etcd streams it: pages, then the sha256 of the pages.
    fn with_checksum(pages: usize) -> Vec<u8> {
        let mut db: Vec<u8> = (0..pages * 4096).map(|i| (i % 253) as u8).collect();
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        db
    }

    #[test]
    fn etcd_sum_checks_the_checksum_at_the_end_however_the_reads_fall() {
        let db = with_checksum(3);
        for sizes in [&[1][..], &[7, 31, 32, 33], &[4096], &[5000, 3], &[1 << 20]] {
            assert_eq!(etcd_sum(&db, sizes), Some(Ok(())), "{sizes:?}");
        }
        let mut bad = db.clone();
        bad[100] ^= 1;
        assert!(matches!(etcd_sum(&bad, &[4096]), Some(Err(_))));
        let mut bad_sum = db.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(matches!(etcd_sum(&bad_sum, &[33]), Some(Err(_))));
    }

    #[test]
    fn etcd_sum_reports_a_snapshot_without_checksum() {
        let db = with_checksum(2);
        assert_eq!(etcd_sum(&db[..db.len() - 32], &[100]), None);
        assert_eq!(etcd_sum(&db[..20], &[100]), None);
        assert_eq!(etcd_sum(&[], &[100]), None);
    }

    /// A stand-in for `etcdctl snapshot save $2`: copies $1 into `$2.part` in
    /// 64 KiB appends 2 ms apart (after `$PRE`, shell run first), then renames
    /// it, like etcdctl 3.4; with `FAIL_AT=n` it stops after n appends, says
    /// why on stderr and exits 1.
    const SAVE: &str = r#"set -e
src=$1; out=$2.part; eval "$PRE"; : >> "$out"
n=$(( ($(stat -c %s "$src") + 65535) / 65536 )); i=0
while [ $i -lt $n ]; do
  if [ "$i" = "${FAIL_AT:-x}" ]; then echo "Error: rpc error: stream reset (test)" >&2; exit 1; fi
  dd if="$src" of="$out" bs=65536 skip=$i seek=$i count=1 conv=notrunc status=none
  i=$((i+1)); sleep 0.002
done
sleep "${FSYNC:-0}"; mv "$out" "$2""#;

    fn save_with(
        data: &[u8],
        env: &[(&str, &str)],
    ) -> (
        Result<Saved, BackupError>,
        tempfile::TempDir,
        age::x25519::Identity,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("stream");
        fs::write(&src, data).unwrap();
        let plain = dir.path().join("snap.db");
        let mut save = Command::new("sh");
        save.args(["-c", SAVE, "sh"]).arg(&src).arg(&plain);
        for (k, v) in env {
            save.env(k, v);
        }
        // `snapshot status`: says whether it read the whole snapshot while
        // the stand-in was still "fsyncing" (before the rename).
        let mut status = Command::new("sh");
        status
            .args([
                "-c",
                r#"cmp -s /proc/self/fd/0 "$1" && test -e "$2.part" && echo early"#,
                "sh",
            ])
            .arg(&src)
            .arg(&plain);
        let id = age::x25519::Identity::generate();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(id.to_public())];
        let dest = dir.path().join("out.db.age");
        let r = save_encrypting(save, &plain, &dest, &recipients, &mut status);
        (r, dir, id)
    }

    #[test]
    fn save_encrypting_follows_the_growing_file_and_checks_etcds_checksum() {
        let db = with_checksum(150); // 600 KiB: ten appends
        let (saved, dir, id) = save_with(&db, &[("FSYNC", "0.5")]);
        let saved = saved.unwrap();
        assert!(saved.checked);
        let status = saved.status.take().wait_with_output().unwrap();
        assert_eq!(
            text(&status.stdout),
            "early\n",
            "status did not start as soon as the checksum said the snapshot was complete"
        );
        assert_eq!(saved.snapshot_size, db.len() as u64);
        let ct = fs::read(dir.path().join("out.db.age")).unwrap();
        assert_eq!(saved.ciphertext_size, ct.len() as u64);
        assert_eq!(saved.sha256, hex::encode(Sha256::digest(&ct)));
        assert_eq!(age::decrypt(&id, &ct).unwrap(), db);
    }

    #[test]
    fn save_encrypting_reports_a_snapshot_without_checksum_unchecked() {
        let db = with_checksum(20);
        let (saved, _dir, _) = save_with(&db[..db.len() - 32], &[]);
        assert!(!saved.unwrap().checked);
    }

    #[test]
    fn save_encrypting_reports_etcdctls_failure() {
        let db = with_checksum(150);
        let (saved, _dir, _) = save_with(&db, &[("FAIL_AT", "4")]);
        match saved {
            Err(BackupError::Etcdctl { stderr, .. }) => {
                assert!(stderr.contains("stream reset (test)"), "{stderr}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    /// A writer that sets the file's size first and fills it in later: what
    /// was read early (zeros) is not what the file ends up holding, and
    /// etcd's checksum says so.
    #[test]
    fn save_encrypting_refuses_what_etcds_checksum_does_not_match() {
        let db = with_checksum(150);
        let pre = format!("truncate -s {} \"$2.part\"", db.len());
        let (saved, _dir, _) = save_with(&db, &[("PRE", &pre)]);
        match saved {
            Err(BackupError::SnapshotChanged { reason, .. }) => {
                assert!(reason.contains("etcd's checksum"), "{reason}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    struct FailingRead;
    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("bad sector (test)"))
        }
    }
}
