//! `GET /api/v1/hosts/{host}/processes`: a host's process tables at the
//! 1-minute tier, from the embedded store ([`crate::store::processes`]).
//!
//! `?from=…&to=…` as for `/series` (RFC 3339 or Unix ms; default the last
//! hour). The answer lists each minute with a table: its start (Unix ms)
//! and the union of that minute's top processes with each one's highest CPU
//! and memory. At most `storage.max_points` minutes (400 beyond, naming the
//! limit). Same tokens as `/api/v1`: the grant must cover `hosts` and
//! `host.<host>.processes`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{TokenQuery, authorize, refuse};
use super::series::{store_off, time_range};
use crate::store::processes::{self, MinuteProcess};
use crate::topic::host_topic;

/// The query string.
#[derive(Debug, Default, Deserialize)]
pub struct ProcessesQuery {
    /// Access token.
    pub token: Option<String>,
    /// Start, RFC 3339 or Unix ms (inclusive).
    pub from: Option<String>,
    /// End, RFC 3339 or Unix ms (exclusive).
    pub to: Option<String>,
}

#[derive(Debug, Serialize)]
struct Minute {
    ts: i64,
    processes: Vec<MinuteProcess>,
}

#[derive(Debug, Serialize)]
struct Answer {
    host: String,
    from: i64,
    to: i64,
    minutes: Vec<Minute>,
}

/// The handler.
pub async fn processes(
    State(state): State<AppState>,
    Path(host): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ProcessesQuery>,
) -> Response {
    let token = TokenQuery {
        token: q.token.clone(),
        metrics: None,
    };
    let grant = match authorize(&state, &headers, &token) {
        Ok(g) => g,
        Err((status, message)) => return refuse(status, message),
    };
    let Some(store) = state.store.clone() else {
        return store_off();
    };
    let topic = host_topic(&host, "processes");
    if !grant.allows(&topic) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("token {:?} does not grant {topic}", grant.name),
        );
    }
    let (from, to) = match time_range(q.from.as_deref(), q.to.as_deref()) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let max = store.config.max_points;
    let minutes = ((to - from + 59_999) / 60_000) as usize;
    if minutes > max {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{minutes} minutes asked for, more than storage.max_points ({max}); ask for a shorter range"
            ),
        );
    }
    let engine = store.engine.clone();
    let host2 = host.clone();
    let read = tokio::task::spawn_blocking(move || {
        processes::read(engine.as_ref(), &host2, from, to, max)
    })
    .await;
    match read {
        Ok(Ok(tables)) => Json(Answer {
            host,
            from,
            to,
            minutes: tables
                .into_iter()
                .map(|(ts, processes)| Minute { ts, processes })
                .collect(),
        })
        .into_response(),
        Ok(Err(e)) => {
            tracing::error!(cause = %e, "store: process tables not read");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store could not be read".into(),
            )
        }
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "query task failed".into(),
        ),
    }
}
