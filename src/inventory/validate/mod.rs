//! Raw inventory → validated [`Inventory`], collecting every problem on the way.
//!
//! Each check pushes a [`Problem`] and carries on; the caller decides what is
//! fatal. Conversion returns `None` only when the result would be unusable.
//! One file per section of the inventory; this one holds the shared helpers and
//! the cross-section checks.

mod backups;
pub mod calendar;
mod cluster;
mod hosts;
mod runtime;
mod security;
mod ssh;
mod tenants;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::model::*;
use super::schema::*;
use super::{Problem, Severity};

pub use security::DEFAULT_CIPHER_SUITES;

/// Kubernetes minor versions this release renders for.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 32..=34;

/// How validation looks at files on the admin's machine (SSH identity files).
///
/// Validation is otherwise pure; this seam lets tests and the lab validate an
/// inventory whose key files do not exist yet (see docs/inventory.md).
pub trait LocalFiles {
    /// `Ok` when `path` is a file that can be opened for reading, else why not.
    fn check_readable(&self, path: &Path) -> Result<(), String>;
}

/// [`LocalFiles`] backed by the real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl LocalFiles for Disk {
    fn check_readable(&self, path: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if meta.is_dir() {
            return Err("it is a directory".into());
        }
        std::fs::File::open(path)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Problems kept at most: beyond that they are counted, not stored (a 4 MiB
/// inventory can hold 700,000 of them, and the first ones say what is wrong).
pub const MAX_PROBLEMS_KEPT: usize = 1000;

#[derive(Default)]
pub(super) struct Problems(
    pub Vec<Problem>,
    std::collections::HashSet<Problem>,
    /// Problems beyond [`MAX_PROBLEMS_KEPT`], not kept: (errors, warnings).
    pub (usize, usize),
);

impl Problems {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path, message);
    }
    pub fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }
    fn push(&mut self, severity: Severity, path: impl Into<String>, message: impl Into<String>) {
        let problem = Problem {
            severity,
            path: path.into(),
            line: None,
            message: cut_quoted(&message.into()),
        };
        // Defaults are merged into every host; a bad default is reported
        // once. (A set, not a scan of the list: an inventory with 100,000
        // problems must not cost 10^10 comparisons.)
        if self.0.len() >= MAX_PROBLEMS_KEPT {
            match problem.severity {
                Severity::Error => self.2 .0 += 1,
                Severity::Warning => self.2 .1 += 1,
            }
        } else if self.1.insert(problem.clone()) {
            self.0.push(problem);
        }
    }
}

/// Validates `raw` against the real file system; relative paths are resolved
/// against `base` (the inventory's folder).
///
/// Returns the inventory when it could be built at all, and every problem found
/// (errors and warnings). An inventory returned alongside errors must not be used.
pub fn validate(raw: &RawInventory, base: &Path) -> (Option<Inventory>, Vec<Problem>) {
    validate_with(raw, base, &Disk)
}

/// [`validate`] with the local file checks done by `files`.
pub fn validate_with(
    raw: &RawInventory,
    base: &Path,
    files: &dyn LocalFiles,
) -> (Option<Inventory>, Vec<Problem>) {
    let mut p = Problems::default();
    let cluster = cluster::cluster(raw, &mut p);
    let hosts = hosts::hosts(raw, base, files, &mut p);
    hosts::topology(&raw.hosts, &mut p);
    let security = security::security(&raw.security, &mut p);
    let tenants = tenants::tenants(&raw.tenants, &mut p);
    let binaries = backups::binaries(&raw.binaries, base, &mut p);
    let runtime = runtime::runtime(&raw.runtime, &mut p);
    let backups = raw
        .backups
        .as_ref()
        .map(|b| backups::backups(b, &raw.hosts, &mut p));
    backups::target_placement(raw, &mut p);
    if let Some(c) = &cluster {
        cluster::networks(c, &hosts, &mut p);
        cluster::endpoint_placement(c, &hosts, &mut p);
    }
    exempt_tenants(&security, &tenants, &mut p);
    // What was not kept is still counted, and an error among it still
    // makes the inventory invalid.
    let (errors, warnings) = std::mem::take(&mut p.2);
    if errors + warnings > 0 {
        p.0.push(Problem {
            severity: if errors > 0 {
                Severity::Error
            } else {
                Severity::Warning
            },
            path: String::new(),
            line: None,
            message: format!(
                "… and {} more problems ({errors} errors), not listed: the first {MAX_PROBLEMS_KEPT} are",
                errors + warnings
            ),
        });
    }
    let inventory = cluster.map(|cluster| Inventory {
        cluster,
        hosts,
        binaries,
        security,
        tenants,
        backups,
        runtime,
    });
    (inventory, p.0)
}

/// A tenant exempt from Pod Security gets none of the isolation it was declared for.
fn exempt_tenants(security: &Security, tenants: &[Tenant], p: &mut Problems) {
    let exempt: HashSet<&str> = security
        .pod_security
        .exempt_namespaces
        .iter()
        .map(String::as_str)
        .collect();
    for (i, t) in tenants.iter().enumerate() {
        if exempt.contains(t.namespace.as_str()) {
            p.error(
                format!("tenants[{i}].namespace"),
                format!(
                    "tenant `{}` is listed in security.podSecurity.exemptNamespaces; remove it from there",
                    t.namespace
                ),
            );
        }
    }
}

/// `~/x` → `$HOME/x`; relative → against the inventory's folder.
pub(super) fn resolve(f: &str, base: &Path) -> PathBuf {
    if let Some(rest) = f.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let path = PathBuf::from(f);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// Every `quoted` value in a message cut to 60 characters, control
/// characters escaped: a message quotes what the inventory said, and an
/// inventory value can be megabytes long (or hold a terminal escape).
fn cut_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        // Odd pieces are inside backticks.
        if i % 2 == 0 {
            let escaped: String = part.chars().flat_map(char::escape_debug).collect();
            if escaped.chars().count() > 60 {
                out.extend(escaped.chars().take(60));
                out.push('…');
            } else {
                out.push_str(&escaped);
            }
        } else {
            out.push_str(part);
        }
    }
    out
}

/// An RFC 1123 label: what Kubernetes accepts for namespace and node names.
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name (case-insensitive labels joined by dots).
pub(super) fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| is_dns_label(&l.to_ascii_lowercase()))
}

/// A path on the hosts as rampart writes it into root-run units and
/// scripts: absolute, normalised (single slashes, no `.` or `..` component,
/// no trailing slash), of letters, digits and `._+-` only, at most 1024
/// bytes. Nothing in it can end a line, split a word, start a quote, escape,
/// or be a systemd specifier or a shell expansion.
pub fn is_host_path(s: &str) -> bool {
    s.len() <= 1024
        && s.starts_with('/')
        && (s == "/"
            || s[1..].split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
            }))
}

/// An absolute path on a Linux host: see [`is_host_path`].
pub(super) fn check_host_path(s: &str, path: &str, p: &mut Problems) {
    if !is_host_path(s) {
        p.error(
            path,
            format!(
                "`{}` is not a plain absolute path on the hosts: `/` and then names of letters, digits, `.`, `_`, `+` and `-` joined by single slashes, no `.` or `..` and no trailing `/` (it is written into root-run systemd units and scripts)",
                s
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_label("cp-1"));
        assert!(!is_dns_label("Cp1"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_name("K8s.Example.internal"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn host_paths_are_plain_absolute_paths() {
        for ok in [
            "/",
            "/usr/local/bin",
            "/opt/k8s-1.34/bin",
            "/srv/backups/prod_1",
            "/a+b",
        ] {
            assert!(is_host_path(ok), "{ok}");
        }
        for bad in [
            "",
            "usr/bin",
            "/usr/bin/",
            "//usr",
            "/usr//bin",
            "/usr/./bin",
            "/usr/../etc",
            "/usr/bin\nExecStartPre=/bin/sh -c 'id'",
            "/usr/bin\r",
            "/usr/b\0in",
            "/usr/local bin",
            "/opt/\"quoted\"",
            "/opt/bin\\",
            "/opt/%h",
            "/opt/$HOME",
            "/opt/`id`",
            "/opt/a;b",
        ] {
            assert!(!is_host_path(bad), "{bad:?}");
        }
        assert!(!is_host_path(&format!("/{}", "a".repeat(1024))));
    }

    #[test]
    fn quoted_values_are_cut_short_and_escaped() {
        let long = "x".repeat(1_000_000);
        let msg = cut_quoted(&format!("`{long}` is not a path; use `/usr/bin`"));
        assert_eq!(
            msg,
            format!("`{}…` is not a path; use `/usr/bin`", "x".repeat(60))
        );
        assert_eq!(cut_quoted("`a\u{1b}[31m` bad"), "`a\\u{1b}[31m` bad");
    }

    #[test]
    fn duplicate_problems_are_reported_once() {
        let mut p = Problems::default();
        p.error("ssh.user", "x");
        p.error("ssh.user", "x");
        p.warning("ssh.user", "x");
        assert_eq!(p.0.len(), 2);
    }
}
