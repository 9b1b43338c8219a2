//! Each simulated node's disk: the real store of the daemon's storage layer
//! (`storage::FileStore`: the segment log, the snapshot files and the hard state in a file)
//! over `storage::fs::SimFs`, an in-memory file system that models what a power loss keeps
//! (unsynced writes lost, cut or torn by sector; a create, rename or unlink durable only once
//! its directory is synced) and injects disk faults. One file system per node, seeded from
//! the run's seed.
//!
//! - A crash (power loss) cuts short whatever the node was writing (the persist of a Ready,
//!   a snapshot being stored in the background) at a random operation, then loses power;
//!   the restart resolves what survived and reopens the store from those files: replay,
//!   torn-tail repair, compaction redo and segment removal run exactly as at the daemon's
//!   start, and the core and state machine are rebuilt from what the store loads.
//! - A clean restart (SIGTERM) loses nothing: it reopens the store, sometimes several times
//!   in a row, each one running the store's recovery, and each must load exactly what the
//!   store held when the node stopped (the check that finds issue 11's defect 1).
//! - A disk fault is a failure injected at one of the next operations of the node's file
//!   system (`EIO`, `ENOSPC`, or a power loss). Every storage error is fatal to the node,
//!   like the daemon's exit 3: it stops at once and restarts later from its files. An error
//!   with no fault injected is a storage bug: the run fails.

use std::path::{Path, PathBuf};

use rand::Rng;

use super::{Ev, NodeId, World, MS};
use crate::raft::storage::LogStore;
use crate::raft::{Entry, HardState, SnapshotMeta};
use crate::storage::fs::{Fault, SimFs, SimFsConfig};
use crate::storage::{FileStore, StorageError};

/// A node's store: the daemon's own segment log, snapshot files and hard-state file.
pub(crate) type Store = FileStore<SimFs>;

/// A crash cuts the writes in progress at one of their next this many operations (0: they
/// had not started). A persist is a write and a sync, so most crashes lose or tear it; a
/// new term adds 5 operations before them, a segment roll or a snapshot more: those often
/// stop half-way.
const CUT_WITHIN: u64 = 4;

/// A node's disk: its file system, and the store open on it while the node is up.
pub(crate) struct Disk {
    fs: SimFs,
    dir: PathBuf,
    /// Log segment size (0: the production size).
    segment_bytes: u64,
    store: Option<Store>,
    /// After a clean stop, until the node restarts: what the store held then.
    kept: Option<Held>,
}

/// What a store holds: what `load` returns, and its latest snapshot.
#[derive(PartialEq)]
struct Held {
    hard_state: HardState,
    entries: Vec<Entry>,
    snapshot: Option<SnapshotMeta>,
}

impl Held {
    fn of(store: &Store) -> Result<Held, StorageError> {
        let (hard_state, entries) = store.load()?;
        let snapshot = store.snapshot()?.map(|s| s.meta);
        Ok(Held {
            hard_state,
            entries,
            snapshot,
        })
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.entries.last().map(|e| (e.index, e.term));
        write!(
            f,
            "{:?}, snapshot {:?}, {} entries (last {last:?})",
            self.hard_state,
            self.snapshot,
            self.entries.len()
        )
    }
}

impl Disk {
    /// An empty disk for node `id` of the run with seed `seed`, with the store open on it.
    pub(super) fn new(id: NodeId, seed: u64, segment_bytes: u64) -> Disk {
        let fs = SimFs::new(SimFsConfig {
            seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(id),
        });
        let mut disk = Disk {
            fs,
            dir: PathBuf::from(format!("/node-{id}")),
            segment_bytes,
            store: None,
            kept: None,
        };
        disk.store = Some(
            disk.open()
                .unwrap_or_else(|e| panic!("invariant: an empty store opens: {e}")),
        );
        disk
    }

    fn open(&self) -> Result<Store, StorageError> {
        let dir: &Path = &self.dir;
        match self.segment_bytes {
            0 => FileStore::open(self.fs.clone(), dir),
            bytes => FileStore::open_with_segments(self.fs.clone(), dir, bytes),
        }
    }

    /// The open store (none while the node is down).
    pub(crate) fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Powers the disk back on (resolving what a crash kept) and opens the store: the
    /// store's recovery runs here.
    pub(super) fn reopen(&mut self) -> Result<&Store, StorageError> {
        self.store = None;
        self.fs.restart();
        Ok(self.store.insert(self.open()?))
    }

    /// After a clean stop, the store just reopened must hold what it held then (`Ok` if the
    /// node did not stop cleanly); else what it holds instead.
    fn check_kept(&self) -> Result<(), String> {
        let (Some(kept), Some(store)) = (&self.kept, &self.store) else {
            return Ok(());
        };
        match Held::of(store) {
            Ok(now) if now == *kept => Ok(()),
            Ok(now) => Err(format!("holds {now} instead of {kept}")),
            Err(e) => Err(format!("fails to load: {e}")),
        }
    }

    /// [`reopen`](Self::reopen), checking that a clean stop lost nothing.
    pub(super) fn reopen_checked(&mut self) -> Result<&Store, String> {
        self.reopen().map_err(|e| format!("does not open: {e}"))?;
        self.check_kept()?;
        self.kept = None;
        self.store.as_ref().ok_or_else(|| "is closed".to_owned())
    }

    /// The process stopped: the store is closed; with `power_loss`, whatever was not
    /// synced is at risk until the restart resolves it.
    pub(super) fn stop(&mut self, power_loss: bool) {
        self.store = None;
        if power_loss {
            self.fs.crash();
        }
    }
}

impl World {
    /// Runs `op` on `id`'s store. On an error the node stops (`storage_failed`) and the
    /// answer is `None`, as it is when the node is down.
    pub(super) fn store_op<T>(
        &mut self,
        id: NodeId,
        op: impl FnOnce(&mut Store) -> Result<T, StorageError>,
    ) -> Option<T> {
        let n = self.nodes.get_mut(&id)?;
        match op(n.disk.store.as_mut()?) {
            Ok(t) => Some(t),
            Err(e) => {
                self.storage_failed(id, &e);
                None
            }
        }
    }

    /// A storage operation failed: the node stops at once, like the driver (one error line,
    /// exit 3), without sending what the write promised or applying anything; part of the
    /// write may have reached the disk. It restarts later from its files. A failure with no
    /// fault injected is a bug of the store.
    fn storage_failed(&mut self, id: NodeId, e: &StorageError) {
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        if !n.disk.fs.fault_fired() {
            self.violation(format!(
                "node {id}: storage failed with no fault injected: {e}"
            ));
            return;
        }
        let power_loss = n.disk.fs.crashed();
        self.note(|| format!("STORAGE FAILED on node {id}: {e}; the node stops"));
        self.outcome.disk_failures += 1;
        self.stop(id, power_loss);
        let down = self.rng.random_range(100 * MS..1_000 * MS);
        self.schedule(down, Ev::Restart(id));
    }

    /// The fault schedule's disk fault: one of the next operations of `id`'s file system
    /// fails (`EIO`, `ENOSPC`), or the power goes there.
    pub(super) fn inject_disk_fault(&mut self, id: NodeId) {
        let at = self.rng.random_range(1..=8u64);
        let fault = [Fault::Io, Fault::NoSpace, Fault::Crash][self.rng.random_range(0..3)];
        let Some(n) = self.nodes.get(&id).filter(|n| n.up) else {
            return;
        };
        let fs = &n.disk.fs;
        fs.inject(fs.ops() + at, fault);
        self.note(|| format!("DISK of node {id}: {fault:?} at its {at}th next operation"));
    }

    /// A power loss on `id`: the writes it had in progress (a snapshot being stored in the
    /// background, then the Ready being persisted) run until a random operation where the
    /// power goes; the crash model of the file system decides at restart what survived.
    pub(super) fn power_loss(&mut self, id: NodeId) {
        let cut = self.rng.random_range(0..=CUT_WITHIN);
        let Some(n) = self.nodes.get_mut(&id).filter(|n| n.up) else {
            return;
        };
        let task = n.snapshot_task.take().filter(|t| !t.stored());
        let rd = n.busy.take();
        let in_progress = task.is_some() || rd.is_some();
        if let (Some(store), true) = (n.disk.store.as_mut(), in_progress && cut > 0) {
            let fs = &n.disk.fs;
            fs.inject(fs.ops() + cut, Fault::Crash);
            let snapshot = task.as_ref().map(|t| store.install_snapshot(t.snapshot()));
            if snapshot.is_none_or(|r| r.is_ok()) {
                if let Some(rd) = &rd {
                    let _ = rd
                        .snapshot
                        .as_ref()
                        .map_or(Ok(()), |s| store.install_snapshot(s))
                        .and_then(|()| store.persist(rd.hard_state.as_ref(), &rd.entries));
                }
            }
        }
        let landed = !n.disk.fs.crashed();
        if in_progress {
            self.note(|| {
                format!("node {id} loses power (writes in progress: cut after {cut} ops, landed whole {landed})")
            });
        }
        self.stop(id, true);
    }

    /// The fault schedule's clean restart: the node stops (SIGTERM: nothing it wrote is
    /// lost), and starts again, `times` times in a row (each start runs the store's
    /// recovery; the last one rebuilds the node, after a short pause).
    pub(super) fn clean_restart(&mut self, id: NodeId, times: u32) {
        if !self.nodes.get(&id).is_some_and(|n| n.up) {
            return;
        }
        self.note(|| format!("CLEAN RESTART node {id} ({times} in a row)"));
        self.outcome.clean_restarts += 1;
        let kept = self
            .nodes
            .get(&id)
            .and_then(|n| n.disk.store.as_ref())
            .map(Held::of);
        match kept {
            Some(Ok(kept)) => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.disk.kept = Some(kept);
                }
            }
            Some(Err(e)) => {
                self.violation(format!("node {id}: its store fails to load: {e}"));
                return;
            }
            None => {}
        }
        self.stop(id, false);
        for _ in 1..times {
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            let reopened = n
                .disk
                .reopen()
                .map(|_| ())
                .map_err(|e| format!("does not open: {e}"));
            if let Err(e) = reopened.and_then(|()| n.disk.check_kept()) {
                self.violation(format!("node {id}: after a clean restart its store {e}"));
                return;
            }
            n.disk.stop(false);
        }
        let down = self.rng.random_range(MS..200 * MS);
        self.schedule(down, Ev::Restart(id));
    }
}
