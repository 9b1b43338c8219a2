//! `kvstore-sim`: runs the deterministic cluster simulation over many seeds, in parallel on all
//! cores, with a progress bar. Exits 0 only if every seed passes; for a failure it prints the
//! seed, a one-line replay command and the trace of events that led to the violation.
//!
//! ```text
//! kvstore-sim --seeds 10000 --start 0      # seeds 0..9999
//! kvstore-sim --seed 17 --trace            # replay one seed with its event trace
//! kvstore-sim --seeds 500 --mutation no-check-term   # prove the checkers catch a bug
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kvstore::raft::Mutation;
use kvstore::sim::{run, Failure, SimConfig};

/// mimalloc, as in the node: the simulated clients' 1 MiB values are allocated and freed all
/// the time, and glibc's malloc maps and unmaps fresh pages for each.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MutationArg {
    None,
    NoCheckTerm,
    CountStaleVotes,
    CommitOldTerms,
    AckBeforePersist,
    InstallStaleSnapshot,
    LeaseIgnoresStalls,
    NoByteCap,
    StampOpenReadRound,
    ConcurrentConfChanges,
    ConfChangeBeforeTermCommit,
    CountLearnerVotes,
    LeadBeforeVotePersisted,
    ExcludedNeverCampaigns,
    RefuseUnknownAndUncommitted,
}

impl From<MutationArg> for Mutation {
    fn from(m: MutationArg) -> Mutation {
        match m {
            MutationArg::None => Mutation::None,
            MutationArg::NoCheckTerm => Mutation::NoCheckTerm,
            MutationArg::CountStaleVotes => Mutation::CountStaleVotes,
            MutationArg::CommitOldTerms => Mutation::CommitOldTerms,
            MutationArg::AckBeforePersist => Mutation::AckBeforePersist,
            MutationArg::InstallStaleSnapshot => Mutation::InstallStaleSnapshot,
            MutationArg::LeaseIgnoresStalls => Mutation::LeaseIgnoresStalls,
            MutationArg::NoByteCap => Mutation::NoByteCap,
            MutationArg::StampOpenReadRound => Mutation::StampOpenReadRound,
            MutationArg::ConcurrentConfChanges => Mutation::ConcurrentConfChanges,
            MutationArg::ConfChangeBeforeTermCommit => Mutation::ConfChangeBeforeTermCommit,
            MutationArg::CountLearnerVotes => Mutation::CountLearnerVotes,
            MutationArg::LeadBeforeVotePersisted => Mutation::LeadBeforeVotePersisted,
            MutationArg::ExcludedNeverCampaigns => Mutation::ExcludedNeverCampaigns,
            MutationArg::RefuseUnknownAndUncommitted => Mutation::RefuseUnknownAndUncommitted,
        }
    }
}

/// Deterministic simulation of a kvstore cluster under faults.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run exactly this one seed (same as --start S --seeds 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the event trace of the (single) run.
    #[arg(long)]
    trace: bool,

    /// With --trace: how many of the last events to print.
    #[arg(long, default_value_t = 400)]
    trace_lines: usize,
    /// Switch on a deliberate protocol bug, to show the simulator finds it.
    #[arg(long, value_enum, default_value = "none")]
    mutation: MutationArg,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Simulated lock clients competing for one lock with fenced writes (0 = KV clients only).
    #[arg(long, default_value_t = 2)]
    lock_clients: usize,
    /// Run the paper's base protocol, without PreVote and CheckQuorum.
    #[arg(long)]
    classic_raft: bool,
    /// Milliseconds of simulated faults per run.
    #[arg(long, default_value_t = 3000)]
    fault_ms: u64,
    /// Compact every N applied entries on every node (0 = never) instead of the seed's
    /// choice.
    #[arg(long, value_name = "N")]
    snapshot_every: Option<u64>,
    /// Do not inject disk failures.
    #[arg(long)]
    no_disk_faults: bool,
    /// Do not inject leadership transfers (the fault schedule then draws as it did before
    /// transfers existed).
    #[arg(long)]
    no_transfers: bool,
    /// Checker test: the simulated driver drops the fence of every write it proposes, which
    /// the lock checks must catch.
    #[arg(long)]
    strip_fences: bool,
    /// Clients write large values (up to the 1 MiB limit) in every run (`true`) or in none
    /// (`false`), instead of one seed in three.
    #[arg(long, value_name = "BOOL")]
    large_values: Option<bool>,
    /// Clients run the key-space workload: CAS loops and pair writes and reads through Txns,
    /// Ranges at current and past revisions, compactions (checked for linearizability with
    /// CAS, pair atomicity, revision consistency and density, identical histories).
    #[arg(long)]
    kv_txns: bool,
    /// Checker test: every node's key space applies a Txn's writes at several revisions
    /// (use with --kv-txns, whose Txns write two keys).
    #[arg(long)]
    split_txn_writes: bool,
    /// Checker test: skip the revision density check at every apply (so the pair atomicity
    /// check must catch --split-txn-writes on its own).
    #[arg(long)]
    no_density_check: bool,
    /// Clients also run the key-lease workload: grant leases on keys, attach keys (puts and
    /// Txn puts), renew through the leader, revoke or stop renewing (checked at every revoke
    /// on every node: exactly the attached keys at one revision, never before the last
    /// renewal's TTL ran out; at the end: every lease gone, the same lease table everywhere).
    #[arg(long)]
    key_leases: bool,
    /// Checker test: a new leader starts every lease on keys with nothing left instead of
    /// restarting its full TTL (use with --key-leases).
    #[arg(long)]
    key_leases_not_restarted: bool,
    /// Checker test: a Txn's puts leave the key space's lease index alone, so a revoke misses
    /// the keys they attached (use with --key-leases).
    #[arg(long)]
    txn_skips_lease_index: bool,
    /// Every node serves simulated watchers (random ranges, random start revisions), fed by
    /// the daemon's watch code; each must deliver exactly its range's history.
    #[arg(long)]
    watches: bool,
    /// Checker test: after a snapshot install the watch publisher leaves out the events the
    /// snapshot brought (use with --watches).
    #[arg(long)]
    watch_drop_snapshot_catch_up: bool,
    /// Checker test: a leader answers a keep-alive as soon as it renewed the lease, without
    /// a quorum confirming it still leads (use with --key-leases).
    #[arg(long)]
    keep_alive_answers_at_once: bool,
    /// Checker test: a leader publishes watch events when it appends entries, before they
    /// are committed (use with --watches).
    #[arg(long)]
    watch_publish_on_append: bool,
    /// Checker test: skip the check that no watch event is delivered above its node's
    /// applied revision (so the committed-change check must catch --watch-publish-on-append
    /// on its own).
    #[arg(long)]
    no_watch_applied_check: bool,
    /// An operator changes the membership while faults and clients run: adds learners (new
    /// ids, empty disks), promotes them, removes voters (the leader and down nodes included)
    /// and learners; every invariant is checked with the membership each node follows.
    #[arg(long)]
    membership: bool,
}

fn config(args: &Args, seed: u64, trace: bool) -> SimConfig {
    let mut c = SimConfig::for_seed(seed);
    c.mutation = args.mutation.into();
    c.trace = trace;
    c.fault_ms = args.fault_ms;
    c.lock_clients = args.lock_clients;
    c.classic_raft = args.classic_raft;
    if let Some(n) = args.snapshot_every {
        c.snapshot_every = n;
    }
    c.disk_faults = !args.no_disk_faults;
    c.transfers = !args.no_transfers;
    c.strip_fences = args.strip_fences;
    if let Some(large) = args.large_values {
        c.large_values = large;
    }
    c.kv_txns = args.kv_txns;
    c.split_txn_writes = args.split_txn_writes;
    c.check_revision_density = !args.no_density_check;
    c.key_leases = args.key_leases;
    c.key_leases_not_restarted = args.key_leases_not_restarted;
    c.txn_skips_lease_index = args.txn_skips_lease_index;
    c.watches = args.watches;
    c.watch_drop_snapshot_catch_up = args.watch_drop_snapshot_catch_up;
    c.keep_alive_answers_at_once = args.keep_alive_answers_at_once;
    c.watch_publish_on_append = args.watch_publish_on_append;
    c.check_watch_applied = !args.no_watch_applied_check;
    c.membership = args.membership;
    c
}

fn replay_cmd(args: &Args, seed: u64) -> String {
    let m = match args.mutation {
        MutationArg::None => String::new(),
        m => format!(
            " --mutation {}",
            m.to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        ),
    };
    // Every flag that shapes the run, so the command replays exactly this run.
    let mut extra = String::new();
    if args.lock_clients != 2 {
        extra += &format!(" --lock-clients {}", args.lock_clients);
    }
    if let Some(n) = args.snapshot_every {
        extra += &format!(" --snapshot-every {n}");
    }
    if let Some(large) = args.large_values {
        extra += &format!(" --large-values {large}");
    }
    let switches = [
        (args.classic_raft, " --classic-raft"),
        (args.no_disk_faults, " --no-disk-faults"),
        (args.no_transfers, " --no-transfers"),
        (args.strip_fences, " --strip-fences"),
        (args.kv_txns, " --kv-txns"),
        (args.split_txn_writes, " --split-txn-writes"),
        (args.no_density_check, " --no-density-check"),
        (args.key_leases, " --key-leases"),
        (args.key_leases_not_restarted, " --key-leases-not-restarted"),
        (args.txn_skips_lease_index, " --txn-skips-lease-index"),
        (args.watches, " --watches"),
        (
            args.watch_drop_snapshot_catch_up,
            " --watch-drop-snapshot-catch-up",
        ),
        (
            args.keep_alive_answers_at_once,
            " --keep-alive-answers-at-once",
        ),
        (args.watch_publish_on_append, " --watch-publish-on-append"),
        (args.no_watch_applied_check, " --no-watch-applied-check"),
        (args.membership, " --membership"),
    ];
    for (on, flag) in switches {
        if on {
            extra += flag;
        }
    }
    format!(
        "scripts/sim.sh --seed {seed} --trace --fault-ms {}{extra}{m}",
        args.fault_ms
    )
}

fn report(args: &Args, f: &Failure) {
    eprintln!("FAIL {f}");
    eprintln!("  replay: {}", replay_cmd(args, f.seed));
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvstore-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        return Ok(match run(config(&args, seed, args.trace)) {
            Ok(o) => {
                println!("seed {seed}: PASS ({} ops ok, {} unknown, {} faults, {} leaders, {} events, commit {}, {} snapshots taken, {} installed, {} transfers, {} lease reads)", o.ok, o.unknown, o.faults, o.leader_changes, o.events, o.commit, o.snapshots_taken, o.snapshots_installed, o.transfers, o.lease_reads);
                if args.watches {
                    println!("  watches: {} events delivered", o.watch_events);
                }
                if args.membership {
                    println!("  membership: {} changes accepted, {} refused; committed: {} learners added, {} promoted, {} voters and {} learners removed ({} leaders, {} down nodes)", o.conf_changes_proposed, o.conf_changes_refused, o.learners_added, o.learners_promoted, o.voters_removed, o.learners_removed, o.leaders_removed, o.down_nodes_removed);
                }
                if args.key_leases {
                    println!("  key leases: {} granted, {} renewals, {} revokes that deleted keys (per node)", o.key_lease_grants, o.key_lease_renewals, o.key_lease_revokes_with_keys);
                }
                ExitCode::SUCCESS
            }
            Err(f) => {
                if args.trace {
                    let skip = f.trace.len().saturating_sub(args.trace_lines);
                    if skip > 0 {
                        println!("... ({skip} earlier events omitted)");
                    }
                    for line in &f.trace[skip..] {
                        println!("{line}");
                    }
                }
                report(&args, &f);
                ExitCode::FAILURE
            }
        });
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let end = args
        .start
        .checked_add(args.seeds)
        .context("--start + --seeds overflows")?;
    let next = Arc::new(AtomicU64::new(args.start));
    let done = Arc::new(AtomicU64::new(0));
    // Totals over passing seeds: ops ok, snapshots taken, snapshots installed.
    let totals = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    // Leadership transfers started, and reads served by lease, over the passing seeds.
    let (transfers, lease_reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures: Arc<Mutex<Vec<Failure>>> = Arc::new(Mutex::new(Vec::new()));
    // Committed membership changes over the passing seeds: learners added, promoted, voters
    // removed, learners removed, leaders removed, down nodes removed.
    let members: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {per_sec}, failures: {msg}",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    bar.set_message("0");
    let args = Arc::new(args);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let (next, done, totals, failures, bar, args) = (
                next.clone(),
                done.clone(),
                totals.clone(),
                failures.clone(),
                bar.clone(),
                args.clone(),
            );
            let (transfers, lease_reads) = (transfers.clone(), lease_reads.clone());
            let members = members.clone();
            s.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let result = run(config(&args, seed, false));
                if let Ok(o) = &result {
                    for (t, v) in
                        totals
                            .iter()
                            .zip([o.ok, o.snapshots_taken, o.snapshots_installed])
                    {
                        t.fetch_add(v, Ordering::Relaxed);
                    }
                    transfers.fetch_add(o.transfers, Ordering::Relaxed);
                    lease_reads.fetch_add(o.lease_reads, Ordering::Relaxed);
                    let changes = [
                        o.learners_added,
                        o.learners_promoted,
                        o.voters_removed,
                        o.learners_removed,
                        o.leaders_removed,
                        o.down_nodes_removed,
                    ];
                    for (t, v) in members.iter().zip(changes) {
                        t.fetch_add(v, Ordering::Relaxed);
                    }
                }
                if let Err(f) = result {
                    bar.suspend(|| report(&args, &f));
                    let mut all = failures.lock().unwrap_or_else(|p| p.into_inner());
                    all.push(f);
                    bar.set_message(all.len().to_string());
                    if args.fail_fast {
                        next.store(end, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                bar.inc(1);
            });
        }
    });
    bar.finish();
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
    let ran = done.load(Ordering::Relaxed);
    println!(
        "{} seeds from {} in {:.1}s: {} passed, {} failed",
        ran,
        args.start,
        started.elapsed().as_secs_f64(),
        ran - failures.len() as u64,
        failures.len()
    );
    println!(
        "in passing seeds: {} client ops acknowledged, {} snapshots taken, {} snapshots installed by lagging followers",
        totals[0].load(Ordering::Relaxed),
        totals[1].load(Ordering::Relaxed),
        totals[2].load(Ordering::Relaxed)
    );
    println!(
        "{} leadership transfers started, {} reads served by lease (lease mode on seeds = 1 mod 3)",
        transfers.load(Ordering::Relaxed),
        lease_reads.load(Ordering::Relaxed)
    );
    if args.membership {
        let m: Vec<u64> = members.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        println!(
            "membership changes committed: {} learners added, {} promoted, {} voters and {} learners removed ({} leaders removing themselves, {} down nodes)",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
    }
    if let Some(first) = failures.iter().min_by_key(|f| f.seed) {
        println!(
            "first failing seed: {} ({})",
            first.seed,
            first.message.lines().next().unwrap_or("")
        );
        println!("replay: {}", replay_cmd(&args, first.seed));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
