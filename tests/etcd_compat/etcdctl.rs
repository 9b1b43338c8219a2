//! Running etcdctl 3.4 (`ETCDCTL_API=3`) as a child process, and the command scripts the
//! differential tests replay: a list of invocations whose later steps may use values an
//! earlier step printed (the generation-number CAS needs the revision it just read).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What one etcdctl invocation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The command as a reader would type it (endpoints and timeouts left out).
    pub command: String,
    /// Exit status (-1: killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `etcdctl --endpoints ENDPOINTS ARGS` with `stdin` on its standard input; `None` if
/// etcdctl is not installed.
pub fn etcdctl(endpoints: &[String], args: &[String], stdin: Option<&[u8]>) -> Option<Outcome> {
    let mut child = match Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoints.join(",")])
        .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        other => other.unwrap(),
    };
    if let Some(bytes) = stdin {
        // A writer thread: etcdctl may answer (and fill its stdout pipe) before it has read
        // all of a large stdin.
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let output = child.wait_with_output().unwrap();
    let mut command = format!("etcdctl {}", args.join(" "));
    if let Some(bytes) = stdin {
        command += &format!(" <<< {}", describe_stdin(bytes));
    }
    Some(Outcome {
        command,
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Short stdin text as it is (newlines shown as `\n`), long stdin by its size.
fn describe_stdin(bytes: &[u8]) -> String {
    if bytes.len() > 200 {
        format!("[{} bytes]", bytes.len())
    } else {
        format!("{:?}", String::from_utf8_lossy(bytes))
    }
}

/// Whether etcdctl is installed (`None`) or why the tests that need it cannot run.
pub fn missing_tool() -> Option<String> {
    for (tool, package) in [("etcdctl", "etcd-client"), ("etcd", "etcd-server")] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "{tool} is not installed (.ci/run installs Debian's {package})"
            ));
        }
    }
    None
}

/// A test that cannot set up what it needs: in CI (`CI` set) it fails; elsewhere it skips,
/// saying so on the terminal (not in the captured output).
pub fn cannot_run(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "cannot run in CI: {why}");
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED, this test did NOT run: {why}\n"
    );
}

/// How a step's output is compared between two systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Every field, ids and terms aside.
    Fields,
    /// Only the structure: the same fields, array lengths, booleans and empty strings; other
    /// scalars stand for their type (for outputs full of addresses, sizes and versions).
    Shape,
}

/// Computes a script variable from a step's parsed `-w json` output.
pub type Extract = fn(&Value) -> Option<String>;

/// One etcdctl invocation of a script. `{name}` in its arguments or stdin is replaced by the
/// variable `name` captured by an earlier step.
#[derive(Clone, Debug)]
pub struct Step {
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub compare: Compare,
    /// Variables this step's output defines.
    pub captures: Vec<(&'static str, Extract)>,
    /// The `Error: ...` line etcd answers this step with (`None`: it succeeds). Checked
    /// against etcd, so a typo in the script cannot pass as agreement on an error.
    pub fails_with: Option<&'static str>,
}

impl Step {
    /// `etcdctl ARGS` (split on spaces), compared field by field.
    pub fn new(args: &str) -> Step {
        Step {
            args: args.split_whitespace().map(str::to_string).collect(),
            stdin: None,
            compare: Compare::Fields,
            captures: Vec::new(),
            fails_with: None,
        }
    }

    /// etcd refuses this step, printing `Error: ` + `message`.
    pub fn fails(mut self, message: &'static str) -> Step {
        self.fails_with = Some(message);
        self
    }

    /// With `text` on standard input (`txn` reads its compares and branches there; `put KEY`
    /// without a value reads the value).
    pub fn stdin(mut self, text: impl Into<Vec<u8>>) -> Step {
        self.stdin = Some(text.into());
        self
    }

    /// Compared by [`Compare::Shape`].
    pub fn shape(mut self) -> Step {
        self.compare = Compare::Shape;
        self
    }

    /// Defines variable `name` from this step's JSON output.
    pub fn capture(mut self, name: &'static str, extract: Extract) -> Step {
        self.captures.push((name, extract));
        self
    }

    /// Whether its stdout is JSON (`-w json`).
    pub fn is_json(&self) -> bool {
        self.args
            .windows(2)
            .any(|w| (w[0] == "-w" || w[0] == "--write-out") && w[1] == "json")
            || self.args.iter().any(|a| a == "--write-out=json")
    }
}

/// Replaces every `{name}` in `text` by its variable; an unknown variable (the step that
/// should have defined it failed, which the comparison reports first) becomes `<no name>`.
fn substitute(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    while let Some(start) = out.find('{') {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        let name = out[start + 1..start + len].to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            break;
        }
        out.replace_range(start..=start + len, &format!("<no {name}>"));
    }
    out
}

/// Runs `steps` in order against `endpoints`, one outcome per step.
pub fn run_script(steps: &[Step], endpoints: &[String]) -> Vec<Outcome> {
    let mut vars = BTreeMap::new();
    let mut outcomes = Vec::new();
    for step in steps {
        let args: Vec<String> = step.args.iter().map(|a| substitute(a, &vars)).collect();
        let stdin = step.stdin.as_ref().map(|s| match std::str::from_utf8(s) {
            Ok(text) => substitute(text, &vars).into_bytes(),
            Err(_) => s.clone(),
        });
        let outcome = etcdctl(endpoints, &args, stdin.as_deref()).expect("etcdctl is installed");
        let json: Option<Value> = serde_json::from_str(&outcome.stdout).ok();
        for (name, extract) in &step.captures {
            match json.as_ref().and_then(extract) {
                Some(value) => vars.insert(name, value),
                None => vars.remove(name),
            };
        }
        outcomes.push(outcome);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_replaces_known_and_marks_unknown_variables() {
        let vars = BTreeMap::from([("rev", "7".to_string())]);
        assert_eq!(
            substitute("mod(\"gen\") = \"{rev}\" {next}", &vars),
            "mod(\"gen\") = \"7\" <no next>"
        );
    }
}
