//! [`FileStore`]: the real segment log and snapshot files, plus the hard state in a small
//! file, over any [`Fs`]: over [`SimFs`] it is the store of the storage model test and of
//! the deterministic simulator, so both run the real storage code under crashes.
//!
//! ```text
//! <data-dir>/
//!   hard-state           term and vote: postcard + CRC32 (as keys.rs encodes sled's values)
//!   hard-state.tmp       only while a new one is written (removed at open)
//!   log/, snapshots/     as in the SledStore's data dir (see the module doc of `storage`)
//! ```
//! It persists and installs exactly as [`SledStore`](super::SledStore) does (same order of
//! writes and syncs, same redo at open), with one difference: the term and vote are written
//! as a new file, synced, renamed over the old one, and the directory synced (sled's flush +
//! `fdatasync` in the SledStore). Single owner (`&mut self`), no lock on the data dir.
//!
//! # Crashing and reopening (the simulator's API)
//! ```ignore
//! let fs = SimFs::new(SimFsConfig { seed });
//! let mut store = FileStore::open(fs.clone(), Path::new("/node-1"))?;
//! store.persist(...)?;                     // LogStore, as the driver does
//! drop(store);
//! fs.crash();                              // power loss: unsynced data and names at risk
//! fs.restart();                            // resolve what survived (seeded, reproducible)
//! let store = FileStore::open(fs.clone(), Path::new("/node-1"))?;  // recovery runs here
//! ```
//! A clean restart is `drop` + `fs.restart()` (no crash: nothing is lost) + `open`. Faults:
//! [`SimFs::inject`]. Every error is fatal: after one, drop the store, restart, reopen.

use super::error::StorageError;
use super::fs::{sync_dir, Fs, FsFile, Mode};
use super::keys::{decode_value, encode_value};
use super::segment_log::{persist_batch, SegmentLog, SEGMENT_BYTES};
use super::snapshot_file::{self, SnapshotDir};
use crate::raft::storage::LogStore;
use crate::raft::{Entry, HardState, LogIndex, Snapshot, SnapshotMeta};
use std::path::{Path, PathBuf};

/// The hard state's file in the data dir.
const HARD_STATE_FILE: &str = "hard-state";
/// Its temporary name while a new one is written.
const HARD_STATE_TMP: &str = "hard-state.tmp";

/// The segment log, the snapshot files and a hard-state file over the file system `F`.
#[derive(Debug)]
pub struct FileStore<F: Fs> {
    fs: F,
    dir: PathBuf,
    snapshots: SnapshotDir<F>,
    /// The latest published snapshot.
    snapshot: Option<SnapshotMeta>,
    log: SegmentLog<F>,
    /// The durable hard state (its term and vote; the commit index is in the log).
    stored: HardState,
    /// The log `open` replayed, until the first `load` takes it or a write makes it stale.
    loaded: Option<Vec<Entry>>,
}

impl<F: Fs> FileStore<F> {
    /// Opens (creating if needed) the data dir `dir` on `fs`: reads the hard state, then
    /// recovers the snapshot files and the log as `SledStore::open` does.
    ///
    /// # Errors
    /// A file cannot be created, read or synced, or is corrupt.
    pub fn open(fs: F, dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_segments(fs, dir, SEGMENT_BYTES)
    }

    /// [`open`](Self::open) with log segments of `segment_bytes` instead of the 4 MiB of
    /// production (tests and simulations: smaller segments roll, and get deleted, more
    /// often). Reopen a data dir with the same size it was written with.
    ///
    /// # Errors
    /// As `open`.
    pub fn open_with_segments(fs: F, dir: &Path, segment_bytes: u64) -> Result<Self, StorageError> {
        let dir = dir.to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(|cause| StorageError::CreateDir {
                dir: dir.clone(),
                cause,
            })?;
        let snapshots = SnapshotDir::create_in(fs.clone(), &dir)?;
        let scan = snapshots.scan()?;
        let stored = read_hard_state(&fs, &dir)?;
        let (log, replayed) = SegmentLog::open_sized(fs.clone(), &dir, scan.latest, segment_bytes)?;
        Ok(FileStore {
            fs,
            dir,
            snapshots,
            snapshot: scan.latest,
            log,
            stored,
            loaded: Some(replayed.entries),
        })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn hard_state_path(&self) -> PathBuf {
        self.dir.join(HARD_STATE_FILE)
    }

    /// Writes the term and vote of `hs` durably: a new file, synced, renamed over the old
    /// one, the directory synced.
    fn write_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        let value = encode_value(hs, 32).map_err(|cause| StorageError::Encode {
            dir: self.dir.clone(),
            what: "hard state".to_owned(),
            cause,
        })?;
        let tmp = self.dir.join(HARD_STATE_TMP);
        let io = |op| {
            let path = tmp.clone();
            move |cause| StorageError::File { path, op, cause }
        };
        let file = self
            .fs
            .open(&tmp, Mode::CreateTruncate)
            .map_err(io("create"))?;
        file.write_all_at(&value, 0).map_err(io("write"))?;
        file.sync_data().map_err(|cause| StorageError::Sync {
            path: tmp.clone(),
            cause,
        })?;
        self.fs
            .rename(&tmp, &self.hard_state_path())
            .map_err(io("rename"))?;
        sync_dir(&self.fs, &self.dir)
    }
}

/// The hard state in `dir` (the default if none was written), after removing a leftover
/// temporary file.
fn read_hard_state(fs: &impl Fs, dir: &Path) -> Result<HardState, StorageError> {
    let tmp = dir.join(HARD_STATE_TMP);
    match fs.remove(&tmp) {
        Err(cause) if cause.kind() != std::io::ErrorKind::NotFound => {
            return Err(StorageError::File {
                path: tmp,
                op: "remove",
                cause,
            })
        }
        _ => {}
    }
    let path = dir.join(HARD_STATE_FILE);
    match fs.read(&path) {
        Ok(raw) => decode_value(&raw).map_err(|reason| StorageError::Corrupt {
            dir: dir.to_path_buf(),
            what: format!("the hard state ({})", path.display()),
            reason,
        }),
        Err(cause) if cause.kind() == std::io::ErrorKind::NotFound => Ok(HardState::default()),
        Err(cause) => Err(StorageError::File {
            path,
            op: "read",
            cause,
        }),
    }
}

impl<F: Fs> LogStore for FileStore<F> {
    type Error = StorageError;

    /// As `SledStore::load`.
    fn load(&self) -> Result<(HardState, Vec<Entry>), StorageError> {
        let entries = match &self.loaded {
            Some(entries) => entries.clone(),
            None => self.log.read(self.snapshot)?.entries,
        };
        Ok((self.log.loaded_hard_state(self.stored), entries))
    }

    /// As `SledStore::persist`: the term and vote first if they changed, then one record.
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let offset: LogIndex = self.snapshot.map_or(0, |m| m.index);
        let Some((new_vote, entries)) = persist_batch(offset, &self.stored, hard_state, entries)
        else {
            return Ok(());
        };
        self.loaded = None;
        if let Some(hs) = new_vote {
            self.write_hard_state(hs)?;
            self.stored = *hs;
        }
        self.log.persist(hard_state, self.stored.commit, entries)?;
        Ok(())
    }

    /// As `SledStore::snapshot`.
    fn snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some(meta) = self.snapshot else {
            return Ok(None);
        };
        let file = self.snapshots.open(meta)?;
        snapshot_file::read(file, &self.snapshots.file_path(meta), meta).map(Some)
    }

    /// As `SledStore::install_snapshot`: publish the file, compact the log, remove older
    /// snapshot files.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.meta;
        if meta.index <= self.snapshot.map_or(0, |m| m.index) {
            return Ok(());
        }
        let tmp = self.snapshots.write_tmp(snapshot)?;
        self.snapshots.publish(&tmp, meta)?;
        self.snapshot = Some(meta);
        self.loaded = None;
        self.log.compact(meta)?;
        self.snapshots.remove_older(meta)
    }
}

#[cfg(test)]
mod model_tests;
