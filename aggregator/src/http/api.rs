//! The REST snapshot: `GET /api/v1/hosts` and `GET /api/v1/hosts/{host}`.
//!
//! Every host known since start, its presence, when it was last seen, its
//! agent, and the latest update of each of its metrics, as JSON. The same
//! tokens as for WebSocket apply (`Authorization: Bearer` or `?token=`): host
//! details need a grant covering `hosts`, each metric a grant covering its
//! topic. `?metrics=cpu,memory` keeps only those metrics in `latest` (a fleet
//! view of thousands of hosts needs a few numbers each, not their process
//! lists). Each update goes out as the JSON it was published as, never
//! parsed into a tree and written again.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::AppState;
use crate::auth::{Grant, bearer};
use crate::ingest::registry::HostView;

/// `?token=` for clients that cannot set a header, and `?metrics=`.
#[derive(Debug, Default, Deserialize)]
pub struct TokenQuery {
    /// Access token.
    pub token: Option<String>,
    /// Comma-separated metrics to keep in `latest` (default: all).
    pub metrics: Option<String>,
}

/// One host in the snapshot.
#[derive(Debug, Serialize)]
struct HostSnapshot {
    #[serde(flatten)]
    view: HostView,
    /// Metric name → the latest update of `host.<host>.<metric>`.
    latest: BTreeMap<String, Box<RawValue>>,
}

/// A JSON error answer.
pub(super) fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The caller's grant, which must cover the `hosts` topic.
pub(super) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<Grant, (StatusCode, String)> {
    authorize_for(state, headers, query, "hosts")
}

/// The caller's grant, which must cover `topic`.
pub(super) fn authorize_for(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
    topic: &str,
) -> Result<Grant, (StatusCode, String)> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or(query.token.as_deref());
    let grant = match state.ws.auth.client(presented) {
        Ok(Some(g)) => g,
        Ok(None) => return Err((StatusCode::UNAUTHORIZED, "a token is required".into())),
        Err(e) => {
            return Err((
                StatusCode::UNAUTHORIZED,
                format!("client token refused: {e}"),
            ));
        }
    };
    if !grant.allows(topic) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("token {:?} does not grant the {topic} topic", grant.name),
        ));
    }
    Ok(grant)
}

async fn snapshot(
    state: &AppState,
    grant: &Grant,
    only: Option<&str>,
    metrics: Option<&str>,
) -> Vec<HostSnapshot> {
    let wanted: Option<Vec<&str>> = metrics.map(|m| m.split(',').map(str::trim).collect());
    let prefix = match only {
        Some(h) => format!("host.{h}."),
        None => "host.".into(),
    };
    let latest = state.ws.hub.latest(prefix).await;
    let mut by_host: BTreeMap<String, BTreeMap<String, Box<RawValue>>> = BTreeMap::new();
    for u in latest.iter().filter(|u| grant.allows(&u.topic)) {
        let mut parts = u.topic.splitn(3, '.');
        let (_, Some(host), Some(metric)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if wanted.as_ref().is_some_and(|w| !w.contains(&metric)) {
            continue;
        }
        if let Ok(v) = RawValue::from_string(u.json.to_string()) {
            by_host
                .entry(host.into())
                .or_default()
                .insert(metric.into(), v);
        }
    }
    state
        .registry
        .hosts()
        .into_iter()
        .filter(|h| only.is_none_or(|o| o == h.host))
        .map(|view| HostSnapshot {
            latest: by_host.remove(&view.host).unwrap_or_default(),
            view,
        })
        .collect()
}

/// `GET /api/v1/hosts`
pub async fn hosts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    match authorize(&state, &headers, &query) {
        Ok(grant) => {
            Json(snapshot(&state, &grant, None, query.metrics.as_deref()).await).into_response()
        }
        Err((status, message)) => refuse(status, message),
    }
}

/// `GET /api/v1/hosts/{host}`
pub async fn host(
    State(state): State<AppState>,
    Path(host): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    let grant = match authorize(&state, &headers, &query) {
        Ok(g) => g,
        Err((status, message)) => return refuse(status, message),
    };
    match snapshot(&state, &grant, Some(&host), query.metrics.as_deref())
        .await
        .into_iter()
        .next()
    {
        Some(h) => Json(h).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no host named {host:?}")),
    }
}
