//! Deleting plaintext when a signal stops the process: systemd's SIGTERM
//! (`systemctl stop`, `TimeoutStartSec=`), SIGHUP when the terminal goes away,
//! and Ctrl-C's SIGINT, for the scheduled job and `rampart backup verify`;
//! and, through [`exit_on_signal`], when sshd ends `agent receive` (SIGHUP or
//! SIGTERM as the session goes away).
//!
//! A Rust process killed by a signal runs no destructors, so drop guards alone
//! would leave the plaintext behind. Here the signals are blocked in every
//! thread and one thread waits for them with `sigwait`, which may then do
//! ordinary I/O (a signal handler may not). Child processes start with an empty
//! signal mask (std resets it), so etcdctl still dies on systemd's SIGTERM (or
//! the terminal's SIGINT) as it should.
//!
//! Whoever makes plaintext registers its path (`register_with`) for as long as it exists, so
//! the watcher needs to know nothing about the job or `verify`. SIGKILL cannot
//! be caught: the job clears its work dir at the start of the next run, and
//! `verify` clears scratch dirs whose owner is gone (see `verify`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use time::OffsetDateTime;

use super::fsutil::{remove_path, write_atomic};
use super::{LastRun, LAST_RUN};

/// Paths holding plaintext right now, by registration number.
static REGISTERED: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A path the watcher deletes if a signal comes; unregistered when dropped.
#[derive(Debug)]
pub(crate) struct Registration(u64);

/// Registers `path` (a file or a whole dir) and runs `make`, which creates
/// it, while holding the registry: the watcher, which takes the registry
/// before deleting, then finds either nothing made yet (and exits before
/// anything is) or the path registered. Registering after creating would
/// leave an instant where a signal finds plaintext it does not know of.
pub(crate) fn register_with<T>(path: &Path, make: impl FnOnce() -> T) -> (Registration, T) {
    let mut paths = registered();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    paths.insert(id, path.to_path_buf());
    let made = make();
    drop(paths);
    (Registration(id), made)
}

impl Registration {
    /// Deletes the path and unregisters it, under the registry's lock, so a
    /// signal arriving meanwhile waits for this to finish rather than racing it.
    pub(crate) fn remove(self) {
        let mut paths = registered();
        if let Some(p) = paths.remove(&self.0) {
            remove_path(&p);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        registered().remove(&self.0);
    }
}

/// A panic elsewhere must not stop the deletion.
fn registered() -> MutexGuard<'static, BTreeMap<u64, PathBuf>> {
    REGISTERED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the watcher: on SIGINT, SIGTERM or SIGHUP it deletes every
/// registered path, calls `last_words(signal)` (to record or report the
/// interruption), and exits with 128 + the signal (130, 143, 129), as a shell
/// reports a process killed by it. Call before any other thread is spawned, so
/// every thread inherits the blocked mask.
pub fn exit_on_signal(last_words: impl FnOnce(libc::c_int) + Send + 'static) {
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
        // Held until exit: nothing can register (so create) new plaintext now.
        let paths = registered();
        for p in paths.values() {
            remove_path(p);
        }
        last_words(sig);
        std::process::exit(128 + sig);
    });
}

/// The job's watcher for `dir`: [`exit_on_signal`], which also deletes the
/// work dir and any half-written ciphertext and records the failed run.
/// `now` stamps the last-run record.
pub fn cleanup_on_signal(dir: &Path, now: OffsetDateTime) {
    let dir: PathBuf = dir.to_path_buf();
    let now = super::names::rfc3339(now);
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

/// Deletes the work dir and any half-written ciphertext.
pub(crate) fn remove_plaintext(dir: &Path) {
    let _ = fs::remove_dir_all(dir.join(super::names::WORK));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".db.age.tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
