//! The `watch` workload (etcd API, cargo feature `etcd`): puts fanned out to many watchers.
//!
//! `key_space` watchers on [`WATCH_PREFIX`] are spread round-robin over every member; each
//! member gets `connections` watch streams (one HTTP/2 connection each), so several watches
//! share one stream as real clients' do. Every watch is created (its `created` answer read)
//! before the first put. `clients` writers then put keys under the prefix through the leader.
//!
//! Bookkeeping:
//! - A measured put (one started after the warmup) records the time of its acknowledgement
//!   under its revision in a shared map. A watcher looks up each event's mod revision on
//!   arrival: its latency is arrival - acknowledgement. An event that arrives before its
//!   acknowledgement (the acknowledgement travels too) is kept aside and counts 0 once the
//!   map shows its put was measured.
//! - Each watcher marks the revisions it received in a bitset starting at its watch's start
//!   revision; a revision marked twice is a duplicate. At the end every measured revision must
//!   be marked by every watcher; each one that is not is a missing event. Both are errors.
//! - When the writers stop, the run waits (at most `request_timeout`) until every watcher has
//!   seen the highest measured revision. Throughput is measured events delivered / the time
//!   from the end of the warmup to the last event's arrival (or the writers' stop, if later).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch as signal;
use tokio::task::JoinSet;

use super::etcd::{self, EtcdConn};
use super::report::ClientStats;
use super::runner::{self, new_stats, Admission};
use super::{BenchConfig, BenchError, Report, TestFault};

/// The prefix every watcher watches and every writer writes under.
const WATCH_PREFIX: &str = "bench/watch/";
/// Keys the writers draw from, under the prefix.
const WATCH_KEYS: u64 = 1_000;
/// How often the end of the run checks whether every watcher caught up.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Revisions a watcher can track past its start: 2^22 puts (512 KiB of bits per watcher). An
/// event beyond is an error, not an allocation a bogus revision could blow up.
const MAX_TRACKED: i64 = 1 << 22;

/// The writers' key of index `i`.
fn watch_key(i: u64) -> String {
    format!("{WATCH_PREFIX}{i:012}")
}

/// The revisions one watcher received since its watch started.
#[derive(Debug)]
struct Received {
    /// The revision its watch started after (the header of its `created` answer).
    base: i64,
    /// Bit `r - base - 1` is set once revision `r` arrived.
    bits: Vec<u64>,
    /// Revisions that arrived again.
    duplicates: u64,
    /// Revisions at or below `base`, or more than [`MAX_TRACKED`] past it.
    out_of_range: u64,
}

impl Received {
    fn new(base: i64) -> Self {
        Self {
            base,
            bits: Vec::new(),
            duplicates: 0,
            out_of_range: 0,
        }
    }

    /// The word and bit of `revision`, if it is in range.
    fn slot(&self, revision: i64) -> Option<(usize, u64)> {
        let offset = revision.checked_sub(self.base)?.checked_sub(1)?;
        if !(0..MAX_TRACKED).contains(&offset) {
            return None;
        }
        let offset = offset as usize;
        Some((offset / 64, 1 << (offset % 64)))
    }

    /// Marks `revision`; false (and counted) when it is a duplicate or out of range.
    fn mark(&mut self, revision: i64) -> bool {
        let Some((word, mask)) = self.slot(revision) else {
            self.out_of_range += 1;
            return false;
        };
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return false;
        }
        self.bits[word] |= mask;
        true
    }

    /// Whether `revision` arrived.
    fn has(&self, revision: i64) -> bool {
        self.slot(revision)
            .and_then(|(word, mask)| self.bits.get(word).map(|w| w & mask != 0))
            .unwrap_or(false)
    }
}

/// One watch on a stream: the watcher's index (0..key_space) and what it received.
type Watches = HashMap<i64, (usize, Received)>;

/// What the writers and the watch streams share.
struct Shared {
    admission: Admission,
    /// Acknowledgement time of every measured put, by revision.
    acks: RwLock<HashMap<i64, Instant>>,
    /// Highest revision each watcher received; `i64::MAX` once its stream ended.
    seen: Vec<AtomicI64>,
    /// Measured puts acknowledged, for the progress bar.
    puts: AtomicU64,
    config: BenchConfig,
    value: String,
}

/// What one watch stream hands back at the end.
struct StreamOutcome {
    /// Event latencies and the stream's failures.
    stats: ClientStats,
    /// Events that arrived (after the warmup) before their put's acknowledgement was known.
    early: Vec<i64>,
    watches: Watches,
    /// When its last event arrived.
    last_arrival: Option<Instant>,
}

/// Runs the workload: see the module doc.
///
/// # Errors
/// No leader, a connection or a watch that cannot be opened, or a kvstore without etcd's
/// Watch service.
pub(crate) async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let (leader, pool) = etcd::connect(config).await?;
    let members = etcd::members(config).await?;
    let streams = open_streams(config, &members).await?;

    let mut rng = SmallRng::seed_from_u64(0x7761_7463);
    let shared = Arc::new(Shared {
        admission: Admission::new(config),
        acks: RwLock::new(HashMap::new()),
        seen: (0..config.key_space).map(|_| AtomicI64::new(0)).collect(),
        puts: AtomicU64::new(0),
        config: config.clone(),
        value: runner::value(config.value_size, &mut rng),
    });
    let measure_start = shared.admission.measure_start;
    let (stop, stopped) = signal::channel(false);
    let mut receivers = JoinSet::new();
    for (stream, watches) in streams {
        let stats = new_stats()?;
        receivers.spawn(receive(
            stream,
            watches,
            Arc::clone(&shared),
            stopped.clone(),
            stats,
        ));
    }
    let mut writers = JoinSet::new();
    for i in 0..config.clients {
        let conn = pool[i % pool.len()].clone();
        writers.spawn(writer(i as u64, conn, Arc::clone(&shared), new_stats()?));
    }

    let mut stats = runner::join_clients(writers, config, measure_start, &shared.puts).await?;
    let writers_end = Instant::now();

    drain(&shared).await;
    // Nobody may be waiting any more: a send error only means every stream already ended.
    let _ = stop.send(true);
    let mut outcomes = Vec::new();
    while let Some(joined) = receivers.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => stats.error(format!("watch stream task failed: {e}")),
        }
    }
    let last_arrival = outcomes.iter().filter_map(|o| o.last_arrival).max();
    let end = last_arrival.map_or(writers_end, |a| a.max(writers_end));
    let acks = shared
        .acks
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    check(&mut stats, outcomes, &acks, config.key_space);
    let elapsed = end.saturating_duration_since(measure_start).as_secs_f64();
    let mut report = Report::new(config, leader, elapsed, &stats);
    report.watch_members = members;
    Ok(report)
}

/// Waits until every watcher saw the highest measured revision, at most `request_timeout`.
async fn drain(shared: &Shared) {
    let highest = shared
        .acks
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .copied()
        .max();
    let Some(highest) = highest else {
        return;
    };
    let deadline = Instant::now() + shared.config.request_timeout;
    while Instant::now() < deadline
        && shared
            .seen
            .iter()
            .any(|s| s.load(Ordering::Relaxed) < highest)
    {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Counts delivered, missing and repeated events into `stats`, and the latencies of the
/// events that arrived before their acknowledgement (0).
fn check(
    stats: &mut ClientStats,
    outcomes: Vec<StreamOutcome>,
    acks: &HashMap<i64, Instant>,
    watchers: u64,
) {
    let mut measured: Vec<i64> = acks.keys().copied().collect();
    measured.sort_unstable();
    let (mut missing, mut duplicates, mut out_of_range, mut reported) = (0, 0, 0, 0u64);
    for outcome in outcomes {
        for early in &outcome.early {
            if acks.contains_key(early) {
                stats.record(0);
            }
        }
        stats.merge(outcome.stats);
        for (_, received) in outcome.watches.values() {
            reported += 1;
            let delivered = measured.iter().filter(|&&r| received.has(r)).count() as u64;
            stats.events += delivered;
            missing += measured.len() as u64 - delivered;
            duplicates += received.duplicates;
            out_of_range += received.out_of_range;
        }
    }
    // A stream whose task failed took its watchers' records with it: all their events count
    // as missing.
    missing += watchers.saturating_sub(reported) * measured.len() as u64;
    let kinds = [
        (
            missing,
            "missing event: a watcher did not receive a measured put's revision",
        ),
        (
            duplicates,
            "duplicate event: a watcher received a revision twice",
        ),
        (
            out_of_range,
            "event outside the watch: a revision from before the watch started, or far beyond",
        ),
    ];
    for (n, kind) in kinds {
        if n > 0 {
            stats.count_errors(kind.to_string(), n);
        }
    }
}

/// Opens the watch streams: watcher `i` goes to member `i % members`, on that member's
/// stream `(i / members) % connections`.
async fn open_streams(
    config: &BenchConfig,
    members: &[String],
) -> Result<Vec<(WatchStream, Watches)>, BenchError> {
    let per_member = config.connections;
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); members.len() * per_member];
    for i in 0..config.key_space as usize {
        let member = i % members.len();
        groups[member * per_member + (i / members.len()) % per_member].push(i);
    }
    let mut tasks = JoinSet::new();
    for (g, watchers) in groups.into_iter().enumerate() {
        if watchers.is_empty() {
            continue;
        }
        let member = members[g / per_member].clone();
        let config = config.clone();
        tasks.spawn(async move { open_stream(&config, &member, &watchers).await });
    }
    let mut streams = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let opened = joined.map_err(|e| BenchError::Invalid(format!("watch setup failed: {e}")))?;
        streams.push(opened?);
    }
    Ok(streams)
}

/// One stream to `member` carrying one watch of the prefix per watcher, each created (its
/// `created` answer read) before the next is asked for.
async fn open_stream(
    config: &BenchConfig,
    member: &str,
    watchers: &[usize],
) -> Result<(WatchStream, Watches), BenchError> {
    let fail = |e| etcd::unimplemented(config, member, "Watch", e);
    let refused = |reason: String| BenchError::Connect {
        endpoint: member.to_string(),
        reason,
    };
    let options = || Some(WatchOptions::new().with_prefix());
    let client = etcd::client(&[member.to_string()]).await?;
    let mut stream = client
        .watch_client()
        .watch(WATCH_PREFIX, options())
        .await
        .map_err(fail)?;
    let mut watches = Watches::new();
    for (n, &watcher) in watchers.iter().enumerate() {
        if n > 0 {
            stream.watch(WATCH_PREFIX, options()).await.map_err(fail)?;
        }
        let answer = tokio::time::timeout(config.request_timeout, stream.message()).await;
        let created = match answer {
            Ok(Ok(Some(answer))) if answer.created() && !answer.canceled() => answer,
            Ok(Ok(Some(answer))) => {
                return Err(refused(format!(
                    "watch not created: {}",
                    answer.cancel_reason()
                )))
            }
            Ok(Ok(None)) => return Err(refused("watch stream closed".to_string())),
            Ok(Err(e)) => return Err(fail(e)),
            Err(_) => {
                return Err(refused(format!(
                    "no watch created within {:?}",
                    config.request_timeout
                )))
            }
        };
        let base = created
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| refused("watch created without a header".to_string()))?;
        watches.insert(created.watch_id(), (watcher, Received::new(base)));
    }
    Ok((stream, watches))
}

/// Reads one stream's events until told to stop (or the stream ends, which is an error).
async fn receive(
    mut stream: WatchStream,
    mut watches: Watches,
    shared: Arc<Shared>,
    mut stop: signal::Receiver<bool>,
    stats: ClientStats,
) -> StreamOutcome {
    // The test fault hits watcher 0, wherever it is.
    let fault = shared.config.test_fault.filter(|f| {
        matches!(f, TestFault::DropEvent | TestFault::DuplicateEvent)
            && watches.values().any(|(w, _)| *w == 0)
    });
    let mut outcome = Delivery {
        stats,
        early: Vec::new(),
        last_arrival: None,
        fault,
    };
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = stream.message() => message,
        };
        let failure = match message {
            Ok(Some(response)) => {
                outcome.deliver(&shared, &mut watches, &response, Instant::now());
                continue;
            }
            Ok(None) => "watch stream closed by the server".to_string(),
            Err(e) => format!("watch stream failed: {}", etcd::describe(e)),
        };
        outcome.stats.error(failure);
        // Nothing more will come: the end of the run must not wait for these watchers.
        for (watcher, _) in watches.values() {
            shared.seen[*watcher].store(i64::MAX, Ordering::Relaxed);
        }
        break;
    }
    StreamOutcome {
        stats: outcome.stats,
        early: outcome.early,
        watches,
        last_arrival: outcome.last_arrival,
    }
}

/// A stream's running record while it receives.
struct Delivery {
    stats: ClientStats,
    early: Vec<i64>,
    last_arrival: Option<Instant>,
    /// A test fault not yet applied.
    fault: Option<TestFault>,
}

impl Delivery {
    /// Records one answer of the stream, arrived at `now`. Holds the acknowledgement map's
    /// read lock for the whole answer (no await inside).
    fn deliver(
        &mut self,
        shared: &Shared,
        watches: &mut Watches,
        response: &WatchResponse,
        now: Instant,
    ) {
        if response.canceled() {
            self.stats.error(format!(
                "watch canceled by the server: {}",
                response.cancel_reason()
            ));
            if let Some((watcher, _)) = watches.get(&response.watch_id()) {
                shared.seen[*watcher].store(i64::MAX, Ordering::Relaxed);
            }
            return;
        }
        if response.events().is_empty() {
            return;
        }
        let Some((watcher, received)) = watches.get_mut(&response.watch_id()) else {
            self.stats
                .error("events for a watch id never created".to_string());
            return;
        };
        self.last_arrival = Some(now);
        let measuring = now >= shared.admission.measure_start;
        let acks = shared.acks.read().unwrap_or_else(PoisonError::into_inner);
        let mut highest = 0;
        for event in response.events() {
            let Some(kv) = event.kv().filter(|_| event.event_type() == EventType::Put) else {
                self.stats
                    .error("an event that is not a put with its key".to_string());
                continue;
            };
            let revision = kv.mod_revision();
            highest = highest.max(revision);
            let copies = match self.fault.filter(|_| measuring && *watcher == 0) {
                Some(TestFault::DropEvent) => 0,
                Some(TestFault::DuplicateEvent) => 2,
                _ => 1,
            };
            if copies != 1 {
                self.fault = None;
            }
            let mut first = false;
            for _ in 0..copies {
                first |= received.mark(revision);
            }
            if !(first && measuring) {
                continue;
            }
            match acks.get(&revision) {
                Some(ack) => self
                    .stats
                    .record(now.saturating_duration_since(*ack).as_micros() as u64),
                None => self.early.push(revision),
            }
        }
        shared.seen[*watcher].fetch_max(highest, Ordering::Relaxed);
    }
}

/// One closed-loop writer: puts a key under the prefix, records the acknowledgement of each
/// measured put under its revision.
async fn writer(
    id: u64,
    mut conn: EtcdConn,
    shared: Arc<Shared>,
    mut stats: ClientStats,
) -> ClientStats {
    let timeout = shared.config.request_timeout;
    let mut rng = SmallRng::seed_from_u64(id);
    while let Some(measured) = shared.admission.admit(Instant::now()) {
        let key = watch_key(rng.random_range(0..WATCH_KEYS));
        let result = tokio::time::timeout(timeout, conn.put_revision(key, &shared.value)).await;
        let acked = Instant::now();
        if !measured {
            continue;
        }
        match result {
            Ok(Ok(revision)) => {
                shared
                    .acks
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(revision, acked);
                stats.writes += 1;
                shared.puts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(kind)) => stats.error(format!("put: {kind}")),
            Err(_) => stats.error(format!("put: no answer within {timeout:?}")),
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_marks_each_revision_once_and_counts_repeats_and_strays() {
        let mut r = Received::new(100);
        assert!(r.mark(101));
        assert!(r.mark(300));
        assert!(!r.mark(101), "a repeat");
        assert_eq!(r.duplicates, 1);
        assert!(
            !r.mark(100),
            "the start revision itself is before the watch"
        );
        assert!(!r.mark(100 + MAX_TRACKED + 1), "far beyond: not allocated");
        assert_eq!(r.out_of_range, 2);
        assert!(r.has(101) && r.has(300));
        assert!(!r.has(102) && !r.has(100) && !r.has(i64::MAX));
        assert!(r.bits.len() <= 4, "bits grow only as far as needed");
    }

    fn outcome(watches: Vec<(usize, Received)>, early: Vec<i64>) -> StreamOutcome {
        StreamOutcome {
            stats: ClientStats::new().unwrap(),
            early,
            watches: watches
                .into_iter()
                .enumerate()
                .map(|(id, w)| (id as i64, w))
                .collect(),
            last_arrival: None,
        }
    }

    #[test]
    fn check_counts_missing_duplicate_and_lost_watchers_as_errors() {
        let now = Instant::now();
        let acks: HashMap<i64, Instant> = [(11, now), (12, now), (13, now)].into();
        let mut full = Received::new(10);
        let mut partial = Received::new(10);
        for r in [11, 12, 13, 14] {
            full.mark(r); // 14: a put that was not measured, ignored
        }
        partial.mark(11);
        partial.mark(13);
        partial.mark(13);
        let mut stats = ClientStats::new().unwrap();
        // Three watchers were asked for; one stream's records are gone.
        check(
            &mut stats,
            vec![outcome(vec![(0, full), (1, partial)], vec![12, 99])],
            &acks,
            3,
        );
        assert_eq!(stats.events, 5, "3 + 2 measured revisions delivered");
        let missing = stats.errors.iter().find(|(k, _)| k.starts_with("missing"));
        assert_eq!(missing.map(|(_, n)| *n), Some(1 + 3), "{:?}", stats.errors);
        let repeated = stats
            .errors
            .iter()
            .find(|(k, _)| k.starts_with("duplicate"));
        assert_eq!(repeated.map(|(_, n)| *n), Some(1));
        assert_eq!(
            stats.hist.len(),
            1,
            "an early event of a measured put counts (as 0), one of an unmeasured put does not"
        );
    }

    #[test]
    fn check_of_a_perfect_run_has_no_errors() {
        let now = Instant::now();
        let acks: HashMap<i64, Instant> = [(5, now), (6, now)].into();
        let mut a = Received::new(4);
        a.mark(5);
        a.mark(6);
        let mut stats = ClientStats::new().unwrap();
        check(&mut stats, vec![outcome(vec![(0, a)], vec![])], &acks, 1);
        assert_eq!(stats.events, 2);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    }
}
