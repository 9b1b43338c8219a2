#!/usr/bin/env bash
# End-to-end demo of fencing tokens: a frozen ("zombie") service leader that wakes up and
# writes is rejected by the store. No arguments. Ends with PASS (exit 0) or FAIL (exit 1).
#
# Runs its own 3-node cluster on 127.0.0.1:9201-9203 with data and logs in a temp folder
# and stops every process it started on exit.
#
#  1. build (release: kvstore, kvctl, examples/worker), start 3 nodes
#  2. start workers A and B for "order-service" (lease 1.5 s); one becomes leader with
#     token N and writes fenced records orders/order-service/N-<seq>
#  3. SIGSTOP that worker right after a write (it still believes it leads), and SIGKILL the
#     store's own Raft leader too; restart that node
#  4. the other worker becomes leader with token M > N and writes
#  5. SIGCONT the zombie: its next write is rejected "stale fencing token N ... (current M)"
#  6. read every record back: all of token N's were written before the first of token M's,
#     and a read of the zombie's rejected record answers "key not found"
set -euo pipefail

cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=$(release_dir)
BASE_PORT=9200
IDS=(1 2 3)
SERVICE=order-service
TTL=1500ms
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-fencing.XXXXXX")
TIMELINE=$RUN_DIR/timeline
declare -A PIDS=()
declare -A WORKERS=()
RESULT=FAIL

addr() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
ALL=$(addr 1),$(addr 2),$(addr 3)

now() { date +%H:%M:%S.%3N; }
event() { echo "$(now) [demo] $*" >>"$TIMELINE"; }
# lib.sh's step, also recorded as an event.
step() { printf '\n==> %s\n' "$*"; event "$*"; }

cleanup() {
  stop_pids "${WORKERS[@]}"
  stop_pids "${PIDS[@]}"
  if [[ $RESULT == PASS ]]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

kvctl() { "$BIN/kvctl" "$@"; }

# Prefixes each line of stdin with the time.
stamp() { while IFS= read -r line; do echo "$(now) $line"; done; }

start_node() {
  local id=$1
  "$BIN/kvstore" --id "$id" --port "$((BASE_PORT + id))" --peers "$(peers_of "$id")" \
    --data-dir "$RUN_DIR/data/node-$id" >>"$RUN_DIR/node-$id.log" 2>&1 &
  PIDS[$id]=$!
  say "node $id: pid $!, $(addr "$id")"
}

start_worker() {
  local name=$1 log=$RUN_DIR/worker-$1.log
  touch "$log"
  "$BIN/examples/worker" --name "$name" --service "$SERVICE" --endpoints "$ALL" --ttl "$TTL" \
    > >(stamp >>"$log") 2>&1 &
  WORKERS[$name]=$!
  say "worker $name: pid $!, output $log"
}

wlog() { cat "$RUN_DIR/worker-$1.log"; }

# Polls (up to $3 tenths of a second) until worker $1's output matches $2; prints the line.
wait_for_worker() {
  local name=$1 pattern=$2 tries=${3:-150} line
  for _ in $(seq 1 "$tries"); do
    line=$(wlog "$name" | grep -E -m1 -- "$pattern" || true)
    if [[ -n $line ]]; then
      echo "$line"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

writes_of() { wlog "$1" | grep -c -- "wrote .* with token $2\$" || true; }

# Polls until worker $1 has written at least $3 records with token $2.
wait_for_writes() {
  for _ in $(seq 1 150); do
    (($(writes_of "$1" "$2") >= $3)) && return 0
    sleep 0.1
  done
  return 1
}

step "Building release binaries (kvstore, kvctl, examples/worker)"
build_release

step "Starting 3 nodes on $ALL (data and logs in $RUN_DIR)"
for p in 9201 9202 9203; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p is already in use"; fi
done
for id in "${IDS[@]}"; do start_node "$id"; done
STORE_LEADER=$(store_leader) || fail "no store leader elected within 15 s"
say "store leader: node $STORE_LEADER"

step "Starting workers A and B for $SERVICE (lease $TTL)"
start_worker A
start_worker B
ZOMBIE=""
for _ in $(seq 1 150); do
  for w in A B; do
    if wlog "$w" | grep -q "became leader with token"; then ZOMBIE=$w; break 2; fi
  done
  sleep 0.1
done
[[ -n $ZOMBIE ]] || fail "neither worker became leader within 15 s"
OTHER=$([[ $ZOMBIE == A ]] && echo B || echo A)
N=$(wlog "$ZOMBIE" | grep -m1 -oE 'became leader with token [0-9]+' | grep -oE '[0-9]+$')
say "worker $ZOMBIE leads with token $N; worker $OTHER is waiting"

step "Worker $ZOMBIE writes fenced records"
wait_for_writes "$ZOMBIE" "$N" 3 || fail "worker $ZOMBIE did not write 3 records"
wlog "$ZOMBIE" | grep "wrote" | sed 's/^/    /'

step "SIGSTOP worker $ZOMBIE right after a write: it still believes it leads"
before=$(writes_of "$ZOMBIE" "$N")
for _ in $(seq 1 200); do
  (($(writes_of "$ZOMBIE" "$N") > before)) && break
  sleep 0.02
done
kill -STOP "${WORKERS[$ZOMBIE]}"
LAST_SEQ=$(wlog "$ZOMBIE" | grep -oE "wrote orders/$SERVICE/$N-[0-9]+" | tail -n1 | grep -oE '[0-9]+$')
say "frozen after its write #$LAST_SEQ"

step "Meanwhile SIGKILL the store's Raft leader (node $STORE_LEADER), then restart it"
# The group's stderr also swallows bash's "Killed" job notice.
{ kill -KILL "${PIDS[$STORE_LEADER]}" && wait "${PIDS[$STORE_LEADER]}"; } 2>/dev/null || true
unset "PIDS[$STORE_LEADER]"
KILLED=$STORE_LEADER
STORE_LEADER=$(store_leader "$KILLED") || fail "no new store leader after killing node $KILLED"
say "node $STORE_LEADER is the new store leader; it restarts every lease with its full TTL"
start_node "$KILLED"

step "Worker $OTHER takes over once the zombie's lease runs out"
line=$(wait_for_worker "$OTHER" "became leader with token" 300) ||
  fail "worker $OTHER never became leader"
M=$(grep -oE '[0-9]+$' <<<"$line")
say "$line"
((M > N)) || fail "token $M of worker $OTHER is not above the zombie's $N"
wait_for_writes "$OTHER" "$M" 3 || fail "worker $OTHER did not write 3 records"
say "worker $OTHER wrote $(writes_of "$OTHER" "$M") records with token $M"

step "SIGCONT worker $ZOMBIE: it wakes up believing it leads, and writes"
kill -CONT "${WORKERS[$ZOMBIE]}"
line=$(wait_for_worker "$ZOMBIE" "write rejected: stale fencing token $N for lock $SERVICE \\(current $M\\)") ||
  fail "the zombie's write was not rejected with 'stale fencing token $N ... (current $M)'"
say "$line"
line=$(wait_for_worker "$ZOMBIE" "lost leadership \\(token $N\\)") || fail "the zombie never noticed its loss"
say "$line"

step "Reading every record back"
KEYS=$(cat "$RUN_DIR"/worker-*.log | grep -oE "wrote orders/$SERVICE/[0-9]+-[0-9]+ with token [0-9]+" | awk '{print $2, $5}')
last_n_at=0 first_m_at=0 count=0
while read -r key token; do
  value=$(kvctl --endpoints "$ALL" get "$key") || fail "acknowledged record $key is missing"
  [[ $value == *"with token $token seq "* ]] || fail "$key holds '$value', expected token $token"
  at=${value##* at }
  if ((token == N)) && ((at > last_n_at)); then last_n_at=$at; fi
  if ((token == M)) && ((first_m_at == 0 || at < first_m_at)); then first_m_at=$at; fi
  count=$((count + 1))
done <<<"$KEYS"
say "$count acknowledged records read back"
((first_m_at > 0)) || fail "no record with token $M"
((last_n_at < first_m_at)) ||
  fail "a record with token $N was written at $last_n_at, after the first one with token $M ($first_m_at)"
say "every token-$N record was written before the first token-$M record ($last_n_at < $first_m_at)"
REJECTED=orders/$SERVICE/$N-$((LAST_SEQ + 1))
out=$(get_says_not_found "$ALL" "$REJECTED") ||
  fail "a read of the zombie's rejected record must answer 'key not found: $REJECTED', got: $out"
say "the zombie's rejected record $REJECTED does not exist: $out"

step "Timeline"
cat "$TIMELINE" "$RUN_DIR"/worker-*.log | sort -s -k1,1 | grep -vE 'wrote .*-([4-9]|[0-9]{2,}) with' |
  sed 's/^/    /'
say "(writes after the third of each term left out)"

RESULT=PASS
printf '\nPASS: the zombie (token %s) was fenced off by the store after worker %s took over with token %s\n' "$N" "$OTHER" "$M"
