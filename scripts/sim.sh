#!/usr/bin/env bash
# Deterministic simulation over many seeds, in parallel on all cores.
#   scripts/sim.sh --seeds N [--start S]        seeds S..S+N-1; exit 0 only if all pass
#   scripts/sim.sh --seed S --trace             replay one seed with its event trace
#   scripts/sim.sh --seeds 500 --mutation no-check-term --fail-fast
#   scripts/sim.sh --seeds 3000 --kv-txns       the key-space workload (CAS, pair Txns, Ranges, Compact)
#   scripts/sim.sh --seeds 20 --kv-txns --split-txn-writes --fail-fast   its mutation
#   scripts/sim.sh --seeds 600 --key-leases --watches   leases on keys (grants, attached keys,
#                                               keep-alives, revokes) and watchers on every node
#   scripts/sim.sh --seeds 20 --key-leases --key-leases-not-restarted --fail-fast   one of its mutations
#   scripts/sim.sh --seeds 30 --key-leases --watches --keep-alive-answers-at-once --fail-fast
#   scripts/sim.sh --seeds 20 --key-leases --watches --watch-publish-on-append --fail-fast
#                                               (mutation list: README, "Mutation mode")
# All flags: scripts/sim.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
build_release --quiet
exec "${CARGO_TARGET_DIR:-target}/release/kvstore-sim" "$@"
