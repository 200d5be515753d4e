//! How the engine talks to whoever runs it: progress goes out through a
//! [`Reporter`], questions through a [`Prompt`], and a stop request comes in
//! through a [`Cancel`]. The CLI implements the first two (indicatif bars, a
//! terminal prompt); tests use [`Silent`] and [`Answer`]. The engine itself
//! never prints and never reads standard input.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Progress sink of the engine. The CLI implements it with indicatif or plain
/// lines; the engine never prints.
pub trait Reporter: Send + Sync {
    /// A phase begins, over `hosts` hosts.
    fn phase(&self, name: &str, title: &str, hosts: usize);
    /// A host's current step (transient: a progress line).
    fn step(&self, host: &str, step: &str);
    /// Something worth keeping about a host: `cp1: etcd healthy (3/3)`.
    fn line(&self, host: &str, line: &str);
    /// A host is done with the current phase.
    fn done(&self, host: &str);
}

/// A reporter that drops everything (tests, `--output json`).
pub struct Silent;

impl Reporter for Silent {
    fn phase(&self, _: &str, _: &str, _: usize) {}
    fn step(&self, _: &str, _: &str) {}
    fn line(&self, _: &str, _: &str) {}
    fn done(&self, _: &str) {}
}

/// Asks the admin before something destructive starts. The CLI answers from
/// `--yes` or a terminal; with neither, the answer is no.
pub trait Prompt: Send + Sync {
    /// `question` is one line without a trailing `?` prompt marker.
    fn confirm(&self, question: &str) -> bool;
}

/// A fixed answer (tests, and `--yes`).
pub struct Answer(pub bool);

impl Prompt for Answer {
    fn confirm(&self, _: &str) -> bool {
        self.0
    }
}

/// Set by Ctrl-C (or SIGTERM/SIGHUP); checked before every step, so a step in
/// flight finishes (never half a file) and nothing new starts.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// The flag itself, for code below the phases that polls it (decryption).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}
