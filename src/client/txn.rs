//! Transactions (`KV.Txn`, etcd's Txn) and the compare-and-swap built on them.
//!
//! A [`Txn`] is a list of compares, the ops to run when every compare holds (`and_then`) and
//! the ops to run otherwise (`or_else`); the cluster decides and runs the chosen branch
//! atomically, at one revision. A Txn is a write: it carries the client's exactly-once
//! session like a put, so it is resent on the same retry rules and applied at most once.
//!
//! Examples: [`Client::txn`] and [`Client::cas`] (a generation counter).

use super::endpoints;
use super::kv_client::Header;
use super::range::{KeyValue, RangeOptions, RangeResult};
use super::{Client, ClientError, Fence};
use crate::pb;
use crate::pb::compare::{Against, Result as CompareResult, Target};
use crate::pb::txn_op::Op;
use crate::pb::txn_op_result::Result as OpResultPb;

/// One key, or every key with a prefix, as the wire's selector.
fn one_key(key: &str, prefix: bool) -> pb::KeySelector {
    pb::KeySelector {
        key: key.to_string(),
        prefix,
        ..pb::KeySelector::default()
    }
}

/// A condition of a [`Txn`]. Build one with [`Compare::value`], [`Compare::version`],
/// [`Compare::create_revision`], [`Compare::mod_revision`] or [`Compare::lease`], then
/// `.eq(..)`, `.ne(..)`, `.gt(..)` or `.lt(..)`. A missing key has version, revisions and
/// lease 0 and no value (so `Compare::create_revision(k).eq(0)` means "k does not exist",
/// and a value compare on a missing key is false).
#[derive(Clone, Debug, PartialEq)]
pub struct Compare(pb::Compare);

/// A compare waiting for its operator: what to compare and on which keys.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareOn<T> {
    keys: pb::KeySelector,
    target: Target,
    _against: std::marker::PhantomData<T>,
}

impl Compare {
    fn on<T>(key: &str, target: Target) -> CompareOn<T> {
        CompareOn {
            keys: one_key(key, false),
            target,
            _against: std::marker::PhantomData,
        }
    }

    /// Compares the value of `key`.
    pub fn value(key: &str) -> CompareOn<String> {
        Self::on(key, Target::Value)
    }

    /// Compares the version of `key` (0 when absent, 1 at creation, +1 per put).
    pub fn version(key: &str) -> CompareOn<i64> {
        Self::on(key, Target::Version)
    }

    /// Compares the create revision of `key` (0 when absent).
    pub fn create_revision(key: &str) -> CompareOn<i64> {
        Self::on(key, Target::Create)
    }

    /// Compares the mod revision of `key` (0 when absent).
    pub fn mod_revision(key: &str) -> CompareOn<i64> {
        Self::on(key, Target::Mod)
    }

    /// Compares the lease of `key` (0: none or absent).
    pub fn lease(key: &str) -> CompareOn<i64> {
        Self::on(key, Target::Lease)
    }

    /// The wire compare.
    pub fn to_proto(&self) -> pb::Compare {
        self.0.clone()
    }
}

impl<T> CompareOn<T> {
    /// Compares every key starting with the key instead (all must satisfy it).
    pub fn with_prefix(mut self) -> Self {
        self.keys.prefix = true;
        self
    }

    fn result(self, result: CompareResult, against: Against) -> Compare {
        Compare(pb::Compare {
            keys: Some(self.keys),
            target: self.target.into(),
            result: result.into(),
            against: Some(against),
        })
    }
}

/// `eq`, `ne`, `gt` and `lt` for a compare on `$target` values given as `$arg`.
macro_rules! compare_operators {
    ($target:ty, $arg:ty, $against:expr) => {
        impl CompareOn<$target> {
            /// The target equals `v`.
            pub fn eq(self, v: $arg) -> Compare {
                self.result(CompareResult::Equal, ($against)(v))
            }
            /// The target differs from `v`.
            pub fn ne(self, v: $arg) -> Compare {
                self.result(CompareResult::NotEqual, ($against)(v))
            }
            /// The target is greater than `v`.
            pub fn gt(self, v: $arg) -> Compare {
                self.result(CompareResult::Greater, ($against)(v))
            }
            /// The target is less than `v`.
            pub fn lt(self, v: $arg) -> Compare {
                self.result(CompareResult::Less, ($against)(v))
            }
        }
    };
}

compare_operators!(String, &str, |v: &str| Against::Value(v.to_string()));
compare_operators!(i64, i64, Against::Number);

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOp(pb::TxnOp);

impl TxnOp {
    /// Sets `key` to `value`.
    pub fn put(key: &str, value: &str) -> Self {
        Self::put_with_lease(key, value, 0)
    }

    /// Sets `key` to `value` attached to lease `lease` (0: no lease).
    pub fn put_with_lease(key: &str, value: &str, lease: i64) -> Self {
        Self(pb::TxnOp {
            op: Some(Op::Put(pb::TxnPut {
                key: key.to_string(),
                value: value.to_string(),
                prev_kv: false,
                lease,
            })),
        })
    }

    /// Reads `key`.
    pub fn get(key: &str) -> Self {
        Self::range(key, &RangeOptions::default())
    }

    /// Reads the keys `options` select (its consistency is the Txn's own).
    pub fn range(key: &str, options: &RangeOptions) -> Self {
        let mut request = options.request(key);
        request.consistency = pb::Consistency::Unspecified.into();
        Self(pb::TxnOp {
            op: Some(Op::Range(request)),
        })
    }

    /// Deletes `key`.
    pub fn delete(key: &str) -> Self {
        Self::delete_keys(one_key(key, false))
    }

    /// Deletes every key starting with `prefix` (an empty prefix: every key).
    pub fn delete_prefix(prefix: &str) -> Self {
        Self::delete_keys(one_key(prefix, true))
    }

    /// Deletes every key `>= key` (an empty key: every key).
    pub fn delete_from_key(key: &str) -> Self {
        Self::delete_keys(pb::KeySelector {
            key: key.to_string(),
            from_key: true,
            ..pb::KeySelector::default()
        })
    }

    /// Deletes every key in `[key, range_end)`.
    pub fn delete_range(key: &str, range_end: &str) -> Self {
        Self::delete_keys(pb::KeySelector {
            key: key.to_string(),
            range_end: range_end.to_string(),
            ..pb::KeySelector::default()
        })
    }

    fn delete_keys(keys: pb::KeySelector) -> Self {
        Self(pb::TxnOp {
            op: Some(Op::Delete(pb::TxnDelete {
                keys: Some(keys),
                prev_kv: false,
            })),
        })
    }

    /// A nested transaction (it takes no session or fence of its own).
    pub fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Self {
        Self(pb::TxnOp {
            op: Some(Op::Txn(pb::TxnRequest {
                compare: compares.into_iter().map(|c| c.0).collect(),
                success: success.into_iter().map(|o| o.0).collect(),
                failure: failure.into_iter().map(|o| o.0).collect(),
                session: None,
                fence: None,
            })),
        })
    }

    /// Asks a put or delete to return the key's previous value(s); no effect on other ops.
    pub fn with_prev_kv(mut self) -> Self {
        match &mut self.0.op {
            Some(Op::Put(p)) => p.prev_kv = true,
            Some(Op::Delete(d)) => d.prev_kv = true,
            _ => {}
        }
        self
    }

    /// The wire op.
    pub fn to_proto(&self) -> pb::TxnOp {
        self.0.clone()
    }
}

/// The result of one op of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A range's keys (its header is empty: the Txn's header applies).
    Range(RangeResult),
    /// A put, with the previous kv when asked for and the key existed.
    Put {
        /// The key before the put.
        prev_kv: Option<KeyValue>,
    },
    /// A delete: how many keys it removed, and them when asked for.
    Delete {
        /// Keys deleted.
        deleted: i64,
        /// Their last kvs (when asked for).
        prev_kvs: Vec<KeyValue>,
    },
    /// A nested transaction's result.
    Txn(TxnResult),
}

/// The answer to [`Txn::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (the `and_then` ops ran) or not (the `or_else` ops ran).
    pub succeeded: bool,
    /// One result per op of the branch that ran, in order.
    pub results: Vec<OpResult>,
    /// Where the Txn took effect (`revision`: the key space's revision after it).
    pub header: Header,
}

impl TryFrom<pb::TxnResponse> for TxnResult {
    type Error = ClientError;

    fn try_from(r: pb::TxnResponse) -> Result<Self, ClientError> {
        let results = r
            .results
            .into_iter()
            .map(|result| {
                Ok(match result.result {
                    Some(OpResultPb::Range(r)) => OpResult::Range(r.into()),
                    Some(OpResultPb::Put(p)) => OpResult::Put {
                        prev_kv: p.prev_kv.map(KeyValue::from),
                    },
                    Some(OpResultPb::Delete(d)) => OpResult::Delete {
                        deleted: d.deleted,
                        prev_kvs: d.prev_kvs.into_iter().map(KeyValue::from).collect(),
                    },
                    Some(OpResultPb::Txn(t)) => OpResult::Txn(t.try_into()?),
                    None => {
                        return Err(ClientError::Server {
                            code: "Internal".into(),
                            message: "a Txn answer holds an empty op result".into(),
                        })
                    }
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(Self {
            succeeded: r.succeeded,
            results,
            header: r.header.into(),
        })
    }
}

/// A transaction being built on a [`Client`] ([`Client::txn`]); nothing is sent before
/// [`Txn::commit`].
#[derive(Debug)]
pub struct Txn<'a> {
    client: &'a mut Client,
    request: pb::TxnRequest,
}

impl Txn<'_> {
    /// Adds a compare; the success branch runs only if every compare holds.
    pub fn when(mut self, compare: Compare) -> Self {
        self.request.compare.push(compare.0);
        self
    }

    /// Adds an op to the branch run when every compare holds.
    pub fn and_then(mut self, op: TxnOp) -> Self {
        self.request.success.push(op.0);
        self
    }

    /// Adds an op to the branch run when some compare fails.
    pub fn or_else(mut self, op: TxnOp) -> Self {
        self.request.failure.push(op.0);
        self
    }

    /// Runs the Txn only while `fence` names the current holder of its lock (checked at
    /// apply time, atomically with it).
    pub fn fenced(mut self, fence: &Fence) -> Self {
        self.request.fence = Some(fence.into());
        self
    }

    /// The request as built so far (without the session, which [`Txn::commit`] adds).
    pub fn request(&self) -> &pb::TxnRequest {
        &self.request
    }

    /// Sends the Txn through the leader, exactly once (with the client's session).
    ///
    /// # Errors
    /// As for [`Client::put`]; a refused Txn (duplicate keys, too many ops, a compacted
    /// revision in a range) is returned at once.
    pub async fn commit(self) -> Result<TxnResult, ClientError> {
        let Txn {
            client,
            mut request,
        } = self;
        let session = client.next_session();
        request.session = Some(session);
        let response = client
            .run("txn", true, |channel| {
                let request = request.clone();
                async move { endpoints::kv(channel).txn(request).await }
            })
            .await;
        client.end_write(session.sequence, &response);
        response?.try_into()
    }
}

/// The answer to [`Client::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the value was swapped.
    pub succeeded: bool,
    /// On failure, the key as it was when the Txn ran (`None`: absent); on success `None`.
    pub current: Option<KeyValue>,
    /// Where the Txn took effect.
    pub header: Header,
}

impl From<TxnResult> for CasResult {
    /// The answer of the Txn [`Client::cas`] sends: on failure its one op read the key.
    fn from(result: TxnResult) -> Self {
        let current = if result.succeeded {
            None
        } else {
            match result.results.into_iter().next() {
                Some(OpResult::Range(r)) => r.kvs.into_iter().next(),
                _ => None,
            }
        };
        CasResult {
            succeeded: result.succeeded,
            current,
            header: result.header,
        }
    }
}

impl Client {
    /// Starts a transaction: compares, then the ops run when all hold and those run
    /// otherwise; nothing is sent before [`Txn::commit`].
    ///
    /// # Example: swap on the key's mod revision
    ///
    /// ```no_run
    /// # async fn bump(client: &mut kvstore::client::Client) -> Result<(), kvstore::client::ClientError> {
    /// use kvstore::client::{Compare, TxnOp};
    ///
    /// let result = client
    ///     .txn()
    ///     .when(Compare::mod_revision("gen").eq(5))
    ///     .and_then(TxnOp::put("gen", "6"))
    ///     .or_else(TxnOp::get("gen"))
    ///     .commit()
    ///     .await?;
    /// println!("succeeded: {} at revision {}", result.succeeded, result.header.revision);
    /// # Ok(())
    /// # }
    /// ```
    pub fn txn(&mut self) -> Txn<'_> {
        Txn {
            client: self,
            request: pb::TxnRequest::default(),
        }
    }

    /// Compare-and-swap: sets `key` to `new` only if its value is `expected` (`None`: only if
    /// the key does not exist). On failure the answer carries the current kv, so a retry loop
    /// needs no extra read. One Txn, exactly once.
    ///
    /// # Errors
    /// As for [`Txn::commit`]. A failed compare is not an error: see
    /// [`CasResult::succeeded`].
    ///
    /// # Example: a generation counter
    ///
    /// ```no_run
    /// # async fn bump(client: &mut kvstore::client::Client) -> Result<u64, kvstore::client::ClientError> {
    /// use kvstore::client::Consistency;
    ///
    /// let mut current = client.get("gen", Consistency::Linearizable).await?.value;
    /// loop {
    ///     let next = match &current {
    ///         Some(v) => v.parse::<u64>().unwrap_or(0) + 1,
    ///         None => 1,
    ///     };
    ///     let cas = client.cas("gen", current.as_deref(), &next.to_string()).await?;
    ///     if cas.succeeded {
    ///         return Ok(next);
    ///     }
    ///     // Someone else won the race: try again from the value that beat us.
    ///     current = cas.current.map(|kv| kv.value);
    /// }
    /// # }
    /// ```
    pub async fn cas(
        &mut self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<CasResult, ClientError> {
        let result = self.cas_txn(key, expected, new).commit().await?;
        Ok(CasResult::from(result))
    }

    /// The Txn [`Client::cas`] sends.
    pub(super) fn cas_txn(&mut self, key: &str, expected: Option<&str>, new: &str) -> Txn<'_> {
        let compare = match expected {
            Some(value) => Compare::value(key).eq(value),
            None => Compare::create_revision(key).eq(0),
        };
        self.txn()
            .when(compare)
            .and_then(TxnOp::put(key, new))
            .or_else(TxnOp::get(key))
    }
}

#[cfg(test)]
mod tests;
