//! A service worker that writes only while it leads, with every write fenced.
//!
//! ```text
//! cargo run --example worker -- --name A --service order-service \
//!     --endpoints 127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003 [--ttl 2s]
//! ```
//! It campaigns for lock `<service>`; while leader it writes, every ~200 ms, the record
//! `orders/<service>/<token>-<n>` = `written by <name> with token <T> seq <n> at <unix ms>`.
//! On loss (the keep-alive gave up, or the store rejected a write as stale) it campaigns
//! again.
//!
//! It is deliberately naive about pauses: it checks that it still leads, then "works"
//! (sleeps) and then writes without checking again. A process frozen in that window
//! (SIGSTOP, a GC pause) wakes up still believing it leads and writes: the store's fence
//! check is what rejects it. scripts/fencing-demo.sh shows exactly that.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use kvstore::client::{parse_duration, Client, ClientError, Election};

/// Time between two writes while leading.
const WORK: Duration = Duration::from_millis(200);

#[derive(Debug, Parser)]
#[command(about = "Fenced writer that leads a service through a kvstore lock")]
struct Args {
    /// This worker's name (the lock holder).
    #[arg(long)]
    name: String,
    /// The service to lead (the lock's name).
    #[arg(long)]
    service: String,
    /// Comma-separated kvstore node addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Lease length.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    ttl: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = &args.name;
    let mut client = Client::new(args.endpoints.clone()).context("bad --endpoints")?;
    println!("[{name}] campaigning for {}", args.service);
    loop {
        let mut leadership = Election::campaign(client, &args.service, name, args.ttl)
            .await
            .context("campaign failed")?;
        let token = leadership.token();
        println!("[{name}] became leader with token {token}");
        let mut n = 0u64;
        loop {
            if leadership.is_lost() {
                println!("[{name}] lost leadership (token {token})");
                break;
            }
            // The work between the check and the write: a pause here makes a zombie.
            tokio::time::sleep(WORK).await;
            n += 1;
            let key = format!("orders/{}/{token}-{n}", args.service);
            let value = format!(
                "written by {name} with token {token} seq {n} at {}",
                unix_millis()
            );
            match leadership.put(&key, &value).await {
                Ok(_) => println!("[{name}] wrote {key} with token {token}"),
                Err(ClientError::FailedPrecondition(message)) => {
                    println!("[{name}] write rejected: {message}");
                    println!("[{name}] lost leadership (token {token})");
                    break;
                }
                // The store may be electing a leader: still ours as far as we know.
                Err(e) => println!("[{name}] write of {key} failed: {e}"),
            }
        }
        client = leadership.into_client();
        println!("[{name}] campaigning for {}", args.service);
    }
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
