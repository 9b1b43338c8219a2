//! The one simulator test that needs crate-private code: a seed replays bit for bit (the
//! trace of a passing run). The fixed seeds, the mutation tests and the scripted scenarios
//! are the `simulation` test target (`tests/simulation/`).

use super::*;

#[test]
fn same_seed_same_run() {
    let mut a = SimConfig::for_seed(42);
    a.trace = true;
    let b = a.clone();
    let (ra, rb) = (world::run_traced(a), world::run_traced(b));
    assert_eq!(ra, rb, "a seed must replay bit for bit");
    assert!(ra.len() > 100);
}
