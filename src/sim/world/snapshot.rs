//! Log compaction in the simulated driver, as the daemon does it (`node/driver/snapshot.rs`):
//! the state machine is serialized on the loop, then the snapshot is stored on a background
//! thread while the node goes on serving; the core compacts its log only once the store
//! reports the snapshot durable, and only between two Ready batches. The store is the real
//! one (`disk.rs`): a crash before then cuts its `install_snapshot` short at a random
//! operation, and the store's recovery decides at restart what survived; a leader's snapshot
//! arriving meanwhile waits for ours to be stored and is then installed without compacting
//! to ours.

use rand::Rng;

use super::{Ev, NodeId, Time, World, MS};
use crate::raft::storage::LogStore;
use crate::raft::{LogIndex, Snapshot};

/// A snapshot being stored in the background.
pub(super) struct SnapshotTask {
    snapshot: Snapshot,
    /// The store reported it durable; the core has not compacted yet (the loop was busy).
    stored: bool,
}

impl SnapshotTask {
    /// The index the snapshot covers.
    pub(super) fn index(&self) -> LogIndex {
        self.snapshot.meta.index
    }

    /// The snapshot being stored.
    pub(super) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether the store reported it durable.
    pub(super) fn stored(&self) -> bool {
        self.stored
    }
}

impl World {
    /// Every `snapshot_every` applied entries, and when no snapshot is being stored already:
    /// serializes the state machine and starts storing it; the store completes after a
    /// simulated delay (`snapshot_stored`).
    pub(super) fn maybe_snapshot(&mut self, id: NodeId) {
        let every = self.cfg.snapshot_every;
        let slow = self.slow_disk.contains(&id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let meta = n.core.applied_snapshot_meta();
        if every == 0
            || n.snapshot_task.is_some()
            || meta.index < n.core.snapshot_meta().index + every
        {
            return;
        }
        let snapshot = Snapshot {
            meta,
            data: n.sm.snapshot().into(),
            membership: Some(n.core.applied_membership()),
        };
        n.snapshot_task = Some(SnapshotTask {
            snapshot,
            stored: false,
        });
        let inc = n.incarnation;
        let d: Time = if slow {
            self.rng.random_range(50 * MS..300 * MS)
        } else {
            self.rng.random_range(MS..20 * MS)
        };
        self.schedule(d, Ev::SnapshotStored(id, inc));
        self.note(|| format!("node {id} took snapshot {meta:?}; storing it"));
    }

    /// The background store of `id`'s snapshot finished: it is durable now. The core is told
    /// (and compacts) at once if the loop is free, else once it is (`finish_snapshot` from
    /// `after_busy`). A paused process stores nothing: tried again a tick later.
    pub(super) fn snapshot_stored(&mut self, id: NodeId, incarnation: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.incarnation != incarnation || !n.up {
            return;
        }
        if n.paused {
            self.schedule(super::TICK, Ev::SnapshotStored(id, incarnation));
            return;
        }
        let Some(task) = n.snapshot_task.take() else {
            // Drained by a leader's snapshot: already stored, not to be compacted to.
            return;
        };
        let stored = self.store_op(id, |s| s.install_snapshot(&task.snapshot));
        let Some(n) = self.nodes.get_mut(&id).filter(|_| stored.is_some()) else {
            return;
        };
        n.snapshot_task = Some(SnapshotTask {
            stored: true,
            ..task
        });
        if n.busy.is_none() {
            self.finish_snapshot(id);
        }
    }

    /// Between two Ready batches: a snapshot the store reported durable compacts the core.
    pub(super) fn finish_snapshot(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.busy.is_some() || !n.snapshot_task.as_ref().is_some_and(|t| t.stored) {
            return;
        }
        let Some(task) = n.snapshot_task.take() else {
            return;
        };
        let meta = task.snapshot.meta;
        n.core.compact(meta.index);
        self.outcome.snapshots_taken += 1;
        self.note(|| format!("node {id} stored snapshot {meta:?} and compacted its log"));
    }

    /// Before a leader's snapshot replaces ours: wait for ours to be stored (it is older: the
    /// core accepts only snapshots past its commit), without compacting to it. False if
    /// storing it failed (the node stopped).
    pub(super) fn drain_snapshot(&mut self, id: NodeId) -> bool {
        let Some(n) = self.nodes.get_mut(&id) else {
            return false;
        };
        match n.snapshot_task.take() {
            Some(task) if !task.stored => self
                .store_op(id, |s| s.install_snapshot(&task.snapshot))
                .is_some(),
            _ => true,
        }
    }
}
