//! rampart integration tests: one binary, one module per capability.

mod apply;
mod backup;
mod cis;
mod etcd;
mod inventory;
mod lab;
mod pki;
mod render;
mod restore;
mod ssh;
mod systemd;
