//! Cleanup when systemd stops the job (SIGTERM on `systemctl stop` or at
//! `TimeoutStartSec=`), or on Ctrl-C when run by hand; and, through
//! [`exit_on_signal`], when sshd ends `agent receive` (SIGHUP or SIGTERM as the
//! session goes away).
//!
//! A Rust process killed by a signal runs no destructors, so the plaintext
//! guard alone would leave the snapshot in `.work` until the next run. Here the
//! signals are blocked in every thread and one thread waits for them with
//! `sigwait`, which may then do ordinary I/O (a signal handler may not). Child
//! processes start with an empty signal mask (std resets it), so etcdctl still
//! dies on systemd's SIGTERM as it should.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use time::OffsetDateTime;

use super::fsutil::write_atomic;
use super::{LastRun, LAST_RUN};

/// Starts the watcher for `dir`. Call before any other thread is spawned, so
/// every thread inherits the blocked mask. `now` stamps the last-run record.
pub fn cleanup_on_signal(dir: &Path, now: OffsetDateTime) {
    let dir: PathBuf = dir.to_path_buf();
    let now = super::snapshot::rfc3339(now);
    exit_on_signal(move |sig| {
        remove_plaintext(&dir);
        // Stopped while copying to the target: the backup here is complete.
        let written = WRITTEN.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let error = match &written {
            Some(file) => format!(
                "interrupted by signal {sig} while copying {file} to the backup target; the backup here is complete"
            ),
            None => format!(
                "interrupted by signal {sig} before the backup was complete; no backup was written"
            ),
        };
        let record = LastRun {
            time: now,
            ok: false,
            error: Some(error.clone()),
            file: written,
            copy: None,
        };
        if let Ok(json) = serde_json::to_vec_pretty(&record) {
            let _ = write_atomic(&dir.join(LAST_RUN), &json);
        }
        eprintln!("error: {error}; plaintext removed");
    });
}

/// The backup this run completed, once it is complete (see [`note_written`]).
static WRITTEN: Mutex<Option<String>> = Mutex::new(None);

/// Tells the watcher that `file` is complete, so an interruption after this
/// point (during the copy to the target) is not recorded as a lost backup.
pub(crate) fn note_written(file: &str) {
    *WRITTEN.lock().unwrap_or_else(|p| p.into_inner()) = Some(file.to_string());
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and so in every thread it
/// spawns later) and starts a thread that, when one arrives, runs `cleanup`
/// and exits with 128 + the signal, as a process killed by it would.
pub(crate) fn exit_on_signal(cleanup: impl FnOnce(libc::c_int) + Send + 'static) {
    // SAFETY: plain libc calls on a local sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised above; sigwait writes one int.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        cleanup(sig);
        std::process::exit(128 + sig);
    });
}

/// Deletes the work dir and any half-written ciphertext.
pub(crate) fn remove_plaintext(dir: &Path) {
    let _ = fs::remove_dir_all(dir.join(super::snapshot::WORK));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".db.age.tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
