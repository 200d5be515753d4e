//! Encrypting the snapshot while etcdctl writes it: [`save_encrypting`]
//! follows the growing file into age and checks what it encrypted against
//! etcd's own sha256 ([`EtcdSum`]); [`encrypt`] is the after-the-save path
//! for a snapshot without that checksum. Used by the job (`snapshot`); the
//! mod docs of `snapshot` say what the job guarantees around it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::fsutil::{create_private, write_behind, WritebackFile};
use super::{etcd, BackupError};

/// What [`save_encrypting`] produced.
pub(super) struct Saved {
    /// The ciphertext, not yet synced.
    pub(super) file: File,
    /// sha256 of the ciphertext, hex.
    pub(super) sha256: String,
    pub(super) ciphertext_size: u64,
    pub(super) snapshot_size: u64,
    /// Whether the plaintext encrypted matched etcd's own sha256 at its end;
    /// false when the snapshot had none (a mismatch is an error).
    pub(super) checked: bool,
    /// When etcdctl was seen to have finished.
    pub(super) saved_at: Instant,
    /// `snapshot status` of the finished snapshot.
    pub(super) status: KillOnDrop,
}

/// How often the encryption looks for more of the snapshot while etcdctl
/// writes it: short next to a save (seconds), long next to a syscall.
pub(super) const FOLLOW_POLL: Duration = Duration::from_millis(2);

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
pub(super) fn save_encrypting(
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
pub(super) fn open_growing(
    plain: &Path,
    writer: &mut Child,
) -> io::Result<(File, Option<ExitStatus>)> {
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
pub(super) struct Follow<'a, F: FnOnce()> {
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
pub(super) struct EtcdSum {
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
pub(super) fn encrypt(
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
pub(super) fn encrypt_stream<W: Write + Send>(
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

/// The `snapshot status` child: killed if the job fails before waiting for it,
/// so nothing keeps reading a plaintext that is being deleted.
pub(super) struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub(super) fn take(mut self) -> Child {
        self.0.take().expect("taken once")
    }
    pub(super) fn child(&mut self) -> &mut Child {
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
#[path = "follow_tests.rs"]
mod tests;
