//! One host as kube-bench would see it once the bundle is installed: the processes the
//! rendered units start, the files and directories with their modes and owners, and the
//! kube-bench file roles resolved to our paths. Produces the text each audit would print.

use std::collections::{BTreeMap, BTreeSet};

use super::benchmark::Role;
use super::unit;
use crate::render::{HostBundle, Service};

/// kube-bench roles we point at our files, as an admin would in kube-bench's config.yaml.
/// We run components as systemd units, so their "pod specification" is the unit file.
pub const ROLE_OVERRIDES: &[(&str, &str)] = &[
    (
        "apiserverconf",
        "/etc/systemd/system/kube-apiserver.service",
    ),
    (
        "controllermanagerconf",
        "/etc/systemd/system/kube-controller-manager.service",
    ),
    (
        "schedulerconf",
        "/etc/systemd/system/kube-scheduler.service",
    ),
    ("etcdconf", "/etc/systemd/system/etcd.service"),
    ("kubeletsvc", "/etc/systemd/system/kubelet.service"),
];

/// A process started by a rendered unit.
#[derive(Debug, Clone)]
pub struct Process {
    /// The command name (`ps -C`): basename of argv[0].
    pub comm: String,
    /// argv joined by spaces, as `ps -ef` prints it.
    pub cmdline: String,
    /// `KEY=VALUE` lines of /proc/PID/environ.
    pub environ: String,
}

/// A path's stat data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub is_dir: bool,
}

/// The emulated host.
pub struct HostView<'a> {
    pub bundle: &'a HostBundle,
    pub processes: Vec<Process>,
    roles: &'a BTreeMap<String, Role>,
}

impl<'a> HostView<'a> {
    pub fn new(bundle: &'a HostBundle, roles: &'a BTreeMap<String, Role>) -> Self {
        let processes = bundle
            .services
            .iter()
            .filter_map(|s| process_of(bundle, *s))
            .collect();
        HostView {
            bundle,
            processes,
            roles,
        }
    }

    /// A host whose processes are known (read from `/proc` by `verify`):
    /// `running` holds each service's real process; a service without one
    /// is seen as its unit would start it (as [`HostView::new`] does).
    pub fn with_processes(
        bundle: &'a HostBundle,
        roles: &'a BTreeMap<String, Role>,
        mut running: BTreeMap<Service, Process>,
    ) -> Self {
        let processes = bundle
            .services
            .iter()
            .filter_map(|s| running.remove(s).or_else(|| process_of(bundle, *s)))
            .collect();
        HostView {
            bundle,
            processes,
            roles,
        }
    }

    /// Text of a file in the bundle (secrets included: parsed in memory, never reported).
    pub fn read(&self, path: &str) -> Option<&str> {
        self.bundle
            .file(path)
            .map(|f| std::str::from_utf8(f.contents.bytes()).unwrap_or(""))
    }

    /// Stat of a file, a listed directory, or a directory implied by the files under it
    /// (assumed created root:root 0755 by the installer).
    pub fn stat(&self, path: &str) -> Option<Stat> {
        let path = path.trim_end_matches('/');
        if let Some(f) = self.bundle.file(path) {
            return Some(Stat {
                path: f.path.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
                is_dir: false,
            });
        }
        if let Some(d) = self
            .bundle
            .dirs
            .iter()
            .find(|d| d.path.trim_end_matches('/') == path)
        {
            return Some(Stat {
                path: path.to_string(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
                is_dir: true,
            });
        }
        let prefix = format!("{path}/");
        let implied = self
            .bundle
            .files
            .iter()
            .any(|f| f.path.starts_with(&prefix))
            || self.bundle.dirs.iter().any(|d| d.path.starts_with(&prefix));
        implied.then(|| Stat {
            path: path.to_string(),
            mode: 0o755,
            owner: "root".into(),
            group: "root".into(),
            is_dir: true,
        })
    }

    /// `find PATH`: the path itself and, for a directory, everything below it.
    pub fn find(&self, path: &str) -> Vec<Stat> {
        let root = path.trim_end_matches('/');
        let Some(top) = self.stat(root) else {
            return Vec::new();
        };
        if !top.is_dir {
            return vec![top];
        }
        let prefix = format!("{root}/");
        let mut paths = BTreeSet::new();
        for p in self
            .bundle
            .files
            .iter()
            .map(|f| &f.path)
            .chain(self.bundle.dirs.iter().map(|d| &d.path))
        {
            if let Some(rel) = p.trim_end_matches('/').strip_prefix(&prefix) {
                // Every intermediate directory is found too.
                let mut acc = root.to_string();
                for part in rel.split('/') {
                    acc = format!("{acc}/{part}");
                    paths.insert(acc.clone());
                }
            }
        }
        std::iter::once(top)
            .chain(paths.iter().filter_map(|p| self.stat(p)))
            .collect()
    }

    /// The path a kube-bench role (`$kubeletconf`, …) stands for on this host.
    pub fn role_path(&self, role: &str) -> Option<String> {
        if let Some((_, p)) = ROLE_OVERRIDES.iter().find(|(r, _)| *r == role) {
            return Some(p.to_string());
        }
        let r = self.roles.get(role)?;
        r.candidates
            .iter()
            .find(|c| self.stat(c).is_some())
            .cloned()
            .or_else(|| r.default.first().map(str::to_string))
    }

    /// `ps -ef | grep PATTERN | grep -v grep`.
    pub fn ps_ef_grep(&self, pattern: &str) -> Vec<&Process> {
        self.processes
            .iter()
            .filter(|p| p.cmdline.contains(pattern))
            .collect()
    }

    /// `ps -C NAME`.
    pub fn ps_c(&self, name: &str) -> Vec<&Process> {
        self.processes.iter().filter(|p| p.comm == name).collect()
    }
}

/// `stat -c FORMAT` for the `%a %U %G %n` directives kube-bench uses.
pub fn format_stat(format: &str, st: &Stat) -> String {
    format
        .replace("%a", &format!("{:o}", st.mode & 0o7777))
        .replace("%U", &st.owner)
        .replace("%G", &st.group)
        .replace("%n", &st.path)
}

/// `find -name GLOB` on the basename (`*` and `?` only).
pub fn glob_match(glob: &str, name: &str) -> bool {
    fn go(g: &[u8], n: &[u8]) -> bool {
        match (g.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&g[1..], n) || (!n.is_empty() && go(g, &n[1..])),
            (Some(b'?'), Some(_)) => go(&g[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&g[1..], &n[1..]),
            _ => false,
        }
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    go(glob.as_bytes(), base.as_bytes())
}

/// The process a rendered unit starts, if the host has the unit and it has an `ExecStart=`.
fn process_of(bundle: &HostBundle, service: Service) -> Option<Process> {
    let unit_name = format!("{}.service", service.name());
    let file = bundle.file(&format!("/etc/systemd/system/{unit_name}"))?;
    let u = unit::parse(std::str::from_utf8(file.contents.bytes()).ok()?);
    let argv = u.exec_start.as_ref()?;
    let mut env: Vec<(String, String)> = Vec::new();
    for path in &u.environment_files {
        if let Some(f) = bundle.file(path) {
            env.extend(unit::parse_env_file(
                std::str::from_utf8(f.contents.bytes()).unwrap_or(""),
            ));
        }
    }
    env.extend(u.environment.iter().cloned());
    if u.has_credentials {
        env.push((
            "CREDENTIALS_DIRECTORY".into(),
            format!("/run/credentials/{unit_name}"),
        ));
    }
    let map: BTreeMap<String, String> = env.iter().cloned().collect();
    let argv = unit::expand(argv, &map);
    let comm = argv
        .first()?
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    Some(Process {
        comm,
        cmdline: argv.join(" "),
        // systemd keeps the last assignment of a name; /proc/PID/environ lists each once.
        environ: map.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Contents, File};

    fn file(path: &str, mode: u32, text: &str) -> File {
        File {
            path: path.into(),
            mode,
            owner: "root".into(),
            group: "root".into(),
            contents: Contents::Plain(text.as_bytes().to_vec()),
            services: vec![],
        }
    }

    #[test]
    fn processes_come_from_units_and_find_walks_implied_dirs() {
        let hb = HostBundle {
            files: vec![
                file("/etc/kubernetes/pki/ca.crt", 0o644, ""),
                file("/etc/kubernetes/pki/etcd/ca.key", 0o600, ""),
                file(
                    "/etc/systemd/system/kubelet.service",
                    0o600,
                    "[Service]\nExecStart=/usr/bin/kubelet \\\n  --config=/c\n",
                ),
            ],
            dirs: vec![],
            services: vec![Service::Kubelet],
            ..Default::default()
        };
        let roles = BTreeMap::new();
        let view = HostView::new(&hb, &roles);
        assert_eq!(
            view.ps_c("kubelet")[0].cmdline,
            "/usr/bin/kubelet --config=/c"
        );
        let found: Vec<String> = view
            .find("/etc/kubernetes/pki/")
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(
            found,
            [
                "/etc/kubernetes/pki",
                "/etc/kubernetes/pki/ca.crt",
                "/etc/kubernetes/pki/etcd",
                "/etc/kubernetes/pki/etcd/ca.key"
            ]
        );
        let st = view.stat("/etc/kubernetes/pki/ca.crt").unwrap();
        assert_eq!(
            format_stat("permissions=%a %U:%G %n", &st),
            "permissions=644 root:root /etc/kubernetes/pki/ca.crt"
        );
        assert_eq!(
            view.role_path("kubeletsvc").as_deref(),
            Some("/etc/systemd/system/kubelet.service")
        );
        assert_eq!(view.role_path("nope"), None);
    }
}
