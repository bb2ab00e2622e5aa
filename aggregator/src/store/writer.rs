//! The writer: owns every series' in-memory state, turns samples into raw
//! rows and rollup rows, and writes them in one transaction per flush.
//!
//! Per series it holds the rows not yet flushed (per tier), the open minute
//! and hour being rolled up, and the window its open chunks on disk belong
//! to. A flush writes the new rows of every series as one log record
//! ([`super::recent`]). A checkpoint writes each series' rows since the
//! last one as one open chunk per tier; when a tier's rows move into a new
//! window, the old window's chunks are merged and compressed into one
//! sealed block in that same transaction. A minute row is written when the
//! first value of the next minute arrives (likewise hours), flushed with
//! that value, so what is on disk is always consistent: after a crash the
//! log is replayed, and the open minute and hour are rebuilt from the raw
//! rows and minute rows on disk ([`Writer::resume`]).
//!
//! A sample finds its series through its host's last sample: the same
//! fields in the same order (the usual case) reuse their series ids
//! without building a name.
//!
//! Runs on the store's own thread (see `mod.rs`); nothing here is async.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hostpulse_proto::Sample;

use super::codec::{decode_block, decode_chunk, encode_block, encode_chunk};
use super::engine::{Engine, Op, Table, block_key, time_key};
use super::processes::{self, OpenMinute};
use super::read::{last_ts, open_window, read_rows, series_id, series_name};
use super::recent::{Recent, append_entry, log_key, replay};
use super::rollup::{Agg, Open, fold, fold_agg};
use super::series::{for_each_field, labelled};
use super::tier::{Rows, Tier};
use super::{StoreError, StoreStats};

/// Key in `series` holding the next id to hand out.
pub const NEXT_ID_KEY: &[u8] = b"\xffnext";

/// Flushes between checkpoints unless set ([`Writer::set_checkpoint_every`]).
pub const DEFAULT_CHECKPOINT_EVERY: u32 = 30;

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
    /// Whether it has rows since the last checkpoint (in `recent`).
    logged: bool,
}

/// Series names and ids: those known, and those created since the last
/// flush (written with it).
struct Names {
    ids: HashMap<String, u32>,
    next_id: u32,
    /// Series names created since the last flush.
    new_names: Vec<(String, u32)>,
}

impl Names {
    /// The id of series `name`: known, on disk, or new.
    fn id_of(&mut self, engine: &dyn Engine, name: String) -> Result<u32, StoreError> {
        if let Some(id) = self.ids.get(&name) {
            return Ok(*id);
        }
        let id = match series_id(engine, &name)? {
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
}

/// One value's field as the last sample of a host had it: its name, its
/// label (key, entry) and its series id.
struct Slot {
    field: &'static str,
    label: Option<(&'static str, Box<str>)>,
    id: u32,
}

impl Slot {
    fn matches(&self, field: &'static str, label: Option<(&'static str, &str)>) -> bool {
        self.field == field
            && match (&self.label, label) {
                (None, None) => true,
                (Some((k, v)), Some((key, value))) => *k == key && **v == *value,
                _ => false,
            }
    }
}

/// The writer's state.
pub struct Writer {
    engine: Arc<dyn Engine>,
    stats: Arc<StoreStats>,
    names: Names,
    /// Per host, the fields of its last sample in order with their series
    /// ids: a sample of the same shape (the usual case) finds its series
    /// without building a name.
    shapes: HashMap<String, Vec<Slot>>,
    /// Series ids and values of the sample being taken (reused).
    scratch: Vec<(u32, f64)>,
    /// Each series' state, by id (`None`: not resumed, or forgotten).
    series: Vec<Option<SeriesState>>,
    /// Series with rows pending.
    dirty: Vec<u32>,
    /// Rows flushed since the last checkpoint (shared with readers).
    recent: Arc<Recent>,
    /// Series with rows in `recent`.
    checkpoint: Vec<u32>,
    /// Number of the next flush's log record, and of the first one since
    /// the last checkpoint.
    log_next: u64,
    log_first: u64,
    /// Flushes between checkpoints, and since the last one.
    checkpoint_every: u32,
    flushes_since_checkpoint: u32,
    /// Largest log record so far (the next one's starting capacity).
    record_len: usize,
    /// Each host's open minute of process tables.
    procs: HashMap<String, OpenMinute>,
    /// Hosts whose process tables were written since start (a first write
    /// merges with what is on disk).
    procs_written: HashSet<String>,
    /// Finished minutes' process tables, written at the next flush.
    proc_ops: Vec<Op>,
}

impl Writer {
    /// A writer over `engine`; log records a crash left are replayed first
    /// ([`super::recent::replay`]).
    pub fn new(engine: Arc<dyn Engine>, stats: Arc<StoreStats>) -> Result<Self, StoreError> {
        let replayed = replay(engine.as_ref())?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "store: replayed the log of the last run"
            );
        }
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
            names: Names {
                ids: HashMap::new(),
                next_id,
                new_names: Vec::new(),
            },
            shapes: HashMap::new(),
            scratch: Vec::with_capacity(128),
            series: Vec::new(),
            dirty: Vec::new(),
            recent: Arc::default(),
            checkpoint: Vec::new(),
            log_next: 0,
            log_first: 0,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            flushes_since_checkpoint: 0,
            record_len: 0,
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
        if !self.shapes.contains_key(host) {
            self.shapes.insert(host.to_string(), Vec::new());
        }
        let shape = self.shapes.get_mut(host).expect("inserted");
        let (names, engine) = (&mut self.names, self.engine.as_ref());
        let mut values = std::mem::take(&mut self.scratch);
        values.clear();
        let mut failure = None;
        let mut n = 0;
        for_each_field(sample, |field, label, v| {
            let i = n;
            n += 1;
            if let Some(slot) = shape.get(i)
                && slot.matches(field, label)
            {
                values.push((slot.id, v));
                return;
            }
            let name = match label {
                Some((key, value)) => series_name(host, &labelled(field, key, value)),
                None => series_name(host, field),
            };
            match names.id_of(engine, name) {
                Ok(id) => {
                    let slot = Slot {
                        field,
                        label: label.map(|(k, v)| (k, v.into())),
                        id,
                    };
                    match shape.get_mut(i) {
                        Some(s) => *s = slot,
                        None => shape.push(slot),
                    }
                    values.push((id, v));
                }
                Err(e) => failure = Some(e),
            }
        });
        shape.truncate(n);
        let mut result = failure.map_or(Ok(()), Err);
        for &(id, v) in &values {
            if let Err(e) = self.add(id, ts, v) {
                result = Err(e);
            }
        }
        self.scratch = values;
        result?;
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

    fn add(&mut self, id: u32, ts: i64, v: f64) -> Result<(), StoreError> {
        let i = id as usize;
        if self.series.len() <= i {
            self.series.resize_with(i + 1, || None);
        }
        if self.series[i].is_none() {
            self.series[i] = Some(Self::resume(self.engine.as_ref(), id)?);
        }
        let state = self.series[i].as_mut().expect("resumed");
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
            logged: false,
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
        let raw = read_rows(engine, None, id, Tier::Raw, after(Tier::Minute)?, i64::MAX)?;
        for (i, ts) in raw.ts.iter().enumerate() {
            fold(&mut state.minute, Tier::Minute, *ts, raw.cols[0][i]);
        }
        let minutes = read_rows(engine, None, id, Tier::Minute, after(Tier::Hour)?, i64::MAX)?;
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

    /// Writes everything pending in one transaction, the rows of every
    /// series as one log record ([`super::recent`]); checkpoints every
    /// [`checkpoint_every`](Self::set_checkpoint_every) flushes. Returns the
    /// raw values written.
    pub fn flush(&mut self) -> Result<u64, StoreError> {
        if self.dirty.is_empty() && self.names.new_names.is_empty() && self.proc_ops.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let mut ops = Vec::with_capacity(self.names.new_names.len() + 2);
        ops.append(&mut self.proc_ops);
        for (name, id) in self.names.new_names.drain(..) {
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
                self.names.next_id.to_be_bytes().to_vec(),
            ));
        }
        let mut values = 0u64;
        let mut record = Vec::with_capacity(self.record_len);
        for id in &self.dirty {
            let Some(Some(state)) = self.series.get(*id as usize) else {
                continue;
            };
            values += state.pending[Tier::Raw as usize].len() as u64;
            for tier in Tier::ALL {
                let rows = &state.pending[tier as usize];
                if !rows.is_empty() {
                    append_entry(&mut record, *id, tier, rows);
                }
            }
        }
        self.record_len = self.record_len.max(record.len());
        let logged = !record.is_empty();
        if logged {
            ops.push(Op::Put(Table::Log, log_key(self.log_next).to_vec(), record));
        }
        let result = self.engine.apply(&ops);
        drop(ops);
        {
            let mut recent = result.is_ok().then(|| self.recent.writer());
            for id in &self.dirty {
                let Some(Some(state)) = self.series.get_mut(*id as usize) else {
                    continue;
                };
                match &mut recent {
                    Some(recent) => {
                        recent.add(*id, &mut state.pending);
                        if !state.logged {
                            state.logged = true;
                            self.checkpoint.push(*id);
                        }
                    }
                    // Lost, as the flush failed: nothing on disk has them.
                    None => state.pending.iter_mut().for_each(Rows::clear),
                }
            }
        }
        self.dirty.clear();
        self.stats
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        result?;
        if logged {
            self.log_next += 1;
        }
        self.stats
            .values_written
            .fetch_add(values, Ordering::Relaxed);
        self.flushes_since_checkpoint += 1;
        if self.flushes_since_checkpoint >= self.checkpoint_every
            && let Err(e) = self.checkpoint()
        {
            // The rows stay in the log and in memory; the next checkpoint
            // tries again.
            tracing::error!(cause = %e, "store: checkpoint failed");
        }
        Ok(values)
    }

    /// Checkpoints every `flushes` flushes (at least 1).
    pub fn set_checkpoint_every(&mut self, flushes: u32) {
        self.checkpoint_every = flushes.max(1);
    }

    /// The rows flushed since the last checkpoint, for readers.
    pub fn recent(&self) -> &Arc<Recent> {
        &self.recent
    }

    /// Moves the rows flushed since the last checkpoint from the log into
    /// the per-series tables (an open chunk per series and tier; windows
    /// that ended are sealed), deleting the log records, in one
    /// transaction.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.flushes_since_checkpoint = 0;
        if self.checkpoint.is_empty() && self.log_first == self.log_next {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(self.checkpoint.len() * 2);
        let mut before = Vec::with_capacity(self.checkpoint.len());
        let built = self.write_checkpoint(&mut ops, &mut before);
        if let Err(e) = built {
            for (id, disk) in before {
                if let Some(Some(state)) = self.series.get_mut(id as usize) {
                    state.disk_window = disk;
                }
            }
            return Err(e);
        }
        self.recent.clear(&self.checkpoint);
        for id in self.checkpoint.drain(..) {
            if let Some(Some(state)) = self.series.get_mut(id as usize) {
                state.logged = false;
            }
        }
        self.log_first = self.log_next;
        Ok(())
    }

    /// Builds and applies the checkpoint's transaction; `before` gets each
    /// series' disk windows as they were, to restore if it fails.
    fn write_checkpoint(
        &mut self,
        ops: &mut Vec<Op>,
        before: &mut Vec<(u32, [Option<i64>; 3])>,
    ) -> Result<(), StoreError> {
        let recent = self.recent.all();
        for id in &self.checkpoint {
            let Some(Some(state)) = self.series.get_mut(*id as usize) else {
                continue;
            };
            let Some(Some(rows)) = recent.get(*id as usize) else {
                continue;
            };
            before.push((*id, state.disk_window));
            for tier in Tier::ALL {
                let rows = &rows[tier as usize];
                if !rows.is_empty() {
                    let disk = &mut state.disk_window[tier as usize];
                    write_rows(self.engine.as_ref(), *id, tier, rows, disk, ops)?;
                }
            }
        }
        for seq in self.log_first..self.log_next {
            ops.push(Op::Delete(Table::Log, log_key(seq).to_vec()));
        }
        self.engine.apply(ops)
    }

    /// Seals the open windows of series in memory that ended before
    /// `before` (hosts gone quiet); returns how many were sealed. Series
    /// with rows since the last checkpoint wait for it.
    pub fn seal_idle(&mut self, before: i64) -> Result<usize, StoreError> {
        let mut ops = Vec::new();
        let mut sealed = 0;
        for (id, state) in self.series.iter_mut().enumerate() {
            let (id, Some(state)) = (id as u32, state) else {
                continue;
            };
            if state.logged {
                continue;
            }
            for tier in Tier::ALL {
                let disk = &mut state.disk_window[tier as usize];
                if let Some(w) = *disk
                    && w + tier.window_ms() < before
                    && state.pending[tier as usize].is_empty()
                {
                    seal(
                        self.engine.as_ref(),
                        id,
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
        for slot in &mut self.series {
            if slot.as_ref().is_some_and(|s| {
                s.last_ts < before
                    && !s.logged
                    && s.pending.iter().all(Rows::is_empty)
                    && s.disk_window.iter().all(Option::is_none)
            }) {
                *slot = None;
            }
        }
    }
}

/// Adds to `ops` the writing of `rows` (one tier of one series, in time
/// order): windows before the newest are sealed (with what is on disk for
/// them), the newest is appended as an open chunk.
pub(crate) fn write_rows(
    engine: &dyn Engine,
    id: u32,
    tier: Tier,
    rows: &Rows,
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
