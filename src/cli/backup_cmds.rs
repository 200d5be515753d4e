//! `rampart backup …` (on the admin's machine) and `rampart agent snapshot`
//! (on each etcd member, started by rampart-backup.timer).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use rampart::backup::{self, AgentConfig, BackupError, VerifyOptions};

use rampart::actions::backup::{self as actions, Holder, MemberBackups};
use rampart::engine::{Cancel, Env, StepError};
use rampart::inventory::Inventory;
use rampart::remote::ssh::ConnectOptions;
use rampart::words::count;

use super::args::{BackupHostsArgs, Output};
use super::load_inventory;
use super::report::Progress;
use super::session::{on_path, runtime, Ssh};

/// The scheduled job. Errors reach `main`, which prints them to stderr (the
/// journal) and exits 1, so systemd marks the unit failed.
pub fn snapshot(config: &Path, verbose: bool) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let now = time::OffsetDateTime::now_utc();
    // Before anything spawns a thread or a process (see backup::cleanup_on_signal).
    backup::cleanup_on_signal(&cfg.dir, now);
    let job = backup::run_job(&cfg, now).map_err(|e| {
        let what = match e {
            BackupError::Copy { .. } => "backup copy failed",
            _ => "etcd backup failed",
        };
        anyhow::Error::new(e).context(format!("{}: {what}", cfg.member))
    })?;
    let out = &job.backup;
    let m = &out.manifest;
    println!(
        "{}: wrote {} (revision {}, {} keys, {} bytes encrypted)",
        cfg.member,
        out.file.display(),
        m.revision,
        m.total_keys,
        m.ciphertext_size
    );
    for p in &out.pruned {
        println!("{}: pruned {}", cfg.member, p.display());
    }
    if let Some(c) = &job.copy {
        let how = if c.received.already_stored {
            "was there already"
        } else {
            "copied"
        };
        println!("{}: {} {how} to {}", cfg.member, c.received.file, c.host);
        for p in &c.received.pruned {
            println!("{}: pruned {p} on {}", cfg.member, c.host);
        }
    }
    if verbose {
        for (name, d) in &out.phases {
            eprintln!("{}: {name}: {:.2} s", cfg.member, d.as_secs_f64());
        }
        // rampart's own peak memory, apart from etcdctl's (for tests/bench/backup.sh).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            eprintln!(
                "{}: peak memory {}",
                cfg.member,
                hwm.trim_start_matches("VmHWM:").trim()
            );
        }
        // And its own CPU time, all threads, without etcdctl's: what the job
        // adds to a bare save on a member's cores.
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut u);
            u
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        eprintln!(
            "{}: cpu {:.2} s user + {:.2} s system",
            cfg.member,
            secs(usage.ru_utime),
            secs(usage.ru_stime)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The backup target's side of a member's copy, run by sshd as the forced
/// command of the member's push key: the stream on stdin, one JSON line on
/// stdout; a refusal goes to stderr (the member reports it) with exit 1.
pub fn receive(req: backup::ReceiveRequest) -> Result<ExitCode> {
    // Before anything spawns a thread (see backup::cleanup_receive_on_signal).
    backup::cleanup_receive_on_signal(&req);
    let now = time::OffsetDateTime::now_utc();
    let report = backup::receive(&req, std::io::stdin().lock(), now)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

pub fn verify(
    file: &Path,
    identities: Vec<PathBuf>,
    etcdctl: PathBuf,
    scratch: Option<PathBuf>,
    output: Output,
) -> Result<ExitCode> {
    // Before anything spawns a thread or a process: Ctrl-C, SIGTERM or SIGHUP
    // while the decrypted copy exists delete it, then exit 130, 143 or 129.
    backup::exit_on_signal(|sig| {
        eprintln!("error: interrupted by signal {sig}; the decrypted copy was deleted")
    });
    let opts = VerifyOptions {
        identities,
        etcdctl,
        etcdutl: on_path("etcdutl"),
        scratch,
        cancel: None,
    };
    let report = backup::verify(file, &opts)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let against = if report.manifest.is_some() {
                "matches its manifest"
            } else {
                "no manifest beside it, sha256 not checked against one"
            };
            println!(
                "{}: ok, {against}; sha256 {}; revision {}, {} keys, snapshot {} bytes",
                file.display(),
                report.sha256,
                report.status.revision,
                report.status.total_key,
                report.snapshot_size
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The selected hosts holding backups (members, and the target when
/// `with_target`), or why there are none.
fn selected(inv: &Inventory, only: Option<&[String]>, with_target: bool) -> Result<Vec<Holder>> {
    let all: Vec<Holder> = actions::holders(inv)
        .into_iter()
        .filter(|h| with_target || !h.target)
        .collect();
    if all.is_empty() {
        anyhow::bail!(
            "the inventory has no `backups:` section (or no etcd member): nothing is scheduled; see docs/backups.md"
        );
    }
    if let Some(names) = only {
        for n in names {
            if !all.iter().any(|h| &h.host.name == n) {
                let names: Vec<&str> = all.iter().map(|h| h.host.name.as_str()).collect();
                return Err(rampart::error::Usage(format!(
                    "`{n}` in --hosts holds no backups; hosts with backups: {}",
                    names.join(", ")
                ))
                .into());
            }
        }
    }
    Ok(all
        .into_iter()
        .filter(|h| only.is_none_or(|names| names.contains(&h.host.name)))
        .collect())
}

/// Connects to the members and runs `work` on each, all at once; every
/// failure is reported together, like `apply` does.
fn on_members<T, F>(
    a: &BackupHostsArgs,
    verbose: bool,
    title: &str,
    with_target: bool,
    work: F,
) -> Result<Vec<T>>
where
    T: Send,
    F: for<'x> Fn(
            &'x dyn rampart::remote::Remote,
            &'x Holder,
        ) -> rampart::remote::BoxFuture<'x, Result<T, StepError>>
        + Sync,
{
    let inv = load_inventory(&a.inv.inventory)?.inventory;
    let members = selected(&inv, a.hosts.as_deref(), with_target)?;
    let progress = Progress::new(verbose, a.inv.output == Output::Json);
    let cancel = Cancel::default();
    let env = Env {
        inv: &inv,
        reporter: &progress,
        cancel: &cancel,
        concurrency: usize::from(a.concurrency),
    };
    let connector = Ssh(ConnectOptions::default());
    let result = runtime()?.block_on(actions::on_holders(&env, &connector, &members, title, work));
    progress.finish();
    Ok(result?)
}

pub fn list(a: &BackupHostsArgs, verbose: bool) -> Result<ExitCode> {
    let members = on_members(a, verbose, "list backups", true, |r, h| {
        Box::pin(actions::list(r, h))
    })?;
    print_members(&members, a.inv.output)?;
    // A member whose last run failed is worth a non-zero exit in scripts.
    if members
        .iter()
        .any(|m| m.last_run.as_ref().is_some_and(|r| !r.ok))
    {
        return Ok(ExitCode::from(super::code::HOSTS_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn now(a: &BackupHostsArgs, verbose: bool) -> Result<ExitCode> {
    let members = on_members(a, verbose, "run the backup job", false, |r, h| {
        Box::pin(actions::now(r, h))
    })?;
    print_members(&members, a.inv.output)?;
    Ok(ExitCode::SUCCESS)
}

pub fn pull(a: &BackupHostsArgs, to: &Path, latest: bool, verbose: bool) -> Result<ExitCode> {
    let to = to.to_path_buf();
    // Every backup is tried: one corrupt copy on a host (the target holds
    // every member's) must not leave that host's intact ones behind.
    let per_host = on_members(a, verbose, "pull backups", true, |r, h| {
        let to = to.clone();
        Box::pin(async move {
            let m = actions::list(r, h).await?;
            let wanted: Vec<&backup::Manifest> = if latest {
                m.backups.iter().take(1).collect()
            } else {
                m.backups.iter().collect()
            };
            Ok(actions::pull_all(r, &m, &wanted, &to).await)
        })
    })?;
    let (pulled, failed): (Vec<_>, Vec<_>) = per_host.into_iter().unzip();
    let pulled: Vec<_> = pulled.into_iter().flatten().collect();
    let failed: Vec<_> = failed.into_iter().flatten().collect();
    match a.inv.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "pulled": pulled, "failed": failed })
            )?
        ),
        Output::Table => {
            for p in &pulled {
                let how = if p.skipped { "already here" } else { "copied" };
                println!(
                    "{}: {} ({} bytes, sha256 {}) {how}",
                    p.host,
                    p.file.display(),
                    p.bytes,
                    p.sha256
                );
            }
            for f in &failed {
                println!("{}: {} NOT pulled: {}", f.host, f.file, f.error);
            }
            println!("{} in {}", count(pulled.len(), "backup"), to.display());
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} could not be pulled; the others were",
            count(failed.len(), "backup")
        );
        Ok(ExitCode::from(super::code::HOSTS_FAILED))
    }
}

fn print_members(members: &[MemberBackups], output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(members)?);
        return Ok(());
    }
    for m in members {
        if m.target {
            println!(
                "{} (backup target): {} in {}",
                m.host,
                count(m.backups.len(), "backup"),
                m.dir
            );
            print_backups(m);
            continue;
        }
        let last = match &m.last_run {
            None => "never ran".to_string(),
            Some(r) if r.ok => format!("last run {} ok", r.time),
            Some(r) => format!(
                "last run {} FAILED: {}",
                r.time,
                r.error.as_deref().unwrap_or("see the journal")
            ),
        };
        println!(
            "{}: {} in {}; {last}; timer {}, next run {}",
            m.host,
            count(m.backups.len(), "backup"),
            m.dir,
            m.timer,
            if m.next_run.is_empty() {
                "-"
            } else {
                &m.next_run
            }
        );
        print_backups(m);
    }
    Ok(())
}

fn print_backups(m: &MemberBackups) {
    for b in &m.backups {
        println!(
            "  {}  {}  {} bytes  revision {}  {} keys  sha256 {}",
            b.created, b.file, b.ciphertext_size, b.revision, b.total_keys, b.sha256
        );
    }
    for f in &m.unlisted {
        println!("  {f}: no manifest beside it (not a complete backup)");
    }
}
