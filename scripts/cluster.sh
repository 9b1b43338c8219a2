#!/usr/bin/env bash
# Run a local 3-node kvstore cluster on 127.0.0.1:9001-9003.
#
#   scripts/cluster.sh up       build (release) once, start the 3 nodes in the background
#   scripts/cluster.sh status   kvctl status of every node
#   scripts/cluster.sh down     SIGTERM the nodes started by `up` and wait for them to exit
#
# Data, logs and pids live under run/ (git-ignored): run/data/node-N, run/node-N.log,
# run/node-N.pid. Remove run/ to start from an empty cluster.
set -euo pipefail

cd "$(dirname "$0")/.."
RUN_DIR=run
BIN=target/release
IDS=(1 2 3)
ENDPOINTS=127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003

port_of() { echo $((9000 + $1)); }

addr() { echo "127.0.0.1:$(port_of "$1")"; }
source scripts/lib.sh

is_running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  build_release
  mkdir -p "$RUN_DIR/data"
  local id pidfile
  for id in "${IDS[@]}"; do
    pidfile="$RUN_DIR/node-$id.pid"
    if is_running "$pidfile"; then
      echo "node $id already running (pid $(cat "$pidfile"))"
      continue
    fi
    "$BIN/kvstore" --id "$id" --port "$(port_of "$id")" --peers "$(peers_of "$id")" \
      --data-dir "$RUN_DIR/data/node-$id" >>"$RUN_DIR/node-$id.log" 2>&1 &
    echo $! >"$pidfile"
    echo "started node $id on 127.0.0.1:$(port_of "$id") (pid $!, log $RUN_DIR/node-$id.log)"
  done
  for _ in $(seq 1 50); do
    if "$BIN/kvctl" --endpoints "$ENDPOINTS" --timeout 1s status 2>/dev/null | awk '$3 == "leader" { found = 1 } END { exit !found }'; then
      "$BIN/kvctl" --endpoints "$ENDPOINTS" --timeout 1s status
      return 0
    fi
    sleep 0.2
  done
  echo "cluster.sh: no leader elected within 10 s; see $RUN_DIR/node-*.log" >&2
  return 1
}

down() {
  local id pidfile pid
  for id in "${IDS[@]}"; do
    pidfile="$RUN_DIR/node-$id.pid"
    if ! is_running "$pidfile"; then
      rm -f "$pidfile"
      continue
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "node $id (pid $pid) did not exit within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "stopped node $id"
  done
}

status() {
  if [[ ! -x $BIN/kvctl ]]; then
    build_release
  fi
  "$BIN/kvctl" --endpoints "$ENDPOINTS" --timeout 2s status
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: scripts/cluster.sh up|down|status" >&2
    exit 2
    ;;
esac
