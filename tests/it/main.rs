//! rampart integration tests: one binary, one module per capability.

mod apply;
mod backup;
mod cis;
mod cis_catalogue;
mod cis_kube_bench;
mod cli;
mod etcd;
mod fuzz;
mod hostile;
mod inventory;
mod lab;
mod modules;
mod pki;
mod push;
mod render;
mod restore;
mod ssh;
mod systemd;
