//! `init`, `render`, `certs list`, `users kubeconfig`: the commands that use the state dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart::inventory::Inventory;
use rampart::pki::{self, Issuance, StateDir};
use rampart::words::count;
use time::OffsetDateTime;

use super::args::{InitArgs, InventoryArgs, Output, RenderArgs, StateArgs, StateArgsNoUnlock};
use super::{load_inventory, state_dir, unlock};

pub fn init(args: &InitArgs) -> Result<ExitCode> {
    let a = &args.state;
    let (inv, dir) = open(&a.inv, a.state_dir.as_ref())?;
    let unlock = unlock::resolve(a, &dir)?;
    let (_, report) = pki::init_with(
        &inv,
        &dir,
        &unlock,
        OffsetDateTime::now_utc(),
        args.replace_lost,
    )?;
    match a.inv.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let mut reused = 0;
            for (name, action) in &report.entries {
                match action {
                    Issuance::Reused => reused += 1,
                    Issuance::Issued => println!("issued    {name}"),
                    Issuance::Reissued { reason } => println!("reissued  {name}: {reason}"),
                }
            }
            let changed = report.entries.len() - reused;
            println!(
                "{}: {} entries, {changed} new or reissued, {reused} reused",
                dir.root().display(),
                report.entries.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn render(a: &RenderArgs) -> Result<ExitCode> {
    let (mut inv, dir) = open(&a.state.inv, a.state.state_dir.as_ref())?;
    rampart::remote::ssh::fill_target_host_keys(&mut inv, &Default::default())?;
    let unlock = unlock::resolve(&a.state, &dir)?;
    let pki = pki::load(&inv, &dir, &unlock)?;
    let bundle = rampart::render::render(&inv, &pki)?;
    rampart::render::write_bundle(&bundle, &a.out)
        .with_context(|| format!("cannot write the bundle to {}", a.out.display()))?;
    let files: usize = bundle.hosts.values().map(|h| h.files.len()).sum();
    match a.state.inv.output {
        Output::Json => {
            let manifests: Vec<_> = bundle.hosts.iter().map(|(h, hb)| hb.manifest(h)).collect();
            println!("{}", serde_json::to_string_pretty(&manifests)?);
        }
        Output::Table => {
            for (host, hb) in &bundle.hosts {
                let services: Vec<&str> = hb.services.iter().map(|s| s.name()).collect();
                // A host that runs none of the services (a backup target)
                // gets no empty parentheses.
                let feeds = if services.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", services.join(", "))
                };
                println!("{host}: {}{feeds}", count(hb.files.len(), "file"));
            }
            println!(
                "{}: {} for {} (private keys in plaintext, mode 0600)",
                a.out.display(),
                count(files, "file"),
                count(bundle.hosts.len(), "host")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn certs_list(a: &StateArgsNoUnlock) -> Result<ExitCode> {
    let (inv, dir) = open(&a.inv, a.state_dir.as_ref())?;
    let certs = pki::list(&inv, &dir, OffsetDateTime::now_utc())?;
    match a.inv.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&certs)?),
        Output::Table => {
            let rows: Vec<[String; 6]> = certs
                .iter()
                .map(|c| {
                    [
                        c.name.clone(),
                        c.ca.clone().unwrap_or_else(|| "-".into()),
                        subject(&c.common_name, &c.organizations),
                        c.not_after.clone().unwrap_or_else(|| "-".into()),
                        format!("{:?}", c.status).to_lowercase(),
                        c.sans.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["NAME", "CA", "SUBJECT", "EXPIRES", "STATUS", "SANS"],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn user_kubeconfig(name: &str, a: &StateArgs, out: Option<&Path>) -> Result<ExitCode> {
    let (inv, dir) = open(&a.inv, a.state_dir.as_ref())?;
    let unlock = unlock::resolve(a, &dir)?;
    let conf = pki::user_kubeconfig(&inv, &dir, &unlock, name, OffsetDateTime::now_utc())?;
    match out {
        Some(path) => {
            pki::store::write_private(path, conf.expose())?;
            eprintln!("{}: kubeconfig for {name} (0600)", path.display());
        }
        None => std::io::stdout().write_all(conf.expose())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The inventory (warnings printed) and its state dir: the flag, else the default for
/// the cluster's name.
fn open(inv: &InventoryArgs, state_dir_flag: Option<&PathBuf>) -> Result<(Inventory, StateDir)> {
    let inventory = load_inventory(&inv.inventory)?.inventory;
    let dir = StateDir::new(state_dir(state_dir_flag, &inventory.cluster.name)?);
    Ok((inventory, dir))
}

fn subject(cn: &str, orgs: &[String]) -> String {
    if orgs.is_empty() {
        format!("CN={cn}")
    } else {
        format!("CN={cn},O={}", orgs.join("+"))
    }
}

/// Left-aligned columns; the last column is not padded.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
