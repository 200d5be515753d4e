//! The local state dir: certificates in the clear, everything private sealed with age.
//!
//! Layout (dirs 0700, files 0600, every write atomic: temp file, fsync, rename):
//!
//! ```text
//! <dir>/state-key.age            random X25519 identity, sealed to the admin (identity or passphrase)
//! <dir>/super-admin.conf.age     break-glass kubeconfig, never copied to hosts
//! <dir>/pki/<name>.crt           certificates (public)
//! <dir>/pki/<name>.key.age       private keys, sealed to the state key
//! <dir>/pki/sa.key.age, sa.pub   service-account signing key pair
//! <dir>/pki/encryption-key.age   the 32-byte key for Secrets at rest
//! <dir>/pki/<ca>.next.crt, <ca>.next.key.age, <ca>.rotation.json
//!                                a CA rotation under way (see `pki::rotation`)
//! ```
//!
//! Every secret is sealed to the state key's recipient, not to the admin directly,
//! so unlocking costs one scrypt (or one identity decryption) however many keys
//! there are, and thousands of keys seal and unseal in milliseconds.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};

use crate::secret::Secret;

use super::{par_map, PkiError};

/// The encryption-at-rest key's state-dir name (`encryption-key.age`, and
/// `encryption-key.name` once a rotation named it).
pub const ENCRYPTION_KEY: &str = "encryption-key";

/// How the admin unlocks the state key. The CLI builds this (prompting on a tty);
/// the library never prompts.
pub enum Unlock {
    /// An age identity file (`age-keygen` output); the state key is sealed to its recipients.
    Identity(PathBuf),
    /// A passphrase (scrypt).
    Passphrase(SecretString),
}

impl Unlock {
    fn describe(&self) -> &'static str {
        match self {
            Unlock::Identity(_) => "an identity file",
            Unlock::Passphrase(_) => "a passphrase",
        }
    }
}

/// The unlocked state key: seals and unseals every secret in the state dir.
pub struct StateKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

impl StateKey {
    fn new(identity: age::x25519::Identity) -> StateKey {
        let recipient = identity.to_public();
        StateKey {
            identity,
            recipient,
        }
    }

    /// age ciphertext of `plain`, for the state dir.
    pub fn seal(&self, plain: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
        age::encrypt(&self.recipient, plain).map_err(|source| PkiError::Seal {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn unseal(&self, sealed: &[u8], path: &Path) -> Result<Secret, PkiError> {
        age::decrypt(&self.identity, sealed)
            .map(Secret::new)
            .map_err(|source| PkiError::Unseal {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
    }
}

/// A file to be written by [`StateDir::write_all`].
pub struct Pending {
    pub path: PathBuf,
    /// Already sealed when the content is private.
    pub bytes: Vec<u8>,
}

/// The state dir at the edge of the otherwise pure PKI.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn state_key_path(&self) -> PathBuf {
        self.root.join("state-key.age")
    }
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.crt"))
    }
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.key.age"))
    }
    pub fn sa_key_path(&self) -> PathBuf {
        self.root.join("pki/sa.key.age")
    }
    pub fn sa_pub_path(&self) -> PathBuf {
        self.public_key_path("sa")
    }
    /// `pki/<name>.pub`: a public key (the service-account key's halves).
    pub fn public_key_path(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.pub"))
    }
    pub fn encryption_key_path(&self) -> PathBuf {
        self.sealed_path(ENCRYPTION_KEY)
    }
    /// `pki/<name>.age`: sealed material that is not a certificate's key.
    pub fn sealed_path(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.age"))
    }
    /// `pki/<name>.name`: the name an encryption key has in the
    /// EncryptionConfiguration (and in every value it encrypts).
    pub fn name_path(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.name"))
    }
    /// An etcd member's backup push key (`backups.target`), sealed.
    pub fn push_key_path(&self, member: &str) -> PathBuf {
        self.root.join(format!("pki/backup-push-{member}.key.age"))
    }
    pub fn push_pub_path(&self, member: &str) -> PathBuf {
        self.root.join(format!("pki/backup-push-{member}.pub"))
    }
    /// The stage of a rotation of CA `ca` (see `pki::rotation`).
    pub fn rotation_path(&self, ca: &str) -> PathBuf {
        self.root.join("pki").join(format!("{ca}.rotation.json"))
    }
    pub fn super_admin_conf_path(&self) -> PathBuf {
        self.root.join("super-admin.conf.age")
    }

    /// The certificate (public) and the sealed key of one issued item, to be
    /// written by [`StateDir::write_all`].
    pub fn issued_files(
        &self,
        key: &StateKey,
        name: &str,
        issued: &super::Issued,
    ) -> Result<[Pending; 2], PkiError> {
        let key_path = self.key_path(name);
        Ok([
            Pending {
                bytes: key.seal(issued.key_pem.expose(), &key_path)?,
                path: key_path,
            },
            Pending {
                path: self.cert_path(name),
                bytes: issued.cert_pem.clone().into_bytes(),
            },
        ])
    }

    /// Unlocks the state key, creating the dir and a fresh key on first use.
    /// A missing state key next to sealed files is not a first use: a new key
    /// would open none of them, so it is an error, and nothing is written.
    pub fn unlock_or_create(&self, unlock: &Unlock) -> Result<StateKey, PkiError> {
        self.recover()?;
        let path = self.state_key_path();
        if path.exists() {
            return self.unlock(unlock);
        }
        let sealed = fs::read_dir(self.root.join("pki"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".age"))
                    .count()
            })
            .unwrap_or(0);
        if sealed > 0 {
            return Err(PkiError::Corrupt {
                path,
                reason: format!(
                    "it is missing, but {sealed} sealed file(s) in {} need it: restore it from your backup of the state dir (a new state key would open none of them)",
                    self.root.join("pki").display()
                ),
            });
        }
        for d in [self.root.clone(), self.root.join("pki")] {
            make_private_dir(&d)?;
        }
        let identity = age::x25519::Identity::generate();
        // The plaintext is a valid age identity file, so `age -d -i` can use it directly.
        let plain = format!("{}\n", identity.to_string().expose_secret());
        let plain = Secret::from(plain);
        let sealed = seal_for_admin(plain.expose(), unlock, &path)?;
        self.write_all(vec![Pending {
            path: path.clone(),
            bytes: sealed,
        }])?;
        Ok(StateKey::new(identity))
    }

    /// Unlocks an existing state key.
    pub fn unlock(&self, unlock: &Unlock) -> Result<StateKey, PkiError> {
        self.recover()?;
        let path = self.state_key_path();
        let sealed = read_opt(&path)?.ok_or_else(|| PkiError::NotInitialised {
            name: "state key".into(),
            reason: format!("{} does not exist", path.display()),
        })?;
        let plain = unseal_for_admin(&sealed, unlock, &path)?;
        let text = plain.expose_str().trim();
        let identity = age::x25519::Identity::from_str(text).map_err(|e| PkiError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(StateKey::new(identity))
    }

    /// A certificate's PEM, or None when it is not there.
    pub fn read_cert(&self, name: &str) -> Result<Option<String>, PkiError> {
        let path = self.cert_path(name);
        match read_opt(&path)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| PkiError::BadCert {
                    name: name.into(),
                    path,
                    reason: "not UTF-8".into(),
                }),
        }
    }

    /// A sealed file's plaintext, or None when it is not there.
    pub fn read_sealed(&self, path: &Path, key: &StateKey) -> Result<Option<Secret>, PkiError> {
        read_opt(path)?.map(|b| key.unseal(&b, path)).transpose()
    }

    /// A public file's bytes, or None when it is not there.
    pub fn read_public(&self, path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
        read_opt(path)
    }

    /// Writes every file as one transaction: all temp files first, then one
    /// flush to disk, then the list of renames to come (`.commit`), then the
    /// renames, then one fsync per directory, then the list goes. A crash
    /// before the list leaves the old state (the temp files are ignored); a
    /// crash after it is finished by the next [`StateDir::recover`]. Either
    /// way no file is torn and no set is half there (a CA's certificate
    /// without its key).
    pub fn write_all(&self, files: Vec<Pending>) -> Result<(), PkiError> {
        if files.is_empty() {
            return Ok(());
        }
        // One fsync per file costs ~1 ms each, seconds for a 1,000-node cluster;
        // a single syncfs over the state dir's filesystem costs about one.
        let batch = files.len() > 16 && cfg!(target_os = "linux");
        let tmps = par_map(&files, |f| write_temp(f, !batch))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        if batch {
            sync_filesystem(&self.root)?;
        }
        // Relative to the root: the next run may name the dir another way.
        let list: String = files
            .iter()
            .map(|f| {
                let rel = f.path.strip_prefix(&self.root).unwrap_or(&f.path);
                format!("{}\n", rel.display())
            })
            .collect();
        let commit = self.commit_path();
        let commit_file = Pending {
            path: commit.clone(),
            bytes: list.into_bytes(),
        };
        let tmp = write_temp(&commit_file, true)?;
        fs::rename(&tmp, &commit).map_err(|source| io_err("write", &commit, source))?;
        sync_dir(&self.root)?;
        for (tmp, f) in tmps.iter().zip(&files) {
            fs::rename(tmp, &f.path).map_err(|source| io_err("write", &f.path, source))?;
        }
        self.finish(files.iter().map(|f| f.path.as_path()))
    }

    /// Where [`StateDir::write_all`] lists the renames it is making.
    fn commit_path(&self) -> PathBuf {
        self.root.join(".commit")
    }

    /// fsyncs the directories of `paths`, then drops the commit list.
    fn finish<'a>(&self, paths: impl Iterator<Item = &'a Path>) -> Result<(), PkiError> {
        let mut dirs: Vec<&Path> = paths.filter_map(|p| p.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            sync_dir(d)?;
        }
        let commit = self.commit_path();
        match fs::remove_file(&commit) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_err("remove", &commit, source)),
        }
    }

    /// Finishes a write that a crash interrupted after its commit list was
    /// written: every listed file whose complete temp copy is still there is
    /// renamed into place. Every command that opens the state dir runs this
    /// first, so a killed `init` is completed by whatever runs next.
    pub fn recover(&self) -> Result<(), PkiError> {
        let commit = self.commit_path();
        let Some(list) = read_opt(&commit)? else {
            return Ok(());
        };
        let paths: Vec<PathBuf> = String::from_utf8_lossy(&list)
            .lines()
            .map(Path::new)
            // Only plain relative paths: the list is ours, but is read from
            // disk, and renames must never reach outside the state dir.
            .filter(|p| {
                !p.as_os_str().is_empty()
                    && p.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .map(|p| self.root.join(p))
            .collect();
        for path in &paths {
            let tmp = temp_path(path);
            if tmp.exists() {
                fs::rename(&tmp, path).map_err(|source| io_err("write", path, source))?;
            }
        }
        self.finish(paths.iter().map(PathBuf::as_path))
    }
}

fn sync_dir(d: &Path) -> Result<(), PkiError> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_err("sync", d, source))
}

/// The temp file a new version of `path` is written to: hidden, beside it.
fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(".{file_name}.tmp"))
}

/// Writes one private file (a kubeconfig with a key) atomically and 0600,
/// whatever was at `path` before: a new file renamed over it, never the old
/// one rewritten in place (which would keep its mode, 0644 say, and its owner).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let f = Pending {
        path: path.to_path_buf(),
        bytes: bytes.to_vec(),
    };
    let tmp = write_temp(&f, true)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        io_err("write", path, source)
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Writes `f` to a 0600 temp file beside it (fsynced when `sync`); returns its path.
fn write_temp(f: &Pending, sync: bool) -> Result<PathBuf, PkiError> {
    let tmp = temp_path(&f.path);
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(&f.bytes)?;
        if sync {
            out.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|source| io_err("write", &f.path, source))?;
    Ok(tmp)
}

/// Flushes the filesystem holding `root` (Linux syncfs(2)).
#[cfg(target_os = "linux")]
fn sync_filesystem(root: &Path) -> Result<(), PkiError> {
    use std::os::fd::AsRawFd;
    let dir = File::open(root).map_err(|source| io_err("sync", root, source))?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err("sync", root, std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_root: &Path) -> Result<(), PkiError> {
    unreachable!("batched writes are only used on Linux")
}

fn make_private_dir(d: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(d).map_err(|source| io_err("create", d, source))?;
    fs::set_permissions(d, fs::Permissions::from_mode(0o700))
        .map_err(|source| io_err("restrict permissions of", d, source))
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err("read", path, source)),
    }
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn identity_file(path: &Path) -> Result<age::IdentityFile<age::NoCallbacks>, PkiError> {
    age::IdentityFile::from_file(path.to_string_lossy().into_owned()).map_err(|e| {
        PkiError::Identity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}

fn seal_for_admin(plain: &[u8], unlock: &Unlock, path: &Path) -> Result<Vec<u8>, PkiError> {
    let seal_err = |source| PkiError::Seal {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let encryptor = match unlock {
        Unlock::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
        Unlock::Identity(file) => {
            let recipients = identity_file(file)?.to_recipients().map_err(seal_err)?;
            age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as _))
                .map_err(seal_err)?
        }
    };
    let mut out = Vec::new();
    let mut w = encryptor
        .wrap_output(&mut out)
        .map_err(|source| io_err("seal", path, source))?;
    w.write_all(plain)
        .and_then(|_| w.finish().map(|_| ()))
        .map_err(|source| io_err("seal", path, source))?;
    Ok(out)
}

fn unseal_for_admin(sealed: &[u8], unlock: &Unlock, path: &Path) -> Result<Secret, PkiError> {
    let unseal_err = |source| PkiError::Unseal {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let decryptor = age::Decryptor::new_buffered(sealed).map_err(unseal_err)?;
    let sealed_to = if decryptor.is_scrypt() {
        "a passphrase"
    } else {
        "an identity file"
    };
    if sealed_to != unlock.describe() {
        return Err(PkiError::WrongUnlock {
            path: path.to_path_buf(),
            sealed_to,
            given: unlock.describe(),
        });
    }
    let mut reader = match unlock {
        Unlock::Passphrase(p) => {
            let id = age::scrypt::Identity::new(p.clone());
            decryptor.decrypt(std::iter::once(&id as &dyn age::Identity))
        }
        Unlock::Identity(file) => {
            let ids = identity_file(file)?.into_identities().map_err(unseal_err)?;
            decryptor.decrypt(ids.iter().map(|i| i.as_ref()))
        }
    }
    .map_err(unseal_err)?;
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut plain)
        .map_err(|source| io_err("unseal", path, source))?;
    Ok(Secret::new(plain))
}
