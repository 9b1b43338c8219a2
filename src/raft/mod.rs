//! The pure Raft consensus core (extended Raft paper, Ongaro & Ousterhout, Figure 2).
//!
//! # Contract
//! [`RaftCore`] is a deterministic state machine. Its inputs are [`RaftCore::step`] (a message
//! from a peer, request or reply; [`RaftCore::step_refused`] for a request whose payload the
//! driver could not accept), [`RaftCore::tick`] (logical time), [`RaftCore::propose`]
//! (a client command), [`RaftCore::propose_conf_change`] (a membership change, see
//! `membership.rs`) and [`RaftCore::read_index`] (a linearizable read). Its output is a
//! [`Ready`] batch, taken with [`RaftCore::ready`] and acknowledged with [`RaftCore::advance`]
//! once the driver has handled it (see `ready.rs` for the obligations and their order).
//!
//! # What this module may import
//! std, serde, tracing, rand (seeded only) and thiserror. No tokio, tonic, sled, clock or global
//! RNG: everything it does is reproducible from its inputs, which is what lets the simulator
//! replay a failing seed.
//!
//! # Invariants
//! - `step` (and `step_refused`) pass every message through `check_term` first; no other
//!   code compares a message's term with ours.
//! - `applied <= commit <= last_index`, and entries are handed out to apply only once durable.
//! - A vote grant or an append ack is only ever put in `Ready::persisted_messages`.
//! - Every quorum (commit, votes, PreVote, CheckQuorum, ReadIndex, leases) is a majority of
//!   the voters of the membership the node follows: the last configuration entry in its log,
//!   else its snapshot's, else the configured one. Learners never count and never campaign.
#![warn(missing_docs)]

mod config;
mod core;
mod log;
mod membership;
mod message;
mod progress;
mod ready;
pub mod storage;
mod types;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod paper_tests;
#[cfg(test)]
mod prevote_tests;
#[cfg(test)]
mod testkit;

pub use self::config::{
    append_bytes, entry_bytes, Config, ConfigError, APPEND_OVERHEAD_BYTES,
    DEFAULT_MAX_BYTES_PER_MESSAGE, ENTRY_OVERHEAD_BYTES, MAX_BYTES_PER_MESSAGE_CEILING,
};
pub use self::core::{Mutation, NotLeader, ProposeError, Proposed, RaftCore, TransferError};
pub use self::membership::{
    ConfChange, ConfChangeError, ConfChangeKind, ConfEntry, DecodeError, Membership,
};
pub use self::message::{Message, MessageBody};
pub use self::ready::{ReadState, Ready};
pub use self::types::{
    Entry, HardState, LogIndex, NodeId, Payload, Role, Snapshot, SnapshotMeta, SoftState, Status,
    Term,
};
