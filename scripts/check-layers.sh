#!/usr/bin/env bash
# Enforces ARCHITECTURE.md's layering: the Raft core, the state machine, the simulator and the
# linearizability checker stay pure (no tokio, tonic, sled, prost, clock or global RNG), and
# only storage/ knows sled. Exits 1 with the offending lines.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
pure='^\s*use (tokio|tonic|sled|prost)\b|\b(tokio|tonic|sled|prost)::|std::time::(Instant|SystemTime)|thread_rng|rand::random'
for dir in src/raft src/state_machine src/sim src/lincheck.rs; do
  hits=$(grep -rnE "$pure" "$dir" | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
  if [[ -n $hits ]]; then
    echo "$dir must stay pure (no tokio/tonic/sled/prost, no clock, no global RNG):"
    echo "$hits"
    status=1
  fi
done
hits=$(grep -rln 'sled::' src --include=*.rs | grep -v '^src/storage/' || true)
if [[ -n $hits ]]; then
  echo "only src/storage/ may use sled:"; echo "$hits"; status=1
fi
hits=$(grep -rlnE '\bpb::|crate::pb' src/raft src/state_machine src/storage src/node 2>/dev/null || true)
if [[ -n $hits ]]; then
  echo "protobuf types must not leak below rpc/ and client/:"; echo "$hits"; status=1
fi
[[ $status == 0 ]] && echo "layers: ok"
exit $status
