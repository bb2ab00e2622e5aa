//! The server under test: the real aggregator binary (or, for `--baseline`,
//! the benchmark's own naive server, [`crate::naive`]), pinned to its cores
//! ([`Pin`]: core 0 by default), with its CPU time and resident memory read
//! from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The cores a server is pinned to: `0..cores`, with one worker thread per
/// core. The generator keeps core 1, so a two-core server shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pin {
    pub(crate) cores: usize,
}

impl Pin {
    /// The cores as `taskset -c` takes them.
    fn cpu_list(self) -> String {
        let cores: Vec<String> = (0..self.cores.max(1)).map(|c| c.to_string()).collect();
        cores.join(",")
    }
}

/// A running aggregator.
pub(crate) struct Server {
    child: Child,
    /// gRPC ingest address.
    pub(crate) ingest: SocketAddr,
    /// HTTP/WebSocket address.
    pub(crate) http: SocketAddr,
    _dir: Option<TempDir>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time (user + system) and wall time at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    ticks: u64,
    at: Instant,
}

impl Server {
    /// Starts `binary` with `extra` config lines, pinned to `core` when given.
    pub(crate) fn start(binary: &PathBuf, extra: &str, core: Option<Pin>) -> anyhow::Result<Self> {
        let config = format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\nmax_samples_per_batch = 10000\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[hub]\nhistory_len = 16\nqueue = 16384\n{extra}"
        );
        Self::with_config(binary, &config, &[], core)
    }

    /// Starts `binary` with the whole configuration file `config` and extra
    /// command-line `args`, pinned to `core` when given.
    pub(crate) fn with_config(
        binary: &PathBuf,
        config: &str,
        args: &[&str],
        core: Option<Pin>,
    ) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hostpulse-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("aggregator.toml");
        std::fs::write(&config_path, config)?;
        let mut all: Vec<&std::ffi::OsStr> = vec!["--config".as_ref(), config_path.as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        // A configuration with a store (the shipped one) keeps it in the
        // run's own directory, removed with it, not in its configured dir.
        let store = dir.join("store");
        if config.contains("[storage]") {
            all.extend(["--storage-dir".as_ref(), store.as_os_str()]);
        }
        Self::launch(binary, &all, core, Some(TempDir(dir)))
    }

    /// Starts the naive baseline server (this binary, `--naive-server`), or
    /// with `tuned` the reference server (`--reference-server`), pinned to
    /// `core` when given.
    pub(crate) fn start_naive(core: Option<Pin>, tuned: bool) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?;
        let flag = if tuned {
            "--reference-server"
        } else {
            "--naive-server"
        };
        Self::launch(&binary, &[flag.as_ref()], core, None)
    }

    /// Runs `binary args` and waits for its "aggregator listening" line.
    fn launch(
        binary: &PathBuf,
        args: &[&std::ffi::OsStr],
        core: Option<Pin>,
        dir: Option<TempDir>,
    ) -> anyhow::Result<Self> {
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &core.cpu_list()]).arg(binary);
                // One worker thread per core.
                c.env("TOKIO_WORKER_THREADS", core.cores.to_string());
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(args)
            .env(
                "RUST_LOG",
                "hostpulse_aggregator=warn,hostpulse_aggregator=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("aggregator listening") => break l,
                Some(Ok(_)) => {}
                _ => bail!("aggregator exited before listening"),
            }
            if Instant::now() > deadline {
                bail!("aggregator did not start within 10 s");
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            let start = line.find(&format!("{key}=")).context("address in log")? + key.len() + 1;
            Ok(line[start..]
                .split_whitespace()
                .next()
                .context("address")?
                .parse()?)
        };
        Ok(Self {
            ingest: addr("ingest_addr")?,
            http: addr("http_addr")?,
            child,
            _dir: dir,
        })
    }

    /// CPU time so far.
    pub(crate) fn cpu_mark(&self) -> anyhow::Result<CpuMark> {
        cpu_mark_of(&self.child.id().to_string())
    }

    /// CPU used between `from` and now, in % of one core.
    pub(crate) fn cpu_since(&self, from: CpuMark) -> anyhow::Result<f64> {
        let now = self.cpu_mark()?;
        let secs = (now.ticks - from.ticks) as f64 / 100.0;
        Ok(100.0 * secs / now.at.duration_since(from.at).as_secs_f64())
    }

    /// `/healthz`, as JSON (a plain HTTP/1.0 request on loopback).
    pub(crate) fn healthz(&self) -> anyhow::Result<serde_json::Value> {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect_timeout(&self.http, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(tcp, "GET /healthz HTTP/1.0\r\nHost: {}\r\n\r\n", self.http)?;
        let mut response = String::new();
        tcp.read_to_string(&mut response)?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("an HTTP response")?;
        Ok(serde_json::from_str(body)?)
    }

    /// The value of metric `name` on the aggregator's `/metrics` (its first
    /// series), 0 when it has none.
    pub(crate) fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(scrape(self.http, &[name])?[0])
    }

    /// Resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?)
    }
}

/// This process's CPU time so far.
pub(crate) fn own_cpu_mark() -> anyhow::Result<CpuMark> {
    cpu_mark_of("self")
}

/// CPU this process used since `from`, in % of one core.
pub(crate) fn own_cpu_since(from: CpuMark) -> anyhow::Result<f64> {
    let now = own_cpu_mark()?;
    Ok(100.0 * (now.ticks - from.ticks) as f64
        / 100.0
        / now.at.duration_since(from.at).as_secs_f64())
}

fn cpu_mark_of(pid: &str) -> anyhow::Result<CpuMark> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(CpuMark {
        ticks,
        at: Instant::now(),
    })
}

/// A nats-server for the cluster scenario, pinned like the aggregators.
pub(crate) struct Nats {
    child: Child,
    /// Its client port on 127.0.0.1.
    pub(crate) port: u16,
}

impl Nats {
    /// Starts `nats-server` on a free loopback port, pinned to `core` when given.
    pub(crate) fn start(core: Option<Pin>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &core.cpu_list()]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (apt-get install nats-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port })
    }

    /// CPU time so far.
    pub(crate) fn cpu_mark(&self) -> anyhow::Result<CpuMark> {
        cpu_mark_of(&self.child.id().to_string())
    }

    /// CPU used between `from` and now, in % of one core.
    pub(crate) fn cpu_since(&self, from: CpuMark) -> anyhow::Result<f64> {
        let now = self.cpu_mark()?;
        Ok(100.0 * (now.ticks - from.ticks) as f64
            / 100.0
            / now.at.duration_since(from.at).as_secs_f64())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of metrics `names` from one scrape of the `/metrics` at
/// `http`, 0 for each it lacks (blocking: from async code, on a blocking
/// thread).
pub(crate) fn scrape(http: std::net::SocketAddr, names: &[&str]) -> anyhow::Result<Vec<f64>> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(http)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        http
    )?;
    let mut body = String::new();
    conn.read_to_string(&mut body)?;
    let value = |name: &str| {
        body.lines()
            .find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            })
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok(names.iter().map(|n| value(n)).collect())
}
