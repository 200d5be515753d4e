//! From what one host answered to its verdict: what to ask it
//! ([`request`]) and how to read the answer ([`host`]). Pure: the rendered
//! bundle, the facts and the probe in, findings out.

use time::OffsetDateTime;

use super::live;
use super::probe::{Probe, ProbeRequest};
use super::{Area, Checked, Finding, HostVerdict, Scope, Severity};
use crate::actions::backup::{self, Holder};
use crate::actions::gates;
use crate::cis::{Benchmark, Emulation};
use crate::inventory::{Host, Inventory};
use crate::plan::desired::Desired;
use crate::plan::facts::HostFacts;
use crate::plan::{plan_host, FileAction, Skips};
use crate::render::{Contents, HostBundle, Service};

/// How strict the verdict is.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub now: OffsetDateTime,
    /// A certificate that expires sooner is a warning.
    pub warn_days: u32,
    /// A member whose newest good backup is older is a warning.
    pub backup_max_age_hours: u32,
}

/// Everything known about one host once it answered.
pub struct HostInput<'a> {
    pub inv: &'a Inventory,
    pub host: &'a Host,
    pub rendered: &'a HostBundle,
    pub desired: &'a Desired,
    pub facts: &'a HostFacts,
    pub probe: &'a Probe,
    pub holder: Option<&'a Holder>,
}

/// Directories listed whole: the PKI (for kube-bench's `find` audits) and the
/// kubelet's rotated certificates.
const FIND: [&str; 2] = ["/etc/kubernetes/pki", "/var/lib/kubelet/pki"];

/// What to ask `host` besides the facts: its units, the paths kube-bench
/// looks at, the public files, the health commands and the backup job.
pub fn request(
    inv: &Inventory,
    host: &Host,
    rendered: &HostBundle,
    benchmark: &Benchmark,
    holder: Option<&Holder>,
) -> ProbeRequest {
    let runs = |s: Service| rendered.services.contains(&s);
    let mut stat: Vec<String> = crate::cis::host::ROLE_OVERRIDES
        .iter()
        .map(|(_, p)| p.to_string())
        .collect();
    let mut find: Vec<String> = FIND.iter().map(|p| p.to_string()).collect();
    for role in benchmark.roles.values() {
        stat.extend(role.candidates.iter().cloned());
        match &role.default {
            crate::cis::OneOrMany::One(p) => stat.push(p.clone()),
            crate::cis::OneOrMany::Many(ps) => stat.extend(ps.iter().cloned()),
        }
    }
    for c in &benchmark.checks {
        match &c.audit_emulation {
            Emulation::AdminConf { default_paths, .. } => {
                stat.extend(default_paths.iter().cloned())
            }
            Emulation::PkiFind { default_path, .. } => find.push(default_path.clone()),
            _ => {}
        }
    }
    stat.sort();
    stat.dedup();
    find.sort();
    find.dedup();
    let read = public_files(rendered);
    let mut health = Vec::new();
    if runs(Service::Etcd) {
        health.push((
            "etcd".to_string(),
            Service::Etcd.unit(),
            gates::etcd_health_cmd(inv, host),
        ));
    }
    if runs(Service::KubeApiserver) {
        health.push((
            "kube-apiserver".into(),
            Service::KubeApiserver.unit(),
            gates::apiserver_ready_cmd(inv, host),
        ));
        for (svc, port) in [
            (Service::KubeControllerManager, 10257),
            (Service::KubeScheduler, 10259),
        ] {
            health.push((
                svc.name().into(),
                svc.unit(),
                gates::local_healthz(port, true),
            ));
        }
        // Node readiness is the API's view: asked once, of the first
        // control plane.
        if inv.control_planes().next().map(|h| &h.name) == Some(&host.name) {
            let names: Vec<&str> = inv.nodes().map(|h| h.name.as_str()).collect();
            let kubectl = format!("{}/kubectl", inv.binaries.dir.trim_end_matches('/'));
            health.push((
                "nodes".into(),
                Service::KubeApiserver.unit(),
                crate::actions::apply::services::nodes_ready_cmd(&kubectl, &names),
            ));
        }
    }
    ProbeRequest {
        units: rendered.services.iter().map(|s| s.unit()).collect(),
        stat,
        find,
        read,
        health,
        backups: holder.map(|h| backup::list_script(&h.dir, h.target)),
        certs: unrendered_certs(rendered),
    }
}

/// What to ask `host` for `certs check`: its public files (only those that
/// differ from the bundle come back) and the kubelet's rotated certificate.
pub fn cert_request(rendered: &HostBundle) -> ProbeRequest {
    ProbeRequest {
        read: public_files(rendered),
        certs: unrendered_certs(rendered),
        ..ProbeRequest::default()
    }
}

/// The bundle's files that hold no secret, with the sha256 rendered.
fn public_files(rendered: &HostBundle) -> Vec<(String, String)> {
    rendered
        .files
        .iter()
        .filter(|f| matches!(f.contents, Contents::Plain(_)))
        .map(|f| (f.path.clone(), f.sha256()))
        .collect()
}

/// Where the kubelet keeps the client certificate it renewed itself
/// (`rotateCertificates`): certificate and key in one file, not rendered.
pub const KUBELET_ROTATED_CERT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

fn unrendered_certs(rendered: &HostBundle) -> Vec<String> {
    if rendered.services.contains(&Service::Kubelet) {
        vec![KUBELET_ROTATED_CERT.to_string()]
    } else {
        Vec::new()
    }
}

/// One host's verdict: everything, or (`certs check`) the certificates and
/// the drift of PKI files only.
pub fn host(i: &HostInput, benchmark: &Benchmark, limits: &Limits, scope: Scope) -> HostVerdict {
    let mut checked = Checked::default();
    let mut findings = drift(i, &mut checked);
    if scope == Scope::Certificates {
        findings.retain(|f| is_pki_path(&f.id));
    } else {
        findings.extend(services(i, &mut checked));
        findings.extend(backups(i, limits));
        let live_bundle = live::live_bundle(i.rendered, i.facts, i.probe);
        let running = live::running(i.rendered, i.probe);
        let (cis, automated, manual) =
            live::cis_findings(benchmark, &i.host.name, i.rendered, &live_bundle, running);
        checked.cis_automated = automated;
        checked.cis_manual = manual;
        findings.extend(cis);
    }
    findings.extend(certificates(i, limits, &mut checked));
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.area.cmp(&b.area)));
    HostVerdict {
        host: i.host.name.clone(),
        checked,
        findings,
    }
}

/// Certificates, keys and kubeconfigs: what `certs check` reports drift of.
fn is_pki_path(path: &str) -> bool {
    let under = ["/etc/kubernetes/", "/var/lib/kubelet/pki/"];
    under.iter().any(|d| path.starts_with(d))
        && [".crt", ".key", ".pem", ".conf"]
            .iter()
            .any(|ext| path.ends_with(ext))
}

/// Managed files, binaries and directories that differ from the bundle,
/// and unit files rampart does not render.
fn drift(i: &HostInput, checked: &mut Checked) -> Vec<Finding> {
    let plan = plan_host(&i.host.name, i.desired, i.facts, &Skips::default());
    checked.files = i.desired.files.len() + i.desired.binaries.len();
    let mut out = Vec::new();
    for c in plan.files.iter().chain(&plan.binaries) {
        let (severity, message) = match c.action {
            FileAction::Create => (Severity::Failure, "missing".to_string()),
            FileAction::Update => (
                Severity::Failure,
                format!("changed on the host: {}", c.what.join(", ")),
            ),
            FileAction::Remove => (
                Severity::Warning,
                "installed by an earlier apply and no longer managed: the next apply removes it"
                    .to_string(),
            ),
        };
        out.push(Finding::new(Area::Drift, severity, &c.path, message));
    }
    for d in &plan.dirs {
        let message = match d.action {
            FileAction::Create => "missing".to_string(),
            _ => format!("changed on the host: {}", d.what.join(", ")),
        };
        out.push(Finding::new(
            Area::Drift,
            Severity::Failure,
            &d.path,
            message,
        ));
    }
    for unit in &i.probe.unit_files {
        let path = format!("/etc/systemd/system/{unit}");
        if i.rendered.file(&path).is_none() {
            out.push(Finding::new(
                Area::Drift,
                Severity::Warning,
                path,
                "a unit file rampart does not render for this host",
            ));
        }
    }
    if !out.is_empty() {
        out.push(Finding::new(
            Area::Drift,
            Severity::Info,
            "drift",
            "`rampart plan` shows the differences; `rampart apply` puts the rendered files back",
        ));
    }
    out
}

/// Each service rampart runs here: installed, active, and answering its
/// health command.
fn services(i: &HostInput, checked: &mut Checked) -> Vec<Finding> {
    let mut out = Vec::new();
    for s in &i.rendered.services {
        let unit = s.unit();
        if let Some(missing) = not_installed(i, *s) {
            out.push(Finding::new(
                Area::Health,
                Severity::Info,
                &unit,
                format!(
                    "not installed ({missing} absent): not running; its CIS checks read its unit file"
                ),
            ));
            continue;
        }
        checked.units += 1;
        let state = i.probe.units.get(&unit).cloned().unwrap_or_default();
        if state.active != "active" {
            let result = if state.result.is_empty() || state.result == "success" {
                String::new()
            } else {
                format!(", last result {}", state.result)
            };
            out.push(Finding::new(
                Area::Health,
                Severity::Failure,
                &unit,
                format!(
                    "{} ({}{result})",
                    or_unknown(&state.active),
                    or_unknown(&state.sub)
                ),
            ));
            continue;
        }
        if state.restarts > 0 {
            out.push(Finding::new(
                Area::Health,
                Severity::Info,
                &unit,
                format!(
                    "restarted by systemd {} since it was started",
                    crate::words::count(state.restarts as usize, "time")
                ),
            ));
        }
    }
    let members = i.inv.etcd_members().count();
    for (name, h) in &i.probe.health {
        let Some(ok) = h.ok else { continue };
        let output = crate::remote::excerpt(&h.output);
        if name == "etcd" {
            let healthy = h
                .output
                .lines()
                .filter(|l| l.contains("is healthy"))
                .count();
            let quorum = members / 2 + 1;
            if ok {
                continue;
            }
            let what = if healthy >= quorum {
                format!(
                    "{healthy}/{members} members healthy: quorum holds, one more loss breaks it"
                )
            } else {
                format!("{healthy}/{members} members healthy: quorum lost")
            };
            out.push(Finding::new(
                Area::Health,
                Severity::Failure,
                "etcd",
                format!("{what}: {output}"),
            ));
        } else if !ok {
            out.push(Finding::new(
                Area::Health,
                Severity::Failure,
                name,
                format!("does not answer its health check: {output}"),
            ));
        }
    }
    out
}

/// The binary missing for `s` to run, when one is: one of its group's
/// ([`Service::group`]). apply starts a group only with all of them, so a
/// group with one missing was deliberately not started (`--skip-phases`, a
/// lab without Kubernetes binaries).
fn not_installed(i: &HostInput, s: Service) -> Option<&'static str> {
    s.group()
        .iter()
        .copied()
        .filter(|g| i.rendered.services.contains(g))
        .map(Service::binary)
        .find(|b| i.facts.binaries.get(*b) == Some(&None))
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

/// The backup job's last run and the age of the newest backup.
fn backups(i: &HostInput, limits: &Limits) -> Vec<Finding> {
    let (Some(holder), Some(text)) = (i.holder, &i.probe.backups) else {
        return Vec::new();
    };
    let id = if holder.target {
        "backup target"
    } else {
        "rampart-backup.service"
    };
    let m = match backup::parse_list(&i.host.name, &holder.dir, holder.target, text) {
        Ok(m) => m,
        Err(e) => {
            return vec![Finding::new(
                Area::Backups,
                Severity::Failure,
                id,
                format!("cannot read the backups in {}: {e}", holder.dir),
            )]
        }
    };
    let mut out = Vec::new();
    if let Some(run) = m.last_run.as_ref().filter(|r| !r.ok) {
        out.push(Finding::new(
            Area::Backups,
            Severity::Failure,
            id,
            format!(
                "the last run ({}) failed: {}",
                run.time,
                run.error.as_deref().unwrap_or("no reason recorded")
            ),
        ));
    } else if !holder.target && !matches!(m.last_result.as_str(), "" | "success") {
        out.push(Finding::new(
            Area::Backups,
            Severity::Failure,
            id,
            format!(
                "the last run failed ({}): see `journalctl -u rampart-backup.service`",
                m.last_result
            ),
        ));
    }
    let newest = m
        .backups
        .iter()
        .filter_map(|b| {
            OffsetDateTime::parse(&b.created, &time::format_description::well_known::Rfc3339).ok()
        })
        .max();
    match newest {
        None => out.push(Finding::new(
            Area::Backups,
            Severity::Warning,
            id,
            format!("no backup in {} yet", holder.dir),
        )),
        Some(t) => {
            let hours = (limits.now - t).whole_hours();
            if hours > i64::from(limits.backup_max_age_hours) {
                out.push(Finding::new(
                    Area::Backups,
                    Severity::Warning,
                    id,
                    format!(
                        "the newest backup is {hours} h old (more than {} h)",
                        limits.backup_max_age_hours
                    ),
                ));
            }
        }
    }
    out
}

/// Every certificate installed on the host: the `.crt`/`.pem` files as the
/// host has them, and the client certificates embedded in kubeconfigs whose
/// sha256 matches the bundle (a changed kubeconfig is already drift).
fn certificates(i: &HostInput, limits: &Limits, checked: &mut Checked) -> Vec<Finding> {
    let mut pems: Vec<(String, String)> = Vec::new();
    for f in &i.rendered.files {
        // The host's copy: the bundle's when the sha256 matches, else what
        // the probe sent back (public files only; a changed key or
        // kubeconfig is drift and its certificate is not read).
        let live = i.facts.files.get(&f.path).and_then(|l| l.sha256.as_deref());
        let bytes = if live == Some(f.sha256().as_str()) {
            f.contents.bytes()
        } else if let Some(b) = i.probe.files.get(&f.path) {
            b.as_slice()
        } else {
            continue;
        };
        if f.path.ends_with(".crt") || f.path.ends_with(".pem") {
            pems.push((f.path.clone(), String::from_utf8_lossy(bytes).into_owned()));
        } else if let Some(pem) = embedded_client_cert(bytes) {
            pems.push((f.path.clone(), pem));
        }
    }
    for (path, bytes) in &i.probe.cert_files {
        pems.push((path.clone(), String::from_utf8_lossy(bytes).into_owned()));
    }
    let anchors = anchors(i.rendered);
    let mut out = Vec::new();
    let warn = time::Duration::days(i64::from(limits.warn_days));
    for (path, text) in pems {
        for (n, block) in pem_blocks(&text).into_iter().enumerate() {
            let name = if n == 0 {
                path.clone()
            } else {
                format!("{path}#{n}")
            };
            let Ok(cert) = crate::pki::inspect::CertFacts::parse(&name, &block) else {
                out.push(Finding::new(
                    Area::Certificates,
                    Severity::Failure,
                    &name,
                    "does not parse as a certificate",
                ));
                continue;
            };
            checked.certificates += 1;
            // A leaf must be signed by a CA the state dir trusts; a CA
            // must be one of them.
            let trusted = if cert.is_ca {
                anchors
                    .iter()
                    .any(|a| a.public_key_der == cert.public_key_der)
            } else {
                anchors.iter().any(|a| cert.verify_signed_by(a).is_ok())
            };
            if !trusted {
                let what = if cert.is_ca {
                    "is a CA the state dir does not trust"
                } else {
                    "is not signed by any CA the state dir trusts"
                };
                out.push(Finding::new(
                    Area::Certificates,
                    Severity::Failure,
                    &name,
                    format!("{} {what}", cert.common_name),
                ));
            }
            let left = cert.not_after - limits.now;
            let date = cert.not_after.date();
            if left.is_negative() {
                out.push(Finding::new(
                    Area::Certificates,
                    Severity::Failure,
                    &name,
                    format!("{} expired on {date}", cert.common_name),
                ));
            } else if left < warn {
                out.push(Finding::new(
                    Area::Certificates,
                    Severity::Warning,
                    &name,
                    format!(
                        "{} expires in {}, on {date}",
                        cert.common_name,
                        crate::words::count(left.whole_days() as usize, "day")
                    ),
                ));
            }
        }
    }
    out
}

/// The CAs hosts are meant to trust: every CA certificate in the rendered
/// `.crt` files (the state dir's trust bundles, both CAs mid-rotation).
fn anchors(rendered: &HostBundle) -> Vec<crate::pki::inspect::CertFacts> {
    rendered
        .files
        .iter()
        .filter(|f| f.path.ends_with(".crt"))
        .flat_map(|f| pem_blocks(&String::from_utf8_lossy(f.contents.bytes())))
        .filter_map(|pem| crate::pki::inspect::CertFacts::parse("trust", &pem).ok())
        .filter(|c| c.is_ca)
        .collect()
}

/// The PEM blocks of a certificate file (a bundle may hold several).
fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// `client-certificate-data` of a kubeconfig, as PEM text.
fn embedded_client_cert(bytes: &[u8]) -> Option<String> {
    use base64::Engine;
    let doc: serde_yaml::Value = serde_yaml::from_slice(bytes).ok()?;
    let data = doc
        .get("users")?
        .as_sequence()?
        .first()?
        .get("user")?
        .get("client-certificate-data")?
        .as_str()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(pem).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_splits_a_bundle() {
        let one = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----";
        let two = format!("{one}\n{one}\n");
        assert_eq!(pem_blocks(&two).len(), 2);
        assert_eq!(pem_blocks("no pem").len(), 0);
    }
}
