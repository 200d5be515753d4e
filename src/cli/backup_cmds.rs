//! `rampart backup …` (on the admin's machine) and `rampart agent snapshot`
//! (on each etcd member, started by rampart-backup.timer).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart::backup::{self, AgentConfig, VerifyOptions};

use super::args::Output;

/// The scheduled job. Errors reach `main`, which prints them to stderr (the
/// journal) and exits 1, so systemd marks the unit failed.
pub fn snapshot(config: &Path, verbose: bool) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let now = time::OffsetDateTime::now_utc();
    // Before anything spawns a thread or a process (see backup::cleanup_on_signal).
    backup::cleanup_on_signal(&cfg.dir, now);
    let out = backup::run_job(&cfg, now)
        .with_context(|| format!("{}: etcd backup failed", cfg.member))?;
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
    if verbose {
        // rampart's own peak memory, apart from etcdctl's (for tests/bench/backup.sh).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            eprintln!(
                "{}: peak memory {}",
                cfg.member,
                hwm.trim_start_matches("VmHWM:").trim()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(
    file: &Path,
    identities: Vec<PathBuf>,
    etcdctl: PathBuf,
    scratch: Option<PathBuf>,
    output: Output,
) -> Result<ExitCode> {
    let opts = VerifyOptions {
        identities,
        etcdctl,
        etcdutl: on_path("etcdutl"),
        scratch,
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

/// `name` found in a PATH directory, as a shell would.
pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
