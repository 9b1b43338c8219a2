//! [`SegmentLog`]: the Raft log in append-only segment files we write ourselves
//! (`<data-dir>/log/`), one write and one `fdatasync` per persisted batch.
//!
//! ```text
//! <data-dir>/log/segment-<seq, 20 digits>.log    seq 1, 2, 3, ...: replayed in seq order
//!
//! record:  offset  size  field
//!               0     4  len: bytes of kind + body, u32 little-endian
//!               4     4  CRC32 (crc32fast, IEEE) of kind + body, u32 LE
//!               8     1  kind: 1 = Entries, 2 = Snapshot
//!               9   len-1  body
//!
//! Entries body:  commit hint u64 | count u32 | count x (index u64 | term u64 |
//!                payload tag u8 (0 = Noop, 1 = Command, 2 = ConfChange) | data length u32 |
//!                data: a command's bytes, or a `raft::ConfEntry`'s encoding)
//! Snapshot body: index u64 | term u64 | last u64 | commit hint u64
//! Chain body:    previous segment's seq u64 | highest entry index written in it u64
//! ```
//! All integers are little-endian. Segment names carry a sequence number, not an index:
//! truncations make indexes go back, so indexes are not monotonic across segments.
//!
//! # Replay
//! Records are replayed in order into a log (a list of entries in index order, not
//! necessarily starting at 1):
//! - Entries: drop every entry at or after the first entry's index, then append the entries
//!   (exactly `persist`'s contract); the commit hint becomes the loaded commit index. A batch
//!   that only moves the commit index is an Entries record with no entries.
//! - Snapshot: keep only the entries in `(index, last]`. `last` is the decision compaction
//!   took when it wrote the record, from the log as it was: the log's last index if it held
//!   entry `index` with `term` (the node's own snapshot keeps the entries after it), `index`
//!   if that entry has another term (another history, Raft Figure 13 step 7: nothing is
//!   kept), and without such an entry whatever the log holds after `index` (nothing for a
//!   log shorter than the snapshot; see `keep_after`).
//!
//! # Segments, and why deleting them needs no care
//! Every write goes to the last (active) segment. When it would grow past
//! [`SEGMENT_BYTES`], a new segment is created and the log dir fsynced before its first record
//! is written. The active segment is preallocated ahead of its records, [`PREALLOC_BYTES`] of
//! zeros at a time, written and synced once, so records overwrite it in place and their
//! `fdatasync` has no file size to commit. Records end where only zeros follow. Compaction
//! appends a Snapshot record (synced), then unlinks every other segment whose entries are all
//! at or below the snapshot's index, except the one holding the latest Snapshot record (the
//! only record that says which entries after the snapshot to keep); the unlinks are made
//! durable by the next directory fsync (the next new segment, or the next start).
//!
//! Every segment but the first starts with a Chain record: the seq of the segment before it
//! and the highest entry index written there. At open, a segment whose predecessor is
//! missing is fine only if that index is covered by the latest Snapshot record or snapshot
//! file (compaction unlinked it); otherwise the lost segment is named in a
//! [`StorageError::Corrupt`]. (Segments an older kvstore wrote have no Chain record and are
//! not checked; an older kvstore cannot read a log with Chain records.) At open, the latest
//! Snapshot record is also checked against the newest snapshot file: the file must be there,
//! with the record's term, or newer.
//!
//! So after a crash any subset of the segments deleted by compactions may reappear, and
//! replay is still exact: a deleted record only wrote or truncated at indexes at or below its
//! compaction's index S, which the (present, later) Snapshot record for S drops; entries
//! above S that a missing truncation would have removed are beyond the log's last index when
//! that record was written, so its `last` drops them. That is why the record carries `last`
//! rather than letting replay re-decide from a log that may miss its prefix.
//!
//! # Torn writes
//! A record that fails its length or checksum at the end of the last segment is a write a
//! crash cut short: `persist` had not returned, so nothing depended on it. Start-up cuts it
//! off, overwriting it with zeros (logged at info). Anywhere else (a bad record followed by a
//! valid one, or in an earlier segment, all of whose writes were synced) it is
//! [`StorageError::CorruptLog`], naming the file and the byte offset.
//!
//! "Followed by a valid record" is searched for only after the end the bad record's header
//! claims (nothing, if the header reads length 0: an unwritten header): only the last record
//! written can be torn, and its own bytes, mostly a client's data, may look like a record.
//! So client bytes cannot turn a tear into a fatal error. The price: damage that zeroes a
//! length field in the middle of the last segment passes for a tear, and the records after
//! it are cut off (their entries were acknowledged; the leader sends them again to a
//! follower, a lone node loses them).

use super::error::StorageError;
use super::fs::{sync_dir, sync_file, Fs, FsFile, Mode, RealFs};
use crate::raft::{Entry, HardState, LogIndex, Payload, SnapshotMeta, Term};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Name of the log directory inside the data dir.
pub(crate) const LOG_DIR: &str = "log";
/// A segment takes new records until it holds this many bytes (a single record may pass it).
pub(crate) const SEGMENT_BYTES: u64 = 4 << 20;
/// The active segment is zero-filled this far ahead of its records (up to [`SEGMENT_BYTES`]).
pub(crate) const PREALLOC_BYTES: u64 = 1 << 20;
const PREFIX: &str = "segment-";
const SUFFIX: &str = ".log";
/// Length and CRC.
const HEADER_LEN: usize = 8;
const KIND_ENTRIES: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
const KIND_CHAIN: u8 = 3;
/// A whole Chain record: header, kind, previous seq, previous max index.
const CHAIN_LEN: u64 = (HEADER_LEN + 1 + 8 + 8) as u64;
/// index, term, payload tag, data length.
const ENTRY_HEADER_LEN: usize = 8 + 8 + 1 + 4;
const TAG_NOOP: u8 = 0;
const TAG_COMMAND: u8 = 1;
/// A membership change (issue 15), its data `ConfEntry::encode`. A new tag: logs written
/// before it stay readable as they were.
const TAG_CONF_CHANGE: u8 = 2;

/// Bytes entry `entry` takes in an Entries record (what `log_bytes_since_snapshot` counts).
pub(crate) fn entry_len(entry: &Entry) -> u64 {
    let data = match &entry.payload {
        Payload::Noop => 0,
        Payload::Command(data) => data.len(),
        Payload::ConfChange(conf) => conf.encoded_len(),
    };
    (ENTRY_HEADER_LEN + data) as u64
}

/// The log as replayed: its entries after the latest snapshot and the last commit hint.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Index order, contiguous.
    pub(crate) entries: Vec<Entry>,
    /// The commit hint of the last record, if any record was replayed.
    pub(crate) commit: Option<LogIndex>,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest index of an entry written in it (0 if none): once a snapshot covers it,
    /// its entries are not needed any more.
    max_index: LogIndex,
    /// The index of the latest Snapshot record written in it (0 if none). The segment holding
    /// the log's latest Snapshot record is never unlinked: without that record, replay would
    /// have to re-decide which entries after the snapshot to keep.
    snapshot: LogIndex,
    /// Its Chain record's highest index of the segment before it (`None` without one: the
    /// first segment, or one an older kvstore wrote).
    chain: Option<LogIndex>,
}

/// The term and record size of each entry of the log after the snapshot, so compaction can
/// decide what to keep, and count what it keeps, without reading the files.
#[derive(Debug, Default)]
struct Tail {
    /// Index of `entries[0]` (the snapshot's index + 1, or 1).
    first: LogIndex,
    entries: VecDeque<(Term, u64)>,
}

impl Tail {
    fn new(first: LogIndex, entries: &[Entry]) -> Self {
        Tail {
            first,
            entries: entries.iter().map(|e| (e.term, entry_len(e))).collect(),
        }
    }

    /// Index of the last entry (`first - 1` when empty).
    fn last(&self) -> LogIndex {
        self.first + self.entries.len() as u64 - 1
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        let at = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.entries.get(at).map(|&(term, _)| term)
    }

    /// `persist`'s contract: drop every entry from the first of `entries` on, append them.
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        debug_assert!(
            first.index >= self.first && first.index <= self.last() + 1,
            "invariant: an appended batch starts inside the log or right after it"
        );
        let keep = usize::try_from(first.index.saturating_sub(self.first)).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.entries
            .extend(entries.iter().map(|e| (e.term, entry_len(e))));
    }

    /// Keeps the entries in `(index, last]`; returns their bytes.
    fn compact(&mut self, index: LogIndex, last: LogIndex) -> u64 {
        let keep = usize::try_from(last.saturating_sub(index)).unwrap_or(usize::MAX);
        let skip = usize::try_from((index + 1).saturating_sub(self.first)).unwrap_or(usize::MAX);
        self.entries.drain(..skip.min(self.entries.len()));
        self.entries.truncate(keep);
        self.first = index + 1;
        self.bytes()
    }

    fn bytes(&self) -> u64 {
        self.entries.iter().map(|&(_, bytes)| bytes).sum()
    }
}

/// The segment files of one data dir, open for appending. Owned by one writer at a time (the
/// store keeps it behind a mutex).
#[derive(Debug)]
pub(crate) struct SegmentLog<F: Fs = RealFs> {
    fs: F,
    dir: PathBuf,
    /// [`SEGMENT_BYTES`] (smaller in tests and simulations, so segments roll often).
    segment_bytes: u64,
    /// [`PREALLOC_BYTES`], at most `segment_bytes`.
    prealloc_bytes: u64,
    /// Seq order; the last is the active one.
    segments: Vec<Segment>,
    /// The active segment, open for writing at `active_len`.
    active: F::File,
    /// Where its records end: every byte before is a synced record, every byte after is zero.
    active_len: u64,
    /// Its file length: zeros from `active_len` on, synced.
    active_alloc: u64,
    /// Where its first record after the Chain record starts (0 or [`CHAIN_LEN`]): a segment
    /// holding nothing more takes any record.
    active_start: u64,
    /// Reused for every record, so a persist allocates nothing once it has grown.
    buf: Vec<u8>,
    tail: Tail,
    /// The last commit hint written or replayed.
    commit: Option<LogIndex>,
    /// The index of the last Snapshot record written or replayed (0 if none).
    snapshot_index: LogIndex,
}

impl SegmentLog {
    /// [`open_in`](Self::open_in) the real file system.
    ///
    /// # Errors
    /// As `open_in`.
    pub(crate) fn open(
        data_dir: &Path,
        snapshot: Option<SnapshotMeta>,
    ) -> Result<(Self, Replayed), StorageError> {
        Self::open_in(RealFs, data_dir, snapshot)
    }
}

impl<F: Fs> SegmentLog<F> {
    /// Opens (creating if needed) `<data_dir>/log`, replays it, truncates a torn write at the
    /// end of the last segment, and brings it in line with `snapshot`, the latest published
    /// snapshot: if no Snapshot record for it was written (a crash right after its rename),
    /// this compaction is done now. Returns the log and the loaded log.
    ///
    /// # Errors
    /// A file cannot be created, read, truncated or synced; a record is corrupt; the replayed
    /// log has a gap.
    pub(crate) fn open_in(
        fs: F,
        data_dir: &Path,
        snapshot: Option<SnapshotMeta>,
    ) -> Result<(Self, Replayed), StorageError> {
        Self::open_sized(fs, data_dir, snapshot, SEGMENT_BYTES)
    }

    /// [`open_in`](Self::open_in) with segments of `segment_bytes` instead of
    /// [`SEGMENT_BYTES`].
    ///
    /// # Errors
    /// As `open_in`.
    pub(crate) fn open_sized(
        fs: F,
        data_dir: &Path,
        snapshot: Option<SnapshotMeta>,
        segment_bytes: u64,
    ) -> Result<(Self, Replayed), StorageError> {
        let prealloc_bytes = PREALLOC_BYTES.min(segment_bytes);
        let dir = data_dir.join(LOG_DIR);
        fs.create_dir_all(&dir)
            .map_err(|cause| StorageError::File {
                path: dir.clone(),
                op: "create",
                cause,
            })?;
        let mut segments = list_segments(&fs, &dir)?;
        let mut replay = Replay::default();
        let count = segments.len();
        let mut active_len = 0;
        for (i, segment) in segments.iter_mut().enumerate() {
            let raw = read_file(&fs, &segment.path)?;
            let (end, torn) = replay.segment(&raw, &segment.path, i + 1 == count)?;
            segment.max_index = replay.max_index;
            segment.snapshot = replay.segment_snapshot;
            segment.chain = replay.segment_chain;
            if torn {
                tracing::info!(
                    file = %segment.path.display(),
                    offset = end,
                    "log segment ended in a torn write (a crash mid-persist), cut off there"
                );
                zero_from(&fs, &segment.path, end as u64, (raw.len() - end) as u64)?;
            } else {
                // What was replayed must be durable before anything relies on it: a record
                // whose persist failed (or was killed) before its `fdatasync` may be in the
                // page cache only, and the node is about to treat it as its log.
                sync_file(&fs, &segment.path)?;
            }
            active_len = end as u64;
        }
        if segments.is_empty() {
            segments.push(create_segment(&fs, &dir, 1, prealloc_bytes)?.0);
        }
        let active_path = &segments[segments.len() - 1].path;
        let active = fs
            .open(active_path, Mode::ReadWrite)
            .map_err(|cause| StorageError::File {
                path: active_path.clone(),
                op: "open",
                cause,
            })?;
        let stat_err = |cause| StorageError::File {
            path: active_path.clone(),
            op: "stat",
            cause,
        };
        let active_alloc = active.size().map_err(stat_err)?;
        let active_chain = if segments[segments.len() - 1].chain.is_some() {
            CHAIN_LEN
        } else {
            0
        };
        // New files, unlinks a crash interrupted, and the dir's own name.
        sync_dir(&fs, &dir)?;
        sync_dir(&fs, data_dir)?;
        let mut log = SegmentLog {
            fs,
            dir,
            segment_bytes,
            prealloc_bytes,
            segments,
            active,
            active_len,
            active_alloc,
            active_start: active_len.min(active_chain),
            buf: Vec::new(),
            tail: Tail::default(),
            commit: replay.commit,
            snapshot_index: replay.snapshot_index,
        };
        check_snapshot_file(&log.dir, replay.latest_record, snapshot)?;
        // Compaction unlinks only what a Snapshot record covers, and writes that record only
        // once its snapshot file is published.
        let covered = snapshot.map_or(0, |m| m.index).max(replay.snapshot_index);
        check_chain(&log.dir, &log.segments, covered)?;
        match snapshot {
            Some(meta) if meta.index > log.snapshot_index => {
                // The snapshot was published but its record not written: compact now, with
                // the decision `compact` takes.
                let log_entries = &replay.entries;
                let at = log_entries.partition_point(|e| e.index < meta.index);
                let term_at = log_entries
                    .get(at)
                    .filter(|e| e.index == meta.index)
                    .map(|e| e.term);
                let last_index = log_entries.last().map_or(meta.index, |e| e.index);
                let last = keep_after(meta, term_at, last_index);
                log.record_snapshot(meta, last)?;
                replay.snapshot(meta.index, last);
            }
            _ => log.remove_covered()?,
        }
        let entries = settle(replay.entries, snapshot).map_err(|e| log.gap(e))?;
        log.tail = Tail::new(snapshot.map_or(1, |m| m.index + 1), &entries);
        let commit = log.commit;
        Ok((log, Replayed { entries, commit }))
    }

    /// Replays the segment files as they are now (they hold only complete, synced records),
    /// then applies `snapshot` as [`open`](Self::open) does.
    ///
    /// # Errors
    /// A file cannot be read; a record is corrupt; the log has a gap.
    pub(crate) fn read(&self, snapshot: Option<SnapshotMeta>) -> Result<Replayed, StorageError> {
        let mut replay = Replay::default();
        for segment in &self.segments {
            let raw = read_file(&self.fs, &segment.path)?;
            replay.segment(&raw, &segment.path, false)?;
        }
        let entries = settle(replay.entries, snapshot).map_err(|e| self.gap(e))?;
        Ok(Replayed {
            entries,
            commit: replay.commit,
        })
    }

    /// The hard state `load` returns: `stored`'s term and vote, the commit index of the last
    /// record (if any, else `stored`'s).
    pub(crate) fn loaded_hard_state(&self, stored: HardState) -> HardState {
        HardState {
            commit: self.commit.unwrap_or(stored.commit),
            ..stored
        }
    }

    /// Bytes of the entries after the snapshot (as [`entry_len`] counts them).
    pub(crate) fn tail_bytes(&self) -> u64 {
        self.tail.bytes()
    }

    /// Appends one Entries record (`entries` may be empty: a commit-only batch) and makes it
    /// durable: one `write`, one `fdatasync` (plus a directory fsync if a new segment had to
    /// be started). Returns the bytes of the entries written.
    ///
    /// # Errors
    /// The write or the sync failed: the node must stop.
    pub(crate) fn append(
        &mut self,
        commit: LogIndex,
        entries: &[Entry],
    ) -> Result<u64, StorageError> {
        debug_assert!(
            entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "invariant: a persisted batch of entries is contiguous"
        );
        let count = u32::try_from(entries.len()).map_err(|_| too_large(&self.dir))?;
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.push(KIND_ENTRIES);
        buf.extend_from_slice(&commit.to_le_bytes());
        buf.extend_from_slice(&count.to_le_bytes());
        let mut bytes = 0;
        let mut conf_bytes;
        for entry in entries {
            buf.extend_from_slice(&entry.index.to_le_bytes());
            buf.extend_from_slice(&entry.term.to_le_bytes());
            let data: &[u8] = match &entry.payload {
                Payload::Noop => {
                    buf.push(TAG_NOOP);
                    &[]
                }
                Payload::Command(data) => {
                    buf.push(TAG_COMMAND);
                    data
                }
                Payload::ConfChange(conf) => {
                    buf.push(TAG_CONF_CHANGE);
                    conf_bytes = conf.encode();
                    &conf_bytes
                }
            };
            let len = u32::try_from(data.len()).map_err(|_| too_large(&self.dir))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(data);
            bytes += entry_len(entry);
        }
        let max_index = entries.last().map_or(0, |e| e.index);
        self.write_record(max_index, 0)?;
        self.tail.append(entries);
        self.commit = Some(commit);
        Ok(bytes)
    }

    /// The log's part of `LogStore::persist`: appends `entries` and the commit index of
    /// `hard_state` (else the last one written, else `stored_commit`) as one record, if either
    /// is new. Returns the bytes of the entries written, or `None` if nothing was written.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub(crate) fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        stored_commit: LogIndex,
        entries: &[Entry],
    ) -> Result<Option<u64>, StorageError> {
        let commit = match hard_state {
            Some(hs) => hs.commit,
            None => self.commit.unwrap_or(stored_commit),
        };
        if entries.is_empty() && self.commit == Some(commit) {
            return Ok(None);
        }
        self.append(commit, entries).map(Some)
    }

    /// Compaction after `snapshot` was published: appends and syncs a Snapshot record, then
    /// unlinks the segments it makes useless. Keeps the entries after `snapshot.index` if the
    /// log holds entry `snapshot.index` with `snapshot.term`, else none. Returns the bytes of
    /// the entries kept. Does nothing for a snapshot not newer than the last one recorded.
    ///
    /// # Errors
    /// Writing, syncing or unlinking failed: the node must stop.
    pub(crate) fn compact(&mut self, snapshot: SnapshotMeta) -> Result<u64, StorageError> {
        if snapshot.index <= self.snapshot_index {
            return Ok(self.tail.bytes());
        }
        let last = keep_after(
            snapshot,
            self.tail.term_at(snapshot.index),
            self.tail.last(),
        );
        self.record_snapshot(snapshot, last)?;
        Ok(self.tail.compact(snapshot.index, last))
    }

    /// Appends and syncs the Snapshot record `(snapshot, last)`, then unlinks the segments it
    /// makes useless.
    fn record_snapshot(
        &mut self,
        snapshot: SnapshotMeta,
        last: LogIndex,
    ) -> Result<(), StorageError> {
        let commit = self.commit.unwrap_or(0);
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.push(KIND_SNAPSHOT);
        for field in [snapshot.index, snapshot.term, last, commit] {
            buf.extend_from_slice(&field.to_le_bytes());
        }
        self.write_record(0, snapshot.index)?;
        self.snapshot_index = snapshot.index;
        self.commit = Some(commit);
        self.remove_covered()
    }

    /// Unlinks the segments before the active one whose entries the last Snapshot record
    /// covers, except the one holding that record.
    fn remove_covered(&mut self) -> Result<(), StorageError> {
        let active = self.segments.len() - 1;
        let covered = self.snapshot_index;
        let mut kept = Vec::with_capacity(self.segments.len());
        for (i, segment) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            let holds_record = segment.snapshot == covered && !mutation::lost_snapshot_record();
            if i < active && segment.max_index <= covered && !holds_record {
                self.fs
                    .remove(&segment.path)
                    .map_err(|cause| StorageError::File {
                        path: segment.path.clone(),
                        op: "remove",
                        cause,
                    })?;
            } else {
                kept.push(segment);
            }
        }
        self.segments = kept;
        Ok(())
    }

    /// Fills in the header of the record in `buf`, starts a new segment if the active one is
    /// full, then writes the record with one `write` and syncs it. The write lands in the
    /// preallocated part of the file (unless a record is larger than a segment), so the
    /// `fdatasync` has no file size to commit: on ext4 it then costs a data flush instead of a
    /// journal commit (measured: 3 ms -> 0.2 ms per persist on the test VM).
    /// `max_index` is the highest entry index the record writes (0 if none), `snapshot` the
    /// index of a Snapshot record (0 for an Entries record).
    fn write_record(
        &mut self,
        max_index: LogIndex,
        snapshot: LogIndex,
    ) -> Result<(), StorageError> {
        seal(&mut self.buf, &self.dir)?;
        let record_len = self.buf.len() as u64;
        if self.active_len > self.active_start && self.active_len + record_len > self.segment_bytes
        {
            self.roll()?;
        }
        self.reserve(self.active_len + record_len)?;
        let active = self.segments.len() - 1;
        let segment = &mut self.segments[active];
        let io_err = |op, cause| StorageError::File {
            path: segment.path.clone(),
            op,
            cause,
        };
        self.active
            .write_all_at(&self.buf, self.active_len)
            .map_err(|cause| io_err("write", cause))?;
        self.active
            .sync_data()
            .map_err(|cause| StorageError::Sync {
                path: segment.path.clone(),
                cause,
            })?;
        self.active_len += record_len;
        segment.max_index = segment.max_index.max(max_index);
        segment.snapshot = segment.snapshot.max(snapshot);
        Ok(())
    }

    /// Zero-fills the active segment up to at least `end`, [`PREALLOC_BYTES`] at a time (up to
    /// [`SEGMENT_BYTES`]), synced: one fsync per step, and the `fdatasync` of every record
    /// before the next step has no file size to commit. A record larger than a segment (alone
    /// in it) is simply appended.
    fn reserve(&mut self, end: u64) -> Result<(), StorageError> {
        if end <= self.active_alloc || end > self.segment_bytes {
            return Ok(());
        }
        let target = (self.active_alloc + self.prealloc_bytes)
            .min(self.segment_bytes)
            .max(end);
        let path = &self.segments[self.segments.len() - 1].path;
        zero(
            &self.active,
            path,
            self.active_alloc,
            target - self.active_alloc,
        )?;
        self.active_alloc = target;
        Ok(())
    }

    /// Starts a new segment, durably: created, then the directory fsynced (which also makes
    /// earlier unlinks durable).
    /// Its first record is a Chain record naming the segment before it and the highest index
    /// written there (made durable by the `fdatasync` of the record that follows it), so a
    /// start that finds that segment missing while no snapshot covers it says so.
    fn roll(&mut self) -> Result<(), StorageError> {
        let (prev_seq, prev_max) = self
            .segments
            .last()
            .map_or((0, 0), |s| (s.seq, s.max_index));
        let seq = prev_seq + 1;
        let (mut segment, file) = create_segment(&self.fs, &self.dir, seq, self.prealloc_bytes)?;
        sync_dir(&self.fs, &self.dir)?;
        let mut chain = Vec::with_capacity(CHAIN_LEN as usize);
        chain.extend_from_slice(&[0; HEADER_LEN]);
        chain.push(KIND_CHAIN);
        chain.extend_from_slice(&prev_seq.to_le_bytes());
        chain.extend_from_slice(&prev_max.to_le_bytes());
        seal(&mut chain, &self.dir)?;
        file.write_all_at(&chain, 0)
            .map_err(|cause| StorageError::File {
                path: segment.path.clone(),
                op: "write",
                cause,
            })?;
        segment.chain = Some(prev_max);
        self.segments.push(segment);
        self.active = file;
        self.active_len = CHAIN_LEN;
        self.active_start = CHAIN_LEN;
        self.active_alloc = self.prealloc_bytes;
        Ok(())
    }

    fn gap(&self, (index, reason): (LogIndex, String)) -> StorageError {
        StorageError::Corrupt {
            dir: self.dir.clone(),
            what: format!("log entry {index}"),
            reason,
        }
    }

    /// The segment files, in seq order (for tests).
    #[cfg(test)]
    pub(crate) fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// Indexes of the entries the records replay to, before any snapshot file is applied
    /// (for tests).
    #[cfg(test)]
    pub(crate) fn stored_indexes(&self) -> Vec<LogIndex> {
        let mut replay = Replay::default();
        for segment in &self.segments {
            let raw = read_file(&self.fs, &segment.path).unwrap_or_default();
            let _ = replay.segment(&raw, &segment.path, false);
        }
        replay.entries.iter().map(|e| e.index).collect()
    }
}

/// The replay of records, in order (see the module doc).
#[derive(Debug, Default)]
struct Replay {
    entries: Vec<Entry>,
    commit: Option<LogIndex>,
    snapshot_index: LogIndex,
    /// The Snapshot record with the highest index.
    latest_record: Option<SnapshotMeta>,
    /// The highest index written by the records of the segment being replayed.
    max_index: LogIndex,
    /// The index of the latest Snapshot record of the segment being replayed (0 if none).
    segment_snapshot: LogIndex,
    /// The Chain record of the segment being replayed.
    segment_chain: Option<LogIndex>,
}

impl Replay {
    /// Replays the records of one segment file (`raw`, at `path`); returns where its records
    /// end, and whether a torn write follows. Records end where only zeros follow (the
    /// preallocated rest). In the `last` segment, a bad record that no valid record follows
    /// is a torn write.
    fn segment(
        &mut self,
        raw: &[u8],
        path: &Path,
        last: bool,
    ) -> Result<(usize, bool), StorageError> {
        let corrupt = |offset: usize, reason: String| StorageError::CorruptLog {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        self.max_index = 0;
        self.segment_snapshot = 0;
        self.segment_chain = None;
        let mut at = 0;
        while at < raw.len() {
            let (kind, body) = match record_at(raw, at) {
                Ok(record) => record,
                Err(_) if all_zero(&raw[at..]) => return Ok((at, false)),
                // Only the last segment may end in a torn write: every earlier one was synced
                // in full before the next was created.
                Err(reason) if !last => return Err(corrupt(at, reason)),
                // Only the last record written can be torn, so a valid record after the end
                // this one claims means it is not a tear. Its own bytes are never searched:
                // they are mostly a client's data, which can look like a record.
                Err(reason) => match claimed_end(raw, at)
                    .and_then(|end| next_valid_record(raw, end))
                {
                    None => return Ok((at, true)),
                    Some(next) => {
                        let reason = format!("{reason}, followed by a valid record at byte {next}");
                        return Err(corrupt(at, reason));
                    }
                },
            };
            let applied = match kind {
                KIND_ENTRIES => self.entries_record(body),
                KIND_SNAPSHOT => self.snapshot_record(body),
                KIND_CHAIN if at == 0 => self.chain_record(body),
                KIND_CHAIN => Err("a chain record after the start of its segment".to_owned()),
                other => Err(format!("unknown record kind {other}")),
            };
            applied.map_err(|reason| corrupt(at, format!("checksum matches but {reason}")))?;
            at += HEADER_LEN + body.len() + 1;
        }
        Ok((at, false))
    }

    fn entries_record(&mut self, body: &[u8]) -> Result<(), String> {
        let mut r = Reader(body);
        let commit = r.u64()?;
        let count = r.u32()?;
        for n in 0..count {
            let index = r.u64()?;
            let term = r.u64()?;
            let payload = match r.u8()? {
                TAG_NOOP => match r.u32()? {
                    0 => Payload::Noop,
                    len => return Err(format!("entry {index} is a no-op with {len} data bytes")),
                },
                TAG_COMMAND => {
                    let len = r.u32()? as usize;
                    Payload::Command(bytes::Bytes::copy_from_slice(r.bytes(len)?))
                }
                TAG_CONF_CHANGE => {
                    let len = r.u32()? as usize;
                    let conf = crate::raft::ConfEntry::decode(r.bytes(len)?)
                        .map_err(|e| format!("entry {index}: {e}"))?;
                    Payload::ConfChange(Box::new(conf))
                }
                tag => return Err(format!("entry {index} has an unknown payload tag {tag}")),
            };
            if n == 0 {
                let keep = self.entries.partition_point(|e| e.index < index);
                self.entries.truncate(keep);
            } else if self.entries.last().map(|e| e.index + 1) != Some(index) {
                return Err(format!("entry {index} does not follow the one before it"));
            }
            self.entries.push(Entry {
                term,
                index,
                payload,
            });
            self.max_index = self.max_index.max(index);
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the last entry", r.0.len()));
        }
        self.commit = Some(commit);
        Ok(())
    }

    fn chain_record(&mut self, body: &[u8]) -> Result<(), String> {
        let mut r = Reader(body);
        let (_prev_seq, prev_max) = (r.u64()?, r.u64()?);
        if !r.0.is_empty() {
            return Err("the chain record is malformed".to_owned());
        }
        self.segment_chain = Some(prev_max);
        Ok(())
    }

    fn snapshot_record(&mut self, body: &[u8]) -> Result<(), String> {
        let mut r = Reader(body);
        let (index, term, last, commit) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        if !r.0.is_empty() || last < index {
            return Err("the snapshot record is malformed".to_owned());
        }
        self.snapshot(index, last);
        self.segment_snapshot = self.segment_snapshot.max(index);
        if self.latest_record.is_none_or(|r| r.index < index) {
            self.latest_record = Some(SnapshotMeta { index, term });
        }
        self.commit = Some(commit);
        Ok(())
    }

    /// Keeps the entries in `(index, last]`.
    fn snapshot(&mut self, index: LogIndex, last: LogIndex) {
        let start = self.entries.partition_point(|e| e.index <= index);
        self.entries.drain(..start);
        let end = self.entries.partition_point(|e| e.index <= last);
        self.entries.truncate(end);
        self.snapshot_index = self.snapshot_index.max(index);
    }
}

/// Fills in the header (length and CRC) of the record in `buf`.
fn seal(buf: &mut [u8], dir: &Path) -> Result<(), StorageError> {
    let len = u32::try_from(buf.len() - HEADER_LEN).map_err(|_| too_large(dir))?;
    let crc = crc32fast::hash(&buf[HEADER_LEN..]);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Checks that no segment is missing whose entries no snapshot covers: every segment whose
/// Chain record names a predecessor that is not there (compaction unlinked it, or it was
/// lost) must have had its entries at or below `covered`.
fn check_chain(dir: &Path, segments: &[Segment], covered: LogIndex) -> Result<(), StorageError> {
    for (i, segment) in segments.iter().enumerate() {
        let Some(prev_max) = segment.chain else {
            continue;
        };
        let present = i > 0 && segments[i - 1].seq + 1 == segment.seq;
        if !present && prev_max > covered {
            return Err(StorageError::Corrupt {
                dir: dir.to_path_buf(),
                what: format!("log segment {}", segment_name(segment.seq - 1)),
                reason: format!(
                    "it is missing, yet {} follows it and says it held entries up to index {prev_max}, which no snapshot covers",
                    segment_name(segment.seq)
                ),
            });
        }
    }
    Ok(())
}

/// Checks the log's latest Snapshot record (if any) against the newest snapshot file: a
/// record is written only once its file is published, durably, so the file must be there,
/// with the record's term (or a newer file: a crash before its record was written).
fn check_snapshot_file(
    dir: &Path,
    record: Option<SnapshotMeta>,
    file: Option<SnapshotMeta>,
) -> Result<(), StorageError> {
    let Some(record) = record else {
        return Ok(());
    };
    let reason = match file {
        Some(file) if file.index > record.index || file == record => return Ok(()),
        Some(file) if file.index == record.index => format!(
            "the snapshot file for index {} has term {}, the record term {}",
            file.index, file.term, record.term
        ),
        Some(file) => format!(
            "its snapshot file is missing: the newest one is for index {} term {}",
            file.index, file.term
        ),
        None => "its snapshot file is missing: there is none".to_owned(),
    };
    Err(StorageError::Corrupt {
        dir: dir.to_path_buf(),
        what: format!(
            "the Snapshot record for index {} term {}",
            record.index, record.term
        ),
        reason,
    })
}

/// What a `LogStore::persist` batch must write, the same for every store: the entries after
/// the snapshot at `offset` (those it covers are committed, so already in it), and the hard
/// state if its term or vote differ from the durable `stored` one (the commit index travels in
/// the log). `None`: nothing to write at all.
pub(crate) fn persist_batch<'a>(
    offset: LogIndex,
    stored: &HardState,
    hard_state: Option<&'a HardState>,
    entries: &'a [Entry],
) -> Option<(Option<&'a HardState>, &'a [Entry])> {
    let entries = &entries[entries.partition_point(|e| e.index <= offset)..];
    if hard_state.is_none() && entries.is_empty() {
        return None;
    }
    let new_vote = hard_state.filter(|hs| (hs.term, hs.vote) != (stored.term, stored.vote));
    Some((new_vote, entries))
}

/// The `last` of a Snapshot record for `snapshot`, given the term of the log's entry at the
/// snapshot's index (if it holds one) and its last index:
/// - the entry has the snapshot's term: that last index (keep the entries after it);
/// - the entry has another term: the snapshot's index (keep nothing; Raft Figure 13 step 7);
/// - there is no such entry: the last index, or the snapshot's index if the log ends before
///   it. A log holding entries after the snapshot's index but not the entry at it lost its
///   prefix to an earlier compaction (the open of a data dir whose latest Snapshot record an
///   older kvstore unlinked, issue 11) or got them from a persist after the snapshot was
///   published: either way they come after the snapshot, and nothing may drop them.
fn keep_after(snapshot: SnapshotMeta, term_at: Option<Term>, last_index: LogIndex) -> LogIndex {
    match term_at {
        Some(term) if term == snapshot.term => last_index,
        Some(_) => snapshot.index,
        None if mutation::lost_snapshot_record() => snapshot.index,
        None => last_index.max(snapshot.index),
    }
}

/// Test-only switches that re-introduce fixed bugs, so the tests that caught them prove they
/// still would (off unless a test turns them on, per thread).
pub(crate) mod mutation {
    #[cfg(test)]
    thread_local! {
        static LOST_SNAPSHOT_RECORD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Issue 11, defect 1: the segment holding the latest Snapshot record may be unlinked,
    /// and a compaction redone with no entry at the snapshot's index keeps nothing after it.
    #[cfg(test)]
    pub(crate) fn lost_snapshot_record() -> bool {
        LOST_SNAPSHOT_RECORD.with(std::cell::Cell::get)
    }

    /// Always off outside tests.
    #[cfg(not(test))]
    pub(crate) const fn lost_snapshot_record() -> bool {
        false
    }

    /// Turns [`lost_snapshot_record`] on or off for this thread.
    #[cfg(test)]
    pub(crate) fn set_lost_snapshot_record(on: bool) {
        LOST_SNAPSHOT_RECORD.with(|flag| flag.set(on));
    }
}

/// The log `load` returns for the replayed `entries` and the latest snapshot: entries the
/// snapshot covers are dropped, and all of them if the entry at its index has another term
/// (only possible before the snapshot's record is written). The rest must be contiguous from
/// the snapshot's index + 1 (or from 1): else the gap's entry index and a reason.
fn settle(
    mut entries: Vec<Entry>,
    snapshot: Option<SnapshotMeta>,
) -> Result<Vec<Entry>, (LogIndex, String)> {
    let offset = snapshot.map_or(0, |m| m.index);
    if let Some(meta) = snapshot {
        let at = entries.partition_point(|e| e.index < meta.index);
        if entries
            .get(at)
            .is_some_and(|e| e.index == meta.index && e.term != meta.term)
        {
            entries.clear();
        }
        let start = entries.partition_point(|e| e.index <= meta.index);
        entries.drain(..start);
    }
    for (expected, entry) in (offset + 1..).zip(&entries) {
        if entry.index != expected {
            let from = match snapshot {
                Some(m) => format!("{} (the snapshot ends at index {})", m.index + 1, m.index),
                None => "1".to_owned(),
            };
            return Err((
                entry.index,
                format!("expected index {expected}: the log must be contiguous from {from}"),
            ));
        }
    }
    Ok(entries)
}

/// The record at byte `at` of `raw`: its kind and body, or why it is not a valid record.
fn record_at(raw: &[u8], at: usize) -> Result<(u8, &[u8]), String> {
    let rest = &raw[at..];
    let Some(header) = rest.get(..HEADER_LEN) else {
        return Err(format!(
            "{} bytes, shorter than a record header",
            rest.len()
        ));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Err("a record of length 0".to_owned());
    }
    let Some(data) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(format!(
            "a record of {len} bytes but only {} left",
            rest.len() - HEADER_LEN
        ));
    };
    if crc32fast::hash(data) != crc {
        return Err("checksum mismatch".to_owned());
    }
    Ok((data[0], &data[1..]))
}

/// Whether `bytes` are all zero (compared a block at a time: fast in any build).
fn all_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Where the (bad) record at `at` ends if its header is what was written: `None` if the
/// header is cut off by the end of the file or says length 0 (a header a crash left
/// unwritten reads as zeros: the record's extent is then unknown, and the tear is taken as
/// the end of the log). A torn header that still reads a length (a crash kept only some of
/// its bytes) claims less than the record wrote; whatever follows in the record is then
/// searched, the one case where a client's bytes still count.
fn claimed_end(raw: &[u8], at: usize) -> Option<usize> {
    let header = raw.get(at..at + HEADER_LEN)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    (len > 0).then_some(at + HEADER_LEN + len)
}

/// The offset of the first valid record starting at or after `from`, if any.
fn next_valid_record(raw: &[u8], from: usize) -> Option<usize> {
    (from..raw.len()).find(|&at| is_record(raw, at))
}

/// Whether a valid record starts at byte `at` of `raw` ([`record_at`] without the reason).
fn is_record(raw: &[u8], at: usize) -> bool {
    let Some(header) = raw.get(at..at + HEADER_LEN) else {
        return false;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    len > 0
        && raw
            .get(at + HEADER_LEN..at + HEADER_LEN + len)
            .is_some_and(|data| crc32fast::hash(data) == crc)
}

/// Reads little-endian fields off the front of a record body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("the record ends {} bytes early", n - self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0; 4];
        b.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0; 8];
        b.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// A batch too large for one record (over 4 GiB, or over 2^32 entries).
fn too_large(dir: &Path) -> StorageError {
    StorageError::File {
        path: dir.to_path_buf(),
        op: "append a record to",
        cause: std::io::Error::other("the batch is too large for one record (over 4 GiB)"),
    }
}

fn segment_name(seq: u64) -> String {
    format!("{PREFIX}{seq:020}{SUFFIX}")
}

/// The seq a segment file name encodes, if it is well formed.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, in seq order. Other files are left alone (with a warning).
fn list_segments(fs: &impl Fs, dir: &Path) -> Result<Vec<Segment>, StorageError> {
    let list_err = |cause| StorageError::File {
        path: dir.to_path_buf(),
        op: "list",
        cause,
    };
    let mut segments = Vec::new();
    for name in fs.list(dir).map_err(list_err)? {
        match name.to_str().and_then(parse_name) {
            Some(seq) => segments.push(Segment {
                seq,
                path: dir.join(&name),
                max_index: 0,
                snapshot: 0,
                chain: None,
            }),
            None => {
                tracing::warn!(dir = %dir.display(), file = ?name, "ignoring a file that is not a log segment")
            }
        }
    }
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

/// Creates segment `seq`, preallocated: [`PREALLOC_BYTES`] of zeros, written and synced
/// (not `fallocate`d: writing into unwritten extents would again change metadata at every
/// sync). The caller fsyncs the directory.
fn create_segment<F: Fs>(
    fs: &F,
    dir: &Path,
    seq: u64,
    prealloc: u64,
) -> Result<(Segment, F::File), StorageError> {
    let path = dir.join(segment_name(seq));
    let file = fs
        .open(&path, Mode::CreateNew)
        .map_err(|cause| StorageError::File {
            path: path.clone(),
            op: "create",
            cause,
        })?;
    zero(&file, &path, 0, prealloc)?;
    Ok((
        Segment {
            seq,
            path,
            max_index: 0,
            snapshot: 0,
            chain: None,
        },
        file,
    ))
}

fn read_file(fs: &impl Fs, path: &Path) -> Result<Vec<u8>, StorageError> {
    fs.read(path).map_err(|cause| StorageError::File {
        path: path.to_path_buf(),
        op: "read",
        cause,
    })
}

/// Writes `len` zeros at `offset` of `file`, then syncs it.
fn zero(file: &impl FsFile, path: &Path, offset: u64, len: u64) -> Result<(), StorageError> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        file.write_all_at(&zeros[..n as usize], offset + done)
            .map_err(|cause| StorageError::File {
                path: path.to_path_buf(),
                op: "write",
                cause,
            })?;
        done += n;
    }
    file.sync_all().map_err(|cause| StorageError::Sync {
        path: path.to_path_buf(),
        cause,
    })
}

/// Overwrites a torn write at `offset` of `path` (`len` bytes to the end) with zeros, durably,
/// so the records written after it are followed by zeros again.
fn zero_from(fs: &impl Fs, path: &Path, offset: u64, len: u64) -> Result<(), StorageError> {
    let file = fs
        .open(path, Mode::ReadWrite)
        .map_err(|cause| StorageError::File {
            path: path.to_path_buf(),
            op: "open",
            cause,
        })?;
    zero(&file, path, offset, len)
}

#[cfg(test)]
mod tests;
