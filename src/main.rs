//! `kvstore`: one node of a Raft-replicated key-value store.
//!
//! Parses flags into a validated [`NodeConfig`], installs logging (stderr, `RUST_LOG`,
//! default `info`), binds the listener, and runs the node until SIGINT or SIGTERM (a second
//! one exits at once with 128 + its number: 130 or 143). Errors are printed as one line,
//! `kvstore: <what happened>`, with a non-zero exit code: [`EXIT_STORAGE`] when the data dir
//! failed (could not be opened, or a write, flush or fsync failed while running: the node
//! stops at the first one and never retries it), [`EXIT_PANIC`] after a panic in any thread
//! ([`exit_on_panic`]), 1 for anything else, such as flags its data dir refuses (another
//! `--id`, `--peers` or `--initial-cluster-token` than it was created with:
//! `storage/sled_store/identity.rs`). After a storage failure, fix the disk and start the node
//! again: it recovers from what was durable and catches up from the leader.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use anyhow::Context as _;
use clap::Parser;
use kvstore::config::{self, NodeConfig};
use kvstore::node::Fatal;
use kvstore::rpc::RunError;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: allocation was 17-20% of the node's CPU under load
/// (README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a node stopped by its storage (data dir unusable, or a failed write or fsync).
const EXIT_STORAGE: u8 = 3;

/// Exit code of a node stopped by a panic (Rust's own code for a panicking `main`).
const EXIT_PANIC: u8 = 101;

/// How long, after the node stopped, tasks still running (a storage call stuck in the
/// kernel) may delay the exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// One node of a Raft-replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "kvstore", version, about)]
struct Args {
    /// This node's id (1, 2, 3, ...; unique in the cluster, never 0). Required: the data dir
    /// records it at first start and refuses another one later.
    #[arg(long)]
    id: u64,

    /// Port for gRPC (clients and peers share it). Required.
    #[arg(long)]
    port: u16,

    /// The other nodes, comma-separated; each item is PORT (host 127.0.0.1), HOST:PORT or
    /// ID=HOST:PORT. Items without ID= get the smallest ids not taken by this node or an
    /// explicit ID=, in the order given: with ids 1..N, list the others in increasing id
    /// order. Empty means a single-node cluster.
    #[arg(long, default_value = "", value_name = "LIST")]
    peers: String,

    /// Host to listen on. 0.0.0.0 or :: (every interface) needs --advertise-client-urls.
    #[arg(long, default_value = config::DEFAULT_HOST)]
    host: String,

    /// Where clients reach this node, comma-separated http://HOST:PORT or HOST:PORT (no
    /// https: no TLS yet); the first is given to clients in redirects and Cluster/Status, and
    /// peers learn it on their Raft calls [default: HOST:PORT].
    #[arg(long, value_name = "URLS")]
    advertise_client_urls: Option<String>,

    /// Directory for the Raft log and state [default: data/node-<ID>].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Minimum election timeout in milliseconds (randomised up to twice this); at least 5x
    /// the heartbeat interval.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    election_timeout_ms: u64,

    /// Leader heartbeat interval in milliseconds (also the node's tick).
    #[arg(long, default_value_t = 50, value_name = "MS")]
    heartbeat_interval_ms: u64,

    /// Snapshot the state and compact the log after this many applied entries (once their
    /// commands add up to a quarter of the last snapshot's size).
    #[arg(long, default_value_t = config::DEFAULT_SNAPSHOT_ENTRIES, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_entries: u64,

    /// ... or after this many bytes of applied commands (default 64 MiB).
    #[arg(long, default_value_t = config::DEFAULT_SNAPSHOT_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_bytes: u64,
    /// How the leader confirms linearizable reads: `readindex` (a heartbeat round per batch
    /// of reads) or `lease` (no round while a quorum answered recently; assumes bounded
    /// clock drift between nodes). Use the same mode on every node.
    #[arg(long, default_value = "readindex", value_name = "MODE")]
    read_mode: config::ReadMode,

    /// Mixed into the cluster id the data dir records at first start (with the members' ids
    /// and addresses), so clusters with the same members get different ids. Give every node
    /// the same token; a later start with another token is refused.
    #[arg(long, default_value = config::DEFAULT_CLUSTER_TOKEN, value_name = "TOKEN")]
    initial_cluster_token: String,

    /// Join an existing cluster through the member at HOST:PORT (add this node first with
    /// `kvctl member add`): at first start, with an empty data dir, the node records that
    /// cluster's identity and waits for the leader to send it the log. Later starts use the
    /// data dir's membership and ignore --join. Excludes --peers.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,

    /// Acquire requests that may wait on this node for a held lock (over all locks); one more
    /// that would wait is refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = config::DEFAULT_MAX_WAITING_ACQUIRES, value_name = "N")]
    max_waiting_acquires: usize,

    /// Concurrent gRPC calls (HTTP/2 streams) per client connection (etcd's flag).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONCURRENT_STREAMS, value_name = "N")]
    max_concurrent_streams: u32,

    /// Ops allowed in each branch of a Txn (etcd's flag and default).
    #[arg(long, default_value_t = config::DEFAULT_MAX_TXN_OPS, value_name = "N")]
    max_txn_ops: usize,

    /// Largest client request that goes through the log, in bytes (etcd's flag and default,
    /// 1.5 MiB; it can be lowered, not raised).
    #[arg(long, default_value_t = config::MAX_REQUEST_BYTES, value_name = "BYTES")]
    max_request_bytes: usize,

    /// How the leader compacts the key space's history: `revision` keeps the last RETENTION
    /// revisions, `periodic` what was written in the last RETENTION (etcd's flags).
    #[arg(long, default_value = config::DEFAULT_AUTO_COMPACTION_MODE, value_name = "MODE")]
    auto_compaction_mode: String,

    /// Revisions (revision mode) or a duration such as 30m or 1h, or a number of hours
    /// (periodic mode); 0 turns automatic compaction off.
    #[arg(long, default_value = config::DEFAULT_AUTO_COMPACTION_RETENTION, value_name = "RETENTION")]
    auto_compaction_retention: String,

    /// How often an idle etcd watch that asked for progress notifications gets one, as a
    /// duration such as 10m or 500ms (etcd's flag and default).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    experimental_watch_progress_notify_interval: String,
}

impl TryFrom<Args> for NodeConfig {
    type Error = config::ConfigError;

    fn try_from(a: Args) -> Result<Self, Self::Error> {
        let config = NodeConfig {
            id: a.id,
            host: a.host,
            port: a.port,
            advertise_client_urls: match a.advertise_client_urls {
                Some(urls) => config::parse_client_urls(&urls)?,
                None => Vec::new(),
            },
            data_dir: a.data_dir.unwrap_or_else(|| config::default_data_dir(a.id)),
            peers: config::parse_peers(&a.peers, a.id)?,
            election_timeout: Duration::from_millis(a.election_timeout_ms),
            heartbeat_interval: Duration::from_millis(a.heartbeat_interval_ms),
            snapshot_entries: a.snapshot_entries,
            snapshot_bytes: a.snapshot_bytes,
            read_mode: a.read_mode,
            cluster_token: a.initial_cluster_token,
            join: a.join,
            max_waiting_acquires: a.max_waiting_acquires,
            max_concurrent_streams: a.max_concurrent_streams,
            max_txn_ops: a.max_txn_ops,
            max_request_bytes: a.max_request_bytes,
            auto_compaction: config::parse_auto_compaction(
                &a.auto_compaction_mode,
                &a.auto_compaction_retention,
            )?,
            watch_progress_notify_interval: config::parse_watch_progress_notify_interval(
                &a.experimental_watch_progress_notify_interval,
            )?,
        };
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    exit_on_panic();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")
        .and_then(|rt| {
            let result = rt.block_on(run(args));
            // Not a plain drop: that waits for every blocking task, without a bound.
            rt.shutdown_timeout(RUNTIME_SHUTDOWN);
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not eprintln!: it panics when stderr is closed (a supervisor that went away).
            let _ = writeln!(std::io::stderr(), "kvstore: {err:#}");
            exit_code(&err)
        }
    }
}

/// [`EXIT_STORAGE`] for a storage failure, 1 for anything else.
fn exit_code(err: &anyhow::Error) -> ExitCode {
    match err.downcast_ref::<RunError>() {
        Some(RunError::Fatal(
            Fatal::Storage(_) | Fatal::StorageTask { .. } | Fatal::BadSnapshot { .. },
        )) => ExitCode::from(EXIT_STORAGE),
        _ => ExitCode::FAILURE,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = NodeConfig::try_from(args)?;
    let addr = config.address();
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is another node using this port?)"))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // On SIGTERM/SIGINT a leader hands leadership over before stopping.
    kvstore::rpc::run_until_signal(listener, config, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; exits the process at once, with
/// 128 + the signal's number, on the second.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    let first = signals.recv().await;
    // Cancel before logging, so shutdown happens even if logging fails.
    shutdown.cancel();
    tracing::info!(signal = first.name, "signal received, shutting down");
    let second = signals.recv().await;
    // Not eprintln!: it panics when stderr is closed.
    let _ = writeln!(
        std::io::stderr(),
        "kvstore: second signal ({}) during shutdown, exiting at once",
        second.name
    );
    std::process::exit(128 + second.number);
}

/// A signal that stops the node.
struct Signal {
    name: &'static str,
    number: i32,
}

/// SIGINT and SIGTERM, watched from creation on, so none is missed between two `recv`s.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn recv(&mut self) -> Signal {
        const INT: Signal = Signal {
            name: "SIGINT",
            number: 2,
        };
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => INT,
                _ = self.term.recv() => Signal { name: "SIGTERM", number: 15 },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            INT
        }
    }
}

/// Makes any panic, in any thread or task, stop the process with [`EXIT_PANIC`] and one line,
/// `kvstore: panicked at FILE:LINE:COL: MESSAGE` (plus a backtrace if `RUST_BACKTRACE` asks for
/// one). Without it a panicking task dies alone: a panic in the driver left a process that
/// served health SERVING and answered "shutting down" forever, so no supervisor restarted it.
/// Exiting from the hook, rather than unwinding to a guard, covers every task (the driver,
/// peer senders, storage threads) and runs no more of a program whose invariants just broke;
/// it is a crash, which the node survives by design (everything acknowledged is fsynced).
fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)")
            .replace('\n', " ");
        let location = info
            .location()
            .map_or_else(|| "an unknown location".to_string(), ToString::to_string);
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "kvstore: panicked at {location}: {message}");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            let _ = writeln!(stderr, "{backtrace}");
        }
        drop(stderr);
        std::process::exit(i32::from(EXIT_PANIC));
    }));
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), with colours only on a terminal.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr must not kill the node: by default a failed write is reported
        // with eprintln!, which panics on a closed stderr.
        .log_internal_errors(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NodeConfig, String> {
        let a = Args::try_parse_from(std::iter::once("kvstore").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        NodeConfig::try_from(a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_make_a_single_node() {
        let c = parse(&["--id", "1", "--port", "9001"]).unwrap();
        assert_eq!(c, NodeConfig::new(1, 9001));
    }

    #[test]
    fn id_and_port_are_required() {
        for args in [&[][..], &["--port", "9001"], &["--id", "1"]] {
            let e = parse(args).unwrap_err();
            assert!(
                e.starts_with("error: the following required arguments were not provided"),
                "{args:?}: {e}"
            );
        }
        let e = parse(&["--id", "1"]).unwrap_err();
        let missing = e.split("Usage").next().unwrap_or_default();
        assert!(
            missing.contains("--port <PORT>") && !missing.contains("--id <ID>"),
            "{e}"
        );
    }

    #[test]
    fn flags_convert_to_config() {
        let c = parse(&[
            "--id",
            "2",
            "--port",
            "9002",
            "--peers",
            "9001,9003",
            "--election-timeout-ms",
            "1000",
            "--heartbeat-interval-ms",
            "100",
        ])
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data/node-2"));
        assert_eq!(c.peer_ids(), vec![1, 3]);
        assert_eq!(c.election_ticks(), 10);
    }

    #[test]
    fn bad_combinations_are_one_line_errors() {
        let e = parse(&[
            "--id",
            "1",
            "--port",
            "9001",
            "--election-timeout-ms",
            "100",
        ])
        .unwrap_err();
        assert_eq!(
            e,
            "--election-timeout-ms (100 ms) must be at least 5 x --heartbeat-interval-ms (50 ms)"
        );
        let e = parse(&["--id", "0", "--port", "9001"]).unwrap_err();
        assert_eq!(e, "--id must not be 0: node ids start at 1");
        let e = parse(&["--id", "1", "--port", "9001", "--peers", "x"]).unwrap_err();
        assert!(e.starts_with("invalid --peers item \"x\""), "{e}");
    }

    #[test]
    fn advertise_client_urls_become_the_client_address() {
        let c = parse(&["--id", "1", "--port", "9001"]).unwrap();
        assert_eq!(c.client_address(), "127.0.0.1:9001");
        let c = parse(&[
            "--id",
            "1",
            "--port",
            "9001",
            "--host",
            "0.0.0.0",
            "--advertise-client-urls",
            "http://kv-1:9001,10.0.0.5:9001",
        ])
        .unwrap();
        assert_eq!(c.address(), "0.0.0.0:9001");
        assert_eq!(c.client_address(), "kv-1:9001");
        let e = parse(&["--id", "1", "--port", "9001", "--host", "0.0.0.0"]).unwrap_err();
        assert!(
            e.starts_with("--host 0.0.0.0 listens on every interface"),
            "{e}"
        );
        let e = parse(&[
            "--id",
            "1",
            "--port",
            "9001",
            "--advertise-client-urls",
            "https://kv-1:9001",
        ])
        .unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
    }
}
