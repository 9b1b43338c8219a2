//! The hard state's place in sled, and the value encoding.
//!
//! sled (`<data-dir>/db`, `conf`, `snap.*`: sled 0.34's format, not ours) holds one tree:
//!
//! | tree   | key              | value                              |
//! |--------|------------------|------------------------------------|
//! | `meta` | `b"hard_state"`  | postcard([`HardState`]) + CRC32    |
//! | `meta` | `b"identity"`    | postcard((1u8, `ClusterIdentity`)) + CRC32, written once at first start (`sled_store/identity.rs`) |
//!
//! Only its term and vote count: they change at elections only, so sled is written (and
//! synced) rarely. The commit index a load returns is the last one the log recorded
//! (`segment_log.rs` has the log's format); the one stored here is used only while the log
//! has no record. Older versions kept the log in a second tree, `log`: a data dir with
//! entries there is refused ([`StorageError::OldLayout`]).
//!
//! The value ends in a little-endian CRC32 (crc32fast, IEEE) of the postcard bytes before it.
//! sled checksums its own log, but the value checksum also catches a value that sled returns
//! intact yet is not what we wrote (a bug, a stray tool, a partial copy of a data dir).
//!
//! [`HardState`]: crate::raft::HardState
//! [`StorageError::OldLayout`]: super::StorageError::OldLayout

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Name of the tree holding the hard state.
pub(crate) const META_TREE: &[u8] = b"meta";
/// Name of the tree older versions kept the log in.
pub(crate) const LOG_TREE: &[u8] = b"log";
/// Key of the hard state in [`META_TREE`].
pub(crate) const HARD_STATE_KEY: &[u8] = b"hard_state";

/// Length of the checksum that ends every value.
const CRC_LEN: usize = 4;

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
