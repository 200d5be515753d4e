//! The plan as text for people: one block per host, diffs for plain files,
//! secrets named but never shown.

use std::fmt::Write as _;

use super::{FileAction, HostPlan, ServiceAction};
use crate::words::count;

/// A unified diff (via `similar`) of two text versions; None for binary data.
pub fn unified_diff(path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    let (old, new) = (
        std::str::from_utf8(old).ok()?,
        std::str::from_utf8(new).ok()?,
    );
    let diff = similar::TextDiff::from_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(2)
            .header(&format!("{path} (on host)"), &format!("{path} (rendered)"))
            .to_string(),
    )
}

/// One-line summary of a host's plan: `cp1: 3 to create, 1 to update, restart etcd`.
pub fn summary(p: &HostPlan) -> String {
    if p.is_noop() {
        return format!(
            "{}: no changes ({} up to date)",
            p.host,
            count(p.unchanged, "file")
        );
    }
    let of_action = |a: FileAction| {
        p.files
            .iter()
            .chain(&p.binaries)
            .filter(|c| c.action == a)
            .count()
    };
    let mut parts = Vec::new();
    for (n, word) in [
        (of_action(FileAction::Create), "to create"),
        (of_action(FileAction::Update), "to update"),
        (of_action(FileAction::Remove), "to remove"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    let new_dirs = p
        .dirs
        .iter()
        .filter(|d| d.action == FileAction::Create)
        .count();
    for (n, word) in [(new_dirs, "to create"), (p.dirs.len() - new_dirs, "to fix")] {
        if n > 0 {
            parts.push(format!("{} {word}", count(n, "dir")));
        }
    }
    if !p.users.is_empty() {
        parts.push(format!("{} to create", count(p.users.len(), "user")));
    }
    if !p.sysctls.is_empty() {
        parts.push(format!(
            "{} to set",
            count(p.sysctls.len(), "kernel setting")
        ));
    }
    if p.apply_manifests {
        parts.push("apply manifests".into());
    }
    for (svc, action) in &p.services {
        parts.push(match action {
            ServiceAction::Restart { .. } => format!("restart {svc}"),
            ServiceAction::Start => format!("start {svc}"),
        });
    }
    format!("{}: {}", p.host, parts.join(", "))
}

/// The full text of a host's plan.
pub fn host(p: &HostPlan) -> String {
    let mut s = summary(p);
    s.push('\n');
    for u in &p.users {
        let _ = writeln!(s, "  + user {} (system, home {})", u.name, u.home);
    }
    for d in &p.dirs {
        let sign = if d.action == FileAction::Create {
            '+'
        } else {
            '~'
        };
        let _ = writeln!(
            s,
            "  {sign} {}/ ({:04o} {}:{}){}",
            d.path,
            d.mode,
            d.owner,
            d.group,
            detail(&d.what)
        );
    }
    for c in p.binaries.iter().chain(&p.files) {
        let sign = match c.action {
            FileAction::Create => '+',
            FileAction::Update => '~',
            FileAction::Remove => '-',
        };
        let tag = if c.secret {
            " [secret]"
        } else if c.binary {
            " [binary]"
        } else {
            ""
        };
        if c.action == FileAction::Remove {
            let _ = writeln!(s, "  - {} (kept in the backup dir)", c.path);
            continue;
        }
        let _ = writeln!(
            s,
            "  {sign} {} ({:04o} {}:{}){tag}{}",
            c.path,
            c.mode,
            c.owner,
            c.group,
            detail(&c.what)
        );
        if let Some(diff) = &c.diff {
            for line in diff.lines() {
                let _ = writeln!(s, "      {line}");
            }
        }
    }
    if p.daemon_reload {
        s.push_str("  systemctl daemon-reload (unit files changed)\n");
    }
    if !p.enable.is_empty() {
        let names: Vec<&str> = p.enable.iter().map(|s| s.name()).collect();
        let _ = writeln!(s, "  systemctl enable {}", names.join(" "));
    }
    if p.load_modules {
        s.push_str("  load the kernel modules of /etc/modules-load.d (changed)\n");
    }
    for c in &p.sysctls {
        let _ = writeln!(
            s,
            "  ~ kernel {}: {} -> {}",
            c.key,
            c.from.as_deref().unwrap_or("absent"),
            c.to
        );
    }
    if p.apply_manifests {
        s.push_str("  kubectl apply the RBAC and policy manifests (changed since last applied)\n");
    }
    for (svc, action) in &p.services {
        match action {
            ServiceAction::Restart { because } => {
                let _ = writeln!(s, "  restart {svc}: {} changed", because.join(", "));
            }
            ServiceAction::Start => {
                let _ = writeln!(s, "  start {svc}: not running");
            }
        }
    }
    s
}

fn detail(what: &[String]) -> String {
    if what.is_empty() {
        String::new()
    } else {
        format!(": {}", what.join(", "))
    }
}
