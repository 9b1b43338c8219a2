//! The Go program `kvcheck` (tests/go/src/kvcheck): built once per test binary in GOPATH
//! mode against Debian's golang-etcd-server-dev, then run as a child process whose
//! observation lines the tests read as they come (to kill a member where it pauses).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

/// Where Debian's golang-etcd-server-dev puts the Go sources (GOPATH layout).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// The client package the program imports, inside that GOPATH.
const CLIENT_PACKAGE: &str = "src/go.etcd.io/etcd/clientv3/concurrency";

/// The built program, or why it cannot be built here (no Go, no etcd client sources).
/// Built once per test binary; a compile error of the program itself panics.
pub fn binary() -> Result<&'static Path, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(build).as_deref().map_err(Clone::clone)
}

fn build() -> Result<PathBuf, String> {
    let go_present = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !go_present {
        return Err("go is not installed (.ci/run installs Debian's golang-go)".into());
    }
    if !Path::new(DEBIAN_GOPATH).join(CLIENT_PACKAGE).is_dir() {
        return Err(format!(
            "{DEBIAN_GOPATH}/{CLIENT_PACKAGE} is missing (.ci/run installs Debian's \
             golang-etcd-server-dev)"
        ));
    }
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let binary = out_dir.join("kvcheck");
    let mut command = Command::new("go");
    command
        .args(["build", "-o"])
        .arg(&binary)
        .arg("kvcheck")
        .current_dir(&ours)
        // GOPATH mode: no module proxy is reachable, and Debian ships GOPATH sources.
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{DEBIAN_GOPATH}:{}", ours.display()))
        .env("GOFLAGS", "");
    if std::env::var_os("GOCACHE").is_none() {
        // Kept with the cargo target dir: a second `cargo test` rebuilds in a second.
        command.env("GOCACHE", out_dir.join("go-build"));
    }
    let started = Instant::now();
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "go build kvcheck failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("built {} in {:?}", binary.display(), started.elapsed());
    Ok(binary)
}

/// One observation line: its kind and its `key=value` fields.
#[derive(Clone, Debug)]
pub struct Line {
    pub kind: String,
    pub fields: BTreeMap<String, String>,
    pub text: String,
}

impl Line {
    fn parse(text: &str) -> Line {
        let mut words = text.split_whitespace();
        let kind = words.next().unwrap_or_default().to_string();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Line {
            kind,
            fields,
            text: text.to_string(),
        }
    }

    /// Field `key` (panics naming the line when it is missing).
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.text))
    }
}

/// A running kvcheck; killed on drop.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<Line>,
    stderr: NamedTempFile,
    args: Vec<String>,
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub lines: Vec<Line>,
    pub stderr: String,
}

/// How long one kvcheck run may take in all (its own `--timeout` is shorter).
const RUN_DEADLINE: Duration = Duration::from_secs(90);

/// Starts `kvcheck ARGS` (the program must have been built: see [`binary`]).
pub fn spawn(args: &[&str]) -> Running {
    let binary = binary().expect("kvcheck is built");
    let stderr = NamedTempFile::new().unwrap();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        stdin: child.stdin.take(),
        child,
        lines,
        seen: Vec::new(),
        stderr,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

impl Running {
    /// Waits for the first line of `kind` (reading on from where the last wait stopped).
    /// Panics, with everything seen, if the program ends or the deadline passes first.
    pub fn wait_for(&mut self, kind: &str, deadline: Duration) -> Line {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(text) => {
                    let line = Line::parse(&text);
                    self.seen.push(line.clone());
                    if line.kind == kind {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {kind} line within {deadline:?}: {}", self.describe())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("kvcheck ended before a {kind} line: {}", self.describe())
                }
            }
        }
    }

    /// Lets a paused run go on.
    pub fn resume(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(b"resume\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (bounded) for the end and returns the whole run.
    pub fn finish(mut self) -> Run {
        drop(self.stdin.take());
        let end = Instant::now() + RUN_DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(text) => self.seen.push(Line::parse(&text)),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("kvcheck ran over {RUN_DEADLINE:?}: {}", self.describe())
                }
            }
        }
        let status = self.child.wait().unwrap();
        Run {
            args: std::mem::take(&mut self.args),
            code: status.code(),
            lines: std::mem::take(&mut self.seen),
            stderr: std::fs::read_to_string(self.stderr.path()).unwrap_or_default(),
        }
    }

    fn describe(&self) -> String {
        let lines: Vec<&str> = self.seen.iter().map(|l| l.text.as_str()).collect();
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        format!(
            "kvcheck {}\n-- stdout so far --\n{}\n-- stderr --\n{}",
            self.args.join(" "),
            tail(&lines),
            stderr
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 40 lines.
fn tail(lines: &[&str]) -> String {
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Run {
    /// Every line of `kind`.
    pub fn of(&self, kind: &str) -> Vec<&Line> {
        self.lines.iter().filter(|l| l.kind == kind).collect()
    }

    /// The one line of `kind`.
    pub fn one(&self, kind: &str) -> &Line {
        let lines = self.of(kind);
        assert!(lines.len() == 1, "{} {kind} lines: {}", lines.len(), self);
        lines[0]
    }

    /// The kinds of the violations reported.
    pub fn violations(&self) -> Vec<&str> {
        self.of("violation").iter().map(|l| l.get("kind")).collect()
    }

    /// Every check held: exit 0, a `result ok=true` line, no violation.
    pub fn assert_ok(&self) {
        assert!(
            self.code == Some(0) && self.violations().is_empty(),
            "kvcheck reported violations: {self}"
        );
        assert_eq!(self.one("result").get("ok"), "true", "{self}");
    }

    /// The run failed its checks (exit 1) with a violation of `kind` among others.
    pub fn assert_caught(&self, kind: &str) {
        assert!(
            self.code == Some(1) && self.violations().contains(&kind),
            "kvcheck did not report a {kind} violation: {self}"
        );
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<&str> = self.lines.iter().map(|l| l.text.as_str()).collect();
        write!(
            f,
            "kvcheck {} exited {:?}\n-- stdout (tail) --\n{}\n-- stderr --\n{}",
            self.args.join(" "),
            self.code,
            tail(&lines),
            self.stderr
        )
    }
}
