//! Simulated lock clients: services competing for one lock. Each acquires it, and while it
//! believes it holds it (by its own clock: the operation's start + TTL - margin) it keeps the
//! lease alive every TTL/3 and writes the key `fenced` with its fencing token. A stale token
//! or fence means the lock was lost: back to acquiring. Sometimes a service pauses (a zombie:
//! no keep-alives for longer than the TTL) and then writes with its old token anyway.
//!
//! One operation at a time, retried across nodes with the same session sequence (so a retry
//! applies at most once), like the key-value clients.

use rand::Rng;

use super::client::{other_node, redirect, send_attempt, Answer, ClientReply, ReplyErr, ReqOp};
use super::world::{Time, World, OP_DEADLINE};
use crate::raft::NodeId;
use crate::state_machine::{ApplyError, Command, Fence, Outcome as SmOutcome, Proposal, Session};

/// The lock the services compete for, and the key they write under it.
pub const LOCK: &str = "svc";
const KEY: &str = "fenced";
const MS: Time = 1_000;
/// Lease length the services ask for.
const TTL_MS: u64 = 300;
/// How much earlier than the lease end a service stops trusting its lock.
const MARGIN: Time = 60 * MS;

#[derive(Clone, Debug)]
struct Pending {
    command: Command,
    seq: u64,
    started: Time,
    attempt: u64,
    sent_at: Time,
    /// Waiting for a backoff to end rather than for an answer.
    backoff_until: Option<Time>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct LockClient {
    /// Global client index (after the key-value clients).
    idx: usize,
    name: String,
    client_id: u64,
    seq: u64,
    /// Whether a write of this session was answered (see `sim::client`).
    session_known: bool,
    nodes: u64,
    leader_guess: NodeId,
    pending: Option<Pending>,
    /// (token, believed valid until) while it thinks it holds the lock.
    held: Option<(u64, Time)>,
    last_keepalive: Time,
    writes: u64,
    /// A zombie: paused until then, holding this (probably stale) token.
    paused_until: Option<(Time, u64)>,
    next_at: Time,
    attempt: u64,
    stop: bool,
}

impl LockClient {
    pub(crate) fn new(idx: usize, name: &str, client_id: u64, nodes: u64) -> LockClient {
        LockClient {
            idx,
            name: name.to_string(),
            client_id,
            nodes,
            leader_guess: 1 + idx as u64 % nodes,
            ..LockClient::default()
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.stop && self.pending.is_none()
    }

    pub(crate) fn stop_new_ops(&mut self) {
        self.stop = true;
    }

    fn ttl() -> Time {
        TTL_MS * MS
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
        if now < self.next_at || self.stop {
            return;
        }
        if let Some((until, token)) = self.paused_until {
            if now < until {
                return;
            }
            // The zombie wakes up and writes with the token it had, believing it still holds.
            self.paused_until = None;
            self.fenced_write(w, token);
            return;
        }
        match self.held {
            Some((_, valid)) if now >= valid => {
                self.held = None;
                self.acquire(w);
            }
            None => self.acquire(w),
            Some((token, _)) => {
                if w.rng().random_bool(0.04) {
                    let pause = w.rng().random_range(Self::ttl() * 2..Self::ttl() * 4);
                    w.note(|| format!("{} pauses (zombie) holding token {token}", self.name));
                    self.held = None;
                    self.paused_until = Some((now + pause, token));
                    self.next_at = now + pause;
                    w.schedule_client(self.idx, pause);
                } else if w.rng().random_bool(0.03) {
                    self.start(
                        w,
                        Command::Release {
                            name: LOCK.into(),
                            token,
                        },
                    );
                } else if now >= self.last_keepalive + Self::ttl() / 3 {
                    self.last_keepalive = now;
                    self.start(
                        w,
                        Command::KeepAlive {
                            name: LOCK.into(),
                            token,
                        },
                    );
                } else {
                    self.fenced_write(w, token);
                }
            }
        }
    }

    fn acquire(&mut self, w: &mut World) {
        let command = Command::Acquire {
            name: LOCK.into(),
            holder: self.name.clone(),
            ttl_ms: TTL_MS,
        };
        self.start(w, command);
    }

    fn fenced_write(&mut self, w: &mut World, token: u64) {
        self.writes += 1;
        let command = Command::Put {
            key: KEY.into(),
            value: format!("{}-{}", self.name, self.writes),
            fence: Some(Fence {
                lock: LOCK.into(),
                token,
            }),
        };
        self.start(w, command);
    }

    fn start(&mut self, w: &mut World, command: Command) {
        self.seq += 1;
        let now = w.now();
        self.pending = Some(Pending {
            command,
            seq: self.seq,
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
        let op = ReqOp::Write(Proposal {
            session: Some(Session {
                client_id: self.client_id,
                sequence: p.seq,
            }),
            command: p.command.clone(),
        });
        send_attempt(w, self.idx, self.attempt, self.leader_guess, op);
    }

    fn retry_or_give_up(&mut self, w: &mut World, backoff: Time) {
        let now = w.now();
        let Some(p) = &mut self.pending else { return };
        if now >= p.started + OP_DEADLINE {
            // Unknown outcome: assume the worst (the lock is not ours) and start over.
            if !self.session_known {
                self.new_session();
            }
            self.pending = None;
            self.held = None;
            self.think(w, 0..20 * MS);
            return;
        }
        p.backoff_until = Some(now + backoff);
        w.schedule_client(self.idx, backoff);
    }

    fn think(&mut self, w: &mut World, range: std::ops::Range<Time>) {
        let d = w.rng().random_range(range);
        self.next_at = w.now() + d;
        w.schedule_client(self.idx, d);
    }

    /// A new session: a fresh id (unique: the base ids are below 2^32), sequence 1 next.
    fn new_session(&mut self) {
        self.client_id += 1 << 32;
        self.seq = 0;
        self.session_known = false;
    }

    pub(crate) fn on_reply(&mut self, w: &mut World, r: ClientReply) {
        let Some(p) = &self.pending else { return };
        if p.backoff_until.is_some() || r.attempt != p.attempt {
            return;
        }
        let started = (p.started, p.seq);
        let command = p.command.clone();
        if matches!(r.result, Ok(_) | Err(ReplyErr::Rejected(_))) {
            self.session_known = true;
        }
        match r.result {
            Err(ReplyErr::Rejected(ApplyError::SessionExpired { .. })) => {
                // Unknown outcome (an earlier attempt may have applied): as on a give-up.
                self.new_session();
                self.pending = None;
                self.held = None;
                self.think(w, 0..20 * MS);
            }
            Ok(Answer::Applied(outcome, index)) => {
                self.pending = None;
                self.on_outcome(w, &command, started, Ok((outcome, index)));
            }
            Err(ReplyErr::Rejected(err)) => {
                self.pending = None;
                self.on_outcome(w, &command, started, Err(err));
            }
            // What a node answers to a plain put: the checks below still apply.
            Ok(Answer::Kv(crate::lincheck::OpResult::Put)) => {
                self.pending = None;
                self.on_outcome(w, &command, started, Ok((SmOutcome::Put, 0)));
            }
            Ok(res @ (Answer::Kv(_) | Answer::Range { .. } | Answer::KeptAlive(_))) => {
                w.violation(format!(
                    "{} got a key-value answer {res:?} to {command:?}",
                    self.name
                ))
            }
            Err(
                err
                @ (ReplyErr::NotLeader(_) | ReplyErr::LeadershipLost | ReplyErr::ConnectionLost),
            ) => {
                let backoff = redirect(w, &err, &mut self.leader_guess, self.nodes);
                self.retry_or_give_up(w, backoff.unwrap_or(0));
            }
        }
    }

    fn on_outcome(
        &mut self,
        w: &mut World,
        command: &Command,
        (started, seq): (Time, u64),
        result: Result<(SmOutcome, u64), ApplyError>,
    ) {
        let name = self.name.clone();
        match (command, result) {
            (Command::Acquire { .. }, Ok((SmOutcome::Acquired { token, .. }, _))) => {
                w.note(|| format!("{name} holds {LOCK} with token {token}"));
                self.held = Some((token, started + Self::ttl() - MARGIN));
                self.last_keepalive = started;
            }
            (Command::Acquire { .. }, Err(ApplyError::LockHeld { .. })) => {
                self.think(w, 20 * MS..150 * MS);
                return;
            }
            (Command::KeepAlive { token, .. }, Ok((SmOutcome::KeptAlive { .. }, _))) => {
                if let Some((held, valid)) = &mut self.held {
                    if held == token {
                        *valid = started + Self::ttl() - MARGIN;
                    }
                }
            }
            (Command::Release { .. }, Ok((SmOutcome::Released, _))) => {
                self.held = None;
                self.think(w, 0..100 * MS);
                return;
            }
            (Command::Put { fence: Some(f), .. }, Ok((SmOutcome::Put, acked_at))) => {
                match w.lock_check().applied_with(self.client_id, seq, &f.lock) {
                    Some((_, Some(current))) if current == f.token => {}
                    found => w.violation(format!(
                        "{name}'s write fenced with token {} of {} was acknowledged (at index {acked_at}) but no node applied it while that token was current: (applied at, current token) = {found:?}",
                        f.token, f.lock
                    )),
                }
                w.lock_check_mut().fenced_ok += 1;
            }
            // An Acquire that renewed its own grant after the leader proposed that grant's
            // expiry is answered LockExpiring (`node::leases`): not acquired.
            (Command::Acquire { .. }, Err(ApplyError::LockExpiring { .. }))
            | (
                Command::KeepAlive { .. } | Command::Release { .. },
                Err(ApplyError::StaleToken { .. }),
            )
            | (Command::Put { .. }, Err(ApplyError::StaleFence { .. })) => {
                if matches!(command, Command::Put { .. }) {
                    w.lock_check_mut().fenced_stale += 1;
                }
                w.note(|| format!("{name} lost {LOCK}: {command:?} was stale"));
                self.held = None;
            }
            (c, r) => {
                w.violation(format!("{name}: unexpected answer {r:?} to {c:?}"));
                return;
            }
        }
        self.think(w, 0..(TTL_MS / 10) * MS);
    }
}
