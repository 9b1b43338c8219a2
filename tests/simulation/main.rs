//! The deterministic simulator (`kvstore::sim`) under `cargo test`, as a test binary of its
//! own: these runs keep every core busy for a while, and in the library's test binary they
//! starved the tests that measure real time (elections within a few hundred milliseconds).
//!
//! - here: a fixed set of random seeds passes every check, and does real work;
//! - `mutations`: each deliberate protocol bug is caught by the checker meant to catch it, at
//!   an exact first seed, and that seed passes without the bug (the control run);
//! - `scenarios`: scripted faults at chosen times, with measured timings, each with a control.
//!
//! `scripts/sim.sh` runs many more seeds. The determinism test (a seed replays bit for bit)
//! stays a unit test in `src/sim/tests.rs`: it needs a crate-private trace.

mod mutations;
mod scenarios;

use kvstore::sim::{run, Failure, Outcome, SimConfig};

/// Seeds run by `cargo test` (debug build, about 0.7 s each: a smoke set; `.ci/run` runs
/// thousands more in release with `scripts/sim.sh`).
const FIXED_SEEDS: u64 = 60;

fn replay_hint(f: &Failure) -> String {
    format!("{f}\nreplay: scripts/sim.sh --seed {} --trace", f.seed)
}

#[test]
fn fixed_seeds_pass_every_check() {
    let mut total = Outcome::default();
    for seed in 0..FIXED_SEEDS {
        let out = run(SimConfig::for_seed(seed)).unwrap_or_else(|f| panic!("{}", replay_hint(&f)));
        total.ok += out.ok;
        total.faults += out.faults;
        total.leader_changes += out.leader_changes;
        total.lock_grants += out.lock_grants;
        total.fenced_ok += out.fenced_ok;
        total.fenced_stale += out.fenced_stale;
        total.snapshots_taken += out.snapshots_taken;
        total.snapshots_installed += out.snapshots_installed;
        total.disk_failures += out.disk_failures;
        total.transfers += out.transfers;
        total.transfer_campaigns += out.transfer_campaigns;
        total.lease_reads += out.lease_reads;
    }
    eprintln!(
        "{FIXED_SEEDS} seeds: {} leadership transfers started, {} reached their target, {} reads served by lease",
        total.transfers, total.transfer_campaigns, total.lease_reads
    );
    eprintln!(
        "{FIXED_SEEDS} seeds: {} snapshots taken, {} installed, {} disk failures",
        total.snapshots_taken, total.snapshots_installed, total.disk_failures
    );
    eprintln!(
        "{FIXED_SEEDS} seeds: {} lock grants, {} fenced writes applied, {} rejected as stale",
        total.lock_grants, total.fenced_ok, total.fenced_stale
    );
    let n = FIXED_SEEDS;
    // The runs did real work under real faults, or passing means nothing: transfers ran
    // under faults and lease mode served reads; compaction, snapshot installs and failing
    // disks happened; locks changed hands and zombies were fenced off.
    let minimums = [
        ("operations completed", total.ok, 50 * n),
        ("faults injected", total.faults, 10 * n),
        ("leader changes", total.leader_changes, 2 * n),
        ("transfers", total.transfers, n / 10),
        ("transfer elections", total.transfer_campaigns, n / 20),
        ("lease reads", total.lease_reads, n),
        ("snapshots taken", total.snapshots_taken, 5 * n),
        ("snapshots installed", total.snapshots_installed, n),
        ("disk failures", total.disk_failures, n / 4),
        ("lock grants", total.lock_grants, 2 * n),
        ("fenced writes", total.fenced_ok, 5 * n),
        ("stale fences", total.fenced_stale, n / 4),
    ];
    for (what, got, above) in minimums {
        assert!(got > above, "only {got} {what} (want more than {above})");
    }
}

/// Seeds run with the key-space workload (`SimConfig::kv_txns`).
const KV_TXN_SEEDS: u64 = 150;

/// The key-space workload (CAS loops, pair Txns, Ranges at current and past revisions,
/// compactions) under the standard faults passes every check: linearizability with CAS,
/// pair atomicity, revision consistency and density, identical histories on every replica.
#[test]
fn kv_txn_seeds_pass_every_check() {
    let mut total = Outcome::default();
    for seed in 0..KV_TXN_SEEDS {
        let mut c = SimConfig::for_seed(seed);
        c.kv_txns = true;
        let out = run(c).unwrap_or_else(|f| panic!("{}", replay_hint_kv(&f)));
        total.ok += out.ok;
        total.snapshots_installed += out.snapshots_installed;
        total.cas_succeeded += out.cas_succeeded;
        total.cas_failed += out.cas_failed;
        total.pair_reads_present += out.pair_reads_present;
        total.compactions += out.compactions;
        total.past_reads += out.past_reads;
        total.past_reads_compacted += out.past_reads_compacted;
    }
    let n = KV_TXN_SEEDS;
    // The workload did what it is for: CAS loops won and lost races, pairs were read while
    // written, compactions applied, and past reads met data and compacted revisions.
    let minimums = [
        ("operations completed", total.ok, 50 * n),
        ("snapshots installed", total.snapshots_installed, n / 2),
        ("CAS succeeded", total.cas_succeeded, 5 * n),
        ("CAS failed", total.cas_failed, 2 * n),
        (
            "pair reads of a written pair",
            total.pair_reads_present,
            3 * n,
        ),
        ("compactions", total.compactions, n),
        ("past reads", total.past_reads, n),
        ("past reads compacted", total.past_reads_compacted, n / 10),
    ];
    let counts: Vec<String> = minimums
        .iter()
        .map(|(what, got, _)| format!("{got} {what}"))
        .collect();
    eprintln!("{n} kv-txns seeds: {}", counts.join(", "));
    for (what, got, above) in minimums {
        assert!(got > above, "only {got} {what} (want more than {above})");
    }
}

fn replay_hint_kv(f: &Failure) -> String {
    format!(
        "{f}\nreplay: scripts/sim.sh --seed {} --trace --kv-txns",
        f.seed
    )
}

/// Seeds run with the key-lease workload (`SimConfig::key_leases`).
const KEY_LEASE_SEEDS: u64 = 50;

/// The key-lease workload (grants, keys attached by puts and Txn puts, keep-alives answered
/// once a quorum confirmed the leader, revokes, clients that stop renewing), with watchers on
/// every node, under the standard faults passes every check: every watcher delivers exactly
/// its range's history, each event no earlier than applied and equal to the committed change;
/// each revoke deletes exactly its keys at one revision on every replica, no renewal answered
/// to a client is cut short by the clock, every lease ends once its client stopped, and every
/// replica holds the same lease table.
#[test]
fn key_lease_seeds_pass_every_check() {
    let mut total = Outcome::default();
    for seed in 0..KEY_LEASE_SEEDS {
        let mut c = SimConfig::for_seed(seed);
        c.key_leases = true;
        c.watches = true;
        let out = run(c).unwrap_or_else(|f| {
            panic!(
                "{f}\nreplay: scripts/sim.sh --seed {} --trace --key-leases --watches",
                f.seed
            )
        });
        total.key_lease_grants += out.key_lease_grants;
        total.key_lease_renewals += out.key_lease_renewals;
        total.key_lease_revokes_with_keys += out.key_lease_revokes_with_keys;
        total.watch_events += out.watch_events;
    }
    let n = KEY_LEASE_SEEDS;
    eprintln!(
        "{n} key-lease seeds: {} grants, {} renewals, {} revokes that deleted keys (per node)",
        total.key_lease_grants, total.key_lease_renewals, total.key_lease_revokes_with_keys,
    );
    // The workload did what it is for: leases granted, renewed, and revoked with keys.
    let minimums = [
        ("grants", total.key_lease_grants, 3 * n),
        ("renewals", total.key_lease_renewals, 2 * n),
        (
            "revokes that deleted keys",
            total.key_lease_revokes_with_keys,
            3 * n,
        ),
        ("watch events delivered", total.watch_events, 20 * n),
    ];
    for (what, got, above) in minimums {
        assert!(got > above, "only {got} {what} (want more than {above})");
    }
}

/// Regression: a heartbeat answer below an in-flight snapshot switched the follower's
/// progress to replicating past entries it never received, and it never caught up.
/// Seeds of the membership workload run by `cargo test` (`.ci/run` runs more in release).
const MEMBERSHIP_SEEDS: u64 = 20;

/// Issue 15: with an operator changing the membership under the usual faults, every check
/// passes (with the membership each node follows), and the changes really happened:
/// learners added and promoted, voters removed, the leader removing itself, down nodes
/// removed.
#[test]
fn membership_seeds_pass_every_check() {
    let mut total = Outcome::default();
    for seed in 0..MEMBERSHIP_SEEDS {
        let mut cfg = SimConfig::for_seed(seed);
        cfg.membership = true;
        let out = run(cfg).unwrap_or_else(|f| {
            panic!(
                "{f}\nreplay: scripts/sim.sh --seed {} --trace --membership",
                f.seed
            )
        });
        total.ok += out.ok;
        total.learners_added += out.learners_added;
        total.learners_promoted += out.learners_promoted;
        total.voters_removed += out.voters_removed;
        total.learners_removed += out.learners_removed;
        total.leaders_removed += out.leaders_removed;
        total.down_nodes_removed += out.down_nodes_removed;
    }
    eprintln!("{MEMBERSHIP_SEEDS} membership seeds: {total:?}");
    let n = MEMBERSHIP_SEEDS;
    let minimums = [
        ("client ops acknowledged", total.ok, 20 * n),
        ("learners added", total.learners_added, n),
        ("learners promoted", total.learners_promoted, n / 10),
        ("voters removed", total.voters_removed, n),
        ("learners removed", total.learners_removed, n / 10),
        ("leaders removing themselves", total.leaders_removed, n / 10),
        ("down nodes removed", total.down_nodes_removed, n / 10),
    ];
    for (what, got, min) in minimums {
        assert!(
            got >= min,
            "only {got} {what} over {n} seeds (at least {min} expected)"
        );
    }
}

#[test]
fn a_follower_restarting_behind_a_compacted_leader_catches_up() {
    let out = run(SimConfig::for_seed(3147)).unwrap_or_else(|f| panic!("{}", replay_hint(&f)));
    assert!(out.snapshots_installed > 0);
}
