//! The HTTP router: `/` (the dashboard), `/ws` (WebSocket), `/api/v1/hosts`
//! (REST snapshot), `/api/v1/hosts/{host}/series` and `…/processes`
//! (history and process tables from the store),
//! `/api/v1/alerts` (what fires and recent transitions),
//! `/metrics` and `/healthz`.

pub mod alerts;
pub mod api;
pub mod dashboard;
pub mod metrics;
pub mod processes;
pub mod series;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ingest::registry::Registry;
use crate::ws::{self, WsState};

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: SocketAddr,
    /// Serve the built-in web dashboard at `/`.
    pub dashboard: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7071).into(),
            dashboard: true,
        }
    }
}

/// Everything the HTTP handlers read.
#[derive(Clone)]
pub struct AppState {
    /// WebSocket endpoint state (hub handle, limits).
    pub ws: Arc<WsState>,
    /// Attached agents.
    pub registry: Arc<Registry>,
    /// `[metrics]` settings.
    pub metrics: metrics::MetricsConfig,
    /// Serve the embedded dashboard (`http.dashboard`).
    pub dashboard: bool,
    /// The broker link's state, in cluster mode.
    pub cluster: Option<Arc<crate::cluster::ClusterStats>>,
    /// The embedded store, when `[storage]` is on.
    pub store: Option<crate::store::StoreView>,
    /// The remote-write exporter's counters, when `[export.remote_write]` is on.
    pub remote_write: Option<Arc<crate::export::remote_write::RemoteWriteStats>>,
    /// Alert rules, what fires, and the receivers' counters.
    pub alerts: crate::alert::Alerting,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let router = if state.dashboard {
        Router::new()
            .route("/", get(dashboard::serve))
            .route("/index.html", get(dashboard::serve))
            .route("/assets/{*file}", get(dashboard::serve))
    } else {
        Router::new()
    };
    router
        .route("/ws", get(ws::handler).with_state(state.ws.clone()))
        .route("/api/v1/hosts", get(api::hosts).with_state(state.clone()))
        .route(
            "/api/v1/hosts/{host}",
            get(api::host).with_state(state.clone()),
        )
        .route(
            "/api/v1/hosts/{host}/series",
            get(series::series).with_state(state.clone()),
        )
        .route(
            "/api/v1/hosts/{host}/processes",
            get(processes::processes).with_state(state.clone()),
        )
        .route(
            "/api/v1/alerts",
            get(alerts::alerts).with_state(state.clone()),
        )
        .route("/metrics", get(metrics::metrics).with_state(state.clone()))
        .route("/healthz", get(healthz).with_state(state))
}

/// Liveness and a few counters, as JSON.
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let stats = &state.ws.hub.stats;
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "agents_connected": state.registry.connected(),
        "ws_connections": state.ws.connections.load(Ordering::Relaxed),
        "ws_refused": state.ws.refused.load(Ordering::Relaxed),
        "topics": stats.topics.load(Ordering::Relaxed),
        "subscriptions": stats.subscriptions.load(Ordering::Relaxed),
        "updates_published": stats.updates_published.load(Ordering::Relaxed),
        "deliveries": stats.deliveries.load(Ordering::Relaxed),
        "history_bytes": stats.history.bytes(),
        "history_updates": stats.history.entries(),
        "history_trimmed": stats.history.trimmed.load(Ordering::Relaxed),
        "held": stats.held.load(Ordering::Relaxed),
        "rate_limited": stats.rate_limited.load(Ordering::Relaxed),
        "lag_episodes": state.ws.outbox_stats.lag_episodes.load(Ordering::Relaxed),
        "conflated": state.ws.outbox_stats.conflated.load(Ordering::Relaxed),
        "lag_disconnects": state.ws.outbox_stats.lag_disconnects.load(Ordering::Relaxed),
        "peak_queue_bytes": state.ws.outbox_stats.peak_queue_bytes.load(Ordering::Relaxed),
        "cluster": state.cluster.as_ref().map(|c| json!({
            "nats_connected": c.connected.load(Ordering::Relaxed),
            "peers": c.peers.load(Ordering::Relaxed),
            "reconnects": c.reconnects.load(Ordering::Relaxed),
        })),
    }))
}
