//! Range queries: the points of one series between two times at a step,
//! each with min, max, avg and last.
//!
//! The step picks the tier: raw below 60 s, 1-minute rows from 60 s, 1-hour
//! rows from 1 h. Rows are folded into buckets of the step (aligned to the
//! Unix epoch), so a 10 s step rolls raw values up on the fly. Where the
//! chosen tier has no rows yet (the newest minute or hour, still open), the
//! next finer tier fills in, down to raw. Points are capped per series: the
//! caller checks [`points_for`] against `storage.max_points` first.

use super::StoreError;
use super::engine::Engine;
use super::read::{read_rows, series_id, series_name};
use super::recent::Recent;
use super::rollup::Agg;
use super::tier::Tier;

/// One point of a series.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Start of the step bucket, Unix ms.
    pub ts: i64,
    /// Smallest value in the bucket.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Average (sum / count of the values in the bucket).
    pub avg: f64,
    /// Latest value.
    pub last: f64,
    /// Values rolled into it.
    pub count: u64,
}

/// The tier a step reads.
pub fn tier_for(step_ms: i64) -> Tier {
    if step_ms < Tier::Minute.bucket_ms() {
        Tier::Raw
    } else if step_ms < Tier::Hour.bucket_ms() {
        Tier::Minute
    } else {
        Tier::Hour
    }
}

/// How many points a query of `[from, to)` at `step_ms` may return.
pub fn points_for(from: i64, to: i64, step_ms: i64) -> u64 {
    if to <= from || step_ms <= 0 {
        return 0;
    }
    let first = from.div_euclid(step_ms);
    let last = (to - 1).div_euclid(step_ms);
    (last - first + 1) as u64
}

/// Rows of `tier` and finer in `[from, to)`, as (time, rollup), in order:
/// the tier's own rows, then the finer tiers' rows after its newest.
fn gather(
    engine: &dyn Engine,
    recent: Option<&Recent>,
    id: u32,
    tier: Tier,
    from: i64,
    to: i64,
    out: &mut Vec<(i64, Agg)>,
) -> Result<(), StoreError> {
    let rows = read_rows(engine, recent, id, tier, from, to)?;
    let covered = match rows.ts.last() {
        Some(t) => t + tier.bucket_ms().max(1),
        None => from,
    };
    for (i, ts) in rows.ts.iter().enumerate() {
        out.push((*ts, Agg::from_row(&rows.cols, i)));
    }
    if covered < to
        && let Some(finer) = tier.finer()
    {
        gather(engine, recent, id, finer, covered, to, out)?;
    }
    Ok(())
}

/// The points of `field` of `host` in `[from, to)` at `step_ms`; empty when
/// the series was never written. `recent`: the writer's rows since its last
/// checkpoint ([`super::StoreView::recent`]); without it, what is in the
/// tables only.
pub fn series(
    engine: &dyn Engine,
    recent: Option<&Recent>,
    host: &str,
    field: &str,
    from: i64,
    to: i64,
    step_ms: i64,
) -> Result<Vec<Point>, StoreError> {
    let Some(id) = series_id(engine, &series_name(host, field))? else {
        return Ok(Vec::new());
    };
    // Whole buckets: a `from` inside a minute still gets that minute's row.
    let from = from.div_euclid(step_ms) * step_ms;
    let mut rows = Vec::new();
    gather(engine, recent, id, tier_for(step_ms), from, to, &mut rows)?;
    let mut points: Vec<(i64, Agg)> = Vec::new();
    for (ts, agg) in rows {
        let bucket = ts.div_euclid(step_ms) * step_ms;
        match points.last_mut() {
            Some((b, a)) if *b == bucket => a.merge(&agg),
            _ => points.push((bucket, agg)),
        }
    }
    Ok(points
        .into_iter()
        .map(|(ts, a)| Point {
            ts,
            min: a.min,
            max: a.max,
            avg: a.avg(),
            last: a.last,
            count: a.count as u64,
        })
        .collect())
}
