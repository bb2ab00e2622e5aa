//! Reading one series back: its id, its rows of one tier in a time range
//! (sealed blocks, open chunks and the rows since the last checkpoint
//! merged), and its latest row. Used by queries, and by the writer when it
//! resumes a series after a restart or seals a window.

use super::StoreError;
use super::chunks::read_open;
use super::codec::{CodecError, decode_block_at};
use super::engine::{Engine, Table, block_key, parse_block_key};
use super::recent::Recent;
use super::stamps::{Blocks, Column};
use super::tier::{Rows, Tier};

/// Key of a series in the `series` table: `host \0 field`.
pub fn series_name(host: &str, field: &str) -> String {
    let mut s = String::with_capacity(host.len() + field.len() + 1);
    s.push_str(host);
    s.push('\0');
    s.push_str(field);
    s
}

/// The id of series `name`, if it was ever written.
pub fn series_id(engine: &dyn Engine, name: &str) -> Result<Option<u32>, StoreError> {
    Ok(engine
        .get(Table::Series, name.as_bytes())?
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_be_bytes))
}

/// Rows of `series` in `tier` with `from <= ts < to`, in time order: on
/// disk, and in `recent` when given (the writer reads what is on disk only,
/// after a checkpoint).
pub fn read_rows(
    engine: &dyn Engine,
    recent: Option<&Recent>,
    series: u32,
    tier: Tier,
    from: i64,
    to: i64,
) -> Result<Rows, StoreError> {
    let mut rows = Rows::new(tier.cols());
    if to <= from {
        return Ok(rows);
    }
    let t = tier as u8;
    let start = block_key(series, t, tier.window_of(from));
    let end = block_key(series, t, to);
    // Rows since the checkpoint first: one that lands on disk meanwhile is
    // then read from disk as well (and deduplicated), never missed.
    let mut newest = Rows::new(tier.cols());
    if let Some(recent) = recent {
        recent.read(series, tier, from, to, &mut newest);
    }
    // Then the open chunks, then the sealed blocks: a seal (chunks into a
    // block) that commits between the two scans leaves its rows in both
    // (deduplicated), never in neither.
    let mut open = Rows::new(tier.cols());
    read_open(engine, series, tier, from, to, &mut open)?;
    let mut blocks = Vec::new();
    engine.scan(Table::Blocks, &start, &end, &mut |k, v| {
        blocks.push((k.to_vec(), v.to_vec()));
        true
    })?;
    let mut reader = Blocks::new(engine);
    for (k, v) in blocks {
        match reader.column(&k, &v)? {
            None => rows.extend(&decode_block_at(&v, None)?),
            Some(Column { ts: Some(ts), .. }) => rows.extend(&decode_block_at(&v, Some(&ts))?),
            // Its column is gone: retention deleted its window after the
            // scan above (the block goes first), unless the block is still
            // there as it was read.
            Some(Column { ts: None, .. }) if still_there(engine, &k, &v)? => {
                return Err(CodecError::Corrupt("its shared timestamps are missing").into());
            }
            Some(Column { ts: None, .. }) => {}
        }
    }
    rows.extend(&open);
    rows.extend(&newest);
    rows.sort_dedup();
    let lo = rows.ts.partition_point(|t| *t < from);
    let hi = rows.ts.partition_point(|t| *t < to);
    if lo > 0 || hi < rows.len() {
        rows.ts = rows.ts[lo..hi].to_vec();
        for col in &mut rows.cols {
            *col = col[lo..hi].to_vec();
        }
    }
    Ok(rows)
}

/// Time of the latest row of `series` in `tier`'s sealed blocks, if any.
pub fn last_block_ts(
    engine: &dyn Engine,
    series: u32,
    tier: Tier,
) -> Result<Option<i64>, StoreError> {
    let t = tier as u8;
    let (start, end) = (block_key(series, t, 0), block_key(series, t, i64::MAX));
    let Some((k, v)) = engine.last(Table::Blocks, &start, &end)? else {
        return Ok(None);
    };
    let rows = Blocks::new(engine).decode(&k, &v)?;
    Ok(rows.ts.last().copied().or(parse_block_key(&k).map(|p| p.2)))
}

/// Whether `blocks` still holds `block` under `key` (not deleted, nor
/// replaced by a later seal of its window).
fn still_there(engine: &dyn Engine, key: &[u8], block: &[u8]) -> Result<bool, StoreError> {
    Ok(engine.get(Table::Blocks, key)?.is_some_and(|v| v == block))
}
