//! Inventory loading: the examples load cleanly, every bad fixture fails with
//! exactly the expected message, and docs/inventory.md names every field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rampart::inventory::{self, LocalFiles, RawInventory};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Stands in for the admin's disk: only files under /keys/present and the lab's
/// key directory exist, so messages do not depend on the machine running the tests.
struct FakeFiles;

impl LocalFiles for FakeFiles {
    fn check_readable(&self, path: &Path) -> Result<(), String> {
        if path.starts_with("/keys/present") || path.starts_with("/var/lib/rampart-lab/ssh") {
            Ok(())
        } else {
            Err("No such file or directory (os error 2)".into())
        }
    }
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("tests/fixtures/inventories").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// Parses a fixture under a stable, machine-independent name (`bad/x.yaml`).
fn parse_fixture(file: &Path) -> Result<inventory::Loaded, inventory::InventoryError> {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap().file_name().unwrap();
    let shown = Path::new(dir).join(file.file_name().unwrap());
    inventory::parse_with(&text, &shown, &FakeFiles)
}

fn stem(file: &Path) -> String {
    file.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn bad_fixtures_fail_with_the_exact_message() {
    for file in fixtures("bad") {
        let err = match parse_fixture(&file) {
            Ok(_) => panic!("{} loaded but must fail", file.display()),
            Err(e) => e.to_string(),
        };
        insta::with_settings!({
            snapshot_path => Path::new(ROOT).join("tests/fixtures/inventories/bad"),
            prepend_module_to_snapshot => false,
            omit_expression => true,
            info => &stem(&file),
        }, {
            insta::assert_snapshot!(stem(&file), err);
        });
    }
}

#[test]
fn warning_fixtures_load_with_the_exact_warnings() {
    for file in fixtures("warn") {
        let loaded =
            parse_fixture(&file).unwrap_or_else(|e| panic!("{} must load: {e}", file.display()));
        assert!(
            !loaded.warnings.is_empty(),
            "{}: no warnings",
            file.display()
        );
        let text: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        insta::with_settings!({
            snapshot_path => Path::new(ROOT).join("tests/fixtures/inventories/warn"),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(stem(&file), text.join("\n"));
        });
    }
}

#[test]
fn example_inventories_load_without_errors() {
    for name in ["single-node.yaml", "ha.yaml"] {
        let path = Path::new(ROOT).join("inventories").join(name);
        let loaded = inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
    }
}

#[test]
fn example_shapes_match_their_description() {
    let load = |name: &str| {
        let path = Path::new(ROOT).join("inventories").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        inventory::parse_with(&text, &path, &FakeFiles)
            .unwrap_or_else(|e| panic!("{e}"))
            .inventory
    };
    let solo = load("single-node.yaml");
    assert_eq!(solo.hosts.len(), 1);
    assert_eq!(solo.hosts[0].roles.to_string(), "etcd,control-plane,worker");
    assert_eq!(solo.cluster.server_url(), "https://192.168.10.20:6443");

    let ha = load("ha.yaml");
    assert_eq!(ha.etcd_members().count(), 3);
    assert_eq!(ha.control_planes().count(), 3);
    assert_eq!(ha.hosts.iter().filter(|h| h.roles.worker).count(), 3);
    assert_eq!(ha.cluster.server_url(), "https://10.20.0.10:6443");
    assert!(ha.tenants.iter().all(|t| !t.members.is_empty()));
    let backups = ha.backups.clone().expect("ha.yaml has backups");
    assert!(backups.recipients[0].starts_with("age1"));
    let target = backups.target.expect("ha.yaml copies backups");
    assert_eq!(target.host, "vault1");
    assert_eq!(target.user, "rampart-backup");
    assert!(ha.host("vault1").unwrap().roles.backup_target);

    let lab = load("lab.yaml");
    let addrs: Vec<String> = lab.hosts.iter().map(|h| h.address.to_string()).collect();
    assert_eq!(
        addrs,
        ["10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14"]
    );
    let ssh = &lab.hosts[3].ssh;
    assert_eq!(ssh.user, "root");
    assert_eq!(
        ssh.identity_file.as_deref(),
        Some(Path::new("/var/lib/rampart-lab/ssh/id_ed25519"))
    );
    assert_eq!(
        ssh.known_hosts_file.as_deref(),
        Some(Path::new("/var/lib/rampart-lab/ssh/known_hosts"))
    );
}

/// lab.yaml names a key the lab creates later: with the key it loads (warning
/// only about the endpoint), without it the only error is that key.
#[test]
fn lab_inventory_needs_only_the_lab_key() {
    let path = Path::new(ROOT).join("inventories/lab.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shown = Path::new("inventories/lab.yaml");
    let loaded = inventory::parse_with(&text, shown, &FakeFiles).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["warning: cluster.apiEndpoint (line 15): 10.77.0.11 is the address of cp1 alone: when it is down, nodes lose the API; use a VIP or load balancer"]
    );

    struct NoFiles;
    impl LocalFiles for NoFiles {
        fn check_readable(&self, _: &Path) -> Result<(), String> {
            Err("No such file or directory (os error 2)".into())
        }
    }
    let err = inventory::parse_with(&text, shown, &NoFiles)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "inventories/lab.yaml: 2 problems found\n  \
         error: ssh.identityFile (line 23): cannot read identity file /var/lib/rampart-lab/ssh/id_ed25519: No such file or directory (os error 2); create it (ssh-keygen -t ed25519 -f /var/lib/rampart-lab/ssh/id_ed25519) or fix the path\n  \
         warning: cluster.apiEndpoint (line 15): 10.77.0.11 is the address of cp1 alone: when it is down, nodes lose the API; use a VIP or load balancer"
    );
}

#[test]
fn relative_identity_files_resolve_against_the_inventory_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id_test"), "key").unwrap();
    let text = "cluster: {name: t, kubernetesVersion: '1.33'}\n\
                ssh: {identityFile: id_test}\n\
                hosts: [{name: cp1, address: 10.0.0.1, roles: [etcd, control-plane, worker]}]\n";
    let inv_path = dir.path().join("inventory.yaml");
    let loaded = inventory::parse(text, &inv_path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.inventory.hosts[0].ssh.identity_file.as_deref(),
        Some(dir.path().join("id_test").as_path())
    );
}

/// Every key of a fully populated schema must be documented: the doc cannot drift.
#[test]
fn docs_mention_every_schema_field() {
    let full = std::fs::read_to_string(Path::new(ROOT).join("docs/inventory.md")).unwrap();
    // The doc's full example is itself a complete inventory: it must parse
    // (serde rejects unknown fields) and set every field, so keys are collected from it.
    let example = full
        .split("<!-- full-example -->")
        .nth(1)
        .and_then(|s| s.split("```yaml").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/inventory.md has a ```yaml block after <!-- full-example -->");
    // The example is also a valid inventory (any identity file counts as present).
    struct AllReadable;
    impl LocalFiles for AllReadable {
        fn check_readable(&self, _: &Path) -> Result<(), String> {
            Ok(())
        }
    }
    let loaded = inventory::parse_with(example, Path::new("docs/inventory.md"), &AllReadable)
        .unwrap_or_else(|e| panic!("the full example does not load: {e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let raw: RawInventory = serde_yaml::from_str(example).unwrap_or_else(|e| panic!("{e}"));
    let value = serde_yaml::to_value(&raw).unwrap();
    let (mut set, mut null) = (BTreeSet::new(), BTreeSet::new());
    collect_keys(&value, "", &mut set, &mut null);
    // A field left out of the example serializes as null; one set anywhere is covered
    // (e.g. `user` on one member, `group` on another).
    let unset: Vec<&String> = null.difference(&set).collect();
    assert!(
        unset.is_empty(),
        "fields not set in the full example: {unset:?}"
    );
    for field in &set {
        assert!(
            full.contains(&format!("`{field}`")),
            "docs/inventory.md does not document `{field}`"
        );
    }
}

/// Field names with a value somewhere (`set`) and those that were null (`null`).
fn collect_keys(
    v: &serde_yaml::Value,
    at: &str,
    set: &mut BTreeSet<String>,
    null: &mut BTreeSet<String>,
) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            // Free-form maps (labels, sha256) have the admin's keys, not schema fields.
            if at == "labels" || at == "sha256" {
                return;
            }
            for (k, v) in m {
                let k = k.as_str().unwrap_or("?").to_string();
                if v.is_null() {
                    null.insert(k.clone());
                } else {
                    set.insert(k.clone());
                }
                collect_keys(v, &k, set, null);
            }
        }
        serde_yaml::Value::Sequence(s) => {
            for item in s {
                collect_keys(item, at, set, null);
            }
        }
        _ => {}
    }
}
