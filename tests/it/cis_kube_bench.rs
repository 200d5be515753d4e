//! The kube-bench configuration we ship (docs/kube-bench/config.yaml): on every host of a
//! rendered bundle, each `$variable` kube-bench would substitute into the cis-1.12 checks
//! resolves to a file the bundle installs or a process its units start, and the roles
//! agree with the self-check's (`ROLE_OVERRIDES`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use rampart::cis::host::{HostView, ROLE_OVERRIDES};
use rampart::cis::{targets_of, Benchmark, Target};
use rampart::render::{HostBundle, Service};
use serde_yaml::Value;

use crate::cis::{rendered_bundles, shared_cis};

/// kube-bench's kinds of substitution: `$<component><suffix>`, from these config keys
/// (candidates, then default), as in kube-bench's `cmd/util.go` `TypeMap`.
const FILE_KINDS: &[(&str, &str, &str)] = &[
    ("conf", "confs", "defaultconf"),
    ("svc", "svc", "defaultsvc"),
    ("kubeconfig", "kubeconfig", "defaultkubeconfig"),
    ("cafile", "cafile", "defaultcafile"),
    ("datadir", "datadirs", "defaultdatadir"),
];

fn config() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/kube-bench/config.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// What kube-bench substitutes on `host` for one section (`master`, `node`, …):
/// variable name → value, or `None` where it would fall back to a path or name that does
/// not exist there (the check would then inspect nothing).
fn substitutions(cfg: &Value, section: &str, host: &HostView) -> Vec<(String, Option<String>)> {
    let sec = &cfg[section];
    let mut out = Vec::new();
    for component in strings(&sec["components"]) {
        let c = &sec[component.as_str()];
        let bins = strings(&c["bins"]);
        if !bins.is_empty() {
            // verifyBin: `ps -C FIRSTWORD` (the kernel's 15-character name) lists the process.
            let comm15 = |s: &str| s.chars().take(15).collect::<String>();
            let running = bins.into_iter().find(|b| {
                host.processes
                    .iter()
                    .any(|p| comm15(&p.comm) == comm15(b) && p.comm.starts_with(b.as_str()))
            });
            out.push((format!("{component}bin"), running));
        }
        for (suffix, many, default) in FILE_KINDS {
            let candidates = strings(&c[*many]);
            let dflt = c[*default].as_str();
            if candidates.is_empty() && dflt.is_none() {
                continue;
            }
            let found = candidates
                .into_iter()
                .chain(dflt.map(String::from))
                .find(|p| host.stat(p).is_some());
            out.push((format!("{component}{suffix}"), found));
        }
    }
    out
}

/// `$name` occurrences in one of kube-bench's check files, but for the audits' own shell
/// loop variables (`for adminconf in …`), which kube-bench leaves alone.
fn variables(text: &str) -> BTreeSet<String> {
    let shell: BTreeSet<&str> = text
        .split("for ")
        .skip(1)
        .filter_map(|rest| rest.split_once(" in ").map(|(name, _)| name.trim()))
        .collect();
    let mut vars = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        if !name.is_empty() && !shell.contains(name.as_str()) {
            vars.insert(name);
        }
    }
    vars
}

/// The config section whose checks a host runs, by benchmark target.
fn section(t: Target) -> &'static str {
    match t {
        Target::Master => "master",
        Target::Etcd => "etcd",
        Target::Controlplane => "controlplane",
        Target::Node => "node",
        Target::Policies => "policies",
    }
}

/// Variables that legitimately resolve to nothing on some hosts. The master section's
/// etcd file checks assume etcd is stacked; with an external etcd the control-plane host
/// has no etcd unit or data dir (the self-check evaluates them on the etcd members
/// instead; docs/cis.md).
fn not_applicable(section: &str, var: &str, hb: &HostBundle) -> bool {
    section == "master" && var.starts_with("etcd") && !hb.services.contains(&Service::Etcd)
}

#[test]
fn kube_bench_config_resolves_every_cis_variable_on_rendered_hosts() {
    let Some(dir) = shared_cis("kube_bench_config_resolves_every_cis_variable_on_rendered_hosts")
    else {
        return;
    };
    let cfg = config();
    let roles = Default::default();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (inventory, bundle) in rendered_bundles() {
        for (name, hb) in &bundle.hosts {
            let view = HostView::new(hb, &roles);
            for target in targets_of(hb) {
                let sec = section(target);
                let text = std::fs::read_to_string(dir.join(format!("{sec}.yaml"))).unwrap();
                let subs = substitutions(&cfg, sec, &view);
                for var in variables(&text) {
                    seen.insert(var.clone());
                    match subs.iter().find(|(v, _)| *v == var) {
                        None => problems.push(format!(
                            "{inventory}/{name} [{sec}]: ${var} is not in the config"
                        )),
                        Some((_, None)) if !not_applicable(sec, &var, hb) => problems.push(
                            format!("{inventory}/{name} [{sec}]: ${var} finds nothing on the host"),
                        ),
                        _ => {}
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check files were read: the roles the issue names are among them.
    for v in [
        "apiserverconf",
        "kubeletsvc",
        "etcddatadir",
        "kubeletcafile",
        "apiserverbin",
    ] {
        assert!(seen.contains(v), "${v} not found in the cis-1.12 checks");
    }
}

/// The self-check resolves roles as `rampart cis check` would see them with this config:
/// every override is what the config names, and on every rendered host each role the
/// config resolves is the file the self-check inspects.
#[test]
fn kube_bench_config_agrees_with_the_self_checks_roles() {
    let cfg = config();
    for (role, path) in ROLE_OVERRIDES {
        let mut named = 0;
        for sec in ["master", "etcd", "node"] {
            for component in strings(&cfg[sec]["components"]) {
                for (suffix, many, default) in FILE_KINDS {
                    if format!("{component}{suffix}") != *role {
                        continue;
                    }
                    let c = &cfg[sec][component.as_str()];
                    if c.get(*many).is_none() && c.get(*default).is_none() {
                        continue; // this section's component does not name the file
                    }
                    assert_eq!(
                        strings(&c[*many]),
                        [path.to_string()],
                        "{sec}.{component}.{many}"
                    );
                    assert_eq!(
                        c[*default].as_str(),
                        Some(*path),
                        "{sec}.{component}.{default}"
                    );
                    named += 1;
                }
            }
        }
        assert!(named > 0, "${role} is overridden but not in the config");
    }
    let builtin = Benchmark::builtin();
    for (inventory, bundle) in rendered_bundles() {
        for (name, hb) in &bundle.hosts {
            let view = HostView::new(hb, &builtin.roles);
            for target in targets_of(hb) {
                for (var, found) in substitutions(&cfg, section(target), &view) {
                    // etcd's data dir: the self-check reads etcd's --data-dir first, as the
                    // audit does; the role is only its fallback.
                    if var == "etcddatadir" || !builtin.roles.contains_key(&var) {
                        continue;
                    }
                    let Some(found) = found else { continue };
                    assert_eq!(
                        view.role_path(&var).as_deref(),
                        Some(found.as_str()),
                        "{inventory}/{name}: ${var}"
                    );
                }
            }
        }
    }
}
