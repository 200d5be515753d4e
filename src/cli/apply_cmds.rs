//! `plan`, `apply`, `hosts trust`, `hosts unlock`: the commands that talk to
//! hosts over SSH. They share one path: load → render → [`apply::prepare`];
//! `plan` and `apply --dry-run` print what it returns, `apply` executes it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rampart::actions::apply::{self, ApplyError, ConnectError, Connector, Options, Prepared};
use rampart::inventory::{Host, Inventory};
use rampart::phases::{Cancel, PhaseError, StepError};
use rampart::pki;
use rampart::plan::preflight::Level;
use rampart::plan::show;
use rampart::remote::ssh::{self, ConnectOptions, KeyStatus, SshError};
use rampart::remote::{BoxFuture, Remote};
use rampart::secret::Secret;
use time::OffsetDateTime;

use super::args::{ApplyArgs, InventoryArgs, Output, PlanArgs};
use super::report::Progress;
use super::{code, load_inventory, state_dir, unlock, Exit};

/// Connects over SSH with the CLI's options.
pub(super) struct Ssh(pub(super) ConnectOptions);

impl Connector for Ssh {
    fn connect<'a>(
        &'a self,
        host: &'a Host,
    ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>> {
        Box::pin(async move {
            match ssh::connect(host, &self.0).await {
                Ok(r) => Ok(Arc::new(r) as Arc<dyn Remote>),
                Err(e) => Err(ConnectError {
                    untrusted_key: matches!(
                        e,
                        SshError::UnknownHostKey { .. } | SshError::ChangedHostKey { .. }
                    ),
                    error: Box::new(e),
                }),
            }
        })
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Inventory, rendered bundle and the super-admin kubeconfig (for the one
/// binding admin.conf cannot create itself): everything before the network.
fn load(a: &PlanArgs) -> Result<(Inventory, rampart::render::Bundle, Secret)> {
    let mut inv = load_inventory(&a.state.inv.inventory)?.inventory;
    rampart::remote::ssh::fill_target_host_keys(&mut inv, &Default::default())?;
    let dir = pki::StateDir::new(state_dir(a.state.state_dir.as_ref(), &inv.cluster.name)?);
    if !dir.state_key_path().exists() {
        bail!(
            "no cluster state in {}: run `rampart init -i {}` first",
            dir.root().display(),
            a.state.inv.inventory.display()
        );
    }
    let unlock = unlock::resolve(&a.state, &dir)?;
    let pki = pki::load(&inv, &dir, &unlock)?;
    let bundle = rampart::render::render(&inv, &pki)?;
    let bootstrap = pki::super_admin_kubeconfig(&inv, &pki);
    Ok((inv, bundle, bootstrap))
}

fn options(a: &PlanArgs, lock: bool, bootstrap: Option<Secret>) -> Options {
    let now = OffsetDateTime::now_utc();
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let machine = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    Options {
        hosts: a.hosts.clone(),
        skip: a.skip_phases.clone(),
        concurrency: usize::from(a.concurrency),
        lock,
        owner: format!(
            "rampart apply by {user}@{} pid {}",
            machine.trim(),
            std::process::id()
        ),
        admin_time: now.unix_timestamp(),
        stamp: now
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .expect("static format"),
        bootstrap,
    }
}

fn connect_options(a: &PlanArgs) -> ConnectOptions {
    ConnectOptions {
        accept_new_host_keys: a.accept_new_host_keys,
        ..Default::default()
    }
}

/// Cancels between steps on the first Ctrl-C.
pub(super) fn on_ctrl_c(cancel: &Cancel) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: steps in flight finish, nothing new starts");
            cancel.cancel();
        }
    });
}

pub fn plan(a: &PlanArgs, verbose: bool) -> Result<ExitCode> {
    let (inv, bundle, _) = load(a)?;
    let progress = Progress::new(verbose, a.state.inv.output == Output::Json);
    let cancel = Cancel::default();
    let rt = runtime()?;
    let prepared = rt.block_on(async {
        on_ctrl_c(&cancel);
        apply::prepare(
            &inv,
            &bundle,
            &Ssh(connect_options(a)),
            &options(a, false, None),
            &progress,
            &cancel,
        )
        .await
    });
    progress.finish();
    let prepared = prepared.map_err(classify)?;
    print_plan(&prepared, a.state.inv.output)?;
    Ok(ExitCode::SUCCESS)
}

fn print_plan(p: &Prepared, output: Output) -> Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "changes": !p.is_noop(),
                "hosts": p.reports(),
            }))?
        ),
        Output::Table => {
            for t in &p.targets {
                print!("{}", show::host(&t.plan));
                for f in p.findings.get(&t.host.name).into_iter().flatten() {
                    let level = match f.level {
                        Level::Error => "error",
                        Level::Warning => "warning",
                    };
                    println!("  {level}: {}", f.message);
                }
            }
            if p.is_noop() {
                println!("no changes");
            }
        }
    }
    Ok(())
}

pub fn apply(a: &ApplyArgs, verbose: bool) -> Result<ExitCode> {
    let (inv, bundle, bootstrap) = load(&a.plan)?;
    let output = a.plan.state.inv.output;
    let progress = Progress::new(verbose, output == Output::Json);
    let cancel = Cancel::default();
    let o = options(&a.plan, !a.dry_run, Some(bootstrap));
    let rt = runtime()?;
    let result: Result<Prepared, (Option<Prepared>, ApplyError)> = rt.block_on(async {
        on_ctrl_c(&cancel);
        let mut p = apply::prepare(
            &inv,
            &bundle,
            &Ssh(connect_options(&a.plan)),
            &o,
            &progress,
            &cancel,
        )
        .await
        .map_err(|e| (None, e))?;
        if a.dry_run {
            return Ok(p);
        }
        let r = apply::execute(&inv, &p, &o, &progress, &cancel).await;
        p.release().await;
        match r {
            Ok(()) => Ok(p),
            Err(e) => Err((Some(p), e)),
        }
    });
    progress.finish();
    match result {
        Ok(p) if a.dry_run => {
            print_plan(&p, output)?;
            eprintln!("dry run: nothing was changed");
            Ok(ExitCode::SUCCESS)
        }
        Ok(p) => {
            summary(&p, output, None)?;
            Ok(ExitCode::SUCCESS)
        }
        Err((Some(p), e)) => {
            summary(&p, output, Some(&e))?;
            Err(classify(e))
        }
        Err((None, e)) => Err(classify(e)),
    }
}

/// What each host got, then totals; JSON carries the plans and the error.
fn summary(p: &Prepared, output: Output, error: Option<&ApplyError>) -> Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": if error.is_some() { "failed" } else { "ok" },
                "error": error.map(|e| e.to_string()),
                "hosts": p.reports(),
            }))?
        ),
        Output::Table => {
            for t in &p.targets {
                println!("{}", show::summary(&t.plan));
            }
            let changed = p.targets.iter().filter(|t| !t.plan.is_noop()).count();
            let sent = human_bytes(p.targets.iter().map(|t| t.remote.bytes_sent()).sum());
            let all = p.targets.len();
            match error {
                None => println!("apply done: {changed} of {all} hosts changed, {sent} sent"),
                // The plan is what was meant, not what happened: a failed
                // run may have stopped before touching a host it planned for.
                Some(e) => println!(
                    "apply failed{}: {changed} of {all} hosts had changes planned, not all of them made; {sent} sent; re-run to converge",
                    e.phase().map(|ph| format!(" in phase {ph}")).unwrap_or_default()
                ),
            }
        }
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The exit code of a phase that failed on hosts: the most specific cause
/// any host had (shared by every command that works on hosts).
pub(super) fn hosts_code(pe: &PhaseError) -> u8 {
    let any = |f: fn(&StepError) -> bool| pe.failures.iter().any(|(_, e)| f(e));
    if pe.cancelled() {
        code::CANCELLED
    } else if any(|e| matches!(e, StepError::Locked { .. })) {
        code::LOCKED
    } else if any(|e| matches!(e, StepError::HostKey(_))) {
        code::HOST_KEY
    } else if pe.phase == "connect" {
        code::UNREACHABLE
    } else {
        code::HOSTS_FAILED
    }
}

/// Maps engine errors to documented exit codes.
pub(super) fn classify(e: ApplyError) -> anyhow::Error {
    let code = match &e {
        ApplyError::Hosts(pe) => hosts_code(pe),
        ApplyError::Preflight(_) => code::PREFLIGHT,
        _ => code::FAILURE,
    };
    Exit {
        code,
        message: e.to_string(),
    }
    .into()
}

/// The known_hosts file a host's keys are checked against and pinned in.
fn known_hosts_file(host: &Host) -> Result<PathBuf> {
    if let Some(f) = &host.ssh.known_hosts_file {
        return Ok(f.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set ssh.knownHostsFile")?;
    Ok(PathBuf::from(home).join(".ssh/known_hosts"))
}

pub fn hosts_trust(a: &InventoryArgs, only: Option<&[String]>, yes: bool) -> Result<ExitCode> {
    let inv = load_inventory(&a.inventory)?.inventory;
    let hosts: Vec<&Host> = match only {
        None => inv.hosts.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                inv.host(n)
                    .with_context(|| format!("unknown host `{n}` in --hosts"))
            })
            .collect::<Result<_>>()?,
    };
    let rt = runtime()?;
    let opts = ConnectOptions::default();
    let scanned: Vec<Result<ssh::ScannedKey, SshError>> = rt.block_on(futures::future::join_all(
        hosts.iter().map(|h| ssh::scan_host_key(h, &opts)),
    ));
    let interactive = std::io::stdin().is_terminal();
    let mut refused = Vec::new();
    let mut json = Vec::new();
    for (host, result) in hosts.iter().zip(scanned) {
        let key = match result {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e}");
                refused.push(host.name.clone());
                continue;
            }
        };
        let file = known_hosts_file(host)?;
        let status = match &key.status {
            KeyStatus::Known => {
                println!(
                    "{}: trusted {} {}",
                    host.name,
                    key.key_type(),
                    key.fingerprint()
                );
                "trusted"
            }
            KeyStatus::Changed { expected } => {
                eprintln!(
                    "error: {}: host key changed: the server presents {}, {} records {}; check out of band before removing the old entry",
                    host.name,
                    key.fingerprint(),
                    file.display(),
                    expected.join(" or ")
                );
                refused.push(host.name.clone());
                "changed"
            }
            KeyStatus::Unknown => {
                println!(
                    "{}: new key {} {} at {}:{}",
                    host.name,
                    key.key_type(),
                    key.fingerprint(),
                    key.address,
                    key.port
                );
                let accept =
                    yes || (interactive && confirm(&format!("pin it in {}?", file.display()))?);
                if accept {
                    ssh::pin_host_key(&file, host, &key)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    println!("{}: pinned in {}", host.name, file.display());
                    "pinned"
                } else {
                    refused.push(host.name.clone());
                    "not pinned"
                }
            }
        };
        json.push(serde_json::json!({
            "host": host.name, "fingerprint": key.fingerprint(), "key": key.openssh(), "status": status,
        }));
    }
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if !refused.is_empty() {
        return Err(Exit {
            code: code::HOST_KEY,
            message: format!(
                "not trusted: {}{}",
                refused.join(", "),
                if yes || interactive {
                    ""
                } else {
                    "; review the fingerprints and pass --yes to pin new keys"
                }
            ),
        }
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn confirm(question: &str) -> Result<bool> {
    use std::io::Write;
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn hosts_unlock(a: &InventoryArgs, name: &str) -> Result<ExitCode> {
    let inv = load_inventory(&a.inventory)?.inventory;
    let host = inv
        .host(name)
        .with_context(|| format!("unknown host `{name}`"))?;
    let rt = runtime()?;
    let state = rt.block_on(async {
        let remote = ssh::connect(host, &ConnectOptions::default()).await?;
        anyhow::Ok(
            apply::unlock(&remote)
                .await
                .with_context(|| name.to_string())?,
        )
    })?;
    match state.as_str() {
        "free" => println!("{name}: not locked"),
        "released" => println!("{name}: lock cleared"),
        other => bail!("{name}: the lock could not be cleared ({other})"),
    }
    Ok(ExitCode::SUCCESS)
}
