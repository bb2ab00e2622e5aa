//! A JSON receiver for tests: an HTTP endpoint (`POST /hook` on a port the
//! kernel chooses) that keeps every JSON body sent to it, in order, for the
//! test to take within [`WAIT`] (alert webhooks, Alertmanager's
//! notifications).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::WAIT;

/// The receiver.
pub struct JsonHook {
    /// Its URL.
    pub url: String,
    bodies: mpsc::Receiver<Value>,
}

impl JsonHook {
    /// Listens on 127.0.0.1.
    pub async fn start() -> Self {
        let (tx, bodies) = mpsc::channel(1000);
        let app = axum::Router::new()
            .route(
                "/hook",
                post(
                    |State(tx): State<mpsc::Sender<Value>>, Json(v): Json<Value>| async move {
                        let _ = tx.send(v).await;
                    },
                ),
            )
            .with_state(tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, bodies }
    }

    /// The next body, within [`WAIT`]; `what` names it in the failure.
    pub async fn next_body(&mut self, what: &str) -> Value {
        tokio::time::timeout(WAIT, self.bodies.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .expect("receiver open")
    }

    /// Nothing more arrives within `quiet`.
    pub async fn silent_for(&mut self, quiet: Duration) {
        if let Ok(Some(v)) = tokio::time::timeout(quiet, self.bodies.recv()).await {
            panic!("unexpected call to {}: {v}", self.url);
        }
    }
}
