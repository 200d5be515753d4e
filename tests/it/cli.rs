//! The command line as a user's shell sees it: exit codes and output
//! plumbing that no library test reaches.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `rampart check … | true` once ended in a panic (std's println! on a
/// closed pipe). A reader that went away now ends rampart quietly.
#[test]
fn a_closed_stdout_ends_quietly() {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created by pipe(2) and are owned here only.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    for args in [
        vec!["check", "-i", "inventories/ha.yaml"],
        vec!["check", "-i", "inventories/ha.yaml", "--output", "json"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(&args)
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer.try_clone().unwrap()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// A missing inventory file once exited 3, "invalid inventory"; it is an
/// I/O failure (1), and the message names the file.
#[test]
fn a_missing_inventory_file_is_an_io_failure() {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["check", "-i", "/nonexistent/inventory.yaml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read inventory /nonexistent/inventory.yaml")
            && err.contains("No such file"),
        "{err}"
    );
}

/// `apply`'s phase list is the one definition of its phases: the table in
/// docs/apply.md (names, order, which can be skipped) and `--help` are read
/// against it, and `--skip-phases` refuses what it does not list, naming
/// what it does. Once the help offered `connect`, which the run refused.
#[test]
fn apply_phases_docs_and_help_come_from_the_phase_list() {
    let phases = rampart::actions::apply::phase_catalogue();
    let docs = std::fs::read_to_string(format!("{ROOT}/docs/apply.md")).unwrap();
    let table: Vec<(String, String)> = docs
        .split("## What `apply` does, phase by phase")
        .nth(1)
        .expect("the phase section")
        .lines()
        .skip_while(|l| !l.starts_with("| ---"))
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cols: Vec<&str> = l.split(" | ").collect();
            // `name`, maybe with a note after it; or — when it cannot be skipped.
            let last = cols.last().unwrap().trim_end_matches(" |");
            let skip = last.split('`').nth(1).unwrap_or(last);
            (
                cols[0].trim_start_matches("| ").to_string(),
                skip.to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = phases
        .iter()
        .map(|p| {
            let skip = if p.skippable { p.name } else { "—" };
            (p.name.to_string(), skip.to_string())
        })
        .collect();
    assert_eq!(table, want, "docs/apply.md's phase table");

    let help = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["apply", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for p in &phases {
        let listed = help.lines().any(|l| {
            l.trim_start().starts_with(&format!("- {}:", p.name)) && l.trim_end().ends_with(p.title)
        });
        assert_eq!(listed, p.skippable, "{} in:\n{help}", p.name);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args([
            "apply",
            "-i",
            "inventories/ha.yaml",
            "--skip-phases",
            "connect",
        ])
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'connect'") && err.contains("preflight"),
        "{err}"
    );
}

/// Runs the built rampart in the repository with no terminal on stdin.
fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .env_remove("RAMPART_INVENTORY")
        .env_remove("RAMPART_STATE_DIR")
        .env_remove("RAMPART_IDENTITY")
        .output()
        .unwrap()
}

/// Usage errors exit 2, as the docs say: clap's own (an unknown flag, a
/// missing argument) and the ones rampart checks by hand after clap (a host
/// the inventory does not name, options that only make sense together),
/// which once exited 1 like a run-time failure.
#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check", "--no-such-flag"][..],
        &["check"],
        &["frobnicate"],
    ] {
        let out = rampart(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    }
    for (args, says) in [
        (
            &[
                "hosts",
                "trust",
                "-i",
                "inventories/ha.yaml",
                "--hosts",
                "nope",
            ][..],
            "unknown host `nope` in --hosts; the inventory names cp1",
        ),
        (
            &["hosts", "unlock", "-i", "inventories/ha.yaml", "nope"],
            "unknown host `nope` in HOST",
        ),
        (
            &["backup", "restore", "-i", "inventories/ha.yaml"],
            "which backup?",
        ),
        (
            &[
                "backup",
                "restore",
                "-i",
                "inventories/ha.yaml",
                "--rollback",
                "20261130T150000Z",
                "backup.db.age",
            ],
            "--rollback takes no backup file",
        ),
    ] {
        let out = rampart(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `apply --output json` printed nothing when it failed before a host was
/// planned (a connect failure, exit 9): every ending of `apply` and `plan`
/// now prints one JSON object with the error and the exit code.
#[test]
fn apply_json_reports_a_connect_failure() {
    let work = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing listens, connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let inv = work.path().join("inv.yaml");
    std::fs::write(
        &inv,
        format!(
            "cluster: {{name: solo, kubernetesVersion: \"1.34\"}}\n\
             ssh: {{user: root, knownHostsFile: {kh}}}\n\
             hosts:\n  - name: solo1\n    address: 127.0.0.1\n    roles: [etcd, control-plane, worker]\n    ssh: {{port: {port}}}\n",
            kh = work.path().join("known_hosts").display(),
        ),
    )
    .unwrap();
    let state = work.path().join("state");
    let run = |args: &[&str]| {
        let mut all = vec!["-i", inv.to_str().unwrap(), "--state-dir"];
        all.push(state.to_str().unwrap());
        Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(args)
            .args(&all)
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .env("RAMPART_PASSPHRASE", "correct horse")
            .env_remove("RAMPART_IDENTITY")
            .output()
            .unwrap()
    };
    let init = run(&["init"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for args in [
        &["apply", "--output", "json"][..],
        &["apply", "--dry-run", "--output", "json"],
        &["plan", "--output", "json"],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(9), "{args:?}: {err}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {err}"));
        assert_eq!(json["result"], "failed", "{json}");
        assert_eq!(json["exitCode"], 9, "{json}");
        assert_eq!(json["phase"], "connect", "{json}");
        let error = json["error"].as_str().unwrap();
        assert!(
            error.contains("solo1: cannot connect to 127.0.0.1:"),
            "{error}"
        );
    }
    // Before the network too: no state dir is a failure with its JSON.
    std::fs::remove_dir_all(&state).unwrap();
    let out = run(&["apply", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exitCode"], 1, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("no cluster state"),
        "{json}"
    );
    assert_eq!(json["hosts"], serde_json::json!([]), "{json}");
}
