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
//! certificate blocks only, never the key) and must be signed by the CA
//! that stays; otherwise the step stops and names the nodes.

use crate::engine::{each, step, Env, Reachable};
use crate::pki::inspect::CertFacts;
use crate::pki::rotation::{self, Rotated};
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

/// Refuses `the` step of a kubernetes CA rotation while a kubelet still
/// authenticates with a certificate only the CA it drops trusts.
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
    let script = probe::script(&ProbeRequest {
        certs: vec![KUBELET_ROTATED_CERT.to_string()],
        ..ProbeRequest::default()
    });
    let nodes = s
        .reach
        .fleet
        .members()
        .iter()
        .filter(|m| m.host().roles.runs_kubelet())
        .collect();
    let script = &script;
    let outputs = each(env, the.name(), nodes, |m| {
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
    let stale = not_signed_by(&found, &staying);
    if stale.is_empty() {
        return Ok(());
    }
    Err(RotateError::KubeletCerts {
        step: the.name(),
        reason: format!(
            "the kubelet on {} still uses a client certificate the CA being dropped signed ({KUBELET_ROTATED_CERT}); on each, `rm {KUBELET_ROTATED_CERT} && systemctl restart kubelet` (it starts again from kubelet.conf, whose certificate the CA that stays signed, and renews it), then resume",
            stale.join(", ")
        ),
    })
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
}
