//! A process that follows its configuration in kvstore: it reads a key at start, then
//! watches it and applies every change as it is committed, in order, never skipping one,
//! across the failure of any store node (the client's watch resumes on another node from
//! the revision after the last one it delivered).
//!
//! ```text
//! cargo run --example config_reload -- --endpoints 127.0.0.1:9001,127.0.0.1:9002 --key app/config
//! kvctl put app/config 'log_level=debug'      # the process prints: applied revision N: log_level=debug
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use kvstore::client::{Client, EventKind, RangeOptions, WatchOptions};

#[derive(Debug, Parser)]
#[command(about = "Follow a configuration key and apply every change")]
struct Args {
    /// Comma-separated kvstore node addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The configuration key.
    #[arg(long)]
    key: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = Client::new(args.endpoints).context("bad --endpoints")?;
    let read = client
        .range(&args.key, &RangeOptions::default())
        .await
        .context("read the configuration")?;
    match read.kvs.first() {
        Some(kv) => apply(kv.mod_revision, &kv.value),
        None => println!("no configuration at {} yet: using the defaults", args.key),
    }
    let options = WatchOptions::default().from_revision(read.header.revision + 1);
    let mut watcher = client.watch(&args.key, options)?;
    while let Some(batch) = watcher.next().await {
        for event in batch? {
            match event.kind {
                EventKind::Put => apply(event.revision(), &event.kv.value),
                EventKind::Delete => println!(
                    "configuration deleted at revision {}: keeping the last one",
                    event.revision()
                ),
            }
        }
    }
    bail!("the watch ended")
}

/// Stands in for reconfiguring the process.
fn apply(revision: i64, value: &str) {
    println!("applied revision {revision}: {value}");
}
