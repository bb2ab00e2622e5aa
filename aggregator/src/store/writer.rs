//! The writer: owns every series' in-memory state, turns samples into raw
//! rows and rollup rows, and writes them in one transaction per flush.
//!
//! Per series it holds the rows not yet flushed (per tier), the open minute
//! and hour being rolled up, and the window its open chunks on disk belong
//! to. A flush writes each series' new rows as one open chunk per tier; when
//! a tier's rows move into a new window, the old window's chunks are merged
//! and compressed into one sealed block in that same transaction. A minute
//! row is written when the first value of the next minute arrives (likewise
//! hours), flushed with that value, so what is on disk is always consistent:
//! after a crash, the open minute and hour are rebuilt from the raw rows and
//! minute rows on disk ([`Writer::resume`]).
//!
//! Runs on the store's own thread (see `mod.rs`); nothing here is async.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hostpulse_proto::Sample;

use super::codec::{decode_block, decode_chunk, encode_block, encode_chunk};
use super::engine::{Engine, Op, Table, block_key, time_key};
use super::processes::{self, OpenMinute};
use super::read::{last_ts, open_window, read_rows, series_id, series_name};
use super::rollup::{Agg, Open, fold, fold_agg};
use super::series::for_each_value;
use super::tier::{Rows, Tier};
use super::{StoreError, StoreStats};

/// Key in `series` holding the next id to hand out.
pub const NEXT_ID_KEY: &[u8] = b"\xffnext";

/// One series' state in the writer.
#[derive(Debug)]
struct SeriesState {
    /// Newest raw value's time: older values are late and dropped.
    last_ts: i64,
    minute: Option<Open>,
    hour: Option<Open>,
    /// Rows not yet flushed, per tier.
    pending: [Rows; 3],
    /// Window of the open chunks on disk, per tier.
    disk_window: [Option<i64>; 3],
}

/// The writer's state.
pub struct Writer {
    engine: Arc<dyn Engine>,
    stats: Arc<StoreStats>,
    ids: HashMap<String, u32>,
    next_id: u32,
    /// Series names created since the last flush.
    new_names: Vec<(String, u32)>,
    series: HashMap<u32, SeriesState>,
    /// Series with rows pending.
    dirty: Vec<u32>,
    /// Each host's open minute of process tables.
    procs: HashMap<String, OpenMinute>,
    /// Hosts whose process tables were written since start (a first write
    /// merges with what is on disk).
    procs_written: HashSet<String>,
    /// Finished minutes' process tables, written at the next flush.
    proc_ops: Vec<Op>,
}

impl Writer {
    /// A writer over `engine`.
    pub fn new(engine: Arc<dyn Engine>, stats: Arc<StoreStats>) -> Result<Self, StoreError> {
        let mut next_id = 0u32;
        engine.scan(Table::Series, NEXT_ID_KEY, b"\xff\xff", &mut |k, v| {
            if k == NEXT_ID_KEY && v.len() == 4 {
                next_id = u32::from_be_bytes(v.try_into().expect("4 bytes"));
            }
            false
        })?;
        Ok(Self {
            engine,
            stats,
            ids: HashMap::new(),
            next_id,
            new_names: Vec::new(),
            series: HashMap::new(),
            dirty: Vec::new(),
            procs: HashMap::new(),
            procs_written: HashSet::new(),
            proc_ops: Vec::new(),
        })
    }

    /// The engine written to.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Takes one sample of `host`.
    pub fn ingest(&mut self, host: &str, sample: &Sample) -> Result<(), StoreError> {
        let ts = sample.timestamp_ms;
        let mut values: Vec<(String, f64)> = Vec::with_capacity(64);
        for_each_value(sample, |field, v| {
            values.push((series_name(host, field), v))
        });
        for (name, v) in values {
            let id = self.id_of(name)?;
            self.add(id, ts, v)?;
        }
        if let Some(p) = &sample.processes
            && !(p.top_cpu.is_empty() && p.top_memory.is_empty())
        {
            self.fold_processes(host, ts, p)?;
        }
        Ok(())
    }

    /// Folds a sample's top processes into its host's open minute; a
    /// sample of a later minute writes the open one first.
    fn fold_processes(
        &mut self,
        host: &str,
        ts: i64,
        p: &hostpulse_proto::Processes,
    ) -> Result<(), StoreError> {
        let minute = ts.div_euclid(60_000) * 60_000;
        let open = match self.procs.get_mut(host) {
            Some(open) => open,
            None => self
                .procs
                .entry(host.to_string())
                .or_insert(OpenMinute::new(minute)),
        };
        if minute < open.minute {
            return Ok(()); // late: its minute is written already
        }
        if minute > open.minute {
            let done = std::mem::replace(open, OpenMinute::new(minute));
            let merge = self.procs_written.insert(host.to_string());
            processes::write(self.engine.as_ref(), host, done, merge, &mut self.proc_ops)?;
        }
        if let Some(open) = self.procs.get_mut(host) {
            open.fold(p);
        }
        Ok(())
    }

    /// Writes every host's open minute of process tables at the next flush
    /// (the store is closing).
    pub fn close_minutes(&mut self) -> Result<(), StoreError> {
        for (host, open) in std::mem::take(&mut self.procs) {
            let merge = self.procs_written.insert(host.clone());
            processes::write(self.engine.as_ref(), &host, open, merge, &mut self.proc_ops)?;
        }
        Ok(())
    }

    fn id_of(&mut self, name: String) -> Result<u32, StoreError> {
        if let Some(id) = self.ids.get(&name) {
            return Ok(*id);
        }
        let id = match series_id(self.engine.as_ref(), &name)? {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id = self
                    .next_id
                    .checked_add(1)
                    .ok_or(StoreError::Engine("series ids exhausted".into()))?;
                self.new_names.push((name.clone(), id));
                id
            }
        };
        self.ids.insert(name, id);
        Ok(id)
    }

    fn add(&mut self, id: u32, ts: i64, v: f64) -> Result<(), StoreError> {
        let state = match self.series.entry(id) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(e) => e.insert(Self::resume(self.engine.as_ref(), id)?),
        };
        if ts <= state.last_ts {
            self.stats.late.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if state.pending.iter().all(Rows::is_empty) {
            self.dirty.push(id);
        }
        state.last_ts = ts;
        state.pending[Tier::Raw as usize].push(ts, &[v]);
        if let Some(minute) = fold(&mut state.minute, Tier::Minute, ts, v) {
            state.pending[Tier::Minute as usize].push(minute.bucket, &minute.agg.cols());
            if let Some(hour) = fold_agg(&mut state.hour, Tier::Hour, minute.bucket, &minute.agg) {
                state.pending[Tier::Hour as usize].push(hour.bucket, &hour.agg.cols());
            }
        }
        Ok(())
    }

    /// A series' state from what is on disk: its newest raw time, the open
    /// minute rebuilt from the raw rows after the last minute row, and the
    /// open hour from the minute rows after the last hour row.
    fn resume(engine: &dyn Engine, id: u32) -> Result<SeriesState, StoreError> {
        let mut state = SeriesState {
            last_ts: i64::MIN,
            minute: None,
            hour: None,
            pending: [Rows::new(1), Rows::new(5), Rows::new(5)],
            disk_window: [None; 3],
        };
        for tier in Tier::ALL {
            state.disk_window[tier as usize] = open_window(engine, id, tier)?;
        }
        let Some(last_raw) = last_ts(engine, id, Tier::Raw)? else {
            return Ok(state);
        };
        state.last_ts = last_raw;
        let after = |tier: Tier| -> Result<i64, StoreError> {
            let open_bucket = last_raw.div_euclid(tier.bucket_ms()) * tier.bucket_ms();
            let done = last_ts(engine, id, tier)?.map_or(i64::MIN, |t| t + tier.bucket_ms());
            Ok(open_bucket.max(done))
        };
        let raw = read_rows(engine, id, Tier::Raw, after(Tier::Minute)?, i64::MAX)?;
        for (i, ts) in raw.ts.iter().enumerate() {
            fold(&mut state.minute, Tier::Minute, *ts, raw.cols[0][i]);
        }
        let minutes = read_rows(engine, id, Tier::Minute, after(Tier::Hour)?, i64::MAX)?;
        for (i, ts) in minutes.ts.iter().enumerate() {
            fold_agg(
                &mut state.hour,
                Tier::Hour,
                *ts,
                &Agg::from_row(&minutes.cols, i),
            );
        }
        Ok(state)
    }

    /// Writes everything pending in one transaction; returns the raw values
    /// written.
    pub fn flush(&mut self) -> Result<u64, StoreError> {
        if self.dirty.is_empty() && self.new_names.is_empty() && self.proc_ops.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let mut ops = Vec::with_capacity(self.dirty.len() * 2 + self.new_names.len() + 1);
        ops.append(&mut self.proc_ops);
        for (name, id) in self.new_names.drain(..) {
            ops.push(Op::Put(
                Table::Series,
                name.into_bytes(),
                id.to_be_bytes().to_vec(),
            ));
        }
        if !ops.is_empty() {
            ops.push(Op::Put(
                Table::Series,
                NEXT_ID_KEY.to_vec(),
                self.next_id.to_be_bytes().to_vec(),
            ));
        }
        let mut values = 0u64;
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            let Some(state) = self.series.get_mut(id) else {
                continue;
            };
            values += state.pending[Tier::Raw as usize].len() as u64;
            for tier in Tier::ALL {
                let rows =
                    std::mem::replace(&mut state.pending[tier as usize], Rows::new(tier.cols()));
                if rows.is_empty() {
                    continue;
                }
                let disk = &mut state.disk_window[tier as usize];
                write_rows(self.engine.as_ref(), *id, tier, rows, disk, &mut ops)?;
            }
        }
        let result = self.engine.apply(&ops);
        self.stats
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        result?;
        self.stats
            .values_written
            .fetch_add(values, Ordering::Relaxed);
        Ok(values)
    }

    /// Seals the open windows of series in memory that ended before
    /// `before` (hosts gone quiet); returns how many were sealed.
    pub fn seal_idle(&mut self, before: i64) -> Result<usize, StoreError> {
        let mut ops = Vec::new();
        let mut sealed = 0;
        for (id, state) in &mut self.series {
            for tier in Tier::ALL {
                let disk = &mut state.disk_window[tier as usize];
                if let Some(w) = *disk
                    && w + tier.window_ms() < before
                    && state.pending[tier as usize].is_empty()
                {
                    seal(
                        self.engine.as_ref(),
                        *id,
                        tier,
                        w,
                        Rows::new(tier.cols()),
                        &mut ops,
                    )?;
                    *disk = None;
                    sealed += 1;
                }
            }
        }
        if !ops.is_empty() {
            self.engine.apply(&ops)?;
        }
        Ok(sealed)
    }

    /// Forgets the in-memory state of series with nothing pending whose
    /// newest value is older than `before` (they are resumed from disk if
    /// they come back).
    pub fn forget_idle(&mut self, before: i64) {
        self.series.retain(|_, s| {
            s.last_ts >= before
                || s.pending.iter().any(|r| !r.is_empty())
                || s.disk_window.iter().any(Option::is_some)
        });
    }
}

/// Adds to `ops` the writing of `rows` (one tier of one series): windows
/// before the newest are sealed (with what is on disk for them), the newest
/// is appended as an open chunk.
fn write_rows(
    engine: &dyn Engine,
    id: u32,
    tier: Tier,
    rows: Rows,
    disk: &mut Option<i64>,
    ops: &mut Vec<Op>,
) -> Result<(), StoreError> {
    let newest = tier.window_of(*rows.ts.last().expect("not empty"));
    if let Some(w) = *disk
        && w < newest
        && tier.window_of(rows.ts[0]) != w
    {
        seal(engine, id, tier, w, Rows::new(tier.cols()), ops)?;
        *disk = None;
    }
    let mut start = 0;
    while start < rows.len() {
        let w = tier.window_of(rows.ts[start]);
        let end = start + rows.ts[start..].partition_point(|t| tier.window_of(*t) == w);
        let mut part = Rows::new(tier.cols());
        part.ts.extend_from_slice(&rows.ts[start..end]);
        for (c, col) in part.cols.iter_mut().enumerate() {
            col.extend_from_slice(&rows.cols[c][start..end]);
        }
        if w < newest {
            seal(engine, id, tier, w, part, ops)?;
            if *disk == Some(w) {
                *disk = None;
            }
        } else {
            ops.push(Op::Put(
                Table::Open,
                block_key(id, tier as u8, part.ts[0]).to_vec(),
                encode_chunk(&part),
            ));
            *disk = Some(w);
        }
        start = end;
    }
    Ok(())
}

/// Adds to `ops` the sealing of window `w`: its existing block (if any),
/// its open chunks and `extra` rows merged into one block; the chunks go.
pub fn seal(
    engine: &dyn Engine,
    id: u32,
    tier: Tier,
    w: i64,
    extra: Rows,
    ops: &mut Vec<Op>,
) -> Result<(), StoreError> {
    let t = tier as u8;
    let (start, end) = (block_key(id, t, w), block_key(id, t, w + tier.window_ms()));
    let mut rows = Rows::new(tier.cols());
    let mut failure = None;
    engine.scan(Table::Blocks, &start, &end, &mut |_, v| {
        match decode_block(v) {
            Ok(b) => rows.extend(&b),
            Err(e) => failure = Some(e),
        }
        true
    })?;
    engine.scan(Table::Open, &start, &end, &mut |k, v| {
        if let Err(e) = decode_chunk(v, &mut rows) {
            failure = Some(e);
        }
        ops.push(Op::Delete(Table::Open, k.to_vec()));
        true
    })?;
    if let Some(e) = failure {
        // A corrupt chunk cannot be merged; the window keeps what decoded.
        tracing::warn!(cause = %e, series = id, tier = tier.name(), "store: unreadable rows skipped while sealing");
    }
    rows.extend(&extra);
    rows.sort_dedup();
    if rows.is_empty() {
        return Ok(());
    }
    let block = encode_block(&rows)?;
    ops.push(Op::Put(
        Table::ByTime,
        time_key(t, w, id).to_vec(),
        ((block.len() + 13) as u32).to_be_bytes().to_vec(),
    ));
    ops.push(Op::Put(Table::Blocks, start.to_vec(), block));
    Ok(())
}
