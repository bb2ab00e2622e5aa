//! Keeping the store within its bounds: retention per tier, the disk bound
//! (`max_disk_bytes`), and the windows a restart left open (found as the
//! store opens, sealed by the writer over its first flushes, or once they
//! end). Runs on the writer's thread between flushes.
//!
//! Retention deletes whole sealed blocks once their window has ended more
//! than the tier's retention ago (so data lives up to one window longer:
//! 15 min raw, 1 day of minutes, 30 days of hours). Over `max_disk_bytes`,
//! the oldest window of the finest tier that still has sealed blocks goes
//! first, until the store is back under the bound: raw values are the bulk
//! and the rollups keep their shape, so long history survives a tight disk.

use std::sync::atomic::Ordering;

use super::checkpoint::Window;
use super::chunks::{self, Groups};
use super::codec::decode_chunk;
use super::config::StorageConfig;
use super::engine::{Engine, Op, Table, block_key, parse_block_key, parse_time_key, time_key};
use super::processes;
use super::stamps;
use super::tier::{Rows, Tier};
use super::writer::Writer;
use super::{StoreError, StoreStats};

/// Deletes per transaction while trimming.
const DELETE_BATCH: usize = 20_000;

/// The windows of open chunks a previous run left, as the store opens at
/// `now`: those that ended, for the writer to seal over its first flushes
/// ([`Writer::queue_seals`]) rather than before the store opens (after an
/// outage longer than a window every run's newest window has ended, and
/// sealing them all at open held up the start by about 0.2 ms a window,
/// minutes at fleet scale: BENCHMARKS.md); and each run's newest window
/// that has not ended, which its series resume into if their hosts come
/// back, and which the writer seals once it ends if they do not
/// ([`Writer::seal_when_ended`]).
pub fn leftover_windows(engine: &dyn Engine, now: i64) -> Result<Leftovers, StoreError> {
    let windows = chunks::windows(engine)?;
    let mut left = Leftovers::default();
    for (i, &(tier, run, w)) in windows.iter().enumerate() {
        // In key order: a run's windows of one tier, oldest first.
        let newest = windows
            .get(i + 1)
            .is_none_or(|&(t, r, _)| (t, r) != (tier, run));
        if newest && w + tier.window_ms() >= now {
            left.open.push((run, tier, w));
        } else {
            left.ended.push((run, tier, w));
        }
    }
    Ok(left)
}

/// The windows a previous run left open ([`leftover_windows`]).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Windows that have ended: to seal.
    pub ended: Vec<Window>,
    /// Each run's newest window, not ended yet.
    pub open: Vec<Window>,
}

/// Moves the open chunks a build before the groups left (one per series
/// and checkpoint, in `LegacyOpen`) into groups; returns how many.
pub fn migrate_open(engine: &dyn Engine) -> Result<usize, StoreError> {
    let mut moved = 0;
    loop {
        let mut groups = Groups::default();
        let mut ops = Vec::new();
        let mut failure = None;
        engine.scan(Table::LegacyOpen, &[], &[0xff; 14], &mut |k, v| {
            ops.push(Op::Delete(Table::LegacyOpen, k.to_vec()));
            if let Some((id, t, _)) = parse_block_key(k)
                && let Some(tier) = Tier::from_u8(t)
            {
                let mut rows = Rows::new(tier.cols());
                match decode_chunk(v, &mut rows) {
                    Ok(()) if !rows.is_empty() => {
                        groups.add(id, tier, tier.window_of(rows.ts[0]), &rows)
                    }
                    Ok(()) => {}
                    Err(e) => failure = Some(e),
                }
            }
            ops.len() < DELETE_BATCH
        })?;
        if let Some(e) = failure {
            tracing::warn!(cause = %e, "store: an unreadable open chunk of an older build was dropped");
        }
        if ops.is_empty() {
            return Ok(moved);
        }
        moved += ops.len();
        groups.write(engine, &mut ops)?;
        engine.apply(&ops)?;
    }
}

/// Deletes the sealed blocks of `tier` whose window started before `cutoff`
/// (at most `limit` windows when given), then the timestamp columns of
/// those windows ([`stamps`]); returns (blocks, bytes) deleted.
fn delete_before(
    engine: &dyn Engine,
    tier: Tier,
    cutoff: i64,
    limit: Option<usize>,
) -> Result<(u64, u64), StoreError> {
    let t = tier as u8;
    let mut victims = Vec::new();
    let mut windows = 0usize;
    let mut current = None;
    engine.scan(
        Table::ByTime,
        &time_key(t, 0, 0),
        &time_key(t, cutoff, 0),
        &mut |k, v| {
            let Some((_, w, id)) = parse_time_key(k) else {
                return true;
            };
            if current != Some(w) {
                if limit.is_some_and(|l| windows == l) {
                    return false;
                }
                windows += 1;
                current = Some(w);
            }
            let bytes = v.try_into().map_or(0, u32::from_be_bytes) as u64;
            victims.push((w, id, bytes));
            true
        },
    )?;
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for chunk in victims.chunks(DELETE_BATCH / 2) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for (w, id, b) in chunk {
            ops.push(Op::Delete(Table::Blocks, block_key(*id, t, *w).to_vec()));
            ops.push(Op::Delete(Table::ByTime, time_key(t, *w, *id).to_vec()));
            blocks += 1;
            bytes += b;
        }
        engine.apply(&ops)?;
    }
    // Then the timestamp columns those windows' blocks shared, and any a
    // deletion stopped before left.
    if let Some(last) = victims.iter().map(|v| v.0).max() {
        let mut ops = Vec::new();
        bytes += stamps::delete_through(engine, t, last, &mut ops)?;
        for chunk in ops.chunks(DELETE_BATCH) {
            engine.apply(chunk)?;
        }
    }
    Ok((blocks, bytes))
}

/// One maintenance pass at wall-clock time `now` (Unix ms).
pub fn run(
    writer: &mut Writer,
    config: &StorageConfig,
    stats: &StoreStats,
    now: i64,
) -> Result<(), StoreError> {
    // Retention and the disk bound act on sealed blocks only: the rows
    // since each series' last checkpoint wait for their turn.
    // Windows of quiet series close once they end (with a minute of slack
    // for late samples); their in-memory state goes after a day of silence.
    writer.seal_idle(now - 60_000)?;
    writer.forget_idle(now - 86_400_000);
    let engine = writer.engine().clone();
    for tier in Tier::ALL {
        let cutoff = now.saturating_sub(config.retention_ms(tier)) - tier.window_ms();
        let (blocks, bytes) = delete_before(engine.as_ref(), tier, cutoff.max(0), None)?;
        if blocks > 0 {
            stats.expired_blocks.fetch_add(blocks, Ordering::Relaxed);
            tracing::info!(
                tier = tier.name(),
                blocks,
                bytes,
                "store: retention deleted old blocks"
            );
        }
    }
    // Process tables are kept as long as minute rows.
    let cutoff = now.saturating_sub(config.retention_ms(Tier::Minute));
    let (minutes, bytes) = processes::delete_before(engine.as_ref(), cutoff.max(0), None)?;
    if minutes > 0 {
        tracing::info!(
            minutes,
            bytes,
            "store: retention deleted old process tables"
        );
    }
    if config.max_disk_bytes > 0 {
        evict(engine.as_ref(), config.max_disk_bytes, stats)?;
    }
    stats.measure(engine.as_ref())?;
    Ok(())
}

/// Deletes the process tables of the oldest day that has any.
fn oldest_process_day(engine: &dyn Engine) -> Result<(u64, u64), StoreError> {
    let mut first = None;
    engine.scan(Table::ProcsByTime, &[], &[0xff; 9], &mut |k, _| {
        if k.len() >= 8 {
            first = Some(i64::from_be_bytes(k[..8].try_into().expect("8 bytes")));
        }
        false
    })?;
    match first {
        Some(minute) => {
            let day_end = (minute.div_euclid(86_400_000) + 1) * 86_400_000;
            processes::delete_before(engine, day_end, None)
        }
        None => Ok((0, 0)),
    }
}

/// Deletes the oldest windows, finest tier first, until the store uses at
/// most `max` bytes.
fn evict(engine: &dyn Engine, max: u64, stats: &StoreStats) -> Result<(), StoreError> {
    let Some(mut used) = engine.used_bytes()? else {
        tracing::info!(
            max_disk_bytes = max,
            "store: bytes in use not counted yet; eviction waits for the count"
        );
        return Ok(());
    };
    let mut rounds = 0;
    while used > max && rounds < 10_000 {
        rounds += 1;
        let mut evicted = false;
        for tier in Tier::ALL {
            // Process tables go after raw values and before minute rows: a
            // day of the oldest minutes (every host) at a time.
            if tier == Tier::Minute {
                let (minutes, bytes) = oldest_process_day(engine)?;
                if minutes > 0 {
                    stats.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
                    tracing::warn!(
                        minutes,
                        bytes,
                        used,
                        max_disk_bytes = max,
                        "store: over max_disk_bytes, evicted the oldest day of process tables"
                    );
                    evicted = true;
                    break;
                }
            }
            let (blocks, bytes) = delete_before(engine, tier, i64::MAX, Some(1))?;
            if blocks > 0 {
                stats.evicted_blocks.fetch_add(blocks, Ordering::Relaxed);
                stats.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
                tracing::warn!(
                    tier = tier.name(),
                    blocks,
                    bytes,
                    used,
                    max_disk_bytes = max,
                    "store: over max_disk_bytes, evicted the oldest window"
                );
                evicted = true;
                break;
            }
        }
        if !evicted {
            tracing::warn!(
                used,
                max_disk_bytes = max,
                "store: over max_disk_bytes with nothing sealed left to evict"
            );
            return Ok(());
        }
        // Pages freed by a commit are reusable (and uncounted) after the next one.
        engine.apply(&[])?;
        used = engine.used_bytes()?.unwrap_or(used);
    }
    Ok(())
}
