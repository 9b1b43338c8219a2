//! The simulator under `cargo test`: a fixed set of seeds must pass, and each protocol
//! mutation must be caught within a bounded number of seeds (the checkers can fail).
//! `scripts/sim.sh` runs many more seeds.

use super::*;
use crate::raft::Mutation;

/// Seeds run by `cargo test` (debug build: about 10 ms each).
const FIXED_SEEDS: u64 = 300;

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
    // Transfers ran under faults and lease mode served reads, or they were not tested.
    assert!(
        total.transfers > FIXED_SEEDS / 10,
        "only {} transfers",
        total.transfers
    );
    assert!(
        total.transfer_campaigns > FIXED_SEEDS / 20,
        "only {} transfer elections",
        total.transfer_campaigns
    );
    assert!(
        total.lease_reads > FIXED_SEEDS,
        "only {} lease reads",
        total.lease_reads
    );
    eprintln!(
        "{FIXED_SEEDS} seeds: {} snapshots taken, {} installed, {} disk failures",
        total.snapshots_taken, total.snapshots_installed, total.disk_failures
    );
    // Compaction, snapshot installs and failing disks really happened under the faults.
    assert!(
        total.snapshots_taken > 5 * FIXED_SEEDS,
        "only {} snapshots taken",
        total.snapshots_taken
    );
    assert!(
        total.snapshots_installed > FIXED_SEEDS,
        "only {} snapshots installed",
        total.snapshots_installed
    );
    assert!(
        total.disk_failures > FIXED_SEEDS / 4,
        "only {} disk failures",
        total.disk_failures
    );
    eprintln!(
        "{FIXED_SEEDS} seeds: {} lock grants, {} fenced writes applied, {} rejected as stale",
        total.lock_grants, total.fenced_ok, total.fenced_stale
    );
    // Locks changed hands and zombies were fenced off, or the lock checks checked nothing.
    assert!(
        total.lock_grants > 2 * FIXED_SEEDS,
        "only {} grants",
        total.lock_grants
    );
    assert!(
        total.fenced_ok > 5 * FIXED_SEEDS,
        "only {} fenced writes",
        total.fenced_ok
    );
    assert!(
        total.fenced_stale > FIXED_SEEDS / 4,
        "only {} stale fences",
        total.fenced_stale
    );
    // The runs must have done real work under real faults, or passing means nothing.
    assert!(
        total.ok > 50 * FIXED_SEEDS,
        "only {} operations completed",
        total.ok
    );
    assert!(
        total.faults > 10 * FIXED_SEEDS,
        "only {} faults injected",
        total.faults
    );
    assert!(
        total.leader_changes > 2 * FIXED_SEEDS,
        "only {} leader changes",
        total.leader_changes
    );
}

#[test]
fn same_seed_same_run() {
    let mut a = SimConfig::for_seed(42);
    a.trace = true;
    let b = a.clone();
    let (ra, rb) = (world::run_traced(a), world::run_traced(b));
    assert_eq!(ra, rb, "a seed must replay bit for bit");
    assert!(ra.len() > 100);
}

/// First seed in `0..limit` at which the mutated protocol is caught.
fn first_caught(m: Mutation, limit: u64) -> Option<(u64, String)> {
    (0..limit).find_map(|seed| {
        let mut c = SimConfig::for_seed(seed);
        c.mutation = m;
        // Snapshots only where the mutation is about them; no disk faults (they came later
        // and would change every seed's random stream).
        if m != Mutation::InstallStaleSnapshot {
            c.snapshot_every = 0;
        }
        c.disk_faults = false;
        c.transfers = false;
        // The Raft mutations keep the key-value workload they were calibrated on (lock
        // clients change every seed's random stream).
        c.lock_clients = 0;
        // ...and its short values (large ones came later too).
        c.large_values = false;
        // ...and the paper's base protocol: PreVote pre-checks every election, which makes a
        // miscounted stale vote rarely matter (measured separately, see the README).
        c.classic_raft = true;
        run(c).err().map(|f| (seed, f.message))
    })
}

#[test]
fn mutation_no_check_term_is_caught() {
    let (seed, msg) =
        first_caught(Mutation::NoCheckTerm, 20).expect("disabling check_term went unnoticed");
    eprintln!("NoCheckTerm caught at seed {seed}: {msg}");
}

#[test]
fn mutation_count_stale_votes_is_caught() {
    // Rare in random schedules (about 1 seed in 800: a grant must be delayed past its
    // sender's next term); `raft::core::tests::a_stale_vote_counted_makes_two_leaders_of_one_term`
    // builds that schedule on purpose.
    let (seed, msg) =
        first_caught(Mutation::CountStaleVotes, 2000).expect("counting stale votes went unnoticed");
    assert!(
        msg.contains("Election Safety") || msg.contains("Leader Completeness"),
        "expected two leaders in one term (or a leader missing a committed entry), got: {msg}"
    );
    eprintln!("CountStaleVotes caught at seed {seed}");
}

#[test]
fn mutation_install_stale_snapshot_is_caught() {
    let (seed, msg) = first_caught(Mutation::InstallStaleSnapshot, 200)
        .expect("installing a stale snapshot went unnoticed");
    eprintln!("InstallStaleSnapshot caught at seed {seed}: {msg}");
}

/// Regression: a heartbeat answer below an in-flight snapshot switched the follower's
/// progress to replicating past entries it never received, and it never caught up.
#[test]
fn a_follower_restarting_behind_a_compacted_leader_catches_up() {
    let out = run(SimConfig::for_seed(3147)).unwrap_or_else(|f| panic!("{}", replay_hint(&f)));
    assert!(out.snapshots_installed > 0);
}

#[test]
fn mutation_ack_before_persist_is_caught() {
    let (seed, msg) =
        first_caught(Mutation::AckBeforePersist, 200).expect("acking before fsync went unnoticed");
    eprintln!("AckBeforePersist caught at seed {seed}: {msg}");
}

#[test]
fn a_driver_that_drops_fences_is_caught() {
    let caught = (0..20).find_map(|seed| {
        let mut c = SimConfig::for_seed(seed);
        c.strip_fences = true;
        run(c).err().map(|f| (seed, f.message))
    });
    let (seed, msg) = caught.expect("writes applied without their fence went unnoticed");
    assert!(msg.contains("fenced with token"), "{msg}");
    eprintln!("strip_fences caught at seed {seed}: {msg}");
}

/// The configuration of the byte-cap mutation test: no compaction, so a lagging follower
/// catches up through AppendEntries.
fn no_snapshots(seed: u64, m: Mutation) -> SimConfig {
    let mut c = SimConfig::for_seed(seed);
    c.mutation = m;
    c.snapshot_every = 0;
    c.large_values = true;
    c
}

/// Issue 11, defect 2: the simulated network refuses what the real transport refuses, so a
/// core that caps AppendEntries by count only (a follower behind by several large values
/// is sent one batch over the limit) fails a run; the same seed passes with the byte cap.
#[test]
fn mutation_no_byte_cap_is_caught() {
    let caught = (0..50).find_map(|seed| {
        run(no_snapshots(seed, Mutation::NoByteCap))
            .err()
            .map(|f| (seed, f.message))
    });
    let (seed, msg) = caught.expect("appends over the transport's size limit went unnoticed");
    assert!(msg.contains("over the transport's"), "{msg}");
    eprintln!("NoByteCap caught at seed {seed}: {msg}");
    // Runs are deterministic: the first seed moves only when the random stream changes.
    assert_eq!(seed, 3, "first seed that catches NoByteCap");
    run(no_snapshots(seed, Mutation::None)).unwrap_or_else(|f| panic!("{}", replay_hint(&f)));
}
