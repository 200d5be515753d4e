//! `rotate ca`, `rotate service-account-key` and `certs renew`: build the request, plan, print the plan,
//! execute (asking unless `--yes`), print what happened. Exit codes: 11 when
//! not confirmed, 2 for a wrong id or CA, else apply's (docs/rotation.md).

use std::process::ExitCode;

use anyhow::{bail, Result};
use rampart::actions::apply::ApplyOptions;
use rampart::actions::rotate::renew::{self, RenewPlan, RenewRequest};
use rampart::actions::rotate::{self, Mode, RotateError, RotateRequest, RotateRun};
use rampart::inventory::Inventory;
use rampart::pki::renew::Selection;
use rampart::pki::rotation::Rotated;
use rampart::pki::StateDir;
use rampart::remote::ssh::ConnectOptions;
use rampart::rotate::{Direction, RotationPlan};
use rampart::words::count;
use time::OffsetDateTime;

use super::args::{CaArg, Output, RenewArgs, RolloutArgs, RotateCaArgs, RotateRunArgs, StateArgs};
use super::report::Progress;
use super::session::{on_ctrl_c, on_terminate, owner, runtime, Ask, Ssh};
use super::{load_inventory, state_dir, unlock};

/// The inventory (with the targets' pinned host keys) and its state dir,
/// which must exist.
fn open(state: &StateArgs) -> Result<(Inventory, StateDir)> {
    let mut inv = load_inventory(&state.inv.inventory)?.inventory;
    rampart::remote::ssh::fill_target_host_keys(&mut inv, &Default::default())?;
    let dir = StateDir::new(state_dir(state.state_dir.as_ref(), &inv.cluster.name)?);
    if !dir.state_key_path().exists() {
        bail!(
            "no cluster state in {}: run `rampart init -i {}` first",
            dir.root().display(),
            state.inv.inventory.display()
        );
    }
    Ok((inv, dir))
}

fn options(r: &RolloutArgs, what: &str, now: OffsetDateTime) -> ApplyOptions {
    ApplyOptions {
        hosts: None,
        skip: r.phases.skip_phases.clone(),
        concurrency: usize::from(r.phases.concurrency),
        lock: true,
        owner: owner(what),
        admin_time: now.unix_timestamp(),
        stamp: rampart::engine::runbook::new_id(now),
        bootstrap: None,
    }
}

fn connector(r: &RolloutArgs) -> Ssh {
    Ssh(ConnectOptions {
        accept_new_host_keys: r.phases.accept_new_host_keys,
        ..Default::default()
    })
}

pub fn rotate_ca(a: &RotateCaArgs, verbose: bool) -> Result<ExitCode> {
    let what = match a.ca {
        CaArg::Kubernetes => Rotated::Kubernetes,
        CaArg::Etcd => Rotated::Etcd,
        CaArg::FrontProxy => Rotated::FrontProxy,
    };
    rotate(what, &a.run, verbose)
}

/// `rotate ca` and `rotate service-account-key`.
pub fn rotate(what: Rotated, a: &RotateRunArgs, verbose: bool) -> Result<ExitCode> {
    let (inv, dir) = open(&a.state)?;
    let unlock = unlock::resolve(&a.state, &dir)?;
    let now = OffsetDateTime::now_utc();
    let req = RotateRequest {
        what,
        mode: match (&a.resume, &a.rollback) {
            (Some(id), _) => Mode::Resume(id.clone()),
            (_, Some(id)) => Mode::Rollback(id.clone()),
            _ => Mode::New,
        },
        dir,
        unlock: &unlock,
        apply: options(&a.rollout, rampart::rotate::kind(what), now),
        dry_run: a.rollout.dry_run,
        now,
    };
    let output = a.state.inv.output;
    let ssh = connector(&a.rollout);
    let rt = runtime()?;
    let cancel = rampart::engine::Cancel::default();
    rt.block_on(async {
        on_ctrl_c(&cancel);
        on_terminate(&cancel);
        let progress = Progress::new(verbose, output == Output::Json);
        let prepared = rotate::prepare(&inv, req, &ssh, &progress, &cancel).await;
        progress.finish();
        let mut run = match prepared {
            Ok(run) => run,
            Err(e) => {
                failed_json(output, &e)?;
                return Err(e.into());
            }
        };
        if output == Output::Table || a.rollout.dry_run {
            print_rotation(run.plan(), output)?;
        }
        if a.rollout.dry_run {
            run.release().await;
            eprintln!("dry run: nothing was changed");
            return Ok(ExitCode::SUCCESS);
        }
        let progress = Progress::new(verbose, output == Output::Json);
        let ask = Ask { yes: a.rollout.yes };
        let r = rotate::execute(&inv, &mut run, &ask, &progress, &cancel).await;
        progress.finish();
        run.release().await;
        if let Err(e @ (RotateError::NotConfirmed | RotateError::Store(_))) = r {
            failed_json(output, &e)?;
            return Err(e.into());
        }
        rotation_summary(&run, &r, output)?;
        r?;
        Ok(ExitCode::SUCCESS)
    })
}

fn code(e: &RotateError) -> u8 {
    rampart::error::exit_code([e as &(dyn std::error::Error + 'static)])
}

/// With `--output json`, a run that ends before it has a plan to report
/// still prints one JSON object: a script must not have to tell "no
/// output" from "nothing to say".
fn failed_json(output: Output, e: &RotateError) -> Result<()> {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": null,
                "result": "failed",
                "error": format!("{e}"),
                "exitCode": code(e),
                "rollouts": [],
            }))?
        );
    }
    Ok(())
}

fn print_rotation(p: &RotationPlan, output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    let what = match p.direction {
        Direction::Rotate => "rotate",
        Direction::Rollback => "roll back",
    };
    println!(
        "{what} {}: rotation {} on {}",
        p.rotates.describe(),
        p.id,
        count(p.hosts.len(), "host")
    );
    println!(
        "state dir: {}",
        p.stage.map_or("no rotation under way".into(), |s| format!(
            "stage {}",
            s.as_str()
        ))
    );
    if p.rotates.ca_name().is_some() {
        println!(
            "leaves it signs: {} ({})",
            p.leaves.len(),
            p.leaves.join(", ")
        );
    }
    if let Some(etcd) = &p.etcd {
        let keys: Vec<String> = etcd
            .encrypted
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "etcd: {} values; encrypted, by provider:key: {}; Secrets not encrypted: {}",
            etcd.values,
            if keys.is_empty() {
                "none".into()
            } else {
                keys.join(", ")
            },
            etcd.plain_secrets
        );
    }
    for (i, s) in p.steps.iter().enumerate() {
        let mark = match (&s.not_before, s.done) {
            (_, true) => "done on every host".to_string(),
            (Some(t), false) => format!("to do, not before {t}"),
            (None, false) => "to do".to_string(),
        };
        println!("  {}. {:<12} {} [{mark}]", i + 1, s.step.name(), s.effect);
    }
    Ok(())
}

fn rotation_summary(run: &RotateRun, r: &Result<(), RotateError>, output: Output) -> Result<()> {
    let p = run.plan();
    let changed: Vec<serde_json::Value> = run
        .changed
        .iter()
        .map(|(s, n)| serde_json::json!({"step": s.name(), "hostsChanged": n}))
        .collect();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": p,
                "result": if r.is_ok() { "ok" } else { "failed" },
                "error": r.as_ref().err().map(|e| format!("{e}")),
                "exitCode": r.as_ref().err().map_or(0, code),
                "rollouts": changed,
            }))?
        ),
        Output::Table => {
            for (s, n) in &run.changed {
                println!("{}: {} changed", s.name(), count(*n, "host"));
            }
            if r.is_ok() {
                match p.direction {
                    Direction::Rotate => println!(
                        "rotation {} done: every host uses the new {} alone",
                        p.id,
                        p.rotates.describe().trim_start_matches("the ")
                    ),
                    Direction::Rollback => println!(
                        "rotation {} rolled back: every host uses the old {} alone",
                        p.id,
                        p.rotates.describe().trim_start_matches("the ")
                    ),
                }
            }
        }
    }
    Ok(())
}

pub fn certs_renew(a: &RenewArgs, verbose: bool) -> Result<ExitCode> {
    let (inv, dir) = open(&a.state)?;
    let now = OffsetDateTime::now_utc();
    let selection = match (&a.names[..], a.expiring_within, a.all) {
        (_, Some(days), _) => Selection::ExpiringWithin(days),
        (_, _, true) => Selection::All,
        ([], None, false) => {
            return Err(rampart::error::Usage(
                "which certificates? name them, or pass --expiring-within DAYS or --all".into(),
            )
            .into())
        }
        (names, _, _) => Selection::Names(names.to_vec()),
    };
    let plan = renew::plan(&inv, &dir, &selection, now)?;
    let output = a.state.inv.output;
    if output == Output::Table || a.rollout.dry_run {
        print_renewal(&plan, output)?;
    }
    if a.rollout.dry_run || plan.leaves.is_empty() {
        if a.rollout.dry_run {
            eprintln!("dry run: nothing was changed");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let unlock = unlock::resolve(&a.state, &dir)?;
    let req = RenewRequest {
        dir,
        unlock: &unlock,
        apply: options(&a.rollout, "certs renew", now),
        now,
    };
    let ssh = connector(&a.rollout);
    let rt = runtime()?;
    let cancel = rampart::engine::Cancel::default();
    let r = rt.block_on(async {
        on_ctrl_c(&cancel);
        on_terminate(&cancel);
        let progress = Progress::new(verbose, output == Output::Json);
        let ask = Ask { yes: a.rollout.yes };
        let r = renew::execute(&inv, &plan, req, &ssh, &ask, &progress, &cancel).await;
        progress.finish();
        r
    });
    let done = r?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
        Output::Table => println!(
            "renewed {}; {} changed",
            count(done.renewed.len(), "certificate"),
            count(done.hosts_changed, "host")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_renewal(p: &RenewPlan, output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    if p.leaves.is_empty() {
        println!("nothing to renew");
        return Ok(());
    }
    println!(
        "renew {} with new keys:",
        count(p.leaves.len(), "certificate")
    );
    for l in &p.leaves {
        println!(
            "  {:<32} expires {}",
            l.name,
            l.not_after.as_deref().unwrap_or("- (missing)")
        );
    }
    Ok(())
}
