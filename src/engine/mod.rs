//! The engine: how every command works on hosts.
//!
//! - [`fleet`]: connect and lock hosts, and [`fleet::each`], the one fan-out
//!   (bounded concurrency, cancellation, every host's failure collected);
//! - [`phase`]: the [`Phase`] trait over a command's own state, and the one
//!   loop that runs a list of them; the list also gives `--skip-phases`, the
//!   help text and the docs table;
//! - [`runbook`]: journaled, resumable lists of steps with their undo, and
//!   the saved plans behind `--resume ID` and `--rollback ID`;
//! - [`reach`]: the `connect` and `lock` phases every command starts with;
//! - [`report`]: progress out, questions out, cancellation in;
//! - [`error`]: typed step and phase failures.
//!
//! Commands live in `crate::actions`: each is a state type, a list of phases
//! (or a runbook) over it, and one function the CLI calls. See
//! docs/architecture.md for a worked example.

pub mod error;
pub mod fleet;
pub mod phase;
pub mod reach;
pub mod report;
pub mod runbook;

pub use error::{ConnectError, PhaseError, StepError};
pub use fleet::{each, step, ConnectedHost, Connector, Env, Fleet, OnHost, Reachable};
pub use phase::{run_in_order, BoxPhase, Phase, PhaseInfo};
pub use reach::{Connect, Lock, Reach, Reaches};
pub use report::{Answer, Cancel, Prompt, Reporter, Silent};
