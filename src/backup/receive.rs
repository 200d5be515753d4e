//! `rampart agent receive`: the backup target's end of a member's copy.
//!
//! It only ever runs as the forced command of one member's push key in the
//! target's `authorized_keys` ([`super::authorized_keys_line`]). The cluster and the
//! member come from that line, never from the stream, so a member can only add
//! its own backups; everything read from stdin ([`super::protocol`]) is checked
//! before it is kept:
//!
//! - the header, the name (exactly `<cluster>-<member>-<stamp>.db.age` of the
//!   command line's cluster and member) and the manifest (the same file,
//!   cluster, member and size) before anything touches the disk;
//! - the ciphertext's size and sha256 against the manifest, and that nothing
//!   follows it, before anything gets its final name.
//!
//! Both files are written to hidden 0600 temp files beside their targets,
//! fsynced, and renamed ciphertext first, manifest last: a manifest present
//! means the backup is complete. Temp files go on every failure, including the
//! session dropping (EOF early, or SIGHUP/SIGTERM from sshd). One receive per
//! member at a time (a lock file), then the target's retention for this
//! member's backups only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use time::OffsetDateTime;

use super::fsutil::{
    create_private, hidden_tmp_path, private_dir, sync_dir, write_synced, HashingWriter,
    RemoveOnDrop, WritebackFile,
};
use super::protocol::{Header, ReceiveReport};
use super::prune::prune_dir;
use super::{manifest_path, names, signals, BackupError, Manifest, ReceiveError, RetentionPolicy};
use crate::digest::sha256_file;

/// What the forced command says: whose backups, where, and how many to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRequest {
    pub cluster: String,
    pub member: String,
    pub dir: PathBuf,
    /// Applied to this member's backups in `dir` after each receive; no
    /// count and no age keeps everything.
    pub retention: RetentionPolicy,
}

/// Reads one backup from `input`, stores it in `req.dir` and applies
/// retention; see the module doc for what is checked. `now` drives retention.
pub fn receive(
    req: &ReceiveRequest,
    input: impl Read,
    now: OffsetDateTime,
) -> Result<ReceiveReport, ReceiveError> {
    check_request(req)?;
    let prefix = names::prefix(&req.cluster, &req.member);
    let mut input = BufReader::with_capacity(1 << 20, input);
    let a = announced(req, &prefix, &mut input)?;

    // Only a well-formed backup of this member gets this far: anything else
    // has left no trace on the disk.
    private_dir(&req.dir).map_err(BackupError::io("create", &req.dir))?;
    let _lock = MemberLock::take(req, &prefix)?;
    remove_temps(&req.dir, &prefix);
    let out = req.dir.join(&a.header.file);
    let already_stored = out.exists();
    if already_stored {
        resend(&out, &a, input)?;
    } else {
        store(&out, &a, input)?;
    }
    let pruned = prune_dir(&req.dir, &req.cluster, &req.member, &req.retention, now)?;
    Ok(ReceiveReport {
        file: a.header.file,
        sha256: a.manifest.sha256,
        size: a.header.size,
        already_stored,
        pruned: pruned
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
    })
}

/// What the stream says it carries, checked: the header, and the manifest
/// as sent (stored byte for byte) and as parsed.
struct Announced {
    header: Header,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
}

/// Reads and checks the header and the manifest.
fn announced(
    req: &ReceiveRequest,
    prefix: &str,
    input: &mut impl BufRead,
) -> Result<Announced, ReceiveError> {
    let header = Header::read(input)
        .map_err(ReceiveError::Input)?
        .map_err(|reason| ReceiveError::Header { reason })?;
    if names::created(&header.file, prefix).is_none() {
        return Err(ReceiveError::Name {
            file: header.file,
            cluster: req.cluster.clone(),
            member: req.member.clone(),
        });
    }
    let manifest_bytes = read_exactly(input, header.manifest_size, "the manifest")?;
    let manifest = check_manifest(req, &header, &manifest_bytes)?;
    Ok(Announced {
        header,
        manifest,
        manifest_bytes,
    })
}

/// Names from the forced command end up in file names: no separators, no
/// hidden or relative names, nothing a terminal would interpret.
fn check_request(req: &ReceiveRequest) -> Result<(), ReceiveError> {
    for (what, v) in [("--cluster", &req.cluster), ("--member", &req.member)] {
        let reason = if v.is_empty() {
            "is empty"
        } else if v.starts_with('.') {
            "starts with a dot"
        } else if v.contains('/') {
            "contains a slash"
        } else if v.chars().any(char::is_control) {
            "contains a control character"
        } else {
            continue;
        };
        return Err(ReceiveError::Command {
            reason: format!("{what} {v:?} {reason}"),
        });
    }
    Ok(())
}

/// Reads exactly `n` bytes; fewer is [`ReceiveError::Truncated`].
fn read_exactly(
    input: &mut impl Read,
    n: u64,
    what: &'static str,
) -> Result<Vec<u8>, ReceiveError> {
    let mut buf = Vec::new();
    let got = input
        .take(n)
        .read_to_end(&mut buf)
        .map_err(ReceiveError::Input)? as u64;
    if got < n {
        return Err(ReceiveError::Truncated {
            what,
            got,
            expected: n,
        });
    }
    Ok(buf)
}

/// The manifest must parse and describe exactly the backup the header announces.
fn check_manifest(
    req: &ReceiveRequest,
    header: &Header,
    bytes: &[u8],
) -> Result<Manifest, ReceiveError> {
    let bad = |reason: String| ReceiveError::Manifest {
        file: header.file.clone(),
        reason,
    };
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    let mismatch = [
        ("file", &m.file, &header.file),
        ("cluster", &m.cluster, &req.cluster),
        ("member", &m.member, &req.member),
    ]
    .into_iter()
    .find(|(_, got, want)| got != want);
    if let Some((field, got, want)) = mismatch {
        return Err(bad(format!("it names {field} {got:?}, not {want:?}")));
    }
    if m.ciphertext_size != header.size {
        return Err(bad(format!(
            "it says {} bytes, the header {}",
            m.ciphertext_size, header.size
        )));
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("sha256 {:?} is not 64 hex digits", m.sha256)));
    }
    Ok(m)
}

/// Copies the ciphertext from `input` into `out` (`dest` names it in
/// errors), hashing it, then checks that it was all there, that nothing
/// follows, and its sha256.
fn take_ciphertext<W: Write>(
    mut input: impl Read,
    out: W,
    dest: &Path,
    a: &Announced,
) -> Result<W, ReceiveError> {
    let (header, manifest) = (&a.header, &a.manifest);
    let mut writer = HashingWriter::new(out);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = header.size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReceiveError::Input(e)),
        };
        writer
            .write_all(&buf[..n])
            .map_err(BackupError::io("write", dest))?;
        left -= n as u64;
    }
    let (out, sha256, got) = writer.finish();
    if got < header.size {
        return Err(ReceiveError::Truncated {
            what: "the backup",
            got,
            expected: header.size,
        });
    }
    let mut probe = [0u8; 1];
    if input.read(&mut probe).map_err(ReceiveError::Input)? != 0 {
        return Err(ReceiveError::Trailing {
            file: header.file.clone(),
        });
    }
    if !sha256.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(ReceiveError::ShaMismatch {
            file: header.file.clone(),
            actual: sha256,
            expected: manifest.sha256.clone(),
        });
    }
    Ok(out)
}

/// A new backup: the ciphertext to a hidden temp, fsynced, renamed; then the
/// manifest the same way, so that a manifest present means a complete backup.
fn store(out: &Path, a: &Announced, input: impl Read) -> Result<(), ReceiveError> {
    let tmp = hidden_tmp_path(out);
    let guard = RemoveOnDrop::new(tmp.clone());
    let file = create_private(&tmp).map_err(BackupError::io("create", &tmp))?;
    let file = take_ciphertext(input, WritebackFile::new(file), &tmp, a)?.into_inner();
    file.sync_all().map_err(BackupError::io("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, out).map_err(BackupError::io("rename", &tmp))?;
    guard.disarm();
    place_manifest(out, &a.manifest_bytes)
}

/// The backup's name is taken: a re-send of the same content (its first
/// report was lost) is success, anything else is refused. The stream is
/// still read and checked in full, so a re-send is held to the same rules.
fn resend(out: &Path, a: &Announced, input: impl Read) -> Result<(), ReceiveError> {
    take_ciphertext(input, io::sink(), out, a)?;
    let (existing, _) = sha256_file(out).map_err(BackupError::io("read", out))?;
    if !existing.eq_ignore_ascii_case(&a.manifest.sha256) {
        return Err(ReceiveError::Conflict {
            file: a.header.file.clone(),
            existing,
            sent: a.manifest.sha256.clone(),
        });
    }
    // Completes a backup whose manifest never got its name (the receive that
    // stored it was stopped between the two renames).
    if !manifest_path(out).exists() {
        place_manifest(out, &a.manifest_bytes)?;
    }
    Ok(())
}

/// Writes the manifest of `out` through a hidden temp (fsynced, renamed) and
/// fsyncs the dir, which makes both renames durable.
fn place_manifest(out: &Path, bytes: &[u8]) -> Result<(), ReceiveError> {
    let mpath = manifest_path(out);
    let tmp = hidden_tmp_path(&mpath);
    let guard = RemoveOnDrop::new(tmp.clone());
    write_synced(&tmp, bytes).map_err(BackupError::io("write", &tmp))?;
    fs::rename(&tmp, &mpath).map_err(BackupError::io("rename", &tmp))?;
    guard.disarm();
    let dir = out.parent().expect("joined a name");
    sync_dir(dir).map_err(BackupError::io("sync", dir))?;
    Ok(())
}

/// Deletes this member's temp files in `dir` (`.<backup or manifest>.tmp`):
/// called with the member's lock held, so they are a dead receive's.
fn remove_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
            continue;
        };
        let backup = match inner.strip_suffix(".manifest.json") {
            Some(base) => format!("{base}{}", names::SUFFIX),
            None => inner.to_string(),
        };
        if names::created(&backup, prefix).is_some() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Set while this process holds a member lock, for the signal watcher.
static LOCK_HELD: AtomicBool = AtomicBool::new(false);

/// `<dir>/.<cluster>-<member>-lock`, held (flock) for the whole receive: two
/// receives of one member would race on its temp files and its retention.
/// A second one fails at once rather than wait behind a stalled session.
struct MemberLock {
    _file: File,
}

impl MemberLock {
    fn take(req: &ReceiveRequest, prefix: &str) -> Result<MemberLock, ReceiveError> {
        let path = req.dir.join(format!(".{prefix}lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(BackupError::io("open the lock", &path))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(ReceiveError::Busy {
                    cluster: req.cluster.clone(),
                    member: req.member.clone(),
                    path,
                });
            }
            return Err(BackupError::io("lock", &path)(e).into());
        }
        LOCK_HELD.store(true, Ordering::SeqCst);
        Ok(MemberLock { _file: file })
    }
}

impl Drop for MemberLock {
    fn drop(&mut self) {
        // The lock itself goes with the descriptor.
        LOCK_HELD.store(false, Ordering::SeqCst);
    }
}

/// Removes this member's temp files when sshd ends the session with SIGHUP or
/// SIGTERM (a Rust process killed by a signal runs no destructors). Call
/// before any other thread is spawned, as for [`super::cleanup_on_signal`].
pub fn cleanup_receive_on_signal(req: &ReceiveRequest) {
    let dir = req.dir.clone();
    let prefix = names::prefix(&req.cluster, &req.member);
    signals::exit_on_signal(move |sig| {
        // Without the lock, the temp files may be another receive's.
        if LOCK_HELD.load(Ordering::SeqCst) {
            remove_temps(&dir, &prefix);
        }
        eprintln!("error: interrupted by signal {sig}; partial files removed, nothing new stored");
    });
}

#[cfg(test)]
#[path = "receive_tests.rs"]
mod tests;
