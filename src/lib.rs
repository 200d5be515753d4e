//! rampart: bootstrap hardened Kubernetes clusters over SSH and keep them healthy.
//!
//! The core is pure: [`inventory`] → [`pki`] → [`render`] (a per-host bundle of
//! files). I/O lives at the edges: the state dir, the bundle writer, and the
//! hosts ([`remote`]). [`backup`] holds the etcd backup job that runs on the hosts.

pub mod actions;
pub mod backup;
pub mod cis;
pub mod digest;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod layout;
pub mod pki;
pub mod plan;
pub mod remote;
pub mod render;
pub mod restore;
pub mod rotate;
pub mod secret;
pub mod words;
