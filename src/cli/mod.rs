//! Command implementations: each turns parsed arguments into library calls and
//! prints the result as a table or JSON. Library errors bubble up as `anyhow`.

// `print!`/`println!` here write through `out::write`: std's panic when
// stdout is closed (`rampart check … | head`, `| true`), these end quietly.
macro_rules! print {
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*), false) };
}
macro_rules! println {
    () => { $crate::cli::out::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*), true) };
}

mod apply_cmds;
pub mod args;
mod backup_cmds;
mod out;
mod pki_cmds;
mod report;
mod restore_cmds;
mod rotate_cmds;
mod session;
mod unlock;
mod verify_cmds;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use args::{Cli, Command, InventoryArgs, Output};
use rampart::backup;
use rampart::inventory::{self, Loaded};
use rampart::words::count;

pub use rampart::error::code;

/// The documented exit code of an error that reached `main`.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    rampart::error::exit_code(err.chain())
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let verbose = cli.verbose > 0;
    match cli.command {
        Command::Plan(a) => apply_cmds::plan(&a, verbose),
        Command::Verify(a) => verify_cmds::verify(&a, cli.verbose),
        Command::Apply(a) => apply_cmds::apply(&a, verbose),
        Command::Hosts(args::HostsCommand::Trust { inv, hosts, yes }) => {
            apply_cmds::hosts_trust(&inv, hosts.as_deref(), yes)
        }
        Command::Hosts(args::HostsCommand::Unlock { inv, host }) => {
            apply_cmds::hosts_unlock(&inv, &host)
        }
        Command::Backup(args::BackupCommand::Verify {
            file,
            identity,
            etcdctl,
            scratch_dir,
            output,
        }) => backup_cmds::verify(&file, identity, etcdctl, scratch_dir, output),
        Command::Backup(args::BackupCommand::Now(a)) => backup_cmds::now(&a, verbose),
        Command::Backup(args::BackupCommand::List(a)) => backup_cmds::list(&a, verbose),
        Command::Backup(args::BackupCommand::Pull { hosts, to, latest }) => {
            backup_cmds::pull(&hosts, &to, latest, verbose)
        }
        Command::Backup(args::BackupCommand::Restore(a)) => restore_cmds::restore(&a, verbose),
        Command::Agent(args::AgentCommand::Snapshot { config }) => {
            backup_cmds::snapshot(&config, verbose)
        }
        Command::Agent(args::AgentCommand::Receive {
            cluster,
            member,
            dir,
            keep,
            max_age_days,
        }) => backup_cmds::receive(backup::ReceiveRequest {
            cluster,
            member,
            dir,
            retention: backup::RetentionPolicy {
                count: keep,
                max_age_days,
            },
        }),
        Command::Check(a) => check(&a),
        Command::Cis(args::CisCommand::Check {
            bundle,
            benchmark,
            output,
        }) => cis_check(&bundle, benchmark.as_deref(), output),
        Command::Init(a) => pki_cmds::init(&a),
        Command::Render(a) => pki_cmds::render(&a),
        Command::Certs(args::CertsCommand::List(a)) => pki_cmds::certs_list(&a),
        Command::Certs(args::CertsCommand::Check(a)) => verify_cmds::certs_check(&a, cli.verbose),
        Command::Certs(args::CertsCommand::Renew(a)) => rotate_cmds::certs_renew(&a, verbose),
        Command::Rotate(args::RotateCommand::Ca(a)) => rotate_cmds::rotate_ca(&a, verbose),
        Command::Rotate(args::RotateCommand::ServiceAccountKey(a)) => rotate_cmds::rotate(
            rampart::pki::rotation::Rotated::ServiceAccountKey,
            &a,
            verbose,
        ),
        Command::Rotate(args::RotateCommand::EncryptionKey(a)) => {
            rotate_cmds::rotate(rampart::pki::rotation::Rotated::EncryptionKey, &a, verbose)
        }
        Command::Users(args::UsersCommand::Kubeconfig { name, state, out }) => {
            pki_cmds::user_kubeconfig(&name, &state, out.as_deref())
        }
    }
}

/// Loads the inventory and prints its warnings to stderr.
/// The CIS definitions to judge by: `--benchmark FILE`, else the built-in catalogue.
pub(crate) fn load_benchmark(path: Option<&Path>) -> Result<rampart::cis::Benchmark> {
    match path {
        Some(p) => Ok(rampart::cis::Benchmark::load(p)?),
        None => Ok(rampart::cis::Benchmark::builtin().clone()),
    }
}

pub(crate) fn load_inventory(path: &Path) -> Result<Loaded> {
    let loaded = inventory::load(path)?;
    let shown = inventory::MAX_PROBLEMS_SHOWN;
    if loaded.warnings.len() > shown {
        eprintln!(
            "{}; the first {shown}:",
            count(loaded.warnings.len(), "warning")
        );
    }
    for w in loaded.warnings.iter().take(shown) {
        eprintln!("{w}");
    }
    Ok(loaded)
}

fn check(a: &InventoryArgs) -> Result<ExitCode> {
    let loaded = load_inventory(&a.inventory)?;
    let inv = &loaded.inventory;
    match a.output {
        Output::Json => {
            let hosts: Vec<_> = inv
                .hosts
                .iter()
                .map(|h| serde_json::json!({"name": h.name, "address": h.address, "roles": h.roles.to_string()}))
                .collect();
            let out = serde_json::json!({
                "cluster": inv.cluster.name,
                "kubernetesVersion": inv.cluster.version.to_string(),
                "apiEndpoint": inv.cluster.server_url(),
                "hosts": hosts,
                "warnings": loaded.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Table => {
            println!(
                "{}: cluster {} ({}), API at {}, {}: {} etcd, {} control plane, {}",
                a.inventory.display(),
                inv.cluster.name,
                inv.cluster.version,
                inv.cluster.server_url(),
                count(inv.hosts.len(), "host"),
                inv.etcd_members().count(),
                inv.control_planes().count(),
                count(inv.nodes().count(), "node")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The state dir: the flag, else `~/.local/share/rampart/<cluster>`.
pub(crate) fn state_dir(flag: Option<&PathBuf>, cluster: &str) -> Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --state-dir")?;
    Ok(PathBuf::from(home)
        .join(".local/share/rampart")
        .join(cluster))
}

/// Evaluates a written bundle against `benchmark` (default: the built-in catalogue);
/// exit code 4 when an automated check fails.
fn cis_check(bundle: &Path, benchmark: Option<&Path>, output: Output) -> Result<ExitCode> {
    let benchmark = load_benchmark(benchmark)?;
    let bundle = rampart::render::read_bundle(bundle)?;
    let report = rampart::cis::evaluate(&benchmark, &bundle);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", report.to_table()),
    }
    let failed = report.summary.automated_fail;
    if failed > 0 {
        return Err(rampart::error::Refusal::CisFailed(failed).into());
    }
    Ok(ExitCode::SUCCESS)
}
