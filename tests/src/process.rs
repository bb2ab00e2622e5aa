//! The real `hostpulse-aggregator` and `hostpulse-agent` binaries as child
//! processes, configured with TOML files. `make test` builds them first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::WAIT;

/// Path of a workspace binary next to this test executable.
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// Runs a workspace binary to completion with `args` and extra environment.
pub fn run(name: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    let mut command = Command::new(binary(name));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run binary")
}

/// Like [`run`], asserting success; returns standard output.
pub fn run_ok(name: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = run(name, args, env);
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A child process whose stderr lines are collected; killed on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything read so far.
    pub log: Vec<String>,
}

impl Proc {
    /// Starts `name` with `args`.
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_with_env(name, args, &[])
    }

    /// Starts `name` with `args` and extra environment variables.
    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary(name))
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn binary");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {WAIT:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Every stderr line read so far, taking in those waiting without blocking.
    pub fn lines_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// How many stderr lines so far contain `needle`.
    pub fn count_lines(&mut self, needle: &str) -> usize {
        self.lines_so_far()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Sends `signal` (a name `kill` takes: `STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Everything written to stderr until the process closed it (waits up to [`WAIT`]).
    pub fn stderr_to_end(&mut self) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stderr still open after {WAIT:?}"),
            }
        }
        self.log.join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit within `limit`; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole number after ` key=` (or `key=` at the start) in a log line.
pub fn number_in(line: &str, key: &str) -> u64 {
    let pattern = format!("{key}=");
    let start = line
        .match_indices(&pattern)
        .find(|(i, _)| *i == 0 || line[..*i].ends_with(char::is_whitespace))
        .map(|(i, _)| i + pattern.len())
        .unwrap_or_else(|| panic!("{key} in {line:?}"));
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
}

/// Starts the aggregator binary with the config file `toml` (whose listen
/// addresses should be port 0); returns it and its (ingest, http) addresses.
pub fn start_aggregator_binary(toml: &str) -> (Proc, SocketAddr, SocketAddr) {
    let config = temp_file("aggregator.toml", toml);
    let mut agg = Proc::spawn(
        "hostpulse-aggregator",
        &["--config", config.to_str().expect("a UTF-8 path")],
    );
    let line = agg.wait_for_line("aggregator listening");
    (
        agg,
        addr_in(&line, "ingest_addr"),
        addr_in(&line, "http_addr"),
    )
}

/// Reads `key=ADDR` from an aggregator's "aggregator listening" log line.
pub fn addr_in(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .expect("an address")
        .parse()
        .expect("a socket address")
}

/// Writes `text` to a fresh file in a temporary directory; returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hostpulse-test-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs `promtool check metrics` (Debian package `prometheus`, installed by
/// `.ci/run`) on a scrape, failing with what promtool said.
pub fn promtool_check(scrape: &str) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
