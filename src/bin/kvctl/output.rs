//! kvctl's output for the key-space commands: etcdctl's simple text, or one JSON object
//! (`-w json`). The JSON field names are part of kvctl's interface (listed in its --help):
//! change them only with a note in the README.

use kvstore::client::{Header, KeyValue, OpResult, RangeResult, TxnResult};
use serde::Serialize;

/// Where an answer came from (`header` in every JSON object).
#[derive(Debug, Serialize)]
pub struct JsonHeader {
    pub revision: i64,
    pub node_id: u64,
    pub term: u64,
    pub index: u64,
}

impl From<&Header> for JsonHeader {
    fn from(h: &Header) -> Self {
        Self {
            revision: h.revision,
            node_id: h.node_id,
            term: h.term,
            index: h.index,
        }
    }
}

/// A key with its revisions.
#[derive(Debug, Serialize)]
pub struct JsonKv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl From<&KeyValue> for JsonKv {
    fn from(kv: &KeyValue) -> Self {
        Self {
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

fn kvs(kvs: &[KeyValue]) -> Vec<JsonKv> {
    kvs.iter().map(JsonKv::from).collect()
}

/// The body of a range (`get`, and `get` inside a txn).
#[derive(Debug, Serialize)]
pub struct JsonRange {
    pub kvs: Vec<JsonKv>,
    pub count: i64,
    pub more: bool,
}

impl From<&RangeResult> for JsonRange {
    fn from(r: &RangeResult) -> Self {
        Self {
            kvs: kvs(&r.kvs),
            count: r.count,
            more: r.more,
        }
    }
}

/// The body of a delete.
#[derive(Debug, Serialize)]
pub struct JsonDelete {
    pub deleted: i64,
    pub prev_kvs: Vec<JsonKv>,
}

/// One op result of a txn: exactly one field is present.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonOp {
    Get(JsonRange),
    Put { prev_kv: Option<JsonKv> },
    Del(JsonDelete),
    Txn(JsonTxn),
}

/// The body of a txn.
#[derive(Debug, Serialize)]
pub struct JsonTxn {
    pub succeeded: bool,
    pub responses: Vec<JsonOp>,
}

impl From<&TxnResult> for JsonTxn {
    fn from(t: &TxnResult) -> Self {
        Self {
            succeeded: t.succeeded,
            responses: t.results.iter().map(JsonOp::from).collect(),
        }
    }
}

impl From<&OpResult> for JsonOp {
    fn from(op: &OpResult) -> Self {
        match op {
            OpResult::Range(r) => JsonOp::Get(r.into()),
            OpResult::Put { prev_kv } => JsonOp::Put {
                prev_kv: prev_kv.as_ref().map(JsonKv::from),
            },
            OpResult::Delete { deleted, prev_kvs } => JsonOp::Del(JsonDelete {
                deleted: *deleted,
                prev_kvs: kvs(prev_kvs),
            }),
            OpResult::Txn(t) => JsonOp::Txn(t.into()),
        }
    }
}

/// A whole answer: the header and the command's fields beside it.
#[derive(Debug, Serialize)]
pub struct JsonAnswer<T: Serialize> {
    pub header: JsonHeader,
    #[serde(flatten)]
    pub body: T,
}

/// `{"header": ..., <body's fields>}` on one line.
pub fn json<T: Serialize>(header: &Header, body: T) -> String {
    let answer = JsonAnswer {
        header: header.into(),
        body,
    };
    // Serializing these plain structs cannot fail; fall back to a JSON error all the same.
    serde_json::to_string(&answer).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

/// etcdctl's `get`: `KEY` then `VALUE` per key (keys only: the keys), or the count.
pub fn simple_range(r: &RangeResult, keys_only: bool, count_only: bool) -> String {
    if count_only {
        return format!("{}\n", r.count);
    }
    let mut out = String::new();
    for kv in &r.kvs {
        out.push_str(&kv.key);
        out.push('\n');
        if !keys_only {
            out.push_str(&kv.value);
            out.push('\n');
        }
    }
    out
}

/// etcdctl's `del`: the number deleted, then each previous `KEY` and `VALUE`.
pub fn simple_delete(deleted: i64, prev_kvs: &[KeyValue]) -> String {
    let mut out = format!("{deleted}\n");
    for kv in prev_kvs {
        out.push_str(&format!("{}\n{}\n", kv.key, kv.value));
    }
    out
}

/// etcdctl's `txn`: `SUCCESS` or `FAILURE`, then per op a blank line and its output (a put:
/// `OK` and its previous kv if asked for).
pub fn simple_txn(t: &TxnResult) -> String {
    let mut out = String::from(if t.succeeded {
        "SUCCESS\n"
    } else {
        "FAILURE\n"
    });
    for op in &t.results {
        out.push('\n');
        match op {
            OpResult::Range(r) => out.push_str(&simple_range(r, false, false)),
            OpResult::Put { prev_kv } => {
                out.push_str("OK\n");
                if let Some(kv) = prev_kv {
                    out.push_str(&format!("{}\n{}\n", kv.key, kv.value));
                }
            }
            OpResult::Delete { deleted, prev_kvs } => {
                out.push_str(&simple_delete(*deleted, prev_kvs))
            }
            OpResult::Txn(inner) => out.push_str(&simple_txn(inner)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        }
    }

    fn header() -> Header {
        Header {
            node_id: 1,
            term: 2,
            index: 30,
            revision: 7,
        }
    }

    #[test]
    fn json_has_the_documented_field_names() {
        let range = RangeResult {
            kvs: vec![kv("a", "1")],
            count: 1,
            ..Default::default()
        };
        let value: serde_json::Value =
            serde_json::from_str(&json(&header(), JsonRange::from(&range))).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "header": {"revision": 7, "node_id": 1, "term": 2, "index": 30},
                "kvs": [{"key": "a", "value": "1", "create_revision": 2, "mod_revision": 3,
                         "version": 2, "lease": 0}],
                "count": 1,
                "more": false,
            })
        );
        let txn = TxnResult {
            succeeded: false,
            results: vec![
                OpResult::Put { prev_kv: None },
                OpResult::Delete {
                    deleted: 1,
                    prev_kvs: vec![],
                },
                OpResult::Range(range),
            ],
            header: header(),
        };
        let value: serde_json::Value =
            serde_json::from_str(&json(&header(), JsonTxn::from(&txn))).unwrap();
        assert_eq!(value["succeeded"], false);
        assert_eq!(
            value["responses"][0],
            serde_json::json!({"put": {"prev_kv": null}})
        );
        assert_eq!(
            value["responses"][1],
            serde_json::json!({"del": {"deleted": 1, "prev_kvs": []}})
        );
        assert_eq!(value["responses"][2]["get"]["kvs"][0]["value"], "1");
        // put's object is the header alone.
        assert_eq!(
            json(&header(), serde_json::json!({})),
            r#"{"header":{"revision":7,"node_id":1,"term":2,"index":30}}"#
        );
    }

    #[test]
    fn simple_output_is_etcdctls() {
        let range = RangeResult {
            kvs: vec![kv("a", "1"), kv("b", "2")],
            count: 2,
            ..Default::default()
        };
        assert_eq!(simple_range(&range, false, false), "a\n1\nb\n2\n");
        assert_eq!(simple_range(&range, true, false), "a\nb\n");
        assert_eq!(simple_range(&range, false, true), "2\n");
        assert_eq!(simple_delete(1, &[kv("a", "1")]), "1\na\n1\n");
        let txn = TxnResult {
            succeeded: true,
            results: vec![
                OpResult::Put { prev_kv: None },
                OpResult::Delete {
                    deleted: 0,
                    prev_kvs: vec![],
                },
                OpResult::Range(range),
            ],
            header: header(),
        };
        assert_eq!(simple_txn(&txn), "SUCCESS\n\nOK\n\n0\n\na\n1\nb\n2\n");
    }
}
