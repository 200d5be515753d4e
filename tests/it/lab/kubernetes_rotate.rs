//! The rotations on a real Kubernetes (`RAMPART_K8S_BIN`, kubelet mode; see
//! `kubernetes.rs`): an encryption-key rotation over 10,000 Secrets killed
//! mid-rewrite and resumed, a kubernetes CA rotation with every node Ready
//! throughout, and a service-account key rotation whose overlap keeps the
//! old tokens working. Figures (times, memory) go to stderr for
//! docs/performance.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::kubernetes::{count_ready, kubernetes_lab, ready_nodes, reset, up, user_kubeconfig, K};
use super::{assert_success, Cluster, Lab};

const SECRETS: usize = 10_000;

/// `count` Secrets in namespace `load`, created in 10 parallel streams.
fn create_secrets(lab: &Lab, count: usize) {
    lab.ssh_ok(0, &format!("{K} create namespace load"));
    let per = count / 10;
    let script = format!(
        "for f in 0 1 2 3 4 5 6 7 8 9; do\n\
         \x20 {{ echo 'apiVersion: v1'; echo 'kind: List'; echo 'items:'\n\
         \x20   i=0; while [ $i -lt {per} ]; do\n\
         \x20     echo \"- {{apiVersion: v1, kind: Secret, metadata: {{name: s$f-$i, namespace: load}}, stringData: {{v: value-$f-$i}}}}\"\n\
         \x20     i=$((i+1)); done; }} > /root/secrets-$f.yaml\n\
         done\n\
         seq 0 9 | xargs -P 10 -I@ sh -c '{K} create -f /root/secrets-@.yaml >/dev/null' && rm /root/secrets-*.yaml\n"
    );
    lab.ssh_ok(0, &script);
}

/// Values per encryption key (and plain Secrets), from a dry-run plan.
fn etcd_counts(c: &Cluster) -> serde_json::Value {
    let inv = c.inventory.to_str().unwrap();
    let out = c.run(&[
        "rotate",
        "encryption-key",
        "-i",
        inv,
        "--dry-run",
        "--output",
        "json",
    ]);
    assert_success(&out, "rotate encryption-key --dry-run");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["etcd"].clone()
}

/// The one saved plan id under `<state>/<dir>`.
fn only_run(c: &Cluster, dir: &str) -> String {
    let ids: Vec<String> = std::fs::read_dir(c.state_dir.join(dir))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.trim_end_matches(".json").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// Peak resident memory (VmHWM, kB) of the running kube-apiserver on host `i`.
fn apiserver_peak_kb(lab: &Lab, i: usize) -> u64 {
    lab.ssh_ok(
        i,
        "awk '/VmHWM/ {print $2}' /proc/$(systemctl show -p MainPID --value kube-apiserver)/status",
    )
    .parse()
    .unwrap()
}

/// Polls the nodes from the second control plane every second while `body`
/// runs and counts the answers that listed fewer than 4 nodes Ready (an
/// apiserver that is restarting gives no answer, which is not counted).
fn nodes_stay_ready<T>(lab: &Lab, body: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    let (polls, short) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let out = lab.ssh(1, &format!("{K} get nodes --no-headers"));
                if out.status.success() {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let ready = count_ready(&text);
                    polls.fetch_add(1, Ordering::SeqCst);
                    if ready < 4 {
                        eprintln!("fewer nodes Ready:\n{text}");
                        short.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let result = body();
        stop.store(true, Ordering::SeqCst);
        result
    });
    let polls = polls.load(Ordering::SeqCst);
    eprintln!("nodes polled {polls} times");
    assert!(polls > 10, "too few answers to judge: {polls}");
    assert_eq!(short.load(Ordering::SeqCst), 0, "a node was not Ready");
    result
}

/// The controller-manager and scheduler answer healthy on every control
/// plane, and a new namespace gets its service account and the cluster's
/// CA bundle (`kube-root-ca.crt`) from the controller-manager.
fn control_plane_healthy(lab: &Lab, namespace: &str) -> String {
    for i in 0..3 {
        for port in [10257, 10259] {
            let ok = lab.ssh_ok(i, &format!("curl -sk https://127.0.0.1:{port}/healthz"));
            assert_eq!(ok, "ok", "{}: port {port}", lab.hosts[i].name);
        }
    }
    lab.ssh_ok(0, &format!("{K} create namespace {namespace}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sa = lab.ssh(0, &format!("{K} -n {namespace} get serviceaccount default"));
        let ca = lab.ssh(
            0,
            &format!("{K} -n {namespace} get configmap kube-root-ca.crt -o jsonpath='{{.data.ca\\.crt}}'"),
        );
        if sa.status.success() && ca.status.success() {
            return String::from_utf8_lossy(&ca.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no service account in {namespace}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `program` (rampart, or a wrapper given rampart's path) with this
/// cluster's environment and none of the test's `RAMPART_*` variables.
fn command(c: &Cluster, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("RAMPART_K8S_BIN")
        .env_remove("RAMPART_LAB")
        .envs(c.env())
        .stdin(Stdio::null());
    cmd
}

/// `rampart rotate encryption-key`, SIGKILLed once its first trip of
/// batches is rewritten; returns the lines it printed.
fn rotate_killed_mid_rewrite(c: &Cluster) -> Vec<String> {
    let mut child = command(c, env!("CARGO_BIN_EXE_rampart"))
        .args(["rotate", "encryption-key", "-i"])
        .arg(&c.inventory)
        .arg("--yes")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let mid = line.contains("rewritten ");
        seen.push(line);
        if mid {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap();
            eprintln!("admin machine, rampart until the kill: {peak}");
            child.kill().unwrap();
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "finished before the kill: {seen:#?}");
    seen
}

/// A token's JWT header `kid`, read on host 0.
fn kid(lab: &Lab, token: &str) -> String {
    lab.ssh_ok(
        0,
        &format!("echo {token} | cut -d. -f1 | tr '_-' '/+' | base64 -d 2>/dev/null | sed 's/.*\"kid\":\"\\([^\"]*\\)\".*/\\1/'"),
    )
}

/// Whether `token` authenticates at the apiserver of host `i`.
fn token_works(lab: &Lab, i: usize, token: &str) -> bool {
    let server = &lab.hosts[i].cluster_ip;
    lab.ssh(
        0,
        &format!(
            "kubectl --kubeconfig /dev/null --server https://{server}:6443 \
             --certificate-authority /etc/kubernetes/pki/ca.crt --token {token} auth whoami"
        ),
    )
    .status
    .success()
}

#[test]
fn lab_kubernetes_rotations_keep_secrets_readable_nodes_ready_and_tokens_valid() {
    let Some((bin, lab, _guard)) = kubernetes_lab() else {
        return;
    };
    let c = up(
        &lab,
        &bin,
        "tenants:\n  - namespace: team-a\n    members:\n      - {user: alice@example.com, role: edit}\n",
    );
    let inv = c.inventory.to_str().unwrap().to_string();

    // ---- Encryption key, over 10,000 Secrets, killed mid-rewrite.
    let start = Instant::now();
    create_secrets(&lab, SECRETS);
    eprintln!("created {SECRETS} Secrets in {:.1?}", start.elapsed());
    let before = etcd_counts(&c);
    let old_key = "secretbox:key1";
    assert!(
        before["encrypted"][old_key].as_u64().unwrap() >= SECRETS as u64,
        "{before:#}"
    );
    let seen = nodes_stay_ready(&lab, || rotate_killed_mid_rewrite(&c));
    eprintln!("killed after: {}", seen.last().unwrap());
    let id = only_run(&c, "rotate-encryption-keys");
    let resumed_at = Instant::now();
    // Under /usr/bin/time for the admin machine's peak memory (its last line).
    let out = nodes_stay_ready(&lab, || {
        command(&c, "/usr/bin/time")
            .args(["-f", "%M"])
            .arg(env!("CARGO_BIN_EXE_rampart"))
            .args([
                "rotate",
                "encryption-key",
                "-i",
                &inv,
                "--yes",
                "--resume",
                &id,
            ])
            .output()
            .unwrap()
    });
    assert_success(&out, "rotate encryption-key --resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "resumed rotation (rewrite of what was left, drop-old, finish) in {:.1?}; admin peak RSS {} kB; apiserver peak RSS {} kB",
        resumed_at.elapsed(),
        stderr.lines().last().unwrap_or_default(),
        apiserver_peak_kb(&lab, 0)
    );
    let after = etcd_counts(&c);
    let encrypted = after["encrypted"].as_object().unwrap();
    assert!(!encrypted.contains_key(old_key), "{after:#}");
    assert_eq!(encrypted.len(), 1, "{after:#}");
    assert!(encrypted.values().next().unwrap().as_u64().unwrap() >= SECRETS as u64);
    assert_eq!(after["plainSecrets"], 0, "{after:#}");
    for i in 0..3 {
        let config = lab.ssh_ok(i, "cat /etc/kubernetes/encryption-config.yaml");
        assert!(!config.contains("name: key1"), "{config}");
    }
    let v = lab.ssh_ok(
        0,
        &format!("{K} -n load get secret s7-999 -o jsonpath='{{.data.v}}' | base64 -d"),
    );
    assert_eq!(v, "value-7-999");
    let count = lab.ssh_ok(0, &format!("{K} -n load get secrets --no-headers | wc -l"));
    assert_eq!(count, SECRETS.to_string());
    // What admins do by hand instead, in the same run, for the figures.
    let naive = lab.ssh_ok(
        0,
        &format!("TIMEFORMAT=%R; {{ time {K} get secrets -n load -o json | {K} replace -f - >/dev/null; }} 2>&1"),
    );
    eprintln!(
        "kubectl get -o json | kubectl replace -f - of {SECRETS} Secrets: {naive} s; apiserver peak RSS {} kB",
        apiserver_peak_kb(&lab, 0)
    );

    // ---- Kubernetes CA, every node Ready throughout.
    let alice = |file: &str| user_kubeconfig(&lab, &c, "alice@example.com", file);
    // The host's current bundle as the server's CA: this checks the client
    // certificate alone (a kubeconfig from before the rotation trusts only
    // the old CA, which stops signing the apiserver's certificate at step 2).
    let alice_can = |file: &str| {
        lab.ssh(
            0,
            &format!(
                "kubectl --kubeconfig /root/{file} --certificate-authority /etc/kubernetes/pki/ca.crt \
                 -n team-a get configmaps"
            ),
        )
    };
    alice("alice-before.conf");
    assert_success(&alice_can("alice-before.conf"), "alice before the rotation");
    let ca_args = ["rotate", "ca", "--ca", "kubernetes", "-i", &inv, "--yes"];
    // Killed in step 2 (the new CA signs from there), then resumed.
    let mut child = command(&c, env!("CARGO_BIN_EXE_rampart"))
        .args(ca_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    nodes_stay_ready(&lab, || {
        let rotation = c.state_dir.join("pki/ca.rotation.json");
        let deadline = Instant::now() + Duration::from_secs(600);
        while !std::fs::read_to_string(&rotation)
            .is_ok_and(|t| t.contains("\"stage\": \"reissue\""))
        {
            assert!(Instant::now() < deadline, "no reissue stage");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3));
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success(), "finished before the kill");
    });
    // An apiserver may still be restarting from the killed rollout.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !alice_can("alice-before.conf").status.success() {
        assert!(Instant::now() < deadline, "alice during the overlap");
        std::thread::sleep(Duration::from_secs(1));
    }
    let id = only_run(&c, "rotate-cas");
    let out = nodes_stay_ready(&lab, || {
        let mut args = ca_args.to_vec();
        args.extend(["--resume", &id]);
        c.run(&args)
    });
    assert_success(&out, "rotate ca --ca kubernetes --resume");
    // drop-old moved every kubelet off its certificate from the old CA.
    let log = String::from_utf8_lossy(&out.stderr);
    for h in &lab.hosts {
        assert!(
            log.contains(&format!(
                "{}: kubelet on kubelet.conf's certificate, node Ready",
                h.name
            )),
            "{log}"
        );
    }
    let denied = alice_can("alice-before.conf");
    assert!(
        !denied.status.success(),
        "the old CA's client certificate still works"
    );
    alice("alice-after.conf");
    assert_success(&alice_can("alice-after.conf"), "alice after the rotation");
    let bundle = control_plane_healthy(&lab, "after-ca-rotation");
    let host_ca = lab.ssh_ok(0, "cat /etc/kubernetes/pki/ca.crt");
    assert_eq!(
        bundle.trim(),
        host_ca.trim(),
        "kube-root-ca.crt is the new CA"
    );
    assert_eq!(ready_nodes(&lab), 4);

    // ---- Service-account key: the overlap keeps old tokens working.
    let token = |ns: &str| {
        lab.ssh_ok(
            0,
            &format!("{K} -n {ns} create token default --duration=1h"),
        )
    };
    let old = token("team-a");
    let sa_args = ["rotate", "service-account-key", "-i", &inv, "--yes"];
    let out = nodes_stay_ready(&lab, || c.run(&sa_args));
    // Stops before drop-old until the old key's tokens have expired.
    assert_eq!(
        out.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = token("team-a");
    assert_ne!(kid(&lab, &old), kid(&lab, &new), "the new key signs");
    for i in 0..3 {
        assert!(
            token_works(&lab, i, &old),
            "old token at {}",
            lab.hosts[i].name
        );
        assert!(
            token_works(&lab, i, &new),
            "new token at {}",
            lab.hosts[i].name
        );
    }
    control_plane_healthy(&lab, "after-sa-rotation");
    assert_eq!(ready_nodes(&lab), 4);
    reset(&lab);
}
