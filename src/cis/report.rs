//! The self-check report: per host, per check, what kube-bench would conclude, with the
//! observed values and the expectation in words; serializable for `--output json`.

use std::fmt::Write as _;

use serde::Serialize;

use super::benchmark::Target;

/// The verdict on one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    /// Needs a live cluster, or is manual in the benchmark.
    NotEvaluable,
}

/// What kube-bench itself would print for the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum KubeBenchState {
    Pass,
    Fail,
    Warn,
}

/// One check on one host.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub id: String,
    pub text: String,
    pub target: Target,
    pub automated: bool,
    pub status: Status,
    pub kube_bench: KubeBenchState,
    /// The file the audit inspected, when it inspects one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Values found per test item (`name=value` or `name not found`); never file contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// The test in words (kube-bench's `expected_result`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Why the check was not evaluated, or why its audit found nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Counts of verdicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub fail: usize,
    pub not_evaluable: usize,
    /// Failures among automated checks: the number that must be zero.
    pub automated_fail: usize,
}

impl Summary {
    fn add(&mut self, r: &CheckResult) {
        match r.status {
            Status::Pass => self.pass += 1,
            Status::Fail => {
                self.fail += 1;
                if r.automated {
                    self.automated_fail += 1;
                }
            }
            Status::NotEvaluable => self.not_evaluable += 1,
        }
    }
    fn merge(&mut self, o: &Summary) {
        self.pass += o.pass;
        self.fail += o.fail;
        self.not_evaluable += o.not_evaluable;
        self.automated_fail += o.automated_fail;
    }
}

/// All checks that apply to one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    /// Benchmark targets this host is checked as.
    pub targets: Vec<Target>,
    pub checks: Vec<CheckResult>,
    pub summary: Summary,
}

impl HostReport {
    pub fn new(host: String, targets: Vec<Target>, checks: Vec<CheckResult>) -> Self {
        let mut summary = Summary::default();
        checks.iter().for_each(|c| summary.add(c));
        HostReport {
            host,
            targets,
            checks,
            summary,
        }
    }
}

/// The whole self-check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: String,
    /// Where the check definitions came from: `built into rampart` or the file's path.
    pub definitions: String,
    pub hosts: Vec<HostReport>,
    pub summary: Summary,
}

impl Report {
    pub fn new(benchmark: String, definitions: String, hosts: Vec<HostReport>) -> Self {
        let mut summary = Summary::default();
        hosts.iter().for_each(|h| summary.merge(&h.summary));
        Report {
            benchmark,
            definitions,
            hosts,
            summary,
        }
    }

    /// `(host, check)` for every failed check, in report order.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &CheckResult)> {
        self.hosts.iter().flat_map(|h| {
            h.checks
                .iter()
                .filter(|c| c.status == Status::Fail)
                .map(move |c| (h.host.as_str(), c))
        })
    }

    /// A human table: which definitions were used, one line per check and host
    /// (`host: id status text`), failures detailed underneath, then the summary.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}: checks {}", self.benchmark, self.definitions);
        for h in &self.hosts {
            for c in &h.checks {
                let status = match c.status {
                    Status::Pass => "PASS",
                    Status::Fail => "FAIL",
                    Status::NotEvaluable => "N/A ",
                };
                let _ = writeln!(out, "{}: {:<7} {} {}", h.host, c.id, status, c.text);
                if c.status == Status::Fail {
                    if let Some(f) = &c.file {
                        let _ = writeln!(out, "      file:     {f}");
                    }
                    if let Some(o) = &c.observed {
                        let _ = writeln!(out, "      observed: {o}");
                    }
                    if let Some(e) = &c.expected {
                        let _ = writeln!(out, "      expected: {e}");
                    }
                    if let Some(r) = &c.reason {
                        let _ = writeln!(out, "      reason:   {r}");
                    }
                }
            }
            let s = &h.summary;
            let _ = writeln!(
                out,
                "{}: {} pass, {} fail ({} automated), {} not evaluable",
                h.host, s.pass, s.fail, s.automated_fail, s.not_evaluable
            );
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{}: {} pass, {} fail ({} automated), {} not evaluable",
            self.benchmark, s.pass, s.fail, s.automated_fail, s.not_evaluable
        );
        out
    }
}
