use super::*;
use crate::raft::Mutation;

fn show(f: &Failure) -> String {
    format!("{f}\n{}", f.trace.join("\n"))
}

#[test]
fn a_quiet_run_passes() {
    let mut cfg = SimConfig::for_seed(1);
    cfg.fault_ms = 500;
    let out = run(cfg).unwrap_or_else(|f| panic!("{}", show(&f)));
    eprintln!("{out:?}");
    assert!(out.ok > 0, "clients completed operations");
}

#[test]
fn seeds_explore() {
    let mut fails = Vec::new();
    let t = std::time::Instant::now();
    for seed in 0..300 {
        match run(SimConfig::for_seed(seed)) {
            Ok(o) => eprintln!("seed {seed}: {o:?}"),
            Err(f) => fails.push(f.to_string()),
        }
    }
    eprintln!("{:?}", t.elapsed());
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    let _ = Mutation::None;
}

#[test]
fn mutation_probe() {
    for m in [
        Mutation::NoCheckTerm,
        Mutation::CountStaleVotes,
        Mutation::CommitOldTerms,
        Mutation::AckBeforePersist,
    ] {
        let mut found = None;
        for seed in 0..300 {
            let mut c = SimConfig::for_seed(seed);
            c.mutation = m;
            if let Err(f) = run(c) {
                found = Some(f);
                break;
            }
        }
        eprintln!("{m:?}: {:?}", found.map(|f| f.to_string()));
    }
}
