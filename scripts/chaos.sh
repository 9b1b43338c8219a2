#!/usr/bin/env bash
# Real processes under real faults: a cluster of the kvstore binary on loopback, concurrent
# clients, and a seeded schedule of SIGKILL/restart, SIGSTOP/SIGCONT and network partitions;
# the history is checked for linearizability at the end. Ends with PASS or FAIL.
#   scripts/chaos.sh [--seed S] [--duration SECONDS] [--nodes 3|5] [--clients N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin kvstore --bin kvstore-chaos
exec target/release/kvstore-chaos "$@"
