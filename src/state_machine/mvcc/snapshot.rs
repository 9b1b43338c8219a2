//! Snapshots of a [`KeySpace`]: the revisions and every key's history since the compaction
//! revision. The change log and the live count are derived again on restore.

use super::store::{Histories, KeySpace, Version};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An owned snapshot, as decoded (restore it with [`KeySpace::restore`]). Serialized, it is
/// the same bytes as the [`KeySpaceSnapshotView`] it was taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpaceSnapshot {
    revision: i64,
    compact_revision: i64,
    keys: Vec<(Vec<u8>, Vec<Version>)>,
}

/// A snapshot borrowed from a live store: serializes like [`KeySpaceSnapshot`] without
/// copying the keys and values first.
#[derive(Serialize)]
pub struct KeySpaceSnapshotView<'a> {
    revision: i64,
    compact_revision: i64,
    keys: HistoriesView<'a>,
}

struct HistoriesView<'a>(&'a Histories);

impl Serialize for HistoriesView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (key, history) in self.0 {
            seq.serialize_element(&(&**key, history))?;
        }
        seq.end()
    }
}

impl KeySpace {
    /// A borrowed snapshot, to serialize (the preferred way: no copy).
    pub fn snapshot_view(&self) -> KeySpaceSnapshotView<'_> {
        let (revision, compact_revision, index) = self.parts();
        KeySpaceSnapshotView {
            revision,
            compact_revision,
            keys: HistoriesView(index),
        }
    }

    /// An owned copy of the snapshot.
    pub fn snapshot(&self) -> KeySpaceSnapshot {
        let (revision, compact_revision, index) = self.parts();
        KeySpaceSnapshot {
            revision,
            compact_revision,
            keys: index.iter().map(|(k, h)| (k.to_vec(), h.clone())).collect(),
        }
    }

    /// Rebuilds a store from a snapshot, checking every invariant a store relies on.
    ///
    /// # Errors
    /// One line naming the first inconsistency.
    pub fn restore(snap: KeySpaceSnapshot) -> Result<Self, String> {
        let KeySpaceSnapshot {
            revision,
            compact_revision,
            keys,
        } = snap;
        if revision < 1 || compact_revision < 0 || compact_revision > revision {
            return Err(format!(
                "key space snapshot: bad revisions (revision {revision}, compaction revision {compact_revision})"
            ));
        }
        let mut index = BTreeMap::new();
        let mut last_key: Option<Vec<u8>> = None;
        for (key, history) in keys {
            let bad = |what: &str| {
                format!(
                    "key space snapshot: key {:?}: {what}",
                    String::from_utf8_lossy(&key)
                )
            };
            if key.is_empty() {
                return Err("key space snapshot: empty key".to_string());
            }
            if last_key.as_ref().is_some_and(|l| *l >= key) {
                return Err(bad("keys out of order"));
            }
            check_history(&history, revision, compact_revision).map_err(bad)?;
            index.insert(Arc::from(key.as_slice()), history);
            last_key = Some(key);
        }
        Ok(KeySpace::from_parts(revision, compact_revision, index))
    }
}

/// A history as the store keeps it: not empty, in (revision, sub) order within
/// `[1, revision]`, starting with a put, only the first version at or below the compaction
/// revision, versions and create revisions following the generations.
fn check_history(
    history: &[Version],
    revision: i64,
    compact_revision: i64,
) -> Result<(), &'static str> {
    let first = history.first().ok_or("empty history")?;
    if first.value.is_none() {
        return Err("history starts with a delete");
    }
    let mut prev: Option<&Version> = None;
    for v in history {
        if v.rev < 1 || v.rev > revision {
            return Err("version outside the store's revisions");
        }
        match v.value {
            Some(_) if v.version < 1 || v.create < 1 || v.create > v.rev => {
                return Err("bad version or create revision")
            }
            None if v.version != 0 || v.create != 0 || v.lease != 0 => return Err("bad delete"),
            _ => {}
        }
        if let Some(p) = prev {
            if (p.rev, p.sub) >= (v.rev, v.sub) {
                return Err("versions out of order");
            }
            if compact_revision > 0 && v.rev <= compact_revision {
                // Compaction keeps one version at or below its revision: the latest.
                return Err("history below the compaction revision");
            }
            match (&p.value, &v.value) {
                (None, None) => return Err("two deletes in a row"),
                (Some(_), Some(_)) if v.version != p.version + 1 || v.create != p.create => {
                    return Err("version or create revision does not follow")
                }
                (None, Some(_)) if v.version != 1 || v.create != v.rev => {
                    return Err("re-creation does not start a generation")
                }
                _ => {}
            }
        } else if v.version == 1 && v.create != v.rev {
            return Err("bad create revision");
        }
        prev = Some(v);
    }
    Ok(())
}
