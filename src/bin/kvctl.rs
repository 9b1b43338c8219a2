//! kvctl: command-line client for kvstore.
//!
//! ```text
//! kvctl [--endpoints 127.0.0.1:9001,...] [--timeout 10s] put KEY VALUE | get KEY [--serializable] | del KEY | status
//! ```
//! Output is plain text. Exit codes: 0 success, 1 `get` of a missing key, 2 any failure
//! (one line on stderr: `kvctl: <message>`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvstore::client::{Client, ClientOptions, Consistency, NodeStatus};
use kvstore::pb::Role;

/// Command-line client for a kvstore cluster.
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, about)]
struct Args {
    /// Comma-separated node addresses (HOST:PORT); the leader is found automatically.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"
    )]
    endpoints: Vec<String>,
    /// Overall time limit per operation, retries included (e.g. 10s, 500ms, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set KEY to VALUE (through the leader; prints the log index it took effect at).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Print the value of KEY (exit 1 if it does not exist).
    Get {
        /// The key.
        key: String,
        /// Read from any node's local state instead of the leader (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete KEY (prints `deleted` or `not found`).
    #[command(alias = "delete")]
    Del {
        /// The key.
        key: String,
    },
    /// Show every node's role, term, leader, commit and applied index.
    Status,
}

/// A failure already worded for the user.
struct Failure(String);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("kvctl: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Failure> {
    let options = ClientOptions::with_timeout(args.timeout);
    let mut client =
        Client::with_options(args.endpoints, options).map_err(|e| Failure(e.to_string()))?;
    let failed = |e: kvstore::client::ClientError| Failure(e.to_string());
    match args.command {
        Command::Put { key, value } => {
            let header = client.put(&key, &value).await.map_err(failed)?;
            println!("OK (index {})", header.index);
        }
        Command::Get { key, serializable } => {
            let consistency = if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let result = client.get(&key, consistency).await.map_err(failed)?;
            match result.value {
                Some(value) => println!("{value}"),
                None => {
                    eprintln!("key not found: {key}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Del { key } => {
            let result = client.delete(&key).await.map_err(failed)?;
            println!(
                "{}",
                if result.deleted {
                    "deleted"
                } else {
                    "not found"
                }
            );
        }
        Command::Status => {
            let statuses = client.status_all().await;
            print!("{}", status_table(&statuses));
            if statuses.iter().all(|s| s.result.is_err()) {
                return Err(Failure("no node is reachable".into()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per node: `ID ADDRESS ROLE TERM LEADER COMMIT APPLIED` (whitespace-aligned, so
/// scripts can split on whitespace; an unreachable node shows `-` and the reason).
fn status_table(statuses: &[NodeStatus]) -> String {
    let header = [
        "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for status in statuses {
        rows.push(match &status.result {
            Ok(s) => vec![
                s.id.to_string(),
                status.address.clone(),
                role_name(s.role).to_string(),
                s.term.to_string(),
                if s.leader_id == 0 {
                    "-".to_string()
                } else {
                    s.leader_id.to_string()
                },
                s.commit_index.to_string(),
                s.last_applied.to_string(),
            ],
            Err(e) => vec!["-".to_string(), status.address.clone(), e.to_string()],
        });
    }
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| match widths.get(c) {
                Some(width) if c + 1 < row.len() => format!("{cell:<width$}"),
                _ => cell.clone(),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::Unspecified) | Err(_) => "unknown",
    }
}

/// `10s`, `500ms`, `1m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}; use e.g. 10s, 500ms or 1m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore::client::ClientError;
    use kvstore::pb::StatusResponse;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn status_table_has_one_row_per_node() {
        let statuses = vec![
            NodeStatus {
                address: "127.0.0.1:9001".into(),
                result: Ok(StatusResponse {
                    id: 1,
                    role: Role::Leader.into(),
                    term: 3,
                    leader_id: 1,
                    commit_index: 12,
                    last_applied: 11,
                    ..Default::default()
                }),
            },
            NodeStatus {
                address: "127.0.0.1:9002".into(),
                result: Err(ClientError::Unreachable("connection refused".into())),
            },
        ];
        let table = status_table(&statuses);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(row, ["1", "127.0.0.1:9001", "leader", "3", "1", "12", "11"]);
        assert!(lines[2].starts_with("-   127.0.0.1:9002  unreachable: connection refused"));
        assert_eq!(
            lines[0].find("ROLE"),
            lines[1].find("leader"),
            "columns align"
        );
    }
}
