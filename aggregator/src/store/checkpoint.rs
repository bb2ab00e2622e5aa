//! The checkpoint spread over the flushes, and sealing spread over the time
//! after a window ends: no flush carries the whole store's per-series
//! writes, nor every series' seal when their windows end together.
//!
//! [`Rotation`]: the series with rows since their last checkpoint are
//! split into `checkpoint_every` slices (by runs of [`SLICE_RUN`]
//! consecutive series ids, so that a slice's chunks make whole groups of
//! the `open` table, [`super::chunks`]); each flush also
//! checkpoints one slice, in its own transaction, so every series is
//! checkpointed once per rotation (`checkpoint_interval_ms`). A log record
//! holds the rows of the series outside its flush's slice; it is deleted
//! once every slice has been checkpointed since it was written (one
//! rotation), in the transaction of that last checkpoint.
//!
//! [`Seals`]: a checkpoint that moves a series into a new window writes the
//! ended window's last rows as an open chunk and queues the window of its
//! run; each flush seals a share of the queue (the queue's length at its
//! longest over the tier's spread), in a later transaction than the chunks
//! it merges.
//!
//! Also the writing of one series' rows as open chunks ([`write_rows`],
//! shared with the log's replay), the sealing of a run's window
//! ([`seal`]), and the delta encoding each series' raw blocks are
//! compressed with ([`Deltas`]).

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::StoreError;
use super::chunks::{Group, Groups, RUN, group_key, run_len, run_of};
use super::codec::{Delta, decode_chunk, encode_block_shared, encode_block_with, encode_stamps};
use super::engine::{Engine, Op, Table, block_key, parse_time_key, time_key};
use super::stamps::{self, Blocks, stamp_key};
use super::tier::{Rows, Tier};

/// Consecutive series ids in the same slice: a run of the open chunks'
/// groups ([`super::chunks`]), so that a slice's checkpoint writes whole
/// groups.
pub const SLICE_RUN: u32 = RUN;

/// Which series a flush checkpoints, and which log records are still needed.
#[derive(Debug)]
pub(crate) struct Rotation {
    /// Series with rows since their last checkpoint, by slice (runs of
    /// `run` ids, dealt round the slices).
    slices: Vec<Vec<u32>>,
    run: u32,
    /// Per slice, the step (flush number) of its last committed checkpoint;
    /// -1 before the first one.
    last: Vec<i64>,
    /// Steps whose flush wrote a log record still on disk, oldest first.
    records: VecDeque<u64>,
}

impl Rotation {
    /// `n` slices (at least one).
    pub(crate) fn new(n: u32) -> Self {
        let n = n.max(1) as usize;
        Self {
            slices: vec![Vec::new(); n],
            run: SLICE_RUN,
            last: vec![-1; n],
            records: VecDeque::new(),
        }
    }

    /// Re-slices in `n` slices of runs of `run` ids. Records written so far
    /// are kept until a full rotation of the new slices has passed them.
    pub(crate) fn resize(&mut self, n: u32, run: u32) {
        let ids: Vec<u32> = self.slices.iter_mut().flat_map(std::mem::take).collect();
        let records = std::mem::take(&mut self.records);
        *self = Self::new(n);
        self.run = run.max(1);
        self.records = records;
        ids.into_iter().for_each(|id| self.add(id));
    }

    /// Slices in a rotation.
    pub(crate) fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// The slice of series `id`.
    pub(crate) fn slice_of(&self, id: u32) -> usize {
        (id / self.run) as usize % self.slices.len()
    }

    /// The slice checkpointed at flush `step`.
    pub(crate) fn slice_at(&self, step: u64) -> usize {
        (step % self.slices.len() as u64) as usize
    }

    /// Flushes from `step` to the one checkpointing series `id`, both
    /// included.
    pub(crate) fn flushes_until(&self, id: u32, step: u64) -> usize {
        let n = self.slices.len();
        (self.slice_of(id) + n - self.slice_at(step)) % n + 1
    }

    /// Series `id` now has rows since its last checkpoint.
    pub(crate) fn add(&mut self, id: u32) {
        let s = self.slice_of(id);
        self.slices[s].push(id);
    }

    /// Takes the series of `slice` to checkpoint.
    pub(crate) fn take(&mut self, slice: usize) -> Vec<u32> {
        std::mem::take(&mut self.slices[slice])
    }

    /// Takes every series (a full checkpoint).
    pub(crate) fn take_all(&mut self) -> Vec<u32> {
        self.slices.iter_mut().flat_map(std::mem::take).collect()
    }

    /// Gives back series whose checkpoint failed.
    pub(crate) fn restore(&mut self, ids: Vec<u32>) {
        ids.into_iter().for_each(|id| self.add(id));
    }

    /// Whether nothing waits for a checkpoint and the log is empty.
    pub(crate) fn is_idle(&self) -> bool {
        self.records.is_empty() && self.slices.iter().all(Vec::is_empty)
    }

    /// Log records that can go in the transaction checkpointing `slice` at
    /// `step`: every slice has been checkpointed since they were written.
    pub(crate) fn trimmable(&self, step: u64, slice: usize) -> usize {
        let covered = (0..self.last.len())
            .map(|s| {
                if s == slice {
                    step as i64
                } else {
                    self.last[s]
                }
            })
            .min()
            .unwrap_or(-1);
        self.records
            .iter()
            .take_while(|r| (**r as i64) <= covered)
            .count()
    }

    /// The first `n` records still on disk.
    pub(crate) fn records(&self, n: usize) -> impl Iterator<Item = u64> + '_ {
        self.records.iter().take(n).copied()
    }

    /// The flush `step` committed: `slice` checkpointed, `trimmed` records
    /// deleted, and its own record written if `record`.
    pub(crate) fn committed(&mut self, step: u64, slice: usize, trimmed: usize, record: bool) {
        self.last[slice] = step as i64;
        self.records.drain(..trimmed);
        if record {
            self.records.push_back(step);
        }
    }

    /// A full checkpoint before flush `step` committed: every record
    /// deleted, every slice covered.
    pub(crate) fn all_committed(&mut self, step: u64) {
        self.records.clear();
        self.last.iter_mut().for_each(|l| *l = step as i64 - 1);
    }

    /// Log records on disk.
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }
}

/// A window to seal: run of series ([`super::chunks::run_len`]), tier, window
/// start.
pub type Window = (u32, Tier, i64);

/// Windows that ended, waiting to be sealed, per tier.
#[derive(Debug)]
pub(crate) struct Seals {
    queues: [VecDeque<(u32, i64)>; 3],
    /// What the queues hold: every series of a run reports its window.
    queued: HashSet<Window>,
    /// Windows sealed per flush while the queue is not empty.
    rate: [usize; 3],
    /// Flushes over which a tier's seals are spread.
    spread: [usize; 3],
}

/// Longest a tier's seals are spread over.
const MAX_SPREAD_MS: i64 = 6 * 3_600_000;

/// Fewest windows a flush seals while some wait (a few ms each, a run of
/// series): a small store seals at once.
pub const MIN_SEALS_PER_FLUSH: usize = 2;

impl Seals {
    /// Seals spread for flushes every `flush_interval_ms`: over three
    /// quarters of a window (11.25 minutes for raw values, done before the
    /// next window ends), at most 6 hours (the rollups).
    pub(crate) fn new(flush_interval_ms: u64) -> Self {
        let flush = flush_interval_ms.max(1) as i64;
        let spread =
            Tier::ALL.map(|t| ((t.window_ms() * 3 / 4).min(MAX_SPREAD_MS) / flush).max(1) as usize);
        Self {
            queues: Default::default(),
            queued: HashSet::new(),
            rate: [0; 3],
            spread,
        }
    }

    /// Queues windows (after the transaction writing their last chunks
    /// committed).
    pub(crate) fn push(&mut self, windows: impl IntoIterator<Item = Window>) {
        for (run, tier, w) in windows {
            if self.queued.insert((run, tier, w)) {
                self.queues[tier as usize].push_back((run, w));
            }
        }
        for t in 0..3 {
            let need = self.queues[t].len().div_ceil(self.spread[t]);
            self.rate[t] = self.rate[t].max(need).max(MIN_SEALS_PER_FLUSH);
        }
    }

    /// The windows to seal at this flush.
    pub(crate) fn due(&mut self) -> Vec<Window> {
        let mut out = Vec::new();
        for tier in Tier::ALL {
            let t = tier as usize;
            let n = self.rate[t].min(self.queues[t].len());
            out.extend(self.queues[t].drain(..n).map(|(run, w)| (run, tier, w)));
            if self.queues[t].is_empty() {
                self.rate[t] = 0;
            }
        }
        out.iter().for_each(|w| {
            self.queued.remove(w);
        });
        out
    }

    /// Every window queued.
    pub(crate) fn all(&mut self) -> Vec<Window> {
        self.rate = [0; 3];
        let mut out = Vec::new();
        for tier in Tier::ALL {
            out.extend(
                self.queues[tier as usize]
                    .drain(..)
                    .map(|(run, w)| (run, tier, w)),
            );
        }
        self.queued.clear();
        out
    }

    /// Puts back windows whose seal did not commit, first in line.
    pub(crate) fn unpop(&mut self, windows: Vec<Window>) {
        for (run, tier, w) in windows.into_iter().rev() {
            if self.queued.insert((run, tier, w)) {
                self.queues[tier as usize].push_front((run, w));
            }
        }
        self.push([]);
    }

    /// Windows queued.
    pub(crate) fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

/// Adds to `groups` the writing of `rows` (one tier of one series, in time
/// order) after the series' open chunks in window `disk`; `disk` becomes
/// the window of the newest rows. Windows the rows moved past (the series'
/// window on disk, and any older window the rows reach) go to `ended`, to
/// be sealed once the transaction writing these chunks committed.
pub(crate) fn write_rows(
    id: u32,
    tier: Tier,
    rows: &Rows,
    disk: &mut Option<i64>,
    groups: &mut Groups,
    ended: &mut Vec<Window>,
) {
    let Some(&last) = rows.ts.last() else {
        return;
    };
    let newest = tier.window_of(last);
    let run = run_of(id, tier);
    if let Some(w) = *disk
        && w < newest
        && tier.window_of(rows.ts[0]) != w
    {
        ended.push((run, tier, w));
    }
    let mut start = 0;
    while start < rows.len() {
        let w = tier.window_of(rows.ts[start]);
        let end = start + rows.ts[start..].partition_point(|t| tier.window_of(*t) == w);
        if start == 0 && end == rows.len() {
            groups.add(id, tier, w, rows);
        } else {
            let mut part = Rows::new(tier.cols());
            part.ts.extend_from_slice(&rows.ts[start..end]);
            for (c, col) in part.cols.iter_mut().enumerate() {
                col.extend_from_slice(&rows.cols[c][start..end]);
            }
            groups.add(id, tier, w, &part);
        }
        if w < newest {
            ended.push((run, tier, w));
        }
        start = end;
    }
    *disk = Some(newest);
}

/// A series searches again for its raw blocks' delta encoding once in this
/// many raw windows (every 2 hours at 15-minute windows).
pub const SEARCH_EVERY: i64 = 8;

/// The delta encoding each series' last sealed raw block got, which its
/// next blocks reuse ([`Delta`]). pco's search for it compresses a sample
/// of the column each way: it took about half of a block's compression
/// time on simulated and on real agents' samples (BENCHMARKS.md, "Seals
/// without pco's search"), and it picked the encoding of the series' block
/// before for 95 % of blocks (a counter stays a counter, a percentage a
/// percentage, a constant a constant). A series
/// searches again one raw window in [`SEARCH_EVERY`], staggered over the
/// series, so a change in its values is followed within hours. Rollup
/// blocks (sealed once a day or a month) always search. Held by the
/// writer, lost at a restart (its first blocks search).
#[derive(Debug, Default)]
pub struct Deltas(Vec<Option<Delta>>);

impl Deltas {
    /// How series `id`'s block of window `w` of `tier` is delta encoded.
    pub fn for_block(&self, id: u32, tier: Tier, w: i64) -> Delta {
        let window = w.div_euclid(tier.window_ms());
        if tier != Tier::Raw || (window + i64::from(id)).rem_euclid(SEARCH_EVERY) == 0 {
            return Delta::Search;
        }
        self.0
            .get(id as usize)
            .copied()
            .flatten()
            .unwrap_or(Delta::Search)
    }

    /// Series `id`'s block of `tier` was encoded as `used` says (one
    /// encoding per value column).
    pub fn used(&mut self, id: u32, tier: Tier, used: &[Delta]) {
        if tier != Tier::Raw {
            return;
        }
        let i = id as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        self.0[i] = used.first().copied();
    }
}

/// Adds to `ops` the sealing of window `w` of `tier` for the series of
/// `run`: each one's existing block (if any) and open chunks merged into
/// one block, delta encoded as `deltas` says (raw blocks with the same
/// timestamps naming one shared column of them, [`stamps`]); the groups
/// go. Returns the blocks written.
pub fn seal(
    engine: &dyn Engine,
    run: u32,
    tier: Tier,
    w: i64,
    deltas: &mut Deltas,
    ops: &mut Vec<Op>,
) -> Result<usize, StoreError> {
    let t = tier as u8;
    let mut by_series: BTreeMap<u32, Rows> = BTreeMap::new();
    let mut failure = None;
    engine.scan(
        Table::Open,
        &group_key(t, run, w, 0),
        &group_key(t, run, w, i64::MAX),
        &mut |k, v| {
            ops.push(Op::Delete(Table::Open, k.to_vec()));
            let parsed = Group::parse(v).and_then(|g| {
                for entry in g.entries() {
                    let (id, chunk) = entry?;
                    let rows = by_series
                        .entry(id)
                        .or_insert_with(|| Rows::new(tier.cols()));
                    decode_chunk(chunk, rows)?;
                }
                Ok(())
            });
            if let Err(e) = parsed {
                failure = Some(e);
            }
            true
        },
    )?;
    if let Some(e) = failure {
        // A corrupt group cannot be merged; the window keeps what decoded.
        tracing::warn!(cause = %e, run, tier = tier.name(), "store: unreadable rows skipped while sealing");
    }
    // Which of the run's series have a block of this window already (a
    // window sealed before, then written again): one scan of `by_time`,
    // where they are neighbours, rather than a lookup per series.
    let first = run * run_len(tier);
    let mut sealed_before = HashSet::new();
    engine.scan(
        Table::ByTime,
        &time_key(t, w, first),
        &time_key(t, w, first.saturating_add(run_len(tier))),
        &mut |k, _| {
            if let Some((.., id)) = parse_time_key(k) {
                sealed_before.insert(id);
            }
            true
        },
    )?;
    let mut reader = Blocks::new(engine);
    let mut merged = Vec::with_capacity(by_series.len());
    for (id, mut rows) in by_series {
        let (start, end) = (block_key(id, t, w), block_key(id, t, w + tier.window_ms()));
        let mut old = None;
        if sealed_before.contains(&id) {
            engine.scan(Table::Blocks, &start, &end, &mut |k, v| {
                old = Some((k.to_vec(), v.to_vec()));
                false
            })?;
        }
        if let Some((k, v)) = old {
            match reader.decode(&k, &v) {
                Ok(b) => rows.extend(&b),
                // Only a block that does not decode is replaced; an error
                // reading its shared column fails the seal (retried).
                Err(StoreError::Codec(e)) => {
                    tracing::warn!(cause = %e, series = id, tier = tier.name(), "store: an unreadable block was replaced while sealing");
                }
                Err(e) => return Err(e),
            }
        }
        rows.sort_dedup();
        if !rows.is_empty() {
            merged.push((id, rows));
        }
    }
    // Raw blocks of a window with the same timestamps (a host's series)
    // share one column of them; rollup rows are a bucket's start, which
    // compress to almost nothing in each block.
    let shared = if tier == Tier::Raw {
        stamps::sharing(merged.iter().map(|(_, rows)| rows))
    } else {
        vec![None; merged.len()]
    };
    let mut written = HashSet::new();
    for ((id, rows), stamp) in merged.iter().zip(shared) {
        let delta = deltas.for_block(*id, tier, w);
        let (block, used) = match stamp {
            Some(h) => {
                if written.insert(h) {
                    ops.push(Op::Put(
                        Table::Stamps,
                        stamp_key(t, w, h).to_vec(),
                        encode_stamps(&rows.ts)?,
                    ));
                }
                encode_block_shared(rows, h, |_| delta)?
            }
            None => encode_block_with(rows, |_| delta)?,
        };
        deltas.used(*id, tier, &used);
        ops.push(Op::Put(
            Table::ByTime,
            time_key(t, w, *id).to_vec(),
            ((block.len() + 13) as u32).to_be_bytes().to_vec(),
        ));
        ops.push(Op::Put(Table::Blocks, block_key(*id, t, w).to_vec(), block));
    }
    let blocks = merged.len();
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_consecutive_series_share_a_slice() {
        let r = Rotation::new(30);
        assert_eq!(r.slice_of(0), r.slice_of(SLICE_RUN - 1));
        assert_eq!(r.slice_of(SLICE_RUN), 1);
        assert_eq!(r.slice_of(30 * SLICE_RUN + 5), 0);
        assert_eq!(r.flushes_until(SLICE_RUN, 0), 2);
        assert_eq!(r.flushes_until(0, 1), 30);
    }

    #[test]
    fn a_record_is_trimmed_once_every_slice_passed_it() {
        let mut r = Rotation::new(3);
        // Steps 0, 1, 2 write records; slices 0, 1, 2 are checkpointed.
        for step in 0..3u64 {
            let slice = r.slice_at(step);
            let n = r.trimmable(step, slice);
            assert_eq!(n, usize::from(step == 2), "step {step}");
            r.committed(step, slice, n, true);
        }
        // Record 0 went at step 2 (slices 1 and 2 since, 0 in its own flush).
        assert_eq!(r.records(9).collect::<Vec<_>>(), [1, 2]);
        let n = r.trimmable(3, r.slice_at(3));
        assert_eq!(r.records(n).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_series_reuses_its_last_raw_blocks_delta_encoding_and_searches_again_in_turn() {
        let mut d = Deltas::default();
        let raw = Tier::Raw.window_ms();
        // Series 3: window 5 searches ((5 + 3) % 8 == 0); none known yet
        // for window 6 either.
        assert_eq!(d.for_block(3, Tier::Raw, 5 * raw), Delta::Search);
        assert_eq!(d.for_block(3, Tier::Raw, 6 * raw), Delta::Search);
        d.used(3, Tier::Raw, &[Delta::Consecutive(2)]);
        for w in 6..13 {
            assert_eq!(d.for_block(3, Tier::Raw, w * raw), Delta::Consecutive(2));
        }
        assert_eq!(d.for_block(3, Tier::Raw, 13 * raw), Delta::Search);
        // Each series its own; other series search in other windows.
        assert_eq!(d.for_block(4, Tier::Raw, 6 * raw), Delta::Search);
        d.used(4, Tier::Raw, &[Delta::None]);
        assert_eq!(d.for_block(4, Tier::Raw, 5 * raw), Delta::None);
        assert_eq!(d.for_block(4, Tier::Raw, 12 * raw), Delta::Search);
        // Rollups always search, and leave the raw choice alone.
        d.used(3, Tier::Minute, &[Delta::None; 5]);
        assert_eq!(d.for_block(3, Tier::Minute, 0), Delta::Search);
        assert_eq!(d.for_block(3, Tier::Raw, 7 * raw), Delta::Consecutive(2));
    }

    #[test]
    fn seals_are_spread_over_the_tiers_spread() {
        let mut s = Seals::new(2_000);
        s.push((0..67_400).map(|id| (id, Tier::Raw, 0)));
        // Raw windows: spread over 675 s of 2 s flushes, 200 a flush.
        let mut flushes = 0;
        while s.len() > 0 {
            assert_eq!(s.due().len(), 200);
            flushes += 1;
        }
        assert_eq!(flushes, 337);
        assert!(s.due().is_empty());
        // A few are sealed at once, each once.
        s.push([
            (1, Tier::Minute, 0),
            (2, Tier::Minute, 0),
            (1, Tier::Minute, 0),
        ]);
        assert_eq!(s.due().len(), 2);
        assert_eq!(s.len(), 0);
    }
}
