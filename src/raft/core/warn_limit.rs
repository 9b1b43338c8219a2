//! Rate limit for the warnings a peer can trigger with every message it sends (a stuck
//! follower refusing to overwrite a committed entry, a node outside the cluster, a peer that
//! sends malformed batches): without one, a peer that repeats the same mistake forever fills
//! the disk with logs (issue 11). The core has no clock, so the limit counts ticks: the first
//! occurrence of each kind is logged, then at most one per [`WARN_EVERY_TICKS`], carrying how
//! many were suppressed since the last one logged.

/// Ticks between two logs of one kind of warning (5 s at the default 50 ms heartbeat tick).
pub(super) const WARN_EVERY_TICKS: u64 = 100;

/// The warnings a peer can repeat at will, one limit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Warning {
    /// A message from a node outside the cluster, or with an impossible term.
    NonMember,
    /// An AppendEntries whose entries do not follow its `prev_log_index`.
    MalformedAppend,
    /// An AppendEntries that would overwrite an entry this node knows committed.
    OverwriteCommitted,
    /// A leader message from another leader of this node's own term.
    SecondLeader,
    /// A snapshot whose term is after its sender's.
    SnapshotFromTheFuture,
    /// A follower that lost entries it acknowledged.
    LostData,
}

/// The number of kinds (the last variant's index + 1).
const KINDS: usize = Warning::LostData as usize + 1;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// The tick of the last occurrence logged, if any was.
    logged_at: Option<u64>,
    /// Occurrences since then that were not logged.
    suppressed: u64,
}

/// One slot per [`Warning`] kind, and the ticks seen so far.
#[derive(Debug, Default)]
pub(super) struct WarnLimit {
    now: u64,
    slots: [Slot; KINDS],
}

impl WarnLimit {
    /// One tick of logical time passed.
    pub(super) fn tick(&mut self) {
        self.now = self.now.saturating_add(1);
    }

    /// An occurrence of `kind`: `Some(suppressed)` if it is to be logged, with the number of
    /// occurrences not logged since the previous one; `None` if it is to be counted only.
    pub(super) fn allow(&mut self, kind: Warning) -> Option<u64> {
        let slot = &mut self.slots[kind as usize];
        let due = slot
            .logged_at
            .is_none_or(|at| self.now >= at.saturating_add(WARN_EVERY_TICKS));
        if !due {
            slot.suppressed = slot.suppressed.saturating_add(1);
            return None;
        }
        slot.logged_at = Some(self.now);
        Some(std::mem::take(&mut slot.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_logged_then_one_per_interval_with_the_count_suppressed() {
        let mut w = WarnLimit::default();
        assert_eq!(
            w.allow(Warning::OverwriteCommitted),
            Some(0),
            "the first is logged"
        );
        for _ in 0..1000 {
            assert_eq!(w.allow(Warning::OverwriteCommitted), None);
        }
        for _ in 0..WARN_EVERY_TICKS - 1 {
            w.tick();
            assert_eq!(w.allow(Warning::OverwriteCommitted), None);
        }
        w.tick();
        assert_eq!(
            w.allow(Warning::OverwriteCommitted),
            Some(1000 + WARN_EVERY_TICKS - 1),
            "one per interval, telling how many were not logged"
        );
        assert_eq!(w.allow(Warning::OverwriteCommitted), None);
    }

    #[test]
    fn kinds_are_limited_apart() {
        let mut w = WarnLimit::default();
        assert_eq!(w.allow(Warning::NonMember), Some(0));
        assert_eq!(w.allow(Warning::NonMember), None);
        assert_eq!(w.allow(Warning::MalformedAppend), Some(0));
        assert_eq!(w.allow(Warning::LostData), Some(0));
    }

    #[test]
    fn a_quiet_kind_is_logged_at_once_when_it_recurs() {
        let mut w = WarnLimit::default();
        assert_eq!(w.allow(Warning::SecondLeader), Some(0));
        for _ in 0..10 * WARN_EVERY_TICKS {
            w.tick();
        }
        assert_eq!(w.allow(Warning::SecondLeader), Some(0));
    }

    #[test]
    fn the_logs_of_a_repeating_peer_are_bounded_by_time_not_by_messages() {
        let mut w = WarnLimit::default();
        let mut logged = 0;
        for _ in 0..10 * WARN_EVERY_TICKS {
            w.tick();
            for _ in 0..50 {
                logged += u64::from(w.allow(Warning::OverwriteCommitted).is_some());
            }
        }
        assert_eq!(logged, 10, "one per interval over ten intervals");
    }
}
