//! `GET /api/v1/hosts/{host}/series`: history of a host's fields from the
//! embedded store.
//!
//! `?fields=cpu.total_pct,memory.used_bytes` (series names as in
//! [`crate::store::series`]; a labelled field with its label, e.g.
//! `filesystems.used_bytes{mount="/"}`, URL-encoded), `from` and `to` as
//! RFC 3339 or Unix milliseconds (default: the last hour), `step` as a
//! duration (`1s`, `10s`, `1m`, `1h`; default `1m`). The answer has, per
//! field, columns of the step buckets' start (Unix ms), min, max, avg, last
//! and count. Same tokens as the rest of `/api/v1`: the grant must cover
//! `hosts` and each field's topic (`host.<host>.<family>`). Refusals are
//! 400 (a bad parameter, an unknown field, too many points, naming the
//! limit and a step that fits), 401/403 (token) and 404 (storage off).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{TokenQuery, authorize, refuse};
use crate::store::query::{self, Point};
use crate::store::series::parse_field;
use crate::topic::host_topic;

/// The query string.
#[derive(Debug, Default, Deserialize)]
pub struct SeriesQuery {
    /// Access token.
    pub token: Option<String>,
    /// Comma-separated fields.
    pub fields: Option<String>,
    /// Start, RFC 3339 or Unix ms (inclusive).
    pub from: Option<String>,
    /// End, RFC 3339 or Unix ms (exclusive).
    pub to: Option<String>,
    /// Bucket width, e.g. `1s`, `1m`.
    pub step: Option<String>,
}

/// One field's points, column-wise.
#[derive(Debug, Serialize)]
struct SeriesOut {
    field: String,
    ts: Vec<i64>,
    min: Vec<f64>,
    max: Vec<f64>,
    avg: Vec<f64>,
    last: Vec<f64>,
    count: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct Answer {
    host: String,
    from: i64,
    to: i64,
    step_ms: i64,
    tier: &'static str,
    series: Vec<SeriesOut>,
}

fn bad(message: String) -> Response {
    refuse(StatusCode::BAD_REQUEST, message)
}

/// The answer when the store is off.
pub(super) fn store_off() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "history on disk is off: set [storage] dir in the aggregator's config".into(),
    )
}

/// `[from, to)` from the query (RFC 3339 or Unix ms; default the last hour
/// up to now); refused when empty.
pub(super) fn time_range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), String> {
    let to = match to {
        Some(v) => parse_time("to", v)?,
        None => crate::update::unix_ms_now(),
    };
    let from = match from {
        Some(v) => parse_time("from", v)?,
        None => to - 3_600_000,
    };
    if from >= to {
        return Err(format!("from ({from}) must be before to ({to})"));
    }
    Ok((from, to))
}

/// A time given as Unix ms or RFC 3339.
fn parse_time(name: &str, v: &str) -> Result<i64, String> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(v)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| {
            format!("{name}={v:?} is neither Unix milliseconds nor RFC 3339 (2026-11-30T12:00:00Z)")
        })
}

fn parse_step(v: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(v)
        .map_err(|_| format!("step={v:?} is not a duration (1s, 10s, 1m, 1h)"))?;
    let ms = d.as_millis();
    if ms < 1000 || ms % 1000 != 0 || ms > 366 * 86_400_000 {
        return Err(format!("step={v:?} must be whole seconds from 1s to 366d"));
    }
    Ok(ms as i64)
}

/// A step that keeps `[from, to)` within `max` points: a round one.
fn suggest(from: i64, to: i64, max: u64) -> &'static str {
    const STEPS: [(&str, i64); 9] = [
        ("10s", 10_000),
        ("1m", 60_000),
        ("5m", 300_000),
        ("15m", 900_000),
        ("1h", 3_600_000),
        ("6h", 21_600_000),
        ("1d", 86_400_000),
        ("7d", 604_800_000),
        ("30d", 2_592_000_000),
    ];
    STEPS
        .iter()
        .find(|(_, s)| query::points_for(from, to, *s) <= max)
        .map_or("a larger step", |(n, _)| n)
}

/// The handler.
pub async fn series(
    State(state): State<AppState>,
    Path(host): Path<String>,
    headers: HeaderMap,
    Query(q): Query<SeriesQuery>,
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
    let Some(fields) = q.fields.as_deref().filter(|f| !f.trim().is_empty()) else {
        return bad("fields= is required, e.g. fields=cpu.total_pct,memory.used_bytes".into());
    };
    let mut names = Vec::new();
    for f in split_fields(fields) {
        match parse_field(&f) {
            Ok(name) => names.push(name),
            Err(e) => return bad(e.to_string()),
        }
    }
    for name in &names {
        let family = name.split('.').next().unwrap_or_default();
        let topic = host_topic(&host, family);
        if !grant.allows(&topic) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("token {:?} does not grant {topic}", grant.name),
            );
        }
    }
    let (from, to) = match time_range(q.from.as_deref(), q.to.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let step = match parse_step(q.step.as_deref().unwrap_or("1m")) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let max = store.config.max_points as u64;
    let points = query::points_for(from, to, step);
    if points > max {
        return bad(format!(
            "{points} points per field at step {}s, more than storage.max_points ({max}); use a larger step, e.g. step={}",
            step / 1000,
            suggest(from, to, max)
        ));
    }
    let (engine, recent) = (store.engine.clone(), store.recent.clone());
    let host2 = host.clone();
    let read = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| {
                query::series(
                    engine.as_ref(),
                    Some(&recent),
                    &host2,
                    &name,
                    from,
                    to,
                    step,
                )
                .map(|points| columns(name, points))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match read {
        Ok(Ok(series)) => Json(Answer {
            host,
            from,
            to,
            step_ms: step,
            tier: query::tier_for(step).name(),
            series,
        })
        .into_response(),
        Ok(Err(e)) => {
            tracing::error!(cause = %e, "store: query failed");
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

/// Splits on commas outside `{...}` (a label value may hold a comma).
fn split_fields(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().filter(|f| !f.trim().is_empty()).collect()
}

fn columns(field: String, points: Vec<Point>) -> SeriesOut {
    SeriesOut {
        field,
        ts: points.iter().map(|p| p.ts).collect(),
        min: points.iter().map(|p| p.min).collect(),
        max: points.iter().map(|p| p.max).collect(),
        avg: points.iter().map(|p| p.avg).collect(),
        last: points.iter().map(|p| p.last).collect(),
        count: points.iter().map(|p| p.count).collect(),
    }
}
