//! Sending the fleet's data to systems outside hostpulse (`[export]`).
//!
//! - [`remote_write`]: Prometheus remote-write of every host series, so a
//!   distributed TSDB (Mimir, Thanos, VictoriaMetrics, Cortex, Prometheus)
//!   keeps the long-term data.

pub mod remote_write;

use serde::{Deserialize, Serialize};

pub use remote_write::RemoteWriteConfig;

/// `[export]` in `aggregator.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Prometheus remote-write (off without a `url`).
    pub remote_write: RemoteWriteConfig,
}
