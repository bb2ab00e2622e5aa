//! `GET /api/v1/alerts`: what fires now and the latest transitions, newest
//! first, as JSON. The same tokens as the rest of `/api/v1`; the grant must
//! cover the `alerts` topic.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::api::{TokenQuery, authorize_for, refuse};

/// The handler.
pub async fn alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err((status, message)) = authorize_for(&state, &headers, &query, "alerts") {
        return refuse(status, message);
    }
    let (firing, history) = state.alerts.board.snapshot();
    Json(json!({
        "rules": state.alerts.engine.rules().len(),
        "firing": firing,
        "history": history,
    }))
    .into_response()
}
