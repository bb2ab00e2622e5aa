//! Agent configuration: `deploy/agent.toml` as data, then validation.
//!
//! Every key has a default, unknown keys are refused, and [`AgentConfig::load`]
//! reports the file, the key and the reason for anything it cannot accept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostpulse_proto::MAX_TOP_PROCESSES;
use serde::Deserialize;

pub use hostpulse_common::config::{ConfigError, read_bounded};

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Aggregator ingest address(es), `http://host:port`. With several, the
    /// agent tries them in order and moves to the next when one fails.
    pub aggregator: Aggregators,
    /// Stable identity of this agent; empty means the host name. Agents
    /// sharing one (clones of a machine image) are refused while another
    /// streams with it: give each its own (or `HOSTPULSE_AGENT_ID`).
    pub agent_id: String,
    /// Host name to report; empty means the system's host name.
    pub hostname: String,
    /// Token presented to the aggregator, in clear (prefer `token_file` or
    /// `token_env`, which keep the secret out of this file).
    pub token: Option<String>,
    /// File holding the token (surrounding white space ignored).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// PEM file of the CA that signed the aggregator's certificate; needed for
    /// `https://` aggregator addresses (the agent trusts nothing else).
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the aggregator's certificate, when it differs from
    /// the host in the address.
    pub tls_domain: Option<String>,
    /// Free-form labels sent with `Hello` (role, rack, ...).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Sampling interval in milliseconds (at least 10; CPU figures need 200+
    /// to be meaningful).
    pub interval_ms: u64,
    /// Most samples in one batch (within the aggregator's
    /// `max_samples_per_batch`, which it says on connect and which wins).
    pub batch_max_samples: usize,
    /// Batches are cut at about this many encoded bytes (a larger sample
    /// goes alone), within the aggregator's `max_message_bytes`, which it
    /// says on connect and which wins.
    pub batch_max_bytes: usize,
    /// Longest a sample waits to be batched with later ones, in milliseconds.
    /// 0 sends each sample as soon as it is taken (lowest latency); while the
    /// aggregator is unreachable samples are batched regardless.
    pub flush_interval_ms: u64,
    /// Bound of the spool of batches not yet acknowledged, in bytes; when full
    /// the oldest batches are dropped (counted and logged).
    pub spool_max_bytes: usize,
    /// Acknowledged samples kept in the spool after their ack, to resend to an
    /// aggregator that restarted or that this agent failed over to, so its
    /// history (and subscribers resuming with `since`) has no hole.
    pub retain_acked_samples: u64,
    /// First reconnect delay in milliseconds; doubles per failure, with jitter.
    pub reconnect_min_ms: u64,
    /// Cap of the reconnect delay in milliseconds.
    pub reconnect_max_ms: u64,
    /// How long a connection attempt (TCP + HTTP/2 + Welcome) may take, in ms.
    pub connect_timeout_ms: u64,
    /// HTTP/2 keepalive ping interval in milliseconds, so a dead aggregator is
    /// noticed within seconds rather than at the next TCP timeout.
    pub keepalive_interval_ms: u64,
    /// How long an unanswered keepalive ping is tolerated, in milliseconds.
    pub keepalive_timeout_ms: u64,
    /// On SIGTERM, how long to wait for pending batches to be acknowledged.
    pub drain_timeout_ms: u64,
    /// What to collect.
    pub collect: CollectConfig,
}

/// One address or a list of them.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(untagged)]
pub enum Aggregators {
    /// `aggregator = "http://..."`
    One(String),
    /// `aggregator = ["http://a", "http://b"]`
    Many(Vec<String>),
}

impl Aggregators {
    /// The addresses in order of preference.
    pub fn list(&self) -> Vec<String> {
        match self {
            Aggregators::One(a) => vec![a.clone()],
            Aggregators::Many(v) => v.clone(),
        }
    }
}

/// Which metric families the agent collects.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Total and per-core CPU usage.
    pub cpu: bool,
    /// Memory and swap.
    pub memory: bool,
    /// Load average.
    pub load: bool,
    /// Process count, top processes and the rollup of the rest.
    pub processes: bool,
    /// How many processes to list by CPU and by memory.
    pub top_processes: usize,
    /// Most of one core the process table may take, in percent: after a
    /// refresh that took `t`, the next waits `t / budget`. On a machine with a
    /// few hundred processes this refreshes with every sample.
    pub processes_budget_pct: f64,
    /// Per network interface: bytes, packets and errors per second in and out.
    pub network: bool,
    /// Per block device: bytes read and written per second.
    pub disk: bool,
    /// Per mounted filesystem: total, used and free bytes.
    pub filesystems: bool,
    /// Filesystem space changes slowly: collected once per this many seconds.
    pub filesystems_interval_secs: u64,
    /// Uptime, boot time, core counts and CPU frequency.
    pub system: bool,
    /// Collected once per this many seconds (the frequency can be dear to read).
    pub system_interval_secs: u64,
    /// Temperature sensors, where the host has any.
    pub temperatures: bool,
    /// Collected once per this many seconds.
    pub temperatures_interval_secs: u64,
    /// Where procfs is mounted. On Linux the `network` (`net/dev`) and
    /// `disk` (`mounts`, `diskstats`) families read their files under it:
    /// point it at the host's `/proc` mounted elsewhere when the agent runs
    /// in a container. The other families read `/proc` through sysinfo,
    /// which cannot be pointed elsewhere.
    pub proc_root: PathBuf,
    /// Where sysfs is mounted. On Linux the `temperatures` family reads
    /// `class/hwmon` (or `class/thermal`) under it.
    pub sys_root: PathBuf,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            cpu: true,
            memory: true,
            load: true,
            processes: true,
            top_processes: 10,
            processes_budget_pct: 1.0,
            network: true,
            disk: true,
            filesystems: true,
            filesystems_interval_secs: 30,
            system: true,
            system_interval_secs: 10,
            temperatures: true,
            temperatures_interval_secs: 10,
            proc_root: PathBuf::from(DEFAULT_PROC_ROOT),
            sys_root: PathBuf::from(DEFAULT_SYS_ROOT),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            aggregator: Aggregators::One("http://127.0.0.1:7070".into()),
            agent_id: String::new(),
            hostname: String::new(),
            token: None,
            token_file: None,
            ca_file: None,
            tls_domain: None,
            token_env: None,
            labels: Default::default(),
            interval_ms: 1000,
            batch_max_samples: 10,
            batch_max_bytes: 1 << 20,
            flush_interval_ms: 0,
            spool_max_bytes: 64 << 20,
            retain_acked_samples: 600,
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            connect_timeout_ms: 5_000,
            keepalive_interval_ms: 5_000,
            keepalive_timeout_ms: 5_000,
            drain_timeout_ms: 5_000,
            collect: CollectConfig::default(),
        }
    }
}

/// Where procfs is mounted unless `collect.proc_root` says otherwise.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// Where sysfs is mounted unless `collect.sys_root` says otherwise.
pub const DEFAULT_SYS_ROOT: &str = "/sys";

/// Accepted values of `batch_max_bytes`.
pub const BATCH_MAX_BYTES_RANGE: std::ops::RangeInclusive<usize> = (4 << 10)..=(64 << 20);

/// Shortest sampling interval accepted. Topic seqs are derived from the
/// run epoch in units of this interval, so it is also what keeps seqs rising
/// across agent restarts (see `collect::first_seq`).
pub const MIN_INTERVAL_MS: u64 = 10;

impl AgentConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = hostpulse_common::config::load(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses and validates TOML text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = hostpulse_common::config::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Refuses values that parse but cannot work.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::invalid(path, key, reason);
        let aggregators = self.aggregator.list();
        if aggregators.is_empty() {
            return Err(invalid(
                "aggregator",
                "at least one address is needed".into(),
            ));
        }
        for a in &aggregators {
            if !(a.starts_with("http://") || a.starts_with("https://")) {
                return Err(invalid(
                    "aggregator",
                    format!("{a:?} must start with http:// or https://"),
                ));
            }
            if a.parse::<tonic::transport::Uri>().is_err() {
                return Err(invalid("aggregator", format!("{a:?} is not a valid URI")));
            }
        }
        let sources = [
            self.token.is_some(),
            self.token_file.is_some(),
            self.token_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "token",
                "give at most one of token, token_file, token_env".into(),
            ));
        }
        self.resolve_token()
            .map_err(|reason| invalid("token", reason))?;
        if aggregators.iter().any(|a| a.starts_with("https://")) {
            match &self.ca_file {
                None => {
                    return Err(invalid(
                        "ca_file",
                        "an https:// aggregator needs ca_file, the CA to verify it against".into(),
                    ));
                }
                Some(path) => {
                    read_bounded(path, 1 << 20).map_err(|e| {
                        invalid("ca_file", format!("cannot read {}: {e}", path.display()))
                    })?;
                }
            }
        }
        if self.interval_ms < MIN_INTERVAL_MS {
            return Err(invalid(
                "interval_ms",
                format!(
                    "{} is below the minimum of {MIN_INTERVAL_MS}",
                    self.interval_ms
                ),
            ));
        }
        if self.batch_max_samples == 0 || self.batch_max_samples > 10_000 {
            return Err(invalid("batch_max_samples", "must be 1..=10000".into()));
        }
        if !(BATCH_MAX_BYTES_RANGE).contains(&self.batch_max_bytes) {
            return Err(invalid(
                "batch_max_bytes",
                format!(
                    "{} is outside {BATCH_MAX_BYTES_RANGE:?}",
                    self.batch_max_bytes
                ),
            ));
        }
        if self.spool_max_bytes < 64 << 10 {
            return Err(invalid("spool_max_bytes", "must be at least 65536".into()));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(invalid(
                "reconnect_min_ms",
                "must be positive and not above reconnect_max_ms".into(),
            ));
        }
        if !(self.collect.processes_budget_pct > 0.0 && self.collect.processes_budget_pct <= 100.0)
        {
            return Err(invalid(
                "collect.processes_budget_pct",
                "must be above 0 and at most 100".into(),
            ));
        }
        if self.collect.top_processes > MAX_TOP_PROCESSES {
            return Err(invalid(
                "collect.top_processes",
                format!(
                    "must be at most {MAX_TOP_PROCESSES} (the longest top list an aggregator accepts)"
                ),
            ));
        }
        for (key, v) in [
            (
                "collect.filesystems_interval_secs",
                self.collect.filesystems_interval_secs,
            ),
            (
                "collect.system_interval_secs",
                self.collect.system_interval_secs,
            ),
            (
                "collect.temperatures_interval_secs",
                self.collect.temperatures_interval_secs,
            ),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(invalid(key, format!("{v} is outside 1..=86400")));
            }
        }
        for (key, root) in [
            ("collect.proc_root", &self.collect.proc_root),
            ("collect.sys_root", &self.collect.sys_root),
        ] {
            if !root.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", root.display()),
                ));
            }
            // Other platforms have neither and never read them.
            if cfg!(target_os = "linux") && !root.is_dir() {
                return Err(invalid(
                    key,
                    format!("{} is not a readable directory", root.display()),
                ));
            }
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive".into()));
            }
        }
        Ok(())
    }

    /// The token to present, read from wherever the configuration says.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        if let Some(path) = &self.token_file {
            return read_bounded(path, 64 << 10)
                .map(|t| Some(String::from_utf8_lossy(&t).trim().to_string()))
                .map_err(|e| format!("cannot read token_file {}: {e}", path.display()));
        }
        if let Some(var) = &self.token_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} (token_env) is not set"));
        }
        Ok(None)
    }

    /// A copy fit to print: a clear-text token is replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        if c.token.is_some() {
            c.token = Some("<redacted>".into());
        }
        c
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The agent id to announce: `agent_id`, or the host name.
    pub fn effective_agent_id(&self, hostname: &str) -> String {
        if self.agent_id.is_empty() {
            hostname.to_string()
        } else {
            self.agent_id.clone()
        }
    }
}

#[cfg(test)]
mod tests;
