//! `rampart backup verify`: is this `.db.age` file a backup we can restore from?
//!
//! Order matters: the ciphertext is checked against the manifest beside it
//! (size, then sha256) before any decryption, so a damaged or substituted file
//! is refused without touching a key. Then it is decrypted in a stream into a
//! 0600 file in a fresh 0700 dir, `snapshot status` reads it, and the dir is
//! deleted on every exit path.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::fsutil::create_private;
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
    /// Where the temporary plaintext goes (default: the system temp dir). It
    /// needs room for the whole snapshot.
    pub scratch: Option<PathBuf>,
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
/// panics included.
#[derive(Debug)]
pub struct Decrypted {
    dir: PathBuf,
    /// The plaintext snapshot.
    pub path: PathBuf,
    /// sha256 of the plaintext, hex: copies of it are checked against this.
    pub sha256: String,
    pub size: u64,
}

impl Drop for Decrypted {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
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

    let scratch = make_scratch(opts.scratch.as_deref())?;
    let plain = scratch.join("snapshot.db");
    let mut kept = Decrypted {
        dir: scratch,
        path: plain.clone(),
        sha256: String::new(),
        size: 0,
    };
    let (sha256, snapshot_size, plain_sha) = decrypt(file, &identities, &plain)?;
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

/// Streams `file` through age into `plain` (new, 0600). Returns the
/// ciphertext's sha256, the plaintext size and the plaintext's sha256.
fn decrypt(
    file: &Path,
    identities: &[Box<dyn age::Identity>],
    plain: &Path,
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
    let mut out = create_private(plain).map_err(|source| VerifyError::Scratch {
        action: "create",
        path: plain.to_path_buf(),
        source,
    })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut plain_hash = Sha256::new();
    loop {
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

/// A fresh 0700 dir for the plaintext, under `base` or the system temp dir.
fn make_scratch(base: Option<&Path>) -> Result<PathBuf, VerifyError> {
    let base = base
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(".rampart-verify-{:016x}", rand::random::<u64>()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| VerifyError::Scratch {
            action: "create",
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
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
