//! Audit emulation: for each `audit_emulation.kind`, the text kube-bench's shell audit
//! would print on the installed host, computed from the [`HostView`].

use super::benchmark::{Check, Emulation};
use super::host::{format_stat, glob_match, HostView};
use super::semantics::AuditOutputs;

/// What running a check's audits would have produced.
pub enum Audited {
    /// Outputs to test, and the file the audit inspected (if one).
    Ran {
        outputs: AuditOutputs,
        file: Option<String>,
    },
    /// The audit command itself fails (e.g. `grep` finds no process): kube-bench fails the
    /// check whatever its tests say.
    Failed(String),
    /// Cannot be known without a live cluster or node.
    NotEvaluable(String),
}

/// Emulates `check.audit`, `check.audit_config` and the environment audit on `host`.
pub fn run(check: &Check, host: &HostView) -> Audited {
    let (command, file) = match command_output(&check.audit_emulation, host) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let config = check
        .audit_config_emulation
        .as_ref()
        .map(|e| config_output(e, host));
    let env = if check.tests.iter().any(|t| !t.env.is_empty()) {
        // kube-bench: cat /proc/$(ps -C BIN -o pid=)/environ; fails without the process.
        let bin = match &check.audit_emulation {
            Emulation::PsEfGrep { process, .. } | Emulation::PsFc { process } => process,
            _ => return Audited::NotEvaluable("environment audit without a process".into()),
        };
        match host.ps_c(bin).first() {
            Some(p) => p.environ.clone(),
            None => {
                return Audited::Failed(format!("no {bin} process: its environment cannot be read"))
            }
        }
    } else {
        String::new()
    };
    let file = file.or_else(|| config.as_ref().and_then(|(_, f)| f.clone()));
    Audited::Ran {
        outputs: AuditOutputs {
            command,
            config: config.map(|(c, _)| c),
            env,
        },
        file,
    }
}

type CommandOutput = Result<(String, Option<String>), Audited>;

fn command_output(e: &Emulation, host: &HostView) -> CommandOutput {
    let missing = |what: &str| {
        Err(Audited::Failed(format!(
            "no {what} process on this host (no unit with ExecStart)"
        )))
    };
    Ok(match e {
        Emulation::PsEfGrep { pattern, .. } => {
            let ps = host.ps_ef_grep(pattern);
            if ps.is_empty() {
                return missing(pattern);
            }
            (lines(ps.iter().map(|p| p.cmdline.clone())), None)
        }
        Emulation::PsFc { process } => {
            let ps = host.ps_c(process);
            if ps.is_empty() {
                return missing(process);
            }
            let header = "UID PID PPID C STIME TTY TIME CMD".to_string();
            (
                lines(std::iter::once(header).chain(ps.iter().map(|p| p.cmdline.clone()))),
                None,
            )
        }
        Emulation::Stat {
            role,
            format,
            if_missing,
        } => {
            let path = role_path(host, role)?;
            let out = match host.stat(&path) {
                Some(st) => format_stat(format, &st),
                None => if_missing.clone(),
            };
            (out, Some(path))
        }
        Emulation::FindStat {
            role,
            name_glob,
            format,
        } => {
            let path = role_path(host, role)?;
            (find_stat(host, &path, Some(name_glob), format), Some(path))
        }
        Emulation::PkiFind {
            default_path,
            name_glob,
            format,
        } => (
            find_stat(host, default_path, name_glob.as_deref(), format),
            Some(default_path.clone()),
        ),
        Emulation::EtcdDataDir { format } => {
            let from_ps = host
                .ps_ef_grep("etcd")
                .into_iter()
                .filter(|p| p.cmdline.contains("--data-dir"))
                .filter_map(|p| sed_last_value(&p.cmdline, "data-dir"))
                .rfind(|d| host.stat(d).is_some_and(|s| s.is_dir));
            let dir = match from_ps {
                Some(d) => d,
                None => role_path(host, "etcddatadir")?,
            };
            let out = match host.stat(&dir) {
                Some(st) => format_stat(format, &st),
                None => format!("stat: cannot statx '{dir}': No such file or directory"),
            };
            (out, Some(dir))
        }
        Emulation::AdminConf {
            default_paths,
            format,
        } => {
            let found: Vec<String> = default_paths
                .iter()
                .filter_map(|p| host.stat(p))
                .map(|st| format_stat(format, &st))
                .collect();
            (lines(found), Some(default_paths.join(" ")))
        }
        Emulation::KubeletCafile { role, format } => {
            let path = kubelet_cafile(host).map_or_else(|| role_path(host, role), Ok)?;
            let out = host
                .stat(&path)
                .map(|st| format_stat(format, &st))
                .unwrap_or_default();
            (out, Some(path))
        }
        Emulation::EncryptionProviders { process } => {
            let path = host
                .ps_ef_grep(process)
                .into_iter()
                .filter(|p| p.cmdline.contains("--encryption-provider-config"))
                .filter_map(|p| sed_last_value(&p.cmdline, "encryption-provider-config"))
                .next_back();
            let out = path
                .as_deref()
                .and_then(|p| host.read(p))
                .map(providers_line)
                .unwrap_or_default();
            (out, path)
        }
        Emulation::KubeletConfig { .. } | Emulation::ProxyConfig { .. } => {
            return Err(Audited::NotEvaluable(
                "a config emulation used as the audit".into(),
            ))
        }
        Emulation::Kubectl => {
            return Err(Audited::NotEvaluable(
                "queries the API server (kubectl); run kube-bench on the installed cluster".into(),
            ))
        }
        Emulation::CniFiles { .. } => {
            return Err(Audited::NotEvaluable(
                "inspects CNI files the network plugin writes at run time".into(),
            ))
        }
        Emulation::None => {
            return Err(Audited::NotEvaluable(
                "the benchmark has no audit for it".into(),
            ))
        }
        Emulation::Unknown => {
            return Err(Audited::NotEvaluable(
                "audit kind unknown to this rampart version".into(),
            ))
        }
    })
}

/// `audit_config` output: the file's text, or empty when it is missing.
fn config_output(e: &Emulation, host: &HostView) -> (String, Option<String>) {
    match e {
        Emulation::KubeletConfig { role } | Emulation::ProxyConfig { role } => {
            match host.role_path(role) {
                Some(p) => (host.read(&p).unwrap_or_default().to_string(), Some(p)),
                None => (String::new(), None),
            }
        }
        _ => (String::new(), None),
    }
}

fn role_path(host: &HostView, role: &str) -> Result<String, Audited> {
    host.role_path(role).ok_or_else(|| {
        Audited::NotEvaluable(format!(
            "kube-bench role ${role} is not in the benchmark's roles"
        ))
    })
}

/// `find PATH [-name GLOB] | xargs stat -c FORMAT`.
fn find_stat(host: &HostView, path: &str, glob: Option<&str>, format: &str) -> String {
    lines(
        host.find(path)
            .into_iter()
            .filter(|st| glob.is_none_or(|g| glob_match(g, &st.path)))
            .map(|st| format_stat(format, &st)),
    )
}

/// `sed 's%.*NAME[= ]\([^ ]*\).*%\1%'`: the value after the last `NAME=` / `NAME `.
fn sed_last_value(cmdline: &str, name: &str) -> Option<String> {
    let mut best = None;
    let mut from = 0;
    while let Some(i) = cmdline[from..].find(name) {
        let at = from + i + name.len();
        if matches!(cmdline[at..].chars().next(), Some('=' | ' ')) {
            let rest = &cmdline[at + 1..];
            best = Some(rest.split(' ').next().unwrap_or("").to_string());
        }
        from = from + i + 1;
    }
    best
}

/// The kubelet's `--client-ca-file=` from `ps -ef | grep kubelet | grep -v apiserver`,
/// else its config's `authentication.x509.clientCAFile`.
fn kubelet_cafile(host: &HostView) -> Option<String> {
    let from_flag = host
        .ps_ef_grep("kubelet")
        .into_iter()
        .filter(|p| !p.cmdline.contains("apiserver"))
        .filter_map(|p| p.cmdline.split("--client-ca-file=").nth(1))
        .filter_map(|v| v.split_whitespace().next())
        .map(str::to_string)
        .next();
    from_flag.or_else(|| {
        let path = host.role_path("kubeletconf")?;
        let doc: serde_yaml::Value = serde_yaml::from_str(host.read(&path)?).ok()?;
        let v = super::jsonpath::execute("{.authentication.x509.clientCAFile}", &doc).ok()?;
        Some(v).filter(|v| !v.is_empty())
    })
}

/// `grep -A1 'providers:' F | tail -n1 | grep -o "[A-Za-z]*" | sed 's/^/provider=/'`.
fn providers_line(text: &str) -> String {
    let all: Vec<&str> = text.lines().collect();
    let Some(last) = all.iter().rposition(|l| l.contains("providers:")) else {
        return String::new();
    };
    let line = all.get(last + 1).unwrap_or(&all[last]);
    lines(
        line.split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .map(|w| format!("provider={w}")),
    )
}

fn lines(it: impl IntoIterator<Item = String>) -> String {
    it.into_iter().map(|l| l + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sed_takes_the_last_occurrence() {
        assert_eq!(
            sed_last_value("etcd --data-dir=/a --x --data-dir /b", "data-dir").as_deref(),
            Some("/b")
        );
        assert_eq!(sed_last_value("etcd --name=x", "data-dir"), None);
    }

    #[test]
    fn providers_line_reads_the_line_after_the_last_providers_key() {
        let cfg = "resources:\n  - resources: [secrets]\n    providers:\n      - aescbc:\n          keys: []\n      - identity: {}\n";
        assert_eq!(providers_line(cfg), "provider=aescbc\n");
        assert_eq!(
            providers_line("providers:\n  - identity: {}\n"),
            "provider=identity\n"
        );
        assert_eq!(providers_line("nothing"), "");
    }

    #[test]
    fn globs_match_basenames() {
        assert!(glob_match("*.crt", "/etc/kubernetes/pki/etcd/ca.crt"));
        assert!(!glob_match("*.crt", "/etc/kubernetes/pki/ca.key"));
        assert!(glob_match("*etcd*", "/etc/systemd/system/etcd.service"));
    }
}
