//! Rendering: inventory + PKI → per-host [`Bundle`] of hardened configuration files.
//!
//! Pure: no network, no clock, no disk (templates are compiled into the binary).

mod bundle;

pub use bundle::*;

mod read;
pub use read::{read_bundle, ReadBundleError};
