//! The cluster CA's one leaf rampart does not render: the client
//! certificate each kubelet renews itself (`rotateCertificates`), kept in
//! `/var/lib/kubelet/pki/kubelet-client-current.pem`.
//!
//! On its first start the kubelet copies the certificate in `kubelet.conf`
//! there and asks the controller-manager for a new one; from then on it
//! uses that file, not `kubelet.conf`. So the `reissue` step's new
//! `kubelet.conf` does not move a kubelet to the new CA, and dropping the
//! old CA would lock every kubelet out of the apiserver. Before a step that
//! takes a CA out of the bundles (`drop-old`, or `forget-new` in a
//! rollback), every node's file is read (the probe `certs check` uses:
//! certificate blocks only, never the key). A node whose certificate the CA
//! being dropped signed gets its kubelet restarted from `kubelet.conf`
//! (whose certificate the CA that stays signed), one node at a time, each
//! behind the kubelet's `/healthz`: a kubelet restart leaves its pods
//! running. The files are read again and must all be signed by the CA that
//! stays, and the nodes Ready, before the step goes on; otherwise it stops
//! and names the nodes.

use crate::actions::apply::services::nodes_ready_cmd;
use crate::actions::gates::local_healthz;
use crate::engine::{each, step, ConnectedHost, Env, Reachable};
use crate::pki::inspect::CertFacts;
use crate::pki::rotation::{self, Rotated};
use crate::remote::script::{at, poll, poll_after};
use crate::remote::Input;
use crate::rotate::Step;

use super::super::verify::judge::KUBELET_ROTATED_CERT;
use super::super::verify::probe::{self, ProbeRequest};
use super::{RotateError, RotateRun};

/// The nodes whose kubelet certificate (`found`: host and certificate
/// blocks; a host without the file is absent) is not signed by `staying`.
pub fn not_signed_by(found: &[(String, Vec<u8>)], staying: &CertFacts) -> Vec<String> {
    found
        .iter()
        .filter(|(_, pem)| {
            let pem = String::from_utf8_lossy(pem);
            !CertFacts::parse("kubelet-client-current", &pem)
                .is_ok_and(|c| c.verify_signed_by(staying).is_ok())
        })
        .map(|(host, _)| host.clone())
        .collect()
}

/// Seconds a restarted kubelet has to answer `/healthz` and write its
/// certificate, and the nodes to turn Ready again.
const KUBELET_SECS: u32 = 120;

/// Before `the` step of a kubernetes CA rotation that drops a CA, moves
/// every kubelet still authenticating with a certificate only that CA
/// trusts onto `kubelet.conf`'s, and refuses the step if one stays there.
pub(super) async fn gate(env: &Env<'_>, s: &RotateRun<'_>, the: Step) -> Result<(), RotateError> {
    if s.what != Rotated::Kubernetes || !the.narrows_trust() {
        return Ok(());
    }
    // Before the step, the CA that signs is the one that stays: the new
    // one from `reissue` on, the old one again after `reissue-old`.
    let ca = Rotated::Kubernetes.state_name();
    let Some(pem) = rotation::signer_cert(&s.rollout.dir, ca)? else {
        return Ok(());
    };
    let staying = CertFacts::parse(ca, &pem)?;
    let nodes: Vec<&ConnectedHost> = s
        .reach
        .fleet
        .members()
        .iter()
        .filter(|m| m.host().roles.runs_kubelet())
        .collect();
    let fail = |reason: String| RotateError::KubeletCerts {
        step: the.name(),
        reason,
    };
    let stale = stale(env, &nodes, the, &staying).await?;
    if stale.is_empty() {
        return Ok(());
    }
    let restart = restart_script();
    for name in &stale {
        let Some(m) = nodes.iter().find(|m| &m.host.name == name) else {
            continue;
        };
        env.reporter.line(
            name,
            "kubelet client certificate from the CA being dropped: restarting the kubelet from kubelet.conf",
        );
        step(
            env,
            *m,
            "restart kubelet from kubelet.conf",
            &restart,
            Input::None,
        )
        .await
        .map_err(|e| fail(format!("{name}: {e}")))?;
    }
    let left = self::stale(env, &nodes, the, &staying).await?;
    if !left.is_empty() {
        return Err(fail(format!(
            "the kubelet on {} still uses a client certificate the CA being dropped signed ({KUBELET_ROTATED_CERT}) after a restart from kubelet.conf; check that kubelet.conf is the one rampart installed, then resume",
            left.join(", ")
        )));
    }
    let cp = s.first_with(|r| r.control_plane).ok_or_else(|| {
        fail("no control-plane host is reachable to ask whether the nodes are Ready".into())
    })?;
    let kubectl = format!("{}/kubectl", env.inv.binaries.dir.trim_end_matches('/'));
    let names: Vec<&str> = stale.iter().map(String::as_str).collect();
    step(
        env,
        cp,
        "nodes Ready",
        &poll(&nodes_ready_cmd(&kubectl, &names), KUBELET_SECS),
        Input::None,
    )
    .await
    .map_err(|e| fail(format!("{}: {e}", cp.host().name)))?;
    for name in &stale {
        env.reporter
            .line(name, "kubelet on kubelet.conf's certificate, node Ready");
    }
    Ok(())
}

/// Restarts the kubelet without its renewed certificate, so it starts from
/// kubelet.conf's (and writes that one there), and waits for the file and
/// the kubelet's `/healthz`.
fn restart_script() -> String {
    let cert = at(KUBELET_ROTATED_CERT);
    poll_after(
        &format!("rm -f {cert}\nsystemctl restart kubelet\n"),
        &format!("{{ [ -s {cert} ] && {}; }}", local_healthz(10248, false)),
        KUBELET_SECS,
    )
}

/// The nodes whose kubelet certificate is not signed by `staying`.
async fn stale(
    env: &Env<'_>,
    nodes: &[&ConnectedHost],
    the: Step,
    staying: &CertFacts,
) -> Result<Vec<String>, RotateError> {
    let script = probe::script(&ProbeRequest {
        certs: vec![KUBELET_ROTATED_CERT.to_string()],
        ..ProbeRequest::default()
    });
    let script = &script;
    let outputs = each(env, the.name(), nodes.to_vec(), |m| {
        Box::pin(async move {
            let out = step(env, m, "read kubelet certificate", script, Input::None).await?;
            Ok((m.host.name.clone(), out.stdout_text()))
        })
    })
    .await?;
    let mut found = Vec::new();
    for (host, out) in outputs {
        let probe = probe::parse(&out).map_err(|e| RotateError::KubeletCerts {
            step: the.name(),
            reason: format!("{host}: {e}"),
        })?;
        if let Some(pem) = probe.cert_files.get(KUBELET_ROTATED_CERT) {
            found.push((host, pem.clone()));
        }
    }
    Ok(not_signed_by(&found, staying))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::issue::{self, Policy, Signer};
    use crate::pki::CertSpec;

    #[test]
    fn a_kubelet_certificate_from_the_dropped_ca_is_named() {
        let inv = crate::inventory::one_host(None);
        let policy = Policy::of(&inv, time::OffsetDateTime::now_utc());
        let specs = crate::pki::catalogue(&inv);
        let spec = |n: &str| -> CertSpec { specs.iter().find(|s| s.name == n).unwrap().clone() };
        let ca_spec = spec("ca");
        let old = issue::self_signed_ca(&ca_spec, &policy).unwrap();
        let new = issue::self_signed_ca(&ca_spec, &policy).unwrap();
        let leaf = spec("kubelet-client-cp1");
        let by = |ca: &crate::pki::Issued| {
            Signer::new("ca", ca)
                .unwrap()
                .sign(&leaf, &policy)
                .unwrap()
                .cert_pem
                .into_bytes()
        };
        let found = vec![
            ("cp1".to_string(), by(&new)),
            ("w1".to_string(), by(&old)),
            ("w2".to_string(), b"garbage".to_vec()),
        ];
        let staying = CertFacts::parse("ca", &new.cert_pem).unwrap();
        assert_eq!(not_signed_by(&found, &staying), ["w1", "w2"]);
    }

    /// The restart script under sh, with stand-ins for systemctl (which
    /// writes the certificate as a starting kubelet does) and curl: the old
    /// file goes first, the script waits for the new one.
    #[test]
    fn the_restart_removes_the_certificate_and_waits_for_the_new_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let cert = root.join(KUBELET_ROTATED_CERT.trim_start_matches('/'));
        std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
        std::fs::write(&cert, "old").unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("log");
        for (name, body) in [
            (
                "systemctl",
                format!(
                    "echo \"systemctl $* (old there: $(cat {c} 2>/dev/null))\" >> {l}; (sleep 2; echo new > {c}) &",
                    c = cert.display(),
                    l = log.display()
                ),
            ),
            ("curl", "exit 0".to_string()),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(restart_script())
            .env("ROOT", &root)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read_to_string(&cert).unwrap().trim(), "new");
        let log = std::fs::read_to_string(&log).unwrap();
        assert_eq!(log.trim(), "systemctl restart kubelet (old there: )");
    }
}
