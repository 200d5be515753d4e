//! Preflight: can this host take the install? Judged purely from its facts,
//! before anything is written, so a refusal leaves every host untouched.

use serde::Serialize;

use super::desired::{Needed, Source, VersionRule};
use super::facts::HostFacts;
use super::kernel::SysctlChange;
use crate::render::Service;

/// LoadCredential= (etcd reads its keys through it) arrived in systemd 247.
const MIN_SYSTEMD: u32 = 247;
/// Free space wanted where etcd keeps its data.
const MIN_DISK_KIB: u64 = 1024 * 1024;
/// Beyond this, certificates issued "now" look not-yet-valid on the host.
const MAX_SKEW_SECS: i64 = 60;
/// Beyond this, a warning: logs and audit timestamps drift apart.
const WARN_SKEW_SECS: i64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub message: String,
}

/// What the preflight needs besides the facts.
pub struct Expect<'a> {
    pub services: &'a [Service],
    pub binaries: &'a [Needed],
    /// Binaries that this apply uploads (not required on the host yet).
    pub uploading: &'a [&'a str],
    /// Services whose start phase is skipped: a missing binary is a warning.
    pub not_starting: &'a [Service],
    /// `major.minor` of Kubernetes the inventory asks for.
    pub kube_minor: (u32, u32),
    /// Admin clock when the facts were taken (seconds since the epoch).
    pub admin_time: i64,
    /// Kernel settings that differ and cannot be set here.
    pub sysctls: &'a [SysctlChange],
}

/// Ports each service listens on; in use by anything else is an error.
fn ports(svc: Service) -> &'static [u16] {
    match svc {
        Service::Etcd => &[2379, 2380],
        Service::KubeApiserver => &[6443],
        Service::KubeControllerManager => &[10257],
        Service::KubeScheduler => &[10259],
        Service::Kubelet => &[10250],
        Service::KubeProxy => &[10256],
        Service::Containerd => &[],
        Service::Backups | Service::Scan => &[],
    }
}

/// Finds `major.minor` in a version line ("Kubernetes v1.34.1", "etcd Version: 3.4.23").
fn minor_version(line: &str) -> Option<(u32, u32)> {
    let re = regex::Regex::new(r"v?(\d+)\.(\d+)(?:\.\d+)?").expect("static regex");
    let c = re.captures(line)?;
    Some((c[1].parse().ok()?, c[2].parse().ok()?))
}

pub fn check(facts: &HostFacts, e: &Expect) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut error = |m: String| {
        out.push(Finding {
            level: Level::Error,
            message: m,
        })
    };
    match facts.systemd {
        None => error("systemd not found: rampart runs services as systemd units".into()),
        Some(v) if v < MIN_SYSTEMD => error(format!(
            "systemd {v} is too old: etcd's LoadCredential= needs {MIN_SYSTEMD} or newer (Debian 12 has 252)"
        )),
        _ => {}
    }
    if let Some(kib) = facts.disk_free_kib {
        if kib < MIN_DISK_KIB {
            error(format!(
                "only {} MiB free under /var/lib; etcd needs at least {} MiB",
                kib / 1024,
                MIN_DISK_KIB / 1024
            ));
        }
    }
    if e.services.contains(&Service::Etcd) && facts.users.get("etcd") != Some(&true) {
        error("user `etcd` does not exist: install Debian's etcd-server package or create a system user etcd".into());
    }
    for svc in e.services {
        let running = facts
            .services
            .get(&svc.unit())
            .is_some_and(|s| s.is_active());
        for port in ports(*svc) {
            if !running && facts.listening.contains(port) {
                error(format!(
                    "port {port} (for {svc}) is already in use by another program; `ss -ltnp sport = :{port}` shows which"
                ));
            }
        }
    }
    // A hold means a restore has not finished: whatever apply started
    // would be refused by the unit's condition, or race the restore.
    for (unit, id) in &facts.holds {
        error(format!(
            "{unit} is held stopped by restore {id}, which has not finished: run `rampart backup restore --resume {id}` or `--rollback {id}` (or, for a restore given up on, delete {}/{unit})",
            super::HOLD_DIR
        ));
    }
    let mut warnings = Vec::new();
    for b in e.binaries {
        // rampart uploads itself whenever the host's copy differs: its
        // sha256 is the check, not a version line.
        if e.uploading.contains(&b.name) || b.name == Service::Backups.binary() {
            continue;
        }
        let skipped = e.not_starting.contains(&b.needed_for);
        let mut problem = |m: String| {
            if skipped {
                warnings.push(format!("{m} (its start phase is skipped)"));
            } else {
                out.push(Finding {
                    level: Level::Error,
                    message: m,
                });
            }
        };
        let Some(line) = facts.binaries.get(b.name).cloned().flatten() else {
            problem(match b.source {
                Source::Artifact => format!(
                    "{} is missing: install it or set binaries.artifacts to upload it",
                    b.path
                ),
                Source::Package(package) => format!(
                    "{} is missing: install Debian's {package} package (the {} needs it)",
                    b.path, b.needed_for
                ),
            });
            continue;
        };
        if b.version == VersionRule::Present {
            continue;
        }
        let Some((major, minor)) = minor_version(&line) else {
            problem(format!("{} printed no version (`{line}`)", b.path));
            continue;
        };
        match b.version {
            VersionRule::Etcd if !(major == 3 && (minor == 4 || minor == 5)) => problem(format!(
                "{} is {major}.{minor}; rampart supports etcd 3.4 and 3.5",
                b.path
            )),
            VersionRule::Kubernetes if (major, minor) != e.kube_minor => problem(format!(
                "{} is {major}.{minor}, the inventory asks for Kubernetes {}.{}",
                b.path, e.kube_minor.0, e.kube_minor.1
            )),
            VersionRule::AtLeast(m, n) if (major, minor) < (m, n) => problem(format!(
                "{} is {major}.{minor}; the {} needs {m}.{n} or newer",
                b.path, b.needed_for
            )),
            _ => {}
        }
    }
    // Only the kubelet needs rampart's kernel settings (protectKernelDefaults).
    let kubelet_skipped = e.not_starting.contains(&Service::Kubelet);
    let mut node_problem = |m: String| {
        if kubelet_skipped {
            warnings.push(format!("{m} (the kubelet's start phase is skipped)"));
        } else {
            out.push(Finding {
                level: Level::Error,
                message: m,
            });
        }
    };
    if e.services.contains(&Service::Kubelet) {
        if let Some(n @ 1..) = facts.swaps {
            node_problem(format!(
                "swap is on ({}): the kubelet (failSwapOn) refuses to start; turn it off with `swapoff -a` and remove it from /etc/fstab",
                crate::words::count(n as usize, "area")
            ));
        }
    }
    for c in e.sysctls {
        let m = match &c.from {
            Some(from) => format!(
                "kernel setting {} is {from} here, the kubelet needs {}, and {} cannot be written (a container shares its kernel: set it on the machine that runs it)",
                c.key,
                c.to,
                super::kernel::proc_path(&c.key)
            ),
            None => format!(
                "kernel setting {} does not exist here (its module is not loaded: `modprobe br_netfilter` for net.bridge.*); the kubelet needs it at {}",
                c.key, c.to
            ),
        };
        node_problem(m);
    }
    if let Some(t) = facts.time {
        let skew = t - e.admin_time;
        if skew.abs() > MAX_SKEW_SECS {
            out.push(Finding {
                level: Level::Error,
                message: format!("clock is {skew:+} s off this machine's; certificates issued now would not be valid there yet: fix NTP"),
            });
        } else if skew.abs() > WARN_SKEW_SECS {
            warnings.push(format!("clock is {skew:+} s off this machine's"));
        }
    }
    out.extend(warnings.into_iter().map(|m| Finding {
        level: Level::Warning,
        message: m,
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::facts::ServiceFact;

    fn healthy() -> HostFacts {
        let mut f = HostFacts {
            systemd: Some(252),
            disk_free_kib: Some(10 << 20),
            time: Some(1000),
            ..Default::default()
        };
        f.users.insert("etcd".into(), true);
        f.binaries
            .insert("etcd".into(), Some("etcd Version: 3.4.23".into()));
        f
    }

    fn etcd_bin() -> Vec<Needed> {
        vec![Needed {
            name: "etcd",
            path: "/usr/bin/etcd".into(),
            version_args: "--version",
            service: Some(Service::Etcd),
            needed_for: Service::Etcd,
            source: Source::Artifact,
            version: VersionRule::Etcd,
        }]
    }

    #[test]
    fn nodes_with_swap_on_are_refused_unless_the_kubelet_start_is_skipped() {
        let mut f = healthy();
        f.swaps = Some(1);
        let node = Expect {
            services: &[Service::Kubelet],
            ..expect(&[], &[])
        };
        let found = check(&f, &node);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].level, Level::Error);
        assert!(found[0].message.starts_with("swap is on (1 area)"));
        let skipped = check(
            &f,
            &Expect {
                not_starting: &[Service::Kubelet],
                ..node
            },
        );
        assert_eq!(skipped[0].level, Level::Warning);
        // etcd-only hosts may swap.
        assert!(check(&f, &expect(&etcd_bin(), &[])).is_empty());
    }

    #[test]
    fn units_held_by_an_unfinished_restore_are_refused() {
        let mut f = healthy();
        f.holds
            .insert("etcd.service".into(), "20261130T150000Z".into());
        f.holds
            .insert("rampart-backup.service".into(), "20261130T150000Z".into());
        let found = check(&f, &expect(&etcd_bin(), &[]));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0]
            .message
            .starts_with("etcd.service is held stopped by restore 20261130T150000Z, which has not finished: run `rampart backup restore --resume 20261130T150000Z`"));
    }

    #[test]
    fn runtime_pieces_name_their_debian_package_and_minimum_version() {
        let bins = vec![
            Needed {
                name: "containerd",
                path: "/usr/bin/containerd".into(),
                version_args: "--version",
                service: Some(Service::Containerd),
                needed_for: Service::Containerd,
                source: Source::Package("containerd"),
                version: VersionRule::AtLeast(1, 6),
            },
            Needed {
                name: "bridge",
                path: "/usr/lib/cni/bridge".into(),
                version_args: "",
                service: None,
                needed_for: Service::Kubelet,
                source: Source::Package("containernetworking-plugins"),
                version: VersionRule::Present,
            },
        ];
        let mut f = healthy();
        f.binaries.insert(
            "containerd".into(),
            Some("containerd github.com/containerd/containerd 1.5.9 1.5.9-1".into()),
        );
        f.binaries.insert("bridge".into(), None);
        let found = check(&f, &expect(&bins, &[]));
        let msgs: Vec<&str> = found.iter().map(|f| f.message.as_str()).collect();
        assert!(
            msgs.contains(&"/usr/bin/containerd is 1.5; the containerd needs 1.6 or newer"),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"/usr/lib/cni/bridge is missing: install Debian's containernetworking-plugins package (the kubelet needs it)"),
            "{msgs:?}"
        );
        f.binaries.insert(
            "containerd".into(),
            Some(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
                    .into(),
            ),
        );
        f.binaries
            .insert("bridge".into(), Some("CNI bridge plugin v1.1.1".into()));
        assert!(check(&f, &expect(&bins, &[])).is_empty());
    }

    fn expect<'a>(bins: &'a [Needed], not_starting: &'a [Service]) -> Expect<'a> {
        Expect {
            services: &[Service::Etcd],
            binaries: bins,
            uploading: &[],
            not_starting,
            kube_minor: (1, 34),
            admin_time: 1000,
            sysctls: &[],
        }
    }

    #[test]
    fn a_healthy_etcd_host_passes() {
        assert!(check(&healthy(), &expect(&etcd_bin(), &[])).is_empty());
    }

    #[test]
    fn a_foreign_listener_on_an_etcd_port_is_an_error() {
        let mut f = healthy();
        f.listening.insert(2379);
        let found = check(&f, &expect(&etcd_bin(), &[]));
        assert!(found[0].message.contains("port 2379"), "{found:?}");
        // …but etcd itself listening there is fine.
        f.services.insert(
            "etcd.service".into(),
            ServiceFact {
                active: "active".into(),
                enabled: "enabled".into(),
                since: None,
            },
        );
        assert!(check(&f, &expect(&etcd_bin(), &[])).is_empty());
    }

    #[test]
    fn missing_binary_is_a_warning_when_its_start_is_skipped() {
        let mut f = healthy();
        f.binaries.insert("etcd".into(), None);
        assert_eq!(check(&f, &expect(&etcd_bin(), &[]))[0].level, Level::Error);
        assert_eq!(
            check(&f, &expect(&etcd_bin(), &[Service::Etcd]))[0].level,
            Level::Warning
        );
    }

    #[test]
    fn clock_skew_and_old_systemd_are_errors() {
        let mut f = healthy();
        f.time = Some(1000 + 120);
        f.systemd = Some(241);
        let found = check(&f, &expect(&etcd_bin(), &[]));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|x| x.message.contains("+120 s")));
    }
}
