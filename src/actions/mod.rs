//! Actions: what a command does on hosts, as an ordered list of phases.
//!
//! `apply` (also behind `plan` and `apply --dry-run`) is the first; backup
//! and restore follow the same shape: prepare a plan as data, show it, then
//! run the phases that carry it out.

pub mod apply;
pub mod backup;
pub mod restore;
