//! The writer: owns every series' in-memory state, turns samples into raw
//! rows and rollup rows, and writes them in one transaction per flush.
//!
//! Per series it holds the rows not yet flushed (per tier, inline in its
//! state: [`Pending`]), the open minute and hour being rolled up, and the
//! window its open chunks on disk belong to. A flush ([`super::flush`])
//! writes the new rows of most series as one log record
//! ([`super::recent`]) and checkpoints one slice of the series
//! ([`super::checkpoint`]): each one's rows since its last checkpoint as
//! one open chunk per tier; when a tier's rows move into a new window, the
//! old window is queued, and sealed (its chunks merged and compressed into
//! one block) by a later flush. A minute row is written when the
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

use foldhash::fast::RandomState;
use hostpulse_proto::Sample;

use super::checkpoint::{Deltas, Rotation, Seals, Window, seal};
use super::chunks::{LastGroup, newest_from, run_of};
use super::engine::{Engine, Op, Table};
use super::processes::{self, OpenMinute};
use super::read::{last_block_ts, read_rows, series_name};
use super::recent::{Recent, replay};
use super::rollup::{Agg, Open, fold, fold_agg};
use super::series::{for_each_field, labelled};
use super::tier::{ROLLUP_COLS, Rows, Tier};
use super::{StoreError, StoreStats};

/// The writer's maps, keyed by host and series names: looked up for every
/// sample (and, when hosts connect, 66 names of each), where SipHash cost
/// a tenth of the writer's time.
type Map<K, V> = HashMap<K, V, RandomState>;

/// Key in `series` holding the next id to hand out.
pub const NEXT_ID_KEY: &[u8] = b"\xffnext";

/// The next series id to hand out, as the last committed flush left it:
/// every series below it has its name in `series`.
pub fn stored_next_id(engine: &dyn Engine) -> Result<u32, StoreError> {
    let mut next_id = 0u32;
    engine.scan(Table::Series, NEXT_ID_KEY, b"\xff\xff", &mut |k, v| {
        if k == NEXT_ID_KEY && v.len() == 4 {
            next_id = u32::from_be_bytes(v.try_into().expect("4 bytes"));
        }
        false
    })?;
    Ok(next_id)
}

/// Flushes between checkpoints unless set ([`Writer::set_checkpoint_every`]).
pub const DEFAULT_CHECKPOINT_EVERY: u32 = 30;

/// Rows not yet flushed of one series in one tier, in time order: the
/// first `INLINE` in the series' state itself, any more (a backlog resent
/// after an outage) in `more`. At 10,000 hosts the writer adds 660,000
/// values a second, one to each series; a value written next to the
/// series' other state costs one cache line, where rows of their own cost
/// three heap loads in three places, and hundreds of bytes a series held
/// between flushes.
#[derive(Debug)]
pub(super) struct Pending<const COLS: usize, const INLINE: usize> {
    len: u8,
    ts: [i64; INLINE],
    rows: [[f64; COLS]; INLINE],
    /// Rows after the inline ones.
    more: Option<Box<Rows>>,
}

/// Raw values not yet flushed: a flush's worth at one sample a second,
/// and then some, inline.
pub(super) type RawPending = Pending<1, 4>;

/// Rollup rows not yet flushed: one a minute (an hour), inline.
pub(super) type RollupPending = Pending<ROLLUP_COLS, 1>;

impl<const COLS: usize, const INLINE: usize> Default for Pending<COLS, INLINE> {
    fn default() -> Self {
        Self {
            len: 0,
            ts: [0; INLINE],
            rows: [[0.0; COLS]; INLINE],
            more: None,
        }
    }
}

impl<const COLS: usize, const INLINE: usize> Pending<COLS, INLINE> {
    /// Appends a row (later than those held).
    pub(super) fn push(&mut self, ts: i64, row: [f64; COLS]) {
        let i = usize::from(self.len);
        if i < INLINE {
            self.ts[i] = ts;
            self.rows[i] = row;
            self.len += 1;
        } else {
            self.more
                .get_or_insert_with(|| Box::new(Rows::new(COLS)))
                .push(ts, &row);
        }
    }

    /// Rows held.
    pub(super) fn len(&self) -> usize {
        usize::from(self.len) + self.more.as_ref().map_or(0, |m| m.len())
    }

    /// Whether none are held.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the rows held to `rows` (`COLS` value columns).
    pub(super) fn append_to(&self, rows: &mut Rows) {
        let n = usize::from(self.len);
        rows.ts.extend_from_slice(&self.ts[..n]);
        for (c, col) in rows.cols.iter_mut().enumerate() {
            col.extend(self.rows[..n].iter().map(|r| r[c]));
        }
        if let Some(more) = &self.more {
            rows.extend(more);
        }
    }

    /// Appends the rows held to `pairs` as (time, first value).
    pub(super) fn append_pairs(&self, pairs: &mut Vec<(i64, f64)>) {
        let n = usize::from(self.len);
        pairs.extend((0..n).map(|i| (self.ts[i], self.rows[i][0])));
        if let Some(more) = &self.more {
            pairs.extend(more.ts.iter().zip(&more.cols[0]).map(|(t, v)| (*t, *v)));
        }
    }

    /// Drops the rows held (and a backlog's heap rows).
    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.more = None;
    }
}

/// One series' state in the writer.
#[derive(Debug)]
pub(super) struct SeriesState {
    /// Newest raw value's time: older values are late and dropped.
    last_ts: i64,
    minute: Option<Open>,
    hour: Option<Open>,
    /// Raw values not yet flushed.
    pub(super) raw: RawPending,
    /// Rollup rows not yet flushed: minute, hour.
    pub(super) rollups: [RollupPending; 2],
    /// Window of the open chunks on disk, per tier.
    pub(super) disk_window: [Option<i64>; 3],
    /// Whether it has rows since the last checkpoint (in `recent`).
    pub(super) logged: bool,
}

impl SeriesState {
    /// A series with nothing on disk.
    fn new() -> Self {
        Self {
            last_ts: i64::MIN,
            minute: None,
            hour: None,
            raw: RawPending::default(),
            rollups: Default::default(),
            disk_window: [None; 3],
            logged: false,
        }
    }

    /// Whether rows of `tier` wait for a flush.
    pub(super) fn pending_in(&self, tier: Tier) -> bool {
        match tier {
            Tier::Raw => !self.raw.is_empty(),
            _ => !self.rollups[tier as usize - 1].is_empty(),
        }
    }

    /// Appends the rows of `tier` waiting for a flush to `rows`.
    pub(super) fn append_pending(&self, tier: Tier, rows: &mut Rows) {
        match tier {
            Tier::Raw => self.raw.append_to(rows),
            _ => self.rollups[tier as usize - 1].append_to(rows),
        }
    }

    /// Whether any rows wait for a flush.
    pub(super) fn pending(&self) -> bool {
        Tier::ALL.iter().any(|t| self.pending_in(*t))
    }

    /// Drops the rows waiting for a flush; returns the raw values dropped.
    pub(super) fn drop_pending(&mut self) -> usize {
        let lost = self.raw.len();
        self.raw.clear();
        self.rollups.iter_mut().for_each(Pending::clear);
        lost
    }
}

/// Series names and ids: every name on disk (read once at open, so a
/// sample never waits on a lookup: 660,000 of them when 10,000 hosts
/// connect at once), and those created since the last flush (written with
/// it).
pub(super) struct Names {
    ids: Map<String, u32>,
    pub(super) next_id: u32,
    /// Series names created since the last flush.
    pub(super) new_names: Vec<(String, u32)>,
}

impl Names {
    /// Every name in the `series` table, and the next id to hand out.
    fn load(engine: &dyn Engine) -> Result<Self, StoreError> {
        let mut ids = Map::default();
        let mut damaged = 0usize;
        engine.scan(Table::Series, &[], NEXT_ID_KEY, &mut |k, v| {
            match (std::str::from_utf8(k), <[u8; 4]>::try_from(v)) {
                (Ok(name), Ok(id)) => {
                    ids.insert(name.to_string(), u32::from_be_bytes(id));
                }
                _ => damaged += 1,
            }
            true
        })?;
        if damaged > 0 {
            tracing::warn!(entries = damaged, "store: unreadable series names skipped");
        }
        Ok(Self {
            ids,
            next_id: stored_next_id(engine)?,
            new_names: Vec::new(),
        })
    }

    /// The id of series `name`, and whether it was created now (a series
    /// with nothing on disk).
    fn id_of(&mut self, name: String) -> Result<(u32, bool), StoreError> {
        if let Some(id) = self.ids.get(&name) {
            return Ok((*id, false));
        }
        let id = self.next_id;
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or(StoreError::Engine("series ids exhausted".into()))?;
        self.new_names.push((name.clone(), id));
        self.ids.insert(name, id);
        Ok((id, true))
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
        // Field names and label keys are the same statics sample after
        // sample: equal pointers settle it without comparing the bytes.
        let same = |a: &'static str, b: &'static str| std::ptr::eq(a, b) || a == b;
        same(self.field, field)
            && match (&self.label, label) {
                (None, None) => true,
                (Some((k, v)), Some((key, value))) => same(k, key) && **v == *value,
                _ => false,
            }
    }
}

/// The writer's state.
pub struct Writer {
    pub(super) engine: Arc<dyn Engine>,
    pub(super) stats: Arc<StoreStats>,
    pub(super) names: Names,
    /// Per host, the fields of its last sample in order with their series
    /// ids: a sample of the same shape (the usual case) finds its series
    /// without building a name.
    shapes: Map<String, Vec<Slot>>,
    /// Series ids and values of the sample being taken (reused).
    scratch: Vec<(u32, f64)>,
    /// Each series' state, by id (`None`: not resumed, or forgotten).
    pub(super) series: Vec<Option<SeriesState>>,
    /// Series with rows pending.
    pub(super) dirty: Vec<u32>,
    /// Rows flushed since the last checkpoint (shared with readers).
    pub(super) recent: Arc<Recent>,
    /// Series with rows in `recent`, by the flush that checkpoints them;
    /// the log records on disk.
    pub(super) rotation: Rotation,
    /// Number of the next flush (its log record's key, its slice).
    pub(super) step: u64,
    /// Flushes failed in a row: after a whole rotation of them, new rows
    /// are dropped rather than held in memory without bound.
    pub(super) failed_flushes: usize,
    /// Windows that ended, to seal.
    pub(super) seals: Seals,
    /// How each series' raw blocks are delta encoded.
    pub(super) deltas: Deltas,
    /// The buffer of the last log record, reused by the next.
    pub(super) record_buf: Vec<u8>,
    /// Per tier, the newest open-chunk group of the run last resumed
    /// (cleared by every write of the open chunks).
    pub(super) last_groups: [LastGroup; 3],
    /// Each host's open minute of process tables.
    procs: Map<String, OpenMinute>,
    /// Hosts whose process tables were written since start (a first write
    /// merges with what is on disk).
    procs_written: HashSet<String, RandomState>,
    /// Finished minutes' process tables, written at the next flush.
    pub(super) proc_ops: Vec<Op>,
    /// Each run's newest window a previous run left open, not ended when
    /// the store opened: queued for sealing once ended ([`Self::seal_idle`])
    /// unless a series that came back holds it (its own end seals it).
    later: Vec<Window>,
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
        let names = Names::load(engine.as_ref())?;
        Ok(Self {
            engine,
            stats,
            names,
            shapes: Map::default(),
            scratch: Vec::with_capacity(128),
            series: Vec::new(),
            dirty: Vec::new(),
            recent: Arc::default(),
            rotation: Rotation::new(DEFAULT_CHECKPOINT_EVERY),
            step: 0,
            failed_flushes: 0,
            seals: Seals::new(super::StorageConfig::default().flush_interval_ms),
            deltas: Deltas::default(),
            record_buf: Vec::new(),
            last_groups: [None, None, None],
            procs: Map::default(),
            procs_written: HashSet::default(),
            proc_ops: Vec::new(),
            later: Vec::new(),
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
        let names = &mut self.names;
        let mut values = std::mem::take(&mut self.scratch);
        values.clear();
        let mut failure = None;
        let mut created = Vec::new();
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
            match names.id_of(name) {
                Ok((id, new)) => {
                    if new {
                        created.push(id);
                    }
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
        // A series created now has nothing on disk to resume from: 660,000
        // of them at once when 10,000 hosts first connect.
        for id in created {
            self.slot(id).get_or_insert_with(SeriesState::new);
        }
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

    /// Adds to `ops` the sealing of each window (run, tier, start), with
    /// the series' delta encodings ([`Deltas`]).
    pub(super) fn seal_into(
        &mut self,
        windows: impl IntoIterator<Item = Window>,
        ops: &mut Vec<Op>,
    ) -> Result<(), StoreError> {
        for (run, tier, w) in windows {
            seal(self.engine.as_ref(), run, tier, w, &mut self.deltas, ops)?;
        }
        Ok(())
    }

    /// Series `id`'s place in `series`, which grows to hold it.
    fn slot(&mut self, id: u32) -> &mut Option<SeriesState> {
        let i = id as usize;
        if self.series.len() <= i {
            self.series.resize_with(i + 1, || None);
        }
        &mut self.series[i]
    }

    fn add(&mut self, id: u32, ts: i64, v: f64) -> Result<(), StoreError> {
        let i = id as usize;
        if self.slot(id).is_none() {
            self.series[i] = Some(Self::resume(
                self.engine.as_ref(),
                id,
                &mut self.last_groups,
            )?);
        }
        let state = self.series[i].as_mut().expect("resumed");
        if ts <= state.last_ts {
            self.stats.late.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !state.pending() {
            self.dirty.push(id);
        }
        state.last_ts = ts;
        state.raw.push(ts, [v]);
        if let Some(minute) = fold(&mut state.minute, Tier::Minute, ts, v) {
            state.rollups[0].push(minute.bucket, minute.agg.cols());
            if let Some(hour) = fold_agg(&mut state.hour, Tier::Hour, minute.bucket, &minute.agg) {
                state.rollups[1].push(hour.bucket, hour.agg.cols());
            }
        }
        Ok(())
    }

    /// A series' state from what is on disk: its newest raw time, the open
    /// minute rebuilt from the raw rows after the last minute row, and the
    /// open hour from the minute rows after the last hour row.
    fn resume(
        engine: &dyn Engine,
        id: u32,
        groups: &mut [LastGroup; 3],
    ) -> Result<SeriesState, StoreError> {
        let mut state = SeriesState::new();
        let mut last = [None; 3];
        for tier in Tier::ALL {
            let open = newest_from(engine, id, tier, &mut groups[tier as usize])?;
            state.disk_window[tier as usize] = open.map(|(w, _)| w);
            last[tier as usize] = open.map(|(_, ts)| ts).max(last_block_ts(engine, id, tier)?);
        }
        let Some(last_raw) = last[Tier::Raw as usize] else {
            return Ok(state);
        };
        state.last_ts = last_raw;
        let after = |tier: Tier| -> Result<i64, StoreError> {
            let open_bucket = last_raw.div_euclid(tier.bucket_ms()) * tier.bucket_ms();
            let done = last[tier as usize].map_or(i64::MIN, |t| t + tier.bucket_ms());
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

    /// Windows a previous run left open that had not ended when the store
    /// opened ([`super::maintain::leftover_windows`]): sealed once they end
    /// by [`Self::seal_idle`]. Without this, the windows of hosts that do
    /// not come back would stay open (outside retention and the disk
    /// bound) until the next restart.
    pub fn seal_when_ended(&mut self, windows: Vec<Window>) {
        self.later.extend(windows);
    }

    /// Seals the open windows of series in memory that ended before
    /// `before` (hosts gone quiet); returns how many were sealed. Series
    /// with rows since the last checkpoint wait for it. Windows a previous
    /// run left open that ended before `before` and that no series in
    /// memory holds (their hosts did not come back) join the seal queue.
    pub fn seal_idle(&mut self, before: i64) -> Result<usize, StoreError> {
        let mut left = Vec::new();
        self.later.retain(|&(run, tier, w)| {
            let ended = w + tier.window_ms() < before;
            if ended {
                left.push((run, tier, w));
            }
            !ended
        });
        left.sort_unstable();
        // Those a series resumed into are sealed as that series' are.
        let mut held = vec![false; left.len()];
        let mut windows = std::collections::BTreeSet::new();
        let mut sealed = 0;
        for (id, state) in self.series.iter_mut().enumerate() {
            let (id, Some(state)) = (id as u32, state) else {
                continue;
            };
            if !left.is_empty() {
                for tier in Tier::ALL {
                    if let Some(w) = state.disk_window[tier as usize]
                        && let Ok(i) = left.binary_search(&(run_of(id, tier), tier, w))
                    {
                        held[i] = true;
                    }
                }
            }
            if state.logged {
                continue;
            }
            for tier in Tier::ALL {
                if let Some(w) = state.disk_window[tier as usize]
                    && w + tier.window_ms() < before
                    && !state.pending_in(tier)
                {
                    windows.insert((run_of(id, tier), tier, w));
                    state.disk_window[tier as usize] = None;
                    sealed += 1;
                }
            }
        }
        let unheld: Vec<Window> = left
            .into_iter()
            .zip(held)
            .filter_map(|(w, held)| (!held).then_some(w))
            .collect();
        if !unheld.is_empty() {
            tracing::info!(
                windows = unheld.len(),
                "store: windows the last run left open, whose hosts did not come back, queued for sealing"
            );
            self.seals.push(unheld);
        }
        let mut ops = Vec::new();
        self.seal_into(windows, &mut ops)?;
        if !ops.is_empty() {
            self.last_groups = [None, None, None];
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
                    && !s.pending()
                    && s.disk_window.iter().all(Option::is_none)
            }) {
                *slot = None;
            }
        }
    }
}
