//! kvstore: a Raft-replicated key-value store with built-in fencing tokens.
//!
//! # Layers (see ARCHITECTURE.md)
//! ```text
//! bin: kvstore (main.rs), kvctl (bin/kvctl.rs)
//!   node/     the driver: one task owns the Raft core, storage and state machine
//!   rpc/      tonic services and peer clients; proto <-> core conversions
//!   client/   Rust client: leader discovery, redirects, retries, sessions
//!   bench/    load generator behind kvstore-bench (kvstore, and etcd with feature `etcd`)
//!   storage/  sled: hard state and log; the fsync discipline
//!   raft/     PURE consensus core
//!   state_machine/  PURE KV state machine
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod client;
pub mod config;
pub mod faultnet;
pub mod lincheck;
pub mod node;
pub mod pb;
pub mod raft;
pub mod rpc;
pub mod sim;
pub mod state_machine;
pub mod storage;
