//! Files that are byte-identical on every host of a role, rendered once per cluster.

use crate::inventory::Inventory;
use crate::pki::{names, Issued, Pki};
use crate::secret::Secret;

use super::context::{
    AdmissionConfig, EtcdClusterWide, KubeProxyConfig, KubeletConfig, KubeletSysctl, NoVars,
    RbacAddon, TenantCtx, TenantsAddon,
};
use super::encryption::encryption_config;
use super::templates::{self, render};
use super::RenderError;
use crate::pki::kubeconfig;

/// The CN of the apiserver's kubelet-client certificate (kubeadm's), bound to
/// `system:kubelet-api-admin` by the RBAC addon.
pub const APISERVER_KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Cluster-wide rendered files; hosts clone what their roles need.
pub struct Shared {
    pub etcd: EtcdClusterWide,
    pub audit_policy: String,
    pub admission_config: String,
    pub event_rate_limit: String,
    pub encryption_config: Secret,
    pub admin_conf: Secret,
    pub addon_rbac: String,
    /// The binding that gives admin.conf its power (see `ADDON_CLUSTER_ADMINS`).
    pub addon_cluster_admins: String,
    /// None when the inventory has no tenants.
    pub addon_tenants: Option<String>,
    pub kubelet_config: String,
    pub kubelet_sysctl: String,
    pub kubelet_modules: String,
    pub kube_proxy_config: String,
    pub proxy_conf: Secret,
}

/// A cert from the PKI, or an error naming who needed it.
pub fn cert<'p>(pki: &'p Pki, name: &str, host: &str) -> Result<&'p Issued, RenderError> {
    pki.certs.get(name).ok_or_else(|| RenderError::MissingCert {
        host: host.to_string(),
        name: name.to_string(),
    })
}

/// The trust bundle of CA `ca` (see [`Pki::trust`]), or an error naming who needed it.
pub fn trust<'p>(pki: &'p Pki, ca: &str, host: &str) -> Result<&'p str, RenderError> {
    cert(pki, ca, host)?;
    Ok(pki.trust(ca))
}

impl Shared {
    pub fn new(inv: &Inventory, pki: &Pki) -> Result<Self, RenderError> {
        let cluster = &inv.cluster.name;
        let server = inv.cluster.server_url();
        // Errors here are about the cluster, not one host: name the cluster.
        let who = format!("cluster {cluster}");
        let ca = trust(pki, names::CA, &who)?;
        let yaml_err = |path: &'static str| {
            let who = who.clone();
            move |source| RenderError::Yaml {
                host: who,
                path,
                source,
            }
        };
        let tenants = &inv.tenants;
        Ok(Shared {
            etcd: EtcdClusterWide::new(inv),
            audit_policy: render(templates::AUDIT_POLICY, &NoVars {})?,
            admission_config: render(
                templates::ADMISSION_CONFIG,
                &AdmissionConfig {
                    pod_security_level: inv.security.pod_security.level.as_str(),
                    exempt_namespaces: &inv.security.pod_security.exempt_namespaces,
                },
            )?,
            event_rate_limit: render(templates::EVENT_RATE_LIMIT, &NoVars {})?,
            encryption_config: encryption_config(
                inv.security.encryption_provider,
                &pki.encryption_keys,
            )
            .map_err(yaml_err("/etc/kubernetes/encryption-config.yaml"))?,
            admin_conf: kubeconfig(
                cluster,
                &server,
                ca,
                "kubernetes-admin",
                cert(pki, names::ADMIN, &who)?,
            ),
            addon_rbac: render(
                templates::ADDON_RBAC,
                &RbacAddon {
                    kubelet_client_user: APISERVER_KUBELET_CLIENT_USER,
                },
            )?,
            addon_cluster_admins: render(templates::ADDON_CLUSTER_ADMINS, &NoVars {})?,
            addon_tenants: if tenants.is_empty() {
                None
            } else {
                Some(render(
                    templates::ADDON_TENANTS,
                    &TenantsAddon {
                        pod_security_level: inv.security.pod_security.level.as_str(),
                        tenants: tenants.iter().map(TenantCtx::new).collect(),
                    },
                )?)
            },
            kubelet_config: render(templates::KUBELET_CONFIG, &KubeletConfig::new(inv))?,
            kubelet_sysctl: render(
                templates::KUBELET_SYSCTL,
                &KubeletSysctl {
                    ipv6: inv.cluster.pod_cidr.has_ipv6(),
                },
            )?,
            kubelet_modules: render(templates::KUBELET_MODULES, &NoVars {})?,
            kube_proxy_config: render(
                templates::KUBE_PROXY_CONFIG,
                &KubeProxyConfig {
                    pod_cidr: inv.cluster.pod_cidr.to_string(),
                },
            )?,
            proxy_conf: kubeconfig(
                cluster,
                &server,
                ca,
                "system:kube-proxy",
                cert(pki, names::KUBE_PROXY, &who)?,
            ),
        })
    }
}
