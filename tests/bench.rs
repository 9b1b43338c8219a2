//! kvstore-bench against a real 3-node cluster of the `kvstore` binary: short runs whose JSON
//! reports must hold plausible numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

/// Runs kvstore-bench with `args` plus `--json --no-progress` and returns its report.
async fn bench(endpoints: &[String], args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvstore-bench"));
    command
        .args(args)
        .args(["--json", "--no-progress", "--timeout", "5s"])
        .args(["--endpoints", &endpoints.join(",")]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kvstore-bench {args:?} failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn u64_at(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing or not a number in {report}"))
}

/// The numbers every successful run must have: operations, no errors, ordered percentiles,
/// throughput consistent with the count and the elapsed time.
fn assert_plausible(report: &Value, clients: u64) {
    let ops = u64_at(report, "/ops");
    assert!(ops > 0, "no operation measured: {report}");
    assert_eq!(u64_at(report, "/errors"), 0, "errors: {report}");
    assert_eq!(u64_at(report, "/clients"), clients);
    let (p50, p90, p99, p999, max) = (
        u64_at(report, "/latency/p50_us"),
        u64_at(report, "/latency/p90_us"),
        u64_at(report, "/latency/p99_us"),
        u64_at(report, "/latency/p999_us"),
        u64_at(report, "/latency/max_us"),
    );
    assert!(
        0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "percentiles out of order: {report}"
    );
    assert!(
        max < 5_000_000,
        "a request took over the 5 s timeout: {report}"
    );
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    let throughput = report["throughput_ops_s"].as_f64().unwrap();
    assert!(elapsed > 0.0);
    assert!(
        (throughput * elapsed - ops as f64).abs() < 1.0,
        "throughput is ops / elapsed: {report}"
    );
}

#[tokio::test]
async fn bench_put_and_linearizable_get_against_a_three_node_cluster() {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    // Ask a follower first: the tool must find the leader by itself.
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let endpoints = vec![cluster.addr(follower), cluster.addr(leader)];

    let put = bench(
        &endpoints,
        &[
            "put",
            "--clients",
            "4",
            "--connections",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--key-space",
            "50",
        ],
    )
    .await;
    assert_plausible(&put, 4);
    assert_eq!(
        put["leader"],
        cluster.addr(leader),
        "load goes to the leader: {put}"
    );
    assert_eq!(u64_at(&put, "/writes"), u64_at(&put, "/ops"));
    assert_eq!(
        u64_at(&put, "/value_size"),
        100,
        "100-byte values by default"
    );

    let get = bench(
        &endpoints,
        &[
            "get",
            "--clients",
            "2",
            "--total",
            "200",
            "--warmup",
            "0",
            "--key-space",
            "50",
        ],
    )
    .await;
    assert_plausible(&get, 2);
    assert_eq!(
        u64_at(&get, "/ops"),
        200,
        "--total measures exactly that many"
    );
    assert_eq!(u64_at(&get, "/reads"), 200);
    assert_eq!(u64_at(&get, "/not_found"), 0, "the preload wrote every key");
    assert_eq!(get["consistency"], "linearizable");
}

#[tokio::test]
async fn bench_fails_in_one_line_when_no_cluster_answers() {
    let port = common::free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_kvstore-bench"))
        .args([
            "put",
            "--no-progress",
            "--duration",
            "1s",
            "--leader-timeout",
            "500ms",
        ])
        .args(["--endpoints", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("kvstore-bench: no leader found among") && stderr.lines().count() == 1,
        "one clear line: {stderr}"
    );
}
