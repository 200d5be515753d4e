//! Kernel settings (`sysctl`): the values a host's rendered `/etc/sysctl.d/`
//! files ask for, against those in effect.
//!
//! Writing a file under `/etc/sysctl.d/` changes nothing until boot (or until
//! something loads it), and the kubelet with `protectKernelDefaults: true`
//! refuses to start while a value differs. So the plan compares each key with
//! `/proc/sys`, the `kernel-settings` phase sets the ones that differ, and
//! preflight refuses a host where one differs and cannot be set (a read-only
//! `/proc/sys`, as in a container). Kernel modules (`/etc/modules-load.d/`)
//! load at boot too; when rampart's list changes, the phase has
//! systemd-modules-load load them first (`net.bridge.*` exists only once
//! br_netfilter is loaded).

use serde::Serialize;

use super::desired::{Body, Desired};
use super::facts::HostFacts;

/// The directory whose files are sysctl settings.
pub const SYSCTL_DIR: &str = "/etc/sysctl.d/";
/// The directory whose files list kernel modules to load at boot.
pub const MODULES_DIR: &str = "/etc/modules-load.d/";

/// One setting whose value in effect differs from the rendered one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    /// Dotted name: `vm.overcommit_memory`.
    pub key: String,
    /// In effect now; None when the host has no such setting.
    pub from: Option<String>,
    pub to: String,
    /// The host can set it (`/proc/sys/…` writable).
    #[serde(skip)]
    pub settable: bool,
}

/// `key = value` pairs of the rendered sysctl.d files, in file order; as
/// sysctl.d(5) reads them (`#`/`;` comments, a leading `-` that only silences
/// errors, whitespace around `=`).
pub fn wanted(desired: &Desired) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for w in desired
        .files
        .iter()
        .filter(|w| w.path.starts_with(SYSCTL_DIR) && w.path.ends_with(".conf"))
    {
        let Body::Rendered(c) = &w.body else {
            continue;
        };
        for line in String::from_utf8_lossy(c.bytes()).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let key = k.trim().trim_start_matches('-').replace('/', ".");
                out.push((key, normalise(v)));
            }
        }
    }
    out
}

/// Values of multi-number settings are compared word by word (`/proc/sys`
/// separates them with tabs).
fn normalise(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub use crate::layout::proc_path;

/// The wanted settings whose value in effect differs. With `loading`
/// (this apply loads the modules of a changed modules-load.d file first),
/// `net.bridge.*`, which exists only once br_netfilter is loaded, counts as
/// settable while absent: loading the module creates it.
pub fn changes(desired: &Desired, facts: &HostFacts, loading: bool) -> Vec<SysctlChange> {
    wanted(desired)
        .into_iter()
        .filter_map(|(key, to)| {
            let fact = facts.sysctls.get(&key);
            let from = fact.and_then(|f| f.value.as_deref()).map(normalise);
            (from.as_deref() != Some(to.as_str())).then(|| SysctlChange {
                settable: fact.is_some_and(|f| f.writable)
                    || (loading && from.is_none() && key.starts_with("net.bridge.")),
                key,
                from,
                to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::facts::SysctlFact;
    use crate::render::Contents;

    fn desired(text: &str) -> Desired {
        Desired {
            files: vec![crate::plan::desired::Want {
                path: "/etc/sysctl.d/90-rampart-kubelet.conf".into(),
                mode: 0o644,
                owner: "root".into(),
                group: "root".into(),
                sha256: String::new(),
                secret: false,
                services: vec![],
                body: Body::Rendered(Contents::Plain(text.as_bytes().to_vec())),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_values_not_in_effect_change() {
        let d = desired("# comment\nvm.overcommit_memory = 1\n; other\n-kernel/panic=10\nnet.ipv4.ip_local_port_range = 1024 65000\n");
        assert_eq!(
            wanted(&d),
            vec![
                ("vm.overcommit_memory".into(), "1".into()),
                ("kernel.panic".into(), "10".into()),
                ("net.ipv4.ip_local_port_range".into(), "1024 65000".into()),
            ]
        );
        let mut facts = HostFacts::default();
        for (k, v, w) in [
            ("vm.overcommit_memory", "0", false),
            ("kernel.panic", "10", false),
            ("net.ipv4.ip_local_port_range", "1024\t65000", true),
        ] {
            facts.sysctls.insert(
                k.into(),
                SysctlFact {
                    value: Some(v.into()),
                    writable: w,
                },
            );
        }
        assert_eq!(
            changes(&d, &facts, false),
            vec![SysctlChange {
                key: "vm.overcommit_memory".into(),
                from: Some("0".into()),
                to: "1".into(),
                settable: false,
            }]
        );
        assert_eq!(
            proc_path("vm.overcommit_memory"),
            "/proc/sys/vm/overcommit_memory"
        );
    }
}
