//! The tera templates under `templates/`, compiled into the binary and parsed once.
//!
//! Names are the paths below `templates/`. Autoescaping is off: the outputs are
//! unit files and YAML, not HTML; values that could break YAML are quoted by the
//! caller (see `context::quoted`).

use std::sync::OnceLock;

use serde::Serialize;
use tera::{Context, Tera};

use super::RenderError;

pub const ETCD_UNIT: &str = "systemd/etcd.service";
pub const APISERVER_UNIT: &str = "systemd/kube-apiserver.service";
pub const CONTROLLER_MANAGER_UNIT: &str = "systemd/kube-controller-manager.service";
pub const SCHEDULER_UNIT: &str = "systemd/kube-scheduler.service";
pub const KUBELET_UNIT: &str = "systemd/kubelet.service";
pub const KUBE_PROXY_UNIT: &str = "systemd/kube-proxy.service";
pub const CONTAINERD_CONFIG: &str = "containerd/config.toml";
pub const KUBELET_CONFIG: &str = "kubernetes/kubelet-config.yaml";
pub const KUBELET_SYSCTL: &str = "kubernetes/kubelet-sysctl.conf";
pub const KUBELET_MODULES: &str = "kubernetes/kubelet-modules.conf";
pub const KUBE_PROXY_CONFIG: &str = "kubernetes/kube-proxy-config.conf";
pub const AUDIT_POLICY: &str = "kubernetes/audit-policy.yaml";
pub const ADMISSION_CONFIG: &str = "kubernetes/admission-config.yaml";
pub const EVENT_RATE_LIMIT: &str = "kubernetes/event-rate-limit.yaml";
pub const ADDON_RBAC: &str = "addons/rbac.yaml";
pub const ADDON_CLUSTER_ADMINS: &str = "addons/cluster-admins.yaml";
pub const ADDON_TENANTS: &str = "addons/tenants.yaml";
pub const BACKUP_SERVICE: &str = "systemd/rampart-backup.service";
pub const BACKUP_TIMER: &str = "systemd/rampart-backup.timer";
pub const SCAN_SERVICE: &str = "systemd/rampart-scan.service";
pub const SCAN_TIMER: &str = "systemd/rampart-scan.timer";

macro_rules! embedded {
    ($($name:expr => $file:literal),* $(,)?) => {
        [$(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/", $file)))),*]
    };
}

const SOURCES: [(&str, &str); 21] = embedded![
    ETCD_UNIT => "systemd/etcd.service",
    APISERVER_UNIT => "systemd/kube-apiserver.service",
    CONTROLLER_MANAGER_UNIT => "systemd/kube-controller-manager.service",
    SCHEDULER_UNIT => "systemd/kube-scheduler.service",
    KUBELET_UNIT => "systemd/kubelet.service",
    KUBE_PROXY_UNIT => "systemd/kube-proxy.service",
    CONTAINERD_CONFIG => "containerd/config.toml",
    KUBELET_CONFIG => "kubernetes/kubelet-config.yaml",
    KUBELET_SYSCTL => "kubernetes/kubelet-sysctl.conf",
    KUBELET_MODULES => "kubernetes/kubelet-modules.conf",
    KUBE_PROXY_CONFIG => "kubernetes/kube-proxy-config.conf",
    AUDIT_POLICY => "kubernetes/audit-policy.yaml",
    ADMISSION_CONFIG => "kubernetes/admission-config.yaml",
    EVENT_RATE_LIMIT => "kubernetes/event-rate-limit.yaml",
    ADDON_RBAC => "addons/rbac.yaml",
    ADDON_CLUSTER_ADMINS => "addons/cluster-admins.yaml",
    ADDON_TENANTS => "addons/tenants.yaml",
    BACKUP_SERVICE => "systemd/rampart-backup.service",
    BACKUP_TIMER => "systemd/rampart-backup.timer",
    SCAN_SERVICE => "systemd/rampart-scan.service",
    SCAN_TIMER => "systemd/rampart-scan.timer",
];

/// containerd's CNI config template: Go template syntax, filled in by
/// containerd itself, so it is copied as it is (never through tera).
pub const CNI_TEMPLATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/containerd/cni-bridge.conflist.tmpl"
));

/// The parsed templates. A parse error is a bug in a file shipped inside the
/// binary, so it is reported on first use and cached (every render fails the same way).
fn tera() -> Result<&'static Tera, RenderError> {
    static TERA: OnceLock<Result<Tera, String>> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        // Every value in a unit goes through one of these (see `systemd`).
        tera.register_filter("exec", super::systemd::exec_filter);
        tera.register_filter("setting", super::systemd::setting_filter);
        tera.register_filter("path", super::systemd::path_filter);
        tera.register_filter("calendar", super::systemd::calendar_filter);
        tera.add_raw_templates(SOURCES)
            .map_err(|e| error_chain(&e))?;
        Ok(tera)
    })
    .as_ref()
    .map_err(|message| RenderError::TemplateParse {
        message: message.clone(),
    })
}

/// Renders one template with a typed context.
pub fn render<C: Serialize>(template: &'static str, ctx: &C) -> Result<String, RenderError> {
    let tera = tera()?;
    let context = Context::from_serialize(ctx).map_err(|e| RenderError::Template {
        template,
        message: error_chain(&e),
    })?;
    tera.render(template, &context)
        .map_err(|e| RenderError::Template {
            template,
            message: error_chain(&e),
        })
}

/// tera's top-level message is generic ("Failed to render 'x'"); the cause is in the chain.
fn error_chain(e: &tera::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        tera().expect("templates parse");
    }

    /// A unit template that forgets the escaping layer for one value is a
    /// way into a root-run unit: every `{{ … }}` of one names its filter.
    #[test]
    fn every_value_in_a_unit_goes_through_the_systemd_escaping_layer() {
        let re = regex::Regex::new(r"\{\{(.*?)\}\}").unwrap();
        for (name, text) in SOURCES {
            if !name.starts_with("systemd/") {
                continue;
            }
            for (i, line) in text.lines().enumerate() {
                for m in re.captures_iter(line) {
                    let expr = m[1].trim();
                    // The executable must be a plain absolute path (systemd
                    // refuses a unit whose program name has special characters);
                    // its arguments are escaped.
                    let filter =
                        if line.starts_with("ExecStart=") && m.get(0).unwrap().start() == 10 {
                            "| path"
                        } else if line.starts_with("ExecStart=") || line.starts_with("  --") {
                            "| exec"
                        } else if line.starts_with("ReadWritePaths=") {
                            "| path"
                        } else if line.starts_with("OnCalendar=") {
                            "| calendar"
                        } else {
                            "| setting"
                        };
                    assert!(
                        expr.ends_with(filter),
                        "{name}:{}: `{expr}` must end in `{filter}`",
                        i + 1
                    );
                }
            }
        }
    }
}
