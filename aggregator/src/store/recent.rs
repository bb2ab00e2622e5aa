//! Rows flushed since the last checkpoint: on disk as the `log` table, in
//! memory as [`Recent`], where queries read them beside the tables (a
//! series' raw values there as (time, value) pairs: one block of memory
//! per series that each flush adds to, [`SeriesRecent`]).
//!
//! A flush writes the new rows of every series as one record of `log`, one
//! insert whatever the number of series, and adds them to [`Recent`]. Each
//! series is checkpointed once per `checkpoint_interval_ms`, one slice of
//! the series per flush ([`super::checkpoint`]): its rows move into the
//! open chunks (a chunk per series and tier, in groups per run of series,
//! [`super::chunks`]) and leave
//! [`Recent`]; a record is deleted once every slice has been checkpointed
//! since it was written, so the per-series inserts are paid once per
//! interval, not once per flush. After a crash, [`replay`] writes the rows
//! of the records left into the tables, skipping those a later checkpoint
//! wrote already, before the store is read or written.
//!
//! A record, keyed by the flush's number (u64 big endian, so the table is in
//! flush order), is `u32 series | u8 tier | u32 length | chunk`, repeated;
//! a chunk is [`codec::append_chunk`]'s.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::StoreError;
use super::checkpoint::{Deltas, seal, write_rows};
use super::chunks::{Groups, LastGroup, newest_from};
use super::codec::{self, CodecError};
use super::engine::{Engine, Op, Table};
use super::read::last_block_ts;
use super::tier::{Rows, Tier};
use super::writer::{RawPending, RollupPending, stored_next_id};

/// One series' rows since its last checkpoint: raw values as (time,
/// value) pairs, the one block of memory the writer adds to at every
/// flush; rollup rows, once a minute, column-wise.
#[derive(Debug)]
pub struct SeriesRecent {
    raw: Vec<(i64, f64)>,
    rollups: [Rows; 2],
}

impl SeriesRecent {
    fn new() -> Self {
        Self {
            raw: Vec::new(),
            rollups: [Rows::new(Tier::Minute.cols()), Rows::new(Tier::Hour.cols())],
        }
    }

    /// The rows of `tier`: rollup rows as they are, raw values copied into
    /// `scratch` (cleared first).
    pub(crate) fn rows<'a>(&'a self, tier: Tier, scratch: &'a mut Rows) -> &'a Rows {
        match tier {
            Tier::Raw => {
                scratch.clear();
                extend_with_pairs(scratch, &self.raw);
                scratch
            }
            Tier::Minute => &self.rollups[0],
            Tier::Hour => &self.rollups[1],
        }
    }
}

/// Appends raw (time, value) pairs to `rows` (one value column).
fn extend_with_pairs(rows: &mut Rows, pairs: &[(i64, f64)]) {
    rows.ts.extend(pairs.iter().map(|(t, _)| *t));
    rows.cols[0].extend(pairs.iter().map(|(_, v)| *v));
}

/// The rows flushed since the last checkpoint, by series id. Written only
/// by the writer's thread; queries take the read lock for one series.
#[derive(Debug, Default)]
pub struct Recent {
    rows: RwLock<Vec<Option<SeriesRecent>>>,
}

impl Recent {
    /// Appends the rows of `series` in `tier` with `from <= ts < to` to `into`.
    pub fn read(&self, series: u32, tier: Tier, from: i64, to: i64, into: &mut Rows) {
        let all = self.rows.read().unwrap_or_else(PoisonError::into_inner);
        let Some(Some(mine)) = all.get(series as usize) else {
            return;
        };
        if tier == Tier::Raw {
            let lo = mine.raw.partition_point(|(t, _)| *t < from);
            let hi = mine.raw.partition_point(|(t, _)| *t < to);
            extend_with_pairs(into, &mine.raw[lo..hi]);
            return;
        }
        let rows = &mine.rollups[tier as usize - 1];
        let lo = rows.ts.partition_point(|t| *t < from);
        let hi = rows.ts.partition_point(|t| *t < to);
        into.ts.extend_from_slice(&rows.ts[lo..hi]);
        for (col, c) in into.cols.iter_mut().zip(&rows.cols) {
            col.extend_from_slice(&c[lo..hi]);
        }
    }

    /// The write side, for the writer to move a flush's rows in once it
    /// committed (readers wait meanwhile).
    pub(crate) fn writer(&self) -> RecentWriter<'_> {
        RecentWriter(self.rows.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every series' rows, for the writer to checkpoint.
    pub(crate) fn all(&self) -> RwLockReadGuard<'_, Vec<Option<SeriesRecent>>> {
        self.rows.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the rows of `ids` (and their memory), after the checkpoint
    /// that wrote them committed.
    pub(crate) fn clear(&self, ids: &[u32]) {
        let mut all = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if let Some(rows) = all.get_mut(*id as usize) {
                *rows = None;
            }
        }
    }
}

/// [`Recent`] locked for writing.
pub(crate) struct RecentWriter<'a>(RwLockWriteGuard<'a, Vec<Option<SeriesRecent>>>);

impl RecentWriter<'_> {
    /// Moves one series' pending rows in (raw values, then minute and
    /// hour rows), leaving them empty; the series' first raw rows since
    /// its checkpoint reserve room for `flushes` flushes' worth (those
    /// until its next checkpoint), so that each series allocates once per
    /// rotation and holds no memory after.
    pub(super) fn add(
        &mut self,
        id: u32,
        raw: &mut RawPending,
        rollups: &mut [RollupPending; 2],
        flushes: usize,
    ) {
        let i = id as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        let mine = self.0[i].get_or_insert_with(SeriesRecent::new);
        if !raw.is_empty() {
            // Raw rows come with every flush; rollup rows once a minute.
            // A burst (a spool resent after an outage) reserves for no
            // more than the usual few rows a flush.
            if mine.raw.is_empty() {
                mine.raw.reserve(raw.len().min(RESERVE_ROWS_MAX) * flushes);
            }
            raw.append_pairs(&mut mine.raw);
            raw.clear();
        }
        for (to, from) in mine.rollups.iter_mut().zip(rollups.iter_mut()) {
            if !from.is_empty() {
                from.append_to(to);
                from.clear();
            }
        }
    }
}

/// Raw rows a flush counts for, at most, in the room a series reserves
/// until its checkpoint ([`RecentWriter::add`]'s `flushes`).
const RESERVE_ROWS_MAX: usize = 4;

/// Key of the log record of flush `seq`.
pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Appends the rows of `series` in `tier` to a log record.
pub fn append_entry(record: &mut Vec<u8>, series: u32, tier: Tier, rows: &Rows) {
    record.extend_from_slice(&series.to_be_bytes());
    record.push(tier as u8);
    let at = record.len();
    record.extend_from_slice(&[0; 4]);
    codec::append_chunk(rows, record);
    let len = (record.len() - at - 4) as u32;
    record[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Calls `visit(series, tier, rows)` for every entry of a log record.
pub fn parse_record(
    mut bytes: &[u8],
    mut visit: impl FnMut(u32, Tier, Rows),
) -> Result<(), CodecError> {
    while !bytes.is_empty() {
        if bytes.len() < 9 {
            return Err(CodecError::Corrupt("log entry header"));
        }
        let series = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
        let tier = Tier::from_u8(bytes[4]).ok_or(CodecError::Corrupt("log entry tier"))?;
        let len = u32::from_be_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize;
        let chunk = bytes
            .get(9..9 + len)
            .ok_or(CodecError::Corrupt("log entry length"))?;
        let mut rows = Rows::new(tier.cols());
        codec::decode_chunk(chunk, &mut rows)?;
        visit(series, tier, rows);
        bytes = &bytes[9 + len..];
    }
    Ok(())
}

/// Moves the rows of the log records a crash left into the per-series
/// tables and deletes the records, in one transaction; returns how many
/// records there were (none after a clean close).
pub fn replay(engine: &dyn Engine) -> Result<usize, StoreError> {
    let mut keys = Vec::new();
    let mut rows: BTreeMap<(u32, Tier), Rows> = BTreeMap::new();
    let mut failure = None;
    engine.scan(Table::Log, &[], &[0xff; 9], &mut |k, v| {
        keys.push(k.to_vec());
        let parsed = parse_record(v, |series, tier, r| {
            rows.entry((series, tier))
                .or_insert_with(|| Rows::new(tier.cols()))
                .extend(&r);
        });
        if let Err(e) = parsed {
            failure = Some(e);
        }
        true
    })?;
    if let Some(e) = failure {
        // Only a record that redb committed is read back, so this is damage
        // from outside; the entries before the damage are kept.
        tracing::warn!(cause = %e, "store: a log record did not decode to its end");
    }
    let records = keys.len();
    if records == 0 {
        return Ok(0);
    }
    // A crash between a record's write and its flush's commit leaves rows
    // of series created in that flush, whose names were not committed:
    // their ids are handed out again, so those rows go (the flush that
    // took them did not finish).
    let next_id = stored_next_id(engine)?;
    let unnamed = rows.split_off(&(next_id, Tier::Raw));
    if !unnamed.is_empty() {
        tracing::warn!(
            entries = unnamed.len(),
            "store: the log's rows of series created in the interrupted flush are dropped; their names were not written"
        );
    }
    let mut ops = Vec::new();
    let mut groups = Groups::default();
    let mut ended = Vec::new();
    let mut last_groups: [LastGroup; 3] = [None, None, None];
    for ((series, tier), mut r) in rows {
        r.sort_dedup();
        let open = newest_from(engine, series, tier, &mut last_groups[tier as usize])?;
        let last = open
            .map(|(_, ts)| ts)
            .max(last_block_ts(engine, series, tier)?);
        // A series checkpointed after a record was written has that
        // record's rows in its tables already: only later rows are new.
        if let Some(last) = last {
            let new = r.ts.partition_point(|t| *t <= last);
            if new == r.len() {
                continue;
            }
            if new > 0 {
                r.ts.drain(..new);
                r.cols.iter_mut().for_each(|c| {
                    c.drain(..new);
                });
            }
        }
        let mut disk = open.map(|(w, _)| w);
        write_rows(series, tier, &r, &mut disk, &mut groups, &mut ended);
    }
    groups.write(engine, &mut ops)?;
    ops.extend(keys.into_iter().map(|k| Op::Delete(Table::Log, k)));
    engine.apply(&ops)?;
    // Windows the replayed rows moved past, now that their chunks are in.
    ended.sort();
    ended.dedup();
    let mut seals = Vec::new();
    let mut deltas = Deltas::default();
    for (run, tier, w) in ended {
        seal(engine, run, tier, w, &mut deltas, &mut seals)?;
    }
    if !seals.is_empty() {
        engine.apply(&seals)?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_record_reads_back_entry_by_entry() {
        let mut raw = Rows::new(1);
        raw.push(1_000, &[1.5]);
        raw.push(2_000, &[2.5]);
        let mut minute = Rows::new(5);
        minute.push(0, &[1.0, 2.0, 3.0, 2.0, 2.0]);
        let mut record = Vec::new();
        append_entry(&mut record, 7, Tier::Raw, &raw);
        append_entry(&mut record, 9, Tier::Minute, &minute);
        let mut seen = Vec::new();
        parse_record(&record, |s, t, r| seen.push((s, t, r))).unwrap();
        assert_eq!(
            seen,
            [(7, Tier::Raw, raw), (9, Tier::Minute, minute.clone())]
        );
        assert!(parse_record(&record[..record.len() - 1], |_, _, _| {}).is_err());
    }

    #[test]
    fn recent_rows_are_read_by_range() {
        let recent = Recent::default();
        // More rows than a series holds inline, of each tier.
        let mut raw = RawPending::default();
        for t in 0..10 {
            raw.push(t * 1000, [t as f64]);
        }
        assert_eq!(raw.len(), 10);
        let mut rollups: [RollupPending; 2] = Default::default();
        rollups[0].push(0, [0.0, 9.0, 45.0, 10.0, 9.0]);
        rollups[0].push(60_000, [1.0, 2.0, 3.0, 2.0, 2.0]);
        recent.writer().add(3, &mut raw, &mut rollups, 1);
        assert!(raw.is_empty() && rollups[0].is_empty());
        let mut minute = Rows::new(5);
        recent.read(3, Tier::Minute, 0, 120_000, &mut minute);
        assert_eq!(minute.ts, [0, 60_000]);
        assert_eq!(minute.row(1).collect::<Vec<_>>(), [1.0, 2.0, 3.0, 2.0, 2.0]);
        let mut got = Rows::new(1);
        recent.read(3, Tier::Raw, 2_000, 5_000, &mut got);
        assert_eq!(got.ts, [2_000, 3_000, 4_000]);
        recent.read(4, Tier::Raw, 0, 10_000, &mut got);
        assert_eq!(got.len(), 3);
        recent.clear(&[3]);
        let mut none = Rows::new(1);
        recent.read(3, Tier::Raw, 0, 10_000, &mut none);
        assert!(none.is_empty());
    }
}
