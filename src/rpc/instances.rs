//! The peer protocol's defence against a member that lost its data dir and came back under
//! its old id (issue 15): it forgot its term and vote, so it could vote twice in one term.
//!
//! Every data dir has a random instance id (`storage::sled_store::instances`). Every peer call
//! carries the caller's ([`INSTANCE_KEY`]) and the one the caller recorded for the callee, if
//! any ([`PEER_INSTANCE_KEY`]). Before a call reaches the driver, the callee [`admits`] it:
//! - the caller expects another instance of the callee: the callee is the replaced node. It
//!   answers nothing (so it never grants a vote) and stops with one line saying how to
//!   replace the member;
//! - the caller runs on another instance than the one recorded for its id: the caller is the
//!   replaced node; the call is refused with [`data_dir_replaced`] and the caller stops;
//! - a caller heard from for the first time: its instance is recorded durably, then admitted.
//!
//! Calls without the metadata (a kvstore from before) are admitted. The defence relies on the
//! peers' own records: a peer that never heard from the member before it lost its data cannot
//! tell (the README's replacement runbook avoids the case: a replacement gets a new id).
//!
//! [`admits`]: Instances::admit

use crate::raft::NodeId;
use crate::storage::{SledStore, StorageError};
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Metadata key of the caller's instance id (16 hex digits).
pub const INSTANCE_KEY: &str = "kvstore-instance";
/// Metadata key of the instance id the caller recorded for the callee.
pub const PEER_INSTANCE_KEY: &str = "kvstore-peer-instance";
/// The `kvstore-error` value of a call refused because the caller's data dir was replaced.
const DATA_DIR_REPLACED: &str = "data-dir-replaced";

/// This node's instance id and the ones recorded for its peers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Instances {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("Instances")
            .field("own", &format_args!("{:016x}", s.own))
            .field("known", &s.known.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    state: RwLock<State>,
    /// Serializes the first contacts, so one id is recorded once.
    record: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// 0 until [`Instances::attach`]: nothing is tagged or checked before.
    own: u64,
    known: BTreeMap<NodeId, u64>,
    store: Option<SledStore>,
}

/// Why a peer call is not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The caller recorded another instance of this node: this node's data dir was replaced.
    ThisNodeReplaced {
        /// The caller.
        peer: NodeId,
    },
    /// The caller runs on another instance than the one recorded for its id.
    CallerReplaced {
        /// The caller.
        peer: NodeId,
    },
    /// The caller's instance could not be recorded.
    Storage(String),
}

impl Instances {
    /// Loads this data dir's instance id (creating it at the first start) and the peers'.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn attach(&self, store: &SledStore) -> Result<(), StorageError> {
        let own = store.instance()?;
        let known = store.peer_instances()?;
        let mut s = self.write();
        s.own = own;
        s.known = known;
        s.store = Some(store.clone());
        Ok(())
    }

    /// Tags a call to `to` with this node's instance and the one recorded for `to`.
    pub fn tag<T>(&self, to: NodeId, mut request: tonic::Request<T>) -> tonic::Request<T> {
        let s = self.read();
        if s.own == 0 {
            return request;
        }
        let md = request.metadata_mut();
        md.insert(INSTANCE_KEY, hex_value(s.own));
        if let Some(&peer) = s.known.get(&to) {
            md.insert(PEER_INSTANCE_KEY, hex_value(peer));
        }
        request
    }

    /// Whether a call from `from` with `metadata` may reach the driver (see the module docs).
    ///
    /// # Errors
    /// The [`Refusal`].
    pub async fn admit(&self, from: NodeId, metadata: &MetadataMap) -> Result<(), Refusal> {
        let (own, recorded) = {
            let s = self.read();
            (s.own, s.known.get(&from).copied())
        };
        if own == 0 {
            return Ok(());
        }
        if read_hex(metadata, PEER_INSTANCE_KEY).is_some_and(|expected| expected != own) {
            return Err(Refusal::ThisNodeReplaced { peer: from });
        }
        let Some(theirs) = read_hex(metadata, INSTANCE_KEY) else {
            return Ok(());
        };
        self.known_as(from, recorded, theirs).await
    }

    /// Tags an answer with this node's instance, so the caller can record and check it.
    pub fn tag_reply<T>(&self, mut reply: tonic::Response<T>) -> tonic::Response<T> {
        let own = self.read().own;
        if own != 0 {
            reply.metadata_mut().insert(INSTANCE_KEY, hex_value(own));
        }
        reply
    }

    /// Whether an answer of `from` with `metadata` may be used: it comes from the data dir
    /// recorded for `from`, or from the first one heard (recorded now). A follower never
    /// calls its leader, so this is how a leader learns its followers' data dirs: it then
    /// tags its calls with them, and a follower that lost its data dir finds out.
    ///
    /// # Errors
    /// [`Refusal::CallerReplaced`] (`from` answered from another data dir), or
    /// [`Refusal::Storage`].
    pub async fn check_reply(&self, from: NodeId, metadata: &MetadataMap) -> Result<(), Refusal> {
        let (own, recorded) = {
            let s = self.read();
            (s.own, s.known.get(&from).copied())
        };
        let Some(theirs) = read_hex(metadata, INSTANCE_KEY).filter(|_| own != 0) else {
            return Ok(());
        };
        self.known_as(from, recorded, theirs).await
    }

    async fn known_as(
        &self,
        from: NodeId,
        recorded: Option<u64>,
        theirs: u64,
    ) -> Result<(), Refusal> {
        match recorded {
            Some(r) if r == theirs => Ok(()),
            Some(_) => Err(Refusal::CallerReplaced { peer: from }),
            None => self.record(from, theirs).await,
        }
    }

    async fn record(&self, from: NodeId, theirs: u64) -> Result<(), Refusal> {
        let _first = self.inner.record.lock().await;
        let (recorded, store) = {
            let s = self.read();
            (s.known.get(&from).copied(), s.store.clone())
        };
        if let Some(r) = recorded {
            return if r == theirs {
                Ok(())
            } else {
                Err(Refusal::CallerReplaced { peer: from })
            };
        }
        if let Some(store) = store {
            tokio::task::spawn_blocking(move || store.record_peer_instance(from, theirs))
                .await
                .map_err(|e| Refusal::Storage(e.to_string()))?
                .map_err(|e| Refusal::Storage(e.to_string()))?;
        }
        tracing::debug!(peer = from, instance = %format!("{theirs:016x}"), "recorded a peer's data dir");
        self.write().known.insert(from, theirs);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn hex_value(v: u64) -> MetadataValue<tonic::metadata::Ascii> {
    // 16 hex digits are always a valid ASCII metadata value.
    MetadataValue::try_from(format!("{v:016x}")).unwrap_or_else(|_| MetadataValue::from_static("0"))
}

fn read_hex(metadata: &MetadataMap, key: &str) -> Option<u64> {
    let v = metadata.get(key)?.to_str().ok()?;
    u64::from_str_radix(v, 16).ok().filter(|&v| v != 0)
}

/// The answer to a call whose caller runs on another data dir than the one its id was first
/// heard on: FAILED_PRECONDITION, tagged so the caller stops (see the module docs).
pub fn data_dir_replaced(peer: NodeId) -> Status {
    let mut status = Status::failed_precondition(format!(
        "member {peer} runs on another data dir than the one this cluster knew it by"
    ));
    status.metadata_mut().insert(
        super::status::ERROR_KIND_KEY,
        MetadataValue::from_static(DATA_DIR_REPLACED),
    );
    status
}

/// Whether `status` is [`data_dir_replaced`]'s answer.
pub fn is_data_dir_replaced(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .metadata()
            .get(super::status::ERROR_KIND_KEY)
            .is_some_and(|v| v == DATA_DIR_REPLACED)
}

/// What the callee answers when it finds it is the replaced node itself: it stops.
pub fn stopping_replaced(me: NodeId) -> Status {
    Status::unavailable(format!(
        "member {me} is stopping: its data dir is not the one the cluster knew it by"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(theirs: Option<u64>, expects: Option<u64>) -> MetadataMap {
        let mut md = MetadataMap::new();
        if let Some(v) = theirs {
            md.insert(INSTANCE_KEY, hex_value(v));
        }
        if let Some(v) = expects {
            md.insert(PEER_INSTANCE_KEY, hex_value(v));
        }
        md
    }

    #[tokio::test]
    async fn a_known_id_on_another_data_dir_is_refused_and_the_record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let me = Instances::default();
        me.attach(&store).unwrap();
        assert_eq!(
            me.admit(2, &call(Some(7), None)).await,
            Ok(()),
            "first contact"
        );
        assert_eq!(
            me.admit(2, &call(Some(7), None)).await,
            Ok(()),
            "same data dir"
        );
        assert_eq!(
            me.admit(2, &call(Some(8), None)).await,
            Err(Refusal::CallerReplaced { peer: 2 }),
            "node 2 came back on another data dir"
        );
        assert_eq!(
            me.admit(3, &call(Some(8), None)).await,
            Ok(()),
            "another id"
        );
        assert_eq!(
            me.admit(2, &call(None, None)).await,
            Ok(()),
            "an older kvstore"
        );
        drop(me);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        let me = Instances::default();
        me.attach(&store).unwrap();
        assert_eq!(
            me.admit(2, &call(Some(8), None)).await,
            Err(Refusal::CallerReplaced { peer: 2 }),
            "recorded durably"
        );
    }

    #[tokio::test]
    async fn a_node_whose_data_dir_a_caller_does_not_recognise_answers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let me = Instances::default();
        me.attach(&store).unwrap();
        let own = store.instance().unwrap();
        assert_eq!(me.admit(2, &call(Some(7), Some(own))).await, Ok(()));
        assert_eq!(
            me.admit(2, &call(Some(7), Some(own ^ 1))).await,
            Err(Refusal::ThisNodeReplaced { peer: 2 })
        );
    }

    #[test]
    fn calls_carry_both_instances_once_known() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.record_peer_instance(2, 0xab).unwrap();
        let me = Instances::default();
        let untagged = me.tag(2, tonic::Request::new(()));
        assert!(untagged.metadata().is_empty(), "nothing before attach");
        me.attach(&store).unwrap();
        let r = me.tag(2, tonic::Request::new(()));
        assert_eq!(
            read_hex(r.metadata(), INSTANCE_KEY),
            Some(store.instance().unwrap())
        );
        assert_eq!(read_hex(r.metadata(), PEER_INSTANCE_KEY), Some(0xab));
        let r = me.tag(3, tonic::Request::new(()));
        assert_eq!(read_hex(r.metadata(), PEER_INSTANCE_KEY), None);
    }

    #[tokio::test]
    async fn answers_are_recorded_and_checked_like_calls() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let me = Instances::default();
        me.attach(&store).unwrap();
        let answer = me.tag_reply(tonic::Response::new(()));
        assert_eq!(
            read_hex(answer.metadata(), INSTANCE_KEY),
            Some(store.instance().unwrap())
        );
        assert_eq!(me.check_reply(2, &call(Some(7), None)).await, Ok(()));
        let r = me.tag(2, tonic::Request::new(()));
        assert_eq!(
            read_hex(r.metadata(), PEER_INSTANCE_KEY),
            Some(7),
            "a follower's data dir, learnt from its answer, goes with every call to it"
        );
        assert_eq!(
            me.check_reply(2, &call(Some(8), None)).await,
            Err(Refusal::CallerReplaced { peer: 2 })
        );
        assert_eq!(me.check_reply(2, &call(None, None)).await, Ok(()));
    }

    #[test]
    fn the_refusal_is_recognised() {
        assert!(is_data_dir_replaced(&data_dir_replaced(3)));
        assert!(!is_data_dir_replaced(&Status::failed_precondition("x")));
        assert!(!is_data_dir_replaced(
            &super::super::status::member_removed()
        ));
    }
}
