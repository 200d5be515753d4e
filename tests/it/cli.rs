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
