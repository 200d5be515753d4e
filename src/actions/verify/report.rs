//! The verdict of `rampart verify`: is the cluster on the hosts the cluster rampart
//! promised? Judged from the hosts themselves, read-only, in one round trip
//! per host (the facts script `plan` uses, then [`probe`]):
//!
//! - **cis**: every automated CIS check on what is *running* ([`live`]);
//! - **drift**: every managed file, directory and binary against the rendered
//!   bundle, and unit files rampart does not render;
//! - **health**: units, etcd quorum, apiserver `/readyz`, components'
//!   `/healthz`, node readiness, the backup job, certificate expiry.
//!
//! These are the verdict's types; [`super::judge::host`] makes them from
//! what a host answered.

use serde::Serialize;

/// How bad a finding is; the report's exit code is its worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, nothing to do (a manual CIS check, a service whose
    /// binary is not installed).
    Info,
    /// Act soon: a certificate expiring within `--warn-days`, an old backup.
    Warning,
    /// Act now: a failed automated CIS check, drift, a service down, an
    /// expired certificate, a failed backup run.
    Failure,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    Cis,
    Drift,
    Health,
    Backups,
    Certificates,
}

impl Area {
    pub fn name(self) -> &'static str {
        match self {
            Area::Cis => "cis",
            Area::Drift => "drift",
            Area::Health => "health",
            Area::Backups => "backups",
            Area::Certificates => "certificates",
        }
    }
}

/// One thing verify found on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub area: Area,
    pub severity: Severity,
    /// Stable name of what was checked: a CIS id (`1.2.18`), a path, a unit.
    pub id: String,
    pub message: String,
}

impl Finding {
    pub fn new(
        area: Area,
        severity: Severity,
        id: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            area,
            severity,
            id: id.into(),
            message: message.into(),
        }
    }
}

/// Counts of what passed, per area, so a clean report still says what it
/// looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    /// Automated CIS checks evaluated (passed or not).
    pub cis_automated: usize,
    /// Manual CIS checks: listed as info, for review by hand.
    pub cis_manual: usize,
    pub files: usize,
    pub units: usize,
    pub certificates: usize,
}

/// One host's verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVerdict {
    pub host: String,
    pub checked: Checked,
    /// Worst first.
    pub findings: Vec<Finding>,
}

impl HostVerdict {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
}

/// The whole fleet's verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub cluster: String,
    pub benchmark: String,
    pub hosts: Vec<HostVerdict>,
}

impl Report {
    pub fn worst(&self) -> Option<Severity> {
        self.hosts.iter().filter_map(HostVerdict::worst).max()
    }
    pub fn count(&self, s: Severity) -> usize {
        self.hosts.iter().map(|h| h.count(s)).sum()
    }
}
