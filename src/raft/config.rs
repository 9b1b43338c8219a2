//! Configuration of one Raft core, validated once at construction, and how a message's
//! byte cap counts entries.

use super::types::{Entry, NodeId, Payload};

/// Default of [`Config::max_bytes_per_message`]: 1 MiB, as etcd's `MaxSizePerMsg`.
pub const DEFAULT_MAX_BYTES_PER_MESSAGE: usize = 1 << 20;
/// The largest [`Config::max_bytes_per_message`] that [`Config::validate`] accepts. The
/// transport's message-size limit (`rpc::peer::PEER_MESSAGE_LIMIT`) is derived from it and
/// from the largest legal entry, so no valid configuration can build a message the
/// transport refuses.
pub const MAX_BYTES_PER_MESSAGE_CEILING: usize = 2 << 20;
/// An upper bound of what an entry adds to an AppendEntries beyond its payload on the wire
/// (term, index, type, the length prefixes); `rpc/convert.rs` checks it against protobuf.
pub const ENTRY_OVERHEAD_BYTES: usize = 40;
/// An upper bound of an AppendEntries' size on the wire without its entries (every header
/// field at its largest); `rpc/convert.rs` checks it against protobuf.
pub const APPEND_OVERHEAD_BYTES: usize = 128;

/// What `entry` counts toward [`Config::max_bytes_per_message`]: an upper bound of its
/// size on the wire.
pub fn entry_bytes(entry: &Entry) -> usize {
    let payload = match &entry.payload {
        Payload::Noop => 0,
        Payload::Command(data) => data.len(),
        Payload::ConfChange(conf) => conf.encoded_len(),
    };
    payload + ENTRY_OVERHEAD_BYTES
}

/// An upper bound of the size on the wire of an AppendEntries carrying `entries`.
pub fn append_bytes(entries: &[Entry]) -> usize {
    APPEND_OVERHEAD_BYTES + entries.iter().map(entry_bytes).sum::<usize>()
}

/// Keeps the longest prefix of `entries` whose [`entry_bytes`] add up to at most
/// `max_bytes`, and always the first entry (a larger entry still goes, alone): etcd's
/// `limitSize`.
pub(crate) fn limit_size(entries: &mut Vec<Entry>, max_bytes: usize) {
    let mut total = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            total = total.saturating_add(entry_bytes(e));
            total > max_bytes
        })
        .map_or(entries.len(), |over| over.max(1));
    entries.truncate(keep);
}

/// Configuration of a [`super::RaftCore`]. Times are in ticks: the driver calls `tick()` at
/// a fixed interval, and the core never reads a clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (not 0).
    pub id: NodeId,
    /// The other voting members (must not contain `id`, no duplicates, no 0) of the cluster
    /// as it was started: the membership until a snapshot or a configuration entry in the log
    /// says otherwise (`membership.rs`).
    pub peers: Vec<NodeId>,
    /// This node joins an existing cluster (it was added as a learner or voter by a
    /// configuration change): it starts knowing no members, `peers` is ignored, and it never
    /// campaigns until a leader's log or snapshot has told it the membership.
    pub joining: bool,
    /// Minimum election timeout in ticks. Each term, a follower or candidate draws its timeout
    /// uniformly from `[election_ticks, 2 * election_ticks)` with the seeded RNG (§5.2).
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks` ticks.
    pub heartbeat_ticks: u32,
    /// Seed of the core's RNG (randomised timeouts). Different nodes should use different seeds.
    pub seed: u64,
    /// Upper bound on entries in one AppendEntries message.
    pub max_entries_per_message: usize,
    /// Upper bound on the entries' bytes ([`entry_bytes`]) in one AppendEntries message;
    /// a message carries at least one entry, however large. At most
    /// [`MAX_BYTES_PER_MESSAGE_CEILING`].
    pub max_bytes_per_message: usize,
    /// Upper bound on AppendEntries in flight to one follower that is replicating (pipelining).
    pub max_inflight: usize,
    /// PreVote (Raft thesis §9.6): ask whether an election could be won before bumping the term.
    pub pre_vote: bool,
    /// CheckQuorum (thesis §6.2): a leader that has not heard from a majority within an
    /// election timeout steps down; followers that heard from a live leader within the
    /// election timeout ignore vote requests (leader stickiness).
    pub check_quorum: bool,
    /// Lease-based linearizable reads (see `core/lease.rs`): while a quorum acknowledged a
    /// heartbeat round sent less than the lease ago, the leader serves reads without a new
    /// round. Needs `check_quorum` (the followers' stickiness is what makes the lease safe),
    /// and every node of the cluster must run with the same setting.
    pub lease_reads: bool,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Node id 0 is reserved.
    #[error("node id must not be 0")]
    ZeroId,
    /// A peer id is 0, equal to our id, or repeated.
    #[error("invalid peer list: {0}")]
    BadPeers(String),
    /// Timeouts that would make elections fire between heartbeats.
    #[error("election timeout ({election} ticks) must be at least 3 times the heartbeat interval ({heartbeat} ticks)")]
    ElectionTooShort {
        /// election ticks
        election: u32,
        /// heartbeat ticks
        heartbeat: u32,
    },
    /// A zero limit.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// A byte cap above what the transport carries.
    #[error("max_bytes_per_message is {0}, the limit is {MAX_BYTES_PER_MESSAGE_CEILING}")]
    MessageBytesTooLarge(usize),
    /// Lease reads rely on CheckQuorum's leader stickiness.
    #[error("lease reads need check_quorum")]
    LeaseWithoutCheckQuorum,
}

impl Config {
    /// A configuration with the usual defaults (10-tick election timeout, 1-tick heartbeats).
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> Self {
        Config {
            id,
            peers,
            joining: false,
            election_ticks: 10,
            heartbeat_ticks: 1,
            seed: id,
            max_entries_per_message: 512,
            max_bytes_per_message: DEFAULT_MAX_BYTES_PER_MESSAGE,
            max_inflight: 64,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
        }
    }

    /// Checks the configuration; the error is one line for the operator.
    ///
    /// # Errors
    /// A [`ConfigError`] naming what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        let mut seen = std::collections::BTreeSet::new();
        for &p in &self.peers {
            if p == 0 {
                return Err(ConfigError::BadPeers("peer id 0 is reserved".into()));
            }
            if p == self.id {
                return Err(ConfigError::BadPeers(format!(
                    "node {p} lists itself as a peer"
                )));
            }
            if !seen.insert(p) {
                return Err(ConfigError::BadPeers(format!("peer id {p} appears twice")));
            }
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::ZeroLimit("heartbeat_ticks"));
        }
        if self.election_ticks < 3 * self.heartbeat_ticks {
            return Err(ConfigError::ElectionTooShort {
                election: self.election_ticks,
                heartbeat: self.heartbeat_ticks,
            });
        }
        if self.max_entries_per_message == 0 {
            return Err(ConfigError::ZeroLimit("max_entries_per_message"));
        }
        if self.max_bytes_per_message == 0 {
            return Err(ConfigError::ZeroLimit("max_bytes_per_message"));
        }
        if self.max_bytes_per_message > MAX_BYTES_PER_MESSAGE_CEILING {
            return Err(ConfigError::MessageBytesTooLarge(
                self.max_bytes_per_message,
            ));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::ZeroLimit("max_inflight"));
        }
        if self.lease_reads && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configs_with_one_line() {
        assert_eq!(Config::new(0, vec![]).validate(), Err(ConfigError::ZeroId));
        assert!(matches!(
            Config::new(1, vec![1]).validate(),
            Err(ConfigError::BadPeers(_))
        ));
        assert!(matches!(
            Config::new(1, vec![2, 2]).validate(),
            Err(ConfigError::BadPeers(_))
        ));
        let mut c = Config::new(1, vec![2, 3]);
        c.election_ticks = 2;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ElectionTooShort { .. })
        ));
        assert_eq!(Config::new(1, vec![2, 3]).validate(), Ok(()));
        let mut c = Config::new(1, vec![2, 3]);
        c.max_bytes_per_message = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroLimit("max_bytes_per_message"))
        );
        c.max_bytes_per_message = MAX_BYTES_PER_MESSAGE_CEILING + 1;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "max_bytes_per_message is 2097153, the limit is 2097152"
        );
        c.max_bytes_per_message = MAX_BYTES_PER_MESSAGE_CEILING;
        assert_eq!(c.validate(), Ok(()));
    }

    fn entries(sizes: &[usize]) -> Vec<Entry> {
        (1..)
            .zip(sizes)
            .map(|(index, &n)| Entry {
                term: 1,
                index,
                payload: Payload::Command(vec![0u8; n].into()),
            })
            .collect()
    }

    fn limited(sizes: &[usize], max_bytes: usize) -> usize {
        let mut e = entries(sizes);
        limit_size(&mut e, max_bytes);
        e.len()
    }

    #[test]
    fn the_byte_cap_keeps_a_prefix_and_at_least_one_entry() {
        let o = ENTRY_OVERHEAD_BYTES;
        assert_eq!(limited(&[], 100), 0);
        assert_eq!(
            limited(&[10, 10, 10], 3 * (10 + o)),
            3,
            "exactly at the cap"
        );
        assert_eq!(limited(&[10, 10, 10], 3 * (10 + o) - 1), 2);
        assert_eq!(
            limited(&[1000, 10], 100),
            1,
            "an entry over the cap goes alone"
        );
        assert_eq!(limited(&[10, 1000, 10], 100), 1, "and never after others");
        let mb = 1 << 20;
        assert_eq!(
            limited(&[mb; 9], DEFAULT_MAX_BYTES_PER_MESSAGE),
            1,
            "nine 1 MiB values go one per message"
        );
        let e = entries(&[5, 7]);
        assert_eq!(append_bytes(&e), APPEND_OVERHEAD_BYTES + 12 + 2 * o);
        let noop = Entry {
            term: 1,
            index: 1,
            payload: Payload::Noop,
        };
        assert_eq!(entry_bytes(&noop), o);
    }
}
