//! [`StorageError`]: every failure of the data dir. All of them are fatal to the node.

use std::path::PathBuf;

/// Storage failure: fatal to the node (log once, stop; never retry a failed fsync).
///
/// Every message is one line and names the data dir or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data dir could not be created.
    #[error("cannot create data dir {}: {cause}", dir.display())]
    CreateDir {
        /// the data dir
        dir: PathBuf,
        /// why
        cause: std::io::Error,
    },
    /// Another process (or another open store in this one) holds the data dir.
    #[error("data dir {} is locked by another running kvstore process (stop it, or use another --data-dir)", dir.display())]
    Locked {
        /// the data dir
        dir: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock data dir {} (lock file {}): {cause}", dir.display(), path.display())]
    Lock {
        /// the data dir
        dir: PathBuf,
        /// the lock file
        path: PathBuf,
        /// why
        cause: std::io::Error,
    },
    /// sled could not open the database or one of its trees.
    #[error("cannot open the database in data dir {}: {cause} (is it a kvstore data dir from a compatible version?)", dir.display())]
    Open {
        /// the data dir
        dir: PathBuf,
        /// sled's reason, on one line
        cause: String,
    },
    /// The hard state in sled failed its checksum or does not decode, or the replayed log
    /// has a gap.
    #[error("{what} in {} is corrupt ({reason}); {RECOVER}", dir.display())]
    Corrupt {
        /// the data dir (sled's database), or its log dir
        dir: PathBuf,
        /// what is corrupt, e.g. `log entry 17` or `hard state`
        what: String,
        /// why, e.g. "expected index 3: the log must be contiguous from 1"
        reason: String,
    },
    /// A record of a log segment file is damaged (and is not a torn write at the very end of
    /// the last segment, which start-up cuts off).
    #[error("log segment {} is corrupt at byte {offset} ({reason}); {RECOVER}", path.display())]
    CorruptLog {
        /// the segment file
        path: PathBuf,
        /// where the bad record starts
        offset: u64,
        /// why, e.g. "checksum mismatch"
        reason: String,
    },
    /// The data dir keeps its log in sled's `log` tree, the layout before segment files.
    #[error("data dir {} keeps its log in sled's \"log\" tree, the layout of an older kvstore version, which this one does not read; {RECOVER}", dir.display())]
    OldLayout {
        /// the data dir
        dir: PathBuf,
    },
    /// A value could not be encoded.
    #[error("cannot encode {what} for data dir {}: {cause}", dir.display())]
    Encode {
        /// the data dir
        dir: PathBuf,
        /// what
        what: String,
        /// postcard's reason
        cause: postcard::Error,
    },
    /// sled failed a read, a write or a flush.
    #[error("cannot {op} in data dir {}: {cause}", dir.display())]
    Sled {
        /// the data dir
        dir: PathBuf,
        /// the operation, e.g. "write the log"
        op: &'static str,
        /// sled's reason, on one line
        cause: String,
    },
    /// fsync (fdatasync) or opening a file to sync failed. Data may be lost: the node must
    /// stop, since a retried fsync can report success for writes that never reached the disk.
    #[error("cannot sync {} to disk: {cause} (stopping: a failed fsync is never retried)", path.display())]
    Sync {
        /// the file or directory
        path: PathBuf,
        /// why
        cause: std::io::Error,
    },
    /// A snapshot file has a bad name, header, length or checksum. Never served, and never
    /// replaced by an older snapshot.
    #[error("snapshot file {} is corrupt ({reason}); {RECOVER}", path.display())]
    CorruptSnapshot {
        /// the file
        path: PathBuf,
        /// why, e.g. "checksum mismatch"
        reason: String,
    },
    /// A snapshot file (or the snapshot dir) could not be created, written, renamed, read,
    /// listed or removed.
    #[error("cannot {op} {}: {cause}", path.display())]
    File {
        /// the file or directory
        path: PathBuf,
        /// the operation, e.g. "write"
        op: &'static str,
        /// why
        cause: std::io::Error,
    },
}

/// What an operator does about a corrupt data dir (the end of every corruption message).
const RECOVER: &str = "stop the node and replace the member: remove it (kvctl member remove), add a new member and start that on an empty data dir with --join (README \"Replacing a node\"); an emptied data dir under the old id is refused, it forgot its votes";

/// sled's error on one line (its `Corruption` variant would print a backtrace).
pub(crate) fn describe_sled(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { at, .. } => match at {
            Some(at) => format!("sled found corrupted data at {at:?}"),
            None => "sled found corrupted data".to_owned(),
        },
        other => other.to_string().replace('\n', " "),
    }
}
