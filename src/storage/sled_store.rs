//! [`SledStore`]: the hard state and log in sled, made durable with an explicit fdatasync.

use super::error::{describe_sled, StorageError};
use super::keys::{
    decode_value, encode_value, index_of_key, log_key, HARD_STATE_KEY, LOG_TREE, META_TREE,
};
use super::snapshot_file::{self, sync_path, SnapshotDir};
use crate::raft::storage::LogStore;
use crate::raft::{Entry, HardState, LogIndex, Payload, Snapshot, SnapshotMeta};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The node's sled database. Cheap to clone (clones share the database, the lock and the
/// sync counter); only one clone should call [`persist`](LogStore::persist), the driver.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

/// Field order is drop order: sled closes before the lock on the data dir is released.
struct Inner {
    db: sled::Db,
    /// Tree `meta`: the hard state.
    meta: sled::Tree,
    /// Tree `log`: entries keyed by big-endian index.
    log: sled::Tree,
    /// sled's log file `<dir>/db`, kept open to `fdatasync` it after every flush.
    db_file: File,
    /// Names of the files under `<dir>/blobs` already synced (sled writes a blob once and
    /// never changes it, so each needs one sync).
    synced_blobs: Mutex<BTreeSet<OsString>>,
    /// Number of completed `persist` syncs (flush + fdatasync), for tests and metrics.
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
    /// Covered entries still to be removed lazily (`trim.rs`).
    trim: Mutex<trim::Trim>,
    dir: PathBuf,
    /// Holds the exclusive lock on `<dir>/LOCK` for as long as the store lives.
    _lock: File,
}

impl SledStore {
    /// Opens (creating if needed) and locks the data dir.
    ///
    /// The lock is taken before sled opens anything, so a second process fails with
    /// [`StorageError::Locked`] without touching the database.
    ///
    /// # Errors
    /// The dir cannot be created/opened, is locked by another process, or is corrupt.
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
        // flush + fdatasync per call (sled's own timer would only add syncs).
        let db = sled::Config::new()
            .path(&dir)
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let opened = (|| {
            let meta = db.open_tree(META_TREE).map_err(open_err)?;
            let log = db.open_tree(LOG_TREE).map_err(open_err)?;

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
            Ok((meta, log, db_file))
        })();
        // On an I/O error, dropping sled would flush again and may hang (see `abandon`).
        let (meta, log, db_file) = opened.inspect_err(|_| std::mem::forget(db.clone()))?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                meta,
                log,
                db_file,
                synced_blobs: Mutex::new(BTreeSet::new()),
                sync_count: AtomicU64::new(0),
                snapshots,
                snapshot: Mutex::new(scan.latest),
                log_bytes: AtomicU64::new(0),
                trim: Mutex::new(trim::Trim::default()),
                dir,
                _lock: lock,
            }),
        };
        store
            .sync_new_blobs()
            .and_then(|()| match scan.latest {
                // Finish a compaction a crash interrupted.
                Some(meta) => store.compact_log(meta),
                None => Ok(()),
            })
            .inspect_err(|_| store.clone().abandon())?;
        Ok(store)
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

    /// How many times [`persist`](LogStore::persist) flushed and synced (once per call that
    /// had something to write).
    pub fn sync_count(&self) -> u64 {
        self.inner.sync_count.load(Ordering::Relaxed)
    }

    /// Makes everything written so far durable: sled's flush (which on Linux ends in
    /// `sync_file_range`, not an fsync, sled issue #1452), then `fdatasync` on sled's log file
    /// and on any new blob file.
    fn sync(&self) -> Result<(), StorageError> {
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
            })?;
        self.sync_new_blobs()?;
        inner.sync_count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// fdatasyncs the files under `<dir>/blobs` not synced yet, then the directory itself so
    /// their names survive a crash. Usually the directory is empty and this is one readdir.
    fn sync_new_blobs(&self) -> Result<(), StorageError> {
        let blob_dir = self.inner.dir.join("blobs");
        let sync_err = |cause| StorageError::Sync {
            path: blob_dir.clone(),
            cause,
        };
        let mut synced = self
            .inner
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut present = BTreeSet::new();
        let mut any_new = false;
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(sync_err(e)),
        };
        for entry in entries {
            let name = entry.map_err(sync_err)?.file_name();
            if !synced.contains(&name) {
                let path = blob_dir.join(&name);
                match File::open(&path) {
                    Ok(file) => file
                        .sync_data()
                        .map_err(|cause| StorageError::Sync { path, cause })?,
                    // sled garbage-collected it between readdir and open: nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(cause) => return Err(StorageError::Sync { path, cause }),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            sync_path(&blob_dir)?;
        }
        *synced = present;
        Ok(())
    }

    /// The latest snapshot's meta, locked (see [`Inner::snapshot`]).
    fn lock_snapshot(&self) -> std::sync::MutexGuard<'_, Option<SnapshotMeta>> {
        self.inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Index of the last entry the latest snapshot covers (0 without one).
    fn snapshot_index(&self) -> LogIndex {
        self.lock_snapshot().map_or(0, |m| m.index)
    }

    /// An upper bound on the bytes of log the node has written since its latest snapshot:
    /// the encoded size of the entries `load` returned plus every entry persisted since
    /// (entries later overwritten by a conflicting suffix still count until the next
    /// snapshot), reset by `install_snapshot` to the size of the entries it keeps. The driver
    /// compares it with its size threshold to decide when to snapshot. Valid after `load`.
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

    /// Step 3 of `install_snapshot` (and redone at start-up): removes from sled the entries
    /// `meta` covers, in one batch made durable with one sync. If the stored entry at
    /// `meta.index` has `meta.term`, the entries after it stay; otherwise the log is another
    /// history (or too short) and all of it goes. Does nothing, and does not sync, when no
    /// stored entry is at or below `meta.index`.
    fn compact_log(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let log = &self.inner.log;
        let read_err = |e: sled::Error| self.sled_err("read the log", &e);
        let Some((first, _)) = log.first().map_err(read_err)? else {
            return Ok(());
        };
        if index_of_key(&first).is_some_and(|i| i > meta.index) {
            return Ok(());
        }
        let keeps_tail = match log.get(log_key(meta.index)).map_err(read_err)? {
            Some(raw) => {
                let entry: Entry = decode_value(&raw)
                    .map_err(|reason| self.corrupt(entry_name(meta.index), reason))?;
                entry.term == meta.term
            }
            None => false,
        };
        let mut batch = sled::Batch::default();
        let mut kept_bytes = 0u64;
        for item in log.iter() {
            let (key, value) = item.map_err(read_err)?;
            if keeps_tail && index_of_key(&key).is_some_and(|i| i > meta.index) {
                kept_bytes += value.len() as u64;
            } else {
                batch.remove(key);
            }
        }
        log.apply_batch(batch)
            .map_err(|e| self.sled_err("remove the compacted log", &e))?;
        self.sync()?;
        self.trim_done_to(meta.index);
        self.inner.log_bytes.store(kept_bytes, Ordering::Relaxed);
        Ok(())
    }

    fn sled_err(&self, op: &'static str, e: &sled::Error) -> StorageError {
        StorageError::Sled {
            dir: self.inner.dir.clone(),
            op,
            cause: describe_sled(e),
        }
    }

    fn corrupt(&self, what: String, reason: String) -> StorageError {
        StorageError::Corrupt {
            dir: self.inner.dir.clone(),
            what,
            reason,
        }
    }

    fn encode_err(&self, what: String, cause: postcard::Error) -> StorageError {
        StorageError::Encode {
            dir: self.inner.dir.clone(),
            what,
            cause,
        }
    }

    /// The `log` batch for `entries`: insert them, and remove every stored entry after the
    /// last of them (those before it are overwritten by the inserts). Also returns the bytes
    /// of the values it inserts.
    fn log_batch(&self, entries: &[Entry]) -> Result<(sled::Batch, u64), StorageError> {
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        let Some(last) = entries.last() else {
            return Ok((batch, bytes));
        };
        debug_assert!(
            entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "invariant: a persisted batch of entries is contiguous"
        );
        for entry in entries {
            let hint = match &entry.payload {
                Payload::Noop => 24,
                Payload::Command(data) => data.len() + 32,
            };
            let value = encode_value(entry, hint)
                .map_err(|e| self.encode_err(format!("log entry {}", entry.index), e))?;
            bytes += value.len() as u64;
            batch.insert(&log_key(entry.index), value);
        }
        // Usually an empty range: only a conflicting longer suffix has entries past `last`.
        for item in self
            .inner
            .log
            .range(log_key(last.index.saturating_add(1))..)
        {
            let (key, _) = item.map_err(|e| self.sled_err("read the log", &e))?;
            batch.remove(key);
        }
        Ok((batch, bytes))
    }
}

impl LogStore for SledStore {
    type Error = StorageError;

    /// Loads the hard state and the log after the latest snapshot, checking every checksum
    /// and that the log is contiguous from the snapshot's index + 1 (or from 1). Entries the
    /// snapshot covers are skipped unread; if the stored entry at the snapshot's index has
    /// another term (only possible if a compaction was interrupted and not redone), no entry
    /// is returned.
    fn load(&self) -> Result<(HardState, Vec<Entry>), StorageError> {
        let inner = &self.inner;
        let hard_state = match inner
            .meta
            .get(HARD_STATE_KEY)
            .map_err(|e| self.sled_err("read the hard state", &e))?
        {
            Some(raw) => {
                decode_value(&raw).map_err(|reason| self.corrupt("hard state".into(), reason))?
            }
            None => HardState::default(),
        };
        let snapshot = *self.lock_snapshot();
        let offset = snapshot.map_or(0, |m| m.index);
        // No capacity hint: sled's `len()` walks the whole tree, doubling the cost of a load.
        let mut log = Vec::new();
        let mut bytes = 0u64;
        let mut expected: LogIndex = offset.saturating_add(1);
        for item in inner.log.range(log_key(offset)..) {
            let (key, raw) = item.map_err(|e| self.sled_err("read the log", &e))?;
            let Some(index) = index_of_key(&key) else {
                return Err(self.corrupt(
                    format!("log key {key:?} of tree \"log\""),
                    "not an 8-byte index".to_owned(),
                ));
            };
            let entry: Entry =
                decode_value(&raw).map_err(|reason| self.corrupt(entry_name(index), reason))?;
            if entry.index != index {
                return Err(self.corrupt(
                    entry_name(index),
                    format!("stored under index {index} but says index {}", entry.index),
                ));
            }
            if let Some(meta) = snapshot.filter(|m| m.index == index) {
                if entry.term != meta.term {
                    // Another history than the snapshot's: none of it is this node's log.
                    debug_assert!(
                        log.is_empty(),
                        "invariant: the snapshot's entry comes first"
                    );
                    break;
                }
                continue;
            }
            if index != expected {
                let from = match snapshot {
                    Some(m) => format!("{} (the snapshot ends at index {})", m.index + 1, m.index),
                    None => "1".to_owned(),
                };
                return Err(self.corrupt(
                    entry_name(index),
                    format!("expected index {expected}: the log must be contiguous from {from}"),
                ));
            }
            bytes += raw.len() as u64;
            log.push(entry);
            expected = index.saturating_add(1);
        }
        inner.log_bytes.store(bytes, Ordering::Relaxed);
        Ok((hard_state, log))
    }

    /// Writes the hard state and entries in one atomic sled write (a transaction over both
    /// trees when both change, so a crash never keeps one without the other), then flushes and
    /// fdatasyncs once. A call with nothing to write returns at once without syncing.
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        // Entries the snapshot covers are committed, so already in it: never store them.
        let offset = self.snapshot_index();
        let entries = &entries[entries.partition_point(|e| e.index <= offset)..];
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let hard_state = hard_state
            .map(|hs| encode_value(hs, 32))
            .transpose()
            .map_err(|e| self.encode_err("hard state".into(), e))?;
        let write_err = |e: &sled::Error| self.sled_err("write the hard state and log", e);
        let (mut batch, bytes) = self.log_batch(entries)?;
        // Entries a published snapshot covers go a few at a time, in batches written anyway.
        let trimmed = match (&hard_state, entries.is_empty()) {
            (Some(_), true) => None,
            _ => self.add_trim(&mut batch, entries.len()),
        };
        match (hard_state, entries.is_empty()) {
            (Some(hs), true) => {
                inner
                    .meta
                    .insert(HARD_STATE_KEY, hs)
                    .map_err(|e| write_err(&e))?;
            }
            (None, _) => {
                inner.log.apply_batch(batch).map_err(|e| write_err(&e))?;
            }
            (Some(hs), false) => {
                (&inner.meta, &inner.log)
                    .transaction(|(meta, log)| {
                        meta.insert(HARD_STATE_KEY, hs.as_slice())?;
                        log.apply_batch(&batch)?;
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| match e {
                        TransactionError::Storage(e) => write_err(&e),
                        // The closure never aborts.
                        TransactionError::Abort(()) => {
                            write_err(&sled::Error::Unsupported("transaction aborted".into()))
                        }
                    })?;
            }
        }
        self.sync()?;
        inner.log_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(next) = trimmed {
            self.trimmed(next);
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

    /// Publishes `snapshot` (write `.tmp`, fdatasync, rename, fsync the dir), then removes the
    /// log entries it covers from sled (one batch, one sync), then older snapshot files.
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

/// How a corruption message names log entry `index`: its index and its sled key.
fn entry_name(index: LogIndex) -> String {
    format!("log entry {index} (key {index:016x} of tree \"log\")")
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

mod trim;

#[cfg(test)]
mod tests;
