//! The built-in CIS v1.12 catalogue against kube-bench's own definitions in
//! `../shared/cis-1.12/` (present in CI): the digest field by field, and the check files
//! themselves for what they state directly, so neither can change without the other.

use rampart::cis::{Benchmark, TestItem};
use serde_yaml::Value;

use crate::cis::shared_cis;

/// The built-in catalogue says what kube-bench's definitions say, check by check and field
/// by field, so neither can change without the other (issue 13).
#[test]
fn builtin_catalogue_matches_kube_bench_definitions() {
    let Some(dir) = shared_cis("builtin_catalogue_matches_kube_bench_definitions") else {
        return;
    };
    let theirs = Benchmark::load(&dir.join("checks.json")).unwrap();
    let ours = Benchmark::builtin();
    assert_eq!(ours.benchmark, theirs.benchmark);
    let ids = |b: &Benchmark| b.checks.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(ours), ids(&theirs), "check ids or their order differ");
    for (o, t) in ours.checks.iter().zip(&theirs.checks) {
        let id = &o.id;
        assert_eq!(o.text, t.text, "{id}: text");
        assert_eq!(o.target, t.target, "{id}: target");
        assert_eq!(o.automated, t.automated, "{id}: automated");
        assert_eq!(o.scored, t.scored, "{id}: scored");
        assert_eq!(o.check_type, t.check_type, "{id}: type");
        assert_eq!(o.tests, t.tests, "{id}: tests");
        assert_eq!(o.bin_op, t.bin_op, "{id}: bin_op");
        assert_eq!(
            o.use_multiple_values, t.use_multiple_values,
            "{id}: use_multiple_values"
        );
        assert_eq!(
            o.audit_emulation, t.audit_emulation,
            "{id}: audit_emulation"
        );
        assert_eq!(
            o.audit_config_emulation, t.audit_config_emulation,
            "{id}: audit_config_emulation"
        );
        assert_eq!(o.file_role, t.file_role, "{id}: file_role");
    }
    assert_eq!(
        ours.roles, theirs.roles,
        "file roles (candidates, defaults)"
    );
}

/// A YAML scalar as kube-bench's Go structs read it into a string field.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Ids, titles, types, scoring and tests as kube-bench's check files state them.
#[test]
fn builtin_catalogue_matches_kube_bench_check_files() {
    let Some(dir) = shared_cis("builtin_catalogue_matches_kube_bench_check_files") else {
        return;
    };
    let ours = Benchmark::builtin();
    let mut seen = Vec::new();
    for file in ["master", "etcd", "controlplane", "node", "policies"] {
        let text = std::fs::read_to_string(dir.join(format!("{file}.yaml"))).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let groups = doc["groups"].as_sequence().unwrap();
        for check in groups
            .iter()
            .flat_map(|g| g["checks"].as_sequence().unwrap())
        {
            let id = scalar(&check["id"]);
            let o = ours
                .checks
                .iter()
                .find(|c| c.id == id)
                .unwrap_or_else(|| panic!("{file}.yaml: {id} missing from the catalogue"));
            assert_eq!(
                serde_yaml::to_value(o.target).unwrap(),
                doc["type"],
                "{id}: target"
            );
            assert_eq!(o.text, scalar(&check["text"]), "{id}: text");
            assert_eq!(o.check_type, scalar(&check["type"]), "{id}: type");
            assert_eq!(
                o.scored,
                check["scored"].as_bool().unwrap_or(false),
                "{id}: scored"
            );
            let tests = &check["tests"];
            let bin_op = tests["bin_op"].as_str().unwrap_or("and");
            assert_eq!(
                serde_yaml::to_value(o.bin_op).unwrap(),
                bin_op,
                "{id}: bin_op"
            );
            let multiple = check["use_multiple_values"].as_bool().unwrap_or(false);
            assert_eq!(o.use_multiple_values, multiple, "{id}: use_multiple_values");
            let items: Vec<TestItem> = tests["test_items"]
                .as_sequence()
                .map(|s| s.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|t| TestItem {
                    flag: scalar(&t["flag"]),
                    path: scalar(&t["path"]),
                    env: scalar(&t["env"]),
                    set: t["set"].as_bool().unwrap_or(true),
                    op: scalar(&t["compare"]["op"]),
                    value: scalar(&t["compare"]["value"]),
                })
                .collect();
            assert_eq!(o.tests, items, "{id}: tests");
            seen.push(id);
        }
    }
    let ours_ids: Vec<&String> = ours.checks.iter().map(|c| &c.id).collect();
    assert_eq!(
        ours_ids,
        seen.iter().collect::<Vec<_>>(),
        "check ids or their order"
    );
}
