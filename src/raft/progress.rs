//! [`Progress`]: what a leader knows about one follower's log (Raft Figure 2, `nextIndex[]`
//! and `matchIndex[]`), plus the flow control that keeps replication pipelined.

use super::types::LogIndex;

/// A snapshot that stalls is sent again after twice as long as the one before it, up to
/// this many doublings (the transport never restarts a send still in progress, so a resend
/// only matters when the first was lost; a multi-GB state can take minutes to stream).
const MAX_SNAPSHOT_BACKOFF_DOUBLINGS: u32 = 6;

/// How the leader is sending to this follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// We do not know where the follower's log matches ours: send one AppendEntries at a time
    /// and wait for its answer (or the next heartbeat) before sending another.
    Probe,
    /// The follower's log matched at `next - 1`: stream entries optimistically, up to a window
    /// of in-flight messages.
    Replicate,
    /// The follower needs entries we compacted: a snapshot is on its way (its index is the
    /// one entry of `inflight`); send nothing else until it is answered or stalls.
    Snapshot,
}

/// Replication state of one follower, owned by the leader.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated on the follower. Only ever moves forward within a
    /// term (replies can arrive out of order; a rejection never lowers it), except when the
    /// follower shows it lost its data (`doubt_round`).
    pub(crate) matched: LogIndex,
    /// Next index to send. Invariant: `matched < next`.
    pub(crate) next: LogIndex,
    pub(crate) state: ProgressState,
    /// Last index carried by each AppendEntries in flight, oldest first.
    pub(crate) inflight: std::collections::VecDeque<LogIndex>,
    /// Heartbeat rounds during which entries were in flight but `matched` did not move. A
    /// follower can keep answering heartbeats while the appends of a full window were lost,
    /// so silence is not the signal: lack of progress is.
    pub(crate) stalled_rounds: u32,
    /// Highest ReadIndex round this follower confirmed in the current term.
    pub(crate) read_ack: u64,
    /// Answered since the leader's last CheckQuorum test.
    pub(crate) recent_active: bool,
    /// The leader's lease clock when this follower last answered (`None`: not in this
    /// term): a voter heard from within an election timeout counts as live for the strict
    /// reconfiguration check.
    pub(crate) heard_at: Option<u64>,
    /// The lowest hint of the rejections "my log ends before `matched`" received since the
    /// follower last acknowledged `matched` or more. A follower keeps what it acknowledged in
    /// this term, so such a rejection is stale (it answers an append sent before those
    /// acknowledgements, e.g. overtaken by a snapshot's answer) and is ignored, unless the
    /// follower lost its data: then they keep coming and nothing acknowledges `matched`.
    pub(crate) doubt: Option<LogIndex>,
    /// Heartbeat rounds `doubt` has lasted.
    pub(crate) doubt_rounds: u32,
    /// Snapshots sent since the follower last caught up through one: each resend waits
    /// twice as long before it counts as stalled.
    snapshots_sent: u32,
}

impl Progress {
    pub(crate) fn new(next: LogIndex) -> Self {
        Progress {
            matched: 0,
            next: next.max(1),
            state: ProgressState::Probe,
            inflight: std::collections::VecDeque::new(),
            stalled_rounds: 0,
            read_ack: 0,
            recent_active: false,
            heard_at: None,
            doubt: None,
            doubt_rounds: 0,
            snapshots_sent: 0,
        }
    }

    /// Can another AppendEntries carrying entries go out now?
    pub(crate) fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.inflight.is_empty(),
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot => false,
        }
    }

    /// Records an AppendEntries that carried entries up to `last`.
    pub(crate) fn sent(&mut self, last: LogIndex) {
        if self.state == ProgressState::Replicate {
            self.next = self.next.max(last + 1);
        }
        self.inflight.push_back(last);
    }

    /// The follower acknowledged up to `index`. Returns true if `matched` moved.
    pub(crate) fn ack(&mut self, index: LogIndex) -> bool {
        if index >= self.matched {
            // The follower still holds what it acknowledged: earlier doubts were stale.
            self.doubt = None;
            self.doubt_rounds = 0;
        }
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        if index > self.matched {
            self.matched = index;
            self.stalled_rounds = 0;
            match self.state {
                ProgressState::Replicate => self.next = self.next.max(index + 1),
                // The follower's log matches ours up to `index`: stream from right after it
                // (`next` may be past it: a probe point, not a known match).
                ProgressState::Probe => {
                    self.state = ProgressState::Replicate;
                    self.inflight.clear();
                    self.next = index + 1;
                }
                ProgressState::Snapshot => {
                    // Only the snapshot's own answer (or a later match) ends the wait; a
                    // heartbeat answer below it leaves the snapshot in flight.
                    if self.inflight.front().is_none_or(|&snap| index >= snap) {
                        self.snapshots_sent = 0;
                        self.state = ProgressState::Replicate;
                        self.inflight.clear();
                        self.next = index + 1;
                    }
                }
            }
            return true;
        }
        if self.state == ProgressState::Probe {
            // A probe was answered (maybe a heartbeat confirming an unchanged match): the
            // follower's log is known to match at `matched`, so replicate from there.
            self.inflight.clear();
        }
        false
    }

    /// Called once per heartbeat round; true if the in-flight window made no progress for
    /// `limit` rounds (its messages were probably lost) and replication should restart from
    /// `matched + 1`. A snapshot resent without an answer gets twice the time of the one
    /// before it.
    pub(crate) fn stalled(&mut self, limit: u32) -> bool {
        if self.inflight.is_empty() {
            self.stalled_rounds = 0;
            return false;
        }
        let limit = if self.state == ProgressState::Snapshot {
            let doublings = self
                .snapshots_sent
                .saturating_sub(1)
                .min(MAX_SNAPSHOT_BACKOFF_DOUBLINGS);
            limit.saturating_mul(1 << doublings)
        } else {
            limit
        };
        self.stalled_rounds += 1;
        self.stalled_rounds >= limit
    }

    /// A rejection saying the follower's log ends before `hint`, where `hint <= matched`: see
    /// `doubt`. Changes nothing else (`matched` never moves back on a rejection).
    pub(crate) fn doubt(&mut self, hint: LogIndex) {
        debug_assert!(
            hint <= self.matched,
            "invariant: only hints below the match"
        );
        self.doubt = Some(self.doubt.map_or(hint, |d| d.min(hint)));
    }

    /// Called once per heartbeat round. If rejections below `matched` went on for `limit`
    /// rounds with no acknowledgement of `matched` in between (the follower answers a
    /// heartbeat within a round), the follower lost its data (a wiped data dir): this is the
    /// one case where `matched` moves back, to what the follower says it holds, and
    /// replication starts again from there. Returns the new `next` when that happens.
    pub(crate) fn doubt_round(&mut self, limit: u32) -> Option<LogIndex> {
        let hint = self.doubt?;
        self.doubt_rounds += 1;
        if self.doubt_rounds < limit {
            return None;
        }
        self.doubt = None;
        self.doubt_rounds = 0;
        self.matched = hint.saturating_sub(1);
        self.become_probe(hint);
        Some(self.next)
    }

    /// A snapshot covering up to `index` was sent: wait for its answer.
    pub(crate) fn become_snapshot(&mut self, index: LogIndex) {
        self.snapshots_sent = self.snapshots_sent.saturating_add(1);
        self.state = ProgressState::Snapshot;
        self.next = index + 1;
        self.inflight.clear();
        self.inflight.push_back(index);
        self.stalled_rounds = 0;
    }

    /// Falls back to probing from `next` (after a rejection, or a window that stalled).
    pub(crate) fn become_probe(&mut self, next: LogIndex) {
        self.state = ProgressState::Probe;
        self.next = next.max(self.matched + 1);
        self.inflight.clear();
        self.stalled_rounds = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time_then_replicates() {
        let mut p = Progress::new(5);
        assert!(p.can_send(4));
        p.sent(6);
        assert!(!p.can_send(4), "probe waits for an answer");
        assert!(p.ack(6));
        assert_eq!(p.state, ProgressState::Replicate);
        assert_eq!((p.matched, p.next), (6, 7));
        for last in 7..11 {
            assert!(p.can_send(4));
            p.sent(last);
        }
        assert!(!p.can_send(4), "window of 4 is full");
        assert!(p.ack(8));
        assert_eq!(p.inflight.len(), 2);
        assert!(
            !p.ack(7),
            "an out-of-order older ack never moves match back"
        );
        assert_eq!(p.matched, 8);
    }

    #[test]
    fn a_window_of_lost_appends_is_detected_as_stalled() {
        let mut p = Progress::new(1);
        p.ack(1);
        p.sent(5);
        p.sent(9);
        assert!(!p.stalled(3));
        assert!(!p.stalled(3));
        assert!(p.stalled(3), "three rounds without progress");
        p.ack(5);
        assert!(!p.stalled(3), "progress resets the count");
        p.ack(9);
        assert!(!p.stalled(1), "nothing in flight is never a stall");
    }

    #[test]
    fn snapshot_pauses_sending_until_acknowledged() {
        let mut p = Progress::new(1);
        p.become_snapshot(50);
        assert!(!p.can_send(8));
        assert!(!p.ack(0), "a heartbeat answer does not end the snapshot");
        assert!(p.ack(40), "a match below the snapshot is recorded");
        assert_eq!(
            p.state,
            ProgressState::Snapshot,
            "but the snapshot is still awaited"
        );
        assert!(!p.can_send(8));
        assert!(p.ack(50));
        assert_eq!(
            (p.state, p.matched, p.next),
            (ProgressState::Replicate, 50, 51)
        );
        assert!(p.can_send(8));
    }

    /// Rounds until a snapshot in flight counts as stalled (at most `max`).
    fn rounds_to_stall(p: &mut Progress, limit: u32, max: u32) -> u32 {
        (1..=max).find(|_| p.stalled(limit)).unwrap_or(u32::MAX)
    }

    #[test]
    fn a_resent_snapshot_waits_twice_as_long_each_time() {
        let mut p = Progress::new(1);
        p.become_snapshot(50);
        assert_eq!(rounds_to_stall(&mut p, 100, 10_000), 100);
        p.become_probe(1);
        p.become_snapshot(50);
        assert_eq!(rounds_to_stall(&mut p, 100, 10_000), 200);
        p.become_snapshot(50);
        assert_eq!(rounds_to_stall(&mut p, 100, 10_000), 400);
        for _ in 0..10 {
            p.become_snapshot(50);
        }
        assert_eq!(rounds_to_stall(&mut p, 100, 10_000), 6400, "bounded");
        // Caught up: the next snapshot starts from the base wait again.
        assert!(p.ack(50));
        p.become_snapshot(80);
        assert_eq!(rounds_to_stall(&mut p, 100, 10_000), 100);
        // Replicating entries is not slowed down by any of it.
        p.ack(80);
        p.sent(81);
        assert_eq!(rounds_to_stall(&mut p, 100, 10_000), 100);
    }

    #[test]
    fn a_doubt_cleared_by_an_ack_of_the_match_never_moves_it_back() {
        let mut p = Progress::new(1);
        p.ack(10);
        p.doubt(4);
        assert_eq!(p.doubt_round(2), None);
        assert!(!p.ack(10), "a heartbeat answer at the match");
        assert_eq!(
            p.doubt, None,
            "the follower still holds its match: the doubt was stale"
        );
        for _ in 0..5 {
            assert_eq!(p.doubt_round(2), None);
        }
        assert_eq!((p.matched, p.state), (10, ProgressState::Replicate));
    }

    #[test]
    fn a_doubt_that_lasts_means_lost_data() {
        let mut p = Progress::new(1);
        p.ack(10);
        p.doubt(4);
        p.doubt(2);
        assert!(!p.ack(3), "an answer below the match does not clear it");
        assert_eq!(p.doubt_round(2), None);
        assert_eq!(p.doubt_round(2), Some(2), "restart from the lowest hint");
        assert_eq!((p.matched, p.next, p.state), (1, 2, ProgressState::Probe));
        assert_eq!(p.doubt, None);
    }

    #[test]
    fn probe_never_goes_below_match() {
        let mut p = Progress::new(1);
        p.ack(10);
        p.become_probe(3);
        assert_eq!(p.next, 11);
    }
}
