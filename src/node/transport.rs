//! How the driver sends messages to other nodes, without knowing gRPC. `rpc/peer.rs`
//! implements it with tonic; tests implement it in memory.

use crate::raft::{Message, NodeId};
use std::collections::BTreeMap;

/// Delivers core messages to peers.
pub trait Transport: Send + Sync {
    /// Queues `msg` for `msg.to` and returns at once. Never blocks: when the peer's queue is
    /// full the message is dropped (Raft tolerates loss; the core resends on its next
    /// heartbeat or election timeout).
    fn send(&self, msg: Message);

    /// The peers to send to from now on, with their addresses (this node's own id may be
    /// among them and is ignored): a sender starts for a new one and stops for one that is
    /// gone or moved. Called by the driver when the membership changes. Transports with a
    /// fixed peer set (the simulator's, tests') ignore it.
    fn set_peers(&self, _peers: &BTreeMap<NodeId, String>) {}
}
