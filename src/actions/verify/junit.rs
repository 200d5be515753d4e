//! `verify --output junit`: the report as JUnit XML (quick-junit), which CI
//! systems and compliance tooling read. One test suite per host; one test
//! case per finding (failures and warnings fail, typed by severity; info is
//! skipped with its message) and one passing case per area with nothing to
//! say, so a clean run still shows what was checked.

use quick_junit::{NonSuccessKind, Report as Junit, TestCase, TestCaseStatus, TestSuite};

use super::{Area, Report, Severity};

const AREAS: [Area; 5] = [
    Area::Cis,
    Area::Drift,
    Area::Health,
    Area::Backups,
    Area::Certificates,
];

/// The report as JUnit XML.
pub fn render(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut junit = Junit::new(format!("rampart verify {}", report.cluster));
    for h in &report.hosts {
        let mut suite = TestSuite::new(h.host.clone());
        for f in &h.findings {
            let mut status = match f.severity {
                Severity::Info => TestCaseStatus::skipped(),
                Severity::Warning | Severity::Failure => {
                    TestCaseStatus::non_success(NonSuccessKind::Failure)
                }
            };
            status.set_message(f.message.clone());
            status.set_type(match f.severity {
                Severity::Info => "info",
                Severity::Warning => "warning",
                Severity::Failure => "failure",
            });
            let mut case = TestCase::new(format!("{} {}", f.area.name(), f.id), status);
            case.set_classname(format!("{}.{}", h.host, f.area.name()));
            suite.add_test_case(case);
        }
        for area in AREAS {
            let quiet = !h
                .findings
                .iter()
                .any(|f| f.area == area && f.severity > Severity::Info);
            if quiet {
                let mut case = TestCase::new(area.name(), TestCaseStatus::success());
                case.set_classname(format!("{}.{}", h.host, area.name()));
                suite.add_test_case(case);
            }
        }
        junit.add_test_suite(suite);
    }
    junit.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::verify::{Checked, Finding, HostVerdict};

    #[test]
    fn findings_become_typed_cases_and_quiet_areas_pass() {
        let report = Report {
            cluster: "lab".into(),
            benchmark: "cis-1.12".into(),
            hosts: vec![HostVerdict {
                host: "cp1".into(),
                checked: Checked::default(),
                findings: vec![
                    Finding::new(
                        Area::Cis,
                        Severity::Failure,
                        "1.2.15",
                        "profiling <on> & \"x\"",
                    ),
                    Finding::new(Area::Certificates, Severity::Warning, "/a.crt", "expires"),
                ],
            }],
        };
        let xml = render(&report).unwrap();
        assert!(xml.contains("name=\"cis 1.2.15\""), "{xml}");
        assert!(
            xml.contains("profiling &lt;on&gt; &amp; &quot;x&quot;"),
            "{xml}"
        );
        assert!(xml.contains("type=\"warning\""), "{xml}");
        assert!(xml.contains("<testcase name=\"drift\""), "{xml}");
        assert!(xml.contains("failures=\"2\""), "{xml}");
    }
}
