//! Where and as whom to connect: the inventory's SSH settings with `~/.ssh/config`
//! as a fallback.
//!
//! The inventory has already merged its own defaults, so a value equal to the
//! built-in default (`root`, port 22) cannot be told from one written out.
//! The rule, chosen so that an inventory never means something else on another
//! workstation except where it left a gap:
//! - the address dialled is the inventory's, unless a `Host` block matching the
//!   host's *inventory name* sets `HostName` (a lab behind NAT, Vagrant): the
//!   inventory address stays what the cluster uses, `HostName` is only how this
//!   machine reaches it;
//! - `Port` applies when the inventory port is 22, `User` when the inventory user
//!   is `root` (a non-root login always goes through `sudo -n`);
//! - `IdentityFile`s apply when the inventory sets no `identityFile`;
//! - `ProxyJump` applies when the inventory sets no bastion (one hop, whose own
//!   `HostName`/`Port`/`User`/`IdentityFile` are looked up the same way).
//!
//! Blocks are queried by the inventory name first, then by the address; the first
//! value found wins, as in OpenSSH.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{HostParams, ParseRule, SshConfig};

use super::host_keys::{self, Trust};
use super::{home, ConnectOptions, SshError};
use crate::inventory::{Become, Host};

/// One SSH endpoint, fully resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The inventory name (or the bastion's address), for messages.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Key files to try, in order; `explicit` when the inventory named one.
    pub identities: Vec<PathBuf>,
    pub explicit_identity: bool,
    pub agent_first: bool,
    pub trust: Trust,
}

impl Endpoint {
    /// `address:port` for messages.
    pub fn addr(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// A host and the bastion in front of it, if any.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Endpoint,
    pub bastion: Option<Endpoint>,
    /// Scripts go through `sudo -n` (become sudo, or a non-root login).
    pub sudo: bool,
}

/// The default key files, in OpenSSH's order, that exist.
fn default_identities() -> Vec<PathBuf> {
    let Some(home) = home() else {
        return Vec::new();
    };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .filter(|p| p.exists())
        .collect()
}

fn load_ssh_config(opts: &ConnectOptions) -> Result<Option<SshConfig>, SshError> {
    let path = match &opts.ssh_config {
        Some(p) => p.clone(),
        None => match home() {
            Some(h) if h.join(".ssh/config").exists() => h.join(".ssh/config"),
            _ => return Ok(None),
        },
    };
    let file = File::open(&path).map_err(|e| SshError::SshConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
    SshConfig::default()
        .parse(&mut BufReader::new(file), rules)
        .map(Some)
        .map_err(|e| SshError::SshConfig {
            path,
            reason: e.to_string(),
        })
}

/// The merged parameters for `names`, the first name's values winning.
fn query(config: &SshConfig, names: &[&str]) -> HostParams {
    let mut params = config.query(names[0]);
    for name in &names[1..] {
        params.overwrite_if_none(&config.query(name));
    }
    params
}

fn known_hosts_file(host: &Host) -> PathBuf {
    host.ssh.known_hosts_file.clone().unwrap_or_else(|| {
        home()
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".ssh/known_hosts")
    })
}

fn parse_pins(name: &str, pin: Option<&str>) -> Result<Vec<russh::keys::PublicKey>, SshError> {
    pin.map(|p| {
        host_keys::parse_pin(p).map_err(|reason| SshError::PinnedKey {
            host: name.to_string(),
            reason,
        })
    })
    .transpose()
    .map(|k| k.into_iter().collect())
}

/// Resolves how to reach `host` (and its bastion).
pub fn resolve(host: &Host, opts: &ConnectOptions) -> Result<Route, SshError> {
    let config = load_ssh_config(opts)?;
    let address = host.address.to_string();
    let params = config.as_ref().map(|c| query(c, &[&host.name, &address]));
    let by_name = config.as_ref().map(|c| c.query(&host.name));

    let ssh = &host.ssh;
    let dial = by_name
        .as_ref()
        .and_then(|p| p.host_name.clone())
        .unwrap_or_else(|| address.clone());
    let port = match (&params, ssh.port) {
        (Some(p), 22) => p.port.unwrap_or(22),
        _ => ssh.port,
    };
    let user = match (&params, ssh.user.as_str()) {
        (Some(p), "root") => p.user.clone().unwrap_or_else(|| "root".into()),
        _ => ssh.user.clone(),
    };
    let (identities, explicit_identity) = match &ssh.identity_file {
        Some(f) => (vec![f.clone()], true),
        None => match params.as_ref().and_then(|p| p.identity_file.clone()) {
            Some(files) if !files.is_empty() => (files, false),
            _ => (default_identities(), false),
        },
    };
    let known_hosts = known_hosts_file(host);
    let target = Endpoint {
        name: host.name.clone(),
        address: dial.clone(),
        port,
        user: user.clone(),
        identities: identities.clone(),
        explicit_identity,
        agent_first: ssh.agent,
        trust: Trust {
            pins: parse_pins(&host.name, ssh.host_key.as_deref())?,
            known_hosts: known_hosts.clone(),
            address: dial,
            port,
        },
    };

    let bastion = if let Some(b) = &ssh.bastion {
        let name = format!("{} (bastion of {})", b.address, host.name);
        let (ids, explicit) = match &b.identity_file {
            Some(f) => (vec![f.clone()], true),
            None => (identities.clone(), explicit_identity),
        };
        Some(Endpoint {
            name: name.clone(),
            address: b.address.clone(),
            port: b.port,
            user: b.user.clone(),
            identities: ids,
            explicit_identity: explicit,
            agent_first: ssh.agent,
            trust: Trust {
                pins: parse_pins(&name, b.host_key.as_deref())?,
                known_hosts: known_hosts.clone(),
                address: b.address.clone(),
                port: b.port,
            },
        })
    } else {
        match (&config, params.as_ref().and_then(|p| p.proxy_jump.clone())) {
            (Some(config), Some(jumps)) => {
                proxy_jump(config, host, &jumps, &user, &identities, &known_hosts)?
            }
            _ => None,
        }
    };

    Ok(Route {
        target,
        bastion,
        sudo: ssh.become_ == Become::Sudo || user != "root",
    })
}

/// The bastion named by a `ProxyJump` (`[user@]host[:port]`, one hop).
fn proxy_jump(
    config: &SshConfig,
    host: &Host,
    jumps: &[String],
    user: &str,
    identities: &[PathBuf],
    known_hosts: &Path,
) -> Result<Option<Endpoint>, SshError> {
    let jumps: Vec<&String> = jumps.iter().filter(|j| !j.is_empty()).collect();
    match jumps.as_slice() {
        [] => Ok(None),
        [one] if one.eq_ignore_ascii_case("none") => Ok(None),
        [one] => {
            let (juser, rest) = match one.rsplit_once('@') {
                Some((u, r)) => (Some(u.to_string()), r),
                None => (None, one.as_str()),
            };
            let (jhost, jport) = split_host_port(rest).ok_or_else(|| SshError::SshConfig {
                path: PathBuf::from("ProxyJump"),
                reason: format!("cannot parse ProxyJump `{one}` for {}", host.name),
            })?;
            let p = config.query(&jhost);
            let address = p.host_name.clone().unwrap_or_else(|| jhost.clone());
            let port = jport.or(p.port).unwrap_or(22);
            let name = format!("{jhost} (ProxyJump of {})", host.name);
            Ok(Some(Endpoint {
                name,
                address: address.clone(),
                port,
                user: juser.or(p.user.clone()).unwrap_or_else(|| user.to_string()),
                identities: p
                    .identity_file
                    .clone()
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| identities.to_vec()),
                explicit_identity: false,
                agent_first: host.ssh.agent,
                trust: Trust {
                    pins: Vec::new(),
                    known_hosts: known_hosts.to_path_buf(),
                    address,
                    port,
                },
            }))
        }
        _ => Err(SshError::SshConfig {
            path: PathBuf::from("ProxyJump"),
            reason: format!(
                "{}: ProxyJump with {} hops; rampart supports one bastion, set ssh.bastion in the inventory",
                host.name,
                jumps.len()
            ),
        }),
    }
}

/// `host`, `host:port`, `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if tail.is_empty() => None,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), Some(p.parse().ok()?))),
        _ => Some((s.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Bastion, SshTarget};
    use std::collections::BTreeMap;

    fn host(name: &str, ssh: SshTarget) -> Host {
        Host {
            name: name.into(),
            address: "10.0.0.5".parse().unwrap(),
            roles: Default::default(),
            extra_sans: vec![],
            labels: BTreeMap::new(),
            ssh,
        }
    }

    fn target() -> SshTarget {
        SshTarget {
            user: "root".into(),
            port: 22,
            identity_file: None,
            agent: false,
            become_: Become::None,
            known_hosts_file: Some("/tmp/kh".into()),
            bastion: None,
            host_key: None,
        }
    }

    fn opts(dir: &Path, text: &str) -> ConnectOptions {
        let path = dir.join("config");
        std::fs::write(&path, text).unwrap();
        ConnectOptions {
            ssh_config: Some(path),
            ..Default::default()
        }
    }

    #[test]
    fn ssh_config_fills_the_gaps_only() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(
            dir.path(),
            "Host cp1\n  HostName 127.0.0.1\n  Port 2222\n  User admin\n  IdentityFile /keys/cp1\n  ProxyJump jump@bastion.example:2200\n",
        );
        let r = resolve(&host("cp1", target()), &o).unwrap();
        assert_eq!(r.target.address, "127.0.0.1");
        assert_eq!(r.target.port, 2222);
        assert_eq!(r.target.user, "admin");
        assert!(r.sudo, "a non-root login goes through sudo");
        assert_eq!(r.target.identities, vec![PathBuf::from("/keys/cp1")]);
        assert_eq!(r.target.trust.address, "127.0.0.1");
        let b = r.bastion.unwrap();
        assert_eq!(
            (b.address.as_str(), b.port, b.user.as_str()),
            ("bastion.example", 2200, "jump")
        );

        // Explicit inventory values win.
        let mut t = target();
        t.port = 2022;
        t.user = "ops".into();
        t.become_ = Become::Sudo;
        t.identity_file = Some("/inv/key".into());
        t.bastion = Some(Bastion {
            address: "10.0.0.1".into(),
            port: 22,
            user: "ops".into(),
            identity_file: None,
            host_key: None,
        });
        let r = resolve(&host("cp1", t), &o).unwrap();
        assert_eq!((r.target.port, r.target.user.as_str()), (2022, "ops"));
        assert_eq!(r.target.identities, vec![PathBuf::from("/inv/key")]);
        assert!(r.target.explicit_identity);
        assert_eq!(r.bastion.unwrap().address, "10.0.0.1");
    }

    #[test]
    fn address_block_does_not_redirect_and_multi_hop_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(
            dir.path(),
            "Host 10.0.0.5\n  HostName 192.0.2.1\n  Port 2200\nHost cp2\n  ProxyJump a,b\n",
        );
        let r = resolve(&host("cp1", target()), &o).unwrap();
        assert_eq!(r.target.address, "10.0.0.5");
        assert_eq!(r.target.port, 2200);
        assert!(!r.sudo);
        let err = resolve(&host("cp2", target()), &o).unwrap_err();
        assert!(err.to_string().contains("one bastion"), "{err}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("h"), Some(("h".into(), None)));
        assert_eq!(split_host_port("h:22"), Some(("h".into(), Some(22))));
        assert_eq!(split_host_port("[::1]:2"), Some(("::1".into(), Some(2))));
        assert_eq!(split_host_port("h:x"), None);
    }
}
