//! The load generator behind `kvstore-bench`: closed-loop clients issuing put, get or mixed
//! requests against a kvstore cluster (or, with the `etcd` cargo feature, an etcd cluster),
//! with latencies in an HDR histogram and one [`Report`] at the end.
//!
//! Two workloads speak etcd's v3 API to BOTH systems (so they need the `etcd` feature; kvstore
//! answers it on the port of its other services): `txn-cas` (compare-and-swap increments of
//! counters, [`Workload::TxnCas`]), `range` (a prefix read, [`Workload::Range`]), `watch`
//! (puts fanned out to many watchers on every member, [`Workload::Watch`]) and
//! `lease-keepalive` (renewals of many leases over a few streams, [`Workload::LeaseKeepAlive`]).
//!
//! May import: `crate::pb` and tonic (it speaks the public gRPC contract like any foreign
//! client), hdrhistogram, indicatif, serde, and etcd-client behind the `etcd` feature.
//! Nothing from `node/`, `raft/`, `storage/` or `state_machine/`. No clap: the binary parses
//! flags into a [`BenchConfig`].
//!
//! How a run goes ([`run`]):
//! - Find the leader (kvstore: `Cluster/Status`; etcd: the maintenance status and the
//!   member list) and open a pool of `connections` gRPC channels to it. Client `i` uses
//!   channel `i % connections`; a kvstore client that gets a NOT-leader redirect anyway
//!   follows it on a channel of its own.
//! - Workloads that read preload every key of the key space once, so reads find values.
//! - Every client issues its next request as soon as the previous one is answered (closed
//!   loop). Requests started during the warmup are not measured.
//!
//! Invariants:
//! - Only successful requests that *started* after the warmup enter the histogram and the
//!   operation count; failures are counted by kind and never hidden.
//! - Throughput is measured operations divided by the time from the end of the warmup to the
//!   moment the last client stopped (requests in flight at the deadline finish and count).

mod conn;
#[cfg(feature = "etcd")]
mod etcd;
mod kvstore;
#[cfg(feature = "etcd")]
mod lease;
mod report;
mod runner;
pub mod table;
#[cfg(feature = "etcd")]
mod watch;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use report::{human_us, Latency, Report};
pub use runner::run;

/// Which system the load goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A kvstore cluster (the `KV` gRPC service).
    Kvstore,
    /// An etcd v3 cluster (needs the `etcd` cargo feature).
    Etcd,
}

/// What every client issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Writes only.
    Put,
    /// Reads only.
    Get,
    /// Reads with probability `read_ratio`, writes otherwise.
    Mixed,
    /// etcd API: increments one of `key_space` counters (drawn uniformly) by compare-and-swap:
    /// a Txn `mod_revision(counter) == last seen` -> put value + 1, else get the counter; on
    /// a failed compare the client retries with what the else branch read. One operation is
    /// one successful increment (its latency includes its retries); failed compares are
    /// counted apart as conflicts. The last seen (mod revision, value) of every counter is
    /// shared by all clients and loaded with one Range before the run.
    #[serde(rename = "txn-cas")]
    TxnCas,
    /// etcd API: a Range of the whole prefix holding `key_space` keys (written before the
    /// run); an answer with another number of keys counts as an error.
    Range,
    /// etcd API: `key_space` watchers on one prefix, spread round-robin over every member
    /// (several watches share one stream, as real clients do), and `clients` writers putting
    /// keys under that prefix through the leader. One operation is one event delivered to
    /// one watcher; the latency runs from the put's acknowledgement to the event's arrival
    /// (0 when the event arrived first). Every watcher must receive every measured put's
    /// revision exactly once: each missing or repeated delivery counts as an error.
    Watch,
    /// etcd API: `key_space` leases granted before the run (and revoked after it), renewed by
    /// `clients` keep-alive streams to the leader, each renewing its share in turn: send one
    /// keep-alive, await its answer. One operation is one answered renewal with a TTL above
    /// 0; an answer with TTL 0 (the lease is gone) counts as an error.
    #[serde(rename = "lease-keepalive")]
    LeaseKeepAlive,
}

impl Workload {
    /// Whether it speaks etcd's v3 API to every target (kvstore through its etcd front end).
    pub fn uses_etcd_api(self) -> bool {
        matches!(
            self,
            Workload::TxnCas | Workload::Range | Workload::Watch | Workload::LeaseKeepAlive
        )
    }

    /// The key space it uses when none is asked for: 1,000 counters, a 100-key prefix,
    /// 1,000 watchers, 10,000 leases, 10,000 keys for put, get and mixed.
    pub fn default_key_space(self) -> u64 {
        match self {
            Workload::Put | Workload::Get | Workload::Mixed | Workload::LeaseKeepAlive => 10_000,
            Workload::TxnCas | Workload::Watch => 1_000,
            Workload::Range => 100,
        }
    }
}

/// A deliberate fault for the tests of the checks themselves (a hidden flag of the binary):
/// each must turn into errors in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFault {
    /// `watch`: the first watcher ignores the first event it receives once measuring started.
    DropEvent,
    /// `watch`: the first watcher counts the first event it receives once measuring started
    /// twice.
    DuplicateEvent,
    /// `lease-keepalive`: one lease is revoked after the grants, so its renewals answer TTL 0.
    RevokeLease,
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// By the leader after it confirmed its leadership (kvstore ReadIndex; etcd's default).
    Linearizable,
    /// From the local state of the node asked; may be stale.
    Serializable,
}

/// When the measured phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this long (requests in flight then still finish).
    Duration(Duration),
    /// After this many requests, over all clients.
    Total(u64),
}

/// One benchmark run, validated by [`BenchConfig::validate`].
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The system under test.
    pub target: Target,
    /// Its client addresses (`HOST:PORT`); the leader is found among them.
    pub endpoints: Vec<String>,
    /// What the clients issue.
    pub workload: Workload,
    /// How reads are served.
    pub consistency: ReadConsistency,
    /// Share of reads in the mixed workload, from 0 to 1.
    pub read_ratio: f64,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// gRPC channels (HTTP/2 connections) the clients share.
    pub connections: usize,
    /// When the measured phase ends.
    pub limit: Limit,
    /// Keys are drawn uniformly from this many.
    pub key_space: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Unmeasured time before the measured phase.
    pub warmup: Duration,
    /// Write every key once before a workload that reads.
    pub preload: bool,
    /// Bound on one request; a request that takes longer counts as an error.
    pub request_timeout: Duration,
    /// How long to wait for the cluster to name a leader before giving up.
    pub leader_timeout: Duration,
    /// Draw a progress bar on stderr (indicatif hides it when stderr is not a terminal).
    pub progress: bool,
    /// A deliberate fault, for tests of the exactness checks only.
    pub test_fault: Option<TestFault>,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag value is out of range.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// No node named a leader before the deadline.
    #[error("no leader found among {endpoints} within {waited_s:.1} s (last answer: {last}); is the cluster running?")]
    NoLeader {
        /// The endpoints asked.
        endpoints: String,
        /// How long we asked, in seconds.
        waited_s: f64,
        /// The last error or answer seen.
        last: String,
    },
    /// Opening a channel to the leader failed.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The address.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// `--target etcd` in a build without the `etcd` feature.
    #[error("this kvstore-bench was built without etcd support; rebuild with `cargo build --release --features etcd --bin kvstore-bench`")]
    EtcdNotBuilt,
    /// Writing the key space before a read workload failed.
    #[error("preloading the key space failed: {0}")]
    Preload(String),
    /// A kvstore node answered an etcd-API workload's first call with UNIMPLEMENTED.
    #[error("kvstore at {endpoint} does not serve etcd's {service} API yet ({message}); the {workload} workload drives kvstore through it")]
    EtcdApiUnimplemented {
        /// The node asked.
        endpoint: String,
        /// The etcd service it lacks: KV, Watch or Lease.
        service: &'static str,
        /// Its answer.
        message: String,
        /// The workload that needs the API.
        workload: Workload,
    },
}

impl BenchConfig {
    /// Checks the ranges a run needs.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] naming the flag.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |msg: &str| Err(BenchError::Invalid(msg.to_string()));
        if self.endpoints.is_empty() {
            return invalid("--endpoints needs at least one HOST:PORT");
        }
        if self.clients == 0 {
            return invalid("--clients must be at least 1");
        }
        if self.connections == 0 {
            return invalid("--connections must be at least 1");
        }
        if self.key_space == 0 {
            return invalid("--key-space must be at least 1");
        }
        if self.workload == Workload::LeaseKeepAlive && self.clients as u64 > self.key_space {
            return invalid(
                "--clients must not exceed --leases (every stream renews its own share)",
            );
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return invalid("--read-ratio must be between 0 and 1");
        }
        match self.limit {
            Limit::Duration(d) if d.is_zero() => invalid("--duration must be positive"),
            Limit::Total(0) => invalid("--total must be at least 1"),
            _ => Ok(()),
        }
    }

    /// Whether this workload issues reads (and so wants the key space preloaded).
    pub fn reads(&self) -> bool {
        match self.workload {
            Workload::Put => false,
            Workload::Get => true,
            Workload::Mixed => self.read_ratio > 0.0,
            Workload::TxnCas | Workload::Watch | Workload::LeaseKeepAlive => false,
            Workload::Range => true,
        }
    }
}

/// Parses the lowercase names used on the command line and in the JSON report.
macro_rules! name_enum {
    ($ty:ty, $what:literal, $($name:literal => $variant:expr),+) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " {:?}; use one of: {}"),
                        s,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let name = match self {
                    $(v if *v == $variant => $name,)+
                    _ => "?",
                };
                f.write_str(name)
            }
        }
    };
}

name_enum!(Target, "target", "kvstore" => Target::Kvstore, "etcd" => Target::Etcd);
name_enum!(
    Workload,
    "workload",
    "put" => Workload::Put,
    "get" => Workload::Get,
    "mixed" => Workload::Mixed,
    "txn-cas" => Workload::TxnCas,
    "range" => Workload::Range,
    "watch" => Workload::Watch,
    "lease-keepalive" => Workload::LeaseKeepAlive
);
name_enum!(
    TestFault,
    "test fault",
    "drop-event" => TestFault::DropEvent,
    "duplicate-event" => TestFault::DuplicateEvent,
    "revoke-lease" => TestFault::RevokeLease
);
name_enum!(
    ReadConsistency,
    "consistency",
    "linearizable" => ReadConsistency::Linearizable,
    "serializable" => ReadConsistency::Serializable
);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BenchConfig {
        BenchConfig {
            target: Target::Kvstore,
            endpoints: vec!["127.0.0.1:9001".into()],
            workload: Workload::Put,
            consistency: ReadConsistency::Linearizable,
            read_ratio: 0.5,
            clients: 4,
            connections: 2,
            limit: Limit::Duration(Duration::from_secs(1)),
            key_space: 100,
            value_size: 100,
            warmup: Duration::ZERO,
            preload: true,
            request_timeout: Duration::from_secs(1),
            leader_timeout: Duration::from_secs(1),
            progress: false,
            test_fault: None,
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for w in [
            Workload::Put,
            Workload::Get,
            Workload::Mixed,
            Workload::TxnCas,
            Workload::Range,
            Workload::Watch,
            Workload::LeaseKeepAlive,
        ] {
            assert_eq!(w.to_string().parse::<Workload>(), Ok(w));
            // The JSON report spells it as the command line does.
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{w}\""));
        }
        for c in [ReadConsistency::Linearizable, ReadConsistency::Serializable] {
            assert_eq!(c.to_string().parse::<ReadConsistency>(), Ok(c));
        }
        assert_eq!("etcd".parse::<Target>(), Ok(Target::Etcd));
        assert_eq!(
            "scan".parse::<Workload>().unwrap_err(),
            "unknown workload \"scan\"; use one of: put, get, mixed, txn-cas, range, watch, lease-keepalive"
        );
    }

    #[test]
    fn validate_names_the_bad_flag() {
        assert!(config().validate().is_ok());
        type Change = fn(&mut BenchConfig);
        let cases: [(Change, &str); 5] = [
            (|c| c.clients = 0, "--clients"),
            (|c| c.connections = 0, "--connections"),
            (|c| c.read_ratio = 1.5, "--read-ratio"),
            (|c| c.limit = Limit::Total(0), "--total"),
            (|c| c.endpoints.clear(), "--endpoints"),
        ];
        for (change, flag) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err} should name {flag}");
        }
    }

    #[test]
    fn only_workloads_that_read_want_a_preload() {
        let mut c = config();
        assert!(!c.reads());
        c.workload = Workload::Get;
        assert!(c.reads());
        c.workload = Workload::Range;
        assert!(c.reads());
        c.workload = Workload::TxnCas;
        assert!(!c.reads());
        c.workload = Workload::Watch;
        assert!(!c.reads());
        c.workload = Workload::LeaseKeepAlive;
        assert!(!c.reads());
        c.workload = Workload::Mixed;
        c.read_ratio = 0.0;
        assert!(!c.reads());
    }
}
