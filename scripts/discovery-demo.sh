#!/usr/bin/env bash
# End-to-end demo of leases and watches: service discovery and configuration reload on a
# 3-node cluster. No arguments. Ends with PASS (exit 0) or FAIL (exit 1).
#
# Runs its own cluster on 127.0.0.1:9301-9303 with data and logs in a temp folder and stops
# every process it started on exit.
#
#  1. build (release: kvstore, kvctl, examples/discovery, examples/config_reload); start 3 nodes
#  2. start a `discovery list` client and a `config_reload` process (both watch)
#  3. register instances i1, i2, i3 of service "web" with 2 s leases; the list shows all three
#  4. write the config twice: the reload process applies both, in order
#  5. SIGKILL the store's leader: the watches resume on other nodes, the leases survive the
#     change of leader (a new leader restarts every TTL), and a third config write is applied
#  6. SIGKILL instance i2: it leaves the list within its TTL plus a bound; i1 and i3 never left
set -euo pipefail

cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=$(release_dir)
BASE_PORT=9300
IDS=(1 2 3)
TTL=2
# Bound on the time from SIGKILL to leaving the list beyond the TTL: the leader checks
# leases every tick, the expiry is one log entry, the event one watch response.
SLACK_MS=1500
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-discovery.XXXXXX")
declare -A PIDS=()
declare -A INSTANCES=()
CLIENTS=()
RESULT=FAIL

addr() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
ALL=$(addr 1),$(addr 2),$(addr 3)

now_ms() { date +%s%3N; }
cleanup() {
  stop_pids "${CLIENTS[@]}" "${INSTANCES[@]}"
  stop_pids "${PIDS[@]}"
  if [[ $RESULT == PASS ]]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

kvctl() { "$BIN/kvctl" "$@"; }

# Prefixes each line of stdin with the time in ms.
stamp() { while IFS= read -r line; do echo "$(now_ms) $line"; done; }

start_node() {
  local id=$1
  "$BIN/kvstore" --id "$id" --port "$((BASE_PORT + id))" --peers "$(peers_of "$id")" \
    --data-dir "$RUN_DIR/data/node-$id" >>"$RUN_DIR/node-$id.log" 2>&1 &
  PIDS[$id]=$!
  say "node $id: pid $!, $(addr "$id")"
}

register() {
  local id=$1 log=$RUN_DIR/instance-$1.log
  "$BIN/examples/discovery" --endpoints "$ALL" register --service web --id "$id" \
    --addr "10.0.0.${id#i}:8080" --ttl "$TTL" > >(stamp >>"$log") 2>&1 &
  INSTANCES[$id]=$!
  say "instance $id: pid $!, output $log"
}

LIST=$RUN_DIR/list.log
CONFIG=$RUN_DIR/config.log

# Polls (up to $3 tenths of a second) until file $1 has a line matching $2, stamped at or
# after $4 ms (default: any time); prints it.
wait_for_line() {
  local file=$1 pattern=$2 tries=${3:-150} since=${4:-0} line
  for _ in $(seq 1 "$tries"); do
    line=$(awk -v since="$since" -v re="$pattern" '$1 >= since && $0 ~ re { print; exit }' "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then
      echo "$line"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

step "Building release binaries (kvstore, kvctl, examples/discovery, examples/config_reload)"
build_release

step "Starting 3 nodes on $ALL (data and logs in $RUN_DIR)"
for p in 9301 9302 9303; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p is already in use"; fi
done
for id in "${IDS[@]}"; do start_node "$id"; done
LEADER=$(store_leader) || fail "no store leader elected within 15 s"
say "store leader: node $LEADER"

step "Starting a discovery client (list --service web) and a config_reload process (key app/config)"
"$BIN/examples/discovery" --endpoints "$ALL" list --service web > >(stamp >>"$LIST") 2>&1 &
CLIENTS+=($!)
"$BIN/examples/config_reload" --endpoints "$ALL" --key app/config > >(stamp >>"$CONFIG") 2>&1 &
CLIENTS+=($!)
wait_for_line "$LIST" "members:" >/dev/null || fail "the discovery client printed no list"
wait_for_line "$CONFIG" "defaults" >/dev/null || fail "config_reload did not start"

step "Registering instances i1, i2, i3 of web (lease TTL ${TTL}s)"
for i in i1 i2 i3; do register "$i"; done
ALL3=$(wait_for_line "$LIST" "members: i1=10.0.0.1:8080 i2=10.0.0.2:8080 i3=10.0.0.3:8080$") ||
  fail "the list never showed all three instances: $(tail -3 "$LIST")"
say "list: ${ALL3#* }"

step "Writing the configuration twice"
kvctl --endpoints "$ALL" put app/config "log_level=info" >/dev/null
kvctl --endpoints "$ALL" put app/config "log_level=debug" >/dev/null
wait_for_line "$CONFIG" "log_level=debug" >/dev/null || fail "config_reload missed a write: $(cat "$CONFIG")"
grep -q "log_level=info" "$CONFIG" || fail "config_reload skipped log_level=info: $(cat "$CONFIG")"
say "$(grep applied "$CONFIG" | cut -d' ' -f2- | paste -sd';' -)"

step "SIGKILL the store's leader (node $LEADER), restart it, write the configuration again"
kill -KILL "${PIDS[$LEADER]}"
wait "${PIDS[$LEADER]}" 2>/dev/null || true
start_node "$LEADER"
NEW_LEADER=$(store_leader) || fail "no leader after the kill"
say "store leader: node $NEW_LEADER"
kvctl --endpoints "$ALL" put app/config "log_level=warn" >/dev/null
wait_for_line "$CONFIG" "log_level=warn" >/dev/null || fail "config_reload missed the write after the leader kill: $(cat "$CONFIG")"
APPLIED=$(grep -c "applied revision" "$CONFIG")
((APPLIED == 3)) || fail "config_reload applied $APPLIED changes, want exactly 3: $(cat "$CONFIG")"
say "config_reload applied all three writes, each once, in order"
# Past one TTL after the election: a lease that a new leader failed to restart would be gone.
sleep "$((TTL + 1))"

step "SIGKILL instance i2"
KILLED_AT=$(now_ms)
# (The wait, silenced, keeps bash from reporting the killed job.)
{ kill -KILL "${INSTANCES[i2]}" && wait "${INSTANCES[i2]}"; } 2>/dev/null || true
unset 'INSTANCES[i2]'
LEFT=$(wait_for_line "$LIST" "members: i1=10.0.0.1:8080 i3=10.0.0.3:8080$" 100 "$KILLED_AT") ||
  fail "i2 did not leave the list within 10 s: $(tail -3 "$LIST")"
LEFT_AT=${LEFT%% *}
TOOK=$((LEFT_AT - KILLED_AT))
say "i2 left the list $TOOK ms after SIGKILL (TTL ${TTL}s)"
((TOOK <= TTL * 1000 + SLACK_MS)) || fail "i2 left after $TOOK ms, more than TTL + $SLACK_MS ms"
# Every list printed since all three registered names i1 and i3: no live lease expired.
BAD=$(awk -v from="${ALL3%% *}" '$1 >= from && /members:/ && !(/i1=/ && /i3=/)' "$LIST")
[[ -z $BAD ]] || fail "a live instance left the list: $BAD"
say "i1 and i3 stayed listed throughout (their leases lived through the leader change)"

RESULT=PASS
printf '\nPASS\n'
