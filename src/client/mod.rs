//! Rust client library for kvstore: leader discovery, redirects, bounded retries,
//! exactly-once write sessions, revisioned ranges, transactions and compare-and-swap
//! ([`Client::txn`], [`Client::cas`]), locks with fencing tokens and leader election
//! ([`Election`]).
//!
//! May import: `crate::pb` (wire types) and tonic. Nothing else from the crate: the client
//! speaks only the public gRPC contract (proto/kvstore.proto), exactly like a foreign client.
//!
//! How an operation runs ([`Client`]):
//! - It tries the last node that answered as leader first, then the endpoints in turn.
//! - A non-leader answers UNAVAILABLE with `leader-addr` metadata; the client goes there next
//!   (an address not in the endpoint list is learned, apart from it: at most 8 learned
//!   addresses, each dropped when an attempt to it fails).
//! - UNAVAILABLE, connection errors and attempts that get no answer within
//!   [`ClientOptions::attempt_timeout`] are retried on the next candidate with exponential
//!   backoff, until the operation's overall [`ClientOptions::timeout`]. Each channel sends
//!   HTTP/2 keep-alive pings every half attempt timeout, so a node that freezes under a
//!   long-held request (a waiting lock acquire) fails it within about one attempt timeout.
//! - INVALID_ARGUMENT, FAILED_PRECONDITION and other caller errors are returned at once.
//!
//! Invariants:
//! - Every write carries a session `(client_id, sequence)`; a retried write reuses its
//!   sequence, so the cluster applies it at most once and answers with the original result.
//!   If the cluster has dropped the session (idle too long, or evicted by newer clients) it
//!   refuses the write instead; that is [`ClientError::UnknownOutcome`], and the client's
//!   next write opens a new session.
//! - Sequences strictly increase per client, which is why writes take `&mut self`: two
//!   concurrent writes of one session could be applied out of order and one of them rejected
//!   as stale. Use one `Client` per concurrent writer.

mod admin;
mod clock;
mod duration;
mod election;
mod endpoints;
mod error;
mod key_lease;
mod kv_client;
mod lock;
mod options;
mod range;
mod retry;
mod txn;
mod watch;

pub use duration::parse_duration;
pub use election::{Election, Leadership};
pub use error::ClientError;
pub use key_lease::{GrantedLease, LeaseKeeper, LeaseTimeToLive};
pub use kv_client::{Client, DeleteResult, GetResult, Header, NodeStatus};
pub use lock::{Fence, Lease, Validation};
pub use options::ClientOptions;
pub use range::{KeyValue, RangeOptions, RangeResult, SortOrder, SortTarget};
pub use txn::{CasResult, Compare, CompareOn, OpResult, Txn, TxnOp, TxnResult};
pub use watch::{EventKind, WatchEvent, WatchOptions, Watcher};

/// Read consistency for [`Client::get`] (the wire enum).
pub use crate::pb::Consistency;
