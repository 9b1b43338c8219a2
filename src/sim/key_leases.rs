//! The key-lease workload (`SimConfig::key_leases`) and its checkers.
//!
//! Workload: each simulated client grants leases on keys (TTLs drawn around the minimum the
//! etcd front end raises every grant to, `rpc::etcd::member::min_lease_ttl` of the simulated
//! election timeout), puts keys of a small shared pool attached to them (plain puts and
//! Txn puts) or to no lease, renews them through the leader's keep-alive (the driver's
//! `Request::KeyLease`: a leader that applied an entry of its own term restarts the TTL and
//! answers once a quorum confirmed it still leads, as a linearizable read), and
//! sometimes revokes one or stops renewing it (dies). When faults stop, every client stops
//! renewing: every lease must then run out.
//!
//! Checkers:
//! - at every applied `LeaseRevoke`, on every node: it deletes exactly the keys whose current
//!   version carries that lease (found by scanning every key, not through the key space's
//!   lease index), all at one revision (the one before + 1, + 0 when it deleted nothing),
//!   and changes no other key;
//! - every renewal answered to a client holds: a lease a leader renewed at time t for TTL s
//!   is not revoked by the lease clock before t + s (checked at each apply: the first node to
//!   apply it applies it earliest); only a revoke a client asked for is exempt; and when a
//!   renewal is answered, no leader of a newer term was elected before it (that leader's
//!   clock restarted the lease earlier, so would end it before t + s);
//! - at the end (`world.rs`): every replica holds the same lease table, and within a bound
//!   after the clients stopped no lease and no leased key is left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;

use super::client::{other_node, redirect, send_attempt, Answer, ClientReply, ReplyErr, ReqOp};
use super::world::{Time, World, ELECTION_TIMEOUT, MS, OP_DEADLINE};
use crate::raft::{LogIndex, NodeId, Term};
use crate::rpc::etcd::member::min_lease_ttl;
use crate::state_machine::mvcc::{
    EventKind, MvccError, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::state_machine::{
    ApplyError, Command, KvResult, KvWrite, Outcome as SmOutcome, Proposal, StateMachine,
};

/// Keys the lease clients share (so a put moves a key from one lease to another).
const KEYS: usize = 6;
/// Leases one client holds at most.
const MAX_LEASES: usize = 2;

/// etcd's minimum TTL for the simulated cluster, as the front end raises grants to it.
fn min_ttl() -> i64 {
    min_lease_ttl(Duration::from_micros(ELECTION_TIMEOUT))
}

/// A lease this client holds and renews (unless it died).
#[derive(Clone, Debug)]
struct Held {
    id: i64,
    ttl: i64,
    last_renewal: Time,
}

/// The operation in flight.
#[derive(Clone, Debug)]
enum Op {
    Grant,
    Put { lease: i64 },
    Revoke(i64),
    KeepAlive(i64),
}

#[derive(Clone, Debug)]
struct Pending {
    op: Op,
    req: ReqOp,
    started: Time,
    attempt: u64,
    sent_at: Time,
    /// Waiting for a backoff to end rather than for an answer.
    backoff_until: Option<Time>,
}

/// One simulated client of leases on keys.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyLeaseClient {
    /// Global client index (after the key-value and the lock clients).
    idx: usize,
    nodes: u64,
    leader_guess: NodeId,
    pending: Option<Pending>,
    held: Vec<Held>,
    attempt: u64,
    puts: u64,
    stop: bool,
}

impl KeyLeaseClient {
    pub(crate) fn new(idx: usize, nodes: u64) -> Self {
        KeyLeaseClient {
            idx,
            nodes,
            leader_guess: 1 + idx as u64 % nodes,
            ..Self::default()
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.stop && self.pending.is_none()
    }

    /// Faults stopped: no new operation, and every lease is left to run out.
    pub(crate) fn stop_new_ops(&mut self) {
        self.stop = true;
        self.held.clear();
    }

    pub(crate) fn wake(&mut self, w: &mut World) {
        let now = w.now();
        if let Some(p) = &self.pending {
            match p.backoff_until {
                Some(until) if now >= until => self.send(w),
                None if now >= p.sent_at + World::attempt_timeout() => {
                    self.leader_guess = other_node(w, self.leader_guess, self.nodes);
                    self.retry_or_give_up(w, 0);
                }
                _ => {}
            }
            return;
        }
        if self.stop {
            return;
        }
        // Renewals first: every TTL/3, as etcd's client does.
        if let Some(h) = self
            .held
            .iter()
            .find(|h| now >= h.last_renewal + ttl_time(h.ttl) / 3)
        {
            let id = h.id;
            return self.start(w, Op::KeepAlive(id), ReqOp::KeepAlive(id));
        }
        let roll = w.rng().random_range(0..100);
        if self.held.is_empty() || (self.held.len() < MAX_LEASES && roll < 8) {
            let asked = w.rng().random_range(0..=2);
            let command = Command::LeaseGrant {
                id: 0,
                ttl: i64::max(asked, min_ttl()),
            };
            return self.start(w, Op::Grant, write(command));
        }
        let pick = w.rng().random_range(0..self.held.len());
        let id = self.held[pick].id;
        match roll {
            0..=2 => {
                // Dies: stops renewing; the lease must run out on the leader's clock.
                w.note(|| format!("lease client {} stops renewing lease {id}", self.idx));
                self.held.remove(pick);
                self.think(w);
            }
            3..=5 => {
                self.held.remove(pick);
                w.key_lease_check_mut().client_revoked.insert(id);
                self.start(w, Op::Revoke(id), write(Command::LeaseRevoke { id }));
            }
            _ => {
                let key = format!("lk{}", w.rng().random_range(0..KEYS));
                let lease = if roll < 20 { 0 } else { id };
                self.puts += 1;
                let put = PutRequest {
                    key: key.into_bytes(),
                    value: format!("c{}-{}", self.idx, self.puts).into_bytes(),
                    lease,
                    ..PutRequest::default()
                };
                // One in three through a Txn (its puts attach keys too).
                let op = if w.rng().random_range(0..3) == 0 {
                    KvWrite::Txn(TxnRequest {
                        compare: Vec::new(),
                        success: vec![RequestOp::Put(put)],
                        failure: Vec::new(),
                    })
                } else {
                    KvWrite::Put(put)
                };
                self.start(w, Op::Put { lease }, write(Command::Kv { op, fence: None }));
            }
        }
    }

    fn start(&mut self, w: &mut World, op: Op, req: ReqOp) {
        let now = w.now();
        self.pending = Some(Pending {
            op,
            req,
            started: now,
            attempt: 0,
            sent_at: now,
            backoff_until: None,
        });
        self.send(w);
    }

    fn send(&mut self, w: &mut World) {
        let Some(p) = &mut self.pending else { return };
        self.attempt += 1;
        p.attempt = self.attempt;
        p.sent_at = w.now();
        p.backoff_until = None;
        let op = p.req.clone();
        send_attempt(w, self.idx, self.attempt, self.leader_guess, op);
    }

    fn retry_or_give_up(&mut self, w: &mut World, backoff: Time) {
        let now = w.now();
        let Some(p) = &mut self.pending else { return };
        // A keep-alive is not worth retrying past a third of the shortest TTL: the next one
        // is due by then.
        let deadline = match p.op {
            Op::KeepAlive(_) => ttl_time(min_ttl()) / 3,
            _ => OP_DEADLINE,
        };
        if now >= p.started + deadline {
            // Unknown outcome: a grant may have made a lease nobody renews (it runs out), a
            // put may have attached a key; both are fine.
            self.pending = None;
            self.think(w);
            return;
        }
        p.backoff_until = Some(now + backoff);
        w.schedule_client(self.idx, backoff);
    }

    fn think(&mut self, w: &mut World) {
        let d = w.rng().random_range(0..60 * MS);
        w.schedule_client(self.idx, d);
    }

    pub(crate) fn on_reply(&mut self, w: &mut World, r: ClientReply) {
        let Some(p) = &self.pending else { return };
        if p.backoff_until.is_some() || r.attempt != p.attempt {
            return;
        }
        let (op, started) = (p.op.clone(), p.started);
        let result = match r.result {
            Err(
                err
                @ (ReplyErr::NotLeader(_) | ReplyErr::LeadershipLost | ReplyErr::ConnectionLost),
            ) => {
                let backoff = redirect(w, &err, &mut self.leader_guess, self.nodes);
                return self.retry_or_give_up(w, backoff.unwrap_or(0));
            }
            Ok(answer) => Ok(answer),
            Err(ReplyErr::Rejected(err)) => Err(err),
        };
        self.pending = None;
        self.on_answer(w, op, started, result);
        self.think(w);
    }

    fn on_answer(
        &mut self,
        w: &mut World,
        op: Op,
        started: Time,
        result: Result<Answer, ApplyError>,
    ) {
        let lease_gone = |e: &ApplyError, id: i64| matches!(e, ApplyError::Kv(MvccError::LeaseNotFound(l)) if *l == id);
        match (op, result) {
            (Op::Grant, Ok(Answer::Applied(SmOutcome::LeaseGranted { id, ttl }, _))) => {
                w.key_lease_check_mut().grants += 1;
                if !self.stop {
                    self.held.push(Held {
                        id,
                        ttl,
                        last_renewal: started,
                    });
                }
            }
            (Op::KeepAlive(id), Ok(Answer::KeptAlive(ttl))) => {
                if let Some(i) = self.held.iter().position(|h| h.id == id) {
                    if ttl > 0 {
                        self.held[i].last_renewal = started;
                    } else {
                        // Too late: the lease ran out (or its revoke is on its way).
                        self.held.remove(i);
                    }
                }
            }
            (
                Op::Put { .. },
                Ok(Answer::Applied(SmOutcome::Kv(KvResult::Put(_) | KvResult::Txn(_)), _)),
            ) => {}
            (Op::Revoke(_), Ok(Answer::Applied(SmOutcome::LeaseRevoked { .. }, _))) => {}
            // The lease ran out before the put or the revoke applied.
            (Op::Put { lease } | Op::Revoke(lease), Err(e)) if lease_gone(&e, lease) => {
                self.held.retain(|h| h.id != lease);
            }
            (op, r) => w.violation(format!(
                "lease client {}: unexpected answer {r:?} to {op:?}",
                self.idx
            )),
        }
    }
}

/// A write proposal without a session (a retried grant may grant twice: the extra lease is
/// never renewed and runs out).
fn write(command: Command) -> ReqOp {
    ReqOp::Write(Proposal {
        session: None,
        command,
    })
}

/// A TTL in seconds as simulated time.
fn ttl_time(ttl: i64) -> Time {
    u64::try_from(ttl).unwrap_or(0) * 1_000 * MS
}

/// What the key space held before a `LeaseRevoke` applied on one node.
pub(crate) struct BeforeRevoke {
    id: i64,
    revision: i64,
    /// Every live key with its mod revision and lease.
    keys: BTreeMap<Vec<u8>, (i64, i64)>,
}

impl BeforeRevoke {
    /// Scans every live key of `sm` before it applies the revoke of lease `id`.
    pub(crate) fn take(sm: &StateMachine, id: i64) -> Self {
        BeforeRevoke {
            id,
            revision: sm.revision(),
            keys: live_keys(sm),
        }
    }

    /// The keys whose current version carries the lease.
    fn attached(&self) -> BTreeSet<&[u8]> {
        self.keys
            .iter()
            .filter(|(_, (_, lease))| *lease == self.id)
            .map(|(k, _)| k.as_slice())
            .collect()
    }
}

/// Every live key of `sm` as key → (mod revision, lease).
fn live_keys(sm: &StateMachine) -> BTreeMap<Vec<u8>, (i64, i64)> {
    sm.key_space()
        .range(&RangeRequest::every_key())
        .map(|r| {
            r.kvs
                .into_iter()
                .map(|kv| (kv.key, (kv.mod_revision, kv.lease)))
                .collect()
        })
        .unwrap_or_default()
}

/// The key-lease checkers' records (one for the whole run; nodes report to it).
#[derive(Debug, Default)]
pub(crate) struct KeyLeaseCheck {
    /// Lease id → (when a leader last renewed it, until when that renewal holds it).
    renewed: BTreeMap<i64, (Time, Time)>,
    /// Leases a client asked to revoke (their revokes may come at any time).
    pub(crate) client_revoked: BTreeSet<i64>,
    /// Grants answered to clients.
    pub(crate) grants: u64,
    /// Keep-alives answered with a TTL.
    pub(crate) renewals: u64,
    /// Revokes applied (on some node) that deleted keys.
    pub(crate) revokes_with_keys: u64,
    /// Term → when a node first became leader in it (each restarts every lease's TTL).
    elections: BTreeMap<Term, Time>,
}

impl KeyLeaseCheck {
    /// A node became leader in `term` at `now`.
    pub(crate) fn on_leader(&mut self, term: Term, now: Time) {
        self.elections.entry(term).or_insert(now);
    }

    /// A keep-alive of lease `id` was answered to a client: `node`, leader of `term`,
    /// renewed it at `at` for `ttl` seconds. No renewal is exempt: the daemon answers only
    /// once a quorum confirmed its leadership after the renewal, so any newer leader was
    /// elected, and restarted the lease's full TTL, after `at`. Checked here at once (a
    /// leader of a newer term elected by then measures the lease from before the renewal),
    /// and at every revoke the clock proposes.
    ///
    /// # Errors
    /// A renewal answered by a leader that a newer term had already replaced.
    pub(crate) fn renewed(
        &mut self,
        node: NodeId,
        term: Term,
        id: i64,
        at: Time,
        ttl: i64,
    ) -> Result<(), String> {
        if let Some((newer, elected)) = self
            .elections
            .range(term + 1..)
            .find(|(_, elected)| **elected <= at)
        {
            return Err(format!(
                "lease renewed by a deposed leader: node {node}, leader of term {term}, answered a keep-alive of lease {id} renewed at t={}ms, but term {newer} had a leader since t={}ms, whose lease clock does not count it",
                at / MS,
                elected / MS
            ));
        }
        self.renewals += 1;
        let until = at + ttl_time(ttl);
        let r = self.renewed.entry(id).or_insert((at, until));
        if until >= r.1 {
            *r = (at, until);
        }
        Ok(())
    }

    /// Node `node` applied the revoke at `index` (the key space before it: `before`) with
    /// `result` at time `now`: the checks of the module doc.
    pub(crate) fn after_revoke(
        &mut self,
        node: NodeId,
        index: LogIndex,
        before: &BeforeRevoke,
        result: Option<&Result<SmOutcome, ApplyError>>,
        sm: &StateMachine,
        now: Time,
    ) -> Result<(), String> {
        let id = before.id;
        let Some(Ok(SmOutcome::LeaseRevoked { deleted })) = result else {
            return Ok(());
        };
        if let Some(&(at, until)) = self.renewed.get(&id) {
            if now < until && !self.client_revoked.contains(&id) {
                return Err(format!(
                    "lease expired early: node {node} applied the lease clock's revoke of lease {id} (entry {index}) at t={}ms, but a leader renewed it at t={}ms until t={}ms",
                    now / MS,
                    at / MS,
                    until / MS
                ));
            }
        }
        let attached = before.attached();
        let want_rev = before.revision + i64::from(!attached.is_empty());
        let after = live_keys(sm);
        let mut expected = before.keys.clone();
        expected.retain(|k, _| !attached.contains(k.as_slice()));
        let gone: Vec<String> = before
            .keys
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let names: Vec<String> = attached
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        if after != expected || usize::try_from(*deleted).ok() != Some(attached.len()) {
            return Err(format!(
                "lease revoke: node {node} revoked lease {id} (entry {index}): the keys attached were {names:?}, it deleted {gone:?} (reported {deleted})"
            ));
        }
        if sm.revision() != want_rev {
            return Err(format!(
                "lease revoke: node {node} revoked lease {id} (entry {index}) deleting {names:?}: revision went from {} to {} (one revision for the whole revoke)",
                before.revision,
                sm.revision()
            ));
        }
        if !attached.is_empty() {
            self.revokes_with_keys += 1;
            let events = sm
                .key_space()
                .changes(want_rev, &[0], &[0], false)
                .unwrap_or_default();
            let at_one: BTreeSet<&[u8]> = events
                .iter()
                .filter(|e| e.kind == EventKind::Delete && e.kv.mod_revision == want_rev)
                .map(|e| e.kv.key.as_slice())
                .collect();
            if events.len() != attached.len() || at_one != attached {
                return Err(format!(
                    "lease revoke: node {node} revoked lease {id} (entry {index}): its changes at revision {want_rev} are {} events, not the deletes of {names:?}",
                    events.len()
                ));
            }
        }
        Ok(())
    }
}

/// Keys still attached to a lease on `sm` (after every lease should have run out).
pub(crate) fn leased_keys(sm: &StateMachine) -> Vec<String> {
    live_keys(sm)
        .into_iter()
        .filter(|(_, (_, lease))| *lease != 0)
        .map(|(k, (_, lease))| format!("{}@{lease}", String::from_utf8_lossy(&k)))
        .collect()
}
