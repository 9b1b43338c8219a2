//! kvstore-bench: closed-loop load generator for kvstore (and etcd, built with `--features
//! etcd`), with HDR latency percentiles and throughput.
//!
//! ```text
//! kvstore-bench put --clients 64 --duration 10s
//! kvstore-bench get --consistency serializable --clients 16 --total 100000
//! kvstore-bench mixed --read-ratio 0.9 --clients 64 --json
//! kvstore-bench put --target etcd --endpoints 127.0.0.1:2379 --clients 64
//! kvstore-bench txn-cas --target etcd --endpoints 127.0.0.1:2379 --clients 64   # etcd API
//! kvstore-bench range --clients 64          # kvstore through its etcd front end
//! kvstore-bench watch --watchers 1000 --clients 64 --target etcd --endpoints 127.0.0.1:2379
//! kvstore-bench lease-keepalive --leases 10000 --clients 64
//! ```
//! `txn-cas`, `range`, `watch` and `lease-keepalive` speak etcd's v3 API to both targets (a
//! build with `--features etcd`).
//! Prints a short text report, or one JSON object with `--json`. A progress bar runs on
//! stderr while it measures. Exit codes: 0 the run completed (failed requests are counted in
//! the report, not fatal), 2 it could not run (one line on stderr: `kvstore-bench: <message>`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvstore::bench::{self, BenchConfig, Limit, ReadConsistency, Target, TestFault, Workload};
use kvstore::client::parse_duration;

/// mimalloc, as in the node: the load generator shares the cores with the servers it measures,
/// so its own CPU per request should be small (`cpu.txt` of scripts/bench.sh reports it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default kvstore endpoints (scripts/cluster.sh's cluster).
const KVSTORE_ENDPOINTS: &str = "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003";
/// Default etcd endpoint.
const ETCD_ENDPOINTS: &str = "127.0.0.1:2379";

/// Closed-loop load generator for kvstore and etcd.
#[derive(Debug, Parser)]
#[command(name = "kvstore-bench", version, about)]
struct Args {
    /// What the clients issue: put, get or mixed; or, through etcd's API (a build with
    /// --features etcd), txn-cas (compare-and-swap increments of counters), range (a
    /// prefix read), watch (the clients put under a prefix that --watchers watchers spread
    /// over every member watch; reports events delivered per second and the latency from a
    /// put's acknowledgement to each event; a missing or repeated event is an error) or
    /// lease-keepalive (--leases leases granted first, renewed by the clients, one
    /// keep-alive stream each; an operation is one renewal answered with a TTL above 0).
    workload: Workload,
    /// The system under test: kvstore, or etcd (needs a build with --features etcd).
    #[arg(long, default_value = "kvstore")]
    target: Target,
    /// Comma-separated HOST:PORT addresses; the leader is found among them
    /// [default: 127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003, or 127.0.0.1:2379 for etcd].
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// How reads are served: linearizable or serializable.
    #[arg(long, default_value = "linearizable")]
    consistency: ReadConsistency,
    /// Share of reads in the mixed workload (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// Concurrent clients, each issuing its next request when the last one is answered
    /// (watch: the writers; lease-keepalive: the keep-alive streams).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections the clients share [default: the number of clients, at most 8]
    /// (watch: also the watch streams per member, each on its own connection).
    #[arg(long)]
    connections: Option<usize>,
    /// How long to measure (e.g. 10s, 500ms, 1m) [default: 10s].
    #[arg(long, value_parser = parse_duration, conflicts_with = "total")]
    duration: Option<Duration>,
    /// Measure this many requests instead of a duration (watch: puts; lease-keepalive:
    /// renewals).
    #[arg(long)]
    total: Option<u64>,
    /// Number of distinct keys, drawn uniformly (txn-cas: counters; range: keys under the
    /// prefix; watch: watchers, also --watchers; lease-keepalive: leases, also --leases)
    /// [default: 10000; txn-cas 1000; range 100; watch 1000; lease-keepalive 10000].
    #[arg(long, visible_aliases = ["watchers", "leases"])]
    key_space: Option<u64>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Unmeasured run time before measuring (0 for none).
    #[arg(long, default_value = "1s", value_parser = parse_warmup)]
    warmup: Duration,
    /// Do not write the key space before a workload that reads.
    #[arg(long)]
    no_preload: bool,
    /// A request not answered within this long counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Give up if no leader is named within this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_timeout: Duration,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Tests of the checks only: drop-event, duplicate-event (watch) or revoke-lease
    /// (lease-keepalive); the report must count the damage as errors.
    #[arg(long, hide = true)]
    test_fault: Option<TestFault>,
}

/// Like `parse_duration`, but `0` means no warmup.
fn parse_warmup(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" | "0ms" => Ok(Duration::ZERO),
        other => parse_duration(other),
    }
}

impl From<Args> for BenchConfig {
    fn from(args: Args) -> Self {
        let endpoints = if args.endpoints.is_empty() {
            let defaults = match args.target {
                Target::Kvstore => KVSTORE_ENDPOINTS,
                Target::Etcd => ETCD_ENDPOINTS,
            };
            defaults.split(',').map(str::to_string).collect()
        } else {
            args.endpoints
        };
        BenchConfig {
            target: args.target,
            endpoints,
            workload: args.workload,
            consistency: args.consistency,
            read_ratio: args.read_ratio,
            clients: args.clients,
            connections: args.connections.unwrap_or(args.clients.clamp(1, 8)),
            limit: match (args.total, args.duration) {
                (Some(total), _) => Limit::Total(total),
                (None, duration) => Limit::Duration(duration.unwrap_or(Duration::from_secs(10))),
            },
            key_space: args.key_space.unwrap_or(args.workload.default_key_space()),
            value_size: args.value_size,
            warmup: args.warmup,
            preload: !args.no_preload,
            request_timeout: args.timeout,
            leader_timeout: args.leader_timeout,
            progress: !args.no_progress,
            test_fault: args.test_fault,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let config = BenchConfig::from(args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let report = match runtime.block_on(bench::run(&config)) {
        Ok(report) => report,
        Err(e) => return fail(&e.to_string()),
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => return fail(&format!("cannot encode the report: {e}")),
        }
    } else {
        println!("{report}");
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("kvstore-bench: {message}");
    ExitCode::from(2)
}
