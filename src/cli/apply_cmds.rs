//! `plan`, `apply`, `hosts trust`, `hosts unlock`: the commands that talk to
//! hosts over SSH. They share one path: load → render → [`apply::prepare`];
//! `plan` and `apply --dry-run` print what it returns, `apply` executes it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rampart::actions::apply::{self, ApplyError, ApplyOptions, ApplyRun, HostReport};
use rampart::engine::{each, Cancel, Env, Silent};
use rampart::inventory::{Host, Inventory};
use rampart::pki;
use rampart::plan::preflight::Level;
use rampart::plan::show;
use rampart::remote::ssh::{self, ConnectOptions, KeyStatus, SshError};
use rampart::secret::Secret;
use rampart::words::count;
use time::OffsetDateTime;

use super::args::{ApplyArgs, InventoryArgs, Output, PlanArgs, StateArgs};
use super::report::Progress;
use super::session::{confirm, on_ctrl_c, owner, runtime, Ssh};
use super::{load_inventory, state_dir, unlock};

/// Inventory, rendered bundle and the super-admin kubeconfig (for the one
/// binding admin.conf cannot create itself): everything before the network.
pub(super) fn load(state: &StateArgs) -> Result<(Inventory, rampart::render::Bundle, Secret)> {
    let mut inv = load_inventory(&state.inv.inventory)?.inventory;
    rampart::remote::ssh::fill_target_host_keys(&mut inv, &Default::default())?;
    let dir = pki::StateDir::new(state_dir(state.state_dir.as_ref(), &inv.cluster.name)?);
    if !dir.state_key_path().exists() {
        bail!(
            "no cluster state in {}: run `rampart init -i {}` first",
            dir.root().display(),
            state.inv.inventory.display()
        );
    }
    let unlock = unlock::resolve(state, &dir)?;
    let pki = pki::load(&inv, &dir, &unlock)?;
    let bundle = rampart::render::render(&inv, &pki)?;
    let bootstrap = pki::super_admin_kubeconfig(&inv, &pki);
    Ok((inv, bundle, bootstrap))
}

fn options(a: &PlanArgs, lock: bool, bootstrap: Option<Secret>) -> ApplyOptions {
    let now = OffsetDateTime::now_utc();
    ApplyOptions {
        hosts: a.hosts.clone(),
        skip: a.phases.skip_phases.clone(),
        concurrency: usize::from(a.phases.concurrency),
        lock,
        owner: owner("apply"),
        admin_time: now.unix_timestamp(),
        stamp: rampart::engine::runbook::new_id(now),
        bootstrap,
    }
}

fn connect_options(a: &PlanArgs) -> ConnectOptions {
    ConnectOptions {
        accept_new_host_keys: a.phases.accept_new_host_keys,
        ..Default::default()
    }
}

pub fn plan(a: &PlanArgs, verbose: bool) -> Result<ExitCode> {
    json_on_failure(a.state.inv.output, |_| run_plan(a, verbose))
}

fn run_plan(a: &PlanArgs, verbose: bool) -> Result<ExitCode> {
    let (inv, bundle, _) = load(&a.state)?;
    let progress = Progress::new(verbose, a.state.inv.output == Output::Json);
    let cancel = Cancel::default();
    let rt = runtime()?;
    let ssh = Ssh(connect_options(a));
    let prepared = rt.block_on(async {
        on_ctrl_c(&cancel);
        apply::prepare(
            &inv,
            &bundle,
            &ssh,
            &options(a, false, None),
            &progress,
            &cancel,
        )
        .await
    });
    progress.finish();
    let prepared = prepared?;
    print_plan(&prepared, a.state.inv.output)?;
    Ok(ExitCode::SUCCESS)
}

fn print_plan(p: &ApplyRun, output: Output) -> Result<()> {
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
    json_on_failure(a.plan.state.inv.output, |hosts| {
        run_apply(a, verbose, hosts)
    })
}

/// Runs `plan` or `apply`; with `--output json`, a failure prints one JSON
/// object too (the error, its exit code, the failed phase, the hosts planned
/// so far, which `run` leaves in its argument): a connect failure or a
/// missing state dir as much as a failed phase. A script reading stdout must
/// not have to tell "no output" from "nothing to say".
fn json_on_failure(
    output: Output,
    run: impl FnOnce(&mut Option<Vec<HostReport>>) -> Result<ExitCode>,
) -> Result<ExitCode> {
    let mut hosts = None;
    let result = run(&mut hosts);
    if let (Err(e), Output::Json) = (&result, output) {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": "failed",
                "error": format!("{e:#}"),
                "exitCode": super::exit_code(e),
                "phase": e.downcast_ref::<ApplyError>().and_then(ApplyError::phase),
                "hosts": hosts.unwrap_or_default(),
            }))?
        );
    }
    result
}

/// `apply` itself; `hosts` gets the run's host reports once it has planned.
fn run_apply(
    a: &ApplyArgs,
    verbose: bool,
    hosts: &mut Option<Vec<HostReport>>,
) -> Result<ExitCode> {
    let (inv, bundle, bootstrap) = load(&a.plan.state)?;
    let output = a.plan.state.inv.output;
    let progress = Progress::new(verbose, output == Output::Json);
    let cancel = Cancel::default();
    let o = options(&a.plan, !a.dry_run, Some(bootstrap));
    let rt = runtime()?;
    let ssh = Ssh(connect_options(&a.plan));
    let result: Result<ApplyRun, (Option<ApplyRun>, ApplyError)> = rt.block_on(async {
        on_ctrl_c(&cancel);
        let mut p = apply::prepare(&inv, &bundle, &ssh, &o, &progress, &cancel)
            .await
            .map_err(|e| (None, e))?;
        if a.dry_run {
            return Ok(p);
        }
        let r = apply::execute(&inv, &mut p, &o, &progress, &cancel).await;
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
            match output {
                Output::Json => *hosts = Some(p.reports()),
                Output::Table => summary(&p, output, Some(&e))?,
            }
            Err(e.into())
        }
        Err((None, e)) => Err(e.into()),
    }
}

/// What each host got, then totals; JSON carries the plans (a failed run's
/// JSON is printed by [`apply`], with the error and the exit code).
fn summary(p: &ApplyRun, output: Output, error: Option<&ApplyError>) -> Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": "ok",
                "error": null,
                "exitCode": 0,
                "phase": null,
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
                None => println!(
                    "apply done: {changed} of {} changed, {sent} sent",
                    count(all, "host")
                ),
                // The plan is what was meant, not what happened: a failed
                // run may have stopped before touching a host it planned for.
                Some(e) => println!(
                    "apply failed{}: {changed} of {} had changes planned, not all of them made; {sent} sent; re-run to converge",
                    e.phase().map(|ph| format!(" in phase {ph}")).unwrap_or_default(),
                    count(all, "host")
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

/// A host name on the command line that the inventory does not have: a
/// usage error (exit 2) that lists the names it does have.
fn unknown_host(name: &str, arg: &str, inv: &Inventory) -> anyhow::Error {
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    rampart::error::Usage(format!(
        "unknown host `{name}` in {arg}; the inventory names {}",
        names.join(", ")
    ))
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
            .map(|n| inv.host(n).ok_or_else(|| unknown_host(n, "--hosts", &inv)))
            .collect::<Result<_>>()?,
    };
    let opts = &ConnectOptions::default();
    let cancel = Cancel::default();
    let env = Env {
        inv: &inv,
        reporter: &Silent,
        cancel: &cancel,
        concurrency: 32,
    };
    // The engine's fan-out; each host's own outcome is kept, failures too.
    let scanned: Vec<Result<ssh::ScannedKey, SshError>> =
        runtime()?.block_on(each(&env, "scan", hosts.clone(), |h| {
            Box::pin(async move { Ok(ssh::scan_host_key(h, opts).await) })
        }))?;
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
        return Err(rampart::error::Refusal::NotTrusted {
            hosts: refused.join(", "),
            hint: if yes || interactive {
                ""
            } else {
                "; review the fingerprints and pass --yes to pin new keys"
            },
        }
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn hosts_unlock(a: &InventoryArgs, name: &str) -> Result<ExitCode> {
    let inv = load_inventory(&a.inventory)?.inventory;
    let host = inv
        .host(name)
        .ok_or_else(|| unknown_host(name, "HOST", &inv))?;
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
