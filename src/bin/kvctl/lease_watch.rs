//! kvctl's `watch` and `lease` commands, with etcdctl's text output (lease ids in hex, as
//! etcdctl prints and parses them) or one JSON object per event / answer (`-w json`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use kvstore::client::{Client, EventKind, WatchEvent, WatchOptions};

use super::output::JsonKv;
use super::Failure;

/// `kvctl lease ...`.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds; prints `lease ID granted with TTL(Ns)`.
    Grant {
        /// Seconds (raised to the cluster's minimum, 1.5 election timeouts).
        ttl: i64,
        /// Ask for this id (hex); default: the cluster picks one.
        #[arg(long, value_parser = parse_lease_id)]
        id: Option<i64>,
    },
    /// Revoke lease ID (hex): every key attached to it is deleted at one revision.
    Revoke {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Keep lease ID (hex) alive until interrupted, printing each renewal; with --once,
    /// renew once and exit.
    #[command(alias = "keepalive")]
    KeepAlive {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Remaining and granted TTL of lease ID (hex), with --keys its attached keys.
    Timetolive {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also print the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// Every lease's id.
    List,
}

/// A lease id as etcdctl takes it: hexadecimal, without `0x`.
pub fn parse_lease_id(s: &str) -> Result<i64, String> {
    let digits = s.trim().trim_start_matches("0x");
    u64::from_str_radix(digits, 16)
        .map(|id| id as i64)
        .map_err(|_| {
            format!("bad lease id {s:?}: expected hexadecimal digits, e.g. 694d77aa9e38260f")
        })
}

/// A lease id as etcdctl prints it.
fn hex(id: i64) -> String {
    format!("{:x}", id as u64)
}

pub async fn run_lease(
    client: &mut Client,
    command: LeaseCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match command {
        LeaseCommand::Grant { ttl, id } => {
            let granted = client.grant_lease(ttl, id.unwrap_or(0)).await?;
            if json {
                let body = serde_json::json!({"id": granted.id, "ttl": granted.ttl});
                println!("{}", super::output::json(&granted.header, body));
            } else {
                println!(
                    "lease {} granted with TTL({}s)",
                    hex(granted.id),
                    granted.ttl
                );
            }
        }
        LeaseCommand::Revoke { id } => {
            let header = client.revoke_lease(id).await?;
            if json {
                println!("{}", super::output::json(&header, serde_json::json!({})));
            } else {
                println!("lease {} revoked", hex(id));
            }
        }
        LeaseCommand::KeepAlive { id, once } => return keep_alive(client, id, once, json).await,
        LeaseCommand::Timetolive { id, keys } => {
            let t = client.lease_time_to_live(id, keys).await?;
            if json {
                let body = serde_json::json!({
                    "id": id, "ttl": t.ttl, "granted_ttl": t.granted_ttl, "keys": t.keys,
                });
                println!("{body}");
            } else if t.ttl < 0 {
                println!("lease {} already expired", hex(id));
            } else {
                let mut line = format!(
                    "lease {} granted with TTL({}s), remaining({}s)",
                    hex(id),
                    t.granted_ttl,
                    t.ttl
                );
                if keys {
                    line.push_str(&format!(", attached keys([{}])", t.keys.join(" ")));
                }
                println!("{line}");
            }
        }
        LeaseCommand::List => {
            let ids = client.leases().await?;
            if json {
                println!("{}", serde_json::json!({ "leases": ids }));
            } else {
                println!("found {} leases", ids.len());
                for id in ids {
                    println!("{}", hex(id));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lease keep-alive`: renews through a [`kvstore::client::LeaseKeeper`], printing each new
/// answer, until the lease is gone (exit 1) or the process is interrupted.
async fn keep_alive(
    client: &mut Client,
    id: i64,
    once: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let keeper = client.keep_lease_alive(id)?;
    let mut printed = None;
    let deadline = tokio::time::Instant::now() + client.options().timeout;
    loop {
        let ttl = keeper.last_ttl();
        if ttl.is_some() && ttl != printed {
            printed = ttl;
            let ttl = ttl.unwrap_or_default();
            if ttl <= 0 {
                println!("lease {} expired or revoked.", hex(id));
                return Ok(ExitCode::from(1));
            }
            if json {
                println!("{}", serde_json::json!({"id": id, "ttl": ttl}));
            } else {
                println!("lease {} keepalived with TTL({ttl})", hex(id));
            }
            if once {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if once && printed.is_none() && tokio::time::Instant::now() > deadline {
            return Err(Failure::new(format!(
                "no node renewed lease {} within {} ms",
                hex(id),
                client.options().timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kvctl watch`: prints events as they come until interrupted; ends with status 2 when the
/// watch is cancelled (its history was compacted away).
pub async fn run_watch(
    client: &Client,
    key: &str,
    options: WatchOptions,
    json: bool,
) -> Result<ExitCode, Failure> {
    let prev_kv = options.prev_kv;
    let mut watcher = client.watch(key, options)?;
    while let Some(batch) = watcher.next().await {
        for event in batch? {
            if json {
                println!("{}", json_event(&event));
            } else {
                print!("{}", simple_event(&event, prev_kv));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// etcdctl's watch output: the event type, then (with --prev-kv, when there was one) the
/// previous key and value, then the key and the value, one per line.
fn simple_event(e: &WatchEvent, prev_kv: bool) -> String {
    let kind = match e.kind {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    };
    let mut out = format!("{kind}\n");
    if let (true, Some(prev)) = (prev_kv, &e.prev_kv) {
        out.push_str(&format!("{}\n{}\n", prev.key, prev.value));
    }
    out.push_str(&format!("{}\n{}\n", e.kv.key, e.kv.value));
    out
}

fn json_event(e: &WatchEvent) -> serde_json::Value {
    let kind = match e.kind {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    };
    serde_json::json!({
        "type": kind,
        "kv": JsonKv::from(&e.kv),
        "prev_kv": e.prev_kv.as_ref().map(JsonKv::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore::client::KeyValue;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn lease_ids_are_hex_both_ways() {
        assert_eq!(
            parse_lease_id("694d77aa9e38260f"),
            Ok(0x694d_77aa_9e38_260f)
        );
        assert_eq!(parse_lease_id("0x1f"), Ok(31));
        assert_eq!(hex(31), "1f");
        assert!(parse_lease_id("xyz").unwrap_err().contains("hexadecimal"));
        // etcdctl prints negative ids (never assigned, but possible through the API) as
        // their u64 bits; they read back as themselves.
        assert_eq!(parse_lease_id(&hex(-5)), Ok(-5));
    }

    #[test]
    fn events_print_as_etcdctl_prints_them() {
        let put = WatchEvent {
            kind: EventKind::Put,
            kv: kv("k", "2", 5),
            prev_kv: Some(kv("k", "1", 4)),
        };
        assert_eq!(simple_event(&put, false), "PUT\nk\n2\n");
        assert_eq!(simple_event(&put, true), "PUT\nk\n1\nk\n2\n");
        let delete = WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: "k".into(),
                ..KeyValue::default()
            },
            prev_kv: None,
        };
        assert_eq!(simple_event(&delete, true), "DELETE\nk\n\n");
        let j = json_event(&put);
        assert_eq!(j["type"], "PUT");
        assert_eq!(j["kv"]["mod_revision"], 5);
        assert_eq!(j["prev_kv"]["value"], "1");
    }
}
