//! SSH settings: the defaults block, per-host overrides, bastions and pinned host keys.
//!
//! Each block is checked where it is written (so a bad default is reported once,
//! at `ssh.…`), then merged per host into an [`SshTarget`].

use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;

use super::{is_dns_name, resolve, LocalFiles, Problems};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// Public-key algorithms OpenSSH uses for host keys (and for user keys).
const KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Checks the fields written in one `ssh` block (`at` is `ssh` or `hosts[N].ssh`).
pub(super) fn check_block(
    s: &RawSsh,
    at: &str,
    base: &Path,
    files: &dyn LocalFiles,
    p: &mut Problems,
) {
    if let Some(user) = &s.user {
        check_user(user, &format!("{at}.user"), p);
    }
    if s.port == Some(0) {
        p.error(
            format!("{at}.port"),
            "0 is not a port: use 1-65535 (22 by default)",
        );
    }
    if let Some(f) = &s.identity_file {
        check_identity_file(f, &format!("{at}.identityFile"), base, files, p);
    }
    if s.known_hosts_file
        .as_deref()
        .is_some_and(|f| f.trim().is_empty())
    {
        p.error(
            format!("{at}.knownHostsFile"),
            "empty path: give the known_hosts file, or remove the field (default ~/.ssh/known_hosts)",
        );
    }
    if let Some(key) = &s.host_key {
        if at == "ssh" {
            p.error(
                "ssh.hostKey",
                "a host key is pinned per host (hosts[N].ssh.hostKey), not in the defaults",
            );
        } else if let Err(why) = check_public_key(key) {
            p.error(format!("{at}.hostKey"), why);
        }
    }
    if let Some(b) = &s.bastion {
        check_bastion(b, &format!("{at}.bastion"), base, files, p);
    }
}

fn check_user(user: &str, at: &str, p: &mut Problems) {
    let plain = user.len() <= 32
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        p.error(
            at,
            format!(
                "`{}` is not a user name (letters, digits, `.`, `_` and `-`, at most 32; e.g. root or admin)",
                user
            ),
        );
    }
}

fn check_identity_file(f: &str, at: &str, base: &Path, files: &dyn LocalFiles, p: &mut Problems) {
    let resolved = resolve(f, base);
    if let Err(why) = files.check_readable(&resolved) {
        p.error(
            at,
            format!(
                "cannot read identity file {}: {why}; create it (ssh-keygen -t ed25519 -f {}) or fix the path",
                resolved.display(),
                resolved.display()
            ),
        );
    }
}

fn check_bastion(b: &RawBastion, at: &str, base: &Path, files: &dyn LocalFiles, p: &mut Problems) {
    if b.address.parse::<IpAddr>().is_err() && !is_dns_name(&b.address) {
        p.error(
            format!("{at}.address"),
            format!(
                "`{}` is neither an IP address nor a DNS name (give the port in bastion.port, not here)",
                b.address
            ),
        );
    }
    if b.port == Some(0) {
        p.error(
            format!("{at}.port"),
            "0 is not a port: use 1-65535 (22 by default)",
        );
    }
    if let Some(user) = &b.user {
        check_user(user, &format!("{at}.user"), p);
    }
    if let Some(f) = &b.identity_file {
        check_identity_file(f, &format!("{at}.identityFile"), base, files, p);
    }
    if let Some(key) = &b.host_key {
        if let Err(why) = check_public_key(key) {
            p.error(format!("{at}.hostKey"), why);
        }
    }
}

/// An OpenSSH public key line: `<algorithm> <base64 blob> [comment]`, where the
/// blob is well-formed base64 and starts with the same algorithm name.
pub(super) fn check_public_key(line: &str) -> Result<(), String> {
    const HINT: &str = "expected the host's public key as in /etc/ssh/ssh_host_ed25519_key.pub (ssh-ed25519 AAAA…)";
    let mut fields = line.split_whitespace();
    let (Some(algo), Some(blob)) = (fields.next(), fields.next()) else {
        return Err(format!("not an OpenSSH public key: {HINT}"));
    };
    if algo == "ssh-dss" {
        return Err(
            "ssh-dss (DSA) keys are insecure and disabled in OpenSSH: pin the host's ed25519 key"
                .into(),
        );
    }
    if !KEY_ALGORITHMS.contains(&algo) {
        if KEY_ALGORITHMS.contains(&blob) {
            return Err(format!(
                "starts with `{algo}`, which looks like a known_hosts line: drop the host name and keep `{blob} …`"
            ));
        }
        return Err(format!("unknown key algorithm `{algo}`: {HINT}"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|e| format!("the {algo} key is not valid base64 ({e}): copy the whole line"))?;
    let embedded = bytes
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n));
    match embedded {
        Some(name) if name == algo.as_bytes() => {}
        Some(name) => {
            return Err(format!(
            "the key data is a `{}` key but the line says `{algo}`: copy the whole line unchanged",
            String::from_utf8_lossy(name)
        ))
        }
        None => {
            return Err(format!(
                "the {algo} key data is truncated: copy the whole line"
            ))
        }
    }
    // ed25519: string algo, string key(32).
    if algo == "ssh-ed25519" && bytes.len() != 4 + algo.len() + 4 + 32 {
        return Err("the ssh-ed25519 key data has the wrong length: copy the whole line".into());
    }
    Ok(())
}

/// Merges the defaults with a host's overrides; checks what only makes sense merged.
pub(super) fn target(
    defaults: &RawSsh,
    over: Option<&RawSsh>,
    base: &Path,
    at: &str,
    p: &mut Problems,
) -> SshTarget {
    let empty = RawSsh::default();
    let o = over.unwrap_or(&empty);
    let bastion = o
        .bastion
        .as_ref()
        .or(defaults.bastion.as_ref())
        .map(|b| Bastion {
            address: b.address.clone(),
            port: b.port.unwrap_or(22),
            user: b
                .user
                .clone()
                .or_else(|| o.user.clone())
                .or_else(|| defaults.user.clone())
                .unwrap_or_else(|| "root".into()),
            identity_file: b.identity_file.as_deref().map(|f| resolve(f, base)),
            host_key: b.host_key.clone(),
        });
    let t = SshTarget {
        user: o
            .user
            .clone()
            .or_else(|| defaults.user.clone())
            .unwrap_or_else(|| "root".into()),
        port: o.port.or(defaults.port).unwrap_or(22),
        identity_file: o
            .identity_file
            .as_deref()
            .or(defaults.identity_file.as_deref())
            .map(|f| resolve(f, base)),
        agent: o.agent.or(defaults.agent).unwrap_or(false),
        become_: o.become_.or(defaults.become_).unwrap_or(Become::None),
        known_hosts_file: o
            .known_hosts_file
            .as_deref()
            .or(defaults.known_hosts_file.as_deref())
            .map(|f| resolve(f, base)),
        bastion,
        host_key: o.host_key.clone(),
    };
    // Report at the block that decided the value, so a default is reported once.
    let decided = |field: fn(&RawSsh) -> bool| {
        if over.is_some_and(field) {
            format!("{at}.ssh")
        } else {
            "ssh".to_string()
        }
    };
    // No identityFile and no agent is fine: like OpenSSH, `apply` then falls back to
    // ~/.ssh/config's IdentityFile and the default keys (~/.ssh/id_ed25519, …).
    if t.user != "root" && t.become_ == Become::None {
        let at = decided(|s| s.user.is_some() || s.become_.is_some());
        p.error(
            at,
            format!(
                "user `{}` is not root and become is none: rampart writes to /etc and runs systemctl; set become: sudo",
                t.user
            ),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::check_public_key;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAFak579m9EgHWEcB8fG5b3nojFXrSvEjhpggp0os6kx cp1";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFK2wmwQs4rN0zlrK36bCQ6uXt4trvCOGNxkYemMRwWkmB2nv0xjgYpAuhp4hhBcP8ChRBKJGXdcSZYydlSxqzQ= root@vm";

    #[test]
    fn accepts_a_real_ed25519_key() {
        assert_eq!(check_public_key(ED), Ok(()));
        assert_eq!(check_public_key(ECDSA), Ok(()));
    }

    #[test]
    fn rejects_mismatched_and_broken_keys() {
        let swapped = ED.replace("ssh-ed25519", "ssh-rsa");
        assert!(check_public_key(&swapped)
            .unwrap_err()
            .contains("is a `ssh-ed25519` key"));
        assert!(check_public_key("ssh-ed25519 AAAA!!")
            .unwrap_err()
            .contains("base64"));
        assert!(check_public_key(&format!("cp1 {ED}"))
            .unwrap_err()
            .contains("known_hosts"));
        assert!(check_public_key("ssh-dss AAAA")
            .unwrap_err()
            .contains("DSA"));
        assert!(check_public_key("ssh-ed25519").is_err());
        assert!(check_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq")
            .unwrap_err()
            .contains("length"));
    }
}
