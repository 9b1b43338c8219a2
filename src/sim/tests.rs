//! The simulator tests that need crate-private code: a seed replays bit for bit (the trace
//! of a passing run), and the storage's test-only mutation switch (issue 11, defect 1) is
//! caught through the simulator. The fixed seeds, the Raft mutation tests and the scripted
//! scenarios are the `simulation` test target (`tests/simulation/`).

use super::*;

/// Runs `cfg` twice with tracing: the traces must be equal, and not trivially short.
fn assert_replays(cfg: SimConfig) {
    let (ra, rb) = (world::run_traced(cfg.clone()), world::run_traced(cfg));
    assert_eq!(ra, rb, "a seed must replay bit for bit");
    assert!(ra.len() > 100);
}

#[test]
fn same_seed_same_run() {
    assert_replays(SimConfig::for_seed(42));
}

/// The same with the key-space workload (CAS, pair Txns, Ranges, Compact).
#[test]
fn same_seed_same_run_with_the_key_space_workload() {
    let mut cfg = SimConfig::for_seed(43);
    cfg.kv_txns = true;
    assert_replays(cfg);
}

/// Issue 11, defect 1, through the whole simulator: with the storage's mutation switch on
/// (`storage::mutation`: the segment holding the latest Snapshot record may be unlinked, and
/// a compaction redone with no entry at the snapshot's index keeps nothing after it), a
/// seed fails by the clean-restart check of `world/disk.rs` (a store reopened after a clean
/// stop holds less than before) at an exact first seed, and the same seed passes without the
/// mutation. The switch is per thread and test-only, hence a unit test here.
#[test]
fn the_simulator_reaches_the_storage_a_lost_snapshot_record_is_caught() {
    // Seeds are searched from 0 up to LIMIT (exclusive); runs are deterministic, so the first
    // seed moves only when the simulator's random stream changes: then re-measure with this
    // test and update the constant (and the README's mutation table).
    const LIMIT: u64 = 400;
    const FIRST_SEED: u64 = 86;
    crate::storage::mutation::set_lost_snapshot_record(true);
    let failure = (0..LIMIT).find_map(|seed| run(SimConfig::for_seed(seed)).err());
    crate::storage::mutation::set_lost_snapshot_record(false);
    let Some(f) = failure else {
        panic!("a lost Snapshot record went unnoticed in seeds 0..{LIMIT}");
    };
    assert!(
        f.message.contains("after a clean restart its store holds"),
        "seed {}: caught by another check than the clean-restart one: {}",
        f.seed,
        f.message
    );
    if let Err(control) = run(SimConfig::for_seed(f.seed)) {
        panic!(
            "seed {}: the control run without the mutation fails too: {control}",
            f.seed
        );
    }
    assert_eq!(
        f.seed, FIRST_SEED,
        "first caught at seed {}: {}",
        f.seed, f.message
    );
}
