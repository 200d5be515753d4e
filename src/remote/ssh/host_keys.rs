//! Host key trust: pinned keys from the inventory and OpenSSH `known_hosts` files.
//!
//! The rule is strict and the same for targets and bastions:
//! - the server key matches a pin or, when the host has no pin, a
//!   `known_hosts` entry for the address → known;
//! - the address has pins or entries, none of them this key → changed (a hard
//!   error, never bypassed: it is what a man in the middle looks like);
//! - nothing recorded → unknown (refused, unless the caller accepts new keys).
//!
//! Entries are looked up as `address` for port 22 and `[address]:port`
//! otherwise, plain or hashed (`|1|salt|hmac`), through russh's `known_hosts`
//! reader. Keys are compared by their key data only: comments differ freely.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{HashAlg, PublicKey};

/// What is recorded about one address: its pinned keys and `known_hosts` file.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Keys pinned in the inventory (already parsed).
    pub pins: Vec<PublicKey>,
    /// The `known_hosts` file to consult (and append to when accepting).
    pub known_hosts: PathBuf,
    /// The address as dialled (an IP or a name).
    pub address: String,
    pub port: u16,
}

/// The outcome of comparing a server key with what is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    Unknown,
    /// Recorded keys (SHA256 fingerprints) that the server's key is not.
    Changed {
        expected: Vec<String>,
    },
}

/// Why the recorded keys could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read known hosts file {}: {reason}; fix or remove the offending line", path.display())]
pub struct KnownHostsError {
    pub path: PathBuf,
    pub reason: String,
}

impl Trust {
    /// Compares `key` with the pins and the `known_hosts` entries for the address.
    pub fn verdict(&self, key: &PublicKey) -> Result<Verdict, KnownHostsError> {
        let recorded = self.recorded()?;
        if recorded.iter().any(|k| k.key_data() == key.key_data()) {
            return Ok(Verdict::Known);
        }
        if recorded.is_empty() {
            return Ok(Verdict::Unknown);
        }
        Ok(Verdict::Changed {
            expected: recorded.iter().map(fingerprint).collect(),
        })
    }

    /// Every key recorded for the address. A pin in the inventory is the
    /// whole truth: with pins, `known_hosts` is not consulted, so a stale or
    /// planted `known_hosts` line cannot override what the admin pinned.
    pub fn recorded(&self) -> Result<Vec<PublicKey>, KnownHostsError> {
        if !self.pins.is_empty() {
            return Ok(self.pins.clone());
        }
        let mut keys = Vec::new();
        let found = russh::keys::known_hosts::known_host_keys_path(
            &self.address,
            self.port,
            &self.known_hosts,
        )
        .map_err(|e| KnownHostsError {
            path: self.known_hosts.clone(),
            reason: e.to_string(),
        })?;
        keys.extend(found.into_iter().map(|(_, k)| k));
        Ok(keys)
    }

    /// The `known_hosts` host field for the address: `addr` or `[addr]:port`.
    pub fn host_field(&self) -> String {
        host_field(&self.address, self.port)
    }
}

/// `addr` for port 22, `[addr]:port` otherwise (what OpenSSH writes).
pub fn host_field(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// `SHA256:…` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The key in one-line OpenSSH format without a comment (`ssh-ed25519 AAAA…`).
pub fn openssh_line(key: &PublicKey) -> String {
    let mut bare = key.clone();
    bare.set_comment("");
    bare.to_openssh()
        // Encoding a key that was just decoded from the wire cannot fail.
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Parses a pinned key (`ssh-ed25519 AAAA… [comment]`).
pub fn parse_pin(line: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(line.trim()).map_err(|e| e.to_string())
}

/// Appends `host_field key` to `path`: parent directory created 0700, the file
/// 0600, fsynced so that a crash right after a trust decision does not lose it.
/// One `write` of one line on an `O_APPEND` file: concurrent appenders do not
/// interleave.
pub fn append(path: &Path, host_field: &str, key: &PublicKey) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // A file created by hand with looser permissions is tightened: it decides
    // whom rampart talks to.
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    let mut line = String::new();
    if file.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            line.push('\n');
        }
    }
    line.push_str(host_field);
    line.push(' ');
    line.push_str(&openssh_line(key));
    line.push('\n');
    file.write_all(line.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A fresh ed25519 key from `ssh-keygen`, and its `ssh-keygen -lf` fingerprint.
    fn keygen(dir: &Path, name: &str) -> (PublicKey, String) {
        let path = dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@rampart", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen runs");
        assert!(st.success());
        let pubtext = fs::read_to_string(path.with_extension("pub")).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(path.with_extension("pub"))
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        let fp = line.split_whitespace().nth(1).unwrap().to_string();
        (parse_pin(&pubtext).unwrap(), fp)
    }

    fn have_keygen() -> bool {
        Command::new("ssh-keygen").arg("-?").output().is_ok()
    }

    fn trust(dir: &Path, address: &str, port: u16, pins: Vec<PublicKey>) -> Trust {
        Trust {
            pins,
            known_hosts: dir.join("known_hosts"),
            address: address.into(),
            port,
        }
    }

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        if !have_keygen() {
            eprintln!("ssh-keygen not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (key, fp) = keygen(dir.path(), "k");
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(fingerprint(&key), fp);
    }

    #[test]
    fn plain_and_bracketed_entries() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = keygen(dir.path(), "a");
        let (b, _) = keygen(dir.path(), "b");
        let kh = dir.path().join("known_hosts");
        append(&kh, "10.0.0.1", &a).unwrap();
        append(&kh, "[10.0.0.2]:2222", &b).unwrap();

        assert_eq!(
            trust(dir.path(), "10.0.0.1", 22, vec![])
                .verdict(&a)
                .unwrap(),
            Verdict::Known
        );
        assert_eq!(
            trust(dir.path(), "10.0.0.2", 2222, vec![])
                .verdict(&b)
                .unwrap(),
            Verdict::Known
        );
        // Port 22 of .2 is another host as far as known_hosts goes.
        assert_eq!(
            trust(dir.path(), "10.0.0.2", 22, vec![])
                .verdict(&b)
                .unwrap(),
            Verdict::Unknown
        );
        // .1 on another port is unknown too.
        assert_eq!(
            trust(dir.path(), "10.0.0.1", 2222, vec![])
                .verdict(&a)
                .unwrap(),
            Verdict::Unknown
        );
        let mode = fs::metadata(&kh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn hashed_entries_match() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = keygen(dir.path(), "a");
        let (b, _) = keygen(dir.path(), "b");
        let kh = dir.path().join("known_hosts");
        append(&kh, "192.168.7.7", &a).unwrap();
        append(&kh, "[192.168.7.8]:2200", &b).unwrap();
        // ssh-keygen -H rewrites the file with |1|salt|hash host fields.
        let st = Command::new("ssh-keygen")
            .arg("-q")
            .arg("-H")
            .arg("-f")
            .arg(&kh)
            .output()
            .unwrap();
        assert!(st.status.success());
        let text = fs::read_to_string(&kh).unwrap();
        assert!(!text.contains("192.168"), "hashed: {text}");
        assert!(text.contains("|1|"));

        assert_eq!(
            trust(dir.path(), "192.168.7.7", 22, vec![])
                .verdict(&a)
                .unwrap(),
            Verdict::Known
        );
        assert_eq!(
            trust(dir.path(), "192.168.7.8", 2200, vec![])
                .verdict(&b)
                .unwrap(),
            Verdict::Known
        );
        assert!(matches!(
            trust(dir.path(), "192.168.7.7", 22, vec![])
                .verdict(&b)
                .unwrap(),
            Verdict::Changed { .. }
        ));
    }

    #[test]
    fn pinned_key_is_known_and_another_key_is_changed() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, fp_a) = keygen(dir.path(), "a");
        let (b, _) = keygen(dir.path(), "b");
        // The pin carries a comment; the server's key does not.
        let pin = parse_pin(&format!("{} cp1 pinned", openssh_line(&a))).unwrap();
        let t = trust(dir.path(), "10.1.1.1", 22, vec![pin]);
        assert_eq!(t.verdict(&a).unwrap(), Verdict::Known);
        assert_eq!(
            t.verdict(&b).unwrap(),
            Verdict::Changed {
                expected: vec![fp_a]
            }
        );
    }

    #[test]
    fn a_pin_overrides_a_known_hosts_entry_for_the_same_address() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, fp_a) = keygen(dir.path(), "a");
        let (b, _) = keygen(dir.path(), "b");
        // known_hosts trusts b, the inventory pins a: b is refused.
        append(&dir.path().join("known_hosts"), "10.1.1.2", &b).unwrap();
        let t = trust(dir.path(), "10.1.1.2", 22, vec![a]);
        assert_eq!(
            t.verdict(&b).unwrap(),
            Verdict::Changed {
                expected: vec![fp_a]
            }
        );
    }

    #[test]
    fn changed_key_in_known_hosts() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, fp_a) = keygen(dir.path(), "a");
        let (b, _) = keygen(dir.path(), "b");
        append(&dir.path().join("known_hosts"), "10.9.9.9", &a).unwrap();
        let t = trust(dir.path(), "10.9.9.9", 22, vec![]);
        assert_eq!(
            t.verdict(&b).unwrap(),
            Verdict::Changed {
                expected: vec![fp_a]
            }
        );
    }

    #[test]
    fn missing_known_hosts_is_unknown_and_append_creates_it() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = keygen(dir.path(), "a");
        let kh = dir.path().join("sub/dir/known_hosts");
        let t = Trust {
            pins: vec![],
            known_hosts: kh.clone(),
            address: "10.2.2.2".into(),
            port: 22,
        };
        assert_eq!(t.verdict(&a).unwrap(), Verdict::Unknown);
        append(&kh, &t.host_field(), &a).unwrap();
        assert_eq!(t.verdict(&a).unwrap(), Verdict::Known);
        let dmode = fs::metadata(kh.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let text = fs::read_to_string(&kh).unwrap();
        assert_eq!(text, format!("10.2.2.2 {}\n", openssh_line(&a)));
    }
}
