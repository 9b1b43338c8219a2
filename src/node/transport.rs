//! How the driver sends messages to other nodes, without knowing gRPC. `rpc/peer.rs`
//! implements it with tonic; tests implement it in memory.

use crate::raft::Message;

/// Delivers core messages to peers.
pub trait Transport: Send + Sync {
    /// Queues `msg` for `msg.to` and returns at once. Never blocks: when the peer's queue is
    /// full the message is dropped (Raft tolerates loss; the core resends on its next
    /// heartbeat or election timeout).
    fn send(&self, msg: Message);
}
