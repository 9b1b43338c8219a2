//! Clients waiting on the driver: writes keyed by log index, linearizable reads keyed by
//! read id until a quorum confirms them, then by (read index, id) until applied catches up.

use super::error::ClientError;
use super::request::{ReadResult, ReadTarget, WriteResult};
use crate::raft::{LogIndex, ReadState, Term};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::oneshot;

type ReadWaiter = (ReadTarget, oneshot::Sender<ReadResult>);

/// The waiters of one driver.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Proposals by log index, with the term they were proposed in: a different term at that
    /// index when it is applied means the proposal was overwritten by another leader.
    writes: BTreeMap<LogIndex, (Term, oneshot::Sender<WriteResult>)>,
    /// Reads handed to `RaftCore::read_index`, not yet confirmed by a quorum.
    unconfirmed_reads: HashMap<u64, ReadWaiter>,
    /// Confirmed reads, served once `applied >= index` (keyed `(index, id)`).
    confirmed_reads: BTreeMap<(LogIndex, u64), ReadWaiter>,
    /// Last read id handed out.
    last_read_id: u64,
}

impl Pending {
    /// Registers a proposal.
    pub(super) fn add_write(
        &mut self,
        index: LogIndex,
        term: Term,
        reply: oneshot::Sender<WriteResult>,
    ) {
        if let Some((_, old)) = self.writes.insert(index, (term, reply)) {
            // Only possible if an earlier proposal at this index was never resolved: it
            // cannot be the entry that will be applied there any more.
            let _ = old.send(Err(ClientError::LeadershipLost));
        }
    }

    /// Removes the waiter of the proposal at `index`, if any.
    pub(super) fn take_write(
        &mut self,
        index: LogIndex,
    ) -> Option<(Term, oneshot::Sender<WriteResult>)> {
        self.writes.remove(&index)
    }

    /// A fresh read id (never 0).
    pub(super) fn next_read_id(&mut self) -> u64 {
        self.last_read_id += 1;
        self.last_read_id
    }

    /// Registers a read the core is confirming.
    pub(super) fn add_read(
        &mut self,
        id: u64,
        target: ReadTarget,
        reply: oneshot::Sender<ReadResult>,
    ) {
        self.unconfirmed_reads.insert(id, (target, reply));
    }

    /// A quorum confirmed read `rs.id`: it may be served once `rs.index` is applied.
    pub(super) fn confirm_read(&mut self, rs: ReadState) {
        if let Some(waiter) = self.unconfirmed_reads.remove(&rs.id) {
            self.confirmed_reads.insert((rs.index, rs.id), waiter);
        }
    }

    /// Takes the confirmed reads whose index is at or below `applied`.
    pub(super) fn servable_reads(&mut self, applied: LogIndex) -> Vec<ReadWaiter> {
        let later = self
            .confirmed_reads
            .split_off(&(applied.saturating_add(1), 0));
        std::mem::replace(&mut self.confirmed_reads, later)
            .into_values()
            .collect()
    }

    /// Fails everything that needs this node to still be leader: pending writes and reads
    /// not yet confirmed. Confirmed reads stay: their read index was confirmed while we were
    /// leader, so serving them once applied catches up is still linearizable.
    pub(super) fn fail_leader_bound(&mut self, err: &ClientError) {
        for (_, (_, reply)) in std::mem::take(&mut self.writes) {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.unconfirmed_reads) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    /// Fails every waiter (shutdown).
    pub(super) fn fail_all(&mut self, err: &ClientError) {
        self.fail_leader_bound(err);
        for (_, (_, reply)) in std::mem::take(&mut self.confirmed_reads) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    /// True if some write or read is waiting.
    pub(super) fn has_leader_bound(&self) -> bool {
        !self.writes.is_empty() || !self.unconfirmed_reads.is_empty()
    }

    /// Number of writes and reads waiting.
    pub(super) fn len(&self) -> usize {
        self.writes.len() + self.unconfirmed_reads.len() + self.confirmed_reads.len()
    }

    /// Forgets waiters whose caller went away (deadline or cancelled call).
    pub(super) fn prune_closed(&mut self) {
        self.writes.retain(|_, (_, r)| !r.is_closed());
        self.unconfirmed_reads.retain(|_, (_, r)| !r.is_closed());
        self.confirmed_reads.retain(|_, (_, r)| !r.is_closed());
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
