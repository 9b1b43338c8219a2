//! Side-by-side comparison of many runs: one row per (workload, clients), kvstore next to
//! etcd, with ratios. `kvstore-plot` prints it and draws the same rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::human_us;
use super::{ReadConsistency, Report, Target, Workload};

/// What a row compares: the workload as run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scenario {
    /// put, get or mixed.
    pub workload: Workload,
    /// Read consistency (ignored for `put`).
    pub consistency: ReadConsistency,
    /// Read ratio in permille (mixed only; 0 for put, 1000 for get).
    pub read_permille: u32,
    /// Counters (txn-cas), keys per range (range), watchers (watch) or leases
    /// (lease-keepalive); 0 for put, get and mixed, whose rows
    /// do not depend on it.
    pub keys: u64,
}

impl Scenario {
    /// The scenario a report ran.
    pub fn of(report: &Report) -> Self {
        Self {
            workload: report.workload,
            consistency: match report.workload {
                Workload::Put | Workload::TxnCas | Workload::Watch | Workload::LeaseKeepAlive => {
                    ReadConsistency::Linearizable
                }
                _ => report.consistency,
            },
            read_permille: (report.read_ratio * 1000.0).round() as u32,
            keys: if report.workload.uses_etcd_api() {
                report.key_space
            } else {
                0
            },
        }
    }

    /// `put`, `get (linearizable)`, `mixed 90% (serializable)`.
    pub fn label(&self) -> String {
        match self.workload {
            Workload::Put => "put".to_string(),
            Workload::Get => format!("get ({})", self.consistency),
            Workload::Mixed => format!(
                "mixed {}% reads ({})",
                self.read_permille / 10,
                self.consistency
            ),
            Workload::TxnCas => format!("txn CAS on 1 of {} counters", self.keys),
            Workload::Range => format!("range of {} keys ({})", self.keys, self.consistency),
            Workload::Watch => format!("watch: events/s to {} watchers", self.keys),
            Workload::LeaseKeepAlive => format!("lease keep-alive of {} leases", self.keys),
        }
    }
}

/// One comparison row: the same scenario and client count on both systems.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What ran.
    pub scenario: Scenario,
    /// Concurrent clients.
    pub clients: usize,
    /// kvstore's run (the median by throughput when it ran more than once).
    pub kvstore: Option<Report>,
    /// etcd's run, likewise.
    pub etcd: Option<Report>,
}

impl Row {
    /// kvstore throughput / etcd throughput.
    pub fn throughput_ratio(&self) -> Option<f64> {
        let (k, e) = (self.kvstore.as_ref()?, self.etcd.as_ref()?);
        (e.throughput_ops_s > 0.0).then(|| k.throughput_ops_s / e.throughput_ops_s)
    }

    /// kvstore p99 / etcd p99 (below 1 is better for kvstore).
    pub fn p99_ratio(&self) -> Option<f64> {
        let (k, e) = (self.kvstore.as_ref()?, self.etcd.as_ref()?);
        (e.latency.p99_us > 0).then(|| k.latency.p99_us as f64 / e.latency.p99_us as f64)
    }
}

/// Groups `reports` into rows ordered by scenario, then clients.
pub fn rows(reports: &[Report]) -> Vec<Row> {
    /// kvstore's runs and etcd's runs of one (scenario, clients).
    type Runs<'a> = (Vec<&'a Report>, Vec<&'a Report>);
    let mut groups: BTreeMap<(Scenario, usize), Runs<'_>> = BTreeMap::new();
    for report in reports {
        let (kvstore, etcd) = groups
            .entry((Scenario::of(report), report.clients))
            .or_default();
        match report.target {
            Target::Kvstore => kvstore.push(report),
            Target::Etcd => etcd.push(report),
        }
    }
    groups
        .into_iter()
        .map(|((scenario, clients), (kvstore, etcd))| Row {
            scenario,
            clients,
            kvstore: median(kvstore),
            etcd: median(etcd),
        })
        .collect()
}

/// The run with the median throughput.
fn median(mut runs: Vec<&Report>) -> Option<Report> {
    runs.sort_by(|a, b| a.throughput_ops_s.total_cmp(&b.throughput_ops_s));
    runs.get(runs.len() / 2).map(|r| (*r).clone())
}

/// The rows as a Markdown table (it reads fine as plain text too).
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | clients | kvstore ops/s | etcd ops/s | ratio | kvstore p50 | etcd p50 | kvstore p99 | etcd p99 | p99 ratio | errors (kv/etcd) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let ops = |r: &Option<Report>| {
        r.as_ref()
            .map_or("-".to_string(), |r| format!("{:.0}", r.throughput_ops_s))
    };
    let lat = |r: &Option<Report>, p99: bool| {
        r.as_ref().map_or("-".to_string(), |r| {
            human_us(if p99 {
                r.latency.p99_us
            } else {
                r.latency.p50_us
            })
        })
    };
    let errors = |r: &Option<Report>| r.as_ref().map_or("-".to_string(), |r| r.errors.to_string());
    let ratio = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            row.scenario.label(),
            row.clients,
            ops(&row.kvstore),
            ops(&row.etcd),
            ratio(row.throughput_ratio()),
            lat(&row.kvstore, false),
            lat(&row.etcd, false),
            lat(&row.kvstore, true),
            lat(&row.etcd, true),
            ratio(row.p99_ratio()),
            errors(&row.kvstore),
            errors(&row.etcd),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Latency;
    use super::*;

    fn report(target: Target, workload: Workload, clients: usize, ops_s: f64, p99: u64) -> Report {
        Report {
            target,
            workload,
            consistency: ReadConsistency::Linearizable,
            read_ratio: if workload == Workload::Get { 1.0 } else { 0.0 },
            clients,
            connections: 1,
            key_space: 10,
            value_size: 100,
            leader: "127.0.0.1:1".into(),
            watch_members: Vec::new(),
            elapsed_s: 1.0,
            ops: ops_s as u64,
            reads: 0,
            writes: ops_s as u64,
            events: 0,
            not_found: 0,
            conflicts: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            throughput_ops_s: ops_s,
            latency: Latency {
                p50_us: p99 / 2,
                p99_us: p99,
                ..Latency::default()
            },
        }
    }

    #[test]
    fn rows_pair_the_systems_and_compute_ratios() {
        let reports = [
            report(Target::Etcd, Workload::Put, 16, 1000.0, 4000),
            report(Target::Kvstore, Workload::Put, 16, 3000.0, 2000),
            report(Target::Kvstore, Workload::Put, 1, 500.0, 1000),
            report(Target::Kvstore, Workload::Get, 1, 900.0, 1000),
        ];
        let rows = rows(&reports);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].scenario.workload, rows[0].clients),
            (Workload::Put, 1)
        );
        assert_eq!(rows[0].throughput_ratio(), None, "no etcd run for 1 client");
        assert_eq!(rows[1].throughput_ratio(), Some(3.0));
        assert_eq!(rows[1].p99_ratio(), Some(0.5));
        assert_eq!(rows[2].scenario.label(), "get (linearizable)");
        let table = markdown(&rows);
        assert!(table.contains("| put | 16 | 3000 | 1000 | 3.00x | 1.00ms | 2.00ms | 2.00ms | 4.00ms | 0.50x | 0/0 |"), "{table}");
    }

    #[test]
    fn etcd_api_rows_name_their_key_counts_and_keep_put_rows_apart() {
        let mut cas = report(Target::Kvstore, Workload::TxnCas, 64, 2000.0, 8000);
        cas.key_space = 1000;
        let mut etcd_cas = report(Target::Etcd, Workload::TxnCas, 64, 1000.0, 9000);
        etcd_cas.key_space = 1000;
        let mut range = report(Target::Etcd, Workload::Range, 64, 500.0, 9000);
        range.key_space = 100;
        range.read_ratio = 1.0;
        let mut put = report(Target::Kvstore, Workload::Put, 64, 3000.0, 2000);
        put.key_space = 1000;
        let rows = rows(&[cas, etcd_cas, range, put]);
        let labels: Vec<String> = rows.iter().map(|r| r.scenario.label()).collect();
        assert_eq!(
            labels,
            [
                "put",
                "txn CAS on 1 of 1000 counters",
                "range of 100 keys (linearizable)"
            ]
        );
        assert_eq!(
            rows[0].scenario.keys, 0,
            "put rows do not depend on the key space"
        );
        assert_eq!(rows[1].throughput_ratio(), Some(2.0));
    }

    #[test]
    fn watch_and_lease_rows_name_their_watchers_and_leases() {
        let mut watch = report(Target::Etcd, Workload::Watch, 64, 50_000.0, 9000);
        watch.key_space = 1000;
        let mut kv_watch = report(Target::Kvstore, Workload::Watch, 64, 100_000.0, 3000);
        kv_watch.key_space = 1000;
        let mut lease = report(Target::Etcd, Workload::LeaseKeepAlive, 64, 8000.0, 9000);
        lease.key_space = 10_000;
        let rows = rows(&[watch, lease, kv_watch]);
        let labels: Vec<String> = rows.iter().map(|r| r.scenario.label()).collect();
        assert_eq!(
            labels,
            [
                "watch: events/s to 1000 watchers",
                "lease keep-alive of 10000 leases"
            ]
        );
        assert_eq!(
            rows[0].throughput_ratio(),
            Some(2.0),
            "both systems on one row"
        );
    }

    #[test]
    fn repeated_runs_keep_the_median() {
        let reports = [
            report(Target::Kvstore, Workload::Put, 4, 100.0, 1),
            report(Target::Kvstore, Workload::Put, 4, 900.0, 1),
            report(Target::Kvstore, Workload::Put, 4, 300.0, 1),
        ];
        let rows = rows(&reports);
        assert_eq!(rows[0].kvstore.as_ref().unwrap().throughput_ops_s, 300.0);
    }
}
