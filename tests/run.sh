#!/usr/bin/env bash
# Runs every test: unit tests, the integration binary (golden files, real openssl,
# systemd-analyze and etcd-server), as root on a Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo test
