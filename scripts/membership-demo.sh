#!/usr/bin/env bash
# End-to-end demo of the README's replacement runbook ("Membership changes"): a SIGKILLed
# member is replaced by a new node at a new address and data dir while the cluster serves.
# No arguments. Ends with PASS (exit 0) or FAIL: <reason> (exit 1).
#
# Runs its own cluster on 127.0.0.1:9401-9404 with data and logs in a temp folder (removed on
# exit; the logs are kept on FAIL) and stops every process it started on exit.
#
#  1. build (release), start 3 nodes with small snapshots (--snapshot-entries 20), write keys
#  2. SIGKILL the store's leader (the dead machine); the two others elect a leader, writes go on
#  3. `kvctl member remove` the dead member; `kvctl member add 127.0.0.1:9404 --learner`
#  4. start the new node with `--join` and a fresh data dir: it catches up through the
#     leader's snapshot (the log it would need is compacted); `kvctl member promote` it
#  5. more writes; every key reads back, with its value, from every member's own state
#  6. the dead member restarted on its old data dir is refused and stops with
#     "this node was removed from the cluster"; the members keep serving
set -euo pipefail

cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=$(release_dir)
BASE_PORT=9400
IDS=(1 2 3)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-membership.XXXXXX")
declare -A PIDS=()
RESULT=FAIL

addr() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
ALL=$(addr 1),$(addr 2),$(addr 3)

cleanup() {
  stop_pids "${PIDS[@]}"
  rm -rf "$RUN_DIR/data"
  if [[ $RESULT == PASS ]]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

kvctl() { "$BIN/kvctl" "$@"; }

# Starts node $1 with the rest of the arguments (--peers or --join).
start_node() {
  local id=$1
  shift
  "$BIN/kvstore" --id "$id" --port "$((BASE_PORT + id))" --data-dir "$RUN_DIR/data/node-$id" \
    --snapshot-entries 20 "$@" >>"$RUN_DIR/node-$id.log" 2>&1 &
  PIDS[$id]=$!
  say "node $id: pid $!, $(addr "$id")"
}

# Writes keys key/<n> = value-<n> for n in $1..$2 (zero-padded, so a prefix range lists them
# in order) through the current endpoints, and records each in $RUN_DIR/expected.
write_keys() {
  local n key
  for n in $(seq -f '%04g' "$1" "$2"); do
    key=key/$n
    kvctl --endpoints "$ALL" put "$key" "value-$n" >/dev/null || fail "put $key was not acknowledged"
    printf '%s\nvalue-%s\n' "$key" "$n" >>"$RUN_DIR/expected"
  done
}

# Succeeds once node $1's own state (a serializable range read at that node only) holds
# exactly the expected keys and values; polls up to 10 s.
node_has_all() {
  local endpoint
  endpoint=$(addr "$1")
  for _ in $(seq 1 40); do
    if kvctl --endpoints "$endpoint" --no-redirect --timeout 2s get key/ --prefix --consistency s \
      2>/dev/null | cmp -s - "$RUN_DIR/expected"; then
      return 0
    fi
    sleep 0.25
  done
  return 1
}

step "Building release binaries"
build_release

step "Starting 3 nodes on $ALL (snapshots every 20 entries; data and logs in $RUN_DIR)"
for id in 1 2 3 4; do
  p=$((BASE_PORT + id))
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p is already in use"; fi
done
: >"$RUN_DIR/expected"
for id in "${IDS[@]}"; do start_node "$id" --peers "$(peers_of "$id")"; done
LEADER=$(store_leader) || fail "no store leader elected within 15 s"
say "store leader: node $LEADER"

step "Writing keys key/0001..0100"
write_keys 1 100
say "100 keys acknowledged"

DEAD=$LEADER
step "SIGKILL node $DEAD (the leader): its machine is gone for good"
{ kill -KILL "${PIDS[$DEAD]}" && wait "${PIDS[$DEAD]}"; } 2>/dev/null || true
unset "PIDS[$DEAD]"
LEADER=$(store_leader "$DEAD") || fail "no new leader after killing node $DEAD"
say "node $LEADER leads now; the cluster serves with 2 of its 3 voters"
write_keys 101 150
say "keys key/0101..0150 acknowledged"
grep -q "snapshot taken, log compacted" "$RUN_DIR/node-$LEADER.log" ||
  fail "node $LEADER never compacted its log (no 'snapshot taken, log compacted')"

step "kvctl member remove $DEAD"
out=$(kvctl --endpoints "$ALL" member remove "$DEAD" 2>&1) || fail "member remove $DEAD: $out"
say "$out"
[[ $out == "removed member $DEAD" ]] || fail "member remove printed '$out'"

NEW_ADDR=$(addr 4)
step "kvctl member add $NEW_ADDR --learner (a new machine, a new address)"
out=$(kvctl --endpoints "$ALL" member add "$NEW_ADDR" --learner 2>&1) || fail "member add: $out"
say "$out"
[[ $out == "added member 4 as a learner at $NEW_ADDR" ]] ||
  fail "expected 'added member 4 as a learner at $NEW_ADDR' (ids are never reused), got '$out'"
MEMBERS=()
for id in "${IDS[@]}"; do [[ $id == "$DEAD" ]] || MEMBERS+=("$id"); done
MEMBERS+=(4)
ALL=$(addr "${MEMBERS[0]}"),$(addr "${MEMBERS[1]}"),$NEW_ADDR

step "Starting node 4 with --join $(addr "$LEADER") and a fresh data dir"
start_node 4 --join "$(addr "$LEADER")"
node_has_all 4 || fail "node 4 did not catch up within 10 s"
grep -q "installing snapshot from the leader" "$RUN_DIR/node-4.log" ||
  fail "node 4 caught up without the leader's snapshot (its log was expected to be compacted)"
say "node 4 caught up through the leader's snapshot: it holds all 150 keys"
kvctl --endpoints "$ALL" member list | sed 's/^/    /'

step "kvctl member promote 4"
for _ in $(seq 1 40); do
  out=$(kvctl --endpoints "$ALL" member promote 4 2>&1) && break
  sleep 0.25
done
[[ $out == *"promoted member 4"* ]] || fail "member promote 4: $out"
say "$out"
voters=$(kvctl --endpoints "$ALL" -w json member list | grep -o '"role":"voter"' | wc -l)
((voters == 3)) || fail "$voters voters after the promotion, expected 3"

step "Writing keys key/0151..0200 on the new membership"
write_keys 151 200
for id in "${MEMBERS[@]}"; do
  node_has_all "$id" || fail "node $id does not hold every acknowledged key with its value"
  say "node $id holds all 200 keys"
done

step "Restarting node $DEAD on its old data dir: it is refused and stops"
start_node "$DEAD" --peers "$(peers_of "$DEAD")"
for _ in $(seq 1 60); do
  kill -0 "${PIDS[$DEAD]}" 2>/dev/null || break
  sleep 0.25
done
if kill -0 "${PIDS[$DEAD]}" 2>/dev/null; then fail "node $DEAD still runs 15 s after its restart"; fi
rc=0
wait "${PIDS[$DEAD]}" 2>/dev/null || rc=$?
unset "PIDS[$DEAD]"
((rc != 0)) || fail "node $DEAD exited 0"
grep -q "this node was removed from the cluster" "$RUN_DIR/node-$DEAD.log" ||
  fail "node $DEAD did not say 'this node was removed from the cluster'"
say "node $DEAD stopped (exit code $rc): this node was removed from the cluster"
LEADER=$(store_leader) || fail "the members lost their leader"
kvctl --endpoints "$ALL" put after-restart ok >/dev/null || fail "a write after node $DEAD's restart failed"
say "node $LEADER still leads and takes writes"

RESULT=PASS
printf '\nPASS: node %s was replaced by node 4 at %s; all 200 keys on every member\n' "$DEAD" "$NEW_ADDR"
