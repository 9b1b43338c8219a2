//! Basic Raft vocabulary: ids, terms, indexes, log entries, hard and soft state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::membership::Membership;

/// A node's id in the cluster (never 0: 0 means "none" on the wire).
pub type NodeId = u64;
/// A Raft term (§5.1). Term 0 is the state before any election.
pub type Term = u64;
/// A log index. Indexes start at 1; index 0 is the empty log's sentinel.
pub type LogIndex = u64;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The entry a new leader appends at the start of its term (Raft §8), so it can
    /// commit entries of earlier terms and serve ReadIndex reads.
    Noop,
    /// An opaque state-machine command. Reference-counted: the copies that go to storage,
    /// to every follower and to the state machine share one buffer. Encoded by serde (so by
    /// storage's postcard) exactly as a `Vec<u8>` was: a length, then the bytes.
    Command(bytes::Bytes),
    /// A membership change (`membership.rs`): in effect on every node from the moment it is
    /// in that node's log. Boxed: rare, and it keeps the common payloads small.
    ConfChange(Box<super::membership::ConfEntry>),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position in the log (1-based).
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: Payload,
}

/// State that must be on stable storage before the node answers anything that depends on it
/// (Raft Figure 2, "Persistent state on all servers", plus the commit index so a restarted
/// node can re-apply its committed prefix without waiting for a leader).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known to be committed (may lag; never ahead of the truth).
    pub commit: LogIndex,
}

/// The last log entry a snapshot covers (Raft §7, "last included index and term").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: LogIndex,
    /// Term of that entry.
    pub term: Term,
}

/// A state-machine snapshot: where it ends in the log, and the state machine's own bytes
/// (opaque to Raft and to storage). `data` is cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The last entry it covers.
    pub meta: SnapshotMeta,
    /// The serialized state machine as of `meta.index`.
    pub data: bytes::Bytes,
    /// The membership as of `meta.index` (the last configuration entry it covers). `None`
    /// for a snapshot written before memberships were recorded: the cluster then still had
    /// the membership it was started with (`Config::peers`).
    pub membership: Option<Membership>,
}

impl std::fmt::Debug for Snapshot {
    /// The data is shown by size only: it can be large and is unreadable anyway.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("meta", &self.meta)
            .field("bytes", &self.data.len())
            .field("membership", &self.membership)
            .finish()
    }
}

/// A node's role (Raft §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Asking for votes in its term.
    Candidate,
    /// Handles client requests and replicates the log.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Volatile state that the driver needs to know about when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Current role.
    pub role: Role,
    /// The leader of the current term, if known.
    pub leader: Option<NodeId>,
}

/// A consistent snapshot of the core's state, for `Cluster/Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// The leader of the current term, if known.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: LogIndex,
    /// Index of the last log entry (persisted or not).
    pub last_index: LogIndex,
    /// The membership this node follows: the last configuration entry in its log (committed
    /// or not, see `membership.rs`), else its snapshot's, else the configured one.
    pub membership: Membership,
    /// Leader only: each other member's match index (how much of the leader's log it is known
    /// to hold: `last_index - match` is how far behind it is). Empty on other roles.
    pub matched: BTreeMap<NodeId, LogIndex>,
    /// This node applied a configuration that removed it: it takes no further part in the
    /// cluster (the driver reports `this node was removed from the cluster`).
    pub removed: bool,
    /// The members whose removal this node knows is committed: their messages are refused
    /// (`membership.removed` also holds removals that may still be truncated).
    pub committed_removals: std::collections::BTreeSet<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log entry as it was stored before payloads became `Bytes`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum VecPayload {
        Noop,
        Command(Vec<u8>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct VecEntry {
        term: Term,
        index: LogIndex,
        payload: VecPayload,
    }

    #[test]
    fn entries_encode_as_they_did_with_vec_payloads() {
        for data in [vec![], vec![1, 2, 3], vec![0xab; 300]] {
            let old = VecEntry {
                term: 7,
                index: 1 << 40,
                payload: VecPayload::Command(data.clone()),
            };
            let new = Entry {
                term: 7,
                index: 1 << 40,
                payload: Payload::Command(data.into()),
            };
            let old_bytes = postcard::to_allocvec(&old).unwrap();
            assert_eq!(postcard::to_allocvec(&new).unwrap(), old_bytes);
            assert_eq!(postcard::from_bytes::<Entry>(&old_bytes).unwrap(), new);
        }
        let noop = postcard::to_allocvec(&VecEntry {
            term: 1,
            index: 2,
            payload: VecPayload::Noop,
        })
        .unwrap();
        assert_eq!(
            postcard::from_bytes::<Entry>(&noop).unwrap(),
            Entry {
                term: 1,
                index: 2,
                payload: Payload::Noop
            }
        );
    }
}
