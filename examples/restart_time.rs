//! Measures how long a node takes to restart with a large state: it writes a data dir holding
//! a snapshot of `--keys` keys plus `--tail` log entries after it, starts the real `kvstore`
//! binary (single node) on it, and times (1) until the node has loaded its state and (2)
//! until it serves a linearizable read of the last key written.
//!
//! ```text
//! cargo build --release && cargo run --release --example restart_time -- --keys 1000000
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kvstore::client::Client;
use kvstore::pb::Consistency;
use kvstore::raft::storage::LogStore;
use kvstore::raft::{Entry, HardState, Payload, Snapshot, SnapshotMeta};
use kvstore::state_machine::{Command as SmCommand, Proposal, StateMachine};
use kvstore::storage::SledStore;

#[derive(Parser, Debug)]
struct Args {
    /// Keys in the snapshot.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Log entries after the snapshot (overwrites of existing keys).
    #[arg(long, default_value_t = 10_000)]
    tail: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// The kvstore binary.
    #[arg(long, default_value = "target/release/kvstore")]
    bin: PathBuf,
}

fn put(i: u64, value: &str) -> Vec<u8> {
    Proposal {
        session: None,
        command: SmCommand::Put {
            key: format!("key-{i:010}"),
            value: value.to_owned(),
            fence: None,
        },
    }
    .encode()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("temp dir")?;
    let data_dir = dir.path().join("node-1");
    let value = "v".repeat(args.value_size);

    let started = Instant::now();
    let mut sm = StateMachine::new();
    for i in 1..=args.keys {
        sm.apply(i, &put(i, &value)).context("apply")?;
    }
    let meta = SnapshotMeta {
        index: args.keys,
        term: 1,
    };
    let snapshot = Snapshot {
        membership: None,
        meta,
        data: sm.snapshot().into(),
    };
    let bytes = snapshot.data.len();
    drop(sm);
    let last = args.keys + args.tail;
    {
        let mut store = SledStore::open(&data_dir)?;
        store.install_snapshot(&snapshot)?;
        let entries: Vec<Entry> = (args.keys + 1..=last)
            .map(|i| Entry {
                term: 1,
                index: i,
                payload: Payload::Command(put(i - args.keys, &format!("{value}-{i}")).into()),
            })
            .collect();
        for chunk in entries.chunks(1000) {
            store.persist(
                Some(&HardState {
                    term: 1,
                    vote: Some(1),
                    commit: chunk.last().map_or(0, |e| e.index),
                }),
                chunk,
            )?;
        }
    }
    eprintln!(
        "wrote a data dir with a {:.1} MiB snapshot of {} keys and {} log entries after it in {:.1}s",
        bytes as f64 / (1 << 20) as f64,
        args.keys,
        args.tail,
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut child = Command::new(&args.bin)
        .args(["--id", "1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--election-timeout-ms",
            "100",
            "--heartbeat-interval-ms",
            "20",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (run cargo build --release first)",
                args.bin.display()
            )
        })?;

    let mut loaded = None;
    let mut client = Client::new(vec![format!("127.0.0.1:{port}")])?;
    let last_key = format!("key-{:010}", args.tail);
    let want = format!("{value}-{last}");
    let result = loop {
        if started.elapsed() > Duration::from_secs(300) {
            break Err(anyhow::anyhow!("the node did not serve within 300 s"));
        }
        if loaded.is_none() && std::fs::read_to_string(&log_path)?.contains("opened node state") {
            loaded = Some(started.elapsed());
        }
        if let Ok(got) = client.get(&last_key, Consistency::Linearizable).await {
            if loaded.is_none() {
                // Loaded and served within one poll.
                loaded = Some(started.elapsed());
            }
            if got.value.as_deref() == Some(want.as_str()) {
                break Ok(started.elapsed());
            }
            break Err(anyhow::anyhow!(
                "wrong value for {last_key}: {:?}",
                got.value
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let served = result?;
    let Some(loaded) = loaded else {
        bail!("the node never logged that it opened its state");
    };
    println!(
        "restart with {} keys (+{} log entries): state loaded in {:.2}s, serving linearizable reads after {:.2}s",
        args.keys,
        args.tail,
        loaded.as_secs_f64(),
        served.as_secs_f64()
    );
    Ok(())
}
