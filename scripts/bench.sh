#!/usr/bin/env bash
# Benchmark a 3-node kvstore cluster, and with --vs-etcd a 3-node etcd cluster beside it, on
# loopback, with the same load generator (kvstore-bench), and print a comparison table.
#
#   scripts/bench.sh [--vs-etcd] [--etcd-api] [--quick] [--duration 5s] [--warmup 1s]
#                    [--nodes 3|5] [--clients "1 16 64 256"] [--workloads "put get"]
#                    [--key-space 10000] [--out target/bench] [--perf]
#                    [--perf-node leader|follower] [--ports 9300]
#
# What it does:
#  1. installs what is missing (Debian packages: fonts-dejavu-core for the plots; with
#     --vs-etcd also etcd-server, and protobuf-compiler which etcd-client's build needs)
#  2. builds kvstore, kvstore-bench and kvstore-plot in release mode
#  3. starts 3 (or --nodes 5) kvstore nodes (and as many etcd members) with data dirs in one
#     temp folder, so both systems fsync to the same disk
#  4. runs the matrix: every workload x every client count, 100-byte values, each run
#     `--warmup` unmeasured then `--duration` measured; the two systems alternate run by run
#     (kvstore first in one cell, etcd first in the next) so drift hits both alike
#  5. writes OUT/results.jsonl (one kvstore-bench JSON report per run), OUT/table.md,
#     OUT/throughput.png, OUT/latency.png, OUT/machine.txt, OUT/cpu.txt (CPU seconds the
#     servers used in each run, and per operation), and prints the table
#
# --etcd-api: adds the etcd-API rows to the matrix, driven through etcd's v3 API on BOTH
#   systems (kvstore through its etcd front end): txn-cas (a compare-and-swap increment of one
#   of 1,000 counters; ops = successful increments, failed compares counted as conflicts) and
#   range (a linearizable Range of a prefix holding 100 keys). --key-space does not apply to
#   them. Also watch (1,000 watchers on one prefix spread over every member, the clients
#   putting under it; events delivered per second, latency from a put's acknowledgement to
#   each event, every missed or repeated event an error) and lease-keepalive (10,000 leases
#   renewed by the clients, one keep-alive stream each). Needs the etcd cargo feature (so
#   protoc). While kvstore does not serve the etcd service a row needs, its runs of that row
#   fail in one line, the script says so and goes on. Each name also works in --workloads.
# --quick: clients 1 and 16, 1 s per run, 0.5 s warmup: well under a minute once built.
# --perf: records a perf profile of the kvstore leader during the first workload's run with 64 clients
#   (or the largest count below it) into OUT/perf-leader.txt (Debian package linux-perf);
#   with --perf-node follower, of a follower instead, into OUT/perf-follower.txt.
#
# --ports N: kvstore listens on N+1.., etcd on N+11.. (clients) and N+21.. (peers); give two
#   runs at once different N.
#
# Figures from a shared or small machine are noisy: the load generator and all six servers
# share its cores. Stops every process it started on exit, also on Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

ARGS="$*"
VS_ETCD=0
ETCD_API=0
DURATION=5s
WARMUP=1s
CLIENTS="1 16 64 256"
WORKLOADS="put get"
KEY_SPACE=10000
OUT=$ROOT/target/bench
PERF=0
PERF_NODE=leader
PORTS=9300
NODES=3

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --vs-etcd) VS_ETCD=1 ;;
    --etcd-api) ETCD_API=1 ;;
    --quick) CLIENTS="1 16"; DURATION=1s; WARMUP=500ms ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --key-space) KEY_SPACE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --nodes) NODES=$2; shift ;;
    --perf) PERF=1 ;;
    --ports) PORTS=$2; shift ;;
    --perf-node) PERF=1; PERF_NODE=$2; shift
      [[ $PERF_NODE == leader || $PERF_NODE == follower ]] || { echo "bench.sh: --perf-node takes leader or follower" >&2; exit 2; } ;;
    -h|--help) usage ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $NODES == 3 || $NODES == 5 ]] || { echo "bench.sh: --nodes must be 3 or 5, not $NODES" >&2; exit 2; }
[[ $ETCD_API == 1 ]] && WORKLOADS="$WORKLOADS txn-cas range watch lease-keepalive"
# The etcd-API workloads speak etcd's API to both systems: kvstore-bench needs the etcd feature.
is_etcd_api() { [[ $1 == txn-cas || $1 == range || $1 == watch || $1 == lease-keepalive ]]; }
NEEDS_ETCD_CLIENT=$VS_ETCD
for w in $WORKLOADS; do is_etcd_api "$w" && NEEDS_ETCD_CLIENT=1; done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-bench.XXXXXX")
declare -A PIDS=()
KV_PORTS=() ETCD_CLIENT_PORTS=() ETCD_PEER_PORTS=() KV_ENDPOINTS="" ETCD_ENDPOINTS=""
for ((i = 1; i <= NODES; i++)); do
  KV_PORTS+=($((PORTS + i)))
  ETCD_CLIENT_PORTS+=($((PORTS + 10 + i)))
  ETCD_PEER_PORTS+=($((PORTS + 20 + i)))
  KV_ENDPOINTS+="${KV_ENDPOINTS:+,}127.0.0.1:$((PORTS + i))"
  ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1:$((PORTS + 10 + i))"
done
NODE_INDEXES=$(seq 0 $((NODES - 1)))

# Seconds in a kvstore-bench duration (500ms, 5s, 1m, or a bare number of seconds).
secs() {
  awk -v d="$1" 'BEGIN {
    if (d ~ /ms$/) { sub(/ms$/, "", d); print d / 1000 }
    else if (d ~ /m$/) { sub(/m$/, "", d); print d * 60 }
    else { sub(/s$/, "", d); print d + 0 }
  }'
}

die() { printf 'bench.sh: %s\n' "$*" >&2; exit 1; }

source scripts/lib.sh
BIN=$(release_dir) # honours CARGO_TARGET_DIR

cleanup() {
  stop_pids "${PIDS[@]}"
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---------------------------------------------------------------- 1. dependencies
apt_install() {
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  say "installing $* (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
missing=()
[[ -f $FONT ]] || missing+=(fonts-dejavu-core)
if [[ $VS_ETCD == 1 ]]; then
  command -v etcd >/dev/null || missing+=(etcd-server)
fi
if [[ $NEEDS_ETCD_CLIENT == 1 ]]; then
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
fi
if [[ $PERF == 1 ]] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
if [[ ${#missing[@]} -gt 0 ]]; then
  step "Installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

# ---------------------------------------------------------------- 2. build
FEATURES=plot
[[ $NEEDS_ETCD_CLIENT == 1 ]] && FEATURES=plot,etcd
step "Building release binaries (features: $FEATURES)"
cargo build --release --features "$FEATURES" --bin kvstore --bin kvctl --bin kvstore-bench --bin kvstore-plot

# ---------------------------------------------------------------- 3. clusters
start_kvstore() {
  local i id peers j
  for i in $NODE_INDEXES; do
    id=$((i + 1))
    peers=()
    for j in $NODE_INDEXES; do
      [[ $j == "$i" ]] || peers+=("$((j + 1))=127.0.0.1:${KV_PORTS[$j]}")
    done
    "$BIN/kvstore" --id "$id" --port "${KV_PORTS[$i]}" --peers "$(IFS=,; echo "${peers[*]}")" \
      --data-dir "$RUN_DIR/kvstore-$id" >"$RUN_DIR/kvstore-$id.log" 2>&1 &
    PIDS[kvstore-$id]=$!
  done
}

start_etcd() {
  local i cluster=""
  for i in $NODE_INDEXES; do
    cluster+="${cluster:+,}etcd-$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
  done
  for i in $NODE_INDEXES; do
    etcd --name "etcd-$((i + 1))" --data-dir "$RUN_DIR/etcd-$((i + 1))" \
      --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token kvstore-bench --log-level warn \
      >"$RUN_DIR/etcd-$((i + 1)).log" 2>&1 &
    PIDS[etcd-$((i + 1))]=$!
  done
}

# The kvstore leader's node id, from kvctl status ("" while there is none).
kvstore_leader() {
  "$BIN/kvctl" --endpoints "$KV_ENDPOINTS" --timeout 1s status 2>/dev/null |
    awk '$3 == "leader" { print $1; exit }'
}

wait_for_kvstore() {
  for _ in $(seq 1 100); do
    [[ -n $(kvstore_leader) ]] && return 0
    sleep 0.1
  done
  die "kvstore elected no leader within 10 s; see $RUN_DIR/kvstore-*.log"
}

step "Starting $NODES kvstore nodes on $KV_ENDPOINTS (data in $RUN_DIR)"
start_kvstore
wait_for_kvstore
say "leader: node $(kvstore_leader)"
if [[ $VS_ETCD == 1 ]]; then
  step "Starting $NODES etcd members on $ETCD_ENDPOINTS ($(etcd --version | head -1), data in $RUN_DIR)"
  start_etcd
fi

# ---------------------------------------------------------------- 4. the matrix
{
  echo "date: $(date -u +%Y-%m-%d)"
  echo "cpus: $(nproc) x $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "memory: $(free -h | awk '/^Mem:/ { print $2 }')"
  echo "disk: $(df -h "$RUN_DIR" | awk 'NR == 2 { print $1 " (" $2 ")" }'), data dirs under $(dirname "$RUN_DIR")"
  echo "kernel: $(uname -r)"
  # The physical floor of a put: one synchronous write on this disk (plus the network).
  echo "synchronous 512-byte write on the data disk (dd oflag=dsync, 500 writes): $(
    dd if=/dev/zero of="$RUN_DIR/dsync.test" bs=512 count=500 oflag=dsync 2>&1 |
      awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) t = $(i - 1); printf "%.0f us per write", t * 1e6 / 500 }'
  )"
  rm -f "$RUN_DIR/dsync.test"
  echo "load average before the matrix: $(cut -d' ' -f1-3 /proc/loadavg)"
  [[ $VS_ETCD == 1 ]] && echo "etcd: $(etcd --version | head -1)"
  echo "command: scripts/bench.sh $ARGS"
  echo "matrix: $NODES nodes, workloads [$WORKLOADS], clients [$CLIENTS], $DURATION measured after $WARMUP warmup, 100-byte values, $KEY_SPACE keys (txn-cas: 1000 counters, range: 100 keys under a prefix, watch: 1000 watchers, lease-keepalive: 10000 leases)"
} >"$OUT/machine.txt"

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
: >"$OUT/cpu.txt"
SYSTEMS=(kvstore)
[[ $VS_ETCD == 1 ]] && SYSTEMS=(kvstore etcd)
read -ra CLIENT_LIST <<<"$CLIENTS"
read -ra WORKLOAD_LIST <<<"$WORKLOADS"
TOTAL=$(( ${#WORKLOAD_LIST[@]} * ${#CLIENT_LIST[@]} * ${#SYSTEMS[@]} ))
declare -A PRELOADED=()
PERF_CLIENTS=0
for c in "${CLIENT_LIST[@]}"; do
  if (( c <= 64 && c > PERF_CLIENTS )); then PERF_CLIENTS=$c; fi
done

profile_leader() {
  local id pid
  id=$(kvstore_leader)
  [[ -n $id ]] || { say "perf: no leader to profile"; return; }
  if [[ $PERF_NODE == follower ]]; then id=$(( id % NODES + 1 )); fi
  pid=${PIDS[kvstore-$id]}
  say "perf: recording kvstore $PERF_NODE (node $id, pid $pid) for the measured run"
  perf record -F 299 --call-graph dwarf,16384 -p "$pid" -o "$OUT/perf.data" \
    -- sleep "$(secs "$DURATION")" \
    >"$RUN_DIR/perf.log" 2>&1 &
  PIDS[perf]=$!
}

# CPU ticks (user + system) used so far by the server processes of one system.
server_ticks() {
  local name total=0
  for name in "${!PIDS[@]}"; do
    [[ $name == "$1"-* ]] || continue
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/${PIDS[$name]}/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# CPU ticks used so far by this shell's finished children: the load generator's runs (and a
# few short tools like awk and sleep).
client_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }

run_one() {
  local system=$1 workload=$2 clients=$3 endpoints preload=() report ticks cticks keys
  ticks=$(server_ticks "$system")
  cticks=$(client_ticks)
  endpoints=$KV_ENDPOINTS
  [[ $system == etcd ]] && endpoints=$ETCD_ENDPOINTS
  keys=(--key-space "$KEY_SPACE")
  if is_etcd_api "$workload"; then
    # Their own key counts (1,000 counters, 100 keys, 1,000 watchers, 10,000 leases); range
    # rewrites its 100 keys each run.
    keys=()
  else
    # Read workloads need the key space written once per system; later runs reuse it.
    if [[ $workload != put && -n ${PRELOADED[$system]:-} ]]; then preload=(--no-preload); fi
    [[ $workload != put ]] && PRELOADED[$system]=1
  fi
  if [[ $PERF == 1 && $system == kvstore && $workload == "${WORKLOAD_LIST[0]}" && $clients == "$PERF_CLIENTS" ]]; then
    # Start recording when the warmup ends: run the bench in the background meanwhile.
    "$BIN/kvstore-bench" "$workload" --target "$system" --endpoints "$endpoints" \
      --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" "${keys[@]}" \
      --json --no-progress "${preload[@]}" >"$RUN_DIR/run.json" &
    local bench_pid=$!
    sleep "$(secs "$WARMUP")"
    profile_leader
    wait "$bench_pid"
    wait "${PIDS[perf]}" 2>/dev/null || true
    unset 'PIDS[perf]'
    report=$(cat "$RUN_DIR/run.json")
  elif is_etcd_api "$workload" && [[ $system == kvstore ]]; then
    # kvstore's etcd front end may not serve these yet: say why and go on without the run.
    if ! report=$("$BIN/kvstore-bench" "$workload" --target "$system" --endpoints "$endpoints" \
      --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" \
      --json 2>"$RUN_DIR/run.err"); then
      RUN=$((RUN + 1))
      printf '    [%2d/%d] %-7s %-7s %3s clients: FAILED: %s\n' "$RUN" "$TOTAL" "$system" "$workload" \
        "$clients" "$(head -1 "$RUN_DIR/run.err")"
      echo "$system $workload $clients clients: not run: $(head -1 "$RUN_DIR/run.err")" >>"$OUT/machine.txt"
      return 0
    fi
  else
    report=$("$BIN/kvstore-bench" "$workload" --target "$system" --endpoints "$endpoints" \
      --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" "${keys[@]}" \
      --json "${preload[@]}")
  fi
  echo "$report" >>"$RESULTS"
  # Includes the warmup (and a read workload's first preload), so it is a slight overestimate;
  # for lease-keepalive it also includes granting and revoking every lease: a large one.
  echo "$report" | awk -v sys="$system" -v wl="$workload" -v c="$clients" \
    -v ticks=$(( $(server_ticks "$system") - ticks )) -v hz="$(getconf CLK_TCK)" \
    -v cticks=$(( $(client_ticks) - cticks )) \
    -v secs="$(secs "$DURATION")" -v warm="$(secs "$WARMUP")" '{
      match($0, /"throughput_ops_s":[0-9.]+/); ops = substr($0, RSTART + 19, RLENGTH - 19)
      cpu = ticks / hz; ccpu = cticks / hz; n = ops * (secs + warm)
      printf "%-7s %-7s %4d clients: servers used %6.2f CPU s, %6.1f us per op; load generator %6.2f CPU s, %6.1f us per op\n",
        sys, wl, c, cpu, (n > 0 ? cpu * 1e6 / n : 0), ccpu, (n > 0 ? ccpu * 1e6 / n : 0)
    }' >>"$OUT/cpu.txt"
  RUN=$((RUN + 1))
  local unit=ops/s,
  [[ $workload == watch ]] && unit=events/s, # one operation is one event delivered to a watcher
  printf '    [%2d/%d] %-7s %-7s %3s clients: %s\n' "$RUN" "$TOTAL" "$system" "$workload" "$clients" \
    "$(echo "$report" | sed -E 's/.*"ops":([0-9]+).*"errors":([0-9]+).*"throughput_ops_s":([0-9.]+).*"p50_us":([0-9]+).*"p99_us":([0-9]+).*/\3 ops\/s, p50 \4 us, p99 \5 us, \2 errors/' | awk -v unit="$unit" '{ $1 = sprintf("%.0f", $1); $2 = unit; print }')"
}

step "Running $TOTAL runs: ${WORKLOAD_LIST[*]} x clients ${CLIENT_LIST[*]} x ${SYSTEMS[*]}, $DURATION each after $WARMUP warmup"
RUN=0
cell=0
for workload in "${WORKLOAD_LIST[@]}"; do
  for clients in "${CLIENT_LIST[@]}"; do
    order=("${SYSTEMS[@]}")
    if (( cell % 2 == 1 && ${#SYSTEMS[@]} == 2 )); then order=(etcd kvstore); fi
    for system in "${order[@]}"; do
      run_one "$system" "$workload" "$clients"
    done
    cell=$((cell + 1))
  done
done

echo "load average after the matrix: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

# ---------------------------------------------------------------- 5. table and plots
step "Results ($RESULTS)"
"$BIN/kvstore-plot" "$RESULTS" --out "$OUT" --font "$FONT" \
  --subtitle "$(date -u +%Y-%m-%d), $(nproc) cores, $NODES nodes"
if [[ $PERF == 1 && -f $OUT/perf.data ]]; then
  {
    echo "# kvstore $PERF_NODE under ${WORKLOAD_LIST[0]} with $PERF_CLIENTS clients: self time (flat), then inclusive time"
    echo "# of the kvstore functions (children), from perf record --call-graph dwarf"
    perf report -i "$OUT/perf.data" --stdio --no-children -g none --sort dso,symbol \
      --percent-limit 0.7 -w 8,16,100 2>/dev/null | grep -v '^$'
    echo
    perf report -i "$OUT/perf.data" --stdio --children -g none --sort symbol --dsos kvstore \
      --percent-limit 3 -w 8,8,110 2>/dev/null | grep -v '^$' | head -70
  } | cut -c1-160 | sed -E 's/ +- +- *$//; s/ *$//' >"$OUT/perf-$PERF_NODE.txt" || true
  say "perf profile of the $PERF_NODE: $OUT/perf-$PERF_NODE.txt (raw: $OUT/perf.data)"
fi
say "server CPU per run: $OUT/cpu.txt"
say "machine: $OUT/machine.txt"
