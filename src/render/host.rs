//! Which files, directories and services each host gets, by role.
//!
//! etcd members get etcd; control-plane hosts the apiserver, controller-manager
//! and scheduler with their keys; every node (control plane and workers) the
//! kubelet and kube-proxy. Workers never receive CA keys, the service-account
//! key, the encryption key or any etcd material: nothing in `node` adds them.

use crate::inventory::{Host, Inventory};
use crate::pki::{names, Pki};

use super::builder::Builder;
use super::context::{https_url, secure_port, ApiserverUnit, ControlPlaneUnit, EtcdUnit, NodeUnit};
use super::shared::{cert, trust, Shared};
use super::templates::{self, render};
use super::{Contents, HostBundle, RenderError, Service};
use crate::pki::kubeconfig;

use Service::*;

const PKI: &str = "/etc/kubernetes/pki";
const CONTAINERD_CONFIG_PATH: &str = "/etc/containerd/config.toml";
/// Named by `conf_template` in containerd's config.
const CNI_TEMPLATE_PATH: &str = "/etc/containerd/cni-bridge.conflist.tmpl";

pub fn host_bundle(
    inv: &Inventory,
    pki: &Pki,
    shared: &Shared,
    host: &Host,
) -> Result<HostBundle, RenderError> {
    let mut b = Builder::default();
    if host.roles.etcd {
        etcd(&mut b, inv, pki, shared, host)?;
    }
    if host.roles.control_plane {
        control_plane(&mut b, inv, pki, shared, host)?;
    }
    if host.roles.runs_kubelet() {
        node(&mut b, inv, pki, shared, host)?;
    }
    if host.roles.backup_target {
        super::backups::target(&mut b, inv, pki)?;
    }
    let services: Vec<Service> = Service::ALL
        .into_iter()
        .filter(|s| match s {
            Etcd => host.roles.etcd,
            KubeApiserver | KubeControllerManager | KubeScheduler => host.roles.control_plane,
            Containerd | Kubelet | KubeProxy => host.roles.runs_kubelet(),
            Backups => host.roles.etcd && inv.backups.is_some(),
            Scan => true,
        })
        .collect();
    let mut hb = b.finish(services, host.roles.backup_target);
    super::scan::add(&mut hb, inv, host)?;
    Ok(hb)
}

fn unit_path(s: Service) -> String {
    format!("/etc/systemd/system/{}", s.unit())
}

fn etcd(
    b: &mut Builder,
    inv: &Inventory,
    pki: &Pki,
    shared: &Shared,
    host: &Host,
) -> Result<(), RenderError> {
    let n = &host.name;
    let unit = render(
        templates::ETCD_UNIT,
        &EtcdUnit::new(inv, host, &shared.etcd),
    )?;
    b.config(&unit_path(Etcd), unit, &[Etcd]);
    b.dir(&format!("{PKI}/etcd"), 0o700, "root");
    // The etcd CA's key stays in the state dir: nothing on a host signs etcd certs.
    b.cert(
        &format!("{PKI}/etcd/ca.crt"),
        trust(pki, names::ETCD_CA, n)?,
        &[Etcd, KubeApiserver],
    );
    b.pair(
        &format!("{PKI}/etcd/server"),
        cert(pki, &names::etcd_server(n), n)?,
        &[Etcd],
    );
    b.pair(
        &format!("{PKI}/etcd/peer"),
        cert(pki, &names::etcd_peer(n), n)?,
        &[Etcd],
    );
    // For health checks and etcdctl by the admin; no service reads it.
    b.pair(
        &format!("{PKI}/etcd/healthcheck-client"),
        cert(pki, names::ETCD_HEALTHCHECK_CLIENT, n)?,
        &[],
    );
    b.dir("/var/lib/etcd", 0o700, "etcd");
    super::backups::member(b, inv, pki, host)
}

fn control_plane(
    b: &mut Builder,
    inv: &Inventory,
    pki: &Pki,
    shared: &Shared,
    host: &Host,
) -> Result<(), RenderError> {
    let n = &host.name;
    let cluster = &inv.cluster.name;
    let unit = render(templates::APISERVER_UNIT, &ApiserverUnit::new(inv, host))?;
    b.config(&unit_path(KubeApiserver), unit, &[KubeApiserver]);
    let unit = render(
        templates::CONTROLLER_MANAGER_UNIT,
        &ControlPlaneUnit::new(inv, host, "kube-controller-manager"),
    )?;
    b.config(
        &unit_path(KubeControllerManager),
        unit,
        &[KubeControllerManager],
    );
    let unit = render(
        templates::SCHEDULER_UNIT,
        &ControlPlaneUnit::new(inv, host, "kube-scheduler"),
    )?;
    b.config(&unit_path(KubeScheduler), unit, &[KubeScheduler]);

    b.dir(PKI, 0o700, "root");
    b.dir(&format!("{PKI}/etcd"), 0o700, "root");
    let ca = trust(pki, names::CA, n)?;
    b.cert(
        &format!("{PKI}/ca.crt"),
        ca,
        &[KubeApiserver, KubeControllerManager, Kubelet],
    );
    // The controller-manager's CSR signer (kubelet certificate rotation):
    // one certificate, the CA that signs now, since ca.crt holds two CAs
    // during a rotation and the signer refuses a bundle.
    let signer = cert(pki, names::CA, n)?;
    b.cert(
        &format!("{PKI}/ca-signer.crt"),
        &signer.cert_pem,
        &[KubeControllerManager],
    );
    b.secret(
        &format!("{PKI}/ca.key"),
        signer.key_pem.clone(),
        &[KubeControllerManager],
    );
    b.cert(
        &format!("{PKI}/front-proxy-ca.crt"),
        trust(pki, names::FRONT_PROXY_CA, n)?,
        &[KubeApiserver, KubeControllerManager],
    );
    for (name, base) in [
        (names::APISERVER, "apiserver"),
        (names::APISERVER_KUBELET_CLIENT, "apiserver-kubelet-client"),
        (names::APISERVER_ETCD_CLIENT, "apiserver-etcd-client"),
        (names::FRONT_PROXY_CLIENT, "front-proxy-client"),
    ] {
        b.pair(
            &format!("{PKI}/{base}"),
            cert(pki, name, n)?,
            &[KubeApiserver],
        );
    }
    b.cert(
        &format!("{PKI}/etcd/ca.crt"),
        trust(pki, names::ETCD_CA, n)?,
        &[KubeApiserver],
    );
    b.secret(
        &format!("{PKI}/sa.key"),
        pki.service_account_key.clone(),
        &[KubeApiserver, KubeControllerManager],
    );
    b.cert(
        &format!("{PKI}/sa.pub"),
        &pki.service_account_pub,
        &[KubeApiserver],
    );

    b.secret(
        "/etc/kubernetes/encryption-config.yaml",
        shared.encryption_config.clone(),
        &[KubeApiserver],
    );
    for (path, text) in [
        ("/etc/kubernetes/audit-policy.yaml", &shared.audit_policy),
        (
            "/etc/kubernetes/admission-config.yaml",
            &shared.admission_config,
        ),
        (
            "/etc/kubernetes/event-rate-limit.yaml",
            &shared.event_rate_limit,
        ),
    ] {
        b.config(path, text.clone(), &[KubeApiserver]);
    }
    b.dir("/var/log/kubernetes", 0o700, "root");
    b.dir("/var/log/kubernetes/audit", 0o700, "root");

    // The controller-manager and scheduler talk to their own apiserver, not the
    // load balancer: they keep working while the VIP moves.
    let local = https_url(host.address, secure_port(inv, host));
    for (path, name, user, service) in [
        (
            "/etc/kubernetes/controller-manager.conf",
            names::CONTROLLER_MANAGER,
            "system:kube-controller-manager",
            KubeControllerManager,
        ),
        (
            "/etc/kubernetes/scheduler.conf",
            names::SCHEDULER,
            "system:kube-scheduler",
            KubeScheduler,
        ),
    ] {
        let conf = kubeconfig(cluster, &local, ca, user, cert(pki, name, n)?);
        b.secret(path, conf, &[service]);
    }
    b.secret("/etc/kubernetes/admin.conf", shared.admin_conf.clone(), &[]);

    b.dir("/etc/kubernetes/addons", 0o700, "root");
    b.config(
        "/etc/kubernetes/addons/rbac.yaml",
        shared.addon_rbac.clone(),
        &[],
    );
    b.config(
        crate::layout::CLUSTER_ADMINS_ADDON,
        shared.addon_cluster_admins.clone(),
        &[],
    );
    if let Some(tenants) = &shared.addon_tenants {
        b.config("/etc/kubernetes/addons/tenants.yaml", tenants.clone(), &[]);
    }
    Ok(())
}

fn node(
    b: &mut Builder,
    inv: &Inventory,
    pki: &Pki,
    shared: &Shared,
    host: &Host,
) -> Result<(), RenderError> {
    let n = &host.name;
    let unit = render(
        templates::KUBELET_UNIT,
        &NodeUnit::new(inv, host, "kubelet"),
    )?;
    b.config(&unit_path(Kubelet), unit, &[Kubelet]);
    let unit = render(
        templates::KUBE_PROXY_UNIT,
        &NodeUnit::new(inv, host, "kube-proxy"),
    )?;
    b.config(&unit_path(KubeProxy), unit, &[KubeProxy]);

    b.dir(PKI, 0o700, "root");
    let ca = trust(pki, names::CA, n)?;
    b.cert(&format!("{PKI}/ca.crt"), ca, &[Kubelet]);
    b.config(
        "/var/lib/kubelet/config.yaml",
        shared.kubelet_config.clone(),
        &[Kubelet],
    );
    b.file(
        "/etc/sysctl.d/90-rampart-kubelet.conf",
        0o644,
        Contents::Plain(shared.kubelet_sysctl.clone().into_bytes()),
        &[Kubelet],
    );
    b.file(
        "/etc/modules-load.d/90-rampart-kubelet.conf",
        0o644,
        Contents::Plain(shared.kubelet_modules.clone().into_bytes()),
        &[Kubelet],
    );
    let path = "/etc/kubernetes/kubelet.conf";
    let conf = kubeconfig(
        &inv.cluster.name,
        &inv.cluster.server_url(),
        ca,
        &format!("system:node:{n}"),
        cert(pki, &names::kubelet_client(n), n)?,
    );
    b.secret(path, conf, &[Kubelet]);
    b.dir("/var/lib/kubelet/pki", 0o700, "root");
    b.pair(
        "/var/lib/kubelet/pki/kubelet",
        cert(pki, &names::kubelet_serving(n), n)?,
        &[Kubelet],
    );
    // The kubelet restarts after containerd when these change: it hands the
    // node's pod CIDR to containerd (which writes the network config from the
    // template) when it starts, not when containerd does.
    b.dir("/etc/containerd", 0o755, "root");
    b.config(
        CONTAINERD_CONFIG_PATH,
        render(
            templates::CONTAINERD_CONFIG,
            &super::context::ContainerdConfig::new(inv, host),
        )?,
        &[Containerd, Kubelet],
    );
    b.config(
        CNI_TEMPLATE_PATH,
        templates::CNI_TEMPLATE.to_string(),
        &[Containerd, Kubelet],
    );
    b.config(
        "/var/lib/kube-proxy/config.conf",
        shared.kube_proxy_config.clone(),
        &[KubeProxy],
    );
    b.secret(
        "/etc/kubernetes/proxy.conf",
        shared.proxy_conf.clone(),
        &[KubeProxy],
    );
    Ok(())
}
