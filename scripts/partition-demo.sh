#!/usr/bin/env bash
# End-to-end demo of kvstore's failover and zombie-leader safety. No arguments.
# Ends with PASS (exit 0) or FAIL (exit 1).
#
# Runs its own 3-node cluster on 127.0.0.1:9101-9103 with data and logs in a temp folder
# (so it does not clash with scripts/cluster.sh), and stops every process it started on exit.
#
#  1. build (release), start 3 nodes, wait for a leader, write a key
#  2. SIGKILL the leader; a new leader is elected in a higher term
#  3. restart the old leader; it logs "stepping down: saw term N > my term M" and rejoins;
#     every node serves the key
#  4. SIGSTOP the new leader (a "zombie"); the others elect a leader; a write sent to the
#     frozen node is NOT acknowledged; SIGCONT it; it steps down on the higher term, and a
#     write sent to it alone is refused: "not leader, try node Y (HOST:PORT)"
#  5. every acknowledged key reads back from every node; the zombie's write never applied
#     (a read of it answers "key not found")
set -euo pipefail

cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=$(release_dir)
BASE_PORT=9100
IDS=(1 2 3)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-demo.XXXXXX")
declare -A PIDS=()
declare -A LOG_START=()
RESULT=FAIL

addr() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
ALL=$(addr 1),$(addr 2),$(addr 3)

cleanup() {
  stop_pids "${PIDS[@]}"
  if [[ $RESULT == PASS ]]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

kvctl() { "$BIN/kvctl" "$@"; }

start_node() {
  local id=$1 log=$RUN_DIR/node-$1.log
  touch "$log"
  LOG_START[$id]=$(($(wc -l <"$log") + 1))
  "$BIN/kvstore" --id "$id" --port "$((BASE_PORT + id))" --peers "$(peers_of "$id")" \
    --data-dir "$RUN_DIR/data/node-$id" >>"$log" 2>&1 &
  PIDS[$id]=$!
  say "node $id: pid $!, $(addr "$id"), log $log"
}

# Lines node $1 logged since it was last started.
log_since_start() { tail -n "+${LOG_START[$1]}" "$RUN_DIR/node-$1.log"; }

# Polls until node $1's current log has a line matching $2; prints it.
wait_for_log() {
  local id=$1 pattern=$2 line
  for _ in $(seq 1 100); do
    line=$(log_since_start "$id" | grep -E -m1 -- "$pattern" || true)
    if [[ -n $line ]]; then
      echo "$line"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# Prints "ID TERM" once exactly one reachable node is leader with a term above $1 (and not
# node $2) and every reachable node agrees on it; fails after ~15 s.
wait_for_leader() {
  local min_term=${1:-0} not=${2:-0} found
  for _ in $(seq 1 60); do
    found=$(kvctl --endpoints "$ALL" --timeout 1s status 2>/dev/null | awk -v min="$min_term" -v not="$not" '
      NR > 1 && $1 != "-" {
        rows++
        if ($3 == "leader") { leaders++; id = $1; term = $4 }
        leader_of[rows] = $5; term_of[rows] = $4
      }
      END {
        if (leaders != 1 || term <= min || id == not) exit 1
        for (r = 1; r <= rows; r++) if (leader_of[r] != id || term_of[r] != term) exit 1
        print id, term
      }') && { echo "$found"; return 0; }
    sleep 0.25
  done
  return 1
}

show_status() { kvctl --endpoints "$ALL" --timeout 1s status 2>/dev/null | sed 's/^/    /' || true; }

# Polls until node $1 serves key $2 = $3 from its own state (serializable read).
wait_for_value() {
  local id=$1 key=$2 want=$3 got
  for _ in $(seq 1 100); do
    got=$(kvctl --endpoints "$(addr "$id")" --timeout 1s get "$key" --serializable 2>/dev/null || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  return 1
}

step "Building release binaries"
build_release

step "Starting 3 nodes on $ALL (data and logs in $RUN_DIR)"
for p in 9101 9102 9103; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p is already in use"; fi
done
for id in "${IDS[@]}"; do start_node "$id"; done

step "Waiting for a leader"
read -r LEADER TERM < <(wait_for_leader 0) || fail "no leader elected within 15 s"
say "node $LEADER is leader in term $TERM"
show_status

step "Writing demo-1=alpha through the leader"
out=$(kvctl --endpoints "$ALL" put demo-1 alpha) || fail "put demo-1 failed"
say "kvctl put demo-1 alpha -> $out"

step "SIGKILL the leader (node $LEADER)"
# The group's stderr also swallows bash's "Killed" job notice.
{ kill -KILL "${PIDS[$LEADER]}" && wait "${PIDS[$LEADER]}"; } 2>/dev/null || true
unset "PIDS[$LEADER]"
OLD_LEADER=$LEADER OLD_TERM=$TERM
read -r LEADER TERM < <(wait_for_leader "$OLD_TERM" "$OLD_LEADER") ||
  fail "no new leader in a term above $OLD_TERM"
say "node $LEADER is the new leader in term $TERM (was node $OLD_LEADER in term $OLD_TERM)"
show_status
out=$(kvctl --endpoints "$ALL" put demo-2 beta) || fail "put demo-2 through the new leader failed"
say "kvctl put demo-2 beta -> $out"

step "Restarting node $OLD_LEADER; it must rejoin as a follower"
start_node "$OLD_LEADER"
line=$(wait_for_log "$OLD_LEADER" "stepping down: saw term") ||
  fail "node $OLD_LEADER never logged 'stepping down: saw term'"
say "log: $line"
line=$(wait_for_log "$OLD_LEADER" "became follower") ||
  fail "node $OLD_LEADER never logged 'became follower'"
say "log: $line"

step "Reading demo-1 and demo-2 from every node (serializable reads of local state)"
for id in "${IDS[@]}"; do
  wait_for_value "$id" demo-1 alpha || fail "node $id never served demo-1=alpha"
  wait_for_value "$id" demo-2 beta || fail "node $id never served demo-2=beta"
  say "node $id: demo-1=alpha demo-2=beta"
done
show_status

step "Zombie leader: SIGSTOP the leader (node $LEADER)"
ZOMBIE=$LEADER ZOMBIE_TERM=$TERM
kill -STOP "${PIDS[$ZOMBIE]}"
read -r LEADER TERM < <(wait_for_leader "$ZOMBIE_TERM" "$ZOMBIE") ||
  fail "the other two nodes did not elect a leader while node $ZOMBIE was frozen"
say "node $LEADER is leader in term $TERM while node $ZOMBIE is frozen in term $ZOMBIE_TERM"

step "Sending a write straight to the frozen node $ZOMBIE (2 s timeout); it must NOT be acknowledged"
if out=$(kvctl --endpoints "$(addr "$ZOMBIE")" --timeout 2s put zombie-write bad 2>&1); then
  fail "the frozen node acknowledged a write: $out"
fi
say "not acknowledged: $out"

step "SIGCONT node $ZOMBIE; it must step down on seeing term $TERM"
kill -CONT "${PIDS[$ZOMBIE]}"
line=$(wait_for_log "$ZOMBIE" "\\[node $ZOMBIE\\] stepping down: saw term [0-9]+ > my term $ZOMBIE_TERM") ||
  fail "node $ZOMBIE never logged 'stepping down: saw term' after SIGCONT"
say "log: $line"
read -r LEADER TERM < <(wait_for_leader "$ZOMBIE_TERM") || fail "the cluster did not settle on one leader"
show_status
ASKED=$ZOMBIE
if [[ $LEADER == "$ZOMBIE" ]]; then
  ASKED=$(for id in "${IDS[@]}"; do [[ $id == "$ZOMBIE" ]] || echo "$id"; done | head -n1)
  say "(node $ZOMBIE was later re-elected, which is allowed; asking follower $ASKED instead)"
fi

step "Sending a write to node $ASKED alone (kvctl --no-redirect); it must refuse and name node $LEADER"
WANT="not leader, try node $LEADER ($(addr "$LEADER"))"
if out=$(kvctl --endpoints "$(addr "$ASKED")" --no-redirect --timeout 2s put thawed-write bad 2>&1); then
  fail "node $ASKED acknowledged a write although node $LEADER leads: $out"
fi
[[ $out == *"$WANT" ]] || fail "node $ASKED answered '$out', expected '$WANT'"
say "refused: $out"

step "Checking the data: every acknowledged key on every node, no zombie write anywhere"
out=$(kvctl --endpoints "$ALL" put demo-3 gamma) || fail "put demo-3 failed"
say "kvctl put demo-3 gamma -> $out"
for id in "${IDS[@]}"; do
  wait_for_value "$id" demo-1 alpha || fail "node $id lost demo-1"
  wait_for_value "$id" demo-2 beta || fail "node $id lost demo-2"
  wait_for_value "$id" demo-3 gamma || fail "node $id never served demo-3"
  say "node $id: demo-1=alpha demo-2=beta demo-3=gamma"
done
for key in zombie-write thawed-write; do
  out=$(get_says_not_found "$ALL" "$key") || fail "a read of $key must answer 'key not found: $key', got: $out"
  say "$key: $out (never applied)"
done

RESULT=PASS
printf '\nPASS\n'
