//! The hostile-value units of `crate::hostile`, read back by systemd itself
//! on a lab host: each is loaded (never started) and its command line and
//! description are asked over D-Bus, which gives the argv systemd would
//! execute, exactly.

use std::collections::BTreeMap;

use rampart::render;

use super::{lock, main_lab};
use crate::hostile::{marked, parse_unit, split_command, FIELDS, HOSTILE};
use crate::render::fake_pki;

/// A unit name as a D-Bus object path label (systemd's bus_label_escape).
fn bus_label(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

/// What a unit says, as systemd reads it: its command line (empty for a
/// timer) and its description.
type Read = (Vec<String>, String);

/// The expected reading of `unit`, the marker of `field` replaced by `value`.
fn meant(unit: &str, marker: &str, value: &str) -> Read {
    let mut argv = Vec::new();
    let mut description = String::new();
    for (_, k, v) in parse_unit(unit) {
        match k.as_str() {
            "ExecStart" => {
                argv = split_command(&v)
                    .into_iter()
                    .map(|w| w.replace(marker, value))
                    .collect()
            }
            "Description" => description = v.replace("%%", "%").replace(marker, value),
            _ => {}
        }
    }
    (argv, description)
}

#[test]
fn lab_hostile_values_read_back_by_systemd_as_meant() {
    let Some(lab) = main_lab() else { return };
    let _guard = lock();
    let base = marked();
    let pki = fake_pki(&base);
    let host = "cp1";
    let baseline = render::render(&base, &pki).unwrap();
    let units_of = |bundle: &render::Bundle| -> Vec<(String, String)> {
        bundle.hosts[host]
            .files
            .iter()
            .filter(|f| f.path.starts_with("/etc/systemd/system/"))
            .map(|f| {
                (
                    f.path.clone(),
                    String::from_utf8(f.contents.bytes().to_vec()).unwrap(),
                )
            })
            .collect()
    };
    let base_units: BTreeMap<String, String> = units_of(&baseline).into_iter().collect();

    // Every distinct unit text a hostile value renders to, with what it must read as.
    let mut cases: BTreeMap<String, Read> = BTreeMap::new();
    for field in FIELDS {
        for value in HOSTILE {
            let mut inv = base.clone();
            (field.set)(&mut inv, value);
            let Ok(bundle) = render::render(&inv, &pki) else {
                continue;
            };
            for (path, text) in units_of(&bundle) {
                let want = meant(&base_units[&path], field.marker, value);
                if let Some(prev) = cases.insert(text, want.clone()) {
                    assert_eq!(prev, want, "one text, two meanings");
                }
            }
        }
    }
    assert!(cases.len() > 20, "{} cases", cases.len());

    let root = &lab.hosts[0].root;
    let dir = root.join("etc/systemd/system");
    let mut names = Vec::new();
    for (i, text) in cases.keys().enumerate() {
        let kind = if text.contains("\n[Timer]\n") {
            "timer"
        } else {
            "service"
        };
        let name = format!("rampart-hostile-{i}.{kind}");
        std::fs::write(dir.join(&name), text).unwrap();
        names.push(name);
    }
    let mut script = String::from("set -u\nsystemctl daemon-reload\n");
    for name in &names {
        let path = format!("/org/freedesktop/systemd1/unit/{}", bus_label(name));
        script += &format!(
            "printf '%s\\t%s\\t' {name} \"$(systemctl show -p LoadState --value {name})\"\n\
             busctl --json=short get-property org.freedesktop.systemd1 {path} org.freedesktop.systemd1.Unit Description | tr -d '\\n'\n\
             printf '\\t'\n"
        );
        if name.ends_with(".service") {
            script += &format!(
                "busctl --json=short get-property org.freedesktop.systemd1 {path} org.freedesktop.systemd1.Service ExecStart | tr -d '\\n'\n"
            );
        }
        script += "echo\n";
    }
    std::fs::write(root.join("root/hostile-read.sh"), &script).unwrap();
    let out = lab.ssh_ok(0, "sh /root/hostile-read.sh");
    let cleanup = lab.ssh(
        0,
        "rm -f /etc/systemd/system/rampart-hostile-*.service /etc/systemd/system/rampart-hostile-*.timer /root/hostile-read.sh; systemctl daemon-reload",
    );
    assert!(cleanup.status.success());

    let by_name: BTreeMap<&String, &Read> = names.iter().zip(cases.values()).collect();
    let mut checked = 0;
    for line in out.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, load, description) = (cols[0], cols[1], cols[2]);
        let want = by_name[&name.to_string()];
        assert_eq!(load, "loaded", "{name} did not load");
        let d: serde_json::Value = serde_json::from_str(description).unwrap();
        assert_eq!(d["data"].as_str().unwrap(), want.1, "{name}: Description");
        if let Some(exec) = cols.get(3).filter(|c| !c.is_empty()) {
            let e: serde_json::Value = serde_json::from_str(exec).unwrap();
            let commands = e["data"].as_array().unwrap();
            assert_eq!(
                commands.len(),
                1,
                "{name}: one command line, not {commands:?}"
            );
            // systemd keeps `$$` in the stored argv and turns it into `$` when
            // it executes (systemd.service(5): "$$" passes a literal dollar).
            let argv: Vec<String> = commands[0][1]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().replace("$$", "$"))
                .collect();
            assert_eq!(argv, want.0, "{name}: systemd's argv");
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        names.iter().filter(|n| n.ends_with(".service")).count()
    );
    eprintln!(
        "hostile: {} distinct units loaded by systemd, {checked} command lines read back over D-Bus as meant",
        names.len()
    );
}
