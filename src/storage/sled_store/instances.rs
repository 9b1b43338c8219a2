//! Which data dir each member runs on: the defence against a member that lost its data dir
//! and came back under its old id (issue 15). Such a node forgot its term and its vote, so it
//! could vote twice in one term and elect two leaders.
//!
//! Each data dir records, at its first start, a random **instance** id (key `b"instance"` of
//! the `meta` tree); a wiped data dir gets a new one. Each node records, the first time it
//! hears from a peer, the instance that peer runs on (keys `b"peer-instance/" + id`, big
//! endian), durably (flush + `fdatasync`) before it answers: the peer protocol then refuses a
//! known id on another instance (`rpc/instances.rs`). Records are never rewritten: member ids
//! are never reused, so a member's instance never legitimately changes.

use super::super::error::StorageError;
use super::SledStore;
use crate::raft::NodeId;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

/// Key of this data dir's instance id in the `meta` tree.
const INSTANCE_KEY: &[u8] = b"instance";
/// Prefix of the peers' instance ids in the `meta` tree.
const PEER_PREFIX: &[u8] = b"peer-instance/";

impl SledStore {
    /// This data dir's instance id, created (random, never 0) and made durable at its first
    /// call on a data dir.
    ///
    /// # Errors
    /// sled cannot be read or written, or the stored value is damaged.
    pub fn instance(&self) -> Result<u64, StorageError> {
        let meta = &self.inner.meta;
        let stored = meta
            .get(INSTANCE_KEY)
            .map_err(|e| self.sled_err("read the instance id", &e))?;
        if let Some(raw) = stored {
            return self.decode_u64(&raw, "the instance id (sled tree \"meta\")");
        }
        // RandomState is seeded from the operating system's randomness.
        let id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            .max(1);
        meta.insert(INSTANCE_KEY, &id.to_be_bytes())
            .map_err(|e| self.sled_err("write the instance id", &e))?;
        self.sync_sled()?;
        Ok(id)
    }

    /// The instance id recorded for each peer heard from.
    ///
    /// # Errors
    /// sled cannot be read, or a stored value is damaged.
    pub fn peer_instances(&self) -> Result<BTreeMap<NodeId, u64>, StorageError> {
        let mut out = BTreeMap::new();
        for kv in self.inner.meta.scan_prefix(PEER_PREFIX) {
            let (k, v) = kv.map_err(|e| self.sled_err("read the peers' instance ids", &e))?;
            let what = "a peer's instance id (sled tree \"meta\")";
            let id = self.decode_u64(&k[PEER_PREFIX.len()..], what)?;
            out.insert(id, self.decode_u64(&v, what)?);
        }
        Ok(out)
    }

    /// Records durably (flush + `fdatasync`) that `peer` runs on `instance`.
    ///
    /// # Errors
    /// sled cannot be written or synced.
    pub fn record_peer_instance(&self, peer: NodeId, instance: u64) -> Result<(), StorageError> {
        let mut key = PEER_PREFIX.to_vec();
        key.extend_from_slice(&peer.to_be_bytes());
        self.inner
            .meta
            .insert(key, &instance.to_be_bytes())
            .map_err(|e| self.sled_err("record a peer's instance id", &e))?;
        self.sync_sled()
    }

    fn decode_u64(&self, raw: &[u8], what: &str) -> Result<u64, StorageError> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| StorageError::Corrupt {
            dir: self.inner.dir.clone(),
            what: what.to_owned(),
            reason: format!("{} bytes instead of 8", raw.len()),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_survives_a_reopen_and_a_wiped_dir_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = store.instance().unwrap();
        assert_ne!(first, 0);
        assert_eq!(store.instance().unwrap(), first);
        store.record_peer_instance(2, 77).unwrap();
        store.record_peer_instance(300, 5).unwrap();
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.instance().unwrap(), first, "reopened");
        assert_eq!(
            store.peer_instances().unwrap(),
            BTreeMap::from([(2, 77), (300, 5)])
        );
        drop(store);
        let wiped = tempfile::tempdir().unwrap();
        let store = SledStore::open(wiped.path()).unwrap();
        assert_ne!(
            store.instance().unwrap(),
            first,
            "a new data dir, a new instance"
        );
        assert!(store.peer_instances().unwrap().is_empty());
    }
}
