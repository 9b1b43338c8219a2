//! [`SnapshotDir`]: the snapshot files of a data dir (`<dir>/snapshots/`), their format, and
//! the write-new, fsync, rename, fsync-dir sequence that makes a new one durable.
//!
//! ```text
//! snapshot-<index, 20 digits>-<term, 20 digits>.snap
//!
//! offset  size  field
//!      0     8  magic b"KVSNAP\r\n" (the CR LF catches a text-mode copy)
//!      8     4  format version, u32 little-endian (2; 1 is still read)
//!     12     8  last included index, u64 LE (must match the file name)
//!     20     8  last included term, u64 LE (must match the file name)
//!     28     8  body length N, u64 LE (the file is 36 + N + 4 bytes)
//!     36     N  body
//!   36+N     4  CRC32 (crc32fast, IEEE), u32 LE, of bytes 0 .. 36+N
//!
//! version 2 body:  membership length M u32 LE (0: not recorded) | M bytes of
//!                  `raft::Membership::encode` | the state machine's snapshot bytes
//! version 1 body:  the state machine's snapshot bytes (no membership: the configured one)
//! ```
//!
//! A snapshot is first written as `<name>.tmp`; such a file is never read and is removed at
//! the next start.

use super::error::StorageError;
use super::fs::{sync_dir, Fs, FsFile, Mode, RealFs};
use crate::raft::{Membership, Snapshot, SnapshotMeta};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of the snapshot directory inside the data dir.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";
/// First bytes of every snapshot file.
const MAGIC: [u8; 8] = *b"KVSNAP\r\n";
/// Format version this code writes.
const FORMAT_VERSION: u32 = 2;
/// The version before memberships were recorded (issue 15), still read.
const FORMAT_VERSION_NO_MEMBERSHIP: u32 = 1;
/// Bytes before the data.
pub(crate) const HEADER_LEN: usize = 36;
/// Bytes after the data.
const CRC_LEN: usize = 4;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";

/// The snapshot directory of one data dir.
#[derive(Debug)]
pub(crate) struct SnapshotDir<F: Fs = RealFs> {
    fs: F,
    path: PathBuf,
}

/// What [`SnapshotDir::scan`] found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The latest snapshot, its header checked against its name and size (not its CRC).
    pub(crate) latest: Option<SnapshotMeta>,
    /// Leftover `.tmp` files it removed.
    pub(crate) removed_tmp: usize,
    /// Older snapshot files it removed.
    pub(crate) removed_old: usize,
}

impl SnapshotDir {
    /// [`create_in`](Self::create_in) the real file system.
    pub(crate) fn create(data_dir: &Path) -> Result<Self, StorageError> {
        Self::create_in(RealFs, data_dir)
    }
}

impl<F: Fs> SnapshotDir<F> {
    /// Creates `<data_dir>/snapshots` if missing. The caller fsyncs `data_dir` afterwards so
    /// the new directory's name is durable.
    pub(crate) fn create_in(fs: F, data_dir: &Path) -> Result<Self, StorageError> {
        let path = data_dir.join(SNAPSHOT_DIR);
        fs.create_dir_all(&path)
            .map_err(|cause| StorageError::CreateDir {
                dir: path.clone(),
                cause,
            })?;
        Ok(Self { fs, path })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the snapshot `meta` lives once published.
    pub(crate) fn file_path(&self, meta: SnapshotMeta) -> PathBuf {
        self.path.join(file_name(meta))
    }

    /// The start-up pass: removes leftover `.tmp` files, finds the latest snapshot and checks
    /// its header, then removes the older snapshot files (a crash can leave them behind), and
    /// makes the latest file and its name durable.
    ///
    /// # Errors
    /// A file cannot be listed or removed, a `snapshot-*.snap` name is malformed, or the latest
    /// snapshot's header is corrupt. Older files are kept when the latest is corrupt.
    pub(crate) fn scan(&self) -> Result<Scan, StorageError> {
        let mut scan = Scan::default();
        let mut snapshots = Vec::new();
        for name in self.list()? {
            let path = self.path.join(&name);
            if name.ends_with(TMP_SUFFIX) {
                remove(&self.fs, &path)?;
                scan.removed_tmp += 1;
            } else if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
                let meta = parse_name(&name).ok_or_else(|| StorageError::CorruptSnapshot {
                    path: path.clone(),
                    reason: "the name is not snapshot-<index>-<term>.snap".to_owned(),
                })?;
                snapshots.push(meta);
            }
        }
        snapshots.sort_by_key(|m| m.index);
        let Some(&latest) = snapshots.last() else {
            return Ok(scan);
        };
        let path = self.file_path(latest);
        let file = open(&self.fs, &path)?;
        let mut header = [0u8; HEADER_LEN];
        let len = file_len(&file, &path)?;
        read_exact(&file, &mut header, &path, len)?;
        check_header(&header, latest, len).map_err(|reason| StorageError::CorruptSnapshot {
            path: path.clone(),
            reason,
        })?;
        for old in &snapshots[..snapshots.len() - 1] {
            remove(&self.fs, &self.file_path(*old))?;
            scan.removed_old += 1;
        }
        // The latest file may be there only in the page cache (a publish whose directory
        // fsync failed, or was killed, before it): make it durable before the log is
        // compacted against it.
        file.sync_data().map_err(|cause| StorageError::Sync {
            path: path.clone(),
            cause,
        })?;
        sync_dir(&self.fs, &self.path)?;
        scan.latest = Some(latest);
        Ok(scan)
    }

    /// Step 1 of publishing: writes `snapshot` in full to `<name>.tmp` and fdatasyncs it.
    /// Returns the temporary file's path.
    pub(crate) fn write_tmp(&self, snapshot: &Snapshot) -> Result<PathBuf, StorageError> {
        let meta = snapshot.meta;
        let path = self.path.join(format!("{}{TMP_SUFFIX}", file_name(meta)));
        let membership = snapshot
            .membership
            .as_ref()
            .map_or_else(Vec::new, |m| m.encode());
        let mut section = Vec::with_capacity(4 + membership.len());
        let m_len = u32::try_from(membership.len()).map_err(|_| StorageError::CorruptSnapshot {
            path: path.clone(),
            reason: "the membership does not fit in a snapshot file".to_owned(),
        })?;
        section.extend_from_slice(&m_len.to_le_bytes());
        section.extend_from_slice(&membership);
        let header = encode_header(meta, section.len() + snapshot.data.len());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&section);
        crc.update(&snapshot.data);
        let io = |op| {
            let path = path.clone();
            move |cause| StorageError::File { path, op, cause }
        };
        let section_at = HEADER_LEN as u64;
        let data_at = section_at + section.len() as u64;
        let crc_at = data_at + snapshot.data.len() as u64;
        let written = self
            .fs
            .open(&path, Mode::CreateTruncate)
            .map_err(io("create"))
            .and_then(|file| {
                file.write_all_at(&header, 0).map_err(io("write"))?;
                file.write_all_at(&section, section_at)
                    .map_err(io("write"))?;
                file.write_all_at(&snapshot.data, data_at)
                    .map_err(io("write"))?;
                file.write_all_at(&crc.finalize().to_le_bytes(), crc_at)
                    .map_err(io("write"))?;
                file.sync_data().map_err(|cause| StorageError::Sync {
                    path: path.clone(),
                    cause,
                })
            });
        if written.is_err() {
            // Best effort, so a full disk is not kept full by our own leftover (the next
            // start removes it anyway); the write's error is the one that matters.
            let _ = self.fs.remove(&path);
        }
        written.map(|()| path)
    }

    /// Step 2 of publishing: renames the synced `tmp` file to its final name and fsyncs the
    /// directory, so the new name is durable. From here on the snapshot is the latest.
    pub(crate) fn publish(&self, tmp: &Path, meta: SnapshotMeta) -> Result<(), StorageError> {
        let path = self.file_path(meta);
        self.fs
            .rename(tmp, &path)
            .map_err(|cause| StorageError::File {
                path: tmp.to_path_buf(),
                op: "rename",
                cause,
            })?;
        sync_dir(&self.fs, &self.path)
    }

    /// Removes every snapshot file older than `latest`. Not synced: a removal lost in a crash
    /// is redone by the next [`scan`](Self::scan).
    pub(crate) fn remove_older(&self, latest: SnapshotMeta) -> Result<(), StorageError> {
        for name in self.list()? {
            if parse_name(&name).is_some_and(|m| m.index < latest.index) {
                remove(&self.fs, &self.path.join(name))?;
            }
        }
        Ok(())
    }

    /// Opens the published snapshot `meta` for [`read`].
    pub(crate) fn open(&self, meta: SnapshotMeta) -> Result<F::File, StorageError> {
        open(&self.fs, &self.file_path(meta))
    }

    /// Names of the files in the directory.
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let io = |cause| StorageError::File {
            path: self.path.clone(),
            op: "list",
            cause,
        };
        let mut names = Vec::new();
        for name in self.fs.list(&self.path).map_err(io)? {
            // A name that is not UTF-8 is not ours: ignore it like any other stranger.
            if let Ok(name) = name.into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// Reads the snapshot `meta` from the open `file` (at `path`, for messages) and verifies
/// everything: header, length and checksum.
///
/// # Errors
/// The file cannot be read, or is corrupt.
pub(crate) fn read(
    file: impl FsFile,
    path: &Path,
    meta: SnapshotMeta,
) -> Result<Snapshot, StorageError> {
    let len = file_len(&file, path)?;
    let corrupt = |reason| StorageError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason,
    };
    let capacity =
        usize::try_from(len).map_err(|_| corrupt(format!("{len} bytes do not fit in memory")))?;
    let mut buf = vec![0; capacity];
    file.read_exact_at(&mut buf, 0)
        .map_err(|cause| StorageError::File {
            path: path.to_path_buf(),
            op: "read",
            cause,
        })?;
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(corrupt(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            buf.len()
        )));
    };
    let version = check_header(header, meta, buf.len() as u64).map_err(corrupt)?;
    let body_len = buf.len() - CRC_LEN;
    let (body, stored) = buf.split_at(body_len);
    let stored = <[u8; CRC_LEN]>::try_from(stored).map_err(|_| corrupt("no checksum".into()))?;
    if crc32fast::hash(body) != u32::from_le_bytes(stored) {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    let (membership, data_at) = if version == FORMAT_VERSION_NO_MEMBERSHIP {
        (None, HEADER_LEN)
    } else {
        read_membership(&body[HEADER_LEN..]).map_err(corrupt)?
    };
    let data = bytes::Bytes::from(buf).slice(data_at..body_len);
    Ok(Snapshot {
        meta,
        data,
        membership,
    })
}

/// A version 2 body's membership section: the membership and where the data starts in the
/// file.
fn read_membership(body: &[u8]) -> Result<(Option<Membership>, usize), String> {
    let Some(len) = body.first_chunk::<4>() else {
        return Err("truncated membership section".to_owned());
    };
    let len = u32::from_le_bytes(*len) as usize;
    let Some(bytes) = body.get(4..4 + len) else {
        return Err(format!(
            "membership of {len} bytes past the end of the body"
        ));
    };
    let membership = match len {
        0 => None,
        _ => Some(Membership::decode(bytes).map_err(|e| e.to_string())?),
    };
    Ok((membership, HEADER_LEN + 4 + len))
}

/// The file name of snapshot `meta`; zero-padded so names sort like the indexes.
fn file_name(meta: SnapshotMeta) -> String {
    format!("{PREFIX}{:020}-{:020}{SUFFIX}", meta.index, meta.term)
}

/// The meta a snapshot file name encodes, if it is well formed.
fn parse_name(name: &str) -> Option<SnapshotMeta> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (index, term) = middle.split_once('-')?;
    let number = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some(SnapshotMeta {
        index: number(index)?,
        term: number(term)?,
    })
}

fn encode_header(meta: SnapshotMeta, data_len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&meta.index.to_le_bytes());
    header[20..28].copy_from_slice(&meta.term.to_le_bytes());
    header[28..36].copy_from_slice(&(data_len as u64).to_le_bytes());
    header
}

/// Checks a header against the meta its file name gives and the file's length; returns the
/// format version.
fn check_header(header: &[u8; HEADER_LEN], named: SnapshotMeta, len: u64) -> Result<u32, String> {
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if header[..8] != MAGIC {
        return Err("bad magic: not a kvstore snapshot file".to_owned());
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&header[8..12]);
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION && version != FORMAT_VERSION_NO_MEMBERSHIP {
        return Err(format!(
            "format version {version}, this kvstore reads versions {FORMAT_VERSION_NO_MEMBERSHIP} and {FORMAT_VERSION}"
        ));
    }
    let (index, term) = (u64_at(12), u64_at(20));
    if (index, term) != (named.index, named.term) {
        return Err(format!(
            "the header says index {index} term {term} but the name says index {} term {}",
            named.index, named.term
        ));
    }
    let want = u64_at(28)
        .checked_add((HEADER_LEN + CRC_LEN) as u64)
        .ok_or_else(|| "impossible data length".to_owned())?;
    if len != want {
        return Err(format!(
            "truncated or extended: {len} bytes, the header says {want}"
        ));
    }
    Ok(version)
}

fn open<F: Fs>(fs: &F, path: &Path) -> Result<F::File, StorageError> {
    fs.open(path, Mode::Read)
        .map_err(|cause| StorageError::File {
            path: path.to_path_buf(),
            op: "open",
            cause,
        })
}

fn file_len(file: &impl FsFile, path: &Path) -> Result<u64, StorageError> {
    file.size().map_err(|cause| StorageError::File {
        path: path.to_path_buf(),
        op: "stat",
        cause,
    })
}

/// Reads the header, reporting a file shorter than it as corrupt.
fn read_exact(
    file: &impl FsFile,
    buf: &mut [u8],
    path: &Path,
    len: u64,
) -> Result<(), StorageError> {
    if len < buf.len() as u64 {
        return Err(StorageError::CorruptSnapshot {
            path: path.to_path_buf(),
            reason: format!(
                "truncated: {len} bytes, shorter than the {}-byte header",
                buf.len()
            ),
        });
    }
    file.read_exact_at(buf, 0)
        .map_err(|cause| StorageError::File {
            path: path.to_path_buf(),
            op: "read",
            cause,
        })
}

fn remove(fs: &impl Fs, path: &Path) -> Result<(), StorageError> {
    match fs.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::File {
            path: path.to_path_buf(),
            op: "remove",
            cause: e,
        }),
        _ => Ok(()),
    }
}

/// fsyncs a file or directory by path (a directory, so the names created or renamed in it
/// are durable).
pub(crate) fn sync_path(path: &Path) -> Result<(), StorageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|cause| StorageError::Sync {
            path: path.to_path_buf(),
            cause,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_like_indexes() {
        let metas = [(9, 1), (10, 2), (u64::MAX, u64::MAX)]
            .map(|(index, term)| SnapshotMeta { index, term });
        let mut names: Vec<_> = metas.iter().map(|m| file_name(*m)).collect();
        names.sort();
        let back: Vec<_> = names.iter().map(|n| parse_name(n).unwrap()).collect();
        assert_eq!(back, metas);
        for bad in [
            "snapshot-1-1.snap",
            "snapshot-0000000000000000000a-00000000000000000001.snap",
            "snapshot-00000000000000000001.snap",
            "other",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_checks() {
        let meta = SnapshotMeta { index: 7, term: 3 };
        let header = encode_header(meta, 5);
        assert_eq!(check_header(&header, meta, 45), Ok(FORMAT_VERSION));
        let other = SnapshotMeta { index: 7, term: 4 };
        assert!(check_header(&header, other, 45)
            .unwrap_err()
            .contains("name says"));
        assert!(check_header(&header, meta, 44)
            .unwrap_err()
            .contains("truncated"));
        let mut bad = header;
        bad[0] ^= 1;
        assert!(check_header(&bad, meta, 45).unwrap_err().contains("magic"));
        let mut bad = header;
        bad[8] = 3;
        assert!(check_header(&bad, meta, 45)
            .unwrap_err()
            .contains("version 3"));
    }

    fn write_read(dir: &Path, snapshot: &Snapshot) -> Snapshot {
        let snaps = SnapshotDir::create(dir).unwrap();
        let tmp = snaps.write_tmp(snapshot).unwrap();
        snaps.publish(&tmp, snapshot.meta).unwrap();
        let file = snaps.open(snapshot.meta).unwrap();
        read(file, &snaps.file_path(snapshot.meta), snapshot.meta).unwrap()
    }

    #[test]
    fn the_membership_round_trips_and_version_1_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut membership = Membership::with_voters([1, 2, 3]);
        membership.learners.insert(4);
        membership.removed.insert(5);
        let with = Snapshot {
            meta: SnapshotMeta { index: 9, term: 2 },
            data: bytes::Bytes::from_static(b"state machine"),
            membership: Some(membership),
        };
        assert_eq!(write_read(dir.path(), &with), with);
        let without = Snapshot {
            meta: SnapshotMeta { index: 10, term: 2 },
            membership: None,
            ..with.clone()
        };
        assert_eq!(write_read(dir.path(), &without), without);

        // A version 1 file, as kvstore wrote them before memberships: read with none.
        let meta = SnapshotMeta { index: 11, term: 3 };
        let data = b"old state";
        let mut raw = Vec::new();
        raw.extend_from_slice(&MAGIC);
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&meta.index.to_le_bytes());
        raw.extend_from_slice(&meta.term.to_le_bytes());
        raw.extend_from_slice(&(data.len() as u64).to_le_bytes());
        raw.extend_from_slice(data);
        raw.extend_from_slice(&crc32fast::hash(&raw).to_le_bytes());
        let snaps = SnapshotDir::create(dir.path()).unwrap();
        std::fs::write(snaps.file_path(meta), &raw).unwrap();
        let file = snaps.open(meta).unwrap();
        let old = read(file, &snaps.file_path(meta), meta).unwrap();
        assert_eq!(old.data, bytes::Bytes::from_static(data));
        assert_eq!(old.membership, None);

        // A membership section that overruns the body is corruption, not a panic.
        let mut bad = encode_header(meta, 4).to_vec();
        bad.extend_from_slice(&100u32.to_le_bytes());
        bad.extend_from_slice(&crc32fast::hash(&bad).to_le_bytes());
        std::fs::write(snaps.file_path(meta), &bad).unwrap();
        let file = snaps.open(meta).unwrap();
        let err = read(file, &snaps.file_path(meta), meta).unwrap_err();
        assert!(err.to_string().contains("membership"), "{err}");
    }
}
