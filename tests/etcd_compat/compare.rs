//! The normaliser and the comparer of the differential tests.
//!
//! An outcome becomes one JSON document: `exit` (the status), `stdout` (the `-w json` output,
//! or the lines of a plain one) and `stderr` (what etcdctl said, without its JSON log lines,
//! so the `Error: ...` line stays). Fields that legitimately differ between two clusters are
//! dropped: `cluster_id`, `member_id`, `raft_term`, member and lease `ID`s (and a
//! timetolive's lowercase `id`). A key's `lease` and a timetolive's remaining `ttl` keep only
//! what is deterministic: whether there is a lease, and whether time is left (or -1: the
//! lease does not exist). Keys and values (and a timetolive's `keys`, compared as a set) are
//! base64 in etcdctl's
//! JSON: they are decoded so a difference reads as text. Then two
//! documents are walked side by side and the first difference is reported with the command,
//! the path of the field and both values.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

use super::etcdctl::{Compare, Outcome, Step};

/// Fields that differ between any two clusters (and between two members of one).
const IDS: [&str; 5] = ["cluster_id", "member_id", "raft_term", "ID", "id"];
/// Fields etcdctl prints base64-encoded.
const BYTES: [&str; 3] = ["key", "value", "keys"];
/// Decoded values longer than this are shown by length and hash.
const SHOWN_BYTES: usize = 64;

/// The first field where two runs of a script differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Index of the step in the script.
    pub step: usize,
    /// The command (as run against the left system).
    pub command: String,
    /// Where in the normalised outcome, e.g. `stdout.kvs[0].mod_revision`.
    pub path: String,
    /// The value on each side (`<absent>` when the field is missing there).
    pub left: String,
    pub right: String,
    /// Names of the two systems, for the message.
    pub names: (String, String),
    /// What etcdctl said on stderr on each side (log lines aside), for context.
    pub said: (String, String),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} `{}`: {} differs: {} has {}, {} has {}",
            self.step, self.command, self.path, self.names.0, self.left, self.names.1, self.right
        )?;
        for (name, said) in [(&self.names.0, &self.said.0), (&self.names.1, &self.said.1)] {
            if !said.is_empty() {
                write!(f, "; {name} said {said:?}")?;
            }
        }
        Ok(())
    }
}

/// The standard base64 alphabet's decoder (etcdctl prints byte strings with it); `None` on
/// anything that is not base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if !text.len().is_multiple_of(4) || text.len() - bytes.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            bits |= sextet(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        out.extend_from_slice(&bits.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// A decoded byte string as readable text: short UTF-8 as it is, the rest by length and hash.
fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.len() <= SHOWN_BYTES => text.to_string(),
        _ => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            format!("<{} bytes, hash {:016x}>", bytes.len(), hasher.finish())
        }
    }
}

/// Drops ids and decodes byte strings, recursively.
fn normalise_json(value: &Value, field: Option<&str>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !IDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), normalise_json(v, Some(k))))
                .collect(),
        ),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(|v| normalise_json(v, field)).collect();
            if field == Some("keys") {
                // A lease's keys come in etcd's map order (random): compare them as a set.
                items.sort_by_key(Value::to_string);
            }
            Value::Array(items)
        }
        // A kv's lease id (random in etcd) and a lease's remaining seconds (a clock reading).
        Value::Number(n) if field == Some("lease") && n.as_i64() != Some(0) => {
            Value::String("<a lease>".into())
        }
        Value::Number(n) if field == Some("ttl") && n.as_i64().is_some_and(|t| t > 0) => {
            Value::String("<time left>".into())
        }
        Value::String(text) if field.is_some_and(|f| BYTES.contains(&f)) => {
            match base64_decode(text) {
                Some(bytes) => Value::String(show_bytes(&bytes)),
                None => Value::String(format!("<not base64: {text}>")),
            }
        }
        other => other.clone(),
    }
}

/// Scalars stand for their type; structure, booleans and empty strings stay.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Number(_) => Value::String("<number>".into()),
        Value::String(s) if !s.is_empty() => Value::String("<string>".into()),
        other => other.clone(),
    }
}

/// Non-empty trimmed lines.
fn lines(text: &str) -> Value {
    Value::Array(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect(),
    )
}

/// The comparable form of `outcome` (see the module doc).
pub fn normalise(step: &Step, outcome: &Outcome) -> Value {
    let stdout = if outcome.stdout.trim().is_empty() {
        Value::Null
    } else if step.is_json() {
        match serde_json::from_str::<Value>(&outcome.stdout) {
            Ok(json) => normalise_json(&json, None),
            Err(_) => lines(&outcome.stdout),
        }
    } else {
        lines(&outcome.stdout)
    };
    let stdout = match step.compare {
        Compare::Fields => stdout,
        Compare::Shape => shape(&stdout),
    };
    // etcdctl logs each retried call as a JSON line on stderr (with a timestamp and a random
    // client id): only what it says to the user counts.
    let said: String = outcome
        .stderr
        .lines()
        .filter(|l| !l.trim_start().starts_with("{\"level\""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut doc = Map::new();
    doc.insert("exit".into(), Value::from(outcome.code));
    doc.insert("stdout".into(), stdout);
    doc.insert("stderr".into(), lines(&said));
    Value::Object(doc)
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "<absent>".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

/// The first place where `left` and `right` differ: (path, left value, right value).
fn first_difference(path: &str, left: &Value, right: &Value) -> Option<(String, String, String)> {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            let mut keys: Vec<&String> = l.keys().chain(r.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (l.get(k), r.get(k)) {
                    (Some(a), Some(b)) => first_difference(&here, a, b),
                    (a, b) => Some((here, show(a), show(b))),
                }
            })
        }
        (Value::Array(l), Value::Array(r)) => (0..l.len().max(r.len())).find_map(|i| {
            let here = format!("{path}[{i}]");
            match (l.get(i), r.get(i)) {
                (Some(a), Some(b)) => first_difference(&here, a, b),
                (a, b) => Some((here, show(a), show(b))),
            }
        }),
        (a, b) if a == b => None,
        (a, b) => Some((path.to_string(), show(Some(a)), show(Some(b)))),
    }
}

/// The stderr lines of a normalised outcome, joined.
fn said(doc: &Value) -> String {
    doc["stderr"]
        .as_array()
        .map(|lines| {
            let lines: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
            lines.join(" / ")
        })
        .unwrap_or_default()
}

/// Compares two runs of `steps` (`names`: what to call each side) and returns the first
/// difference, if any.
pub fn compare(
    steps: &[Step],
    names: (&str, &str),
    left: &[Outcome],
    right: &[Outcome],
) -> Result<(), Box<Difference>> {
    assert_eq!(left.len(), steps.len(), "one outcome per step on the left");
    assert_eq!(
        right.len(),
        steps.len(),
        "one outcome per step on the right"
    );
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = (normalise(step, &left[i]), normalise(step, &right[i]));
        if let Some((path, l, r)) = first_difference("", &a, &b) {
            return Err(Box::new(Difference {
                step: i,
                command: left[i].command.clone(),
                path,
                left: l,
                right: r,
                names: (names.0.to_string(), names.1.to_string()),
                said: (said(&a), said(&b)),
            }));
        }
    }
    Ok(())
}
