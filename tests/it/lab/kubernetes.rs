//! A real Kubernetes on the lab: `rampart apply` with nothing skipped, on
//! upstream binaries, and what the cluster it brings up does.
//!
//! CI machines cannot get Kubernetes binaries, so these tests need
//! `RAMPART_K8S_BIN`: a folder with kube-apiserver, kube-controller-manager,
//! kube-scheduler, kubelet, kube-proxy and kubectl of one supported minor
//! version. Without it they say so and pass (also in CI); with it they need a
//! lab in kubelet mode (`TH_KUBELET=1`, which `tests/run.sh` brings up when
//! the variable is set). See docs/lab.md, "A real Kubernetes".

use std::path::{Path, PathBuf};
use std::process::Output;

use rampart::pki::issue::{Policy, Signer};

use super::oci::{Image, Registry};
use std::sync::MutexGuard;

use super::{assert_success, lock, main_lab, Cluster, InventorySpec, Lab};

pub(super) const K: &str = "kubectl --kubeconfig /etc/kubernetes/admin.conf";
const BINARIES: [&str; 6] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];

/// The binaries folder, or None (and a line saying why) to skip.
pub(super) fn k8s_bin() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("RAMPART_K8S_BIN").filter(|v| !v.is_empty()) else {
        eprintln!(
            "lab Kubernetes tests skipped: RAMPART_K8S_BIN not set (a folder with {})",
            BINARIES.join(", ")
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    for b in BINARIES {
        assert!(
            dir.join(b).is_file(),
            "RAMPART_K8S_BIN={} has no {b}",
            dir.display()
        );
    }
    Some(dir)
}

/// `major.minor` of the binaries, from `kubectl version --client`.
fn minor_version(bin: &Path) -> String {
    let out = std::process::Command::new(bin.join("kubectl"))
        .args(["version", "--client"])
        .output()
        .expect("kubectl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .unwrap_or_else(|| panic!("kubectl printed no version: {text}"));
    v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Puts every host back to the image's state, pods and runtime included:
/// the node services stop, every container with them, and containerd's
/// config and network state go (its image store stays).
pub(super) fn reset(lab: &Lab) {
    for i in 0..lab.hosts.len() {
        lab.ssh_ok(
            i,
            "systemctl stop kubelet kube-proxy >/dev/null 2>&1 || true; \
             systemctl stop kubepods.slice >/dev/null 2>&1 || true; \
             systemctl kill -s KILL containerd >/dev/null 2>&1 || true; \
             systemctl disable --now containerd >/dev/null 2>&1 || true; \
             rm -rf /etc/containerd/config.toml /etc/containerd/cni-bridge.conflist.tmpl /etc/containerd/certs.d \
                    /etc/cni/net.d /var/lib/cni; \
             ip link del cni0 >/dev/null 2>&1 || true",
        );
    }
    super::apply::reset(lab);
}

/// Whether this machine (and so a lab host) may lower OOM scores: lab hosts
/// get CAP_SYS_RESOURCE only when the machine has it.
fn can_lower_oom_scores() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    bounding & (1 << 24) != 0
}

/// Imports the pod sandbox image on every node, writes the inventory (the
/// binaries' version, dual-stack ranges with IPv4 first, `extra` YAML
/// appended), inits and runs the first `rampart apply` with nothing
/// skipped: exit 0, the admins' binding bootstrapped, every node Ready, the
/// super-admin credential on no host's disk.
pub(super) fn up(lab: &Lab, bin: &Path, extra: &str) -> Cluster {
    let busybox = lab.hosts[0].root.join("bin/busybox");
    let pause = Image::build(
        "rampart.lab/pause:1",
        &busybox,
        &["sleep"],
        &["/bin/sleep", "2147483647"],
    );
    for (i, h) in lab.hosts.iter().enumerate() {
        pause.layout_tar(&h.root.join("root/pause.oci.tar"));
        lab.ssh_ok(
            i,
            "systemctl start containerd && ctr -n k8s.io images import /root/pause.oci.tar >/dev/null && rm /root/pause.oci.tar && systemctl stop containerd",
        );
    }
    let spec = InventorySpec {
        kubernetes_version: Some(minor_version(bin)),
        extra: format!(
            "binaries:\n  artifacts: {}\nruntime:\n  sandboxImage: rampart.lab/pause:1\n  restrictOomScoreAdj: {}\n{extra}",
            bin.display(),
            !can_lower_oom_scores()
        ),
        // Dual-stack, IPv4 first: the hosts keep their one IPv4 address.
        ranges: Some((
            "10.96.0.0/12,fd00:96::/108".into(),
            "10.244.0.0/16,fd00:10:244::/56".into(),
        )),
        ..Default::default()
    };
    let c = Cluster::init(&lab.inventory(&spec));
    let inv = c.inventory.to_str().unwrap().to_string();
    let out = c.run(&["apply", "-i", &inv]);
    assert_success(&out, "first apply with nothing skipped");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("kubeadm:cluster-admins bound with the super-admin credential"),
        "{log}"
    );
    for h in &lab.hosts {
        assert!(log.contains(&format!("{}: node Ready", h.name)), "{log}");
    }
    for (i, _) in lab.hosts.iter().enumerate() {
        let found = lab.ssh_ok(
            i,
            "grep -rl kubernetes-super-admin /etc /var/lib /root /tmp 2>/dev/null | head -n1",
        );
        assert_eq!(found, "", "{}", lab.hosts[i].name);
    }
    assert_eq!(ready_nodes(lab), 4);
    c
}

/// How many nodes the API lists as Ready.
pub(super) fn ready_nodes(lab: &Lab) -> usize {
    let nodes = lab.ssh_ok(0, &format!("{K} get nodes --no-headers"));
    eprintln!("{nodes}");
    count_ready(&nodes)
}

/// The nodes `kubectl get nodes --no-headers` lists as Ready.
pub(super) fn count_ready(listing: &str) -> usize {
    listing
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
        .count()
}

/// Writes a tenant user's kubeconfig (`rampart users kubeconfig`) to
/// `/root/<file>` on the first host.
pub(super) fn user_kubeconfig(lab: &Lab, c: &Cluster, user: &str, file: &str) {
    let dest = lab.hosts[0].root.join("root").join(file);
    let out = c.run(&[
        "users",
        "kubeconfig",
        user,
        "-i",
        c.inventory.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
    ]);
    assert_success(&out, "users kubeconfig");
}

/// The binaries and the main lab in kubelet mode, locked for this test and
/// reset; None (having said why) to skip.
pub(super) fn kubernetes_lab() -> Option<(PathBuf, Lab, MutexGuard<'static, ()>)> {
    let bin = k8s_bin()?;
    let lab = main_lab()?;
    assert!(
        lab.kubelet,
        "RAMPART_K8S_BIN is set but the lab is not in kubelet mode: bring it up with TH_KUBELET=1 (tests/run.sh does)"
    );
    let guard = lock();
    reset(&lab);
    Some((bin, lab, guard))
}

/// A pod the `restricted` Pod Security level admits.
fn restricted_pod(name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: team-a, labels: {{app: {name}}}}}
spec:
  securityContext: {{runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
    - name: web
      image: {image}
      command: ["/bin/sh", "-c", "echo hello from rampart; exec httpd -f -p 8080"]
      securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
      resources: {{limits: {{cpu: 100m, memory: 32Mi}}, requests: {{cpu: 10m, memory: 16Mi}}}}
"#
    )
}

/// The pod `web` has an address of each family, a `RequireDualStack` Service
/// gets a ClusterIP of each, and both reach the pod: its addresses from its
/// node (the bridge CNI does not route between nodes), the Service's from
/// the pod itself (pods are Services' clients; a lab host has no default
/// route, so its own packets to a ClusterIP never reach kube-proxy's rules).
fn dual_stack_serves_both_families(lab: &Lab) {
    let get = |what: &str, path: &str| {
        lab.ssh_ok(0, &format!("{K} -n team-a get {what} -o jsonpath='{path}'"))
    };
    // An IPv4 address in the first range, then an IPv6 one in the second.
    let pair = |what: &str, path: &str, v4: &str, v6: &str| -> Vec<String> {
        let ips: Vec<String> = get(what, path)
            .split_whitespace()
            .map(String::from)
            .collect();
        assert!(
            ips.len() == 2 && ips[0].starts_with(v4) && ips[1].starts_with(v6),
            "{what}: {ips:?}"
        );
        ips
    };
    let pod_ips = pair(
        "pod/web",
        "{.status.podIPs[*].ip}",
        "10.244.",
        "fd00:10:244:",
    );
    std::fs::write(
        lab.hosts[0].root.join("root/web-svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: team-a}\n\
         spec:\n  ipFamilyPolicy: RequireDualStack\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    lab.ssh_ok(0, &format!("{K} apply -f /root/web-svc.yaml"));
    let service_ips = pair("service/web", "{.spec.clusterIPs[*]}", "10.", "fd00:96::");
    let node_name = get("pod/web", "{.spec.nodeName}");
    let node = lab.hosts.iter().position(|h| h.name == node_name).unwrap();
    // busybox httpd answers 404 for `/` (no index): any HTTP status is an answer.
    let from_node =
        |url: &str| format!("curl -g -s -m 3 -o /dev/null -w 'HTTP/1.1 %{{http_code}}' {url}");
    // No `wget -T`: Debian's static busybox 1.35 dies of SIGSEGV with it
    // (exit 139); the host's `timeout` bounds the try instead.
    let from_pod =
        |url: &str| format!("timeout 5 {K} -n team-a exec web -- wget -O /dev/null {url}");
    let tries = [
        (node, from_node(&format!("http://{}:8080/", pod_ips[0]))),
        (node, from_node(&format!("http://[{}]:8080/", pod_ips[1]))),
        (0, from_pod(&format!("http://{}:80/", service_ips[0]))),
        (0, from_pod(&format!("http://[{}]:80/", service_ips[1]))),
    ];
    for (host, command) in tries {
        // kube-proxy programs a new Service within its sync period.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = lab.ssh(host, &command);
            if text(&out).contains("HTTP/1.1 404") {
                eprintln!("answered: {command}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer: {command}: {}",
                text(&out)
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// A kubelet renews its own client certificate (`rotateCertificates`):
/// given one signed by the cluster CA for a day, with 3 minutes left (past
/// the 70–90 % of its lifetime at which a kubelet renews), the worker's
/// kubelet asks for a new one with a CSR, which the controller-manager
/// approves (`selfnodeclient`) and signs, and uses that.
fn kubelet_renews_its_client_certificate(lab: &Lab, c: &Cluster) {
    let (inv, pki) = c.pki();
    let worker = &lab.hosts[3].name;
    let spec = rampart::pki::catalogue(&inv)
        .into_iter()
        .find(|s| s.name == format!("kubelet-client-{worker}"))
        .unwrap();
    let signer = Signer::new("ca", pki.get("ca")).unwrap();
    let policy = Policy {
        key_algorithm: inv.security.key_algorithm,
        ca_validity_days: 1,
        leaf_validity_days: 1,
        now: time::OffsetDateTime::now_utc() - time::Duration::days(1) + time::Duration::minutes(3),
    };
    let short = signer.sign(&spec, &policy).unwrap();
    let store = lab.hosts[3].root.join("var/lib/kubelet/pki");
    std::fs::write(
        store.join("kubelet-client-2000-01-01-00-00-00.pem"),
        format!("{}{}", short.cert_pem, short.key_pem.expose_str()),
    )
    .unwrap();
    lab.ssh_ok(
        3,
        "cd /var/lib/kubelet/pki && chmod 600 kubelet-client-2000-01-01-00-00-00.pem && \
         ln -sfn kubelet-client-2000-01-01-00-00-00.pem kubelet-client-current.pem && systemctl restart kubelet",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let csrs = lab.ssh_ok(0, &format!("{K} get csr --no-headers"));
        let current = lab.ssh_ok(3, "cat /var/lib/kubelet/pki/kubelet-client-current.pem");
        let renewed = !current.contains(short.cert_pem.trim())
            && lab
                .ssh(3, "openssl x509 -checkend 2592000 -noout -in /var/lib/kubelet/pki/kubelet-client-current.pem")
                .status
                .success();
        if renewed {
            let line = csrs
                .lines()
                .find(|l| l.contains(&format!("system:node:{worker}")))
                .unwrap_or_else(|| panic!("no CSR from {worker}: {csrs}"));
            assert!(line.contains("Approved,Issued"), "{line}");
            eprintln!("kubelet on {worker} renewed: {line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet on {worker} did not renew: {csrs}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    lab.ssh_ok(
        0,
        &format!("{K} wait --for=condition=Ready node/{worker} --timeout=60s"),
    );
}

/// Every unit's ActiveEnterTimestamp on every host: unchanged means nothing restarted.
fn started_at(lab: &Lab) -> Vec<String> {
    (0..lab.hosts.len())
        .map(|i| {
            lab.ssh_ok(
                i,
                "systemctl show -p Id,ActiveEnterTimestamp etcd kube-apiserver kube-controller-manager \
                 kube-scheduler containerd kubelet kube-proxy rampart-backup.timer",
            )
        })
        .collect()
}

/// The whole first run of an admin, then what the cluster must do and refuse.
#[test]
fn lab_kubernetes_apply_brings_up_a_hardened_cluster_that_restores_through_every_apiserver() {
    let Some((bin, lab, _guard)) = kubernetes_lab() else {
        return;
    };

    // Images: the pod sandbox, imported on every node (never pulled), and a
    // workload served by a registry on the lab network (AlwaysPullImages
    // makes every pod pull).
    let busybox = lab.hosts[0].root.join("bin/busybox");
    let registry_addr = format!("{}:5000", lab.operator_ip);
    let web_ref = format!("{registry_addr}/rampart-lab/busybox:1");
    let web = Image::build(
        &web_ref,
        &busybox,
        &["sh", "httpd", "cat", "echo", "id", "wget"],
        &["/bin/sh"],
    );
    let registry = Registry::serve(&registry_addr, vec![web]);
    let registry_dir = format!("etc/containerd/certs.d/{registry_addr}/hosts.toml");
    for h in &lab.hosts {
        let hosts_toml = h.root.join(&registry_dir);
        std::fs::create_dir_all(hosts_toml.parent().unwrap()).unwrap();
        std::fs::write(
            &hosts_toml,
            format!("server = \"http://{registry_addr}\"\n\n[host.\"http://{registry_addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
    }
    let backup_key = tempfile::tempdir().unwrap();
    let identity = backup_key.path().join("backup.txt");
    let keygen = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap();
    assert_success(&keygen, "age-keygen");
    let recipient = String::from_utf8_lossy(&keygen.stderr)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let c = up(
        &lab,
        &bin,
        &format!(
            "tenants:\n  - namespace: team-a\n    members:\n      - {{user: alice@example.com, role: edit}}\n      - {{user: bob@example.com, role: view}}\n\
             backups:\n  recipients: [{recipient}]\n"
        ),
    );
    let inv = c.inventory.to_str().unwrap().to_string();

    // A restricted pod of a tenant runs from the registry's image.
    let pod = lab.hosts[0].root.join("root/web.yaml");
    std::fs::write(&pod, restricted_pod("web", &web_ref)).unwrap();
    lab.ssh_ok(0, &format!("{K} apply -f /root/web.yaml"));
    lab.ssh_ok(
        0,
        &format!("{K} -n team-a wait --for=condition=Ready pod/web --timeout=120s"),
    );
    assert!(registry.pulls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // logs and exec go apiserver -> kubelet, which the apiserver verifies
    // (--kubelet-certificate-authority) and the kubelet authorises (webhook).
    let logs = lab.ssh_ok(0, &format!("{K} -n team-a logs web"));
    assert!(logs.contains("hello from rampart"), "{logs}");
    let id = lab.ssh_ok(0, &format!("{K} -n team-a exec web -- id -u"));
    assert_eq!(id, "65534");
    dual_stack_serves_both_families(&lab);

    // The kubelet: anonymous requests refused, no read-only port.
    let worker = &lab.hosts[3].cluster_ip;
    let code = lab.ssh_ok(
        0,
        &format!("curl -sk -o /dev/null -w '%{{http_code}}' https://{worker}:10250/pods"),
    );
    assert_eq!(code, "401");
    let ro = lab.ssh(0, &format!("curl -s -m 3 http://{worker}:10255/pods"));
    assert_eq!(
        ro.status.code(),
        Some(7),
        "10255 must be closed: {}",
        text(&ro)
    );

    // NodeRestriction: a kubelet may not change another node (the worker's
    // own credential, used with a control plane's kubectl).
    std::fs::copy(
        lab.hosts[3].root.join("etc/kubernetes/kubelet.conf"),
        lab.hosts[0].root.join("root/worker-kubelet.conf"),
    )
    .unwrap();
    let other = lab.ssh(
        0,
        &format!(
            "kubectl --kubeconfig /root/worker-kubelet.conf label node {} rampart-test=1",
            lab.hosts[0].name
        ),
    );
    let own = lab.ssh(
        0,
        &format!(
            "kubectl --kubeconfig /root/worker-kubelet.conf get node {} -o name",
            lab.hosts[3].name
        ),
    );
    assert_success(&own, "a kubelet reads its own node");
    lab.ssh_ok(0, "rm /root/worker-kubelet.conf");
    assert!(!other.status.success());
    assert!(
        text(&other).contains("Forbidden") || text(&other).contains("forbidden"),
        "{}",
        text(&other)
    );

    // Tenant users can do exactly what their role allows.
    user_kubeconfig(&lab, &c, "alice@example.com", "alice.conf");
    user_kubeconfig(&lab, &c, "bob@example.com", "bob.conf");
    let can = |conf: &str, what: &str| {
        lab.ssh(
            0,
            &format!("kubectl --kubeconfig /root/{conf} auth can-i {what}"),
        )
        .status
        .success()
    };
    assert!(can("alice.conf", "create deployments -n team-a"));
    assert!(can("alice.conf", "create configmaps -n team-a"));
    assert!(!can("alice.conf", "create configmaps -n default"));
    assert!(!can("alice.conf", "get secrets -n kube-system"));
    assert!(!can("alice.conf", "create rolebindings -n team-a"));
    assert!(can("bob.conf", "list pods -n team-a"));
    assert!(!can("bob.conf", "create pods -n team-a"));
    assert!(!can("bob.conf", "get secrets -n team-a"));
    lab.ssh_ok(0, "kubectl --kubeconfig /root/alice.conf -n team-a create configmap by-alice --from-literal=a=1");
    let denied = lab.ssh(
        0,
        "kubectl --kubeconfig /root/alice.conf -n default create configmap by-alice --from-literal=a=1",
    );
    assert!(
        !denied.status.success() && text(&denied).contains("forbidden"),
        "{}",
        text(&denied)
    );

    // A privileged pod is refused at admission.
    let privileged = restricted_pod("root", &web_ref).replace(
        "allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}",
        "privileged: true",
    );
    std::fs::write(lab.hosts[0].root.join("root/privileged.yaml"), privileged).unwrap();
    let refused = lab.ssh(0, &format!("{K} apply -f /root/privileged.yaml"));
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("violates PodSecurity"),
        "{}",
        text(&refused)
    );

    // A re-apply changes and restarts nothing.
    let before = started_at(&lab);
    let again = c.run(&["apply", "-i", &inv]);
    assert_success(&again, "second apply");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("apply done: 0 of 4 hosts changed"),
        "{}",
        text(&again)
    );
    assert_eq!(
        started_at(&lab),
        before,
        "a no-op apply restarted something"
    );

    kubelet_renews_its_client_certificate(&lab, &c);

    // Restore on the live control plane: afterwards every apiserver serves
    // the restored state, not what it had cached before.
    lab.ssh_ok(
        0,
        &format!("{K} -n default create configmap before-backup --from-literal=a=1"),
    );
    assert_success(&c.run(&["backup", "now", "-i", &inv]), "backup now");
    lab.ssh_ok(
        0,
        &format!("{K} -n default delete configmap before-backup && {K} -n default create configmap after-backup --from-literal=b=2"),
    );
    let pulled = c.dir.path().join("pulled");
    let out = c.run(&[
        "backup",
        "pull",
        "-i",
        &inv,
        "--latest",
        "--to",
        pulled.to_str().unwrap(),
    ]);
    assert_success(&out, "backup pull");
    let file = std::fs::read_dir(pulled.join(&lab.hosts[0].name))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".db.age"))
        .unwrap();
    let out = c.run(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
        "-i",
        &inv,
        "--yes",
    ]);
    assert_success(&out, "backup restore on a live control plane");
    for (i, h) in lab.hosts[..3].iter().enumerate() {
        let names = lab.ssh_ok(
            i,
            &format!(
                "{K} --server https://{}:6443 -n default get configmaps -o name",
                h.cluster_ip
            ),
        );
        assert!(
            names.contains("configmap/before-backup"),
            "{}: {names}",
            h.name
        );
        assert!(
            !names.contains("configmap/after-backup"),
            "{}: {names}",
            h.name
        );
    }
    assert_eq!(ready_nodes(&lab), 4, "after the restore");
    drop(registry);
    reset(&lab);
}
