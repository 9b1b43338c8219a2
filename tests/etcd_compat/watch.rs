//! Running `etcdctl watch` until it printed what was expected (or went quiet), for the
//! differential test (the same watches against etcd and kvstore over the same history:
//! `script::watch_history`, `script::WATCHES`) and tests/etcd_watch.rs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a watch printed: stdout's lines and stderr's "watch was canceled" lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Printed {
    pub stdout: Vec<String>,
    pub canceled: Vec<String>,
}

/// Runs `etcdctl watch ARGS` on `endpoint` until `lines` lines came (when given; `quiet`
/// is then the longest wait), or until nothing came for `quiet`, then kills it.
pub fn watch(endpoint: &str, args: &str, lines: Option<usize>, quiet: Duration) -> Printed {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout", "2s", "watch"])
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let end = Instant::now() + quiet.max(Duration::from_secs(10));
    loop {
        if lines.is_some_and(|n| got.len() >= n) || Instant::now() > end {
            break;
        }
        match rx.recv_timeout(quiet) {
            Ok(line) => got.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) if lines.is_none() => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // A little longer: more lines would be duplicates.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        got.push(line);
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    Printed {
        stdout: got,
        canceled: stderr
            .lines()
            .filter(|l| l.starts_with("watch was canceled"))
            .map(str::to_string)
            .collect(),
    }
}
