//! Every rendered unit passes the real `systemd-analyze verify`.
//!
//! What this verifies: each unit parses with no unknown section, key or bad value
//! (systemd only *warns* about those, so any output naming our unit fails the
//! test), every `ExecStart` binary exists and is executable, and the ordering
//! dependencies resolve. It runs against a throw-away `--root` holding the
//! distribution's own units (for `network-online.target`, `sysinit.target`, …)
//! and empty stub executables at the rendered ExecStart paths, because the real
//! Kubernetes binaries are not installed here.
//!
//! What it does not verify: that the binaries accept the flags (see the CIS and
//! golden tests), that `LoadCredential=` sources exist (they are checked at
//! start), or that the sandboxing directives leave the component working.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::render::{rendered, HA, SINGLE_NODE};

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
const SYSTEM_UNITS: &str = "/usr/lib/systemd/system";

/// Copies the distribution's units into `root` so targets referenced by ours resolve.
fn copy_system_units(root: &Path) {
    let dest = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(SYSTEM_UNITS).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let to = dest.join(entry.file_name());
        if ty.is_symlink() {
            let target = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(target, to).unwrap();
        } else if ty.is_file() {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// The executable of `ExecStart=` (first word, before any `\` continuation).
fn exec_start_binary(unit: &str) -> Option<&str> {
    unit.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|rest| rest.split_whitespace().next())
}

/// Runs `systemd-analyze verify` on `units` (name, text) inside a fresh root.
/// Returns the combined output when verification fails or warns.
pub(super) fn verify(units: &[(String, String)]) -> Result<(), String> {
    let root = tempfile::tempdir().unwrap();
    copy_system_units(root.path());
    let unit_dir = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    for (name, text) in units {
        std::fs::write(unit_dir.join(name), text).unwrap();
        if let Some(bin) = exec_start_binary(text) {
            let stub = root.path().join(bin.trim_start_matches('/'));
            std::fs::create_dir_all(stub.parent().unwrap()).unwrap();
            std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let out = Command::new(SYSTEMD_ANALYZE)
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.path().display()))
        .args(units.iter().map(|(name, _)| name))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Warnings about our units (unknown keys, unparsable values) do not change
    // the exit status, so any line naming one of them is a failure too.
    let about_ours = text
        .lines()
        .any(|l| units.iter().any(|(name, _)| l.contains(name.as_str())));
    if out.status.success() && !about_ours {
        Ok(())
    } else {
        Err(format!("exit {}: {text}", out.status))
    }
}

pub(super) fn have_systemd_analyze() -> bool {
    if Path::new(SYSTEMD_ANALYZE).exists() && Path::new(SYSTEM_UNITS).is_dir() {
        true
    } else {
        eprintln!("SKIPPED: {SYSTEMD_ANALYZE} or {SYSTEM_UNITS} missing; units NOT verified");
        false
    }
}

#[test]
fn rendered_units_pass_systemd_analyze_verify() {
    if !have_systemd_analyze() {
        return;
    }
    let mut checked = 0;
    for yaml in [SINGLE_NODE, HA] {
        let (_, bundle) = rendered(yaml);
        for (host, hb) in &bundle.hosts {
            let units: Vec<(String, String)> = hb
                .files
                .iter()
                .filter_map(|f| {
                    let name = f.path.strip_prefix("/etc/systemd/system/")?;
                    let text = String::from_utf8(f.contents.bytes().to_vec()).unwrap();
                    Some((name.to_string(), text))
                })
                .collect();
            assert_eq!(
                units.len(),
                hb.services
                    .iter()
                    .filter(|s| s.unit_rendered())
                    .map(|s| if s.unit().ends_with(".timer") { 2 } else { 1 })
                    .sum::<usize>(),
                "{host}: one unit per service whose unit rampart renders (a timer and its service for a scheduled job)"
            );
            if let Err(e) = verify(&units) {
                panic!("{host}: systemd-analyze verify failed:\n{e}");
            }
            checked += units.len();
        }
    }
    // single node: 6 units; HA: 3 × 6 + 2 × 2; and the host scan's timer
    // and service on each of the 6 hosts.
    assert_eq!(checked, 6 + 18 + 4 + 6 * 2);
}

/// The check is not vacuous: a typo in a directive and a missing binary both fail it.
#[test]
fn verify_catches_unknown_keys_and_missing_binaries() {
    if !have_systemd_analyze() {
        return;
    }
    let (_, bundle) = rendered(SINGLE_NODE);
    let unit = bundle.hosts["node1"]
        .file("/etc/systemd/system/etcd.service")
        .unwrap();
    let good = String::from_utf8(unit.contents.bytes().to_vec()).unwrap();
    let typo = good.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    assert!(verify(&[("etcd.service".into(), typo)]).is_err());
    let missing = good.replace(
        "ExecStart=",
        "ExecStartPre=/usr/bin/does-not-exist\nExecStart=",
    );
    assert!(verify(&[("etcd.service".into(), missing)]).is_err());
    verify(&[("etcd.service".into(), good)]).unwrap();
}
