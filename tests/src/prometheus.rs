//! A real Prometheus (Debian's `prometheus` package) as a remote-write
//! receiver: started with `--web.enable-remote-write-receiver`, an empty
//! scrape config and a storage directory of its own on a loopback port,
//! ready when `/-/ready` answers 200, queried back through its HTTP API,
//! and killed (by its own PID only) when dropped. A missing binary is a
//! test failure with the install command, not a silent skip.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{WAIT, http_get};

/// A running Prometheus.
pub struct Prometheus {
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on `port` and waits until it is ready.
    pub async fn start_on(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hostpulse-prometheus-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global: {}\nscrape_configs: []\n").expect("prometheus config");
        let log = std::fs::File::create(dir.join("log")).expect("prometheus log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus ({e}); the remote-write tests need a real one: \
                     `apt-get install -y prometheus`"
                )
            });
        let mut p = Self { port, child, dir };
        p.wait_ready().await;
        p
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait prometheus") {
                panic!("prometheus exited at start ({status}):\n{}", self.log());
            }
            if let Ok(Ok(stream)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(self.addr()),
            )
            .await
            {
                drop(stream);
                if http_get(self.addr(), "/-/ready").await.0 == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus on port {} not ready within {WAIT:?}:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The remote-write endpoint.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// `/api/v1/query` of `promql` at Unix time `at_secs`; the `data.result`
    /// list.
    pub async fn query(&self, promql: &str, at_secs: f64) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}&time={at_secs}", encode(promql));
        let (status, body) = http_get(self.addr(), &path).await;
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON answer");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The raw samples of the one series `selector` matches within the last
    /// `window` before `at_secs`, as (Unix ms, value).
    pub async fn samples(&self, selector: &str, window: &str, at_secs: f64) -> Vec<(i64, f64)> {
        let result = self.query(&format!("{selector}[{window}]"), at_secs).await;
        assert!(
            result.len() <= 1,
            "{selector} matches several series: {result:?}"
        );
        result
            .first()
            .and_then(|s| s["values"].as_array())
            .map(|values| {
                values
                    .iter()
                    .map(|p| {
                        let t = p[0].as_f64().expect("a time");
                        let v = p[1].as_str().expect("a value").parse().expect("a number");
                        ((t * 1000.0).round() as i64, v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
