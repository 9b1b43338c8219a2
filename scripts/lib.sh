# Shell helpers shared by the demo and benchmark scripts (sourced, not run).

# Stops processes: SIGCONT (a frozen one cannot exit) and SIGTERM to all, then waits up to
# 5 s for each before SIGKILL, and reaps it.
stop_pids() {
  local pid
  for pid in "$@"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# The --peers value of node $1: every id in IDS but $1, as ID=ADDR, with the caller's addr().
peers_of() {
  local id=$1 peers=() p
  for p in "${IDS[@]}"; do
    [[ $p == "$id" ]] || peers+=("$p=$(addr "$p")")
  done
  (IFS=,; echo "${peers[*]}")
}
