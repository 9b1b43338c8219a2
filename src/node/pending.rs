//! Clients waiting on the driver: writes keyed by log index, linearizable reads keyed by
//! read id until a quorum confirms them, then by (read index, id) until applied catches up.
//!
//! [`Waiters`] is the bookkeeping without I/O, generic over what a waiter is: the simulator
//! runs it with its simulated clients; [`Pending`] is the daemon's, with oneshot replies.

use super::error::ClientError;
use super::request::{ReadResult, ReadTarget, WriteResult};
use crate::raft::{LogIndex, ReadState, Term};
use std::collections::BTreeMap;
use tokio::sync::oneshot;

type ReadWaiter = (ReadTarget, oneshot::Sender<ReadResult>);

/// Writers (`W`) and readers (`R`) waiting on one node. Ordered maps only: the simulator
/// needs the same order in every run.
#[derive(Debug)]
pub(crate) struct Waiters<W, R> {
    /// Proposals by log index, with the term they were proposed in: a different term at that
    /// index when it is applied means the proposal was overwritten by another leader.
    writes: BTreeMap<LogIndex, (Term, W)>,
    /// Reads handed to `RaftCore::read_index`, not yet confirmed by a quorum.
    unconfirmed_reads: BTreeMap<u64, R>,
    /// Confirmed reads, served once `applied >= index` (keyed `(index, id)`).
    confirmed_reads: BTreeMap<(LogIndex, u64), R>,
    /// Last read id handed out.
    last_read_id: u64,
}

impl<W, R> Default for Waiters<W, R> {
    fn default() -> Self {
        Waiters {
            writes: BTreeMap::new(),
            unconfirmed_reads: BTreeMap::new(),
            confirmed_reads: BTreeMap::new(),
            last_read_id: 0,
        }
    }
}

impl<W, R> Waiters<W, R> {
    /// Registers a proposal; returns the waiter it displaced. That is only possible if an
    /// earlier proposal at this index was never resolved: it cannot be the entry that will
    /// be applied there any more, and its writer lost it.
    pub(crate) fn add_write(&mut self, index: LogIndex, term: Term, writer: W) -> Option<W> {
        self.writes.insert(index, (term, writer)).map(|(_, w)| w)
    }

    /// Removes the waiter of the proposal at `index`, if any.
    pub(crate) fn take_write(&mut self, index: LogIndex) -> Option<(Term, W)> {
        self.writes.remove(&index)
    }

    /// A fresh read id (never 0).
    pub(crate) fn next_read_id(&mut self) -> u64 {
        self.last_read_id += 1;
        self.last_read_id
    }

    /// Registers a read the core is confirming.
    pub(crate) fn add_read(&mut self, id: u64, reader: R) {
        self.unconfirmed_reads.insert(id, reader);
    }

    /// A quorum confirmed read `rs.id`: it may be served once `rs.index` is applied.
    pub(crate) fn confirm_read(&mut self, rs: ReadState) {
        if let Some(waiter) = self.unconfirmed_reads.remove(&rs.id) {
            self.confirmed_reads.insert((rs.index, rs.id), waiter);
        }
    }

    /// Takes the confirmed reads whose index is at or below `applied`, in (index, id) order.
    pub(crate) fn servable_reads(&mut self, applied: LogIndex) -> Vec<R> {
        let later = self
            .confirmed_reads
            .split_off(&(applied.saturating_add(1), 0));
        std::mem::replace(&mut self.confirmed_reads, later)
            .into_values()
            .collect()
    }

    /// Takes everything that needs this node to still be leader: pending writes and reads
    /// not yet confirmed. Confirmed reads stay: their read index was confirmed while we were
    /// leader, so serving them once applied catches up is still linearizable.
    pub(crate) fn take_leader_bound(&mut self) -> (Vec<W>, Vec<R>) {
        let writes = std::mem::take(&mut self.writes);
        let reads = std::mem::take(&mut self.unconfirmed_reads);
        (
            writes.into_values().map(|(_, w)| w).collect(),
            reads.into_values().collect(),
        )
    }

    /// Takes every waiter (shutdown, crash).
    pub(crate) fn take_all(&mut self) -> (Vec<W>, Vec<R>) {
        let (writes, mut reads) = self.take_leader_bound();
        reads.extend(std::mem::take(&mut self.confirmed_reads).into_values());
        (writes, reads)
    }

    /// True if some write or unconfirmed read is waiting.
    pub(crate) fn has_leader_bound(&self) -> bool {
        !self.writes.is_empty() || !self.unconfirmed_reads.is_empty()
    }

    /// Number of writes and reads waiting.
    pub(crate) fn len(&self) -> usize {
        self.writes.len() + self.unconfirmed_reads.len() + self.confirmed_reads.len()
    }

    /// Keeps only the writers and readers for which `keep_write` / `keep_read` hold.
    fn retain(&mut self, keep_write: impl Fn(&W) -> bool, keep_read: impl Fn(&R) -> bool) {
        self.writes.retain(|_, (_, w)| keep_write(w));
        self.unconfirmed_reads.retain(|_, r| keep_read(r));
        self.confirmed_reads.retain(|_, r| keep_read(r));
    }
}

/// The waiters of one driver: callers answered through oneshot channels.
#[derive(Debug, Default)]
pub(super) struct Pending(Waiters<oneshot::Sender<WriteResult>, ReadWaiter>);

impl Pending {
    /// Registers a proposal (failing an unresolved one at the same index).
    pub(super) fn add_write(
        &mut self,
        index: LogIndex,
        term: Term,
        reply: oneshot::Sender<WriteResult>,
    ) {
        if let Some(old) = self.0.add_write(index, term, reply) {
            let _ = old.send(Err(ClientError::LeadershipLost));
        }
    }

    /// Removes the waiter of the proposal at `index`, if any.
    pub(super) fn take_write(
        &mut self,
        index: LogIndex,
    ) -> Option<(Term, oneshot::Sender<WriteResult>)> {
        self.0.take_write(index)
    }

    /// A fresh read id (never 0).
    pub(super) fn next_read_id(&mut self) -> u64 {
        self.0.next_read_id()
    }

    /// Registers a read the core is confirming.
    pub(super) fn add_read(
        &mut self,
        id: u64,
        target: ReadTarget,
        reply: oneshot::Sender<ReadResult>,
    ) {
        self.0.add_read(id, (target, reply));
    }

    /// A quorum confirmed read `rs.id`: it may be served once `rs.index` is applied.
    pub(super) fn confirm_read(&mut self, rs: ReadState) {
        self.0.confirm_read(rs);
    }

    /// Takes the confirmed reads whose index is at or below `applied`.
    pub(super) fn servable_reads(&mut self, applied: LogIndex) -> Vec<ReadWaiter> {
        self.0.servable_reads(applied)
    }

    /// Fails everything that needs this node to still be leader (see
    /// [`Waiters::take_leader_bound`]).
    pub(super) fn fail_leader_bound(&mut self, err: &ClientError) {
        let (writes, reads) = self.0.take_leader_bound();
        fail(writes, reads, err);
    }

    /// Fails every waiter (shutdown).
    pub(super) fn fail_all(&mut self, err: &ClientError) {
        let (writes, reads) = self.0.take_all();
        fail(writes, reads, err);
    }

    /// True if some write or read is waiting.
    pub(super) fn has_leader_bound(&self) -> bool {
        self.0.has_leader_bound()
    }

    /// Number of writes and reads waiting.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Forgets waiters whose caller went away (deadline or cancelled call).
    pub(super) fn prune_closed(&mut self) {
        self.0.retain(|w| !w.is_closed(), |(_, r)| !r.is_closed());
    }
}

/// Answers every writer and reader with `err`.
fn fail(writes: Vec<oneshot::Sender<WriteResult>>, reads: Vec<ReadWaiter>, err: &ClientError) {
    for reply in writes {
        let _ = reply.send(Err(err.clone()));
    }
    for (_, reply) in reads {
        let _ = reply.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_reads_wait_for_applied_index() {
        let mut p = Pending::default();
        let (tx1, _rx1) = oneshot::channel();
        let (tx2, _rx2) = oneshot::channel();
        let a = p.next_read_id();
        let b = p.next_read_id();
        assert_ne!(a, b);
        p.add_read(a, ReadTarget::Key("a".into()), tx1);
        p.add_read(b, ReadTarget::Lock("b".into()), tx2);
        p.confirm_read(ReadState { id: a, index: 5 });
        p.confirm_read(ReadState { id: b, index: 7 });
        p.confirm_read(ReadState { id: 99, index: 1 });
        assert!(p.servable_reads(4).is_empty());
        let keys: Vec<_> = p.servable_reads(6).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![ReadTarget::Key("a".into())]);
        let keys: Vec<_> = p.servable_reads(7).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![ReadTarget::Lock("b".into())]);
    }

    #[test]
    fn leadership_loss_fails_writes_and_unconfirmed_reads_only() {
        let mut p = Pending::default();
        let (wtx, mut wrx) = oneshot::channel();
        p.add_write(3, 2, wtx);
        let (rtx, mut rrx) = oneshot::channel();
        p.add_read(1, ReadTarget::Key("k".into()), rtx);
        let (ctx, mut crx) = oneshot::channel();
        p.add_read(2, ReadTarget::Key("c".into()), ctx);
        p.confirm_read(ReadState { id: 2, index: 3 });
        assert!(p.has_leader_bound());
        p.fail_leader_bound(&ClientError::LeadershipLost);
        assert!(!p.has_leader_bound());
        assert_eq!(wrx.try_recv().unwrap(), Err(ClientError::LeadershipLost));
        assert_eq!(rrx.try_recv().unwrap(), Err(ClientError::LeadershipLost));
        assert!(crx.try_recv().is_err(), "confirmed read must still wait");
        p.fail_all(&ClientError::ShuttingDown);
        assert_eq!(crx.try_recv().unwrap(), Err(ClientError::ShuttingDown));
    }

    /// The simulator's use: plain values as waiters, in an order that does not depend on the
    /// run (ordered maps), confirmed reads kept across a loss of leadership.
    #[test]
    fn waiters_are_taken_in_a_fixed_order() {
        let mut w: Waiters<&str, &str> = Waiters::default();
        assert_eq!(w.add_write(5, 1, "w5"), None);
        assert_eq!(w.add_write(2, 1, "w2"), None);
        assert_eq!(w.add_write(5, 2, "w5'"), Some("w5"));
        for (id, r) in [(3, "r3"), (1, "r1"), (2, "r2")] {
            w.add_read(id, r);
        }
        w.confirm_read(ReadState { id: 2, index: 9 });
        w.confirm_read(ReadState { id: 3, index: 4 });
        assert_eq!(w.take_leader_bound(), (vec!["w2", "w5'"], vec!["r1"]));
        assert_eq!(w.len(), 2);
        assert_eq!(w.servable_reads(8), vec!["r3"]);
        assert_eq!(w.take_all(), (vec![], vec!["r2"]));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn prune_drops_waiters_whose_caller_left() {
        let mut p = Pending::default();
        let (tx, rx) = oneshot::channel();
        p.add_write(1, 1, tx);
        drop(rx);
        p.prune_closed();
        assert!(p.take_write(1).is_none());
    }
}
