//! [`KeyLeases`]: etcd's leases on keys, as the state machine keeps them: which leases exist
//! and the TTL each was granted with. The keys attached to a lease are indexed by the key
//! space ([`KeySpace::lease_keys`](super::mvcc::KeySpace::lease_keys)), which updates that
//! index with every write it commits.
//!
//! No clock here: a lease's remaining time lives on the leader only (`node::leases`), which
//! proposes `Command::LeaseRevoke` when it runs out, as etcd's lessor does.
//!
//! # Where we chose
//! - etcd's leader picks the id of a grant without one at random; a replicated state machine
//!   must pick the same id on every replica, so we take the index of the granting entry and
//!   step up past ids in use.
//! - etcd raises a TTL below its minimum when the lease is granted; the minimum depends on the
//!   election timeout, which the state machine does not know, so the front end raises it
//!   before proposing and the granted TTL is what the entry says.

use super::mvcc::{LeaseLookup, MvccError};
use super::ApplyError;
use crate::raft::LogIndex;
use std::collections::BTreeMap;

/// etcd's largest lease TTL, in seconds (`lease.MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The leases on keys that exist, by id, with the TTL (seconds) each was granted with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLeases {
    /// Id → granted TTL in seconds. Invariant: no id 0 (etcd's "no lease").
    leases: BTreeMap<i64, i64>,
}

impl KeyLeases {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants lease `id` (0: pick one from `index`) with `ttl` seconds; returns the id and
    /// the TTL granted.
    ///
    /// # Errors
    /// [`ApplyError::LeaseTtlTooLarge`] above [`MAX_LEASE_TTL`], [`ApplyError::LeaseExists`]
    /// for an id in use.
    pub fn grant(&mut self, index: LogIndex, id: i64, ttl: i64) -> Result<(i64, i64), ApplyError> {
        if ttl > MAX_LEASE_TTL {
            return Err(ApplyError::LeaseTtlTooLarge { ttl });
        }
        let id = if id == 0 {
            // Positive ids only, as etcd's generator gives; the table is finite, so a free id
            // is found.
            let mut id = i64::try_from(index).unwrap_or(i64::MAX).max(1);
            while self.leases.contains_key(&id) {
                id = if id == i64::MAX { 1 } else { id + 1 };
            }
            id
        } else if self.leases.contains_key(&id) {
            return Err(ApplyError::LeaseExists { id });
        } else {
            id
        };
        self.leases.insert(id, ttl);
        Ok((id, ttl))
    }

    /// Drops lease `id`.
    ///
    /// # Errors
    /// The lease does not exist (etcd's "requested lease not found").
    pub fn revoke(&mut self, id: i64) -> Result<(), ApplyError> {
        self.leases
            .remove(&id)
            .map(|_| ())
            .ok_or(ApplyError::Kv(MvccError::LeaseNotFound(id)))
    }

    /// The TTL lease `id` was granted with, if it exists.
    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).copied()
    }

    /// Every lease as `(id, granted ttl)`, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|(id, ttl)| (*id, *ttl))
    }

    /// How many leases exist.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease exists.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The table as snapshot data: `(id, ttl)` pairs in id order.
    pub(super) fn to_snapshot(&self) -> Vec<(i64, i64)> {
        self.iter().collect()
    }

    /// Rebuilds a table from [`to_snapshot`](Self::to_snapshot) data.
    ///
    /// # Errors
    /// One line: id 0, or ids not strictly increasing.
    pub(super) fn from_snapshot(pairs: Vec<(i64, i64)>) -> Result<Self, String> {
        let mut leases = BTreeMap::new();
        let mut last = None;
        for (id, ttl) in pairs {
            if id == 0 {
                return Err("lease table: lease id 0".to_string());
            }
            if last.is_some_and(|l| l >= id) {
                return Err(format!("lease table: lease {id} out of order"));
            }
            last = Some(id);
            leases.insert(id, ttl);
        }
        Ok(KeyLeases { leases })
    }
}

impl LeaseLookup for KeyLeases {
    fn exists(&self, lease: i64) -> bool {
        lease == 0 || self.leases.contains_key(&lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_without_an_id_takes_the_entry_index_and_steps_past_ids_in_use() {
        let mut t = KeyLeases::new();
        assert_eq!(t.grant(7, 8, 5), Ok((8, 5)));
        assert_eq!(t.grant(7, 0, 5), Ok((7, 5)));
        assert_eq!(t.grant(7, 0, 6), Ok((9, 6)), "7 and 8 are in use");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn etcds_grant_refusals() {
        let mut t = KeyLeases::new();
        assert_eq!(t.grant(1, 5, 10), Ok((5, 10)));
        assert_eq!(t.grant(2, 5, 10), Err(ApplyError::LeaseExists { id: 5 }));
        assert_eq!(
            t.grant(3, 6, MAX_LEASE_TTL + 1),
            Err(ApplyError::LeaseTtlTooLarge {
                ttl: MAX_LEASE_TTL + 1
            })
        );
        assert_eq!(t.grant(3, 6, MAX_LEASE_TTL), Ok((6, MAX_LEASE_TTL)));
        assert_eq!(
            ApplyError::LeaseExists { id: 5 }.to_string(),
            "lease already exists"
        );
        assert_eq!(
            ApplyError::LeaseTtlTooLarge { ttl: 1 }.to_string(),
            "too large lease TTL"
        );
    }

    #[test]
    fn revoke_drops_the_lease_and_refuses_an_unknown_one() {
        let mut t = KeyLeases::new();
        t.grant(1, 0, 10).unwrap();
        assert!(t.exists(1) && t.exists(0) && !t.exists(2));
        assert_eq!(t.revoke(1), Ok(()));
        assert_eq!(
            t.revoke(1),
            Err(ApplyError::Kv(MvccError::LeaseNotFound(1)))
        );
        assert!(!t.exists(1));
    }

    #[test]
    fn snapshot_round_trips_and_bad_tables_are_refused() {
        let mut t = KeyLeases::new();
        t.grant(1, 0, 10).unwrap();
        t.grant(2, -4, 3).unwrap();
        assert_eq!(KeyLeases::from_snapshot(t.to_snapshot()), Ok(t));
        assert!(KeyLeases::from_snapshot(vec![(0, 1)]).is_err());
        assert!(KeyLeases::from_snapshot(vec![(2, 1), (1, 1)]).is_err());
    }
}

#[cfg(test)]
mod model_tests;
