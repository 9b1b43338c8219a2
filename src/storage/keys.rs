//! The on-disk layout of a data dir, and the value encoding.
//!
//! ```text
//! <data-dir>/
//!   LOCK        empty file; an exclusive lock on it (File::try_lock) marks the dir as in use
//!   db, conf    sled 0.34's log file and its config (sled's format, not ours)
//!   blobs/      sled's files for values too large for one log segment (> ~128 KiB)
//!   snap.*      sled's recovery snapshots (not ours: ours are below)
//!   snapshots/  state-machine snapshots: snapshot-<index 020>-<term 020>.snap, normally
//!               exactly one; `*.tmp` only while one is being written (format and naming in
//!               `snapshot_file.rs`)
//! ```
//!
//! Inside sled there are two trees, one per concern:
//!
//! | tree   | key                                  | value                              |
//! |--------|--------------------------------------|------------------------------------|
//! | `meta` | `b"hard_state"`                      | postcard([`HardState`]) + CRC32    |
//! | `log`  | log index as a big-endian `u64`      | postcard([`Entry`]) + CRC32        |
//!
//! The `log` tree holds the log after the latest snapshot (indexes contiguous from the
//! snapshot's index + 1, or from 1 without one); only for the moment between a snapshot's
//! rename and its compaction does it also hold entries the snapshot covers.
//!
//! Big-endian index keys sort like the numbers they encode, so a tree iteration is the log
//! in index order, and "every entry from index i on" is one range scan.
//!
//! Every value ends in a little-endian CRC32 (crc32fast, IEEE) of the postcard bytes before it.
//! sled checksums its own log, but the value checksum also catches a value that sled returns
//! intact yet is not what we wrote (a bug, a stray tool, a partial copy of a data dir), and it
//! lets load name the exact key that is bad. An entry's value also carries its own index, which
//! load compares with the key.
//!
//! [`HardState`]: crate::raft::HardState
//! [`Entry`]: crate::raft::Entry

use crate::raft::LogIndex;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Name of the tree holding the hard state.
pub(crate) const META_TREE: &[u8] = b"meta";
/// Name of the tree holding the log.
pub(crate) const LOG_TREE: &[u8] = b"log";
/// Key of the hard state in [`META_TREE`].
pub(crate) const HARD_STATE_KEY: &[u8] = b"hard_state";

/// Length of the checksum that ends every value.
const CRC_LEN: usize = 4;

/// The `log` tree key of `index`.
pub(crate) fn log_key(index: LogIndex) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a `log` tree key encodes, if it is a well-formed key.
pub(crate) fn index_of_key(key: &[u8]) -> Option<LogIndex> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// Encodes `value` followed by its checksum. `size_hint` is the expected encoded length, so
/// the buffer is allocated once.
///
/// # Errors
/// postcard could not serialize the value (not expected for our types).
pub(crate) fn encode_value<T: Serialize>(
    value: &T,
    size_hint: usize,
) -> Result<Vec<u8>, postcard::Error> {
    let mut buf = postcard::to_extend(value, Vec::with_capacity(size_hint + CRC_LEN))?;
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Checks the checksum of a stored value and decodes it.
///
/// # Errors
/// A one-line reason: too short, checksum mismatch, or not decodable.
pub(crate) fn decode_value<T: DeserializeOwned>(stored: &[u8]) -> Result<T, String> {
    let Some(body_len) = stored.len().checked_sub(CRC_LEN) else {
        return Err(format!(
            "value is {} bytes, shorter than its checksum",
            stored.len()
        ));
    };
    let (body, crc) = stored.split_at(body_len);
    let mut expected = [0u8; CRC_LEN];
    expected.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_le_bytes(expected) {
        return Err("checksum mismatch".to_owned());
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} unexpected bytes after the value", rest.len())),
        Err(e) => Err(format!(
            "checksum matches but the value does not decode: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, Payload};

    #[test]
    fn keys_sort_in_index_order() {
        let mut keys: Vec<_> = [300u64, 1, 256, 2, u64::MAX].map(log_key).to_vec();
        keys.sort();
        let indexes: Vec<_> = keys.iter().map(|k| index_of_key(k).unwrap()).collect();
        assert_eq!(indexes, vec![1, 2, 256, 300, u64::MAX]);
        assert_eq!(index_of_key(b"short"), None);
    }

    #[test]
    fn value_round_trips_and_detects_flips() {
        let entry = Entry {
            term: 3,
            index: 9,
            payload: Payload::Command(b"hello".to_vec().into()),
        };
        let stored = encode_value(&entry, 16).unwrap();
        assert_eq!(decode_value::<Entry>(&stored), Ok(entry));
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x40;
            let err = decode_value::<Entry>(&bad).unwrap_err();
            assert!(err.contains("checksum mismatch"), "byte {i}: {err}");
        }
        assert!(decode_value::<Entry>(&[1, 2])
            .unwrap_err()
            .contains("shorter"));
    }
}
