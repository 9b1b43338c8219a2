//! What the gRPC layer asks of the driver. Each request carries its own oneshot reply.

use super::error::ClientError;
use crate::raft::{LogIndex, Message, NodeId, Term};
use crate::state_machine::Outcome;
use tokio::sync::oneshot;

/// Where and when an answer took effect; sent with every client answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The node that answered.
    pub node_id: NodeId,
    /// Its current term (for a write: the term of the applied entry).
    pub term: Term,
    /// The log index the operation took effect at (reads: the applied index served from).
    pub index: LogIndex,
}

/// Result of a write.
pub type WriteResult = Result<(Outcome, Header), ClientError>;
/// Result of a read: the value, if the key exists.
pub type ReadResult = Result<(Option<String>, Header), ClientError>;

/// A request into the driver loop.
#[derive(Debug)]
pub enum Request {
    /// Replicate an encoded `Proposal`; answered once it is applied.
    Propose {
        /// `state_machine::Proposal::encode()` output.
        data: Vec<u8>,
        /// Where the answer goes.
        reply: oneshot::Sender<WriteResult>,
    },
    /// Read a key.
    Read {
        /// The key.
        key: String,
        /// ReadIndex (leader, confirmed by a quorum) or local state (any node, may be stale).
        linearizable: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<ReadResult>,
    },
    /// A peer's RequestVote or AppendEntries; the core's response goes to `reply`.
    Peer {
        /// The request, already validated and converted.
        msg: Message,
        /// Where the response goes.
        reply: oneshot::Sender<Message>,
    },
    /// A response a peer sender got back for one of our requests.
    PeerReply {
        /// The response (its `from` is the peer).
        msg: Message,
    },
}
