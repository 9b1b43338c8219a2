#!/usr/bin/env bash
# Real processes under real faults: a cluster of the kvstore binary, concurrent clients (some
# writes with values up to the 1 MiB limit), and a seeded schedule of SIGKILL/restart,
# SIGSTOP/SIGCONT and network partitions. At the end the run fails on any unexpected node exit
# or panic, replicas that do not converge, a non-linearizable history, a failed fault command,
# too few operations or faults, watchers (one per node, one over all) whose events are not
# exactly the cluster's changes, or leased keys that outlive their revoked or expired lease
# (or vanish while kept alive). With --membership it also replaces voters among the faults
# (remove, add a learner at a new address, start it with --join, promote) and checks the final
# membership on every member and that removed nodes stopped by themselves. Ends with PASS or
# FAIL. The seed also picks the nodes' --read-mode and --snapshot-entries (kvstore-chaos
# --help).
#
#   scripts/chaos.sh [--seed S] [--duration SECONDS] [--nodes 3|5] [--clients N] [...]
#   scripts/chaos.sh self-test [--net netns|proxy]
#
# `self-test` proves that every check can fail: one control run that must PASS, then one run
# per sabotage (--self-test, --clients 0) that must FAIL with the check that catches it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
build_release --quiet
CHAOS=$(release_dir)/kvstore-chaos

if [[ ${1:-} != self-test ]]; then
  exec "$CHAOS" "$@"
fi
shift

FAILED=0
# Runs a short seed-1 run with the given flags; $1 is the check that must fail, or PASS.
expect() {
  local want=$1 out rc work
  shift
  work=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-chaos-self-test.XXXXXX")
  out=$("$CHAOS" --seed 1 --duration 6 --settle 5 --work-dir "$work/run" "$@" 2>&1) && rc=0 || rc=$?
  rm -rf "$work"
  if [[ $want == PASS ]]; then
    if ((rc == 0)); then
      echo "ok   control run ($*) passes: $(grep -m1 '^  operations:' <<<"$out" | sed 's/^ *//')"
      return
    fi
  elif ((rc == 1)) && grep -q "^FAILED $want: " <<<"$out"; then
    echo "ok   $* fails the $want check: $(grep -m1 "^FAILED $want: " <<<"$out" | cut -c1-160)"
    return
  fi
  [[ $want == PASS ]] || want="FAIL from the $want check"
  echo "FAIL $*: expected $want, got exit $rc; last lines:"
  tail -n 15 <<<"$out" | sed 's/^/       /'
  FAILED=1
}

expect PASS "$@"
expect unexpected-exit --self-test rogue-kill "$@"
expect panic --self-test fake-panic "$@"
expect convergence --self-test diverge "$@"
expect min-faults --self-test no-faults "$@"
expect min-operations --clients 0 "$@"
expect watch --self-test drop-event "$@"
expect lease --self-test kept-expired "$@"
expect lease --self-test expired-kept "$@"
if [[ " $* " == *" --net proxy "* ]]; then
  echo "skip --self-test stale-member (--membership needs network namespaces)"
else
  expect membership --membership --self-test stale-member "$@"
fi
if [[ " $* " == *" --net proxy "* ]]; then
  echo "skip --self-test ip-fail (the proxy runs no ip command)"
elif [[ " $* " == *" --net "* ]]; then
  expect partition --self-test ip-fail "$@"
else
  expect partition --self-test ip-fail --net netns "$@"
fi
if ((FAILED)); then
  echo "chaos self-test: FAIL"
  exit 1
fi
echo "chaos self-test: PASS (every check fails when its sabotage is on)"
