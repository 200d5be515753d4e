//! Health gates shared by every command that starts services: each polls on
//! the host itself (one round trip, not one per probe) until the service
//! answers, and reports `cp1: etcd healthy (3/3)` or `cp1: kube-apiserver
//! healthy`. apply gates its (re)starts on them; restore its starts.

use crate::engine::{Env, Reachable, StepError};
use crate::inventory::{Host, Inventory};
use crate::remote::script::{self, quote};
use crate::remote::Input;
use crate::render::Service;

pub(crate) const ETCD_HEALTH_SECS: u32 = 120;
const APISERVER_HEALTH_SECS: u32 = 180;
pub(crate) const COMPONENT_HEALTH_SECS: u32 = 60;
const PKI: &str = "/etc/kubernetes/pki";

/// In start order.
pub(crate) const CONTROL_PLANE: [Service; 3] = [
    Service::KubeApiserver,
    Service::KubeControllerManager,
    Service::KubeScheduler,
];

/// Waits until every member answers `endpoint health` over mTLS with the
/// healthcheck client certificate; reports `cp1: etcd healthy (3/3)`.
pub(crate) async fn etcd_healthy<T: Reachable + ?Sized>(
    env: &Env<'_>,
    t: &T,
) -> Result<(), StepError> {
    let cmd = etcd_health_cmd(env.inv, t.host());
    let out = poll(env, t, "etcd health", &cmd, ETCD_HEALTH_SECS).await?;
    let healthy = out.lines().filter(|l| l.contains("is healthy")).count();
    let members = env.inv.etcd_members().count();
    env.reporter.line(
        t.host_name(),
        &format!("etcd healthy ({healthy}/{members})"),
    );
    Ok(())
}

/// `etcdctl endpoint health --cluster` against the local member.
pub fn etcd_health_cmd(inv: &Inventory, host: &Host) -> String {
    let members = inv.etcd_members().count();
    // `--cluster` asks every member that has joined; a member still joining
    // is not listed yet, so the exit status alone could pass at 2 of 3.
    format!(
        "{{ o=$({} endpoint health --cluster 2>&1); s=$?; printf '%s\\n' \"$o\"; [ $s -eq 0 ] && [ \"$(printf '%s\\n' \"$o\" | grep -c 'is healthy')\" -ge {members} ]; }}",
        script::member_etcdctl(&inv.binaries.etcd_dir, script::etcd_loopback(host.address), 5)
    )
}

/// Polls `cmd` on the host until it succeeds; its last output is the error.
pub(crate) async fn poll<T: Reachable + ?Sized>(
    env: &Env<'_>,
    t: &T,
    what: &str,
    cmd: &str,
    seconds: u32,
) -> Result<String, StepError> {
    if env.cancel.is_cancelled() {
        return Err(StepError::Cancelled { step: what.into() });
    }
    env.reporter
        .step(t.host_name(), &format!("wait for {what}"));
    let out = t
        .remote()
        .run(&script::poll(cmd, seconds), Input::None)
        .await?;
    if out.success() {
        Ok(out.stdout_text())
    } else {
        Err(StepError::Unhealthy {
            what: what.into(),
            seconds,
            output: out.stderr_tail(),
        })
    }
}

/// The health gate of one control-plane service (apiserver `/readyz`,
/// controller-manager and scheduler `/healthz`); reports `cp1: kube-apiserver healthy`.
pub(crate) async fn control_plane_healthy<T: Reachable + ?Sized>(
    env: &Env<'_>,
    t: &T,
    svc: Service,
) -> Result<(), StepError> {
    let (what, cmd, secs) = match svc {
        Service::KubeApiserver => (
            "apiserver /readyz",
            apiserver_ready_cmd(env.inv, t.host()),
            APISERVER_HEALTH_SECS,
        ),
        Service::KubeControllerManager => (
            "controller-manager /healthz",
            local_healthz(10257, true),
            COMPONENT_HEALTH_SECS,
        ),
        _ => (
            "scheduler /healthz",
            local_healthz(10259, true),
            COMPONENT_HEALTH_SECS,
        ),
    };
    poll(env, t, what, &cmd, secs).await?;
    env.reporter.line(t.host_name(), &format!("{svc} healthy"));
    Ok(())
}

/// An authenticated `/readyz` (anonymous auth is off): the apiserver's own
/// kubelet-client certificate, verified against the cluster CA.
pub fn apiserver_ready_cmd(inv: &Inventory, host: &Host) -> String {
    let url = crate::render::https_url(host.address, crate::render::secure_port(inv, host));
    format!(
        "curl -sSf --max-time 5 --cacert {PKI}/ca.crt --cert {PKI}/apiserver-kubelet-client.crt --key {PKI}/apiserver-kubelet-client.key {}",
        quote(&format!("{url}/readyz"))
    )
}

/// Components' `/healthz` on loopback (always-allowed paths, no client cert).
pub(crate) fn local_healthz(port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    // -k: these serve self-signed certificates on 127.0.0.1 only.
    let insecure = if tls { "-k " } else { "" };
    format!("curl -sSf --max-time 5 {insecure}{scheme}://127.0.0.1:{port}/healthz")
}
