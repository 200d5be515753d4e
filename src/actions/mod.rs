//! Actions: what each command does on hosts, as a state type and an ordered
//! list of phases over it (or a runbook), built on [`crate::engine`].
//!
//! - [`apply`] (also behind `plan` and `apply --dry-run`): prepare the plan
//!   as data, show it, then run the phases that carry it out;
//! - [`restore`]: `backup restore`, the first runbook (journaled, resumable,
//!   with `--rollback`);
//! - [`rotate`]: `rotate ca`, a runbook that rolls each stage of a CA
//!   rotation out with `apply`'s phases;
//! - [`backup`]: `backup list`, `now` and `pull`, work on each member;
//! - [`verify`]: `verify`, the read-only audit of the live fleet;
//! - [`gates`]: the health gates apply and restore start services behind.
//!
//! Commands in `src/cli` parse arguments, call one function here and print
//! what it returns.

pub mod apply;
pub mod backup;
pub(crate) mod gates;
pub mod restore;
pub mod rotate;
pub mod verify;
