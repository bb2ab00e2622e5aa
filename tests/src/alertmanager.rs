//! A real Alertmanager (Debian `prometheus-alertmanager`) on a loopback
//! port, with gossip off, a temporary store and a route to a null
//! receiver (or to a test webhook, to see what it notifies); killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{WAIT, free_port, http_get};

/// The binary's name in Debian.
pub const BINARY: &str = "prometheus-alertmanager";

/// A running Alertmanager.
pub struct Alertmanager {
    /// Its HTTP address.
    pub addr: SocketAddr,
    child: Child,
}

const CONFIG: &str = "route:\n  receiver: 'null'\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: 'null'\n";

impl Alertmanager {
    /// Starts one on a free port and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` and waits until it is ready.
    pub async fn start_on(port: u16) -> Self {
        Self::start_with_config(port, CONFIG).await
    }

    /// Starts one on a free port whose route notifies `url` (a webhook
    /// receiver, resolved alerts included) of each change of its group,
    /// at most once a second.
    pub async fn start_notifying(url: &str) -> Self {
        let config = format!(
            "route:\n  receiver: 'hook'\n  group_by: ['alertname', 'host']\n  group_wait: 0s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: 'hook'\n    \
             webhook_configs:\n      - url: '{url}'\n        send_resolved: true\n"
        );
        Self::start_with_config(free_port(), &config).await
    }

    async fn start_with_config(port: u16, config: &str) -> Self {
        let config = crate::process::temp_file("alertmanager.yml", config);
        let storage = config.parent().expect("temp dir").join("data");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus-alertmanager (scripts/test-deps.sh installs it)");
        let am = Self { addr, child };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/-/ready").await.0 == 200
            {
                return am;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alertmanager on {addr} not ready within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The alerts it holds (`GET /api/v2/alerts`).
    pub async fn alerts(&self) -> Vec<Value> {
        let (status, body) = http_get(self.addr, "/api/v2/alerts").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("a JSON list")
    }

    /// Waits until `check` holds for its alerts; returns them.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let alerts = self.alerts().await;
            if check(&alerts) {
                return alerts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alertmanager {}: timed out waiting for {what}; holds {alerts:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
