//! Service discovery on kvstore: instances register themselves under a lease and keep it
//! alive; clients watch the prefix and keep a live list. An instance that dies (SIGKILL, a
//! lost host) stops renewing, its lease runs out on the store's leader, and its key is
//! deleted: every watcher sees it leave within the lease's TTL.
//!
//! ```text
//! # an instance (keeps services/web/i1 = 127.0.0.1:8080 alive until stopped):
//! cargo run --example discovery -- --endpoints 127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003 \
//!     register --service web --id i1 --addr 127.0.0.1:8080 --ttl 2
//! # a client (prints the live list on every change):
//! cargo run --example discovery -- --endpoints ... list --service web
//! ```
//! `list` prints `members: i1=127.0.0.1:8080 i2=...` (sorted by id) once at start and after
//! each change; scripts/discovery-demo.sh kills an instance and times its departure.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kvstore::client::{Client, EventKind, RangeOptions, WatchOptions};

#[derive(Debug, Parser)]
#[command(about = "Service discovery with leases and watches")]
struct Args {
    /// Comma-separated kvstore node addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register an instance and keep it registered until stopped.
    Register {
        /// The service's name.
        #[arg(long)]
        service: String,
        /// This instance's id.
        #[arg(long)]
        id: String,
        /// Where this instance listens (the value clients read).
        #[arg(long)]
        addr: String,
        /// Lease TTL in seconds: how long the instance stays listed after it dies.
        #[arg(long, default_value_t = 2)]
        ttl: i64,
    },
    /// Print the live list of a service's instances, and again after each change.
    List {
        /// The service's name.
        #[arg(long)]
        service: String,
    },
}

fn prefix(service: &str) -> String {
    format!("services/{service}/")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::new(args.endpoints).context("bad --endpoints")?;
    match args.command {
        Command::Register {
            service,
            id,
            addr,
            ttl,
        } => register(client, &service, &id, &addr, ttl).await,
        Command::List { service } => list(client, &service).await,
    }
}

/// Grants a lease, puts the instance's key with it and keeps the lease alive; registers
/// again (a new lease) if the lease is ever lost.
async fn register(
    mut client: Client,
    service: &str,
    id: &str,
    addr: &str,
    ttl: i64,
) -> anyhow::Result<()> {
    let key = format!("{}{id}", prefix(service));
    loop {
        let lease = client.grant_lease(ttl, 0).await.context("lease grant")?;
        client
            .put_with_lease(&key, addr, lease.id)
            .await
            .context("register")?;
        println!(
            "[{id}] registered {key} = {addr} with lease {:x} (ttl {}s)",
            lease.id, lease.ttl
        );
        let mut keeper = client.keep_lease_alive(lease.id)?;
        keeper.lost().await;
        println!("[{id}] lease {:x} lost; registering again", lease.id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the service's instances, then follows every change from the revision after that
/// read: the list is exact at every step (no change between the read and the watch start
/// is missed, none is applied twice).
async fn list(mut client: Client, service: &str) -> anyhow::Result<()> {
    let prefix = prefix(service);
    let read = client
        .range(&prefix, &RangeOptions::prefix())
        .await
        .context("read the instances")?;
    let mut members: BTreeMap<String, String> = read
        .kvs
        .into_iter()
        .map(|kv| (kv.key[prefix.len()..].to_string(), kv.value))
        .collect();
    print_members(&members);
    let options = WatchOptions::prefix().from_revision(read.header.revision + 1);
    let mut watcher = client.watch(&prefix, options)?;
    while let Some(batch) = watcher.next().await {
        for event in batch? {
            let id = event.kv.key[prefix.len()..].to_string();
            match event.kind {
                EventKind::Put => members.insert(id, event.kv.value),
                EventKind::Delete => members.remove(&id),
            };
        }
        print_members(&members);
    }
    bail!("the watch ended")
}

fn print_members(members: &BTreeMap<String, String>) {
    let list: Vec<String> = members.iter().map(|(id, a)| format!("{id}={a}")).collect();
    println!("members: {}", list.join(" "));
}
