//! The SSH transport (russh): connect, verify host keys, authenticate, run scripts.
//!
//! [`connect`] resolves where to go ([`config`]: inventory first, `~/.ssh/config`
//! as a fallback), dials (through the bastion with a `direct-tcpip` channel when
//! there is one), verifies the server key before anything else is sent
//! ([`host_keys`]: pins and `known_hosts`, strict), authenticates ([`auth`]) and
//! returns an [`SshRemote`]: one session, one channel per script ([`exec`]).
//! [`scan_host_key`] and [`pin_host_key`] are `rampart hosts trust`.
//!
//! Transient failures (refused, reset, timed out) are retried with backoff; a
//! host key or authentication failure never is: retrying cannot fix either and
//! a changed key must stop everything.

pub mod auth;
pub mod config;
pub mod exec;
pub mod host_keys;

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{Algorithm, PublicKey, PublicKeyOrCertificate};
use russh::Preferred;

use crate::inventory::Host;
use config::{Endpoint, Route};
pub use exec::SshRemote;
use host_keys::{KnownHostsError, Trust, Verdict};

/// How to connect. `Default` is what `rampart apply` uses.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Per attempt: TCP connect plus SSH handshake.
    pub connect_timeout: Duration,
    /// A keepalive is sent after this much silence; three unanswered ones end
    /// the session (a dead host shows up as `Disconnected`, not a hang).
    pub keepalive: Duration,
    /// Extra attempts after a transient failure (backoff 0.5 s, 1 s, 2 s, …).
    pub retries: u32,
    /// Record the key of a host seen for the first time instead of refusing
    /// (`StrictHostKeyChecking accept-new`). A changed key is refused regardless.
    pub accept_new_host_keys: bool,
    /// The OpenSSH client config to read; `None` = `~/.ssh/config` if it exists.
    pub ssh_config: Option<PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            retries: 3,
            accept_new_host_keys: false,
            ssh_config: None,
        }
    }
}

/// Why a host could not be reached or trusted.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}: cannot connect to {addr}: {reason}; check the address, the port and that sshd runs")]
    Connect {
        host: String,
        addr: String,
        reason: String,
    },
    #[error("{host}: unknown host key {key_type} {fingerprint}; pin it with `rampart hosts trust -i INVENTORY --hosts {host}` after checking the fingerprint")]
    UnknownHostKey {
        host: String,
        fingerprint: String,
        key_type: String,
    },
    #[error("{host}: host key changed: the server presents {actual}, expected {}; someone may be intercepting the connection, or the host was reinstalled: check out of band, then fix the pin or known_hosts entry", expected.join(" or "))]
    ChangedHostKey {
        host: String,
        expected: Vec<String>,
        actual: String,
    },
    #[error("{host}: the pinned host key in the inventory does not parse ({reason}); copy the line from the host's /etc/ssh/ssh_host_ed25519_key.pub")]
    PinnedKey { host: String, reason: String },
    #[error(transparent)]
    KnownHosts(#[from] KnownHostsError),
    #[error("{host}: cannot record the host key in {}; check that the file and its directory are writable", path.display())]
    RecordKey {
        host: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{host}: authentication as {user} failed (tried: {}); add the public key to ~{user}/.ssh/authorized_keys on the host or set ssh.identityFile", tried.join("; "))]
    Auth {
        host: String,
        user: String,
        tried: Vec<String>,
    },
    #[error("cannot use key {}: {reason}; check ssh.identityFile", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("key {} is encrypted; set {} to its passphrase", path.display(), auth::PASSPHRASE_ENV)]
    KeyPassphrase { path: PathBuf },
    #[error("cannot read ssh config {}: {reason}; fix it or pass another file", path.display())]
    SshConfig { path: PathBuf, reason: String },
}

/// `$HOME`, where `~/.ssh` lives.
pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// What the handler saw of the server's key, read after the handshake.
#[derive(Debug)]
struct Seen {
    key: PublicKey,
    verdict: Result<Verdict, KnownHostsError>,
    record_error: Option<io::Error>,
}

/// The russh handler: host key verification, nothing else.
pub struct Client {
    trust: Trust,
    accept_new: bool,
    /// Capture the key and abort the handshake (`hosts trust`).
    scan_only: bool,
    seen: Arc<Mutex<Option<Seen>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // No certificate algorithms are advertised, so this is a plain key.
        let key = key.public_key();
        let verdict = self.trust.verdict(&key);
        let mut record_error = None;
        let accept = match &verdict {
            _ if self.scan_only => false,
            Ok(Verdict::Known) => true,
            Ok(Verdict::Unknown) if self.accept_new => {
                match host_keys::append(&self.trust.known_hosts, &self.trust.host_field(), &key) {
                    Ok(()) => true,
                    Err(e) => {
                        record_error = Some(e);
                        false
                    }
                }
            }
            _ => false,
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen {
            key,
            verdict,
            record_error,
        });
        Ok(accept)
    }
}

/// A failed attempt and whether trying again may help.
struct Failure {
    error: SshError,
    transient: bool,
}

fn transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | TimedOut
            | NotConnected
            | BrokenPipe
            | UnexpectedEof
            | HostUnreachable
            | NetworkUnreachable
    )
}

fn transient_russh(e: &russh::Error) -> bool {
    match e {
        russh::Error::IO(io) => transient_io(io.kind()),
        russh::Error::HUP
        | russh::Error::Disconnect
        | russh::Error::ConnectionTimeout
        | russh::Error::Elapsed(_) => true,
        _ => false,
    }
}

fn connect_failure(ep: &Endpoint, reason: String, transient: bool) -> Failure {
    Failure {
        error: SshError::Connect {
            host: ep.name.clone(),
            addr: ep.addr(),
            reason,
        },
        transient,
    }
}

/// Host key algorithms with the ones already recorded for the address first,
/// so a host known by its ecdsa key is not refused for offering ed25519 first.
fn preferred_for(trust: &Trust) -> Preferred {
    let recorded: Vec<Algorithm> = trust
        .recorded()
        .map(|keys| keys.iter().map(|k| k.algorithm()).collect())
        .unwrap_or_default();
    let known = |a: &Algorithm| {
        recorded
            .iter()
            .any(|r| r == a || (r.clone().is_rsa() && a.clone().is_rsa()))
    };
    let mut order: Vec<Algorithm> = Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| known(a))
        .cloned()
        .collect();
    order.extend(Preferred::DEFAULT.key.iter().filter(|a| !known(a)).cloned());
    Preferred {
        key: Cow::Owned(order),
        ..Preferred::DEFAULT
    }
}

fn client_config(trust: &Trust, opts: &ConnectOptions) -> Arc<client::Config> {
    Arc::new(client::Config {
        keepalive_interval: Some(opts.keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred: preferred_for(trust),
        ..Default::default()
    })
}

/// Runs the SSH handshake for `ep` over `stream`, verifying the host key.
async fn handshake<S>(
    ep: &Endpoint,
    opts: &ConnectOptions,
    stream: S,
    scan_only: bool,
) -> Result<Handle<Client>, (Failure, Option<Seen>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = Arc::new(Mutex::new(None));
    let handler = Client {
        trust: ep.trust.clone(),
        accept_new: opts.accept_new_host_keys,
        scan_only,
        seen: seen.clone(),
    };
    let result = tokio::time::timeout(
        opts.connect_timeout,
        client::connect_stream(client_config(&ep.trust, opts), stream, handler),
    )
    .await;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
    match result {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(e)) => {
            if let Some(f) = key_failure(ep, seen.as_ref()) {
                return Err((f, seen));
            }
            let transient = transient_russh(&e);
            Err((
                connect_failure(ep, format!("ssh handshake failed: {e}"), transient),
                seen,
            ))
        }
        Err(_) => Err((
            connect_failure(
                ep,
                format!("ssh handshake timed out after {:?}", opts.connect_timeout),
                true,
            ),
            seen,
        )),
    }
}

/// The host key verdict as an error, when it is why the handshake stopped.
fn key_failure(ep: &Endpoint, seen: Option<&Seen>) -> Option<Failure> {
    let seen = seen?;
    let error = match &seen.verdict {
        Err(e) => SshError::KnownHosts(KnownHostsError {
            path: e.path.clone(),
            reason: e.reason.clone(),
        }),
        Ok(Verdict::Known) => return None,
        Ok(Verdict::Changed { expected }) => SshError::ChangedHostKey {
            host: ep.name.clone(),
            expected: expected.clone(),
            actual: host_keys::fingerprint(&seen.key),
        },
        Ok(Verdict::Unknown) => match &seen.record_error {
            Some(e) => SshError::RecordKey {
                host: ep.name.clone(),
                path: ep.trust.known_hosts.clone(),
                source: io::Error::new(e.kind(), e.to_string()),
            },
            None => SshError::UnknownHostKey {
                host: ep.name.clone(),
                fingerprint: host_keys::fingerprint(&seen.key),
                key_type: seen.key.algorithm().to_string(),
            },
        },
    };
    Some(Failure {
        error,
        transient: false,
    })
}

/// Dials `ep` directly over TCP and runs the handshake.
async fn dial(
    ep: &Endpoint,
    opts: &ConnectOptions,
    scan_only: bool,
) -> Result<Handle<Client>, (Failure, Option<Seen>)> {
    let tcp = tokio::time::timeout(
        opts.connect_timeout,
        tokio::net::TcpStream::connect((ep.address.as_str(), ep.port)),
    )
    .await;
    let stream = match tcp {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let transient = transient_io(e.kind());
            return Err((connect_failure(ep, e.to_string(), transient), None));
        }
        Err(_) => {
            let reason = format!("timed out after {:?}", opts.connect_timeout);
            return Err((connect_failure(ep, reason, true), None));
        }
    };
    let _ = stream.set_nodelay(true);
    handshake(ep, opts, stream, scan_only).await
}

/// Dials and authenticates the bastion, then opens a `direct-tcpip` channel
/// from it to the target and runs the target's handshake over that channel.
async fn through(
    bastion: &Endpoint,
    target: &Endpoint,
    opts: &ConnectOptions,
    scan_only: bool,
) -> Result<(Handle<Client>, Handle<Client>), (Failure, Option<Seen>)> {
    // The bastion's key verdict is already in the failure; the seen key is
    // dropped so that a scan never takes the bastion's key for the target's.
    let mut jump = dial(bastion, opts, false)
        .await
        .map_err(|(f, _)| (f, None))?;
    let mut tried = Vec::new();
    let ids = auth::load(bastion, &mut tried).map_err(|error| {
        (
            Failure {
                error,
                transient: false,
            },
            None,
        )
    })?;
    auth::authenticate(&mut jump, bastion, ids, tried)
        .await
        .map_err(|error| {
            (
                Failure {
                    error,
                    transient: false,
                },
                None,
            )
        })?;
    let channel = jump
        .channel_open_direct_tcpip(target.address.clone(), target.port as u32, "127.0.0.1", 0)
        .await
        .map_err(|e| {
            // The target not answering may pass; a bastion forbidding
            // forwarding will not.
            let transient = matches!(
                e,
                russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ConnectFailed)
            ) || transient_russh(&e);
            let reason = format!("bastion {} cannot reach it: {e}", bastion.addr());
            (connect_failure(target, reason, transient), None)
        })?;
    let handle = handshake(target, opts, channel.into_stream(), scan_only).await?;
    Ok((handle, jump))
}

/// One connection attempt to the route's target, bastion included.
async fn open(
    route: &Route,
    opts: &ConnectOptions,
    scan_only: bool,
) -> Result<(Handle<Client>, Option<Handle<Client>>), (Failure, Option<Seen>)> {
    match &route.bastion {
        Some(b) => through(b, &route.target, opts, scan_only)
            .await
            .map(|(h, j)| (h, Some(j))),
        None => dial(&route.target, opts, scan_only)
            .await
            .map(|h| (h, None)),
    }
}

/// Calls `attempt` until it succeeds, fails for good, or retries run out.
async fn with_retries<T, F, Fut>(opts: &ConnectOptions, mut attempt: F) -> Result<T, SshError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut delay = Duration::from_millis(500);
    let mut n = 0;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(f) if f.transient && n < opts.retries => {
                n += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(f) => return Err(f.error),
        }
    }
}

/// Connects to `host`, verifies its key, authenticates: a [`crate::remote::Remote`].
pub async fn connect(host: &Host, opts: &ConnectOptions) -> Result<SshRemote, SshError> {
    let route = config::resolve(host, opts)?;
    let (session, jump) = open_session(&route, opts).await?;
    Ok(SshRemote::new(
        host.name.clone(),
        route.target.user.clone(),
        route.sudo,
        session,
        jump,
    ))
}

/// Dials a resolved route (its bastion first, if any), verifies the host key,
/// authenticates: the session and the bastion session carrying it. For
/// callers that run their own channel rather than scripts (the backup push,
/// which builds its route from its own config, not from the inventory).
pub async fn open_session(
    route: &Route,
    opts: &ConnectOptions,
) -> Result<(Handle<Client>, Option<Handle<Client>>), SshError> {
    // Keys load before dialling: a locked key fails without network traffic.
    let mut tried = Vec::new();
    let ids = auth::load(&route.target, &mut tried)?;
    with_retries(opts, || {
        let ids = ids.clone();
        let tried = tried.clone();
        async move {
            let (mut session, jump) = open(route, opts, false).await.map_err(|(f, _)| f)?;
            auth::authenticate(&mut session, &route.target, ids, tried)
                .await
                .map_err(|error| Failure {
                    error,
                    transient: false,
                })?;
            Ok((session, jump))
        }
    })
    .await
}

/// How a scanned key compares with what is recorded for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    /// Pinned or in `known_hosts` already.
    Known,
    /// Nothing recorded for the address.
    Unknown,
    /// Other keys are recorded (their SHA256 fingerprints).
    Changed { expected: Vec<String> },
}

/// A host's key as captured by [`scan_host_key`].
#[derive(Debug, Clone)]
pub struct ScannedKey {
    /// The inventory name.
    pub host: String,
    /// The address and port as dialled (the `known_hosts` lookup key).
    pub address: String,
    pub port: u16,
    pub key: PublicKey,
    pub status: KeyStatus,
}

impl ScannedKey {
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        host_keys::fingerprint(&self.key)
    }
    /// The one-line OpenSSH public key (`ssh-ed25519 AAAA…`), for `ssh.hostKey`.
    pub fn openssh(&self) -> String {
        host_keys::openssh_line(&self.key)
    }
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, …
    pub fn key_type(&self) -> String {
        self.key.algorithm().to_string()
    }
    /// The `known_hosts` line that [`pin_host_key`] appends.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "{} {}",
            host_keys::host_field(&self.address, self.port),
            self.openssh()
        )
    }
}

/// Connects to `host` (through its bastion, which must be trusted already) and
/// captures its key without authenticating: the handshake stops at the key.
pub async fn scan_host_key(host: &Host, opts: &ConnectOptions) -> Result<ScannedKey, SshError> {
    let route = config::resolve(host, opts)?;
    let target = &route.target;
    with_retries(opts, || async {
        let seen = match open(&route, opts, true).await {
            // The handler refuses every key when scanning; a session is a bug.
            Ok(_) => None,
            Err((_, Some(seen))) => Some(seen),
            Err((f, None)) => return Err(f),
        };
        let Some(seen) = seen else {
            return Err(connect_failure(
                target,
                "the handshake went on past the host key".into(),
                false,
            ));
        };
        let status = match seen.verdict {
            Ok(Verdict::Known) => KeyStatus::Known,
            Ok(Verdict::Unknown) => KeyStatus::Unknown,
            Ok(Verdict::Changed { expected }) => KeyStatus::Changed { expected },
            Err(e) => {
                return Err(Failure {
                    error: SshError::KnownHosts(e),
                    transient: false,
                })
            }
        };
        Ok(ScannedKey {
            host: host.name.clone(),
            address: target.address.clone(),
            port: target.port,
            key: seen.key,
            status,
        })
    })
    .await
}

/// Appends the scanned key to `known_hosts` (file 0600, directory 0700, fsynced).
pub fn pin_host_key(known_hosts: &Path, host: &Host, key: &ScannedKey) -> io::Result<()> {
    debug_assert_eq!(host.name, key.host);
    host_keys::append(
        known_hosts,
        &host_keys::host_field(&key.address, key.port),
        &key.key,
    )
}

/// Fills `backups.target`'s host keys from the admin's `known_hosts` when the
/// target has no pin, so the etcd members pin exactly the key `apply` itself
/// trusts for that host. Left empty when nothing is recorded: render then
/// asks for `rampart hosts trust`.
pub fn fill_target_host_keys(
    inv: &mut crate::inventory::Inventory,
    opts: &ConnectOptions,
) -> Result<(), SshError> {
    let crate::inventory::Inventory { backups, hosts, .. } = inv;
    let Some(t) = backups.as_mut().and_then(|b| b.target.as_mut()) else {
        return Ok(());
    };
    let Some(host) = hosts.iter().find(|h| h.name == t.host) else {
        return Ok(());
    };
    if t.host_keys.is_empty() {
        let route = config::resolve(host, opts)?;
        let keys = route.target.trust.recorded()?;
        t.host_keys = keys.iter().map(host_keys::openssh_line).collect();
    }
    Ok(())
}
