//! The CIS checks on what a host really has: the files with their live
//! modes, owners and contents, and the processes with their real command
//! lines, so the same evaluation `cis check` runs on a rendered bundle runs on
//! the host as kube-bench would see it.
//!
//! A file's contents come from the host when the probe read it (public files:
//! units, certificates, the kubelet config), else from the bundle when the
//! host's sha256 matches it (keys and the encryption config never cross the
//! wire again), else they are unknown and read as empty, which fails any
//! check that needs them (and the file is reported as drift anyway).

use std::collections::BTreeMap;

use super::probe::Probe;
use super::{Area, Finding, Severity};
use crate::cis::host::{HostView, Process};
use crate::cis::{self, Benchmark, Status};
use crate::plan::facts::HostFacts;
use crate::render::{Contents, Dir, File, HostBundle, Service};

/// Manual checks rampart fails on purpose, and why (docs/cis.md): reported
/// as info, not as warnings an admin can do nothing about.
pub const ACCEPTED: &[(&str, &str)] = &[(
    "4.2.7",
    "rampart sets --hostname-override so each node registers under its inventory name, \
     which its kubelet certificate (system:node:<name>) is issued for",
)];

/// The host as it is: every file and directory the facts and the probe saw.
pub fn live_bundle(hb: &HostBundle, facts: &HostFacts, probe: &Probe) -> HostBundle {
    let mut files: BTreeMap<String, File> = BTreeMap::new();
    let mut dirs: BTreeMap<String, Dir> = BTreeMap::new();
    let mut add = |path: &str, mode: u32, owner: &str, group: &str, is_dir: bool| {
        if is_dir {
            dirs.insert(
                path.to_string(),
                Dir {
                    path: path.to_string(),
                    mode,
                    owner: owner.to_string(),
                    group: group.to_string(),
                },
            );
            return;
        }
        let rendered = hb.file(path);
        let contents = match (probe.files.get(path), rendered) {
            (Some(live), _) => Contents::Plain(live.clone()),
            (None, Some(r))
                if facts.files.get(path).and_then(|f| f.sha256.as_deref())
                    == Some(r.sha256().as_str()) =>
            {
                r.contents.clone()
            }
            _ => Contents::Plain(Vec::new()),
        };
        files.insert(
            path.to_string(),
            File {
                path: path.to_string(),
                mode,
                owner: owner.to_string(),
                group: group.to_string(),
                contents,
                services: rendered.map(|r| r.services.clone()).unwrap_or_default(),
            },
        );
    };
    for (path, f) in &facts.files {
        add(path, f.mode, &f.owner, &f.group, f.kind == "directory");
    }
    for (path, d) in &facts.dirs {
        add(path, d.mode, &d.owner, &d.group, true);
    }
    for (path, e) in &probe.entries {
        add(path, e.mode, &e.owner, &e.group, e.is_dir);
    }
    HostBundle {
        files: files.into_values().collect(),
        dirs: dirs.into_values().collect(),
        services: hb.services.clone(),
        users: hb.users.clone(),
        receives_backups: hb.receives_backups,
    }
}

/// Each service's running process, as `ps` would show it.
pub fn running(hb: &HostBundle, probe: &Probe) -> BTreeMap<Service, Process> {
    hb.services
        .iter()
        .filter_map(|s| {
            let unit = s.unit();
            let argv = probe.argv.get(&unit).filter(|a| !a.is_empty())?;
            let comm = argv[0].rsplit('/').next().unwrap_or_default().to_string();
            let environ = probe
                .environ
                .get(&unit)
                .map(|env| env.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
                .unwrap_or_default();
            Some((
                *s,
                Process {
                    comm,
                    cmdline: argv.join(" "),
                    environ,
                },
            ))
        })
        .collect()
}

/// What the CIS evaluation of the live host found: automated failures are
/// failures, manual checks whose test fails are warnings, automated checks
/// that could not be judged are info. Returns the findings and (automated, manual) counts.
pub fn cis_findings(
    benchmark: &Benchmark,
    name: &str,
    hb: &HostBundle,
    live: &HostBundle,
    running: BTreeMap<Service, Process>,
) -> (Vec<Finding>, usize, usize) {
    let view = HostView::with_processes(live, &benchmark.roles, running);
    let report = cis::evaluate_view(benchmark, name, hb, &view);
    let mut out = Vec::new();
    let (mut automated, mut manual) = (0, 0);
    for c in &report.checks {
        if c.automated {
            automated += 1;
        } else {
            manual += 1;
        }
        let mut msg = c.text.clone();
        for (label, v) in [
            ("file", &c.file),
            ("found", &c.observed),
            ("expected", &c.expected),
            ("why", &c.reason),
        ] {
            if let Some(v) = v {
                msg.push_str(&format!("; {label}: {v}"));
            }
        }
        // A manual check whose test kube-bench runs anyway (and reports as
        // WARN when it fails) is a warning: the benchmark leaves the final
        // word to a human, but the test says something is off.
        let severity = match (c.status, c.automated) {
            (Status::Pass, _) | (Status::NotEvaluable, false) => continue,
            (Status::Fail, true) => Severity::Failure,
            (Status::Fail, false) => match ACCEPTED.iter().find(|(id, _)| *id == c.id) {
                Some((_, why)) => {
                    msg = format!("manual check, failing by design: {why}");
                    Severity::Info
                }
                None => {
                    msg = format!("manual check, its test fails: {msg}");
                    Severity::Warning
                }
            },
            (Status::NotEvaluable, true) => Severity::Info,
        };
        out.push(Finding::new(Area::Cis, severity, &c.id, msg));
    }
    if manual > 0 {
        out.push(Finding::new(
            Area::Cis,
            Severity::Info,
            "manual",
            format!(
                "{} apply to this host: review them by hand (docs/cis.md)",
                crate::words::count(manual, "manual CIS check")
            ),
        ));
    }
    (out, automated, manual)
}
