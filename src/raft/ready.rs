//! [`Ready`]: the batch of work the core hands to the driver. Each field is an obligation,
//! and the driver must handle them in this order (ARCHITECTURE.md, "The driver loop"):
//!
//! 1. send `messages` (they depend on nothing unpersisted; a leader's AppendEntries may
//!    overlap its own fsync, Raft thesis §10.2.1);
//! 2. install `snapshot` (if any): store it durably (`LogStore::install_snapshot`) and
//!    replace the state machine with it; then persist `hard_state` (if any) and `entries`
//!    (truncating the stored log from `entries[0].index` first), then flush to disk once for
//!    the whole batch;
//! 3. send `persisted_messages` (vote grants, append acks: they promise what was just persisted);
//! 4. apply `committed_entries` in order and answer the clients waiting on them; serve
//!    `read_states` once the applied index reaches their index;
//! 5. call `RaftCore::advance(ready)`.

use super::message::Message;
use super::types::{Entry, HardState, LogIndex, Snapshot, SoftState};

/// A ReadIndex request that became safe to serve (Raft thesis §6.4): once the state machine
/// has applied `index`, a read served from it is linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's id for the read (given to `RaftCore::read_index`).
    pub id: u64,
    /// The commit index at the time the read was requested.
    pub index: LogIndex,
}

/// Work for the driver; see the module docs for the order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Set when role or leader changed since the last Ready.
    pub soft_state: Option<SoftState>,
    /// A leader's snapshot this follower accepted: install it before everything else in
    /// step 2 (the entries and committed entries of this batch come after it).
    pub snapshot: Option<Snapshot>,
    /// Set when term, vote or commit changed: persist before step 3.
    pub hard_state: Option<HardState>,
    /// Entries to persist. If `entries[0].index` is at or below the last stored index, the
    /// stored log from that index on is replaced (a follower resolving a conflict).
    pub entries: Vec<Entry>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Messages to send only after `hard_state` and `entries` are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in log order (never beyond what is durable locally).
    pub committed_entries: Vec<Entry>,
    /// Reads confirmed by a quorum.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// True if the driver must persist something (and so flush) for this batch.
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || self.hard_state.is_some() || !self.entries.is_empty()
    }
}
