//! Revisioned reads (`KV.Range`) and compaction (`KV.Compact`), as [`Client`] methods.
//!
//! A range reads one key, a prefix, every key from a key on, or `[key, range_end)`, at the
//! current revision or a past one (down to the compaction revision), with etcd's options:
//! limit, sort, keys only, count only. Linearizable ranges go to the leader; serializable
//! ones take the first node that answers and may be stale.

use super::endpoints;
use super::kv_client::Header;
use super::{Client, ClientError, Consistency};
use crate::pb;
use crate::pb::range_request::{SortOrder as PbSortOrder, SortTarget as PbSortTarget};

/// A key with its revisions (etcd's `mvccpb.KeyValue`, text keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a keys-only read).
    pub value: String,
    /// The revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// 1 at creation, +1 per put since.
    pub version: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// What a range is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key (the default).
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// The order of a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Unsorted: key order.
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// The options of [`Client::range`]; `Default` reads one key, linearizably, at the current
/// revision. At most one of `prefix`, `from_key` and `range_end` may be given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Every key starting with the key (an empty key: every key).
    pub prefix: bool,
    /// Every key `>=` the key (an empty key: every key).
    pub from_key: bool,
    /// Every key in `[key, range_end)`.
    pub range_end: Option<String>,
    /// At most this many keys (0: no limit); [`RangeResult::more`] says if some were left out.
    pub limit: i64,
    /// Read at this revision (0: the current one). Below the compaction revision the read
    /// fails with `mvcc: required revision has been compacted`.
    pub revision: i64,
    /// Sort by this...
    pub sort_target: SortTarget,
    /// ...in this order.
    pub sort_order: SortOrder,
    /// Leave the values out.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Read any node's local state instead of the leader's (may be stale).
    pub serializable: bool,
}

impl RangeOptions {
    /// Every key starting with the key.
    pub fn prefix() -> Self {
        Self {
            prefix: true,
            ..Self::default()
        }
    }

    /// The same options at revision `revision`.
    pub fn at_revision(self, revision: i64) -> Self {
        Self { revision, ..self }
    }

    /// The wire request for `key`.
    pub(super) fn request(&self, key: &str) -> pb::RangeRequest {
        let sort_target = match self.sort_target {
            SortTarget::Key => PbSortTarget::Unspecified,
            SortTarget::Version => PbSortTarget::Version,
            SortTarget::Create => PbSortTarget::Create,
            SortTarget::Mod => PbSortTarget::Mod,
            SortTarget::Value => PbSortTarget::Value,
        };
        let sort_order = match self.sort_order {
            SortOrder::None => PbSortOrder::Unspecified,
            SortOrder::Ascend => PbSortOrder::Ascend,
            SortOrder::Descend => PbSortOrder::Descend,
        };
        let consistency = if self.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        pb::RangeRequest {
            keys: Some(pb::KeySelector {
                key: key.to_string(),
                range_end: self.range_end.clone().unwrap_or_default(),
                prefix: self.prefix,
                from_key: self.from_key,
            }),
            limit: self.limit,
            revision: self.revision,
            sort_order: sort_order.into(),
            sort_target: sort_target.into(),
            consistency: consistency.into(),
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..pb::RangeRequest::default()
        }
    }
}

/// The answer to [`Client::range`] (and a range inside a Txn, whose header is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// The keys found, in the requested order (none for a count-only read).
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` left some keys out.
    pub more: bool,
    /// How many keys matched (before `limit`).
    pub count: i64,
    /// Where it was read.
    pub header: Header,
}

impl From<pb::RangeResponse> for RangeResult {
    fn from(r: pb::RangeResponse) -> Self {
        Self {
            kvs: r.kvs.into_iter().map(KeyValue::from).collect(),
            more: r.more,
            count: r.count,
            header: r.header.into(),
        }
    }
}

impl Client {
    /// Reads `key` (or the keys `options` select) with their revisions.
    ///
    /// # Errors
    /// The request is invalid, the revision is compacted or in the future
    /// ([`ClientError::Server`] with code `OutOfRange`), or no node answered in time.
    pub async fn range(
        &mut self,
        key: &str,
        options: &RangeOptions,
    ) -> Result<RangeResult, ClientError> {
        let request = options.request(key);
        let response = self
            .run("range", !options.serializable, |channel| {
                let request = request.clone();
                async move { endpoints::kv(channel).range(request).await }
            })
            .await?;
        Ok(response.into())
    }

    /// Drops the history below `revision` (etcd's Compact): reads at an older revision fail
    /// from then on.
    ///
    /// Sent with the client's exactly-once session, like a put: a compact resent after a
    /// lost reply is answered as its first attempt was.
    ///
    /// # Errors
    /// `revision` is at or below the compaction revision, or above the current one
    /// ([`ClientError::Server`] with code `OutOfRange`), or no leader answered in time.
    pub async fn compact(&mut self, revision: i64) -> Result<Header, ClientError> {
        let session = self.next_session();
        let request = pb::CompactRequest {
            revision,
            session: Some(session),
        };
        let response = self
            .run("compact", true, |channel| async move {
                endpoints::kv(channel).compact(request).await
            })
            .await;
        self.end_write(session.sequence, &response);
        Ok(response?.header.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_read_one_key_linearizably_at_the_current_revision() {
        let r = RangeOptions::default().request("k");
        assert_eq!(
            r,
            pb::RangeRequest {
                keys: Some(pb::KeySelector {
                    key: "k".into(),
                    ..Default::default()
                }),
                consistency: Consistency::Linearizable.into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_option_reaches_the_request() {
        let options = RangeOptions {
            range_end: Some("z".into()),
            limit: 3,
            revision: 9,
            sort_target: SortTarget::Mod,
            sort_order: SortOrder::Descend,
            keys_only: true,
            count_only: true,
            serializable: true,
            ..RangeOptions::default()
        };
        let r = options.request("a");
        let keys = r.keys.clone().unwrap();
        assert_eq!((keys.key.as_str(), keys.range_end.as_str()), ("a", "z"));
        assert!(!keys.prefix && !keys.from_key);
        assert_eq!((r.limit, r.revision), (3, 9));
        assert_eq!(r.sort_target, i32::from(PbSortTarget::Mod));
        assert_eq!(r.sort_order, i32::from(PbSortOrder::Descend));
        assert!(r.keys_only && r.count_only);
        assert_eq!(r.consistency, i32::from(Consistency::Serializable));

        let p = RangeOptions::prefix().at_revision(4).request("p/");
        assert!(p.keys.unwrap().prefix);
        assert_eq!(p.revision, 4);
    }
}
