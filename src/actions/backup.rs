//! `rampart backup now | list | pull`: the scheduled job, seen and driven
//! from the admin machine over SSH, on the etcd members and (for `list` and
//! `pull`) the backup target.
//!
//! Each member is asked in one round trip (manifests, last run, timer), so
//! `list` costs what `plan` costs. `pull` streams a backup to a file (never
//! whole in memory) and checks it against its manifest's sha256 before it
//! keeps it: a copy that does not match is deleted and reported.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::digest::sha256_file;
use base64::Engine;
use serde::Serialize;

use crate::backup::LastRun;
use crate::backup::{AgentConfig, Manifest, LAST_RUN};
use crate::engine::{each, ConnectedHost, Connector, Env, Fleet, OnHost, PhaseError, StepError};
use crate::inventory::{Host, Inventory};
use crate::remote::script::quote;
use crate::remote::{Input, Remote};
use crate::render::Service;

/// What one member (or the backup target) holds and how its job is doing.
#[derive(Debug, Clone, Serialize)]
pub struct MemberBackups {
    pub host: String,
    pub dir: String,
    /// The backup target: copies from every member, no job or timer of its own.
    pub target: bool,
    /// Newest first.
    pub backups: Vec<Manifest>,
    /// Backups on disk without a manifest (an interrupted copy, a hand-made file).
    pub unlisted: Vec<String>,
    pub last_run: Option<LastRun>,
    /// `active` when the timer is scheduled.
    pub timer: String,
    /// When the timer fires next, as systemd says it.
    pub next_run: String,
    /// The service's last result (`success`, `exit-code`, …).
    pub last_result: String,
}

/// A host that holds backups: an etcd member running the job (its own
/// backups in its backup dir) or the backup target (every member's copies).
#[derive(Debug, Clone)]
pub struct Holder {
    pub host: Host,
    pub dir: String,
    pub target: bool,
}

/// A connected holder, as the fan-out sees it.
struct OnHolder<'a> {
    member: &'a ConnectedHost,
    holder: &'a Holder,
}

impl OnHost for OnHolder<'_> {
    fn host_name(&self) -> &str {
        &self.member.host.name
    }
}

/// Connects to `holders` and runs `work` on each (`title` names it in the
/// progress); every failure is reported together, like `apply` does.
pub async fn on_holders<T, F>(
    env: &Env<'_>,
    connector: &dyn Connector,
    holders: &[Holder],
    title: &str,
    work: F,
) -> Result<Vec<T>, PhaseError>
where
    T: Send,
    F: for<'x> Fn(&'x dyn Remote, &'x Holder) -> crate::remote::BoxFuture<'x, Result<T, StepError>>
        + Sync,
{
    let hosts: Vec<&Host> = holders.iter().map(|h| &h.host).collect();
    env.reporter.phase("connect", "connect", hosts.len());
    let fleet = Fleet::connect(env, &hosts, connector).await?;
    env.reporter.phase("backup", title, fleet.members().len());
    let connected: Vec<OnHolder> = fleet
        .members()
        .iter()
        .zip(holders)
        .map(|(member, holder)| OnHolder { member, holder })
        .collect();
    let work = &work;
    each(env, "backup", connected.iter().collect(), |c| {
        Box::pin(async move {
            env.reporter.step(&c.member.host.name, title);
            work(&*c.member.remote, c.holder).await
        })
    })
    .await
}

/// The members that run the backup job (etcd members, with `backups:` set),
/// then the backup target when there is one.
pub fn holders(inv: &Inventory) -> Vec<Holder> {
    let members = inv.etcd_members().filter_map(|h| {
        AgentConfig::from_inventory(inv, h).map(|c| Holder {
            host: h.clone(),
            dir: c.dir.display().to_string(),
            target: false,
        })
    });
    let target = inv
        .backups
        .as_ref()
        .and_then(|b| b.target.as_ref())
        .and_then(|t| {
            Some(Holder {
                host: inv.host(&t.host)?.clone(),
                dir: t.path.clone(),
                target: true,
            })
        });
    members.chain(target).collect()
}

pub(crate) fn list_script(dir: &str, target: bool) -> String {
    let d = quote(dir);
    let timer = Service::Backups.unit();
    let mut s = String::from("set -u\n");
    let _ = writeln!(s, "D={d}");
    s.push_str(
        "for f in \"$D\"/*.manifest.json; do [ -f \"$f\" ] && printf 'manifest\\t%s\\n' \"$(base64 -w0 < \"$f\")\"; done\n",
    );
    s.push_str(
        "for f in \"$D\"/*.db.age; do [ -f \"$f\" ] && printf 'file\\t%s\\n' \"$(basename \"$f\")\"; done\n",
    );
    let _ = writeln!(
        s,
        "if [ -f \"$D/{LAST_RUN}\" ]; then printf 'lastrun\\t%s\\n' \"$(base64 -w0 < \"$D/{LAST_RUN}\")\"; fi"
    );
    // The target runs no job: it has no timer or result to report.
    if !target {
        let _ = writeln!(
            s,
            "printf 'timer\\t%s\\t%s\\n' \"$(systemctl is-active {timer} 2>/dev/null)\" \"$(systemctl show {timer} -p NextElapseUSecRealtime --value 2>/dev/null)\""
        );
        s.push_str(
            "printf 'result\\t%s\\n' \"$(systemctl show rampart-backup.service -p Result --value 2>/dev/null)\"\n",
        );
    }
    s.push_str("echo end\n");
    s
}

/// Parses the list script's output.
pub fn parse_list(
    host: &str,
    dir: &str,
    target: bool,
    text: &str,
) -> Result<MemberBackups, String> {
    let b64 = |v: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| e.to_string())
    };
    let mut m = MemberBackups {
        host: host.to_string(),
        dir: dir.to_string(),
        target,
        backups: Vec::new(),
        unlisted: Vec::new(),
        last_run: None,
        timer: String::new(),
        next_run: String::new(),
        last_result: String::new(),
    };
    let mut files = Vec::new();
    let mut ended = false;
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        match cols.as_slice() {
            ["manifest", v] => {
                let manifest: Manifest = serde_json::from_slice(&b64(v)?)
                    .map_err(|e| format!("a manifest does not parse: {e}"))?;
                m.backups.push(manifest);
            }
            ["file", name] => files.push(name.to_string()),
            // A last-run record rampart cannot read is shown as absent.
            ["lastrun", v] => m.last_run = serde_json::from_slice(&b64(v)?).ok(),
            ["timer", active, next] => {
                m.timer = active.to_string();
                m.next_run = next.to_string();
            }
            ["result", r] => m.last_result = r.to_string(),
            ["end"] => ended = true,
            _ => return Err(format!("unexpected line `{line}`")),
        }
    }
    if !ended {
        return Err("output ended early".into());
    }
    m.backups.sort_by(|a, b| b.created.cmp(&a.created));
    m.unlisted = files
        .into_iter()
        .filter(|f| !m.backups.iter().any(|b| &b.file == f))
        .collect();
    Ok(m)
}

/// One member's backups, timer and last run (or the target's copies).
pub async fn list(remote: &dyn Remote, h: &Holder) -> Result<MemberBackups, StepError> {
    let out = remote
        .run(&list_script(&h.dir, h.target), Input::None)
        .await?;
    parse_list(&h.host.name, &h.dir, h.target, &out.stdout_text()).map_err(|reason| {
        StepError::Script {
            step: "list backups".into(),
            status: out.status.map_or("signal".into(), |s| s.to_string()),
            stderr: reason,
        }
    })
}

/// Runs the job now (`systemctl start` blocks until the oneshot finishes)
/// and returns what the member holds afterwards. A failed job is an error
/// carrying the job's own message from its last-run record.
pub async fn now(remote: &dyn Remote, member: &Holder) -> Result<MemberBackups, StepError> {
    let out = remote
        .run(
            "set -eu\nsystemctl start rampart-backup.service\n",
            Input::None,
        )
        .await?;
    let after = list(remote, member).await?;
    if !out.success() {
        let why = after
            .last_run
            .as_ref()
            .and_then(|r| r.error.clone())
            .unwrap_or_else(|| out.stderr_tail());
        return Err(StepError::Script {
            step: "backup job".into(),
            status: out.status.map_or("signal".into(), |s| s.to_string()),
            stderr: format!("{why}; see `journalctl -u rampart-backup.service` on the host"),
        });
    }
    Ok(after)
}

/// Why a pulled copy was not kept.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("cannot write {}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copy of {file} has sha256 {actual}, its manifest says {expected}; the copy was deleted: pull it again, and if it repeats, the file on the host is damaged")]
    Mismatch {
        file: String,
        expected: String,
        actual: String,
    },
}

/// Where a pulled backup went.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    pub host: String,
    pub file: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// Already there with the right sha256: not copied again.
    pub skipped: bool,
}

/// A backup that could not be pulled, and why.
#[derive(Debug, Clone, Serialize)]
pub struct PullFailure {
    pub host: String,
    pub file: String,
    pub error: String,
}

/// Pulls each of `wanted` from one holder on its own: one that fails (a
/// corrupt copy, a read error) is reported and the next is still pulled, so a
/// bad copy on the target never keeps the other members' good ones behind.
pub async fn pull_all(
    remote: &dyn Remote,
    m: &MemberBackups,
    wanted: &[&Manifest],
    to: &Path,
) -> (Vec<Pulled>, Vec<PullFailure>) {
    let mut pulled = Vec::new();
    let mut failed = Vec::new();
    for b in wanted {
        match pull(remote, m, b, to).await {
            Ok(p) => pulled.push(p),
            Err(e) => failed.push(PullFailure {
                host: m.host.clone(),
                file: b.file.clone(),
                error: e.to_string(),
            }),
        }
    }
    (pulled, failed)
}

/// Copies one backup and its manifest into `to/<host>/`, checking the
/// sha256 before the copy gets its final name.
pub async fn pull(
    remote: &dyn Remote,
    m: &MemberBackups,
    backup: &Manifest,
    to: &Path,
) -> Result<Pulled, PullError> {
    let local = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Local { path, source }
    };
    let dir = to.join(&m.host);
    std::fs::create_dir_all(&dir).map_err(local(&dir))?;
    let dest = dir.join(&backup.file);
    if dest.exists() && sha256_file(&dest).map_err(local(&dest))?.0 == backup.sha256 {
        return Ok(Pulled {
            host: m.host.clone(),
            file: dest,
            bytes: backup.ciphertext_size,
            sha256: backup.sha256.clone(),
            skipped: true,
        });
    }
    let partial = dir.join(format!(".{}.part", backup.file));
    let _ = std::fs::remove_file(&partial);
    let remote_path = format!("{}/{}", m.dir.trim_end_matches('/'), backup.file);
    let out = remote
        .run_to_file(&format!("set -eu\ncat {}\n", quote(&remote_path)), &partial)
        .await
        .map_err(StepError::from)?;
    if !out.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(StepError::Script {
            step: format!("read {remote_path}"),
            status: out.status.map_or("signal".into(), |s| s.to_string()),
            stderr: out.stderr_tail(),
        }
        .into());
    }
    let (actual, _) = sha256_file(&partial).map_err(local(&partial))?;
    if actual != backup.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(PullError::Mismatch {
            file: backup.file.clone(),
            expected: backup.sha256.clone(),
            actual,
        });
    }
    std::fs::rename(&partial, &dest).map_err(local(&dest))?;
    let manifest = crate::backup::manifest_path(&dest);
    let text = serde_json::to_vec_pretty(backup).expect("a manifest serializes");
    std::fs::write(&manifest, text).map_err(local(&manifest))?;
    Ok(Pulled {
        host: m.host.clone(),
        file: dest,
        bytes: backup.ciphertext_size,
        sha256: actual,
        skipped: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_parses_and_sorts_newest_first() {
        let manifest = |file: &str, created: &str| {
            let m = serde_json::json!({
                "file": file, "sha256": "ab", "ciphertextSize": 10, "snapshotSize": 9,
                "revision": 5, "totalKeys": 3, "snapshotHash": 1, "etcdVersion": "3.4.23",
                "cluster": "lab", "member": "cp1", "created": created,
                "recipients": ["age1x"], "rampartVersion": "0.1.0"
            });
            base64::engine::general_purpose::STANDARD.encode(m.to_string())
        };
        let text = format!(
            "manifest\t{}\nmanifest\t{}\nfile\ta.db.age\nfile\tb.db.age\nfile\tstray.db.age\n\
             timer\tactive\tMon 2026-11-30 18:00:00 UTC\nresult\tsuccess\nend\n",
            manifest("a.db.age", "2026-11-30T06:00:00Z"),
            manifest("b.db.age", "2026-11-30T12:00:00Z"),
        );
        let m = parse_list("cp1", "/var/backups/etcd", false, &text).unwrap();
        let files: Vec<&str> = m.backups.iter().map(|b| b.file.as_str()).collect();
        assert_eq!(files, ["b.db.age", "a.db.age"]);
        assert_eq!(m.unlisted, ["stray.db.age"]);
        assert_eq!(
            (m.timer.as_str(), m.last_result.as_str()),
            ("active", "success")
        );
        assert!(
            parse_list("cp1", "/d", false, "timer\tactive\tx\n").is_err(),
            "truncated"
        );
    }
}
