//! The host-side scan every host gets: `rampart-scan.timer` runs
//! `scan.sh` hourly, which checks the host against what rampart installed
//! (every managed file's sha256, mode and owner; the units rampart runs;
//! certificate expiry when openssl is there) without rampart or the admin
//! machine, and writes the result as node_exporter textfile metrics an admin
//! can alert on. `rampart verify` is the full audit from the admin machine;
//! this is the periodic scan between two of them.
//!
//! The manifest is computed from the finished bundle, so it is added last
//! ([`add`]) and lists every file but itself.

use serde::Serialize;

use super::templates::{render, SCAN_SERVICE, SCAN_TIMER};
use super::{Contents, Dir, File, HostBundle, RenderError, Service};
use crate::inventory::{Host, Inventory};

pub const DIR: &str = "/etc/rampart/scan";
pub const SCRIPT: &str = "/etc/rampart/scan/scan.sh";
pub const MANIFEST: &str = "/etc/rampart/scan/manifest";
pub const UNITS: &str = "/etc/rampart/scan/units";
/// Debian's prometheus-node-exporter reads textfiles from here.
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
pub const TEXTFILE: &str = "/var/lib/prometheus/node-exporter/rampart.prom";

const SCAN_SH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/scan/scan.sh"
));

#[derive(Serialize)]
struct Ctx<'a> {
    host: &'a str,
    cluster: &'a str,
    script: &'a str,
    manifest: &'a str,
    units: &'a str,
    textfile: &'a str,
    textfile_dir: &'a str,
}

/// Adds the scan's script, units, unit list and manifest to a finished bundle.
pub(super) fn add(hb: &mut HostBundle, inv: &Inventory, host: &Host) -> Result<(), RenderError> {
    let ctx = Ctx {
        host: &host.name,
        cluster: &inv.cluster.name,
        script: SCRIPT,
        manifest: MANIFEST,
        units: UNITS,
        textfile: TEXTFILE,
        textfile_dir: TEXTFILE_DIR,
    };
    // The script, the unit list and the manifest are read on each run: a
    // change to them restarts nothing. A changed timer restarts the timer.
    let file = |path: &str, mode: u32, text: String, services: &[Service]| File {
        path: path.to_string(),
        mode,
        owner: "root".into(),
        group: "root".into(),
        contents: Contents::Plain(text.into_bytes()),
        services: services.to_vec(),
    };
    let units = unit_list(inv, &hb.services);
    hb.files.extend([
        file(SCRIPT, 0o700, SCAN_SH.to_string(), &[]),
        file(UNITS, 0o600, units, &[]),
        file(&unit_path(false), 0o600, render(SCAN_SERVICE, &ctx)?, &[]),
        file(
            &unit_path(true),
            0o600,
            render(SCAN_TIMER, &ctx)?,
            &[Service::Scan],
        ),
    ]);
    let mut manifest = String::new();
    hb.files.sort_by(|a, b| a.path.cmp(&b.path));
    for f in &hb.files {
        manifest.push_str(&format!(
            "{}\t{:o}\t{}\t{}\t{}\n",
            f.sha256(),
            f.mode & 0o7777,
            f.owner,
            f.group,
            f.path
        ));
    }
    hb.files.push(file(MANIFEST, 0o600, manifest, &[]));
    hb.files.sort_by(|a, b| a.path.cmp(&b.path));
    for (path, mode) in [
        ("/etc/rampart", 0o700),
        (DIR, 0o700),
        ("/var/lib/prometheus", 0o755),
        (TEXTFILE_DIR, 0o755),
    ] {
        if !hb.dirs.iter().any(|d| d.path == path) {
            hb.dirs.push(Dir {
                path: path.to_string(),
                mode,
                owner: "root".into(),
                group: "root".into(),
            });
        }
    }
    hb.dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

fn unit_path(timer: bool) -> String {
    let kind = if timer { "timer" } else { "service" };
    format!("/etc/systemd/system/rampart-scan.{kind}")
}

/// `unit<TAB>binary…` per service the host runs: a group of services is
/// checked only when all its binaries are installed (apply starts a group
/// only then).
fn unit_list(inv: &Inventory, services: &[Service]) -> String {
    // Where apply installs each binary (as `plan::desired::needed_binaries`
    // says; render cannot call plan, which depends on it).
    let path = |s: Service| {
        let dir = match s {
            Service::Containerd => "/usr/bin",
            Service::Backups => return crate::backup::RAMPART_PATH.to_string(),
            Service::Etcd => &inv.binaries.etcd_dir,
            _ => &inv.binaries.dir,
        };
        format!("{}/{}", dir.trim_end_matches('/'), s.binary())
    };
    let mut out = String::new();
    for s in services.iter().filter(|s| **s != Service::Scan) {
        let bins: Vec<String> = s.group().iter().map(|g| path(*g)).collect();
        out.push_str(&format!("{}\t{}\n", s.unit(), bins.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The script on a scratch root: a clean host passes and writes its
    /// metrics; a loosened mode and an edited file fail it, each named.
    #[test]
    fn the_scan_finds_drift_and_writes_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |path: &str, text: &str, mode: u32| {
            let p = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let user = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let group = String::from_utf8(
            std::process::Command::new("id")
                .arg("-gn")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        write("/etc/a.key", "secret\n", 0o600);
        write("/etc/b.conf", "b\n", 0o644);
        let line = |path: &str, text: &str, mode: u32| {
            format!(
                "{}\t{mode:o}\t{}\t{}\t{path}\n",
                crate::digest::sha256_hex(text.as_bytes()),
                user.trim(),
                group.trim()
            )
        };
        write(
            MANIFEST,
            &(line("/etc/a.key", "secret\n", 0o600) + &line("/etc/b.conf", "b\n", 0o644)),
            0o600,
        );
        // A unit whose binary is not installed is not checked.
        write(
            UNITS,
            "kube-apiserver.service\t/usr/local/bin/kube-apiserver\n",
            0o600,
        );
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(SCAN_SH)
                .args(["scan.sh", MANIFEST, UNITS, TEXTFILE])
                .env("ROOT", root)
                .output()
                .unwrap();
            let metrics =
                std::fs::read_to_string(root.join(TEXTFILE.trim_start_matches('/'))).unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                metrics,
            )
        };
        let (ok, text, metrics) = run();
        assert!(ok, "{text}");
        assert!(
            metrics.contains("rampart_scan_drifted_files 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("rampart_scan_inactive_units 0\n"),
            "{metrics}"
        );

        std::fs::set_permissions(
            root.join("etc/a.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write("/etc/b.conf", "edited\n", 0o644);
        let (ok, text, metrics) = run();
        assert!(!ok);
        assert!(text.contains("drift: /etc/a.key is 644"), "{text}");
        assert!(
            text.contains("drift: /etc/b.conf was changed on the host"),
            "{text}"
        );
        assert!(
            metrics.contains("rampart_scan_drifted_files 2\n"),
            "{metrics}"
        );
    }
}
