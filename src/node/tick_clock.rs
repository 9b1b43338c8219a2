//! Keeps the core's lease clock at or ahead of real time, without I/O: the daemon's driver and
//! the simulator both run it, passing the time elapsed since the node started.
//!
//! The tick interval skips missed ticks (so a stalled node does not start an election the
//! moment it wakes), which would make the clock of a stalled leader run slow and its lease
//! look longer than it is. Before every tick and every linearizable read the driver credits
//! the core with the periods it missed ([`crate::raft::RaftCore::advance_clock`]). The core
//! then counts at most one tick ahead of real time, never behind; the lease margin covers
//! that tick.
//!
//! What it may import: std only.

use std::time::Duration;

/// Ticks credited to the core since the node started.
#[derive(Debug, Default)]
pub(crate) struct TickClock {
    /// Ticks credited so far (ticks delivered plus periods advanced). Invariant: never
    /// decreases, and after [`TickClock::catch_up`] is at least the whole periods elapsed.
    given: u64,
}

impl TickClock {
    /// `elapsed` since the start, ticking every `period`: returns how many ticks to credit
    /// the core with (`advance_clock`) so that it has counted every whole period elapsed, and
    /// counts them as given. 0 when it is up to date (or ahead, after a tick delivered early
    /// in its period).
    pub(crate) fn catch_up(&mut self, elapsed: Duration, period: Duration) -> u64 {
        let periods = elapsed.as_nanos() / period.as_nanos().max(1);
        let real = u64::try_from(periods).unwrap_or(u64::MAX);
        let missed = real.saturating_sub(self.given);
        self.given += missed;
        missed
    }

    /// A `tick()` was delivered.
    pub(crate) fn ticked(&mut self) {
        self.given = self.given.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The driver's order on a tick: catch up, then deliver the tick.
    fn on_tick(c: &mut TickClock, elapsed: Duration) -> u64 {
        let missed = c.catch_up(elapsed, P);
        c.ticked();
        missed
    }

    #[test]
    fn nothing_to_credit_before_the_first_whole_period() {
        let mut c = TickClock::default();
        assert_eq!(c.catch_up(ms(0), P), 0);
        assert_eq!(c.catch_up(ms(99), P), 0);
    }

    /// Boundaries: a period counts once it has fully elapsed, not a nanosecond before.
    #[test]
    fn a_period_counts_exactly_when_it_ends() {
        let mut c = TickClock::default();
        assert_eq!(c.catch_up(P - Duration::from_nanos(1), P), 0);
        assert_eq!(c.catch_up(P, P), 1);
        assert_eq!(c.catch_up(P, P), 0, "the same instant counted twice");
    }

    /// Ticks that arrive on time need no credit: each covers its own period (the interval's
    /// first tick fires at once, at 0).
    #[test]
    fn on_time_ticks_are_not_counted_twice() {
        let mut c = TickClock::default();
        for i in 0..50 {
            assert_eq!(on_tick(&mut c, ms(i * 100)), 0, "tick {i}");
        }
        // Ticks delivered early in their period run at most one ahead: nothing is credited.
        let mut early = TickClock::default();
        for i in 0..50 {
            assert_eq!(on_tick(&mut early, ms(i * 100 + 1)), 0, "early tick {i}");
        }
    }

    /// A stall of 10 periods (SIGSTOP): the interval skips the missed ticks, and the next
    /// tick is preceded by exactly the periods the core did not count.
    #[test]
    fn catch_up_after_a_stall_credits_the_missed_periods_once() {
        let mut c = TickClock::default();
        for i in 0..3 {
            assert_eq!(on_tick(&mut c, ms(i * 100)), 0);
        }
        // Stalled from 300 ms to 1_350 ms; the first input after is a read, then a tick.
        assert_eq!(c.catch_up(ms(1_350), P), 10);
        assert_eq!(on_tick(&mut c, ms(1_360)), 0, "credited twice");
        // 14 ticks counted at 1.36 s: one ahead of the 13 whole periods, never behind.
        assert_eq!(c.catch_up(ms(1_400), P), 0);
        assert_eq!(c.catch_up(ms(1_500), P), 1);
    }

    /// The core's count (every tick plus every credit) never falls behind real time, and
    /// runs at most one tick ahead of it, whatever the pattern of late ticks, stalls and
    /// reads in between (the interval never delivers two ticks less than a period apart).
    #[test]
    fn the_core_is_never_behind_and_at_most_one_ahead() {
        let mut c = TickClock::default();
        let mut counted = 0u64;
        let mut t = 0u64;
        let check = |counted: u64, t: u64| {
            let real = t / 100;
            assert!(counted >= real, "behind at {t} ms: {counted} < {real}");
            assert!(
                counted <= real + 1,
                "ahead at {t} ms: {counted} > {real} + 1"
            );
        };
        // Deterministic irregular gaps: on time, late, long stalls.
        for step in 0..500u64 {
            let gap = [100, 100, 137, 250, 1_000, 103, 100, 640][(step % 8) as usize];
            if step % 3 == 0 {
                // A linearizable read somewhere in the gap.
                let at = t + gap * (step % 7 + 1) / 8;
                counted += c.catch_up(ms(at), P);
                check(counted, at);
            }
            t += gap;
            counted += on_tick(&mut c, ms(t)) + 1;
            check(counted, t);
        }
    }

    /// A zero period (never configured so) does not divide by zero, and huge elapsed times
    /// saturate instead of wrapping.
    #[test]
    fn degenerate_periods_and_times_do_not_panic() {
        let mut c = TickClock::default();
        assert_eq!(c.catch_up(Duration::from_nanos(5), Duration::ZERO), 5);
        let mut c = TickClock::default();
        assert_eq!(c.catch_up(Duration::MAX, Duration::from_nanos(1)), u64::MAX);
        c.ticked();
        assert_eq!(c.catch_up(Duration::MAX, Duration::from_nanos(1)), 0);
    }
}
