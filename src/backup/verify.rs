//! `rampart backup verify`: is this `.db.age` file a backup we can restore from?
//!
//! Order matters: the ciphertext is checked against the manifest beside it
//! (size, then sha256) before any decryption, so a damaged or substituted file
//! is refused without touching a key. Then it is decrypted in a stream into a
//! 0600 file in a fresh 0700 dir, `snapshot status` reads it, and the dir is
//! deleted on every exit path: errors and panics by a drop guard, SIGINT,
//! SIGTERM and SIGHUP by `signals` (the dir is registered there), and SIGKILL,
//! which nothing can catch, by the next verification, which deletes scratch
//! dirs whose owner is gone (see `clear_stale`).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::fsutil::create_private;
use super::signals::{register_with, Registration};
use super::{etcd, manifest_path, BackupError, Manifest, SnapshotStatus, VerifyError};
use crate::digest::sha256_file;

/// How to verify: the keys, the tools, where plaintext may go.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// age identity files (`AGE-SECRET-KEY-…` lines) or unencrypted SSH private keys.
    pub identities: Vec<PathBuf>,
    pub etcdctl: PathBuf,
    /// Preferred for `snapshot status` when given and present (etcd ≥ 3.5).
    pub etcdutl: Option<PathBuf>,
    /// Where the temporary plaintext goes (default: `$TMPDIR`, else `/tmp`).
    /// It needs room for the whole snapshot.
    pub scratch: Option<PathBuf>,
    /// Set (by Ctrl-C, say) to abandon the decryption within a MiB:
    /// [`VerifyError::Cancelled`], and the plaintext is deleted.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What was checked, for the table or `--output json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub file: PathBuf,
    pub sha256: String,
    pub ciphertext_size: u64,
    pub snapshot_size: u64,
    pub status: SnapshotStatus,
    /// The manifest beside the file, when there was one (and everything matched it).
    pub manifest: Option<Manifest>,
}

pub fn verify(file: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    // Dropping the decrypted copy deletes its dir.
    verify_keep(file, opts).map(|(report, _)| report)
}

/// A verified snapshot's plaintext in a fresh 0700 dir (the file 0600),
/// deleted with its dir when dropped: on every exit path of the caller,
/// panics included; and by the signal watcher, when there is one.
#[derive(Debug)]
pub struct Decrypted {
    /// Deletes the dir (when dropped, or by the signal watcher).
    dir: Option<Registration>,
    /// The dir, open and `flock`ed while it exists: how a later verification
    /// tells this live run's dir from one a killed run left (the kernel
    /// drops the lock when the process dies, however it dies).
    _lock: File,
    /// The plaintext snapshot.
    pub path: PathBuf,
    /// sha256 of the plaintext, hex: copies of it are checked against this.
    pub sha256: String,
    pub size: u64,
}

impl Drop for Decrypted {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            dir.remove();
        }
    }
}

/// [`verify`], keeping the plaintext for the caller (`backup restore`
/// uploads it to the members) instead of deleting it at once.
pub fn verify_keep(
    file: &Path,
    opts: &VerifyOptions,
) -> Result<(VerifyReport, Decrypted), VerifyError> {
    let identities = opts
        .identities
        .iter()
        .map(|p| load_identity(p))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let read_err = |source| VerifyError::Read {
        path: file.to_path_buf(),
        source,
    };
    let size = fs::metadata(file).map_err(read_err)?.len();

    let mpath = manifest_path(file);
    let manifest =
        match fs::read(&mpath) {
            Ok(bytes) => Some(serde_json::from_slice::<Manifest>(&bytes).map_err(|e| {
                VerifyError::Manifest {
                    path: mpath.clone(),
                    reason: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(VerifyError::Manifest {
                    path: mpath,
                    reason: e.to_string(),
                })
            }
        };
    if let Some(m) = &manifest {
        if size < m.ciphertext_size {
            return Err(VerifyError::Truncated {
                path: file.to_path_buf(),
                actual: size,
                expected: m.ciphertext_size,
            });
        }
        let (sha, _) = sha256_file(file).map_err(read_err)?;
        if sha != m.sha256 {
            return Err(VerifyError::ShaMismatch {
                path: file.to_path_buf(),
                actual: sha,
                expected: m.sha256.clone(),
            });
        }
    }

    let (mut kept, out) = make_scratch(opts.scratch.as_deref())?;
    let plain = kept.path.clone();
    let (sha256, snapshot_size, plain_sha) =
        decrypt(file, &identities, out, &plain, opts.cancel.as_deref())?;
    kept.sha256 = plain_sha;
    kept.size = snapshot_size;

    let cmd = etcd::status_command(&opts.etcdctl, opts.etcdutl.as_deref(), &plain);
    let desc = etcd::describe(&cmd);
    let status = match etcd::run(cmd) {
        Ok(out) => {
            etcd::parse_status(&out.stdout, &desc).map_err(|e| VerifyError::Tool(Box::new(e)))?
        }
        Err(BackupError::Etcdctl { stderr, .. }) => {
            return Err(VerifyError::NotSnapshot {
                path: file.to_path_buf(),
                reason: stderr,
            })
        }
        Err(e) => return Err(VerifyError::Tool(Box::new(e))),
    };
    if let Some(m) = &manifest {
        let checks: [(&'static str, String, String); 4] = [
            (
                "revision",
                status.revision.to_string(),
                m.revision.to_string(),
            ),
            (
                "totalKey",
                status.total_key.to_string(),
                m.total_keys.to_string(),
            ),
            ("hash", status.hash.to_string(), m.snapshot_hash.to_string()),
            (
                "snapshot size",
                snapshot_size.to_string(),
                m.snapshot_size.to_string(),
            ),
        ];
        for (field, actual, expected) in checks {
            if actual != expected {
                return Err(VerifyError::ManifestDisagrees {
                    path: file.to_path_buf(),
                    field,
                    actual,
                    expected,
                });
            }
        }
    }
    Ok((
        VerifyReport {
            file: file.to_path_buf(),
            sha256,
            ciphertext_size: size,
            snapshot_size,
            status,
            manifest,
        },
        kept,
    ))
}

/// Streams `file` through age into `out`, the file at `plain`. Returns the
/// ciphertext's sha256, the plaintext size and the plaintext's sha256.
fn decrypt(
    file: &Path,
    identities: &[Box<dyn age::Identity>],
    mut out: File,
    plain: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<(String, u64, String), VerifyError> {
    let path = || file.to_path_buf();
    let input = File::open(file).map_err(|source| VerifyError::Read {
        path: path(),
        source,
    })?;
    let mut hashed = HashingReader {
        inner: input,
        hasher: Sha256::new(),
    };
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 20, &mut hashed))
        .map_err(|e| VerifyError::NotAge {
            path: path(),
            reason: e.to_string(),
        })?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref()))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => VerifyError::WrongIdentity { path: path() },
            other => VerifyError::Corrupt {
                path: path(),
                offset: 0,
                reason: other.to_string(),
            },
        })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut plain_hash = Sha256::new();
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(VerifyError::Cancelled { path: path() });
        }
        let n = reader.read(&mut buf).map_err(|e| VerifyError::Corrupt {
            path: path(),
            offset: total,
            reason: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|source| VerifyError::Scratch {
                action: "write",
                path: plain.to_path_buf(),
                source,
            })?;
        plain_hash.update(&buf[..n]);
        total += n as u64;
    }
    drop(reader);
    Ok((
        hex::encode(hashed.hasher.finalize()),
        total,
        hex::encode(plain_hash.finalize()),
    ))
}

/// One identity file: age's own format first (as `age -i` does), then an SSH key.
fn load_identity(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, VerifyError> {
    let bad = |reason: String| VerifyError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = fs::read(path).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Ok(f) = age::IdentityFile::from_buffer(&bytes[..]) {
        let ids = f.into_identities().map_err(|e| bad(e.to_string()))?;
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    match age::ssh::Identity::from_buffer(&bytes[..], Some(path.display().to_string())) {
        Ok(id @ age::ssh::Identity::Unencrypted(_)) => Ok(vec![Box::new(id)]),
        Ok(age::ssh::Identity::Encrypted(_)) => Err(bad(
            "a passphrase-protected SSH key, which rampart cannot unlock yet; decrypt with `age -d -i` instead".into(),
        )),
        Ok(age::ssh::Identity::Unsupported(k)) => Err(bad(format!("an unsupported SSH key: {k:?}"))),
        Err(_) => Err(bad(
            "neither an age identity file nor an SSH private key".into(),
        )),
    }
}

/// Scratch dirs are `<base>/.rampart-verify-<pid>-<random>`: the prefix
/// says whose they are, the pid who made one.
const SCRATCH_PREFIX: &str = ".rampart-verify-";

/// A fresh 0700 dir for the plaintext under `base` (default: `$TMPDIR`, else
/// `/tmp`), holding the empty 0600 plaintext file, returned open. First
/// deletes what killed verifications left there ([`clear_stale`]).
///
/// The dir and the file are made while the signal watcher cannot run (see
/// `signals::register_with`): a signal then either comes first, and nothing
/// is made, or after, and finds them registered. Later writes only go
/// through the open file, so the watcher deletes all there is.
fn make_scratch(base: Option<&Path>) -> Result<(Decrypted, File), VerifyError> {
    let base = base
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    clear_stale(&base);
    let dir = base.join(format!(
        "{SCRATCH_PREFIX}{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let path = dir.join("snapshot.db");
    let scratch_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Scratch {
            action,
            path,
            source,
        }
    };
    let (registration, made) = register_with(&dir, || {
        // mkdir fails on an existing name, so nobody else's dir (or symlink) is used.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(scratch_err("create", &dir))?;
        let lock = File::open(&dir).map_err(scratch_err("open", &dir))?;
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(scratch_err("lock", &dir)(io::Error::last_os_error()));
        }
        let out = create_private(&path).map_err(scratch_err("create", &path))?;
        Ok((lock, out))
    });
    match made {
        Ok((lock, out)) => Ok((
            Decrypted {
                dir: Some(registration),
                _lock: lock,
                path,
                sha256: String::new(),
                size: 0,
            },
            out,
        )),
        Err(e) => {
            // Whatever part was made (the dir, without the file).
            registration.remove();
            Err(e)
        }
    }
}

/// Deletes the scratch dirs in `base` that verifications killed by SIGKILL
/// (or a power cut) left behind, with the plaintext in them. A dir is taken
/// only if it is ours by name, owner and kind (a real dir of this user, not a
/// symlink), its process is gone (`kill(pid, 0)` finds none) and its `flock`
/// is free. The lock is what proves the owner dead: it goes with the process
/// however it ends and cannot be fooled by a reused pid, or by a pid in
/// another pid namespace sharing this dir; the pid test covers the instant
/// between a live run's mkdir and its lock. Failures are ignored: this is
/// housekeeping, and the run's own dir does not depend on it.
fn clear_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let path = e.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && m.uid() == uid => {}
            _ => continue,
        }
        // SAFETY: signal 0 only checks that the process exists.
        let alive = pid <= 0
            || unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if alive {
            continue;
        }
        let Ok(dir) = File::open(&path) else {
            continue;
        };
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Hashes what passes through, so the sha256 comes for free with the decryption.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
