//! `rampart backup restore` (with `--resume ID` and `--rollback ID`): builds
//! the request, calls [`restore::prepare`], prints the plan, calls
//! [`restore::execute`] (which asks through [`Ask`]), prints what happened.
//! Exit codes: 10 when the backup does not verify, 11 when the plan was not
//! confirmed, else apply's (see docs/backups.md).

use std::process::ExitCode;

use anyhow::Result;
use rampart::actions::restore::{
    self, Checked, Mode, Planned, RestoreError, RestoreOutcome, RestoreRequest,
};
use rampart::backup::VerifyOptions;
use rampart::engine::Cancel;
use rampart::remote::ssh::ConnectOptions;
use rampart::restore::{RestorePlan, RollbackPlan};
use time::OffsetDateTime;

use super::args::{Output, RestoreArgs};
use super::report::Progress;
use super::session::{on_ctrl_c, on_path, on_terminate, owner, runtime, Ask, Ssh};
use super::{load_inventory, state_dir};

pub fn restore(a: &RestoreArgs, verbose: bool) -> Result<ExitCode> {
    let inv = load_inventory(&a.inv.inventory)?.inventory;
    let req = RestoreRequest {
        mode: match (&a.resume, &a.rollback) {
            (Some(id), _) => Mode::Resume(id.clone()),
            (_, Some(id)) => Mode::Rollback(id.clone()),
            _ => Mode::New,
        },
        file: a.file.clone(),
        verify: VerifyOptions {
            identities: a.identity.clone(),
            etcdctl: a.etcdctl.clone(),
            etcdutl: on_path("etcdutl"),
            scratch: a.scratch_dir.clone(),
            cancel: None,
        },
        state_dir: state_dir(a.state_dir.as_ref(), &inv.cluster.name)?,
        concurrency: usize::from(a.concurrency),
        dry_run: a.dry_run,
        owner: owner("backup restore"),
        now: OffsetDateTime::now_utc(),
    };
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
    let output = a.inv.output;
    let connector = Ssh(ConnectOptions {
        accept_new_host_keys: a.accept_new_host_keys,
        ..Default::default()
    });
    rt.block_on(async {
        let progress = Progress::new(verbose, output == Output::Json);
        let prepared = restore::prepare(&inv, &req, &connector, &progress, &cancel).await;
        progress.finish();
        let mut prepared = prepared?;
        // JSON prints the plan up front only when it is all there will be.
        if output == Output::Table || a.dry_run || !a.yes {
            print_plan(prepared.plan(), output, a.dry_run)?;
        }
        if a.dry_run {
            prepared.release().await;
            eprintln!("dry run: nothing was changed");
            return Ok(ExitCode::SUCCESS);
        }
        let progress = Progress::new(verbose, output == Output::Json);
        let ask = Ask { yes: a.yes };
        let r = restore::execute(&inv, &req, &mut prepared, &ask, &progress, &cancel).await;
        progress.finish();
        prepared.release().await;
        if let (Ok(RestoreOutcome::Restored { saved, .. }), true) = (&r, verbose) {
            eprintln!("plan kept in {}", saved.display());
        }
        // Refused before any host changed: nothing to sum up.
        if let Err(e @ (RestoreError::NotConfirmed { .. } | RestoreError::Store(_))) = r {
            return Err(e.into());
        }
        summary(prepared.plan(), &r, output)?;
        r?;
        Ok(ExitCode::SUCCESS)
    })
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn print_plan(p: &Planned, output: Output, dry_run: bool) -> Result<()> {
    match p {
        Planned::Restore(p) => print_restore(p, output),
        Planned::Rollback(p) => print_rollback(p, output, dry_run),
    }
}

fn print_rollback(plan: &RollbackPlan, output: Output, dry_run: bool) -> Result<()> {
    match output {
        Output::Json => {
            if dry_run {
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
    Ok(())
}

fn print_restore(p: &RestorePlan, output: Output) -> Result<()> {
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

/// What happened: the check's figures, or the rollback's; JSON carries the
/// plan and the error.
fn summary(p: &Planned, r: &Result<RestoreOutcome, RestoreError>, output: Output) -> Result<()> {
    let error = r.as_ref().err();
    let checked: Option<&Checked> = match r {
        Ok(RestoreOutcome::Restored { checked, .. }) => Some(checked),
        _ => None,
    };
    match (p, output) {
        (Planned::Restore(p), Output::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": if error.is_some() { "failed" } else { "ok" },
                "error": error.map(|e| e.to_string()),
                "plan": p,
                "checked": checked,
            }))?
        ),
        (Planned::Restore(p), Output::Table) => {
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
        (Planned::Rollback(plan), Output::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": if error.is_some() { "failed" } else { "ok" },
                "error": error.map(|e| e.to_string()),
                "rollback": plan,
            }))?
        ),
        (Planned::Rollback(plan), Output::Table) => {
            if error.is_none() {
                println!(
                    "rollback of restore {} done: {} member(s) back on their pre-restore data",
                    plan.id,
                    plan.members.len()
                );
            }
        }
    }
    Ok(())
}
