//! Aggregator configuration: `deploy/aggregator.toml` as data, then validation.
//!
//! Every key has a default, unknown keys are refused, and
//! [`AggregatorConfig::load`] names the file, the key and the reason for
//! anything it cannot accept. Nothing is bound before validation passes.
//!
//! Each section's struct, with its defaults and its own checks, lives in the
//! module it configures ([`IngestConfig`] in [`crate::ingest`], [`WsConfig`]
//! in [`crate::ws`], ...); this file composes them, loads the TOML, and checks
//! what spans sections. The section types are re-exported here.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::alert::AlertsConfig;
pub use crate::auth::AuthConfig;
pub use crate::cluster::ClusterConfig;
pub use crate::export::{ExportConfig, RemoteWriteConfig};
pub use crate::http::HttpConfig;
pub use crate::http::metrics::MetricsConfig;
pub use crate::hub::{HubConfig, RateLimitConfig};
pub use crate::ingest::IngestConfig;
pub use crate::store::StorageConfig;
pub use crate::tls::TlsConfig;
pub use crate::ws::{MAX_FRAME_BYTES, MIN_FRAME_BYTES, WsConfig};
pub use hostpulse_common::config::{ConfigError, read_bounded};

/// The whole aggregator configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// gRPC ingest from agents.
    pub ingest: IngestConfig,
    /// HTTP: WebSocket, health.
    pub http: HttpConfig,
    /// WebSocket sessions.
    pub ws: WsConfig,
    /// Topics and history.
    pub hub: HubConfig,
    /// Tokens for agents and clients.
    pub auth: AuthConfig,
    /// Certificate and key for TLS on both listeners.
    pub tls: TlsConfig,
    /// What `/metrics` exposes.
    pub metrics: MetricsConfig,
    /// Several aggregators sharing updates through NATS (off by default).
    pub cluster: ClusterConfig,
    /// The embedded store of history on disk (off without `dir`).
    pub storage: StorageConfig,
    /// Sending host series elsewhere: Prometheus remote-write (off
    /// without `[export.remote_write] url`).
    pub export: ExportConfig,
    /// Alert rules and where alerts go (off without `rules`).
    pub alerts: AlertsConfig,
}

impl AggregatorConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = hostpulse_common::config::load(path)?;
        // The rules file is named relative to this file.
        if let (Some(rules), Some(dir)) = (&config.alerts.rules, path.parent())
            && rules.is_relative()
        {
            config.alerts.rules = Some(dir.join(rules));
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Parses and validates TOML text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = hostpulse_common::config::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// A copy fit to print: clear-text tokens are replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for t in c
            .auth
            .agent_tokens
            .iter_mut()
            .chain(c.auth.client_tokens.iter_mut())
        {
            if t.token.is_some() {
                t.token = Some("<redacted>".into());
            }
        }
        c.cluster.nats_url = c.cluster.redacted_url();
        c.export.remote_write = c.export.remote_write.redacted();
        c
    }

    /// Refuses values that parse but cannot work: each section's own
    /// checks, then what spans sections.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::invalid(path, key, reason);
        let sections = [
            self.hub.problem(),
            self.ingest.problem(),
            self.ws.problem(),
            self.storage.problem(),
            self.alerts.problem(),
        ];
        if let Some((key, reason)) = sections.into_iter().flatten().next() {
            return Err(invalid(key, &reason));
        }
        crate::tls::Tls::load(&self.tls).map_err(|e| invalid("tls", &e.to_string()))?;
        crate::auth::Auth::from_config(&self.auth)
            .map_err(|e| ConfigError::invalid(path, e.key, e.reason))?;
        if let Some((key, reason)) = self.cluster.problem() {
            return Err(invalid(key, &reason));
        }
        if self.export.remote_write.enabled()
            && let Some((key, reason)) = self.export.remote_write.problem()
        {
            return Err(invalid(key, &reason));
        }
        // Named from here: an error says which config referred to the rules
        // file, then what is wrong in it.
        if let Some(rules) = &self.alerts.rules {
            crate::alert::rules::load(rules)
                .map_err(|e| invalid("alerts.rules", &e.to_string()))?;
        }
        if self.ingest.listen == self.http.listen && self.ingest.listen.port() != 0 {
            return Err(invalid(
                "http.listen",
                "must differ from ingest.listen (gRPC and HTTP use separate listeners)",
            ));
        }
        Ok(())
    }
}

/// Milliseconds to a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = AggregatorConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.hub.history_len, 600);
    }

    #[test]
    fn cluster_section_is_checked_and_its_password_redacted() {
        let e = AggregatorConfig::parse(
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`cluster.node`"), "{e}");
        let e = AggregatorConfig::parse("[cluster]\nnode_name = \"a\"\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let c = AggregatorConfig::parse(
            "[cluster]\nnats_url = \"nats://hp:secret@127.0.0.1:4222\"\nnode = \"agg-1\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(
            !shown.contains("secret") && shown.contains("hp:<redacted>@"),
            "{shown}"
        );
        assert!(!AggregatorConfig::default().cluster.enabled());
    }

    #[test]
    fn unknown_key_and_bad_value_are_named() {
        let e = AggregatorConfig::parse("[hub]\nhistory = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string().contains("x.toml") && e.to_string().contains("history"),
            "{e}"
        );
        let e =
            AggregatorConfig::parse("[hub]\nhistory_len = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("`hub.history_len`: must be positive"),
            "{e}"
        );
        let e = AggregatorConfig::parse("[http]\nlisten = \"nope\"\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn storage_is_off_without_a_dir_and_its_values_are_checked() {
        let c = AggregatorConfig::parse("", Path::new("x.toml")).unwrap();
        assert!(!c.storage.enabled());
        assert_eq!(c.storage.flush_interval_ms, 2000);
        let c =
            AggregatorConfig::parse("[storage]\ndir = \"/tmp/x\"\n", Path::new("x.toml")).unwrap();
        assert!(c.storage.enabled());
        assert_eq!(c.storage.raw_retention_hours, 48);
        for (bad, key) in [
            ("flush_interval_ms = 0", "`storage.flush_interval_ms`"),
            ("max_disk_bytes = 10", "`storage.max_disk_bytes`"),
            ("dir = \"\"", "`storage.dir`"),
            ("retention = 1", "retention"),
            ("writer_nice = 20", "`storage.writer_nice`"),
            (
                "overload_queue_fraction = 1.5",
                "`storage.overload_queue_fraction`",
            ),
            ("writer_nice = -1", "`storage.writer_nice`"),
            ("queue_bytes = 4294967296", "`storage.queue_bytes`"),
        ] {
            let e = AggregatorConfig::parse(&format!("[storage]\n{bad}\n"), Path::new("x.toml"))
                .unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn remote_write_is_off_without_a_url_and_checked_with_one() {
        let c = AggregatorConfig::parse("", Path::new("x.toml")).unwrap();
        assert!(!c.export.remote_write.enabled());
        let c = AggregatorConfig::parse(
            "[export.remote_write]\nurl = \"http://127.0.0.1:9090/api/v1/write\"\nbearer_token = \"secret\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(c.export.remote_write.enabled());
        assert!(!toml::to_string(&c.redacted()).unwrap().contains("secret"));
        let e = AggregatorConfig::parse(
            "[export.remote_write]\nurl = \"127.0.0.1:9090\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("x.toml") && e.to_string().contains("`export.remote_write.url`"),
            "{e}"
        );
        // The shipped config's commented-out section, uncommented, is valid.
        let shipped = include_str!("../../deploy/aggregator.toml");
        let block: String = shipped
            .lines()
            .skip_while(|l| *l != "# [export.remote_write]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(block.contains("batch_size = 2000"), "{block}");
        let c = AggregatorConfig::parse(&block, Path::new("aggregator.toml")).unwrap();
        assert_eq!(c.export.remote_write.queue, 10_000);
        let e = AggregatorConfig::parse("[export.remote_write]\nbatch = 5\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("batch"), "{e}");
    }

    #[test]
    fn frame_split_size_is_bounded_to_256_kib() {
        let c = AggregatorConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.ws.max_frame_bytes, 256 << 10);
        for bad in [0, 1023, (256 << 10) + 1] {
            let e = AggregatorConfig::parse(
                &format!("[ws]\nmax_frame_bytes = {bad}\n"),
                Path::new("x.toml"),
            )
            .unwrap_err();
            assert!(e.to_string().contains("`ws.max_frame_bytes`"), "{bad}: {e}");
        }
        let c =
            AggregatorConfig::parse("[ws]\nmax_frame_bytes = 1024\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.ws.max_frame_bytes, 1024);
    }
}
