//! Automatic compaction of the key space's history, measured and proposed by the leader
//! (etcd's `--auto-compaction-mode` / `--auto-compaction-retention`).
//!
//! The history back to the compaction revision is kept in memory on every member, so
//! without compaction it grows with every write. The leader decides when to compact and
//! proposes [`Command::Compact`](crate::state_machine::Command::Compact) through the log, so
//! every member drops the same history at the same point of the log.
//!
//! - `revision` mode (the default, retention 100,000 revisions): keep the last `retention`
//!   revisions. Checked every tick; a compaction is proposed once the history is a tenth over
//!   the retention, so the history stays between `retention` and `1.1 x retention` revisions
//!   plus one tick of writes, with one compaction entry per `retention / 10` writes. (etcd
//!   checks every 5 minutes, which lets the history grow by five minutes of writes.)
//! - `periodic` mode: keep what was written in the last `retention` of time. The leader
//!   samples the revision every tenth of the retention and compacts to the newest sample
//!   taken at least `retention` ago. Time is the leader's own: a new leader starts sampling
//!   afresh, so a leader change delays compaction by up to one retention, never advances it.
//!
//! What it may import: std, `config`. The driver supplies the time and the state; no I/O here.

pub use crate::config::AutoCompaction;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The leader's compaction schedule.
#[derive(Debug)]
pub struct Compactor {
    policy: AutoCompaction,
    /// periodic: (when, revision) samples, oldest first.
    samples: VecDeque<(Instant, i64)>,
    /// A compaction to this revision was proposed and has not been seen applied yet.
    proposed: Option<i64>,
}

impl Compactor {
    /// A schedule following `policy`.
    pub fn new(policy: AutoCompaction) -> Self {
        Compactor {
            policy,
            samples: VecDeque::new(),
            proposed: None,
        }
    }

    /// Called every tick with the applied key space's `revision` and `compacted` revision;
    /// `leading` says whether this node leads now. Returns the revision to compact to, when
    /// a compaction is due (the caller proposes it).
    pub fn tick(
        &mut self,
        now: Instant,
        leading: bool,
        revision: i64,
        compacted: i64,
    ) -> Option<i64> {
        if !leading {
            self.samples.clear();
            self.proposed = None;
            return None;
        }
        if let Some(p) = self.proposed {
            if compacted >= p {
                self.proposed = None;
            } else {
                // Still in flight (or lost with a leadership change: cleared above).
                return None;
            }
        }
        let target = match self.policy {
            AutoCompaction::Off => None,
            AutoCompaction::Revision(retention) => {
                let retention = i64::try_from(retention).unwrap_or(i64::MAX);
                let slack = (retention / 10).max(1);
                let target = revision.saturating_sub(retention);
                (target > compacted.saturating_add(slack)).then_some(target)
            }
            AutoCompaction::Periodic(retention) => {
                let interval = (retention / 10).max(Duration::from_millis(1));
                if self
                    .samples
                    .back()
                    .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= interval)
                {
                    self.samples.push_back((now, revision));
                }
                // The newest sample at least `retention` old.
                let mut target = None;
                while let Some(&(at, rev)) = self.samples.front() {
                    if now.saturating_duration_since(at) < retention {
                        break;
                    }
                    target = Some(rev);
                    self.samples.pop_front();
                }
                target.filter(|&t| t > compacted)
            }
        };
        self.proposed = target;
        target
    }

    /// The proposal of the last returned target was refused (a transfer in progress, say):
    /// forget it so it is tried again at the next tick.
    pub fn refused(&mut self) {
        self.proposed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_between_retention_and_a_tenth_more() {
        let mut c = Compactor::new(AutoCompaction::Revision(1000));
        let t = Instant::now();
        assert_eq!(c.tick(t, true, 1000, 0), None);
        assert_eq!(
            c.tick(t, true, 1100, 0),
            None,
            "only 100 over: within the slack"
        );
        assert_eq!(c.tick(t, true, 1101, 0), Some(101));
        assert_eq!(
            c.tick(t, true, 5000, 0),
            None,
            "one compaction in flight at a time"
        );
        assert_eq!(
            c.tick(t, true, 5000, 101),
            Some(4000),
            "applied: the next is due"
        );
    }

    #[test]
    fn followers_never_compact_and_a_new_leader_starts_afresh() {
        let mut c = Compactor::new(AutoCompaction::Revision(10));
        let t = Instant::now();
        assert_eq!(c.tick(t, false, 1000, 0), None);
        assert_eq!(c.tick(t, true, 1000, 0), Some(990));
        // Leadership lost before it applied: the in-flight proposal is forgotten.
        assert_eq!(c.tick(t, false, 1000, 0), None);
        assert_eq!(c.tick(t, true, 1000, 0), Some(990));
    }

    #[test]
    fn a_refused_proposal_is_retried() {
        let mut c = Compactor::new(AutoCompaction::Revision(10));
        let t = Instant::now();
        assert_eq!(c.tick(t, true, 100, 0), Some(90));
        c.refused();
        assert_eq!(c.tick(t, true, 100, 0), Some(90));
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_of_one_retention_ago() {
        let hour = Duration::from_secs(3600);
        let mut c = Compactor::new(AutoCompaction::Periodic(hour));
        let t0 = Instant::now();
        let mut proposed = Vec::new();
        // One revision per second for three hours, applied at once.
        let mut compacted = 0;
        for s in 0..3 * 3600u64 {
            let now = t0 + Duration::from_secs(s);
            let revision = 1 + s as i64;
            if let Some(target) = c.tick(now, true, revision, compacted) {
                // Never newer than what was current one retention ago.
                assert!(target <= revision - 3600, "at {s}s: {target}");
                proposed.push((s, target));
                compacted = target;
            }
        }
        let first = proposed.first().copied().unwrap();
        assert_eq!(
            first,
            (3600, 1),
            "the first sample, one hour after it was taken"
        );
        // Every tenth of an hour after that, one more.
        assert!((19..=21).contains(&proposed.len()), "{proposed:?}");
    }

    #[test]
    fn off_never_compacts() {
        let mut c = Compactor::new(AutoCompaction::Off);
        assert_eq!(c.tick(Instant::now(), true, i64::MAX, 0), None);
    }
}
