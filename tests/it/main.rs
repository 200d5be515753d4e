//! rampart integration tests: one binary, one module per capability.

mod cis;
mod inventory;
mod render;
mod systemd;
