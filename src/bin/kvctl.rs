//! kvctl: command-line client for kvstore.
//!
//! ```text
//! kvctl [--endpoints 127.0.0.1:9001,...] [--timeout 10s] [--no-redirect] COMMAND
//!   put KEY VALUE [--fence NAME:TOKEN] | get KEY [--serializable] | del KEY [--fence NAME:TOKEN]
//!   status
//!   transfer-leader ID                                     (waits until node ID leads)
//!   lock acquire NAME --holder H --ttl 5s [--wait 10s]   (prints the token)
//!   lock keepalive NAME TOKEN | lock release NAME TOKEN | lock validate NAME TOKEN
//! ```
//! Output is plain text. Exit codes: 0 success, 1 `get` of a missing key or `lock validate`
//! of an invalid token, 2 any failure (one line on stderr: `kvctl: <message>`), 3 a write
//! whose outcome is unknown because the cluster had dropped its session (one line:
//! `kvctl: outcome unknown: session expired; ...`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvstore::client::{
    parse_duration, Client, ClientError, ClientOptions, Consistency, Fence, NodeStatus, Validation,
};
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
    /// Ask only the given endpoints: print a node's "not leader, try node Y (HOST:PORT)"
    /// answer as the failure instead of following it to node Y.
    #[arg(long, global = true)]
    no_redirect: bool,
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
        /// Apply only while TOKEN is the current token of lock NAME.
        #[arg(long, value_name = "NAME:TOKEN", value_parser = parse_fence)]
        fence: Option<Fence>,
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
        /// Apply only while TOKEN is the current token of lock NAME.
        #[arg(long, value_name = "NAME:TOKEN", value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// Show every node's role, term, leader, commit and applied index.
    Status,
    /// Named locks with leases and fencing tokens.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Move leadership to node ID and wait until it leads (the leader hands over: it catches
    /// ID up, then ID is elected at once; writes pause meanwhile and clients retry them).
    TransferLeader {
        /// The node that should lead.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum LockCommand {
    /// Take lock NAME (waiting up to --wait while someone else holds it); prints the token.
    Acquire {
        /// The lock's name.
        name: String,
        /// Who takes it (the same holder acquiring again gets the same token, so use a name
        /// unique to this process).
        #[arg(long)]
        holder: String,
        /// Lease length (e.g. 5s, 500ms).
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// How long to wait for the current holder (default: do not wait).
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Renew the lease of NAME held with TOKEN; prints the lease length.
    #[command(alias = "keep-alive")]
    Keepalive {
        /// The lock's name.
        name: String,
        /// The token it is held with.
        token: u64,
    },
    /// Give up lock NAME held with TOKEN.
    Release {
        /// The lock's name.
        name: String,
        /// The token it is held with.
        token: u64,
    },
    /// Is TOKEN the current token of NAME? Prints `valid` (exit 0) or
    /// `invalid (current N, holder H)` (exit 1).
    Validate {
        /// The lock's name.
        name: String,
        /// The token to check.
        token: u64,
    },
}

/// A failure already worded for the user, and the exit status it ends with.
struct Failure(String, u8);

impl Failure {
    /// A failure with the generic exit status 2.
    fn new(message: impl Into<String>) -> Self {
        Failure(message.into(), 2)
    }
}

impl From<ClientError> for Failure {
    /// Exit status 3 for a write whose outcome is unknown, 2 for any other error.
    fn from(e: ClientError) -> Self {
        let code = if matches!(e, ClientError::UnknownOutcome(_)) {
            3
        } else {
            2
        };
        Failure(e.to_string(), code)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(Failure(message, code)) => {
            eprintln!("kvctl: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Failure> {
    let options = ClientOptions {
        follow_redirects: !args.no_redirect,
        ..ClientOptions::with_timeout(args.timeout)
    };
    let mut client = Client::with_options(args.endpoints, options).map_err(Failure::from)?;
    let failed = Failure::from;
    match args.command {
        Command::Put { key, value, fence } => {
            let header = match &fence {
                Some(fence) => client.put_fenced(&key, &value, fence).await,
                None => client.put(&key, &value).await,
            }
            .map_err(failed)?;
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
        Command::Del { key, fence } => {
            let result = match &fence {
                Some(fence) => client.delete_fenced(&key, fence).await,
                None => client.delete(&key).await,
            }
            .map_err(failed)?;
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
                return Err(Failure::new("no node is reachable"));
            }
        }
        Command::Lock(command) => return run_lock(&mut client, command).await,
        Command::TransferLeader { id } => {
            let term = client.transfer_leadership(id).await.map_err(failed)?;
            println!("node {id} is the leader (term {term})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_lock(client: &mut Client, command: LockCommand) -> Result<ExitCode, Failure> {
    let failed = Failure::from;
    match command {
        LockCommand::Acquire {
            name,
            holder,
            ttl,
            wait,
        } => {
            let lease = client
                .acquire(&name, &holder, ttl, wait.unwrap_or_default())
                .await
                .map_err(failed)?;
            println!("{}", lease.token);
        }
        LockCommand::Keepalive { name, token } => {
            let ttl = client.keep_alive(&name, token).await.map_err(failed)?;
            println!("OK (ttl {} ms)", ttl.as_millis());
        }
        LockCommand::Release { name, token } => {
            client.release(&name, token).await.map_err(failed)?;
            println!("released");
        }
        LockCommand::Validate { name, token } => {
            let validation = client.validate(&name, token).await.map_err(failed)?;
            println!("{}", describe_validation(&validation));
            if !validation.valid {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `valid`, or `invalid (current N, holder H)` / `invalid (the lock is not held)`.
fn describe_validation(validation: &Validation) -> String {
    if validation.valid {
        "valid".to_string()
    } else if validation.current_token == 0 {
        "invalid (the lock is not held)".to_string()
    } else {
        format!(
            "invalid (current {}, holder {})",
            validation.current_token, validation.holder
        )
    }
}

/// `NAME:TOKEN` (the name may itself contain colons; the token is after the last one).
fn parse_fence(text: &str) -> Result<Fence, String> {
    let (name, token) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid fence {text:?}; use NAME:TOKEN, e.g. order-service:42"))?;
    if name.is_empty() {
        return Err(format!("invalid fence {text:?}: the lock name is empty"));
    }
    let token = token
        .parse::<u64>()
        .map_err(|_| format!("invalid fence {text:?}: the token must be a number"))?;
    Ok(Fence::new(name, token))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore::pb::StatusResponse;

    #[test]
    fn an_unknown_outcome_exits_3_and_other_errors_2() {
        let Failure(message, code) = Failure::from(ClientError::UnknownOutcome(
            "session expired; the outcome of your earlier attempt is unknown".into(),
        ));
        assert_eq!(code, 3);
        assert_eq!(
            message,
            "outcome unknown: session expired; the outcome of your earlier attempt is unknown"
        );
        let Failure(_, code) = Failure::from(ClientError::FailedPrecondition("x".into()));
        assert_eq!(code, 2);
        assert_eq!(Failure::new("no node is reachable").1, 2);
    }

    #[test]
    fn fences_parse_as_name_colon_token() {
        assert_eq!(parse_fence("svc:42"), Ok(Fence::new("svc", 42)));
        assert_eq!(parse_fence("a:b:7"), Ok(Fence::new("a:b", 7)));
        assert!(parse_fence("svc").is_err());
        assert!(parse_fence(":4").is_err());
        assert!(parse_fence("svc:x").is_err());
    }

    #[test]
    fn validation_is_described_in_one_word_or_with_the_current_holder() {
        let mut v = Validation {
            valid: true,
            current_token: 7,
            holder: "A".into(),
        };
        assert_eq!(describe_validation(&v), "valid");
        v.valid = false;
        assert_eq!(describe_validation(&v), "invalid (current 7, holder A)");
        v.current_token = 0;
        assert_eq!(describe_validation(&v), "invalid (the lock is not held)");
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
