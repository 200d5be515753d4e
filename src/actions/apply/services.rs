//! The phases that (re)start services, each behind a health gate that polls
//! on the host itself (one round trip, not one per probe).
//!
//! Order: etcd members, then the control plane one host at a time, then the
//! cluster manifests (RBAC, policies) once, then kubelets and kube-proxies.
//! Only services whose plan says `Restart` or `Start` are touched, so a
//! no-op apply restarts nothing.

use crate::inventory::{Host, Inventory};
use crate::plan::{ServiceAction, ADDONS_DIR, ADDONS_STAMP, CLUSTER_ADMINS_ADDON};
use crate::remote::script::{self, quote};
use crate::remote::{BoxFuture, Input};
use crate::render::Service;

use super::{for_each, ApplyRun, Ctx, PlannedHost};
use crate::actions::gates::{
    control_plane_healthy, etcd_healthy, local_healthz, poll, COMPONENT_HEALTH_SECS, CONTROL_PLANE,
    ETCD_HEALTH_SECS,
};
use crate::engine::{step, Env, Phase, PhaseError, StepError};

/// A new node registers, gets its pod CIDR, writes its network config and
/// reports Ready within seconds; a minute more covers a slow image pull of the
/// sandbox image.
const NODE_READY_SECS: u32 = 120;

/// `start-etcd`: a new cluster's members start together (each waits for a
/// quorum); a running cluster's members restart one at a time, each gated
/// on the health of the whole cluster, so quorum is never lost.
pub struct StartEtcd;

/// `start-control-plane`: apiserver, controller-manager, scheduler, one
/// host at a time, each behind its health gate.
pub struct StartControlPlane;

/// `apply-manifests`: RBAC, tenants' quotas, limit ranges and default-deny
/// policies, applied once through the first control-plane host.
///
/// admin.conf's group gets its power from a ClusterRoleBinding that admin.conf
/// cannot create itself. When admin.conf cannot do everything yet (a new
/// cluster, or the binding was deleted), that one binding is applied with
/// `bootstrap`, the super-admin kubeconfig (system:masters) from the state
/// dir: it reaches the host only on kubectl's stdin and is never written there.
pub struct ApplyManifests;

/// `start-nodes`: containerd, kubelets and kube-proxies, in parallel; then
/// each node this run started must report Ready through the API.
pub struct StartNodes;

/// `start-backups`: the backup timer on etcd members, once etcd is healthy.
/// A restart re-reads the schedule; the job itself runs when the timer fires.
pub struct StartBackups;

impl Phase<ApplyRun<'_>> for StartBackups {
    fn name(&self) -> &'static str {
        "start-backups"
    }
    fn title(&self) -> &'static str {
        "start the backup timers"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_service(&s.targets, &[Service::Backups]).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            for_each(
            ctx,
            self.name(),
            with_service(ctx.targets, &[Service::Backups]),
            move |t| {
                Box::pin(async move {
                    restart(ctx, t, Service::Backups).await?;
                    let unit = Service::Backups.unit();
                    let out = step(
                        ctx,
                        t,
                        "timer schedule",
                        &format!(
                            "set -eu\nsystemctl is-active --quiet {unit}\nsystemctl show {unit} -p NextElapseUSecRealtime --value\n"
                        ),
                        Input::None,
                    )
                    .await?;
                    let next = out.stdout_text();
                    ctx.reporter.line(
                        &t.host.name,
                        &format!("backups scheduled, next run {}", next.trim()),
                    );
                    Ok(())
                })
            },
        ).await
        })
    }
}

/// `start-scan`: the hourly host scan's timer on every host (see
/// `render::scan`), last, once everything it checks is running.
pub struct StartScan;

impl Phase<ApplyRun<'_>> for StartScan {
    fn name(&self) -> &'static str {
        "start-scan"
    }
    fn title(&self) -> &'static str {
        "start the host scan timers"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_service(&s.targets, &[Service::Scan]).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            let targets = with_service(ctx.targets, &[Service::Scan]);
            for_each(ctx, self.name(), targets, move |t| {
                Box::pin(restart(ctx, t, Service::Scan))
            })
            .await
        })
    }
}

fn action(t: &PlannedHost, svc: Service) -> Option<&ServiceAction> {
    t.plan.services.get(&svc)
}

fn with_service<'a>(targets: &'a [PlannedHost], svcs: &[Service]) -> Vec<&'a PlannedHost> {
    targets
        .iter()
        .filter(|t| svcs.iter().any(|s| action(t, *s).is_some()))
        .collect()
}

impl Phase<ApplyRun<'_>> for StartEtcd {
    fn name(&self) -> &'static str {
        "start-etcd"
    }
    fn title(&self) -> &'static str {
        "start etcd"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_service(&s.targets, &[Service::Etcd]).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            let members = with_service(ctx.targets, &[Service::Etcd]);
            // A cluster of ours runs when a member rampart installed before
            // is active. Debian's own etcd (single node, started by the
            // package) does not count: its members are started together.
            let running = ctx.targets.iter().any(|t| {
                let ours = t.facts.record.as_ref().is_some_and(|r| {
                    r.files
                        .iter()
                        .any(|p| p == &crate::plan::unit_path(Service::Etcd))
                });
                ours && t
                    .facts
                    .services
                    .get("etcd.service")
                    .is_some_and(|s| s.is_active())
            });
            if !running {
                // No member runs: a new cluster (or a cold start). Each member
                // blocks until it sees a quorum, so all start at once.
                return for_each(ctx, self.name(), members, move |t| {
                    Box::pin(async move {
                        step(
                            ctx,
                            t,
                            "start etcd",
                            &script::systemctl("restart --no-block", &["etcd.service"]),
                            Input::None,
                        )
                        .await?;
                        etcd_healthy(ctx, t).await
                    })
                })
                .await;
            }
            for t in members {
                for_each(ctx, self.name(), vec![t], move |t| {
                Box::pin(async move {
                    // Blocks until the member is ready again (Type=notify),
                    // so the next one restarts only after this one
                    // rejoined; `timeout` bounds it, as etcd's unit has no
                    // start timeout (a large database may take long).
                    let text = format!(
                        "set -eu\ntimeout {ETCD_HEALTH_SECS} systemctl restart etcd.service || echo 'etcd is still starting' >&2\n"
                    );
                    step(ctx, t, "restart etcd", &text, Input::None).await?;
                    etcd_healthy(ctx, t).await
                })
            })
            .await?;
            }
            Ok(())
        })
    }
}

impl Phase<ApplyRun<'_>> for StartControlPlane {
    fn name(&self) -> &'static str {
        "start-control-plane"
    }
    fn title(&self) -> &'static str {
        "start the control plane, one host at a time"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_service(&s.targets, &CONTROL_PLANE).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            for t in with_service(ctx.targets, &CONTROL_PLANE) {
                for_each(ctx, self.name(), vec![t], move |t| {
                    Box::pin(start_control_plane(ctx, t))
                })
                .await?;
            }
            Ok(())
        })
    }
}

async fn start_control_plane(ctx: &Ctx<'_>, t: &PlannedHost) -> Result<(), StepError> {
    for svc in CONTROL_PLANE {
        if action(t, svc).is_none() {
            continue;
        }
        restart(ctx, t, svc).await?;
        control_plane_healthy(ctx, t, svc).await?;
    }
    Ok(())
}

async fn restart(ctx: &Ctx<'_>, t: &PlannedHost, svc: Service) -> Result<(), StepError> {
    let verb = match action(t, svc) {
        Some(ServiceAction::Start) => "start",
        _ => "restart",
    };
    step(
        ctx,
        t,
        &format!("{verb} {svc}"),
        &script::systemctl(verb, &[&svc.unit()]),
        Input::None,
    )
    .await?;
    Ok(())
}

impl Phase<ApplyRun<'_>> for ApplyManifests {
    fn name(&self) -> &'static str {
        "apply-manifests"
    }
    fn title(&self) -> &'static str {
        "apply RBAC and policy manifests"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        usize::from(manifests_target(&s.targets).is_some())
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            let Some(first) = manifests_target(ctx.targets) else {
                return Ok(());
            };
            let Some((stamp, _)) = crate::plan::addons_stamp(&first.desired) else {
                return Ok(());
            };
            for_each(ctx, self.name(), vec![first], move |t| {
                Box::pin(async move {
                    let text = manifests_script(ctx.inv, &t.host);
                    let input = match ctx.bootstrap {
                        Some(conf) => Input::Bytes(conf.expose().to_vec()),
                        None => Input::None,
                    };
                    let out = step(ctx, t, "kubectl apply", &text, input).await?;
                    if out.stdout_text().lines().any(|l| l == "bootstrapped") {
                        ctx.reporter.line(
                        &t.host.name,
                        "kubeadm:cluster-admins bound with the super-admin credential (stdin only)",
                    );
                    }
                    ctx.reporter.line(&t.host.name, "manifests applied");
                    Ok(())
                })
            })
            .await?;
            // Every control plane records what the cluster now holds, so the
            // next plan is a no-op and a run that failed before this point
            // applies the manifests again.
            let pending: Vec<&PlannedHost> = ctx
                .targets
                .iter()
                .filter(|t| t.plan.apply_manifests)
                .collect();
            let stamp = &stamp;
            for_each(ctx, self.name(), pending, move |t| {
                Box::pin(async move {
                    let text = format!(
                        "set -eu\numask 077\nprintf %s {} > \"${{ROOT:-}}\"{ADDONS_STAMP}\n",
                        quote(stamp)
                    );
                    step(ctx, t, "record applied manifests", &text, Input::None).await?;
                    Ok(())
                })
            })
            .await
        })
    }
}

/// Applies the addons with admin.conf; first, when admin.conf may not do
/// everything, the cluster-admins binding with the kubeconfig on stdin (the
/// super-admin's, or nothing: then kubectl fails and says why). `--server`
/// is this host's own apiserver, whose /readyz gate just passed.
pub fn manifests_script(inv: &Inventory, host: &Host) -> String {
    let kubectl = quote(&format!(
        "{}/kubectl",
        inv.binaries.dir.trim_end_matches('/')
    ));
    let server = quote(&crate::render::https_url(
        host.address,
        crate::render::secure_port(inv, host),
    ));
    format!(
        "set -eu\n\
         if ! {kubectl} --kubeconfig /etc/kubernetes/admin.conf auth can-i '*' '*' --all-namespaces >/dev/null 2>&1; then\n\
         \x20 {kubectl} --kubeconfig /dev/stdin --server {server} apply --server-side --force-conflicts -f {CLUSTER_ADMINS_ADDON} >/dev/null\n\
         \x20 echo bootstrapped\n\
         fi\n\
         {kubectl} --kubeconfig /etc/kubernetes/admin.conf apply --server-side --force-conflicts -f {ADDONS_DIR}/ >/dev/null\n"
    )
}

/// The first control-plane host whose plan says its manifests are pending.
fn manifests_target(targets: &[PlannedHost]) -> Option<&PlannedHost> {
    targets
        .iter()
        .filter(|t| t.host.roles.control_plane)
        .find(|t| t.plan.apply_manifests)
}

impl Phase<ApplyRun<'_>> for StartNodes {
    fn name(&self) -> &'static str {
        "start-nodes"
    }
    fn title(&self) -> &'static str {
        "start kubelets and kube-proxies"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_service(&s.targets, &NODE).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            start_nodes(ctx, self.name()).await?;
            nodes_ready(ctx, self.name()).await
        })
    }
}

/// Each node's containerd, kubelet and kube-proxy, nodes in parallel.
async fn start_nodes(ctx: &Ctx<'_>, phase: &'static str) -> Result<(), PhaseError> {
    for_each(ctx, phase, with_service(ctx.targets, &NODE), move |t| {
        Box::pin(async move {
            for svc in NODE {
                if action(t, svc).is_none() {
                    continue;
                }
                restart(ctx, t, svc).await?;
                let (what, cmd) = match svc {
                    // The CRI socket answers once containerd has loaded its config.
                    Service::Containerd => (
                        "containerd",
                        "ctr --address /run/containerd/containerd.sock version >/dev/null"
                            .to_string(),
                    ),
                    Service::Kubelet => ("kubelet /healthz", local_healthz(10248, false)),
                    _ => ("kube-proxy /healthz", local_healthz(10256, false)),
                };
                poll(ctx, t, what, &cmd, COMPONENT_HEALTH_SECS).await?;
                ctx.reporter.line(&t.host.name, &format!("{svc} healthy"));
            }
            Ok(())
        })
    })
    .await
}

/// The nodes whose kubelet this run (re)started must turn Ready, as the API
/// sees them (registered, runtime and network up), asked through the first
/// control plane of the run. A run without one (`--hosts worker1`) cannot
/// ask, and says so.
async fn nodes_ready(ctx: &Ctx<'_>, phase: &'static str) -> Result<(), PhaseError> {
    let started: Vec<&str> = ctx
        .targets
        .iter()
        .filter(|t| action(t, Service::Kubelet).is_some())
        .map(|t| t.host.name.as_str())
        .collect();
    if started.is_empty() {
        return Ok(());
    }
    let Some(cp) = ctx
        .targets
        .iter()
        .find(|t| t.host.roles.control_plane)
        .filter(|_| !ctx.not_starting.contains(&Service::KubeApiserver))
    else {
        for name in &started {
            ctx.reporter.line(
                name,
                "kubelet started; readiness not checked (no control plane in this run)",
            );
        }
        return Ok(());
    };
    for_each(ctx, phase, vec![cp], move |t| {
        let started = started.clone();
        Box::pin(async move {
            let kubectl = format!("{}/kubectl", ctx.inv.binaries.dir.trim_end_matches('/'));
            let cmd = nodes_ready_cmd(&kubectl, &started);
            poll(ctx, t, "nodes Ready", &cmd, NODE_READY_SECS).await?;
            for name in &started {
                ctx.reporter.line(name, "node Ready");
            }
            Ok(())
        })
    })
    .await
}

/// Succeeds when every node in `names` has condition Ready=True; otherwise
/// prints, per node, the Ready condition's message (or that it has not
/// registered) and fails.
pub fn nodes_ready_cmd(kubectl: &str, names: &[&str]) -> String {
    const CHECK: &str = r#"{ out=$(KUBECTL --kubeconfig /etc/kubernetes/admin.conf get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.status.conditions[?(@.type=="Ready")].status}{"\t"}{.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}' 2>&1) || { printf '%s\n' "$out"; false; }; ok=1; for n in NAMES; do l=$(printf '%s\n' "$out" | awk -F '\t' -v n="$n" '$1 == n'); if [ -z "$l" ]; then ok=0; echo "$n: not registered"; elif [ "$(printf '%s' "$l" | cut -f2)" != True ]; then ok=0; echo "$n: not Ready: $(printf '%s' "$l" | cut -f3-)"; fi; done; [ $ok = 1 ]; }"#;
    let names: Vec<String> = names.iter().map(|n| quote(n)).collect();
    CHECK
        .replace("KUBECTL", &quote(kubectl))
        .replace("NAMES", &names.join(" "))
}

const NODE: [Service; 3] = [Service::Containerd, Service::Kubelet, Service::KubeProxy];

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the readiness check against a stand-in kubectl printing what
    /// `kubectl get nodes -o jsonpath=…` prints.
    #[test]
    fn nodes_ready_names_each_node_that_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let kubectl = dir.path().join("kubectl");
        let run = |listing: &str| {
            std::fs::write(&kubectl, format!("#!/bin/sh\nprintf '{listing}'\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
            let cmd = nodes_ready_cmd(kubectl.to_str().unwrap(), &["cp1", "worker1"]);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        assert_eq!(
            run("cp1\\tTrue\\tkubelet is posting ready status\\nworker1\\tTrue\\tok\\n"),
            (true, String::new())
        );
        let (ok, text) =
            run("cp1\\tTrue\\tready\\nworker1\\tFalse\\tcontainer runtime network not ready\\n");
        assert!(!ok);
        assert_eq!(
            text,
            "worker1: not Ready: container runtime network not ready\n"
        );
        let (ok, text) = run("cp1\\tTrue\\tready\\n");
        assert!(!ok);
        assert_eq!(text, "worker1: not registered\n");
    }
}
