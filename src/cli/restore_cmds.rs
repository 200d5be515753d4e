//! `rampart backup restore` (with `--resume ID` and `--rollback ID`): verify
//! the backup here, connect and lock over SSH, print the plan, ask, run.
//! Exit codes: 10 when the backup does not verify, 11 when the plan was not
//! confirmed, else apply's (see docs/backups.md).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Result};
use rampart::actions::restore::{self as engine, Checked, Options, RestoreError, Session};
use rampart::backup::VerifyOptions;
use rampart::inventory::Inventory;
use rampart::phases::Cancel;
use rampart::remote::ssh::ConnectOptions;
use rampart::restore::{valid_id, RestorePlan, RollbackPlan};
use time::OffsetDateTime;

use super::apply_cmds::{confirm, on_ctrl_c, runtime, Ssh};
use super::args::{Output, RestoreArgs};
use super::backup_cmds::on_path;
use super::report::Progress;
use super::{code, load_inventory, state_dir, Exit};

enum Mode {
    New,
    Resume(String),
    Rollback(String),
}

fn stamp(t: OffsetDateTime) -> String {
    t.format(time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .expect("static format")
}

pub fn restore(a: &RestoreArgs, verbose: bool) -> Result<ExitCode> {
    let inv = load_inventory(&a.inv.inventory)?.inventory;
    let state = state_dir(a.state_dir.as_ref(), &inv.cluster.name)?;
    let now = OffsetDateTime::now_utc();
    let mode = match (&a.resume, &a.rollback) {
        (Some(id), _) => Mode::Resume(id.clone()),
        (_, Some(id)) => Mode::Rollback(id.clone()),
        _ => Mode::New,
    };
    let id = match &mode {
        Mode::New => stamp(now),
        Mode::Resume(id) | Mode::Rollback(id) => {
            if !valid_id(id) {
                bail!("`{id}` is not a restore id; ids look like 20261130T150000Z (see `ls /var/lib/rampart/restore` on a member)");
            }
            id.clone()
        }
    };
    if matches!(mode, Mode::Rollback(_)) && a.file.is_some() {
        bail!("--rollback takes no backup file: it puts the moved-aside data dirs back");
    }
    if matches!(mode, Mode::New) && a.file.is_none() {
        bail!("which backup? give the `.db.age` file: rampart backup restore FILE --identity KEY -i INVENTORY");
    }
    // Signals are handled from here on (the runtime's workers run the
    // handlers), so even a Ctrl-C during decryption ends through the normal
    // path, which removes the plaintext: decryption polls the flag and stops
    // within a MiB. A SIGKILL'd run's plaintext is deleted by the next
    // verification (`backup verify` or `restore`) using the same scratch dir.
    let rt = runtime()?;
    let cancel = Cancel::default();
    rt.block_on(async {
        on_ctrl_c(&cancel);
        on_terminate(&cancel);
    });
    // Verify before anything connects: a refused backup changes nothing anywhere.
    let verified = match &a.file {
        None => None,
        Some(file) => {
            if a.identity.is_empty() {
                bail!("--identity is required to decrypt {}; it is the age identity (or SSH key) the backups are encrypted to", file.display());
            }
            let opts = VerifyOptions {
                identities: a.identity.clone(),
                etcdctl: a.etcdctl.clone(),
                etcdutl: on_path("etcdutl"),
                scratch: a.scratch_dir.clone(),
                cancel: Some(cancel.flag()),
            };
            match engine::verify_snapshot(file, &opts, now) {
                Ok(v) => Some(v),
                // Whatever failed (a Ctrl-C in a terminal also stops `snapshot
                // status`), the user asked to stop: say so, not "refused".
                Err(_) if cancel.is_cancelled() => {
                    return Err(Exit {
                        code: code::CANCELLED,
                        message: "cancelled while verifying the backup; its decrypted copy was deleted and no host was contacted".into(),
                    }
                    .into())
                }
                Err(e) => return Err(classify(e)),
            }
        }
    };
    let output = a.inv.output;
    let o = Options {
        concurrency: usize::from(a.concurrency),
        lock: !a.dry_run,
        owner: format!(
            "rampart backup restore by {}@{} pid {}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            std::fs::read_to_string("/etc/hostname")
                .unwrap_or_default()
                .trim(),
            std::process::id()
        ),
    };
    let connector = Ssh(ConnectOptions {
        accept_new_host_keys: a.accept_new_host_keys,
        ..Default::default()
    });
    if cancel.is_cancelled() {
        return Err(Exit {
            code: code::CANCELLED,
            message: "cancelled before any host was contacted; nothing was changed".into(),
        }
        .into());
    }
    rt.block_on(async {
        let progress = Progress::new(verbose, output == Output::Json);
        let session = engine::connect(&inv, &id, &connector, &o, &progress, &cancel).await;
        progress.finish();
        let mut session = session.map_err(classify)?;
        let r = match &mode {
            Mode::Rollback(_) => {
                let saved = engine::load_plan(&state, &id).map_err(classify)?;
                let plan = engine::plan_back(&inv, &id, &stamp(now), &session, saved.as_ref());
                match plan {
                    Ok(p) => rollback(a, &inv, &mut session, &p, verbose, &cancel).await,
                    Err(e) => Err(classify(e)),
                }
            }
            Mode::Resume(_) => {
                let Some(saved) = engine::load_plan(&state, &id).map_err(classify)? else {
                    session.release().await;
                    bail!(
                        "no plan of restore {id} in {}; resume on the machine that started it (or pass its --state-dir), or roll back with --rollback {id}",
                        engine::saved_plan_path(&state, &id).display()
                    );
                };
                let snap = verified.as_ref().map(|(m, _)| m);
                match engine::plan_continue(&inv, &saved, &session, snap) {
                    Ok(p) => {
                        run(a, &inv, &mut session, &p, verified.as_ref().map(|(_, d)| d), &state, verbose, &cancel).await
                    }
                    Err(e) => Err(classify(e)),
                }
            }
            Mode::New => {
                let (meta, plain) = verified.as_ref().expect("checked above");
                match engine::plan(&inv, meta.clone(), &session, &id) {
                    Ok(p) => run(a, &inv, &mut session, &p, Some(plain), &state, verbose, &cancel).await,
                    Err(e) => Err(classify(e)),
                }
            }
        };
        session.release().await;
        r
    })
}

/// SIGTERM and SIGHUP cancel between steps like Ctrl-C, so the run ends
/// through its normal path and the decrypted snapshot's dir is removed.
fn on_terminate(cancel: &Cancel) {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::terminate(), SignalKind::hangup()] {
        let cancel = cancel.clone();
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move {
                if s.recv().await.is_some() {
                    eprintln!("cancelling: steps in flight finish, nothing new starts");
                    cancel.cancel();
                }
            });
        }
    }
}

/// Shows the plan, asks (or refuses without `--yes` off a terminal), runs it.
#[allow(clippy::too_many_arguments)]
async fn run(
    a: &RestoreArgs,
    inv: &Inventory,
    session: &mut Session,
    plan: &RestorePlan,
    plain: Option<&rampart::backup::Decrypted>,
    state: &std::path::Path,
    verbose: bool,
    cancel: &Cancel,
) -> Result<ExitCode> {
    let output = a.inv.output;
    // JSON prints the plan up front only when it is all there will be.
    if output == Output::Table || a.dry_run || !a.yes {
        print_plan(plan, output)?;
    }
    if a.dry_run {
        eprintln!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    go_ahead(a, "restore")?;
    let saved = engine::save_plan(state, plan).map_err(|e| {
        anyhow::anyhow!(
            "cannot keep the restore's plan in {}: {e}; pass --state-dir",
            state.display()
        )
    })?;
    if verbose {
        eprintln!("plan kept in {}", saved.display());
    }
    let progress = Progress::new(verbose, output == Output::Json);
    let r = engine::execute(
        inv,
        session,
        plan,
        plain,
        usize::from(a.concurrency),
        &progress,
        cancel,
    )
    .await;
    progress.finish();
    summary(plan, r.as_ref().ok(), r.as_ref().err(), output)?;
    match r {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let hint = format!(
                "\nrestore {id} stopped; each member's journal (/var/lib/rampart/restore/{id}.journal) says how far it got: continue with `rampart backup restore FILE --identity KEY -i INVENTORY --resume {id}`, or put the old data back with `rampart backup restore -i INVENTORY --rollback {id}`",
                id = plan.id
            );
            let e = classify(e);
            match e.downcast::<Exit>() {
                Ok(x) => Err(Exit {
                    code: x.code,
                    message: format!("{}{hint}", x.message),
                }
                .into()),
                Err(e) => Err(e),
            }
        }
    }
}

async fn rollback(
    a: &RestoreArgs,
    inv: &Inventory,
    session: &mut Session,
    plan: &RollbackPlan,
    verbose: bool,
    cancel: &Cancel,
) -> Result<ExitCode> {
    let output = a.inv.output;
    match output {
        Output::Json => {
            if a.dry_run {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "rollback": plan }))?
                );
            }
        }
        Output::Table => {
            println!("rollback of restore {} (stamp {})", plan.id, plan.stamp);
            for m in &plan.members {
                println!(
                    "  {}: {} comes back{}",
                    m.name,
                    m.restore_from,
                    m.set_aside_to
                        .as_deref()
                        .map(|d| format!("; /var/lib/etcd is kept as {d}"))
                        .unwrap_or_default()
                );
            }
            println!("steps:");
            for (i, s) in plan.steps.iter().enumerate() {
                println!("  {}. {s}", i + 1);
            }
        }
    }
    if a.dry_run {
        eprintln!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    go_ahead(a, "rollback")?;
    let progress = Progress::new(verbose, output == Output::Json);
    let r = engine::roll_back(
        inv,
        session,
        plan,
        usize::from(a.concurrency),
        &progress,
        cancel,
    )
    .await;
    progress.finish();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": if r.is_ok() { "ok" } else { "failed" },
                "error": r.as_ref().err().map(|e| e.to_string()),
                "rollback": plan,
            }))?
        ),
        Output::Table => {
            if r.is_ok() {
                println!(
                    "rollback of restore {} done: {} member(s) back on their pre-restore data",
                    plan.id,
                    plan.members.len()
                );
            }
        }
    }
    r.map_err(classify)?;
    Ok(ExitCode::SUCCESS)
}

/// `--yes`, or a terminal that says yes; else exit 11.
fn go_ahead(a: &RestoreArgs, what: &str) -> Result<()> {
    if a.yes {
        return Ok(());
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if terminal
        && confirm(&format!(
            "this {what} stops etcd on every member; go ahead?"
        ))?
    {
        return Ok(());
    }
    Err(Exit {
        code: code::NOT_CONFIRMED,
        message: format!("the {what} was not confirmed; nothing was changed: review the plan above and pass --yes"),
    }
    .into())
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn print_plan(p: &RestorePlan, output: Output) -> Result<()> {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": p }))?
        );
        return Ok(());
    }
    let s = &p.snapshot;
    println!(
        "restore {}{} of cluster {} from {}",
        p.id,
        if p.resumed { " (resumed)" } else { "" },
        p.cluster,
        s.file
    );
    let taken = match (&s.created, &s.member) {
        (Some(c), Some(m)) => format!(
            "taken {c} on {m}{}{}",
            s.etcd_version
                .as_deref()
                .map(|v| format!(" (etcd {v})"))
                .unwrap_or_default(),
            s.age_seconds
                .map(|a| format!(", {} ago", human_age(a)))
                .unwrap_or_default()
        ),
        _ => "no manifest beside it: time and origin unknown".into(),
    };
    println!(
        "snapshot: {taken}; revision {}, {} keys (all kept revisions), {} bytes; sha256 {}",
        s.revision, s.total_keys, s.snapshot_size, s.sha256
    );
    println!("members (initial cluster {}):", p.initial_cluster);
    for m in &p.members {
        let done = if m.done.is_empty() {
            String::new()
        } else {
            format!(
                "; journal: {}",
                m.done
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!(
            "  {}: {} etcd {} ({}), {}{done}",
            m.name,
            m.peer_url,
            m.etcd_version,
            m.tool.binary(),
            if m.data_dir {
                format!("/var/lib/etcd → {}", m.moved_to)
            } else {
                "no /var/lib/etcd".into()
            }
        );
    }
    println!("steps:");
    for (i, s) in p.steps.iter().enumerate() {
        println!("  {}. {s}", i + 1);
    }
    Ok(())
}

fn summary(
    p: &RestorePlan,
    checked: Option<&Checked>,
    error: Option<&RestoreError>,
    output: Output,
) -> Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": if error.is_some() { "failed" } else { "ok" },
                "error": error.map(|e| e.to_string()),
                "plan": p,
                "checked": checked,
            }))?
        ),
        Output::Table => {
            if let Some(c) = checked {
                println!(
                    "restore {} done: {} member(s) healthy at revision {} (snapshot {}), {} live keys; old data dirs kept as /var/lib/etcd.pre-restore-{}",
                    p.id,
                    p.members.len(),
                    c.revision,
                    p.snapshot.revision,
                    c.keys,
                    p.id
                );
            }
        }
    }
    Ok(())
}

/// Engine errors to documented exit codes.
fn classify(e: RestoreError) -> anyhow::Error {
    let code = match &e {
        RestoreError::Refused(_) => code::BACKUP_REFUSED,
        RestoreError::Plan(_) => code::PREFLIGHT,
        RestoreError::Hosts(pe) => super::apply_cmds::hosts_code(pe),
        _ => code::FAILURE,
    };
    // The refusal's cause is the useful part: print the chain in one message.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Exit { code, message }.into()
}
