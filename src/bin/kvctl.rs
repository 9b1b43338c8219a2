//! kvctl: command-line client for kvstore.
//!
//! ```text
//! kvctl [--endpoints 127.0.0.1:9001,...] [--timeout 10s] [--no-redirect] COMMAND
//!   put KEY VALUE [--fence NAME:TOKEN] | get KEY [--serializable] | del KEY [--fence NAME:TOKEN]
//!   get KEY [RANGE_END] [--prefix | --from-key] [--rev N] [--limit N] [--keys-only]
//!       [--count-only] [--sort-by key|version|create|modify|value] [--order ascend|descend]
//!       [--consistency s|l]                               (etcdctl's output: KEY, VALUE lines)
//!   del KEY [RANGE_END] [--prefix | --from-key] [--prev-kv]  (prints the number deleted)
//!   txn [--fence NAME:TOKEN] < compares, success ops, failure ops (etcdctl's txn format)
//!   cas KEY EXPECTED NEW | cas KEY NEW --absent           (OK, or exit 1 and the current value)
//!   compact REV
//!   put KEY VALUE --lease ID | lease grant TTL | lease revoke ID | lease keep-alive ID [--once]
//!   lease timetolive ID [--keys] | lease list                (ids in hex, as etcdctl)
//!   watch KEY [RANGE_END] [--prefix] [--rev N] [--prev-kv]    (etcdctl's output, until ^C)
//!   status
//!   transfer-leader ID                                     (waits until node ID leads)
//!   lock acquire NAME --holder H --ttl 5s [--wait 10s]   (prints the token)
//!   lock keepalive NAME TOKEN | lock release NAME TOKEN | lock validate NAME TOKEN
//! ```
//! Output is plain text, or with `-w json` one JSON object per key-space command (see
//! [`JSON_HELP`]). Exit codes: 0 success, 1 `get` of a missing key, `lock validate` of an
//! invalid token or a `cas` whose compare failed, 2 any failure (one line on stderr: `kvctl: <message>`), 3 a write
//! whose outcome is unknown because the cluster had dropped its session (one line:
//! `kvctl: outcome unknown: session expired; ...`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

#[path = "kvctl/lease_watch.rs"]
mod lease_watch;
#[path = "kvctl/member.rs"]
mod member;
#[path = "kvctl/output.rs"]
mod output;
#[path = "kvctl/txn_input.rs"]
mod txn_input;

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kvstore::client::{
    parse_duration, Client, ClientError, ClientOptions, Consistency, Fence, NodeStatus, OpResult,
    RangeOptions, SortOrder, SortTarget, TxnOp, Validation, WatchOptions,
};
use kvstore::pb::{MemberRole, Role};

/// The `-w json` output, in kvctl's --help.
const JSON_HELP: &str = "\
With -w json (--write-out json), put, get, del, txn, cas, compact and lease print one JSON
object on one line, watch one per event. Field names are stable:
  every object  header: {revision, node_id, term, index}   (revision: the key space's
                revision after the command; index: the log index it took effect or was read at)
  a kv          {key, value, create_revision, mod_revision, version, lease}
  put           {header}
  get           {header, kvs: [kv], count, more}
  del           {header, deleted, prev_kvs: [kv]}
  txn           {header, succeeded, responses: [{put: {prev_kv}} | {get: {kvs, count, more}}
                | {del: {deleted, prev_kvs}}]}
  cas           {header, succeeded, current: kv or null}   (current: the key when the
                compare failed)
  compact       {header, compacted}
  watch         {type: PUT|DELETE, kv, prev_kv: kv or null}   (no header: one per event)
  lease grant   {header, id, ttl}      lease revoke {header}     lease list {leases: [id]}
  lease keep-alive {id, ttl}           lease timetolive {id, ttl, granted_ttl, keys}
                (ids as decimal numbers; the text output prints them in hex, as etcdctl)
Other commands do not take -w json.";

/// Command-line client for a kvstore cluster.
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, about, after_help = JSON_HELP)]
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
    /// Output format: `simple` (text) or `json` (one object per command; see below).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        value_enum,
        default_value = "simple"
    )]
    write_out: WriteOut,
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
        /// Attach the key to lease ID (hex, as `lease grant` prints it): the key is deleted
        /// when the lease is revoked or runs out.
        #[arg(long, value_name = "ID", value_parser = lease_watch::parse_lease_id)]
        lease: Option<i64>,
    },
    /// Print the value of KEY (exit 1 if it does not exist). With any range option (or -w
    /// json): print each key found and its value on two lines, as etcdctl does (exit 0 even
    /// when none is found).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        range: RangeArgs,
        /// Read from any node's local state instead of the leader (may be stale); the same
        /// as --consistency s.
        #[arg(long)]
        serializable: bool,
        /// Linearizable (l, the default: through the leader) or serializable (s: any node's
        /// local state, may be stale).
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// Delete KEY (prints `deleted` or `not found`). With any range option or --prev-kv (or
    /// -w json): print the number of keys deleted, then each deleted key and its value when
    /// --prev-kv, as etcdctl does.
    #[command(alias = "delete")]
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        delete: DeleteArgs,
        /// Apply only while TOKEN is the current token of lock NAME.
        #[arg(long, value_name = "NAME:TOKEN", value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// Run a transaction read from standard input in etcdctl's format: compares one a line
    /// (`mod("k") = "5"`, `value("k") != "v"`, `version("k") > "1"`, `create("k") = "0"`,
    /// `lease("k") = "0"`), a blank line, the ops run when all hold (`put K V [--prev-kv]`,
    /// `get K [flags of get]`, `del K [flags of del]`), a blank line, the ops run otherwise, a
    /// blank line. Prints SUCCESS or FAILURE, then each op's output after a blank line.
    Txn {
        /// Apply only while TOKEN is the current token of lock NAME.
        #[arg(long, value_name = "NAME:TOKEN", value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// Compare-and-swap: set KEY to NEW only if its value is EXPECTED (`cas KEY EXPECTED
    /// NEW`) or, with --absent, only if KEY does not exist (`cas KEY NEW --absent`). Prints
    /// OK; otherwise exits 1, printing the current value on stdout (nothing if absent) and
    /// why on stderr.
    Cas {
        /// The key.
        key: String,
        /// The value KEY must have (with --absent: the new value).
        expected: String,
        /// The new value (not given with --absent).
        new: Option<String>,
        /// Swap only if KEY does not exist.
        #[arg(long)]
        absent: bool,
    },
    /// Drop the key space's history below revision REV (reads at older revisions fail).
    Compact {
        /// The revision.
        revision: i64,
    },
    /// Print every change of KEY (or a prefix, a range) as it comes, until interrupted:
    /// etcdctl's output (PUT or DELETE, then the key and the value), or one JSON object per
    /// event with -w json. Resumes by itself across node failures, never losing or repeating
    /// an event.
    Watch {
        /// The key.
        key: String,
        /// Watch every key in [KEY, RANGE_END).
        range_end: Option<String>,
        /// Watch every key starting with KEY (an empty KEY: every key).
        #[arg(long)]
        prefix: bool,
        /// Start at revision N (0: the changes after the current revision).
        #[arg(long, value_name = "N", default_value_t = 0)]
        rev: i64,
        /// Also print the key as it was before each change.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Leases on keys: grant, revoke, keep-alive, timetolive, list.
    #[command(subcommand)]
    Lease(lease_watch::LeaseCommand),
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
    /// Cluster membership: list, add, remove, promote, update.
    #[command(subcommand)]
    Member(member::MemberCommand),
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

/// `-w`: how the key-space commands print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WriteOut {
    /// Text (etcdctl's format for the range, delete and txn forms).
    Simple,
    /// One JSON object per command.
    Json,
}

/// `--consistency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ConsistencyArg {
    /// Serializable.
    S,
    /// Linearizable.
    L,
}

/// `--sort-by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

/// `--order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Order {
    Ascend,
    Descend,
}

/// The range options of `get` (and of `get` in a txn).
#[derive(Debug, Default, clap::Args)]
struct RangeArgs {
    /// Read every key in [KEY, RANGE_END).
    range_end: Option<String>,
    /// Read every key starting with KEY (an empty KEY: every key).
    #[arg(long)]
    prefix: bool,
    /// Read every key >= KEY (an empty KEY: every key).
    #[arg(long)]
    from_key: bool,
    /// Read at revision N (0: the current one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    rev: i64,
    /// At most N keys (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: i64,
    /// Print the keys only.
    #[arg(long)]
    keys_only: bool,
    /// Print only how many keys match.
    #[arg(long)]
    count_only: bool,
    /// Sort by this (ascending unless --order says otherwise).
    #[arg(long, value_enum, ignore_case = true)]
    sort_by: Option<SortBy>,
    /// Sort order (by key unless --sort-by says otherwise).
    #[arg(long, value_enum, ignore_case = true)]
    order: Option<Order>,
}

impl RangeArgs {
    /// Whether no option is given: a plain `get KEY`, answered the old way.
    fn is_plain(&self) -> bool {
        self.range_end.is_none()
            && !self.prefix
            && !self.from_key
            && self.rev == 0
            && self.limit == 0
            && !self.keys_only
            && !self.count_only
            && self.sort_by.is_none()
            && self.order.is_none()
    }

    /// The client's options (linearizable).
    fn options(&self) -> Result<RangeOptions, String> {
        one_selector(self.range_end.as_ref(), self.prefix, self.from_key)?;
        let sort_target = match self.sort_by.unwrap_or(SortBy::Key) {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Modify => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        };
        let sort_order = match (self.order, self.sort_by) {
            (Some(Order::Ascend), _) | (None, Some(_)) => SortOrder::Ascend,
            (Some(Order::Descend), _) => SortOrder::Descend,
            (None, None) => SortOrder::None,
        };
        Ok(RangeOptions {
            prefix: self.prefix,
            from_key: self.from_key,
            range_end: self.range_end.clone(),
            limit: self.limit,
            revision: self.rev,
            sort_target,
            sort_order,
            keys_only: self.keys_only,
            count_only: self.count_only,
            serializable: false,
        })
    }
}

/// The options of `del` (and of `del` in a txn).
#[derive(Debug, Default, clap::Args)]
struct DeleteArgs {
    /// Delete every key in [KEY, RANGE_END).
    range_end: Option<String>,
    /// Delete every key starting with KEY (an empty KEY: every key).
    #[arg(long)]
    prefix: bool,
    /// Delete every key >= KEY (an empty KEY: every key).
    #[arg(long)]
    from_key: bool,
    /// Print the deleted keys and their values.
    #[arg(long)]
    prev_kv: bool,
}

impl DeleteArgs {
    /// Whether no option is given: a plain `del KEY`, answered the old way.
    fn is_plain(&self) -> bool {
        self.range_end.is_none() && !self.prefix && !self.from_key && !self.prev_kv
    }

    /// The delete as a txn op.
    fn op(&self, key: &str) -> Result<TxnOp, String> {
        one_selector(self.range_end.as_ref(), self.prefix, self.from_key)?;
        let op = match &self.range_end {
            Some(end) => TxnOp::delete_range(key, end),
            None if self.prefix => TxnOp::delete_prefix(key),
            None if self.from_key => TxnOp::delete_from_key(key),
            None => TxnOp::delete(key),
        };
        Ok(if self.prev_kv { op.with_prev_kv() } else { op })
    }
}

/// Refuses more than one of RANGE_END, --prefix and --from-key.
fn one_selector(range_end: Option<&String>, prefix: bool, from_key: bool) -> Result<(), String> {
    if [range_end.is_some(), prefix, from_key]
        .iter()
        .filter(|given| **given)
        .count()
        > 1
    {
        return Err("give at most one of RANGE_END, --prefix and --from-key".to_string());
    }
    Ok(())
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
    let json = args.write_out == WriteOut::Json;
    match args.command {
        Command::Put {
            key,
            value,
            fence,
            lease,
        } => {
            let header = match (&fence, lease) {
                (Some(_), Some(_)) => {
                    return Err(Failure::new("give --fence or --lease, not both"));
                }
                (Some(fence), None) => client.put_fenced(&key, &value, fence).await,
                (None, Some(lease)) => client.put_with_lease(&key, &value, lease).await,
                (None, None) => client.put(&key, &value).await,
            }
            .map_err(failed)?;
            if json {
                println!("{}", output::json(&header, serde_json::json!({})));
            } else {
                println!("OK (index {})", header.index);
            }
        }
        Command::Get {
            key,
            range,
            serializable,
            consistency,
        } => {
            let serializable = serializable || consistency == Some(ConsistencyArg::S);
            if json || !range.is_plain() {
                return get_range(&mut client, &key, &range, serializable, json).await;
            }
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
        Command::Del { key, delete, fence } => {
            if json || !delete.is_plain() {
                let op = delete.op(&key).map_err(Failure::new)?;
                let result = commit(&mut client, fence.as_ref(), |txn| txn.and_then(op)).await?;
                let Some(OpResult::Delete { deleted, prev_kvs }) = result.results.first() else {
                    return Err(Failure::new(
                        "the cluster answered a delete with another op's result",
                    ));
                };
                if json {
                    let body = output::JsonDelete {
                        deleted: *deleted,
                        prev_kvs: prev_kvs.iter().map(output::JsonKv::from).collect(),
                    };
                    println!("{}", output::json(&result.header, body));
                } else {
                    print!("{}", output::simple_delete(*deleted, prev_kvs));
                }
                return Ok(ExitCode::SUCCESS);
            }
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
        Command::Txn { fence } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| Failure::new(format!("cannot read the txn from stdin: {e}")))?;
            let parsed = txn_input::parse(&input).map_err(Failure::new)?;
            let result = commit(&mut client, fence.as_ref(), |mut txn| {
                for compare in parsed.compares {
                    txn = txn.when(compare);
                }
                for op in parsed.success {
                    txn = txn.and_then(op);
                }
                for op in parsed.failure {
                    txn = txn.or_else(op);
                }
                txn
            })
            .await?;
            if json {
                println!(
                    "{}",
                    output::json(&result.header, output::JsonTxn::from(&result))
                );
            } else {
                print!("{}", output::simple_txn(&result));
            }
        }
        Command::Cas {
            key,
            expected,
            new,
            absent,
        } => return cas(&mut client, &key, expected, new, absent, json).await,
        Command::Compact { revision } => {
            let header = client.compact(revision).await.map_err(failed)?;
            if json {
                let body = serde_json::json!({ "compacted": revision });
                println!("{}", output::json(&header, body));
            } else {
                println!("compacted revision {revision}");
            }
        }
        Command::Watch {
            key,
            range_end,
            prefix,
            rev,
            prev_kv,
        } => {
            one_selector(range_end.as_ref(), prefix, false).map_err(Failure::new)?;
            let options = WatchOptions {
                prefix,
                range_end,
                start_revision: rev,
                prev_kv,
                ..WatchOptions::default()
            };
            return lease_watch::run_watch(&client, &key, options, json).await;
        }
        Command::Lease(command) => return lease_watch::run_lease(&mut client, command, json).await,
        Command::Member(command) => return member::run_member(&mut client, command, json).await,
        _ if json => {
            return Err(Failure::new(
                "-w json is supported by put, get, del, txn, cas, compact, watch, lease and member only",
            ))
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

/// `get` with range options (or -w json): etcdctl's output.
async fn get_range(
    client: &mut Client,
    key: &str,
    range: &RangeArgs,
    serializable: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let options = RangeOptions {
        serializable,
        ..range.options().map_err(Failure::new)?
    };
    let result = client.range(key, &options).await.map_err(Failure::from)?;
    if json {
        println!(
            "{}",
            output::json(&result.header, output::JsonRange::from(&result))
        );
    } else {
        print!(
            "{}",
            output::simple_range(&result, range.keys_only, range.count_only)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds a txn with `build`, fences it if asked, and commits it.
async fn commit(
    client: &mut Client,
    fence: Option<&Fence>,
    build: impl FnOnce(kvstore::client::Txn<'_>) -> kvstore::client::Txn<'_>,
) -> Result<kvstore::client::TxnResult, Failure> {
    let mut txn = client.txn();
    if let Some(fence) = fence {
        txn = txn.fenced(fence);
    }
    build(txn).commit().await.map_err(Failure::from)
}

/// `cas KEY EXPECTED NEW` / `cas KEY NEW --absent`.
async fn cas(
    client: &mut Client,
    key: &str,
    expected: String,
    new: Option<String>,
    absent: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let (expected, new) = match (absent, new) {
        (false, Some(new)) => (Some(expected), new),
        (true, None) => (None, expected),
        (false, None) => {
            return Err(Failure::new(
                "cas needs KEY EXPECTED NEW (or KEY NEW --absent)",
            ))
        }
        (true, Some(_)) => {
            return Err(Failure::new(
                "cas --absent takes KEY NEW only (there is no expected value)",
            ))
        }
    };
    let result = client
        .cas(key, expected.as_deref(), &new)
        .await
        .map_err(Failure::from)?;
    if json {
        let body = serde_json::json!({
            "succeeded": result.succeeded,
            "current": result.current.as_ref().map(output::JsonKv::from),
        });
        println!("{}", output::json(&result.header, body));
    } else if result.succeeded {
        println!("OK");
    } else {
        match &result.current {
            Some(kv) => {
                println!("{}", kv.value);
                let why = match &expected {
                    Some(_) => {
                        format!("{key} has another value (mod revision {})", kv.mod_revision)
                    }
                    None => format!("{key} exists (mod revision {})", kv.mod_revision),
                };
                eprintln!("cas failed: {why}");
            }
            None => eprintln!("cas failed: {key} does not exist"),
        }
    }
    Ok(if result.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

/// One row per node: `ID ADDRESS ROLE TERM LEADER COMMIT APPLIED MEMBER LAG`
/// (whitespace-aligned, so scripts can split on whitespace; an unreachable node shows `-` and
/// the reason). MEMBER is `voter` or `learner`; LAG is how many entries of the leader's log
/// the member lacks, as the leader last knew (`?` when no leader answered, or it has no
/// progress for the member yet). Only the endpoints asked get rows, so scripts that read the
/// table see only nodes that answered or `-` rows; `kvctl member list` lists every member.
fn status_table(statuses: &[NodeStatus]) -> String {
    let header = [
        "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "MEMBER", "LAG",
    ];
    let answers = || statuses.iter().filter_map(|s| s.result.as_ref().ok());
    // The leader's view of every member (the freshest term's leader, if several claim it).
    let leader = answers()
        .filter(|s| Role::try_from(s.role) == Ok(Role::Leader))
        .max_by_key(|s| s.term);
    let view = leader.or_else(|| answers().max_by_key(|s| s.term));
    let member_of = |id: u64| view.and_then(|v| v.members.iter().find(|m| m.id == id));
    let member_role = |id: u64| match member_of(id).map(|m| MemberRole::try_from(m.member_role)) {
        Some(Ok(MemberRole::Voter)) => "voter",
        Some(Ok(MemberRole::Learner)) => "learner",
        _ => "?",
    };
    let lag = |id: u64| match (leader, member_of(id)) {
        (Some(_), Some(m)) if m.has_progress => m.lag.to_string(),
        _ => "?".to_string(),
    };
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
                member_role(s.id).to_string(),
                lag(s.id),
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
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Command {
        let args = Args::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        args.unwrap().command
    }

    #[test]
    fn get_options_become_range_options_and_a_bare_get_stays_plain() {
        let Command::Get { range, .. } = parse(&["get", "k"]) else {
            panic!("not get")
        };
        assert!(range.is_plain());
        let Command::Get {
            range, consistency, ..
        } = parse(&[
            "get",
            "p/",
            "--prefix",
            "--rev",
            "4",
            "--limit",
            "2",
            "--keys-only",
            "--sort-by",
            "MODIFY",
            "--consistency",
            "s",
        ])
        else {
            panic!("not get")
        };
        assert!(!range.is_plain());
        assert_eq!(consistency, Some(ConsistencyArg::S));
        let options = range.options().unwrap();
        assert_eq!(
            options,
            RangeOptions {
                prefix: true,
                revision: 4,
                limit: 2,
                keys_only: true,
                sort_target: SortTarget::Mod,
                sort_order: SortOrder::Ascend,
                ..RangeOptions::default()
            },
            "--sort-by alone sorts ascending"
        );
        let Command::Get { range, .. } = parse(&["get", "a", "z", "--order", "descend"]) else {
            panic!("not get")
        };
        let options = range.options().unwrap();
        assert_eq!(options.range_end.as_deref(), Some("z"));
        assert_eq!(
            (options.sort_target, options.sort_order),
            (SortTarget::Key, SortOrder::Descend)
        );
        let Command::Get { range, .. } = parse(&["get", "a", "z", "--prefix"]) else {
            panic!("not get")
        };
        assert_eq!(
            range.options().unwrap_err(),
            "give at most one of RANGE_END, --prefix and --from-key"
        );
    }

    #[test]
    fn del_options_become_a_delete_op_and_a_bare_del_stays_plain() {
        let Command::Del { delete, .. } = parse(&["del", "k"]) else {
            panic!("not del")
        };
        assert!(delete.is_plain());
        assert_eq!(delete.op("k"), Ok(TxnOp::delete("k")));
        let Command::Del { delete, .. } = parse(&["del", "p/", "--prefix", "--prev-kv"]) else {
            panic!("not del")
        };
        assert!(!delete.is_plain());
        assert_eq!(
            delete.op("p/"),
            Ok(TxnOp::delete_prefix("p/").with_prev_kv())
        );
        let Command::Del { delete, .. } = parse(&["del", "a", "--from-key", "--prefix"]) else {
            panic!("not del")
        };
        assert!(delete.op("a").is_err());
    }

    #[test]
    fn write_out_is_global_and_cas_takes_absent() {
        let args = Args::try_parse_from(["kvctl", "get", "k", "-w", "json"]).unwrap();
        assert_eq!(args.write_out, WriteOut::Json);
        let args =
            Args::try_parse_from(["kvctl", "--write-out", "simple", "compact", "5"]).unwrap();
        assert_eq!(args.write_out, WriteOut::Simple);
        assert!(matches!(
            parse(&["cas", "gen", "1", "--absent"]),
            Command::Cas {
                absent: true,
                new: None,
                ..
            }
        ));
        assert!(Args::try_parse_from(["kvctl", "get", "k", "-w", "yaml"]).is_err());
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

    fn member(id: u64, role: MemberRole, lag: Option<u64>) -> kvstore::pb::Member {
        kvstore::pb::Member {
            id,
            peer_address: format!("127.0.0.1:900{id}"),
            member_role: role.into(),
            has_progress: lag.is_some(),
            matched_index: 20 - lag.unwrap_or(20),
            lag: lag.unwrap_or(0),
        }
    }

    #[test]
    fn status_shows_each_nodes_role_and_the_leaders_view_of_its_lag() {
        let members = vec![
            member(1, MemberRole::Voter, Some(0)),
            member(2, MemberRole::Voter, Some(3)),
            member(4, MemberRole::Learner, Some(15)),
        ];
        let leader = StatusResponse {
            id: 1,
            role: Role::Leader.into(),
            term: 3,
            leader_id: 1,
            members: members.clone(),
            ..Default::default()
        };
        let follower = StatusResponse {
            id: 2,
            role: Role::Follower.into(),
            term: 3,
            leader_id: 1,
            // A follower knows no lag.
            members: members
                .iter()
                .map(|m| kvstore::pb::Member {
                    has_progress: false,
                    lag: 0,
                    ..m.clone()
                })
                .collect(),
            ..Default::default()
        };
        let learner = StatusResponse {
            id: 4,
            role: Role::Follower.into(),
            ..follower.clone()
        };
        let at = |address: &str, s: &StatusResponse| NodeStatus {
            address: address.into(),
            result: Ok(s.clone()),
        };
        let rows = |statuses: &[NodeStatus]| -> Vec<Vec<String>> {
            status_table(statuses)
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_string).collect())
                .collect()
        };
        let both = rows(&[at("a:1", &leader), at("a:2", &follower)]);
        let tail = |r: &Vec<String>| (r[0].clone(), r[7].clone(), r[8].clone());
        let got: Vec<_> = both.iter().map(tail).collect();
        let want = |v: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
            v.iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
                .collect()
        };
        assert_eq!(
            got,
            want(&[("1", "voter", "0"), ("2", "voter", "3")]),
            "the leader's view of each node asked"
        );
        let with_learner = rows(&[at("a:1", &leader), at("a:4", &learner)]);
        assert_eq!(
            with_learner.iter().map(tail).collect::<Vec<_>>(),
            want(&[("1", "voter", "0"), ("4", "learner", "15")])
        );
        // Without the leader's answer, roles are known but lags are not.
        let alone = rows(&[at("a:2", &follower)]);
        let got: Vec<_> = alone.iter().map(tail).collect();
        assert_eq!(got, want(&[("2", "voter", "?")]));
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
        assert_eq!(
            row,
            [
                "1",
                "127.0.0.1:9001",
                "leader",
                "3",
                "1",
                "12",
                "11",
                "?",
                "?"
            ]
        );
        assert!(lines[2].starts_with("-   127.0.0.1:9002  unreachable: connection refused"));
        assert_eq!(
            lines[0].find("ROLE"),
            lines[1].find("leader"),
            "columns align"
        );
    }
}
