//! `rampart verify`: load and render as `plan` does, read every host
//! ([`rampart::actions::verify`]), print the verdict as a table per host,
//! JSON or JUnit XML, and exit with the code of the worst finding.

use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart::actions::verify::judge::Limits;
use rampart::actions::verify::{self, Scope, VerifyOptions};
use rampart::actions::verify::{junit, Report, Severity};
use rampart::engine::Cancel;
use rampart::remote::ssh::ConnectOptions;
use rampart::words::count;
use time::OffsetDateTime;

use super::args::{
    CertsCheckArgs, InventoryArgs, Output, ReadArgs, StateArgs, VerifyArgs, VerifyOutput,
};
use super::report::Progress;
use super::session::{on_ctrl_c, runtime, Ssh};

pub fn verify(a: &VerifyArgs, verbosity: u8) -> Result<ExitCode> {
    let state = StateArgs {
        inv: InventoryArgs {
            inventory: a.inventory.clone(),
            output: Output::Table,
        },
        state_dir: a.state_dir.clone(),
        identity: a.identity.clone(),
    };
    let benchmark = super::load_benchmark(a.benchmark.as_deref())?;
    let options = options(&a.read, Scope::Everything, a.backup_max_age_hours);
    let quiet = a.output != VerifyOutput::Table;
    let report = read_hosts(&state, &benchmark, &options, verbosity > 0, quiet)?;
    match a.output {
        VerifyOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        VerifyOutput::Junit => println!("{}", junit::render(&report).context("JUnit XML")?),
        VerifyOutput::Table => print_table(&report, verbosity > 0),
    }
    Ok(ExitCode::from(rampart::error::verify_code(&report)))
}

/// `rampart certs check`: `verify` over the certificates alone.
pub fn certs_check(a: &CertsCheckArgs, verbosity: u8) -> Result<ExitCode> {
    let output = a.state.inv.output;
    let options = options(&a.read, Scope::Certificates, 0);
    let benchmark = rampart::cis::Benchmark::builtin();
    let quiet = output == Output::Json;
    let report = read_hosts(&a.state, benchmark, &options, verbosity > 0, quiet)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_certs(&report, a.read.warn_days),
    }
    Ok(ExitCode::from(rampart::error::verify_code(&report)))
}

fn options(r: &ReadArgs, scope: Scope, backup_max_age_hours: u32) -> VerifyOptions {
    VerifyOptions {
        hosts: r.hosts.clone(),
        concurrency: usize::from(r.concurrency),
        limits: Limits {
            now: OffsetDateTime::now_utc(),
            warn_days: r.warn_days,
            backup_max_age_hours,
        },
        scope,
    }
}

/// Loads and renders as `plan` does, then reads and judges every host.
fn read_hosts(
    state: &StateArgs,
    benchmark: &rampart::cis::Benchmark,
    options: &VerifyOptions,
    verbose: bool,
    quiet: bool,
) -> Result<Report> {
    let (inv, bundle, _) = super::apply_cmds::load(state)?;
    let progress = Progress::new(verbose, quiet);
    let cancel = Cancel::default();
    let rt = runtime()?;
    // Read-only: host keys must already be known (`rampart hosts trust`).
    let ssh = Ssh(ConnectOptions::default());
    let report = rt.block_on(async {
        on_ctrl_c(&cancel);
        verify::run(&inv, &bundle, benchmark, &ssh, options, &progress, &cancel).await
    });
    progress.finish();
    Ok(report?)
}

fn print_certs(report: &Report, warn_days: u32) {
    for h in &report.hosts {
        println!(
            "{}: {} ({} installed)",
            h.host,
            counts(h.count(Severity::Failure), h.count(Severity::Warning)),
            count(h.checked.certificates, "certificate"),
        );
        for f in h.findings.iter().filter(|f| f.severity != Severity::Info) {
            println!("  {} {}: {}", label(f.severity), f.id, f.message);
        }
    }
    let certs: usize = report.hosts.iter().map(|h| h.checked.certificates).sum();
    println!(
        "{}: {} on {}; {}",
        report.cluster,
        count(certs, "certificate"),
        count(report.hosts.len(), "host"),
        match rampart::error::verify_code(report) {
            0 => format!(
                "all chain to the state dir's CAs and are valid for more than {warn_days} days"
            ),
            code => format!(
                "{}; exit {code}",
                counts(
                    report.count(Severity::Failure),
                    report.count(Severity::Warning)
                )
            ),
        }
    );
}

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Failure => "FAIL",
        Severity::Warning => "warn",
        Severity::Info => "info",
    }
}

fn print_table(report: &Report, verbose: bool) {
    for h in &report.hosts {
        let c = &h.checked;
        println!(
            "{}: {} ({} automated CIS checks, {}, {}, {})",
            h.host,
            counts(h.count(Severity::Failure), h.count(Severity::Warning)),
            c.cis_automated,
            count(c.files, "managed file"),
            count(c.units, "unit"),
            count(c.certificates, "certificate"),
        );
        for f in &h.findings {
            if f.severity == Severity::Info && !verbose {
                continue;
            }
            println!(
                "  {} {:<12} {}: {}",
                label(f.severity),
                f.area.name(),
                f.id,
                f.message
            );
        }
        let infos = h.count(Severity::Info);
        if infos > 0 && !verbose {
            println!("  ({} not shown: -v lists them)", count(infos, "info line"));
        }
    }
    let (fail, warn) = (
        report.count(Severity::Failure),
        report.count(Severity::Warning),
    );
    println!(
        "{}: {} on {}; {}",
        report.cluster,
        counts(fail, warn),
        count(report.hosts.len(), "host"),
        match rampart::error::verify_code(report) {
            0 => "the cluster is as rampart rendered it".to_string(),
            code => format!("exit {code}"),
        }
    );
}

fn counts(fail: usize, warn: usize) -> String {
    if fail + warn == 0 {
        return "ok".into();
    }
    format!("{}, {}", count(fail, "failure"), count(warn, "warning"))
}
