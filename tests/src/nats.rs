//! A real `nats-server` for the cluster tests: started on a free loopback
//! port, stopped and restarted on the same port, and killed (by its own PID
//! only) when dropped. CI installs the Debian package; a missing binary is a
//! test failure with the install command, not a silent skip.
//!
//! A server counts as started only when that very process logs "Server is
//! ready" after listening on the expected port: a listener on the port
//! could be some other process, and a server that could not bind exits.
//!
//! [`Spy`] is a bare NATS subscriber speaking the text protocol, to see
//! exactly what the aggregators put on the broker (subjects and headers).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::{WAIT, free_port};

/// A running (or stopped) nats-server.
pub struct NatsServer {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    /// Its configuration file, if started with one.
    config: Option<std::path::PathBuf>,
}

fn binary() -> &'static str {
    for candidate in [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return candidate;
        }
    }
    panic!(
        "nats-server is not installed; the cluster tests need a real broker: \
         `apt-get install -y nats-server` (.ci/run does this)"
    );
}

/// Why a server did not become ready.
enum NotReady {
    /// It exited; what it logged.
    Exited(String),
}

/// Starts nats-server on `port` and waits for its own "Server is ready"
/// line (after "Listening for client connections on 127.0.0.1:<port>"),
/// checking all along that the child is still alive.
fn spawn(port: u16, config: Option<&std::path::Path>) -> Result<Child, NotReady> {
    let mut command = Command::new(binary());
    if let Some(path) = config {
        command.arg("-c").arg(path);
    }
    let mut child = command
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nats-server");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, lines) = mpsc::channel();
    // Keeps reading after readiness (ignoring a gone receiver), so the
    // server never blocks or dies on a full or closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = format!("Listening for client connections on 127.0.0.1:{port}");
    let mut log = Vec::new();
    let mut listens = false;
    let deadline = Instant::now() + WAIT;
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                listens |= line.contains(&listening);
                let ready = line.contains("Server is ready");
                log.push(line);
                if ready {
                    assert!(
                        listens,
                        "nats-server is ready but never said {listening:?}:\n{}",
                        log.join("\n")
                    );
                    return Ok(child);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stderr closed: the process is ending.
                let status = child.wait().expect("wait for nats-server");
                log.push(format!("(exited: {status})"));
                return Err(NotReady::Exited(log.join("\n")));
            }
        }
        if let Some(status) = child.try_wait().expect("try_wait nats-server") {
            // Collect what it said before dying.
            while let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
                log.push(line);
            }
            log.push(format!("(exited: {status})"));
            return Err(NotReady::Exited(log.join("\n")));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nats-server on port {port} not ready within {WAIT:?}:\n{}",
                log.join("\n")
            );
        }
    }
}

impl NatsServer {
    /// Starts a server on a free port and waits until it is ready. A port
    /// taken by another process between choosing and binding it is
    /// replaced by a fresh one (a few times).
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// Like [`NatsServer::start`], with the server's `max_payload` (the
    /// largest message it takes, which it announces to clients) set.
    pub fn start_with_max_payload(bytes: usize) -> Self {
        let config = crate::process::temp_file("nats.conf", &format!("max_payload: {bytes}\n"));
        Self::start_with_config(Some(config))
    }

    fn start_with_config(config: Option<std::path::PathBuf>) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, config.as_deref()) {
                Ok(child) => {
                    return Self {
                        port,
                        child: Some(child),
                        config,
                    };
                }
                Err(NotReady::Exited(log)) if log.contains("address already in use") => {
                    last = log;
                }
                Err(NotReady::Exited(log)) => panic!("nats-server exited at start:\n{log}"),
            }
        }
        panic!("nats-server found no free port in 5 tries; last attempt:\n{last}");
    }

    /// `nats://` URL of the server.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a graceful stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and waits until it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        match spawn(self.port, self.config.as_deref()) {
            Ok(child) => self.child = Some(child),
            Err(NotReady::Exited(log)) => {
                panic!("nats-server did not restart on port {}:\n{log}", self.port)
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as the broker delivered it.
#[derive(Debug, Clone)]
pub struct NatsMessage {
    /// Its subject.
    pub subject: String,
    /// Its headers, in order (empty for a message without any).
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When the spy read it.
    pub at: Instant,
}

impl NatsMessage {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A subscriber on a raw NATS connection that records every message it is
/// delivered.
pub struct Spy {
    messages: Arc<Mutex<Vec<NatsMessage>>>,
    task: JoinHandle<()>,
}

impl Spy {
    /// Subscribes to `subject` on the server at `port`; returns once the
    /// server has answered a PING sent after the SUB, i.e. once the
    /// subscription is in force.
    pub async fn subscribe(port: u16, subject: &str) -> Self {
        let stream =
            tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
                .await
                .expect("connect to NATS in time")
                .expect("connect to NATS");
        let (read, mut write) = stream.into_split();
        let mut read = tokio::io::BufReader::new(read);
        let mut line = String::new();
        tokio::time::timeout(WAIT, read.read_line(&mut line))
            .await
            .expect("INFO in time")
            .expect("read INFO");
        assert!(line.starts_with("INFO "), "expected INFO, got {line:?}");
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1,\"name\":\"hostpulse-test-spy\"}}\r\nSUB {subject} 1\r\nPING\r\n"
        );
        write.write_all(hello.as_bytes()).await.expect("send SUB");
        loop {
            line.clear();
            tokio::time::timeout(WAIT, read.read_line(&mut line))
                .await
                .expect("PONG in time")
                .expect("read PONG");
            match line.trim_end() {
                "PONG" => break,
                "PING" => write.write_all(b"PONG\r\n").await.expect("send PONG"),
                l if l.starts_with("-ERR") => panic!("NATS refused the spy: {l}"),
                _ => {}
            }
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                match read.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.first().copied() {
                    // Answers the server's keepalive; a failed write ends the spy.
                    Some("PING") if write.write_all(b"PONG\r\n").await.is_err() => return,
                    // MSG <subject> <sid> [reply] <bytes>
                    Some("MSG") => {
                        let total: usize =
                            words.last().and_then(|n| n.parse().ok()).expect("MSG size");
                        let Some(body) = read_body(&mut read, total).await else {
                            return;
                        };
                        sink.lock().expect("spy lock").push(NatsMessage {
                            subject: words[1].to_string(),
                            headers: Vec::new(),
                            payload: body,
                            at: Instant::now(),
                        });
                    }
                    // HMSG <subject> <sid> [reply] <header bytes> <total bytes>
                    Some("HMSG") => {
                        let n = words.len();
                        let head: usize = words[n - 2].parse().expect("HMSG header size");
                        let total: usize = words[n - 1].parse().expect("HMSG size");
                        let Some(mut body) = read_body(&mut read, total).await else {
                            return;
                        };
                        let payload = body.split_off(head);
                        sink.lock().expect("spy lock").push(NatsMessage {
                            subject: words[1].to_string(),
                            headers: parse_headers(&body),
                            payload,
                            at: Instant::now(),
                        });
                    }
                    _ => {}
                }
            }
        });
        Self { messages, task }
    }

    /// Everything delivered so far.
    pub fn messages(&self) -> Vec<NatsMessage> {
        self.messages.lock().expect("spy lock").clone()
    }

    /// How many messages were delivered so far that match `keep`.
    pub fn count(&self, keep: impl Fn(&NatsMessage) -> bool) -> usize {
        self.messages
            .lock()
            .expect("spy lock")
            .iter()
            .filter(|m| keep(m))
            .count()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `n` bytes and the CRLF after them.
async fn read_body(
    read: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    n: usize,
) -> Option<Vec<u8>> {
    let mut body = vec![0; n + 2];
    read.read_exact(&mut body).await.ok()?;
    body.truncate(n);
    Some(body)
}

/// `NATS/1.0\r\nKey: value\r\n...\r\n\r\n` → `[(Key, value)]`.
fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(block)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
