# Shell helpers shared by the demo and benchmark scripts (sourced, not run).

# A demo's output: a step heading, an indented line, and a failure that keeps the logs in
# $RUN_DIR and exits 1 (the demos end with PASS or FAIL: <reason>).
step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*"
  say "logs kept in $RUN_DIR"
  exit 1
}

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

# Builds every release binary and example (extra cargo flags in "$@"). Every script builds
# this same set: building examples turns on dev-dependency features (proptest's regex,
# tempfile's rustix) in shared dependencies, so a `--bins`-only build compiles the library a
# second time in another configuration (two minutes of a 2-core CI run).
build_release() {
  cargo build --release --bins --examples "$@"
}

# The directory cargo builds release binaries into (honours CARGO_TARGET_DIR).
release_dir() {
  local target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target=$PWD/$target
  echo "$target/release"
}

# Succeeds only if a linearizable `kvctl get` of key $2 through endpoints $1 answers exactly
# "key not found: $2" (exit 1): a timeout or "no leader" proves nothing about the key. Prints
# what kvctl said. Needs the caller's kvctl().
get_says_not_found() {
  local endpoints=$1 key=$2 out rc
  out=$(kvctl --endpoints "$endpoints" get "$key" 2>&1) && rc=0 || rc=$?
  echo "$out"
  [[ $rc == 1 && $out == "key not found: $key" ]]
}

# Prints the store's leader id once one node is leader and every reachable node agrees on it
# (and it is not node $1, when given); fails after 15 s. Needs the caller's kvctl() and ALL.
store_leader() {
  local found
  for _ in $(seq 1 60); do
    found=$(kvctl --endpoints "$ALL" --timeout 1s status 2>/dev/null | awk -v not="${1:-0}" '
      NR > 1 && $1 != "-" { rows++; if ($3 == "leader") { leaders++; id = $1 }; leader_of[rows] = $5 }
      END {
        if (leaders != 1 || id == not) exit 1
        for (r = 1; r <= rows; r++) if (leader_of[r] != id) exit 1
        print id
      }') && { echo "$found"; return 0; }
    sleep 0.25
  done
  return 1
}
