//! Runbooks: work on hosts that must survive an interruption.
//!
//! A runbook is an ordered list of [`RunbookStep`]s, each a phase and the
//! phases that undo it. Around it the engine gives every runbook the same
//! three things:
//!
//! - **a saved plan** ([`PlanStore`]): the plan is written to the state dir
//!   (0600 in a 0700 dir) before the first host changes, so `--resume ID`
//!   and `--rollback ID` continue from what was decided, not from memory;
//! - **host-side journals** ([`journal_prelude`], [`parse_journal`]): every
//!   script that finishes a step appends `<step>\t<UTC time>` to
//!   `/var/lib/rampart/<kind>/<id>.journal` on the host it ran on, in the
//!   same run, so the journal never claims what did not happen there;
//!   resume and rollback trust only what the hosts recorded;
//! - **one order for both directions**: [`Runbook::forward`] runs the steps,
//!   [`Runbook::backward`] runs the undo phases of every step, last step
//!   first. Undo phases are idempotent: they select their hosts from the
//!   journals and state, so a rollback of a run that stopped early undoes
//!   only what happened.
//!
//! `rampart backup restore` is the first runbook (see
//! `crate::actions::restore`); rotations are the next ones.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{PhaseError, StepError};
use super::fleet::{each, step, Env};
use super::phase::{BoxPhase, Phase};
use super::reach::Reaches;
use crate::remote::script::{at, PRELUDE};
use crate::remote::{BoxFuture, Input};

/// Where runbooks keep their journals (and uploads) on hosts: one dir per kind.
pub const HOST_DIR: &str = "/var/lib/rampart";

/// A step a runbook journals on a host once it finished there.
pub trait JournalStep: Copy + Eq + Sized + 'static {
    /// Every step, in order (unknown names in a journal are ignored).
    const ALL: &'static [Self];
    /// The name written in the journal.
    fn name(self) -> &'static str;
}

/// The steps a journal records, in order; unknown or torn lines are ignored
/// (a later rampart may know more steps; a torn line was never finished).
pub fn parse_journal<S: JournalStep>(text: &str) -> Vec<S> {
    text.lines()
        .filter_map(|l| {
            let (name, time) = l.split_once('\t')?;
            (!time.is_empty()).then_some(())?;
            S::ALL.iter().copied().find(|s| s.name() == name)
        })
        .collect()
}

/// `/var/lib/rampart/<kind>`: the runbook's dir on hosts.
pub fn host_dir(kind: &str) -> String {
    format!("{HOST_DIR}/{kind}")
}

/// `/var/lib/rampart/<kind>/<id>.journal`.
pub fn journal_path(kind: &str, id: &str) -> String {
    format!("{}/{id}.journal", host_dir(kind))
}

/// The scripts' prelude plus `note STEP`: appends `STEP\t<UTC time>` to the
/// journal of runbook `kind` run `id` with one `O_APPEND` write (far below
/// `PIPE_BUF`, so a line is whole or absent), then fsyncs it.
pub fn journal_prelude(kind: &str, id: &str) -> String {
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "J={}", at(&journal_path(kind, id)));
    let _ = writeln!(
        s,
        "note() {{\n  (umask 077; mkdir -p {dir})\n  printf '%s\\t%s\\n' \"$1\" \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" >> \"$J\"\n  sync \"$J\"\n}}",
        dir = at(&host_dir(kind))
    );
    s
}

/// A run id: `YYYYmmddTHHMMSSZ` (UTC). Only these characters may appear,
/// since ids given to `--resume`/`--rollback` end up in paths on hosts.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// The id of a run that starts at `t`.
pub fn new_id(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("static format")
}

/// A saved plan could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PlanStoreError {
    #[error("cannot keep the {kind}'s plan in {dir}; pass --state-dir")]
    Write {
        kind: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} {id}: {path} is unreadable; move it away to roll back without it")]
    Unreadable {
        kind: &'static str,
        id: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {id}: cannot read {path}")]
    Read {
        kind: &'static str,
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The admin side's copies of a runbook's plans: `<state dir>/<kind>s/<id>.json`.
pub struct PlanStore<'a> {
    pub state_dir: &'a Path,
    pub kind: &'static str,
}

impl PlanStore<'_> {
    pub fn path(&self, id: &str) -> PathBuf {
        self.state_dir
            .join(format!("{}s", self.kind))
            .join(format!("{id}.json"))
    }

    /// Writes the plan (0600, in a 0700 dir; temp file, fsync, rename)
    /// before the first host changes.
    pub fn save<P: Serialize>(&self, id: &str, plan: &P) -> Result<PathBuf, PlanStoreError> {
        let path = self.path(id);
        let dir = path.parent().expect("a file in a dir");
        write_private(dir, id, &path, plan).map_err(|source| PlanStoreError::Write {
            kind: self.kind,
            dir: self.state_dir.to_path_buf(),
            source,
        })?;
        Ok(path)
    }

    /// The saved plan of run `id`, if this machine has it.
    pub fn load<P: DeserializeOwned>(&self, id: &str) -> Result<Option<P>, PlanStoreError> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                PlanStoreError::Unreadable {
                    kind: self.kind,
                    id: id.into(),
                    path,
                    source,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PlanStoreError::Read {
                kind: self.kind,
                id: id.into(),
                path,
                source,
            }),
        }
    }
}

fn write_private<P: Serialize>(dir: &Path, id: &str, path: &Path, plan: &P) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(plan).expect("a plan serializes"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A runbook step that needs nothing but one script per host: the script
/// (which journals the step itself) on each selected host, then a line to
/// report there. Journal notes, renames, releases: most steps of a runbook.
/// All of it is read from the state when the phase runs.
pub struct OnHosts<S> {
    pub name: &'static str,
    pub title: &'static str,
    /// What the progress line says while it runs.
    pub step: &'static str,
    /// The hosts it runs on (inventory names).
    pub hosts: fn(&S) -> Vec<String>,
    pub script: fn(&S) -> String,
    /// Reported per host once its script succeeded.
    pub line: fn(&S) -> Option<String>,
}

impl<'r, S: Reaches<'r> + Sync> Phase<S> for OnHosts<S> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn title(&self) -> &'static str {
        self.title
    }
    fn hosts(&self, s: &S) -> usize {
        s.reach().fleet.select(&(self.hosts)(s)).len()
    }
    fn run<'a>(&'a self, env: &'a Env<'a>, s: &'a mut S) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let s = &*s;
            let text = (self.script)(s);
            let line = (self.line)(s);
            let (text, line) = (&text, &line);
            let hosts = s.reach().fleet.select(&(self.hosts)(s));
            each(env, self.name, hosts, move |m| {
                Box::pin(async move {
                    step(env, m, self.step, text, Input::None).await?;
                    if let Some(line) = line {
                        env.reporter.line(&m.host.name, line);
                    }
                    Ok(())
                })
            })
            .await
            .map(drop)
        })
    }
}

/// A runbook's `facts` phase: one script on every connected host, its
/// output parsed per host and stored in the state (the journal of this
/// run, and whatever else the runbook plans from). Read-only.
pub struct ReadHosts<S, T> {
    pub title: &'static str,
    /// The script, from the run's environment (the inventory) and state.
    pub script: fn(&Env, &S) -> String,
    /// The host's stdout, or why it cannot be read.
    pub parse: fn(&str) -> Result<T, String>,
    pub store: fn(&mut S, std::collections::BTreeMap<String, T>),
}

impl<'r, S: Reaches<'r> + Sync, T: Send + Sync> Phase<S> for ReadHosts<S, T> {
    fn name(&self) -> &'static str {
        "facts"
    }
    fn title(&self) -> &'static str {
        self.title
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &S) -> usize {
        s.reach().fleet.members().len()
    }
    fn run<'a>(&'a self, env: &'a Env<'a>, s: &'a mut S) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let text = &(self.script)(env, s);
            let parse = self.parse;
            let read = each(
                env,
                "facts",
                s.reach().fleet.members().iter().collect(),
                |m| {
                    Box::pin(async move {
                        env.reporter.step(&m.host.name, "facts");
                        let out = m.remote.run(text, Input::None).await?;
                        if !out.success() {
                            return Err(StepError::script("facts", &out));
                        }
                        let facts = parse(&out.stdout_text()).map_err(StepError::Facts)?;
                        Ok((m.host.name.clone(), facts))
                    })
                },
            )
            .await?;
            (self.store)(s, read.into_iter().collect());
            Ok(())
        })
    }
}

/// One step of a runbook: what it does, and what undoes it (in order; empty
/// when there is nothing to undo, as for a check or a journal line).
pub struct RunbookStep<'p, S> {
    pub phase: BoxPhase<'p, S>,
    pub undo: Vec<BoxPhase<'p, S>>,
}

impl<'p, S> RunbookStep<'p, S> {
    pub fn new(phase: impl Phase<S> + 'p) -> Self {
        RunbookStep {
            phase: Box::new(phase),
            undo: Vec::new(),
        }
    }
    /// Adds a phase that undoes this step (undo phases run in the order added).
    pub fn undone_by(mut self, phase: impl Phase<S> + 'p) -> Self {
        self.undo.push(Box::new(phase));
        self
    }
}

/// A runbook: its kind (names its journals and saved plans) and its steps.
pub struct Runbook<'p, S> {
    pub kind: &'static str,
    pub steps: Vec<RunbookStep<'p, S>>,
}

impl<S: Send> Runbook<'_, S> {
    /// The steps' phases, in order.
    pub fn forward(&self) -> Vec<&dyn Phase<S>> {
        self.steps.iter().map(|s| &*s.phase).collect()
    }

    /// The undo phases of every step, the last step's first.
    pub fn backward(&self) -> Vec<&dyn Phase<S>> {
        self.steps
            .iter()
            .rev()
            .flat_map(|s| s.undo.iter().map(|p| &**p))
            .collect()
    }

    /// Runs the steps (a new run, or a resumed one: each phase selects the
    /// hosts that still need it from the journals).
    pub async fn run(&self, env: &Env<'_>, state: &mut S) -> Result<(), PhaseError> {
        super::phase::run_phases(env, state, &self.forward(), &[]).await
    }

    /// Undoes every step, the last first.
    pub async fn roll_back(&self, env: &Env<'_>, state: &mut S) -> Result<(), PhaseError> {
        super::phase::run_phases(env, state, &self.backward(), &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Two {
        A,
        B,
    }

    impl JournalStep for Two {
        const ALL: &'static [Two] = &[Two::A, Two::B];
        fn name(self) -> &'static str {
            match self {
                Two::A => "a",
                Two::B => "b",
            }
        }
    }

    #[test]
    fn journals_keep_whole_known_lines_only() {
        let steps: Vec<Two> =
            parse_journal("a\t2026-11-30T15:00:00Z\nc\tt\nb\t2026-11-30T15:00:01Z\nb\n");
        assert_eq!(steps, vec![Two::A, Two::B]);
    }

    #[test]
    fn ids_are_stamps_only() {
        assert!(valid_id("20261130T150000Z"));
        assert!(!valid_id("20261130T150000"));
        assert!(!valid_id("../../etc/passwdZ"));
        let t = time::macros::datetime!(2026-11-30 15:00:00 UTC);
        assert_eq!(new_id(t), "20261130T150000Z");
    }

    #[test]
    fn saved_plans_are_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = PlanStore {
            state_dir: dir.path(),
            kind: "restore",
        };
        let path = store.save("20261130T150000Z", &vec![1, 2, 3]).unwrap();
        assert_eq!(path, dir.path().join("restores/20261130T150000Z.json"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        let back: Option<Vec<i32>> = store.load("20261130T150000Z").unwrap();
        assert_eq!(back, Some(vec![1, 2, 3]));
        assert!(store
            .load::<Vec<i32>>("20261130T150001Z")
            .unwrap()
            .is_none());
        std::fs::write(&path, "{").unwrap();
        let err = store.load::<Vec<i32>>("20261130T150000Z").unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
    }
}
