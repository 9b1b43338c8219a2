//! The commands carried in log entries and their outcomes. Encoded with postcard.

use super::mvcc::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use serde::{Deserialize, Serialize};

/// An exactly-once session tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Client's id (random u64 chosen by the client).
    pub client_id: u64,
    /// Strictly increasing per client; 1-based.
    pub sequence: u64,
}

/// A fencing token a write must carry: the write applies only if `token` is the current
/// valid token of lock `lock`, checked at apply time, atomically with the write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The token the writer holds.
    pub token: u64,
}

/// A state-machine command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value` (only if `fence` is current, when given).
    Put {
        /// key
        key: String,
        /// value
        value: String,
        /// optional fencing token
        fence: Option<Fence>,
    },
    /// Remove `key` (only if `fence` is current, when given).
    Delete {
        /// key
        key: String,
        /// optional fencing token
        fence: Option<Fence>,
    },
    /// Grant lock `name` to `holder` with a lease of `ttl_ms` if it is free; renew it if
    /// `holder` already holds it. The token of a grant is the index of the granting entry.
    Acquire {
        /// lock name
        name: String,
        /// who asks (an opaque client-chosen name)
        holder: String,
        /// lease length in milliseconds, measured by the leader only
        ttl_ms: u64,
    },
    /// Renew the lease of `name` held with `token`.
    KeepAlive {
        /// lock name
        name: String,
        /// the holder's token
        token: u64,
    },
    /// Give up lock `name` held with `token`.
    Release {
        /// lock name
        name: String,
        /// the holder's token
        token: u64,
    },
    /// Proposed by the leader when the lease of `name` granted with `token` ran out on its
    /// clock. A no-op if the lock has since been released, re-granted or renewed under
    /// another token.
    Expire {
        /// lock name
        name: String,
        /// the token whose lease ran out
        token: u64,
    },
    /// A write to the revisioned key space (etcd's Put, DeleteRange or Txn), applied only if
    /// `fence` is current, when given (for a Txn: the whole Txn). Added after the lock
    /// commands so their encodings stay what they were.
    Kv {
        /// the write
        op: KvWrite,
        /// optional fencing token
        fence: Option<Fence>,
    },
    /// Drop the key space's history below `revision` (etcd's Compact): from clients, or
    /// proposed by the leader's automatic compaction.
    Compact {
        /// the new compaction revision
        revision: i64,
    },
    /// Create a lease on keys (etcd's LeaseGrant): id 0 lets the state machine pick one (the
    /// entry's index, stepping past ids in use). `ttl` is in seconds, already raised to the
    /// cluster's minimum by whoever proposed it.
    LeaseGrant {
        /// the lease id, or 0
        id: i64,
        /// the TTL in seconds
        ttl: i64,
    },
    /// End a lease and delete every key attached to it at one revision (etcd's
    /// LeaseRevoke): from clients, or proposed by the leader when the lease ran out on its
    /// clock.
    LeaseRevoke {
        /// the lease id
        id: i64,
    },
}

/// The writes of [`Command::Kv`], with etcd's request shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvWrite {
    /// Put one key.
    Put(PutRequest),
    /// Delete one key or a range.
    DeleteRange(DeleteRangeRequest),
    /// Compares, then the success or the failure ops, atomically at one revision.
    Txn(TxnRequest),
}

/// The result of a [`KvWrite`], with etcd's response shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// A put applied.
    Put(PutResponse),
    /// A delete applied.
    DeleteRange(DeleteRangeResponse),
    /// A Txn applied (one branch or the other).
    Txn(TxnResponse),
}

/// What goes in a log entry: a command and its optional session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Exactly-once session, if the client sent one.
    pub session: Option<Session>,
    /// The command.
    pub command: Command,
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put applied.
    Put,
    /// A delete applied; `existed` says whether the key was there.
    Delete {
        /// whether the key existed
        existed: bool,
    },
    /// The lock is held by the caller with `token` (new grant or same-holder renewal).
    Acquired {
        /// the fencing token
        token: u64,
        /// the lease length
        ttl_ms: u64,
    },
    /// A lease was renewed.
    KeptAlive {
        /// the lease length
        ttl_ms: u64,
    },
    /// The lock was released.
    Released,
    /// An expiry was processed; false if it no longer matched the current holder.
    Expired {
        /// whether a lease actually ended
        expired: bool,
    },
    /// A key-space write applied; the header's revision is the store's revision after it.
    Kv(KvResult),
    /// A compaction applied.
    Compacted,
    /// A lease on keys was granted.
    LeaseGranted {
        /// its id
        id: i64,
        /// its TTL in seconds
        ttl: i64,
    },
    /// A lease on keys was revoked and its keys deleted.
    LeaseRevoked {
        /// how many keys were deleted
        deleted: u64,
    },
}

/// postcard bytes of `value` in one allocation of exactly their length (which `Bytes::from`
/// then takes over without another), instead of a Vec grown several times. Serializing plain
/// strings, integers and maps into a growable Vec cannot fail; the empty fallback is
/// unreachable.
pub(super) fn encode_exact<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(value).unwrap_or_default();
    postcard::to_extend(value, Vec::with_capacity(size)).unwrap_or_default()
}

impl Proposal {
    /// Encodes for a log entry.
    pub fn encode(&self) -> Vec<u8> {
        // An empty result (unreachable, see `encode_exact`) would decode as `Undecodable` on
        // every replica alike.
        encode_exact(self)
    }

    /// Decodes from a log entry. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// The bytes are not a valid proposal, or carry trailing bytes after one.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let (proposal, rest) = postcard::take_from_bytes::<Proposal>(data)
            .map_err(|e| format!("not a proposal: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "not a proposal: {} trailing bytes after it",
                rest.len()
            ));
        }
        Ok(proposal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_proposal() -> impl Strategy<Value = Proposal> {
        let session = proptest::option::of((any::<u64>(), any::<u64>()).prop_map(
            |(client_id, sequence)| Session {
                client_id,
                sequence,
            },
        ));
        let command = prop_oneof![
            (".*", ".*").prop_map(|(key, value)| Command::Put {
                key,
                value,
                fence: None
            }),
            ".*".prop_map(|key| Command::Delete { key, fence: None }),
        ];
        (session, command).prop_map(|(session, command)| Proposal { session, command })
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = Proposal {
            session: None,
            command: Command::Delete {
                key: "k".into(),
                fence: None,
            },
        }
        .encode();
        bytes.push(0);
        let err = Proposal::decode(&bytes).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn empty_bytes_are_rejected() {
        assert!(Proposal::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Proposal::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trips(p in arb_proposal()) {
            let bytes = p.encode();
            prop_assert_eq!(bytes.len(), bytes.capacity(), "encoded into one exact allocation");
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&p).unwrap());
            prop_assert_eq!(Proposal::decode(&bytes), Ok(p));
        }
    }
}
