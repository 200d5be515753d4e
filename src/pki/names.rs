//! Catalogue names of every certificate: one place, so render and the catalogue agree.

pub const CA: &str = "ca";
pub const ETCD_CA: &str = "etcd-ca";
pub const FRONT_PROXY_CA: &str = "front-proxy-ca";
pub const APISERVER: &str = "apiserver";
pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";
pub const APISERVER_ETCD_CLIENT: &str = "apiserver-etcd-client";
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
pub const ETCD_HEALTHCHECK_CLIENT: &str = "etcd-healthcheck-client";
pub const CONTROLLER_MANAGER: &str = "controller-manager";
pub const SCHEDULER: &str = "scheduler";
pub const KUBE_PROXY: &str = "kube-proxy";
pub const ADMIN: &str = "admin";
pub const SUPER_ADMIN: &str = "super-admin";

pub fn etcd_server(host: &str) -> String {
    format!("etcd-server-{host}")
}
pub fn etcd_peer(host: &str) -> String {
    format!("etcd-peer-{host}")
}
pub fn kubelet_client(host: &str) -> String {
    format!("kubelet-client-{host}")
}
pub fn kubelet_serving(host: &str) -> String {
    format!("kubelet-serving-{host}")
}
