//! kube-bench's semantics on small literal inputs, mirroring check/test_test.go.

use super::*;

fn item(flag: &str, set: bool, op: &str, value: &str) -> TestItem {
    TestItem {
        flag: flag.into(),
        set,
        op: op.into(),
        value: value.into(),
        ..TestItem::default()
    }
}

fn cmd(t: &TestItem, s: &str) -> bool {
    execute_item(t, Source::Command, s, false).pass
}

#[test]
fn compare_op_eq_and_noteq_fold_booleans_only() {
    assert_eq!(
        compare_op("eq", "", "", "x"),
        ("'x' is equal to ''".into(), true)
    );
    assert!(compare_op("eq", "TRUE", "true", "x").1);
    assert!(!compare_op("eq", "false", "true", "x").1);
    assert!(!compare_op("eq", "Kubelet", "kubelet", "x").1);
    assert!(!compare_op("eq", "", "KubeletConfiguration", "x").1);
    assert!(!compare_op("noteq", "", "", "x").1);
    assert!(compare_op("noteq", "false", "true", "x").1);
    assert!(compare_op("noteq", "KubeletConfiguration", "", "x").1);
}

#[test]
fn compare_op_numbers() {
    let (msg, ok) = compare_op("gt", "", "", "x");
    assert!(!ok && msg.starts_with("Invalid Number(s) used for comparison"));
    assert!(!compare_op("gt", "0", "0", "x").1);
    assert!(compare_op("gte", "30", "30", "x").1);
    assert!(compare_op("gte", " 40 ", "30", "x").1);
    assert!(!compare_op("gte", "5", "10", "x").1);
    assert!(compare_op("lt", "1", "2", "x").1);
    assert!(compare_op("lte", "2", "2", "x").1);
    assert!(!compare_op("lte", "3", "2", "x").1);
    assert!(!compare_op("gte", "abc", "1", "x").1);
}

#[test]
fn compare_op_has_nothave_regex() {
    assert!(compare_op("has", "Node,RBAC", "RBAC", "x").1);
    assert!(!compare_op("has", "Node", "RBAC", "x").1);
    assert!(compare_op("nothave", "Node,RBAC", "AlwaysAllow", "x").1);
    assert!(!compare_op("nothave", "AlwaysAllow", "AlwaysAllow", "x").1);
    assert!(compare_op("regex", "1.12.7", r"^1\.12", "x").1);
    assert!(!compare_op("regex", "1.11", r"^1\.12", "x").1);
    assert!(!compare_op("regex", "x", "(", "x").1);
}

#[test]
fn compare_op_valid_elements() {
    let good = "TLS_A,TLS_B,TLS_C";
    assert!(compare_op("valid_elements", "TLS_A,TLS_B,", good, "x").1);
    assert!(compare_op("valid_elements", " TLS_A, TLS_B, ", good, "x").1);
    assert!(!compare_op("valid_elements", "TLS_A,blah", good, "x").1);
    assert!(!compare_op("valid_elements", "blah", "", "x").1);
    assert!(!compare_op("valid_elements", "", good, "x").1);
    assert!(compare_op("valid_elements", "", "", "x").1);
}

#[test]
fn compare_op_bitmask_is_more_restrictive_or_equal() {
    assert!(compare_op("bitmask", "600", "600", "permissions").1);
    assert!(compare_op("bitmask", "400", "600", "permissions").1);
    assert!(compare_op("bitmask", "640", "644", "permissions").1);
    assert!(!compare_op("bitmask", "644", "600", "permissions").1);
    assert!(!compare_op("bitmask", "700", "600", "permissions").1);
    let (msg, ok) = compare_op("bitmask", "abc", "600", "permissions");
    assert!(!ok && msg.contains("Not numeric"));
    assert_eq!(
        compare_op("bitmask", "644", "600", "permissions").0,
        "permissions has permissions 644, expected 600 or more restrictive"
    );
}

#[test]
fn unknown_op_fails_without_words() {
    assert_eq!(
        compare_op("blah", "foo", "bar", "x"),
        (String::new(), false)
    );
}

#[test]
fn flag_values_follow_equals_colon_space_or_default_to_true() {
    assert_eq!(flag_value("--a", "", "x --a=1 --b").as_deref(), Some("1"));
    assert_eq!(
        flag_value("some-arg", "eq", "k some-arg: some-val --x").as_deref(),
        Some("some-val")
    );
    assert_eq!(
        flag_value("some-arg", "eq", "k some-arg:some-val").as_deref(),
        Some("some-val")
    );
    assert_eq!(
        flag_value(
            "--peer-client-cert-auth",
            "eq",
            "--abc --peer-client-cert-auth --efg"
        )
        .as_deref(),
        Some("true")
    );
    assert_eq!(
        flag_value("--port", "eq", "k --port 6443 --x").as_deref(),
        Some("6443")
    );
    // Without a comparison the space form is not read: "--bool-flag next" is ambiguous.
    assert_eq!(
        flag_value("--port", "", "k --port 6443").as_deref(),
        Some("true")
    );
    assert_eq!(
        flag_value("root:root", "", "root:root").as_deref(),
        Some("root:root")
    );
    assert_eq!(flag_value("--a", "", ""), None);
    assert_eq!(flag_value("--absent", "", "k --a=1"), None);
}

#[test]
fn flags_match_as_substrings_like_kube_bench() {
    // A flag is "found" inside a longer flag that starts with it: kube-bench does this.
    let t = item("--audit-log-path", true, "", "");
    assert!(cmd(&t, "kube-apiserver --audit-log-path-prefix=/x"));
    let unset = item("--token-auth-file", false, "", "");
    assert!(!cmd(&unset, "kube-apiserver --token-auth-file-disabled"));
}

#[test]
fn test_items_from_kube_bench_cases() {
    assert!(cmd(
        &item("--allow-privileged", true, "eq", "false"),
        "2:45 kube-apiserver --allow-privileged=false --option1=20,30,40"
    ));
    assert!(cmd(
        &item("--insecure-port", true, "eq", "0"),
        "./kube-apiserver --insecure-port=0 --anonymous-auth"
    ));
    assert!(cmd(
        &item("--audit-log-maxage", true, "gte", "30"),
        "kube-apiserver --secure-port=0 --audit-log-maxage=40 --option"
    ));
    assert!(cmd(
        &item("--admission-control", true, "has", "RBAC"),
        "kube-apiserver --option --admission-control=WebHook,RBAC"
    ));
    assert!(cmd(
        &item("--admission-control", true, "nothave", "AlwaysAdmit"),
        "kube-apiserver --admission-control=WebHook,RBAC"
    ));
    assert!(cmd(
        &item("--kubelet-client-key", false, "", ""),
        "--kubelet-clientkey=foo --kubelet-client-certificate=bar"
    ));
    assert!(cmd(
        &item("permissions", true, "bitmask", "644"),
        "permissions=644"
    ));
    assert!(!cmd(
        &item("permissions", true, "bitmask", "600"),
        "permissions=644"
    ));
    assert!(cmd(
        &item("--peer-client-cert-auth", true, "eq", "true"),
        "--abc=true --peer-client-cert-auth --efg=false"
    ));
    assert!(!cmd(
        &item("--peer-client-cert-auth", true, "eq", "true"),
        "--abc --peer-client-cert-auth=false --efg"
    ));
}

fn path_item(path: &str, op: &str, value: &str) -> TestItem {
    TestItem {
        path: path.into(),
        op: op.into(),
        value: value.into(),
        set: true,
        ..TestItem::default()
    }
}

#[test]
fn config_paths_read_json_and_yaml() {
    let cfg = |t: &TestItem, s: &str| execute_item(t, Source::Config, s, false);
    assert!(
        cfg(
            &path_item("{.readOnlyPort}", "eq", "15000"),
            "{\"readOnlyPort\": 15000}"
        )
        .pass
    );
    assert!(
        cfg(
            &path_item("{.readOnlyPort}", "eq", "15000"),
            "readOnlyPort: 15000"
        )
        .pass
    );
    assert!(
        cfg(
            &path_item("{.authentication.anonymous.enabled}", "eq", "false"),
            "authentication:\n  anonymous:\n    enabled: false"
        )
        .pass
    );
    assert!(cfg(&path_item("{.trueValue}", "", ""), "{\"trueValue\": true}").pass);
    let broken = cfg(
        &path_item("{.enabled}", "eq", "true"),
        "broken } yaml\nenabled: true",
    );
    assert!(!broken.pass && broken.error.is_some());
    assert!(!cfg(&path_item("{.missing}", "", ""), "{\"key\": \"value\"}").pass);
}

#[test]
fn env_values_are_the_rest_of_the_line() {
    assert_eq!(
        env_value("ETCD_AUTO_TLS", "A=1\nETCD_AUTO_TLS=false\n").as_deref(),
        Some("false")
    );
    assert_eq!(env_value("ETCD_AUTO_TLS", "ETCD_AUTO_TLS=\n"), None);
    assert_eq!(env_value("ETCD_AUTO_TLS", ""), None);
}

#[test]
fn multiple_values_require_every_line() {
    let t = item("permissions", true, "bitmask", "600");
    assert!(
        execute_item(
            &t,
            Source::Command,
            "permissions=600\npermissions=400\n",
            true
        )
        .pass
    );
    let r = execute_item(
        &t,
        Source::Command,
        "permissions=600\npermissions=644\npermissions=600",
        true,
    );
    assert!(!r.pass);
    assert_eq!(r.value, "644");
    // Without use_multiple_values only the first occurrence counts.
    assert!(
        execute_item(
            &t,
            Source::Command,
            "permissions=600\npermissions=644",
            false
        )
        .pass
    );
}

#[test]
fn command_line_flag_overrides_config_then_env_is_tried() {
    let t = TestItem {
        flag: "--read-only-port".into(),
        path: "{.readOnlyPort}".into(),
        set: true,
        op: "eq".into(),
        value: "0".into(),
        ..TestItem::default()
    };
    let out = |command: &str, config: Option<&str>| AuditOutputs {
        command: command.into(),
        config: config.map(String::from),
        env: String::new(),
    };
    // Flag wins even when the config says otherwise.
    let o = execute(
        std::slice::from_ref(&t),
        BinOp::And,
        false,
        &out("kubelet --read-only-port=0", Some("readOnlyPort: 10255")),
    );
    assert!(o.pass && o.items[0].source == Source::Command);
    // No flag: the config is used.
    let o = execute(
        std::slice::from_ref(&t),
        BinOp::And,
        false,
        &out("kubelet --config=/c", Some("readOnlyPort: 10255")),
    );
    assert!(!o.pass && o.items[0].source == Source::Config);
    assert_eq!(o.expected, "'{.readOnlyPort}' is equal to '0'");
    // An empty config output is not consulted.
    let o = execute(&[t], BinOp::And, false, &out("kubelet", Some("")));
    assert!(!o.pass && o.items[0].source == Source::Command);

    let e = TestItem {
        flag: "--client-cert-auth".into(),
        env: "ETCD_CLIENT_CERT_AUTH".into(),
        set: true,
        op: "eq".into(),
        value: "true".into(),
        ..TestItem::default()
    };
    let o = execute(
        &[e],
        BinOp::And,
        false,
        &AuditOutputs {
            command: "etcd --name=a".into(),
            config: None,
            env: "ETCD_CLIENT_CERT_AUTH=true\n".into(),
        },
    );
    assert!(o.pass && o.items[0].source == Source::Env);
}

#[test]
fn bin_op_and_or_combine_and_join_words() {
    let absent = item("--enable-admission-plugins", false, "", "");
    let nothave = item("--enable-admission-plugins", true, "nothave", "AlwaysAdmit");
    let out = AuditOutputs {
        command: "kube-apiserver --enable-admission-plugins=AlwaysAdmit".into(),
        ..AuditOutputs::default()
    };
    let o = execute(&[nothave.clone(), absent.clone()], BinOp::Or, false, &out);
    assert!(!o.pass);
    assert_eq!(
        o.expected,
        "'--enable-admission-plugins' does not have 'AlwaysAdmit' OR '--enable-admission-plugins' is not present"
    );
    let out = AuditOutputs {
        command: "kube-apiserver --x".into(),
        ..AuditOutputs::default()
    };
    assert!(execute(&[nothave.clone(), absent.clone()], BinOp::Or, false, &out).pass);
    assert!(!execute(&[nothave, absent], BinOp::And, false, &out).pass);
}

#[test]
fn file_not_found_is_a_flag_like_any_other() {
    let items = [
        item("root:root", true, "", ""),
        item("File not found", true, "", ""),
    ];
    let out = |s: &str| AuditOutputs {
        command: s.into(),
        ..AuditOutputs::default()
    };
    assert!(execute(&items, BinOp::Or, false, &out("File not found")).pass);
    assert!(execute(&items, BinOp::Or, false, &out("root:root")).pass);
    assert!(!execute(&items, BinOp::Or, false, &out("kube:root")).pass);
}
