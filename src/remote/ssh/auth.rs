//! Public-key authentication: key files (ed25519, ecdsa, rsa) and ssh-agent.
//!
//! Keys are loaded before dialling, so a missing or locked key named in the
//! inventory fails without touching the network. Encrypted keys are opened with
//! `RAMPART_SSH_PASSPHRASE`; the library never prompts (the CLI may set the
//! variable after asking). Key files go first, the agent after them, unless the
//! inventory sets `agent: true`, which puts the agent first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{Handle, Handler};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};

use super::config::Endpoint;
use super::SshError;

/// The environment variable holding the passphrase of encrypted key files.
pub const PASSPHRASE_ENV: &str = "RAMPART_SSH_PASSPHRASE";

/// A key file, loaded and decrypted.
#[derive(Clone)]
pub struct Identity {
    pub path: PathBuf,
    pub key: Arc<PrivateKey>,
}

/// Loads the endpoint's key files. A file the inventory named must load; a
/// default or ssh-config one that does not is noted in `tried` and skipped.
pub fn load(ep: &Endpoint, tried: &mut Vec<String>) -> Result<Vec<Identity>, SshError> {
    let passphrase = std::env::var(PASSPHRASE_ENV).ok();
    let mut out = Vec::new();
    for path in &ep.identities {
        match load_one(path, passphrase.as_deref()) {
            Ok(key) => out.push(Identity {
                path: path.clone(),
                key: Arc::new(key),
            }),
            Err(e) if ep.explicit_identity => return Err(e),
            Err(e) => tried.push(format!("{}: {}", path.display(), short(&e))),
        }
    }
    Ok(out)
}

fn short(e: &SshError) -> String {
    match e {
        SshError::KeyPassphrase { .. } => format!("encrypted and {PASSPHRASE_ENV} is not set"),
        SshError::Key { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn load_one(path: &Path, passphrase: Option<&str>) -> Result<PrivateKey, SshError> {
    let text = std::fs::read_to_string(path).map_err(|e| SshError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let Some(pass) = passphrase else {
                return Err(SshError::KeyPassphrase {
                    path: path.to_path_buf(),
                });
            };
            russh::keys::decode_secret_key(&text, Some(pass)).map_err(|_| SshError::Key {
                path: path.to_path_buf(),
                reason: format!("cannot decrypt with the passphrase in {PASSPHRASE_ENV}"),
            })
        }
        Err(e) => Err(SshError::Key {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// The signature hash to use with an RSA key: the server's best (rsa-sha2-512,
/// then -256); sha2-256 when the server does not say (every OpenSSH since 7.2
/// does), SHA-1 only when it says that is all it has.
async fn rsa_hash<H: Handler>(handle: &Handle<H>) -> Option<HashAlg> {
    match handle.best_supported_rsa_hash().await {
        Ok(Some(best)) => best,
        _ => Some(HashAlg::Sha256),
    }
}

/// Authenticates as `ep.user`, trying agent and key files in order.
pub async fn authenticate<H: Handler>(
    handle: &mut Handle<H>,
    ep: &Endpoint,
    identities: Vec<Identity>,
    mut tried: Vec<String>,
) -> Result<(), SshError> {
    let lost = |e: &dyn std::fmt::Display| SshError::Connect {
        host: ep.name.clone(),
        addr: ep.addr(),
        reason: format!("connection lost during authentication: {e}"),
    };
    if ep.agent_first && try_agent(handle, ep, &mut tried).await? {
        return Ok(());
    }
    for id in identities {
        let hash = if id.key.algorithm().is_rsa() {
            rsa_hash(handle).await
        } else {
            None
        };
        let key = PrivateKeyWithHashAlg::new(id.key.clone(), hash);
        let alg = key.algorithm().to_string();
        let res = handle
            .authenticate_publickey(ep.user.clone(), key)
            .await
            .map_err(|e| lost(&e))?;
        if res.success() {
            return Ok(());
        }
        tried.push(format!("{} ({alg}): rejected", id.path.display()));
    }
    if !ep.agent_first && try_agent(handle, ep, &mut tried).await? {
        return Ok(());
    }
    Err(SshError::Auth {
        host: ep.name.clone(),
        user: ep.user.clone(),
        tried,
    })
}

async fn try_agent<H: Handler>(
    handle: &mut Handle<H>,
    ep: &Endpoint,
    tried: &mut Vec<String>,
) -> Result<bool, SshError> {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        tried.push("ssh-agent: SSH_AUTH_SOCK is not set".into());
        return Ok(false);
    }
    let mut agent = match AgentClient::connect_env().await {
        Ok(a) => a,
        Err(e) => {
            tried.push(format!("ssh-agent: cannot connect: {e}"));
            return Ok(false);
        }
    };
    let ids = match agent.request_identities().await {
        Ok(ids) => ids,
        Err(e) => {
            tried.push(format!("ssh-agent: cannot list keys: {e}"));
            return Ok(false);
        }
    };
    if ids.is_empty() {
        tried.push("ssh-agent: no keys".into());
    }
    for id in ids {
        // Certificates would need the server to trust a CA; plain keys only.
        let AgentIdentity::PublicKey { key, comment } = id else {
            continue;
        };
        let hash = if key.algorithm().is_rsa() {
            rsa_hash(handle).await
        } else {
            None
        };
        let alg = key.algorithm().to_string();
        match handle
            .authenticate_publickey_with(ep.user.clone(), key, hash, &mut agent)
            .await
        {
            Ok(r) if r.success() => return Ok(true),
            Ok(_) => tried.push(format!("ssh-agent key {comment} ({alg}): rejected")),
            Err(e) => tried.push(format!("ssh-agent key {comment} ({alg}): {e}")),
        }
    }
    Ok(false)
}
