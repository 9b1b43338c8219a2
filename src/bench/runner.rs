//! The closed loop: one task per client, a shared stop condition, a progress bar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use super::conn::{connect, Cas, Conn, Seen};
use super::report::{describe_limit, ClientStats};
use super::{BenchConfig, BenchError, Limit, Report, Workload};

/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(100);
/// Concurrent writers while preloading the key space.
pub(super) const PRELOAD_WRITERS: u64 = 32;

/// The key of index `i`: fixed width, so every key has the same size.
fn key(i: u64) -> String {
    format!("bench/{i:012}")
}

/// The prefix the `range` workload reads (and writes before the run).
const RANGE_PREFIX: &str = "bench/range/";
/// The prefix of the `txn-cas` workload's counters.
const COUNTER_PREFIX: &str = "bench/counter/";

/// The `range` workload's key of index `i`.
fn range_key(i: u64) -> String {
    format!("{RANGE_PREFIX}{i:012}")
}

/// The `txn-cas` workload's counter of index `i`.
fn counter_key(i: u64) -> String {
    format!("{COUNTER_PREFIX}{i:012}")
}

/// The last seen state of every counter, shared by all clients (`txn-cas` only).
struct Counters(Vec<Mutex<Seen>>);

impl Counters {
    fn new(n: u64) -> Self {
        Self((0..n).map(|_| Mutex::new(Seen::default())).collect())
    }

    fn get(&self, i: u64) -> Seen {
        *self.0[i as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the newer of what is known and `seen` (answers arrive out of order).
    fn update(&self, i: u64, seen: Seen) {
        let mut known = self.0[i as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.mod_revision > known.mod_revision {
            *known = seen;
        }
    }

    /// Loads what the store holds under [`COUNTER_PREFIX`] (counters of an earlier run).
    async fn load(&self, conn: &mut Conn) -> Result<(), BenchError> {
        let existing = conn
            .counters(COUNTER_PREFIX.to_string())
            .await
            .map_err(|e| BenchError::Preload(format!("reading the counters: {e}")))?;
        for (key, seen) in existing {
            let index = key
                .strip_prefix(COUNTER_PREFIX)
                .and_then(|i| i.parse::<u64>().ok());
            if let Some(i) = index.filter(|&i| i < self.0.len() as u64) {
                self.update(i, seen);
            }
        }
        Ok(())
    }
}

/// What one successful operation did.
enum Done {
    /// A read; whether it found its key.
    Read { found: bool },
    /// A write.
    Write,
    /// A compare-and-swap increment, after this many failed compares.
    Cas { conflicts: u64 },
}

/// A value of `size` printable bytes (the wire type is a string).
pub(super) fn value(size: usize, rng: &mut SmallRng) -> String {
    (0..size)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// When requests are admitted and measured: shared by all clients of a run.
pub(super) struct Admission {
    /// When measuring starts (end of the warmup).
    pub(super) measure_start: Instant,
    /// When a client stops starting requests (duration limit only).
    deadline: Option<Instant>,
    /// Measured requests started so far (total limit only).
    started: AtomicU64,
    limit: Limit,
}

impl Admission {
    /// Measuring starts `config.warmup` from now.
    pub(super) fn new(config: &BenchConfig) -> Self {
        let measure_start = Instant::now() + config.warmup;
        Self {
            measure_start,
            deadline: match config.limit {
                Limit::Duration(d) => Some(measure_start + d),
                Limit::Total(_) => None,
            },
            started: AtomicU64::new(0),
            limit: config.limit,
        }
    }

    /// Whether the next request, starting at `now`, is measured; `None` to stop.
    pub(super) fn admit(&self, now: Instant) -> Option<bool> {
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        let measured = now >= self.measure_start;
        if measured {
            if let Limit::Total(total) = self.limit {
                if self.started.fetch_add(1, Ordering::Relaxed) >= total {
                    return None;
                }
            }
        }
        Some(measured)
    }
}

/// What all clients share.
struct Shared {
    /// Which requests run and which are measured.
    admission: Admission,
    /// Measured requests completed, for the progress bar.
    completed: AtomicU64,
    config: BenchConfig,
    value: String,
    /// The `txn-cas` workload's counters (empty for the others).
    counters: Counters,
}

/// Runs one benchmark as `config` says and returns its report.
///
/// # Errors
/// Invalid options, no leader, a failed connection or preload. Failed requests during the
/// run are not errors: the report counts them.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    config.validate()?;
    match config.workload {
        #[cfg(feature = "etcd")]
        Workload::Watch => return super::watch::run(config).await,
        #[cfg(feature = "etcd")]
        Workload::LeaseKeepAlive => return super::lease::run(config).await,
        #[cfg(not(feature = "etcd"))]
        Workload::Watch | Workload::LeaseKeepAlive => return Err(BenchError::EtcdNotBuilt),
        _ => {}
    }
    let (leader, pool) = connect(config).await?;
    let mut rng = SmallRng::seed_from_u64(0x6b76_7374);
    let value = value(config.value_size, &mut rng);
    if config.reads() && config.preload {
        let key_of = match config.workload {
            Workload::Range => range_key,
            _ => key,
        };
        preload(config, &pool, &value, key_of).await?;
    }
    let counters = Counters::new(match config.workload {
        Workload::TxnCas => config.key_space,
        _ => 0,
    });
    if config.workload == Workload::TxnCas {
        counters.load(&mut pool[0].clone()).await?;
    }

    let admission = Admission::new(config);
    let measure_start = admission.measure_start;
    let shared = Arc::new(Shared {
        admission,
        completed: AtomicU64::new(0),
        config: config.clone(),
        value,
        counters,
    });
    let mut clients = JoinSet::new();
    for i in 0..config.clients {
        let conn = pool[i % pool.len()].clone();
        let stats = new_stats()?;
        clients.spawn(client(i as u64, conn, Arc::clone(&shared), stats));
    }
    let stats = join_clients(clients, config, measure_start, &shared.completed).await?;
    let elapsed = Instant::now().saturating_duration_since(measure_start);
    Ok(Report::new(config, leader, elapsed.as_secs_f64(), &stats))
}

/// Empty client stats.
///
/// # Errors
/// Only if hdrhistogram rejected the histogram's constant bounds.
pub(super) fn new_stats() -> Result<ClientStats, BenchError> {
    ClientStats::new().map_err(|e| BenchError::Invalid(e.to_string()))
}

/// Waits for every client task and merges their stats, meanwhile drawing the progress bar
/// from `completed` (measured operations so far). A task that failed counts as one error.
pub(super) async fn join_clients(
    mut clients: JoinSet<ClientStats>,
    config: &BenchConfig,
    measure_start: Instant,
    completed: &AtomicU64,
) -> Result<ClientStats, BenchError> {
    let progress = progress_bar(config);
    let mut stats = new_stats()?;
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            joined = clients.join_next() => match joined {
                Some(Ok(client_stats)) => stats.merge(client_stats),
                Some(Err(e)) => stats.error(format!("client task failed: {e}")),
                None => break,
            },
            _ = tick.tick() => show_progress(
                &progress,
                config.limit,
                measure_start,
                completed.load(Ordering::Relaxed),
            ),
        }
    }
    progress.finish_and_clear();
    Ok(stats)
}

/// One closed-loop client: the next request leaves when the previous one is answered.
async fn client(
    id: u64,
    mut conn: Conn,
    shared: Arc<Shared>,
    mut stats: ClientStats,
) -> ClientStats {
    let config = &shared.config;
    let mut rng = SmallRng::seed_from_u64(id);
    loop {
        let start = Instant::now();
        let Some(measured) = shared.admission.admit(start) else {
            break;
        };
        let op = operation(&mut conn, &shared, &mut rng);
        let result = tokio::time::timeout(config.request_timeout, op).await;
        if !measured {
            continue;
        }
        match result {
            Ok(Ok(done)) => {
                stats.record(start.elapsed().as_micros() as u64);
                match done {
                    Done::Read { found } => {
                        stats.reads += 1;
                        stats.not_found += u64::from(!found);
                    }
                    Done::Write => stats.writes += 1,
                    Done::Cas { conflicts } => {
                        stats.writes += 1;
                        stats.conflicts += conflicts;
                    }
                }
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(kind)) => stats.error(kind),
            Err(_) => stats.error(format!(
                "timeout: no answer within {:?}",
                config.request_timeout
            )),
        }
    }
    stats
}

/// Why the closed loop was asked for an operation of a workload that runs its own loop.
const NOT_CLOSED_LOOP: &str = "invariant: watch and lease-keepalive run their own loops";

/// One operation of the workload.
async fn operation(conn: &mut Conn, shared: &Shared, rng: &mut SmallRng) -> Result<Done, String> {
    let config = &shared.config;
    let key_index = rng.random_range(0..config.key_space);
    let read = match config.workload {
        Workload::Put => false,
        Workload::Get => true,
        Workload::Mixed => rng.random_bool(config.read_ratio),
        Workload::TxnCas => return increment(conn, &shared.counters, key_index).await,
        Workload::Range => {
            let n = conn
                .range(RANGE_PREFIX.to_string(), config.consistency)
                .await?;
            if n as u64 != config.key_space {
                return Err(format!(
                    "range of {RANGE_PREFIX} returned {n} keys, not {}",
                    config.key_space
                ));
            }
            return Ok(Done::Read { found: true });
        }
        Workload::Watch | Workload::LeaseKeepAlive => return Err(NOT_CLOSED_LOOP.to_string()),
    };
    if read {
        let found = conn.get(key(key_index), config.consistency).await?;
        Ok(Done::Read { found })
    } else {
        conn.put(key(key_index), &shared.value).await?;
        Ok(Done::Write)
    }
}

/// Increments counter `i` by compare-and-swap, retrying on conflicts.
async fn increment(conn: &mut Conn, counters: &Counters, i: u64) -> Result<Done, String> {
    let mut conflicts = 0;
    loop {
        match conn.txn_cas(counter_key(i), counters.get(i)).await? {
            Cas::Swapped(now) => {
                counters.update(i, now);
                return Ok(Done::Cas { conflicts });
            }
            Cas::Conflict(now) => {
                counters.update(i, now);
                conflicts += 1;
            }
        }
    }
}

/// Writes every key of the key space (as `key` names them) once, `PRELOAD_WRITERS` at a time.
async fn preload(
    config: &BenchConfig,
    pool: &[Conn],
    value: &str,
    key: fn(u64) -> String,
) -> Result<(), BenchError> {
    let writers = PRELOAD_WRITERS.min(config.key_space);
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let mut conn = pool[w as usize % pool.len()].clone();
        let value = value.to_string();
        let (space, timeout) = (config.key_space, config.request_timeout);
        tasks.spawn(async move {
            for i in (w..space).step_by(writers as usize) {
                match tokio::time::timeout(timeout, conn.put(key(i), &value)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(kind)) => return Err(format!("put {}: {kind}", key(i))),
                    Err(_) => return Err(format!("put {}: no answer within {timeout:?}", key(i))),
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .map_err(|e| BenchError::Preload(e.to_string()))?
            .map_err(BenchError::Preload)?;
    }
    Ok(())
}

/// A progress bar for `config`'s run (hidden without `--progress`).
fn progress_bar(config: &BenchConfig) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match config.limit {
        Limit::Duration(d) => (d.as_millis() as u64, "{prefix} [{bar:30}] {msg}"),
        Limit::Total(n) => (n, "{prefix} [{bar:30}] {pos}/{len} {msg}"),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!(
        "{} {} x{} for {}",
        config.target,
        config.workload,
        config.clients,
        describe_limit(config.limit)
    ));
    bar
}

/// Shows `ops` measured operations since `measure_start` on `bar`.
fn show_progress(bar: &ProgressBar, limit: Limit, measure_start: Instant, ops: u64) {
    let now = Instant::now();
    if now < measure_start {
        bar.set_message("warming up");
        return;
    }
    let secs = now.duration_since(measure_start).as_secs_f64();
    match limit {
        Limit::Duration(_) => bar.set_position((secs * 1000.0) as u64),
        Limit::Total(_) => bar.set_position(ops),
    }
    let rate = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    bar.set_message(format!("{ops} ops, {rate:.0} ops/s"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(limit: Limit, warmup: Duration) -> Shared {
        let config = BenchConfig {
            target: super::super::Target::Kvstore,
            endpoints: vec!["127.0.0.1:1".into()],
            workload: Workload::Put,
            consistency: super::super::ReadConsistency::Linearizable,
            read_ratio: 0.0,
            clients: 1,
            connections: 1,
            limit,
            key_space: 10,
            value_size: 10,
            warmup,
            preload: false,
            request_timeout: Duration::from_secs(1),
            leader_timeout: Duration::from_secs(1),
            progress: false,
            test_fault: None,
        };
        Shared {
            admission: Admission::new(&config),
            completed: AtomicU64::new(0),
            config,
            value: String::new(),
            counters: Counters::new(0),
        }
    }

    #[test]
    fn a_total_limit_admits_exactly_that_many_measured_requests() {
        let s = shared(Limit::Total(3), Duration::ZERO);
        let now = Instant::now() + Duration::from_millis(1);
        let admitted: Vec<_> = (0..5).map(|_| s.admission.admit(now)).collect();
        assert_eq!(admitted, [Some(true), Some(true), Some(true), None, None]);
    }

    #[test]
    fn warmup_requests_are_admitted_unmeasured_and_the_deadline_stops_clients() {
        let s = shared(
            Limit::Duration(Duration::from_secs(5)),
            Duration::from_secs(60),
        );
        assert_eq!(s.admission.admit(Instant::now()), Some(false));
        assert_eq!(
            s.admission.started.load(Ordering::Relaxed),
            0,
            "warmup does not count"
        );
        assert_eq!(s.admission.admit(s.admission.measure_start), Some(true));
        assert_eq!(
            s.admission
                .admit(s.admission.measure_start + Duration::from_secs(5)),
            None
        );
    }

    #[test]
    fn counters_keep_the_newest_state_seen() {
        let counters = Counters::new(2);
        assert_eq!(counters.get(1), Seen::default(), "unknown: a missing key");
        let seen = |mod_revision, value| Seen {
            mod_revision,
            value,
        };
        counters.update(1, seen(10, 4));
        // An answer that left the server earlier arrives later: it must not win.
        counters.update(1, seen(8, 3));
        assert_eq!(counters.get(1), seen(10, 4));
        counters.update(1, seen(12, 5));
        assert_eq!(counters.get(1), seen(12, 5));
        assert_eq!(counters.get(0), Seen::default());
    }

    #[test]
    fn keys_have_a_fixed_width_and_values_the_asked_size() {
        assert_eq!(key(7).len(), key(123_456).len());
        assert_eq!(range_key(7).len(), range_key(99).len());
        assert!(range_key(7).starts_with(RANGE_PREFIX) && !key(7).starts_with(RANGE_PREFIX));
        assert!(counter_key(7).starts_with(COUNTER_PREFIX) && !key(7).starts_with(COUNTER_PREFIX));
        let v = value(100, &mut SmallRng::seed_from_u64(1));
        assert_eq!(v.len(), 100);
        assert!(v.bytes().all(|b| b.is_ascii_lowercase()));
    }
}
