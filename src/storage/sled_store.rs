//! [`SledStore`]: the log in our own segment files ([`SegmentLog`]), the term and vote in
//! sled, the snapshot in a file.

use super::error::{describe_sled, StorageError};
use super::keys::{decode_value, encode_value, HARD_STATE_KEY, LOG_TREE, META_TREE};
use super::segment_log::{persist_batch, SegmentLog};
use super::snapshot_file::{self, sync_path, SnapshotDir};
use crate::raft::storage::LogStore;
use crate::raft::{Entry, HardState, LogIndex, Snapshot, SnapshotMeta};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The node's storage. Cheap to clone (clones share the files, the lock and the sync
/// counter); only one clone should call [`persist`](LogStore::persist), the driver.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

/// Field order is drop order: sled closes before the lock on the data dir is released.
struct Inner {
    db: sled::Db,
    /// Tree `meta`: the hard state (its term and vote; the commit index is in the log).
    meta: sled::Tree,
    /// sled's log file `<dir>/db`, kept open to `fdatasync` it after every flush.
    db_file: File,
    /// Number of `persist` calls that synced something, for tests and metrics.
    sync_count: AtomicU64,
    /// `<dir>/snapshots`.
    snapshots: SnapshotDir,
    /// The latest published snapshot. Readers open its file while holding the lock, and
    /// `install_snapshot` replaces it (after the rename) before removing older files, so a
    /// reader always opens a file that exists.
    snapshot: Mutex<Option<SnapshotMeta>>,
    /// Encoded bytes of the log entries written after the snapshot, see
    /// [`SledStore::log_bytes_since_snapshot`].
    log_bytes: AtomicU64,
    /// Everything `persist`, compaction and `load` share, under one lock: the first two may
    /// run on different threads (the driver compacts on the blocking pool).
    writer: Mutex<Writer>,
    dir: PathBuf,
    /// Holds the exclusive lock on `<dir>/LOCK` for as long as the store lives.
    _lock: File,
}

/// The segment log and what `persist` compares with.
struct Writer {
    log: SegmentLog,
    /// The hard state in sled: its term and vote are the durable ones.
    stored: HardState,
    /// The log `open` replayed, until the first `load` takes it or a write makes it stale.
    loaded: Option<Vec<Entry>>,
}

impl SledStore {
    /// Opens (creating if needed) and locks the data dir, then replays the log (cutting off a
    /// torn write a crash left at its end, and finishing a compaction it interrupted).
    ///
    /// The lock is taken before sled opens anything, so a second process fails with
    /// [`StorageError::Locked`] without touching the database.
    ///
    /// # Errors
    /// The dir cannot be created/opened, is locked by another process, is corrupt, or keeps
    /// its log in the older layout (sled's `log` tree).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|cause| StorageError::CreateDir {
            dir: dir.clone(),
            cause,
        })?;
        let lock = lock_dir(&dir)?;
        // Created before the data dir's fsync below, which makes its name durable.
        let snapshots = SnapshotDir::create(&dir)?;
        // Before sled opens: a `.tmp` left by a write that failed on a full disk is removed
        // before sled needs the space.
        let scan = snapshots.scan()?;
        if scan.removed_tmp + scan.removed_old > 0 {
            tracing::info!(
                dir = %snapshots.path().display(),
                tmp = scan.removed_tmp,
                old = scan.removed_old,
                "removed leftover snapshot files"
            );
        }

        let open_err = |e: sled::Error| match e {
            // A disk fault (e.g. ENOSPC while sled recovers), not an incompatible database.
            sled::Error::Io(_) => StorageError::Sled {
                dir: dir.clone(),
                op: "open the database",
                cause: describe_sled(&e),
            },
            _ => StorageError::Open {
                dir: dir.clone(),
                cause: describe_sled(&e),
            },
        };
        wait_for_sled_lock(&dir);
        // No background flusher: durability is persist()'s job, with one explicit
        // flush + fdatasync when the term or vote changes (sled's own timer would only add
        // syncs).
        let db = sled::Config::new()
            .path(&dir)
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let opened = (|| {
            let meta = db.open_tree(META_TREE).map_err(open_err)?;
            // The older layout kept the log in sled: refuse it rather than lose it.
            if db.tree_names().iter().any(|name| name == LOG_TREE)
                && !db.open_tree(LOG_TREE).map_err(open_err)?.is_empty()
            {
                return Err(StorageError::OldLayout { dir: dir.clone() });
            }
            let stored = match meta.get(HARD_STATE_KEY).map_err(open_err)? {
                Some(raw) => decode_value(&raw).map_err(|reason| StorageError::Corrupt {
                    dir: dir.clone(),
                    what: HARD_STATE_WHAT.to_owned(),
                    reason,
                })?,
                None => HardState::default(),
            };

            let db_path = dir.join("db");
            let db_file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&db_path)
                .map_err(|cause| StorageError::Sync {
                    path: db_path.clone(),
                    cause,
                })?;
            // Make what sled created durable once: its files' contents and their directory
            // entries (a fresh `db` file is useless if its name is lost in a crash).
            db.flush().map_err(|e| StorageError::Sled {
                dir: dir.clone(),
                op: "flush the database",
                cause: describe_sled(&e),
            })?;
            db_file.sync_all().map_err(|cause| StorageError::Sync {
                path: db_path,
                cause,
            })?;
            sync_path(&dir.join("conf"))?;
            sync_path(&dir)?;
            let (log, replayed) = SegmentLog::open(&dir, scan.latest)?;
            Ok((meta, db_file, stored, log, replayed.entries))
        })();
        // On an error, dropping sled would flush again and may hang (see `abandon`).
        let (meta, db_file, stored, log, loaded) =
            opened.inspect_err(|_| std::mem::forget(db.clone()))?;
        let log_bytes = log.tail_bytes();
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                meta,
                db_file,
                sync_count: AtomicU64::new(0),
                snapshots,
                snapshot: Mutex::new(scan.latest),
                log_bytes: AtomicU64::new(log_bytes),
                writer: Mutex::new(Writer {
                    log,
                    stored,
                    loaded: Some(loaded),
                }),
                dir,
                _lock: lock,
            }),
        })
    }

    /// Gives the store up after a failed write, flush or sync, without closing sled.
    ///
    /// Dropping a sled database flushes it, and after an I/O error sled's flush waits
    /// forever for a write that will never complete (and would retry writing and syncing
    /// what already failed once). So the database is leaked instead: the process is about
    /// to exit, and the OS closes its files and releases the data dir's lock.
    pub fn abandon(self) {
        std::mem::forget(self.inner);
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How many [`persist`](LogStore::persist) calls synced (every call that had something
    /// to write: one `fdatasync` of the active log segment, preceded by sled's flush +
    /// `fdatasync` when the term or vote changed).
    pub fn sync_count(&self) -> u64 {
        self.inner.sync_count.load(Ordering::Relaxed)
    }

    /// Makes sled's writes durable: its flush (which on Linux ends in `sync_file_range`, not
    /// an fsync, sled issue #1452), then `fdatasync` on sled's log file. sled holds only the
    /// hard state (tens of bytes), so it never writes a blob file.
    fn sync_sled(&self) -> Result<(), StorageError> {
        let inner = &self.inner;
        inner
            .db
            .flush()
            .map_err(|e| self.sled_err("flush the database", &e))?;
        inner
            .db_file
            .sync_data()
            .map_err(|cause| StorageError::Sync {
                path: inner.dir.join("db"),
                cause,
            })
    }

    fn lock_snapshot(&self) -> MutexGuard<'_, Option<SnapshotMeta>> {
        self.inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Index of the last entry the latest snapshot covers (0 without one).
    fn snapshot_index(&self) -> LogIndex {
        self.lock_snapshot().map_or(0, |m| m.index)
    }

    /// Bytes of log entries written since the latest snapshot, as stored in the segments
    /// (entries later overwritten by a conflicting suffix still count until the next
    /// snapshot), reset by `install_snapshot` to the size of the entries it keeps. The driver
    /// compares it with its size threshold to decide when to snapshot.
    pub fn log_bytes_since_snapshot(&self) -> u64 {
        self.inner.log_bytes.load(Ordering::Relaxed)
    }

    /// Steps 1 and 2 of `install_snapshot`: the snapshot file is durable under its final name
    /// and is the latest.
    fn publish_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let dir = &self.inner.snapshots;
        let tmp = dir.write_tmp(snapshot)?;
        dir.publish(&tmp, snapshot.meta)?;
        *self.lock_snapshot() = Some(snapshot.meta);
        Ok(())
    }

    /// Step 3 of `install_snapshot` (redone at start-up if a crash skipped it): a Snapshot
    /// record in the log, synced, then the segments it covers are unlinked. It keeps the
    /// entries after `meta.index` if the log holds entry `meta.index` with `meta.term`,
    /// else none (another history, or a log shorter than the snapshot).
    fn compact_log(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let mut writer = self.lock_writer();
        writer.loaded = None;
        let kept = writer.log.compact(meta)?;
        self.inner.log_bytes.store(kept, Ordering::Relaxed);
        Ok(())
    }

    fn sled_err(&self, op: &'static str, e: &sled::Error) -> StorageError {
        StorageError::Sled {
            dir: self.inner.dir.clone(),
            op,
            cause: describe_sled(e),
        }
    }
}

/// How a corruption message names the hard state.
const HARD_STATE_WHAT: &str = "the hard state (sled tree \"meta\")";

impl LogStore for SledStore {
    type Error = StorageError;

    /// Loads the hard state (term and vote from sled, the commit index from the last record
    /// of the log) and the log after the latest snapshot. The first call after `open` returns
    /// what `open` replayed (every record's checksum checked, the log contiguous from the
    /// snapshot's index + 1, or from 1); later calls replay the segment files again.
    fn load(&self) -> Result<(HardState, Vec<Entry>), StorageError> {
        let snapshot = *self.lock_snapshot();
        let mut writer = self.lock_writer();
        let entries = match writer.loaded.take() {
            Some(entries) => entries,
            None => writer.log.read(snapshot)?.entries,
        };
        let hard_state = writer.log.loaded_hard_state(writer.stored);
        self.inner
            .log_bytes
            .store(writer.log.tail_bytes(), Ordering::Relaxed);
        Ok((hard_state, entries))
    }

    /// Writes the term and vote to sled if they changed (flush + fdatasync of sled's `db`),
    /// then the entries and the commit index as one record appended to the active log
    /// segment (one write, one fdatasync). sled first: a crash between the two must never
    /// leave entries of a term newer than the stored one. A call with nothing to write
    /// returns at once without syncing.
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let offset = self.snapshot_index();
        let inner = &self.inner;
        let mut writer = self.lock_writer();
        let Some((new_vote, entries)) = persist_batch(offset, &writer.stored, hard_state, entries)
        else {
            return Ok(());
        };
        writer.loaded = None;
        let mut synced = false;
        if let Some(hs) = new_vote {
            let value = encode_value(hs, 32).map_err(|cause| StorageError::Encode {
                dir: inner.dir.clone(),
                what: "hard state".to_owned(),
                cause,
            })?;
            inner
                .meta
                .insert(HARD_STATE_KEY, value)
                .map_err(|e| self.sled_err("write the hard state", &e))?;
            self.sync_sled()?;
            writer.stored = *hs;
            synced = true;
        }
        let stored_commit = writer.stored.commit;
        if let Some(bytes) = writer.log.persist(hard_state, stored_commit, entries)? {
            inner.log_bytes.fetch_add(bytes, Ordering::Relaxed);
            synced = true;
        }
        if synced {
            inner.sync_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads the latest snapshot file in full and verifies its header and checksum.
    fn snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let (meta, file) = {
            // Open under the lock: install_snapshot removes older files only after replacing
            // the meta, and an open file stays readable after its removal.
            let latest = self.lock_snapshot();
            let Some(meta) = *latest else {
                return Ok(None);
            };
            (meta, self.inner.snapshots.open(meta)?)
        };
        let path = self.inner.snapshots.file_path(meta);
        snapshot_file::read(file, &path, meta).map(Some)
    }

    /// Publishes `snapshot` (write `.tmp`, fdatasync, rename, fsync the dir), then compacts
    /// the log (a synced Snapshot record, then unlinks), then removes older snapshot files.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.meta;
        if meta.index <= self.snapshot_index() {
            return Ok(());
        }
        self.publish_snapshot(snapshot)?;
        self.compact_log(meta)?;
        self.inner.snapshots.remove_older(meta)
    }
}

/// Waits (up to 5 s) until no earlier sled instance in this process still locks `<dir>/db`.
///
/// sled releases its lock on `db` when the last of its threads lets go of the database, which
/// can be a little after the `Db` is dropped (its thread pool may still be writing or
/// truncating the file). A store reopened at once by the same process, as after an in-process
/// restart, would fail with sled's "could not acquire lock". Other processes are kept out by
/// `<dir>/LOCK`, held by now, so whoever holds sled's lock is on its way out. On timeout sled's
/// own open reports the lock.
fn wait_for_sled_lock(dir: &Path) {
    let Ok(db) = File::open(dir.join("db")) else {
        return; // a new data dir, or sled's open will report what is wrong
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // `try_lock` (flock) conflicts with sled's flock on another open file description.
    while let Err(TryLockError::WouldBlock) = db.try_lock() {
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Dropping `db` releases the lock for sled to take.
}

/// Takes the exclusive lock on `<dir>/LOCK`.
fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join("LOCK");
    let lock_err = |cause| StorageError::Lock {
        dir: dir.to_path_buf(),
        path: path.clone(),
        cause,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(cause)) => Err(lock_err(cause)),
    }
}

mod identity;
mod instances;
pub use identity::{ClusterIdentity, IdentityError, IdentityMismatch};

#[cfg(test)]
mod tests;
