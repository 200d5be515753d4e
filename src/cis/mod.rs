//! CIS Kubernetes Benchmark self-check: evaluates a rendered bundle against the CIS v1.12
//! checks, as kube-bench would see each host once the bundle is installed.
//!
//! [`Benchmark`] holds the checks: rampart's built-in catalogue (`catalogue.yaml`) or a
//! kube-bench digest given with `--benchmark`; [`evaluate`] emulates each check's audit
//! on each host ([`host`], [`audit`]) and applies kube-bench's test semantics
//! ([`semantics`]) to the emulated output. Pure: no disk, no network. See docs/cis.md.

mod audit;
mod benchmark;
pub mod host;
mod jsonpath;
mod report;
pub mod semantics;
pub mod unit;

pub use benchmark::{
    Benchmark, BenchmarkError, BinOp, Check, Emulation, OneOrMany, Origin, Role, Target, TestItem,
};
pub use report::{CheckResult, HostReport, KubeBenchState, Report, Status, Summary};

use crate::render::{Bundle, HostBundle, Service};
use audit::Audited;
use host::HostView;
use semantics::Source;

/// Evaluates every applicable check on every host of `bundle`.
pub fn evaluate(benchmark: &Benchmark, bundle: &Bundle) -> Report {
    let hosts = bundle
        .hosts
        .iter()
        .map(|(name, hb)| evaluate_host(benchmark, name, hb))
        .collect();
    Report::new(
        benchmark.benchmark.clone(),
        benchmark.origin.to_string(),
        hosts,
    )
}

/// The benchmark targets a host is checked as, from the services it runs: the API server
/// makes it a control-plane host (`master`, `controlplane`, `policies`), etcd an etcd member,
/// and every control-plane host or kubelet host is a `node`.
pub fn targets_of(hb: &HostBundle) -> Vec<Target> {
    let runs = |s| hb.services.contains(&s);
    let cp = runs(Service::KubeApiserver);
    let mut t = Vec::new();
    if cp {
        t.push(Target::Master);
    }
    if runs(Service::Etcd) {
        t.push(Target::Etcd);
    }
    if cp {
        t.push(Target::Controlplane);
    }
    if cp || runs(Service::Kubelet) {
        t.push(Target::Node);
    }
    if cp {
        t.push(Target::Policies);
    }
    t
}

fn evaluate_host(benchmark: &Benchmark, name: &str, hb: &HostBundle) -> HostReport {
    evaluate_view(benchmark, name, hb, &HostView::new(hb, &benchmark.roles))
}

/// Evaluates the checks that apply to a host running `hb`'s services on
/// `view`: the rendered bundle itself, or what `verify` read off the host.
pub fn evaluate_view(
    benchmark: &Benchmark,
    name: &str,
    hb: &HostBundle,
    view: &HostView,
) -> HostReport {
    let targets = targets_of(hb);
    let checks = benchmark
        .checks
        .iter()
        .filter(|c| applies(c, &targets, hb))
        .map(|c| evaluate_check(c, view))
        .collect();
    HostReport::new(name.to_string(), targets, checks)
}

/// Whether `check` is about this host. kube-bench's master section assumes etcd is
/// stacked on the control plane: its checks of etcd's own files (1.1.7, 1.1.8, 1.1.11,
/// 1.1.12) describe wherever etcd runs. So they apply to etcd members, also to
/// dedicated ones, and not to a control-plane host whose etcd is elsewhere.
fn applies(check: &Check, targets: &[Target], hb: &HostBundle) -> bool {
    if is_etcd_file_check(check) {
        return hb.services.contains(&Service::Etcd);
    }
    targets.contains(&check.target)
}

fn is_etcd_file_check(check: &Check) -> bool {
    check.target == Target::Master
        && match &check.audit_emulation {
            Emulation::Stat { role, .. } | Emulation::FindStat { role, .. } => {
                role == "etcdconf" || role == "etcddatadir"
            }
            Emulation::EtcdDataDir { .. } => true,
            _ => false,
        }
}

/// Evaluates one check on one host.
pub fn evaluate_check(check: &Check, host: &HostView) -> CheckResult {
    let mut r = CheckResult {
        id: check.id.clone(),
        text: check.text.clone(),
        target: check.target,
        automated: check.automated,
        status: Status::NotEvaluable,
        kube_bench: KubeBenchState::Warn,
        file: None,
        observed: None,
        expected: None,
        reason: None,
    };
    // kube-bench never runs manual or skipped checks (WARN / INFO).
    if matches!(check.check_type.as_str(), "manual" | "skip") {
        r.reason = Some("marked manual in the benchmark: review by hand".into());
        return r;
    }
    let fail = |r: &mut CheckResult| {
        r.status = Status::Fail;
        r.kube_bench = if check.scored {
            KubeBenchState::Fail
        } else {
            KubeBenchState::Warn
        };
    };
    if check.tests.is_empty() {
        fail(&mut r);
        r.reason = Some("the benchmark defines no tests for this check".into());
        return r;
    }
    match audit::run(check, host) {
        Audited::NotEvaluable(reason) => r.reason = Some(reason),
        Audited::Failed(reason) => {
            fail(&mut r);
            r.reason = Some(reason);
        }
        Audited::Ran { outputs, file } => {
            let outcome = semantics::execute(
                &check.tests,
                check.bin_op,
                check.use_multiple_values,
                &outputs,
            );
            r.file = file;
            r.expected = Some(outcome.expected.clone());
            r.observed = Some(observed(check, &outcome));
            if outcome.pass {
                r.status = Status::Pass;
                r.kube_bench = KubeBenchState::Pass;
            } else {
                fail(&mut r);
                r.reason = outcome.items.iter().find_map(|i| i.error.clone());
            }
        }
    }
    r
}

/// `name=value` per test item (deduplicated), saying where it came from when not the
/// command line. Only values are reported, never whole files (they may hold keys).
fn observed(check: &Check, outcome: &semantics::Outcome) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (t, o) in check.tests.iter().zip(&outcome.items) {
        let name = o.name(t);
        let from = match o.source {
            Source::Command => "",
            Source::Config => " (config)",
            Source::Env => " (env)",
        };
        let p = if o.found {
            format!("{name}={}{from}", o.value)
        } else {
            format!("{name} not found")
        };
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join("; ")
}
