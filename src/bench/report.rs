//! The result of one run: counts, throughput and latency percentiles, as JSON or text.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{BenchConfig, Limit, ReadConsistency, Target, Workload};

/// Latency percentiles of the measured successful requests, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest request.
    pub max_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of `hist` (recorded in microseconds); all zero when it is empty.
    pub fn from_histogram(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            mean_us: hist.mean(),
        }
    }
}

/// One run's result; `--json` prints it as one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `kvstore` or `etcd`.
    pub target: Target,
    /// `put`, `get` or `mixed`.
    pub workload: Workload,
    /// How reads were served (meaningful when the workload reads).
    pub consistency: ReadConsistency,
    /// Share of reads asked for in the mixed workload.
    pub read_ratio: f64,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// gRPC channels they shared.
    pub connections: usize,
    /// Number of distinct keys (txn-cas: counters; range: keys under the prefix; watch:
    /// watchers; lease-keepalive: leases).
    pub key_space: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// The leader the load went to.
    pub leader: String,
    /// The members the watchers were spread over (watch only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_members: Vec<String>,
    /// Seconds of the measured phase.
    pub elapsed_s: f64,
    /// Successful measured requests (watch: events delivered to watchers).
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes (watch: the measured puts whose events were watched; lease-keepalive:
    /// the renewals).
    pub writes: u64,
    /// Events delivered to watchers (watch only): each measured put's event counted once per
    /// watcher that received it.
    #[serde(default)]
    pub events: u64,
    /// Reads that found no value.
    pub not_found: u64,
    /// Failed compares of the `txn-cas` workload's successful operations (each was retried).
    #[serde(default)]
    pub conflicts: u64,
    /// Failed measured requests (timeouts included).
    pub errors: u64,
    /// Failures by kind (`CODE: message`), for a look at what went wrong.
    pub error_kinds: BTreeMap<String, u64>,
    /// `ops / elapsed_s`.
    pub throughput_ops_s: f64,
    /// Latency of the successful measured requests (watch: from a put's acknowledgement to
    /// its event's arrival at a watcher, 0 when the event came first).
    pub latency: Latency,
}

/// Counts one client gathers during the measured phase.
pub(crate) struct ClientStats {
    /// Latencies of successful requests, in microseconds.
    pub hist: Histogram<u64>,
    pub reads: u64,
    pub writes: u64,
    pub not_found: u64,
    /// Failed compares retried by successful `txn-cas` operations.
    pub conflicts: u64,
    /// Events delivered (`watch`).
    pub events: u64,
    pub errors: BTreeMap<String, u64>,
}

/// Distinct failure kinds kept per report; the rest are counted under [`OTHER_ERRORS`].
const MAX_ERROR_KINDS: usize = 16;
const OTHER_ERRORS: &str = "(other kinds)";

/// Slowest latency the histogram holds: one minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

impl ClientStats {
    /// Empty stats; the histogram holds 1 µs to one minute at 3 significant digits.
    ///
    /// # Errors
    /// Only if hdrhistogram rejected those constant bounds.
    pub(crate) fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            reads: 0,
            writes: 0,
            not_found: 0,
            conflicts: 0,
            events: 0,
            errors: BTreeMap::new(),
        })
    }

    /// Records one successful request's latency.
    pub(crate) fn record(&mut self, micros: u64) {
        self.hist.saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// Counts one failure of kind `kind`.
    pub(crate) fn error(&mut self, kind: String) {
        self.count_errors(kind, 1);
    }

    /// Counts `n` failures of kind `kind`; past [`MAX_ERROR_KINDS`] distinct kinds, new
    /// kinds go under [`OTHER_ERRORS`].
    pub(crate) fn count_errors(&mut self, kind: String, n: u64) {
        let full = self.errors.len() >= MAX_ERROR_KINDS;
        let kind = if full && !self.errors.contains_key(&kind) {
            OTHER_ERRORS.to_string()
        } else {
            kind
        };
        *self.errors.entry(kind).or_default() += n;
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: ClientStats) {
        // Both histograms have the same bounds, so adding cannot fail; if it somehow did,
        // its samples would be missing from the percentiles, not from the op counts.
        let _ = self.hist.add(&other.hist);
        self.reads += other.reads;
        self.writes += other.writes;
        self.not_found += other.not_found;
        self.conflicts += other.conflicts;
        self.events += other.events;
        for (kind, n) in other.errors {
            self.count_errors(kind, n);
        }
    }
}

impl Report {
    pub(crate) fn new(
        config: &BenchConfig,
        leader: String,
        elapsed_s: f64,
        stats: &ClientStats,
    ) -> Self {
        let ops = match config.workload {
            Workload::Watch => stats.events,
            _ => stats.reads + stats.writes,
        };
        Self {
            target: config.target,
            workload: config.workload,
            consistency: config.consistency,
            read_ratio: match config.workload {
                Workload::Put | Workload::TxnCas | Workload::Watch | Workload::LeaseKeepAlive => {
                    0.0
                }
                Workload::Get | Workload::Range => 1.0,
                Workload::Mixed => config.read_ratio,
            },
            clients: config.clients,
            connections: config.connections,
            key_space: config.key_space,
            value_size: config.value_size,
            leader,
            watch_members: Vec::new(),
            elapsed_s,
            ops,
            reads: stats.reads,
            writes: stats.writes,
            events: stats.events,
            not_found: stats.not_found,
            conflicts: stats.conflicts,
            errors: stats.errors.values().sum(),
            error_kinds: stats.errors.clone(),
            throughput_ops_s: if elapsed_s > 0.0 {
                ops as f64 / elapsed_s
            } else {
                0.0
            },
            latency: Latency::from_histogram(&stats.hist),
        }
    }
}

/// Microseconds as `850µs`, `1.24ms` or `2.31s`.
pub fn human_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.workload {
            Workload::Put => "put".to_string(),
            Workload::Get => format!("get ({})", self.consistency),
            Workload::Mixed => format!(
                "mixed ({:.0}% {} reads)",
                self.read_ratio * 100.0,
                self.consistency
            ),
            Workload::TxnCas => "txn-cas (etcd API, compare-and-swap increments)".to_string(),
            Workload::Range => format!("range (etcd API, {} prefix reads)", self.consistency),
            Workload::Watch => "watch (etcd API, puts fanned out to watchers)".to_string(),
            Workload::LeaseKeepAlive => "lease-keepalive (etcd API, renewals)".to_string(),
        };
        let keys = match self.workload {
            Workload::Watch => "watchers on every member",
            Workload::LeaseKeepAlive => "leases",
            _ => "keys",
        };
        writeln!(
            f,
            "{} {what}: {} clients on {} connections to {}, {}-byte values, {} {keys}",
            self.target,
            self.clients,
            self.connections,
            self.leader,
            self.value_size,
            self.key_space
        )?;
        if self.workload == Workload::Watch {
            writeln!(f, "  watchers on {}", self.watch_members.join(", "))?;
            writeln!(
                f,
                "  throughput  {:.0} events/s  ({} events in {:.2} s from {} measured puts)",
                self.throughput_ops_s, self.events, self.elapsed_s, self.writes
            )?;
        } else {
            writeln!(
                f,
                "  throughput  {:.0} ops/s  ({} ops in {:.2} s: {} reads, {} writes, {} not found)",
                self.throughput_ops_s,
                self.ops,
                self.elapsed_s,
                self.reads,
                self.writes,
                self.not_found
            )?;
        }
        if self.workload == Workload::TxnCas {
            writeln!(
                f,
                "  conflicts   {} failed compares retried ({:.3} per successful increment)",
                self.conflicts,
                if self.ops > 0 {
                    self.conflicts as f64 / self.ops as f64
                } else {
                    0.0
                }
            )?;
        }
        let l = &self.latency;
        writeln!(
            f,
            "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            human_us(l.p50_us),
            human_us(l.p90_us),
            human_us(l.p99_us),
            human_us(l.p999_us),
            human_us(l.max_us)
        )?;
        write!(f, "  errors      {}", self.errors)?;
        for (kind, n) in &self.error_kinds {
            write!(f, "\n    {n} x {kind}")?;
        }
        Ok(())
    }
}

/// The limit as a phrase (`5 s`, `10000 ops`), for progress messages.
pub(crate) fn describe_limit(limit: Limit) -> String {
    match limit {
        Limit::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
        Limit::Total(n) => format!("{n} ops"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_in_order() {
        let mut stats = ClientStats::new().unwrap();
        for us in 1..=1000 {
            stats.record(us);
        }
        let l = Latency::from_histogram(&stats.hist);
        assert_eq!(l.p50_us, 500);
        assert_eq!(l.p90_us, 900);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.max_us, 1000);
        assert!(l.p999_us <= l.max_us && l.p99_us <= l.p999_us);
    }

    #[test]
    fn merge_adds_counts_and_caps_error_kinds() {
        let mut a = ClientStats::new().unwrap();
        a.record(10);
        a.writes = 1;
        a.error("Unavailable: x".into());
        let mut b = ClientStats::new().unwrap();
        b.record(20);
        b.writes = 1;
        for i in 0..MAX_ERROR_KINDS + 3 {
            b.error(format!("kind {i}"));
        }
        b.error("Unavailable: x".into());
        a.merge(b);
        assert_eq!(a.writes, 2);
        assert_eq!(a.hist.len(), 2);
        assert!(a.errors.len() <= MAX_ERROR_KINDS + 1, "{:?}", a.errors);
        assert!(a.errors.contains_key(OTHER_ERRORS));
        assert_eq!(a.errors["Unavailable: x"], 1, "b's copy was past its cap");
        assert_eq!(
            a.errors.values().sum::<u64>(),
            MAX_ERROR_KINDS as u64 + 5,
            "no failure is lost, however many kinds"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(1_240), "1.24ms");
        assert_eq!(human_us(2_310_000), "2.31s");
    }
}
