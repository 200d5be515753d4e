//! rampart integration tests: one binary, one module per capability.

mod cis;
mod etcd;
mod inventory;
mod lab;
mod pki;
mod render;
mod systemd;
