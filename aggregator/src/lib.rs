//! hostpulse aggregator: takes agent streams over gRPC, turns samples into
//! topic updates, keeps a short history and fans updates out to WebSocket
//! subscribers.
//!
//! # Layout
//! The architecture, one directory per part:
//! - [`ingest`]: agents in. The tonic `Ingest` service, one task per agent
//!   stream ([`ingest::registry`]: attached agents, duplicates, presence;
//!   [`ingest::forget`]: forgetting hosts departed for `hub.forget_after`).
//! - [`hub`]: the single task owning topics and live routing by subscription
//!   groups (`hub/routing.rs`), publishing into connections' outboxes.
//! - [`history`]: per-topic history, compact and read concurrently, for
//!   resume and replay.
//! - [`ws`]: clients out. The `/ws` upgrade and admission, one session task
//!   per connection, its [`ws::outbox`], frames, [`ws::encoding`]s, protocol
//!   and replay.
//! - [`http`]: the router and its state, the REST snapshot
//!   ([`http::api`]), Prometheus `/metrics` ([`http::metrics`]) and the
//!   embedded dashboard.
//! - [`cluster`]: sharing updates and presence with other aggregators
//!   through NATS (`[cluster]`, off by default).
//! - [`export`]: the fleet's host series sent out: Prometheus remote-write
//!   (`[export.remote_write]`, off by default), fed by the hub through a
//!   bounded queue it never waits on.
//! - [`alert`]: alert rules evaluated on each sample as ingest accepts it,
//!   delivered to Alertmanager and webhooks, shown on the `alerts` topic
//!   and `/api/v1/alerts` (`[alerts]`, off without a rules file).
//! - [`store`]: the embedded store under history: every numeric field on
//!   disk in per-second, 1-minute and 1-hour tiers (`[storage]`, on in the
//!   shipped config), fed by ingest through a bounded queue, read by
//!   `/api/v1/hosts/{host}/series`.
//!
//! Small things several parts share stay at the top: [`update`] (an update,
//! its wire forms encoded once, and the `hosts` payload), [`topic`] (names,
//! host sanitising, patterns), [`auth`] (tokens and grants, for agents and
//! clients alike), [`tls`] (both listeners), [`limit`] (the token bucket of
//! ingest and ws), [`host_series`] (the table turning host updates into
//! Prometheus series, for `/metrics` and remote-write alike). [`config`] composes the sections each module owns
//! (`ingest::IngestConfig`, `hub::HubConfig`, `ws::WsConfig`,
//! `http::HttpConfig`, `cluster::ClusterConfig`, ...), loads the TOML and
//! validates.
//!
//! # Dependency order
//! Each uses only what is listed before it (no circles):
//! 1. `topic`, `limit`, `tls`, `ws::encoding`, `host_series`: nothing of the crate.
//! 2. `auth`: topic. `update`: `ws::encoding`.
//! 3. `history`, `ws::outbox`: update, `ws::encoding`. `store`: update
//!    (its clock) and the proto types only. (`ws::encoding` and `ws::outbox` are
//!    leaves the lower layers use: the encodings of an update, and the queue
//!    the hub pushes into and the session drains.)
//! 4. `hub`: auth, topic, update, history, `ws::outbox`.
//! 5. `alert`: hub, update, store (field names). `ingest`: hub, auth,
//!    topic, update, limit, store, alert.
//! 6. `ws` (upgrade, session, frames, protocol, replay): hub, auth, topic,
//!    update, limit.
//! 7. `cluster`: hub, `ingest::registry`, update. `export`: update,
//!    `host_series`.
//! 8. `http`: ws, hub, `ingest::registry`, cluster, store, export, alert, auth, topic, update; its
//!    children (`api`, `metrics`, `dashboard`) reach its state through `super`.
//! 9. `config`: every section's config type, auth and tls (to check them).
//! 10. [`run`] (this file, with `threads.rs`, its runtimes, and
//!     `restart.rs`, history kept in the store across a restart): everything.
//!
//! [`run`] takes bound listeners, so callers (and tests) choose the ports.

pub mod alert;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod export;
pub mod history;
pub mod host_series;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod limit;
pub mod store;
pub mod tls;
pub mod topic;
pub mod update;
pub mod ws;

mod restart;
mod threads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use hostpulse_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;

pub use config::AggregatorConfig;

use crate::config::ms;
use crate::ingest::registry::Registry;
use crate::ingest::{IngestService, IngestSettings};
use restart::{restore_history, save_history};
pub use threads::{CLIENT_NICE, lower_priority};
use threads::{LiveRuntime, live_threads};

/// How long shutdown may take before remaining connections are dropped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The two listeners the aggregator serves.
pub struct Listeners {
    /// gRPC ingest from agents.
    pub ingest: TcpListener,
    /// HTTP and WebSocket.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub async fn bind(config: &AggregatorConfig) -> std::io::Result<Self> {
        Ok(Self {
            ingest: TcpListener::bind(config.ingest.listen).await?,
            http: TcpListener::bind(config.http.listen).await?,
        })
    }
}

/// Why the aggregator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gRPC server failed.
    #[error("gRPC ingest server: {0}")]
    Ingest(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    /// A token could not be resolved.
    #[error("auth: {0}")]
    Auth(#[from] auth::AuthConfigError),
    /// The certificate or key could not be used.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// Cluster mode could not start.
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    /// The store could not be opened.
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    /// Remote-write export could not start.
    #[error("export.remote_write: {0}")]
    Export(String),
    /// The alert rules could not be read.
    #[error("alerts: {0}")]
    Alerts(#[from] config::ConfigError),
    /// The live path's threads could not start, or its server task failed.
    #[error("ingest runtime: {0}")]
    Live(String),
}

/// Serves until `shutdown` fires, then drains: WebSocket clients get close
/// 1001, agent streams end with `UNAVAILABLE` (agents reconnect), and the
/// call returns within [`DRAIN_TIMEOUT`].
pub async fn run(
    config: AggregatorConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let ingest_addr = listeners.ingest.local_addr()?;
    let store = match config.storage.enabled() {
        true => {
            let storage = config.storage.clone();
            Some(
                tokio::task::spawn_blocking(move || store::Store::open(&storage))
                    .await
                    .map_err(|e| RunError::Live(e.to_string()))??,
            )
        }
        false => None,
    };
    let http_addr = listeners.http.local_addr()?;
    let (export_tx, export_rx) = match config.cluster.enabled() {
        true => {
            let (tx, rx) = cluster::export_queue(&config.cluster);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let remote_write = match config.export.remote_write.enabled() {
        true => {
            let settings = config
                .export
                .remote_write
                .settings()
                .map_err(|(key, reason)| RunError::Export(format!("{key}: {reason}")))?;
            let (tx, queue, stats) = export::remote_write::queue(&settings);
            Some((settings, tx, queue, stats))
        }
        false => None,
    };
    // The live path (agents' streams and the hub) runs on threads of its
    // own: however much WebSocket work there is (replays, handshakes, slow
    // clients), it never waits behind it, and the operating system shares
    // the cores between the two (favouring the live path when the binary's
    // client threads call `lower_priority`).
    let live = LiveRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(live_threads())
            .thread_name("hostpulse-live")
            .enable_all()
            .build()
            .map_err(|e| RunError::Live(e.to_string()))?,
    ));
    let live_enter = live.enter();
    let (hub, hub_task) = hub::spawn(hub::HubSettings {
        history_len: config.hub.history_len,
        history_max_bytes: config.hub.history_max_bytes,
        queue: config.hub.queue,
        queue_bytes: config.hub.queue_max_bytes,
        rate_limits: config
            .hub
            .rate_limit
            .iter()
            .map(|r| hub::RateLimit {
                pattern: r.topic.clone(),
                min_interval: ms(r.min_interval_ms),
            })
            .collect(),
        export: export_tx,
        store: store.as_ref().map(store::Store::handle),
        remote_write: remote_write.as_ref().map(|(_, tx, _, _)| tx.clone()),
    });
    let ingest_listener = listeners
        .ingest
        .into_std()
        .and_then(TcpListener::from_std)?;
    drop(live_enter);
    if let Some(store) = &store {
        restore_history(store, &hub).await?;
    }
    // Asked for its history at shutdown, for the store to keep.
    let hub_at_shutdown = store.as_ref().map(|_| hub.clone());
    // Connection tasks that outlive their server's own graceful shutdown.
    let tasks = TaskTracker::new();
    let auth = Arc::new(auth::Auth::from_config(&config.auth)?);
    let tls = tls::Tls::load(&config.tls)?;
    let registry = Arc::new(Registry::with_node(
        config
            .cluster
            .enabled()
            .then(|| config.cluster.node.clone()),
    ));
    let cluster = match export_rx {
        Some(export) => Some(
            cluster::start(
                &config.cluster,
                hub.clone(),
                registry.clone(),
                export,
                shutdown.clone(),
                &tasks,
            )
            .await?,
        ),
        None => None,
    };

    let remote_write = match remote_write {
        Some((settings, _, queue, stats)) => {
            export::remote_write::start(settings, queue, stats.clone(), shutdown.clone(), &tasks)
                .map_err(RunError::Export)?;
            Some(stats)
        }
        None => None,
    };
    let rules = match &config.alerts.rules {
        Some(path) => alert::rules::load(path)?,
        None => Vec::new(),
    };
    let alerting = alert::start(
        &config.alerts,
        rules,
        hub.clone(),
        {
            let registry = registry.clone();
            Box::new(move || registry.online_elsewhere())
        },
        http_addr,
        shutdown.clone(),
        &tasks,
    );

    tasks.spawn(ingest::forget::run(
        hub.clone(),
        registry.clone(),
        alerting.engine.clone(),
        ms(config.hub.forget_after_ms),
        shutdown.clone(),
    ));

    let service = IngestService::new(
        hub.clone(),
        registry.clone(),
        IngestSettings {
            max_message_bytes: config.ingest.max_message_bytes,
            max_samples_per_batch: config.ingest.max_samples_per_batch,
            hello_timeout: ms(config.ingest.hello_timeout_ms),
            offline_after: ms(config.ingest.offline_after_ms),
            overload: Arc::new(ingest::Overload::new(
                ms(config.ingest.overload_interval_ms),
                config.ingest.overload_queue_fraction,
                ms(config.ingest.overload_after_ms),
            )),
            max_batches_per_sec: config.ingest.max_batches_per_sec,
            max_future: ms(config.ingest.max_future_ms),
        },
        store.as_ref().map(store::Store::handle),
        alerting.engine.clone(),
        shutdown.clone(),
        tasks.clone(),
    );
    let mut grpc_server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        grpc_server = grpc_server.tls_config(tls.grpc())?;
    }
    let grpc = live.spawn(
        grpc_server
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(ms(config.ingest.keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(ms(config.ingest.keepalive_timeout_ms)))
            .add_service(InterceptedService::new(
                IngestServer::new(service)
                    .max_decoding_message_size(config.ingest.max_message_bytes)
                    // Agents send gzip; the replies (Welcome, acks) are a
                    // few bytes, which gzip would only make longer and cost
                    // a compressor each.
                    .accept_compressed(CompressionEncoding::Gzip),
                ingest::authenticate(auth.clone()),
            ))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(ingest_listener),
                shutdown.clone().cancelled_owned(),
            ),
    );

    let ws_state = ws::WsState::new(
        hub.clone(),
        config.ws.clone(),
        shutdown.clone(),
        tasks.clone(),
        auth,
    );
    let app = http::router(http::AppState {
        ws: ws_state,
        registry,
        metrics: config.metrics.clone(),
        dashboard: config.http.dashboard,
        cluster,
        store: store.as_ref().map(store::Store::view),
        remote_write,
        alerts: alerting,
    });
    let web = async {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone().cancelled_owned();
        match &tls {
            Some(tls) => {
                // `tap_io` gives the listener axum's connect-info plumbing.
                let listener = tls
                    .listener(listeners.http, shutdown.clone())
                    .tap_io(|_| {});
                axum::serve(listener, service)
                    .with_graceful_shutdown(stop)
                    .await
            }
            None => {
                // Updates are small and latency matters more than packet
                // count: no Nagle.
                let listener = listeners.http.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
                    }
                });
                axum::serve(listener, service)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
    };

    tracing::info!(%ingest_addr, %http_addr, tls = tls.is_some(), "aggregator listening");
    drop(hub);
    let served = async {
        let (g, w) = tokio::join!(grpc, web);
        g.map_err(|e| RunError::Live(e.to_string()))??;
        w?;
        Ok::<(), RunError>(())
    };
    let drained = async {
        served.await?;
        tasks.close();
        tasks.wait().await;
        Ok::<(), RunError>(())
    };
    tokio::pin!(drained);
    tokio::select! {
        r = &mut drained => r?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!("drain timeout; dropping remaining connections");
        }
    }
    if let (Some(store), Some(hub)) = (&store, hub_at_shutdown) {
        save_history(store, &hub).await;
    }
    hub_task.abort();
    drop(live);
    if let Some(store) = store {
        // The last flush, then the clean-shutdown marker.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
    tracing::info!("aggregator stopped");
    Ok(())
}

pub use hostpulse_common::signal::shutdown_on_signal;
