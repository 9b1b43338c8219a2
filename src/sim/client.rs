//! Simulated clients: each runs one operation at a time (puts, gets, deletes on a few keys),
//! retries across nodes the way `kvctl` does (following leader hints, backing off, reusing its
//! session sequence so a retried write applies at most once), and records every operation in
//! the history with its invocation and completion times.
//!
//! Values span the legal range (with `SimConfig::large_values`, one seed in three): mostly
//! a few bytes, one put in 32 at the 1 MiB limit (`rpc::kv_service::MAX_VALUE_BYTES`) and
//! one in 32 of a random size up to it (large values cost about 1 ms of copying each). A long
//! value starts with its id and length and is padded, so a read checks that it arrived
//! whole, and the history records only the id (the linearizability checker hashes values).
//!
//! With `SimConfig::kv_txns` the clients run the key-space mix instead (`kv_ops.rs`): CAS
//! loops, pair writes and reads through Txns, Ranges (some at past revisions), compactions.

mod kv_ops;

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;

use super::world::{Time, World, OP_DEADLINE};
use crate::lincheck::{Op, OpKind, OpResult};
use crate::raft::{LogIndex, NodeId};
use crate::rpc::kv_service::MAX_VALUE_BYTES;
use crate::state_machine::mvcc::{RangeRequest, RangeResponse};
use crate::state_machine::{ApplyError, Command, Outcome as SmOutcome, Proposal, Session};
pub(crate) use kv_ops::Observations;
use kv_ops::{KvAnswer, Next, Pending};

/// A request from a client to a node.
#[derive(Clone, Debug)]
pub(crate) struct ClientReq {
    pub(crate) client: usize,
    pub(crate) attempt: u64,
    pub(crate) op: ReqOp,
}

#[derive(Clone, Debug)]
pub(crate) enum ReqOp {
    Write(Proposal),
    Read(String),
    /// A linearizable etcd Range (through ReadIndex, like `Read`).
    Range(RangeRequest),
    /// etcd's LeaseKeepAlive of this lease on keys: renewed by the leader alone, on its
    /// lease clock, without a log entry, and answered once a quorum confirmed it still leads
    /// (the driver's `Request::KeyLease`).
    KeepAlive(i64),
}

/// A node's answer to one attempt.
#[derive(Clone, Debug)]
pub(crate) struct ClientReply {
    pub(crate) attempt: u64,
    pub(crate) result: Result<Answer, ReplyErr>,
}

/// A successful answer: a key-value result, or the state machine's outcome of a lock command
/// or fenced write with the index it applied at.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Kv(OpResult),
    Applied(SmOutcome, LogIndex),
    /// A Range served at the store's `revision` (the header's).
    Range {
        revision: i64,
        result: Result<RangeResponse, ApplyError>,
    },
    /// A keep-alive's answer: the TTL (seconds) the lease was renewed for, 0 if it could
    /// not be (gone, or its revoke already proposed).
    KeptAlive(i64),
}

#[derive(Clone, Debug)]
pub(crate) enum ReplyErr {
    NotLeader(Option<NodeId>),
    LeadershipLost,
    ConnectionLost,
    Rejected(ApplyError),
}

#[derive(Clone, Debug, Default)]
enum Phase {
    #[default]
    Idle,
    Waiting {
        attempt: u64,
        sent_at: Time,
    },
    Backoff {
        until: Time,
    },
}

#[derive(Clone, Debug)]
struct Current {
    /// Its entries in the history (none for a compaction or a past-revision read; two for
    /// the pair operations).
    hist: Vec<usize>,
    op: ReqOp,
    started: Time,
    pending: Pending,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Client {
    idx: usize,
    client_id: u64,
    seq: u64,
    /// Whether a write of this session was answered, so the cluster knows `client_id` (until
    /// then a sequence above 1 would be refused as from an expired session).
    session_known: bool,
    nodes: u64,
    leader_guess: NodeId,
    current: Option<Current>,
    phase: Phase,
    attempt: u64,
    stop: bool,
    final_keys: VecDeque<String>,
    values: u64,
    /// The last plain value this client saw in each key (`None`: absent): what its next CAS
    /// of the key expects.
    seen: BTreeMap<String, Option<String>>,
    /// The highest store revision this client saw (for past reads and compactions).
    max_revision: i64,
    /// A CAS that lost a race and retries next: its key and the tries so far.
    cas_retry: Option<(String, u8)>,
}

impl Client {
    pub(crate) fn new(idx: usize, client_id: u64, nodes: u64) -> Client {
        Client {
            idx,
            client_id,
            nodes,
            leader_guess: 1 + idx as u64 % nodes,
            ..Client::default()
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.current.is_none() && self.final_keys.is_empty() && self.stop
    }

    /// The client's next attempts go to `node` (a scenario's stale client-side leader cache).
    pub(crate) fn point_at(&mut self, node: NodeId) {
        self.leader_guess = node;
    }

    pub(crate) fn stop_new_ops(&mut self) {
        self.stop = true;
    }

    /// Client 0 reads every key once more (with `pairs`, the pair keys too).
    pub(crate) fn final_reads(&mut self, keys: usize, pairs: bool) {
        if self.idx == 0 {
            self.final_keys = (0..keys).map(|k| format!("k{k}")).collect();
            if pairs {
                self.final_keys
                    .extend(kv_ops::PAIR.iter().map(|k| k.to_string()));
            }
        }
    }

    pub(crate) fn wake(&mut self, w: &mut World) {
        let now = w.now();
        match self.phase {
            Phase::Idle => self.start_next(w),
            Phase::Waiting { sent_at, .. } if now >= sent_at + World::attempt_timeout() => {
                // No answer: try another node.
                self.leader_guess = other_node(w, self.leader_guess, self.nodes);
                self.retry_or_give_up(w, 0);
            }
            Phase::Backoff { until } if now >= until => self.send(w),
            _ => {}
        }
    }

    fn start_next(&mut self, w: &mut World) {
        let now = w.now();
        let next = if self.stop {
            let Some(key) = self.final_keys.pop_front() else {
                return;
            };
            Next::single(key.clone(), OpKind::Get, ReqOp::Read(key))
        } else if w.cfg.kv_txns {
            self.next_kv_op(w)
        } else {
            self.next_plain_op(w)
        };
        let hist = next
            .ops
            .into_iter()
            .map(|(key, kind)| {
                w.history.push(Op {
                    client: self.idx as u64,
                    key,
                    kind,
                    invoke: now,
                    complete: None,
                    result: None,
                });
                w.history.len() - 1
            })
            .collect();
        self.current = Some(Current {
            hist,
            op: next.req,
            started: now,
            pending: next.pending,
        });
        self.send(w);
    }

    /// The plain mix: puts, gets and deletes of one key.
    fn next_plain_op(&mut self, w: &mut World) -> Next {
        let keys = w.keys();
        let key = format!("k{}", w.rng().random_range(0..keys));
        match w.rng().random_range(0..20u8) {
            0..=9 => self.put_op(w, key),
            10..=16 => Next::single(key.clone(), OpKind::Get, ReqOp::Read(key)),
            _ => self.delete_op(key),
        }
    }

    /// A put of a fresh value (maybe a large one, see [`sized_value`]) to `key`.
    fn put_op(&mut self, w: &mut World, key: String) -> Next {
        let id = self.fresh_id();
        let value = sized_value(w, &id);
        let command = Command::Put {
            key: key.clone(),
            value,
            fence: None,
        };
        Next::single(key, OpKind::Put(id), self.write(command))
    }

    /// A delete of `key`.
    fn delete_op(&mut self, key: String) -> Next {
        let command = Command::Delete {
            key: key.clone(),
            fence: None,
        };
        Next::single(key, OpKind::Delete, self.write(command))
    }

    /// A value no one wrote before: `c<client>-<n>`.
    fn fresh_id(&mut self) -> String {
        self.values += 1;
        format!("c{}-{}", self.idx, self.values)
    }

    fn write(&mut self, command: Command) -> ReqOp {
        self.seq += 1;
        ReqOp::Write(Proposal {
            session: Some(Session {
                client_id: self.client_id,
                sequence: self.seq,
            }),
            command,
        })
    }

    fn send(&mut self, w: &mut World) {
        let Some(cur) = &self.current else {
            self.phase = Phase::Idle;
            return;
        };
        self.attempt += 1;
        let req = ClientReq {
            client: self.idx,
            attempt: self.attempt,
            op: cur.op.clone(),
        };
        w.send_to_node(self.leader_guess, req);
        self.phase = Phase::Waiting {
            attempt: self.attempt,
            sent_at: w.now(),
        };
        w.schedule_client(self.idx, World::attempt_timeout());
    }

    fn retry_or_give_up(&mut self, w: &mut World, backoff: Time) {
        let now = w.now();
        let Some(cur) = &self.current else { return };
        if now >= cur.started + OP_DEADLINE {
            // Give up: the outcome stays unknown in the history (maybe applied, maybe not).
            if !self.session_known {
                self.new_session();
            }
            self.current = None;
            self.phase = Phase::Idle;
            let think = w.rng().random_range(0..20_000);
            w.schedule_client(self.idx, think);
            return;
        }
        self.phase = Phase::Backoff {
            until: now + backoff,
        };
        w.schedule_client(self.idx, backoff);
    }

    /// A new session, as the Rust client starts one: a fresh id (unique across clients: the
    /// base ids are below 2^32) and sequence 1 next.
    fn new_session(&mut self) {
        self.client_id += 1 << 32;
        self.seq = 0;
        self.session_known = false;
    }

    pub(crate) fn on_reply(&mut self, w: &mut World, r: ClientReply) {
        let Phase::Waiting { attempt, .. } = self.phase else {
            return;
        };
        if r.attempt != attempt {
            return; // an answer to an earlier attempt; the session makes the current one agree
        }
        let is_write = matches!(
            &self.current,
            Some(Current {
                op: ReqOp::Write(_),
                ..
            })
        );
        if is_write && r.result.is_ok() {
            self.session_known = true;
        }
        let pending = match &self.current {
            Some(cur) => cur.pending.clone(),
            None => return,
        };
        let kv_answer = match (&pending, r.result) {
            (Pending::Single, Ok(Answer::Kv(mut res))) => {
                if let OpResult::Get(value) = &mut res {
                    if let Some(key) = self.current_key(w) {
                        self.learn(&key, value.as_deref().map(str::as_bytes));
                    }
                    if let Some(v) = value {
                        match value_id(v) {
                            Ok(id) => *v = id,
                            Err(e) => {
                                w.violation(format!(
                                    "client {} read a corrupted value: {e}",
                                    self.idx
                                ));
                                return;
                            }
                        }
                    }
                }
                self.complete(w, vec![res]);
                return;
            }
            (Pending::Single, Ok(answer)) => {
                w.violation(format!(
                    "client {} got {answer:?} for a key-value operation",
                    self.idx
                ));
                return;
            }
            (_, Ok(Answer::Applied(outcome, _))) => KvAnswer::Applied(outcome),
            (_, Ok(Answer::Range { revision, result })) => KvAnswer::Range { revision, result },
            (_, Ok(res @ (Answer::Kv(_) | Answer::KeptAlive(_)))) => {
                w.violation(format!(
                    "client {} got a plain answer {res:?} to {pending:?}",
                    self.idx
                ));
                return;
            }
            (Pending::Compact, Err(ReplyErr::Rejected(err @ ApplyError::Kv(_)))) => {
                KvAnswer::Rejected(err)
            }
            (_, Err(e)) => {
                self.on_error(w, e);
                return;
            }
        };
        match self.kv_answer(w, &pending, kv_answer) {
            Ok(results) => self.complete(w, results),
            Err(msg) => w.violation(msg),
        }
    }

    /// The key of the operation in flight, if it has one history entry.
    fn current_key(&self, w: &World) -> Option<String> {
        let cur = self.current.as_ref()?;
        let [i] = cur.hist.as_slice() else {
            return None;
        };
        w.history.get(*i).map(|op| op.key.clone())
    }

    /// The operation in flight completed with `results` (one per history entry).
    fn complete(&mut self, w: &mut World, results: Vec<OpResult>) {
        if let Some(cur) = self.current.take() {
            let now = w.now();
            if cur.hist.len() != results.len() {
                w.violation(format!(
                    "client {}: {} results for {} history entries",
                    self.idx,
                    results.len(),
                    cur.hist.len()
                ));
                return;
            }
            for (i, res) in cur.hist.into_iter().zip(results) {
                if let Some(op) = w.history.get_mut(i) {
                    op.complete = Some(now);
                    op.result = Some(res);
                }
            }
        }
        self.phase = Phase::Idle;
        let think = w.rng().random_range(0..20_000);
        w.schedule_client(self.idx, think);
    }

    /// An attempt failed: retry (elsewhere, after a backoff) or give up.
    fn on_error(&mut self, w: &mut World, err: ReplyErr) {
        match err {
            ReplyErr::NotLeader(_) | ReplyErr::LeadershipLost | ReplyErr::ConnectionLost => {
                let backoff = redirect(w, &err, &mut self.leader_guess, self.nodes);
                self.retry_or_give_up(w, backoff.unwrap_or(0));
            }
            ReplyErr::Rejected(ApplyError::SessionExpired { .. }) => {
                // The Rust client's UnknownOutcome: the op stays unknown in the history (an
                // earlier attempt may have applied), and the next write opens a new session.
                self.new_session();
                self.current = None;
                self.phase = Phase::Idle;
                let think = w.rng().random_range(0..20_000);
                w.schedule_client(self.idx, think);
            }
            ReplyErr::Rejected(err) => {
                w.violation(format!(
                    "client {} got a deterministic rejection it never provoked: {err}",
                    self.idx
                ));
            }
        }
    }
}

/// The value a put of `id` writes: `id` itself (mostly), or, one put in sixteen, `id/LEN`
/// padded with dots to LEN bytes, LEN up to [`MAX_VALUE_BYTES`] (half of them exactly).
fn sized_value(w: &mut World, id: &str) -> String {
    if !w.cfg.large_values {
        return id.to_string();
    }
    let len = match w.rng().random_range(0..32u8) {
        0 => MAX_VALUE_BYTES,
        1 => w.rng().random_range(64..MAX_VALUE_BYTES),
        _ => return id.to_string(),
    };
    let mut value = format!("{id}/{len}");
    value.push_str(&".".repeat(len - value.len()));
    value
}

/// Padding to compare a value's with, a page at a time (a memcmp, fast in debug builds too).
const DOTS: [u8; 4096] = [b'.'; 4096];

/// The id of a value [`sized_value`] built (other writers' values are their own id), or
/// what is wrong with it.
fn value_id(value: &str) -> Result<String, String> {
    let Some((id, rest)) = value.split_once('/') else {
        return Ok(value.to_string());
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let len: usize = rest[..digits]
        .parse()
        .map_err(|_| format!("{id}: no length"))?;
    let padded = rest.as_bytes()[digits..]
        .chunks(DOTS.len())
        .all(|chunk| chunk == &DOTS[..chunk.len()]);
    if value.len() != len || !padded {
        return Err(format!(
            "{id}: {} bytes, written as {len} bytes of padding",
            value.len()
        ));
    }
    Ok(id.to_string())
}

/// A random node other than `current` (of `nodes`), for a client trying elsewhere.
/// Sends attempt `attempt` of client `client`'s operation `op` to `node`, and wakes the
/// client when the attempt times out.
pub(crate) fn send_attempt(w: &mut World, client: usize, attempt: u64, node: NodeId, op: ReqOp) {
    w.send_to_node(
        node,
        ClientReq {
            client,
            attempt,
            op,
        },
    );
    w.schedule_client(client, World::attempt_timeout());
}

/// Where the next attempt goes after `err`, as every simulated client retries (`kvctl`'s
/// way): a leader hint not tried yet is followed almost at once, otherwise another node after
/// a backoff. Returns the backoff; `None` for an answer (`Rejected`), which is not retried.
pub(crate) fn redirect(
    w: &mut World,
    err: &ReplyErr,
    leader_guess: &mut NodeId,
    nodes: u64,
) -> Option<Time> {
    Some(match err {
        ReplyErr::NotLeader(Some(l)) if l != leader_guess => {
            *leader_guess = *l;
            w.rng().random_range(0..2_000)
        }
        ReplyErr::NotLeader(_) => {
            *leader_guess = other_node(w, *leader_guess, nodes);
            w.rng().random_range(10_000..50_000)
        }
        ReplyErr::LeadershipLost | ReplyErr::ConnectionLost => {
            *leader_guess = other_node(w, *leader_guess, nodes);
            w.rng().random_range(5_000..50_000)
        }
        ReplyErr::Rejected(_) => return None,
    })
}

pub(crate) fn other_node(w: &mut World, current: NodeId, nodes: u64) -> NodeId {
    // With membership changes: any node not decommissioned, added ones included.
    if let Some(ids) = w.client_targets() {
        let others: Vec<NodeId> = ids.into_iter().filter(|&i| i != current).collect();
        if others.is_empty() {
            return current;
        }
        return others[w.rng().random_range(0..others.len())];
    }
    let mut n = current;
    while n == current && nodes > 1 {
        n = w.rng().random_range(1..=nodes);
    }
    n
}
