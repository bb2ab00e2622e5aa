//! The open chunks: the rows each checkpoint moved out of the log, until
//! their window is sealed. They are kept as groups, one per checkpoint,
//! run of consecutive series ([`run_len`]), tier and window, so that a
//! checkpoint appends a few large values at the end of each run's range in
//! the table instead of inserting one small value per series, each on a
//! page of its own (at 10,000 hosts, ~22,000 pages copied per flush, and
//! more as the window fills).
//!
//! Key (`open` table, big endian): tier (u8) · run (u32) · window start
//! (i64) · stamp (i64), where the stamp is the newest row's time in the
//! group, made larger than the stamp of the group before it when needed.
//! So a run's groups of one window are in checkpoint order, and a group
//! holding rows at or after `t` has a stamp at or after `t`.
//!
//! Group: `chunks | n × (u32 series, u32 end) | u32 n`, series ascending
//! (a series may appear twice), `end` the offset just past the series'
//! chunk in the chunk bytes, each chunk [`codec::append_chunk`]'s. The
//! directory goes last so that a group is built in one buffer, in place.
//!
//! A window is sealed per run ([`super::checkpoint::seal`]): one scan of
//! its groups, one block per series.

use std::collections::BTreeMap;

use super::StoreError;
use super::codec::{self, CodecError};
use super::engine::{Engine, Entry, Op, Table};
use super::tier::{Rows, Tier};

/// Consecutive series ids whose raw chunks share a group.
pub const RUN: u32 = 256;

/// Consecutive series ids whose rollup chunks share a group: a minute
/// group holds one row per series and a day's window 1,440 groups, which a
/// query of one series' day reads through.
pub const ROLLUP_RUN: u32 = 32;

/// Consecutive series ids whose chunks of `tier` share a group (a divisor
/// of [`RUN`]).
pub fn run_len(tier: Tier) -> u32 {
    match tier {
        Tier::Raw => RUN,
        Tier::Minute | Tier::Hour => ROLLUP_RUN,
    }
}

/// The run of series `id` in `tier`.
pub fn run_of(id: u32, tier: Tier) -> u32 {
    id / run_len(tier)
}

/// Key of a group.
pub fn group_key(tier: u8, run: u32, window: i64, stamp: i64) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = tier;
    k[1..5].copy_from_slice(&run.to_be_bytes());
    k[5..13].copy_from_slice(&window.max(0).to_be_bytes());
    k[13..].copy_from_slice(&stamp.max(0).to_be_bytes());
    k
}

/// (tier, run, window, stamp) of a group key.
pub fn parse_group_key(k: &[u8]) -> Option<(u8, u32, i64, i64)> {
    (k.len() == 21).then(|| {
        (
            k[0],
            u32::from_be_bytes(k[1..5].try_into().expect("4")),
            i64::from_be_bytes(k[5..13].try_into().expect("8")),
            i64::from_be_bytes(k[13..].try_into().expect("8")),
        )
    })
}

/// One group being built.
#[derive(Debug, Default)]
struct Building {
    dir: Vec<(u32, u32)>,
    chunks: Vec<u8>,
    newest: i64,
    sorted: bool,
}

/// The groups one transaction writes, by (tier, run, window).
#[derive(Debug, Default)]
pub struct Groups {
    groups: BTreeMap<(u8, u32, i64), Building>,
}

impl Groups {
    /// Adds `rows` (not empty, all in `window`) of series `id` in `tier`.
    pub fn add(&mut self, id: u32, tier: Tier, window: i64, rows: &Rows) {
        let Some(&newest) = rows.ts.last() else {
            return;
        };
        let g = self
            .groups
            .entry((tier as u8, run_of(id, tier), window))
            .or_insert_with(|| Building {
                newest: i64::MIN,
                sorted: true,
                ..Building::default()
            });
        if g.dir.last().is_some_and(|(last, _)| *last > id) {
            g.sorted = false;
        }
        codec::append_chunk(rows, &mut g.chunks);
        g.dir.push((id, g.chunks.len() as u32));
        g.newest = g.newest.max(newest);
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Adds the groups' puts to `ops`; each stamp follows the last group of
    /// its run and window on disk.
    pub fn write(self, engine: &dyn Engine, ops: &mut Vec<Op>) -> Result<(), StoreError> {
        for ((tier, run, window), g) in self.groups {
            let (lo, hi) = (
                group_key(tier, run, window, 0),
                group_key(tier, run, window, i64::MAX),
            );
            let after = engine
                .last_key(Table::Open, &lo, &hi)?
                .and_then(|k| parse_group_key(&k))
                .map_or(i64::MIN, |(.., stamp)| stamp.saturating_add(1));
            let stamp = g.newest.max(after).max(0);
            ops.push(Op::Put(
                Table::Open,
                group_key(tier, run, window, stamp).to_vec(),
                encode(g),
            ));
        }
        Ok(())
    }
}

fn encode(g: Building) -> Vec<u8> {
    let n = (g.dir.len() as u32).to_be_bytes();
    if g.sorted {
        let mut out = g.chunks;
        out.reserve_exact(g.dir.len() * 8 + 4);
        for (id, end) in &g.dir {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
        }
        out.extend_from_slice(&n);
        return out;
    }
    let mut out = Vec::with_capacity(4 + g.dir.len() * 8 + g.chunks.len());
    // Chunks in series order (stable: a series' chunks keep their order).
    let mut spans: Vec<(u32, u32, u32)> = Vec::with_capacity(g.dir.len());
    let mut start = 0;
    for (id, end) in &g.dir {
        spans.push((*id, start, *end));
        start = *end;
    }
    spans.sort_by_key(|s| s.0);
    for (_, s, e) in &spans {
        out.extend_from_slice(&g.chunks[*s as usize..*e as usize]);
    }
    let mut end = 0u32;
    for (id, s, e) in &spans {
        end += e - s;
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&end.to_be_bytes());
    }
    out.extend_from_slice(&n);
    out
}

/// A stored group, read in place.
pub struct Group<'a> {
    dir: &'a [u8],
    chunks: &'a [u8],
}

impl<'a> Group<'a> {
    /// Reads a group's directory.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let at = bytes
            .len()
            .checked_sub(4)
            .ok_or(CodecError::Corrupt("group trailer"))?;
        let n = u32::from_be_bytes(bytes[at..].try_into().expect("4")) as usize;
        let start = n
            .checked_mul(8)
            .and_then(|d| at.checked_sub(d))
            .ok_or(CodecError::Corrupt("group directory"))?;
        let (chunks, dir) = (&bytes[..start], &bytes[start..at]);
        let group = Self { dir, chunks };
        if n > 0 && group.end(n - 1) as usize > chunks.len() {
            return Err(CodecError::Corrupt("group length"));
        }
        Ok(group)
    }

    fn len(&self) -> usize {
        self.dir.len() / 8
    }

    fn id(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.dir[i * 8..i * 8 + 4].try_into().expect("4"))
    }

    fn end(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.dir[i * 8 + 4..i * 8 + 8].try_into().expect("4"))
    }

    fn chunk(&self, i: usize) -> Result<&'a [u8], CodecError> {
        let start = if i == 0 { 0 } else { self.end(i - 1) } as usize;
        self.chunks
            .get(start..self.end(i) as usize)
            .ok_or(CodecError::Corrupt("group entry"))
    }

    /// Every (series, chunk), in series order.
    pub fn entries(&self) -> impl Iterator<Item = Result<(u32, &'a [u8]), CodecError>> + '_ {
        (0..self.len()).map(|i| self.chunk(i).map(|c| (self.id(i), c)))
    }

    /// Decodes the chunks of series `id` into `into`; whether it has any.
    pub fn read(&self, id: u32, into: &mut Rows) -> Result<bool, CodecError> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.id(mid) < id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut found = false;
        let mut i = lo;
        while i < self.len() && self.id(i) == id {
            codec::decode_chunk(self.chunk(i)?, into)?;
            found = true;
            i += 1;
        }
        Ok(found)
    }
}

/// Appends to `into` the rows of series `id` in `tier` held by groups of
/// windows from `tier.window_of(from)` to `tier.window_of(to - 1)` whose
/// stamp is at or after `from` (rows outside `[from, to)` included: the
/// caller trims).
pub fn read_open(
    engine: &dyn Engine,
    id: u32,
    tier: Tier,
    from: i64,
    to: i64,
    into: &mut Rows,
) -> Result<(), StoreError> {
    let (t, run) = (tier as u8, run_of(id, tier));
    let (first, last) = (tier.window_of(from), tier.window_of(to.saturating_sub(1)));
    let start = group_key(t, run, first, from);
    let end = group_key(t, run, last, i64::MAX);
    scan_groups(engine, &start, &end, &mut |k, group| {
        if parse_group_key(k).is_some_and(|(.., stamp)| stamp < from) {
            return Ok(true); // a later window's group from before `from`
        }
        group.read(id, into)?;
        Ok(true)
    })
}

/// A visitor of (key, group): false stops the scan.
type GroupVisit<'v> = dyn FnMut(&[u8], Group<'_>) -> Result<bool, CodecError> + 'v;

/// Visits the groups with keys in `[from, to)` until `visit` returns false;
/// the first that does not decode ends the scan with its error.
fn scan_groups(
    engine: &dyn Engine,
    from: &[u8],
    to: &[u8],
    visit: &mut GroupVisit<'_>,
) -> Result<(), StoreError> {
    let mut failure = None;
    engine.scan(
        Table::Open,
        from,
        to,
        &mut |k, v| match Group::parse(v).and_then(|g| visit(k, g)) {
            Ok(go_on) => go_on,
            Err(e) => {
                failure = Some(e);
                false
            }
        },
    )?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The newest window of series `id` in `tier` among the groups, and its
/// newest row's time there.
pub fn newest(engine: &dyn Engine, id: u32, tier: Tier) -> Result<Option<(i64, i64)>, StoreError> {
    newest_from(engine, id, tier, &mut None)
}

/// The newest group of a run in one tier, as last read.
pub type LastGroup = Option<(u32, Entry)>;

/// [`newest`], starting from `last` when it is the newest group of the
/// run of `id` (it becomes that group): the series of one host, resumed
/// one after the other, read it once. Valid until the next write.
pub fn newest_from(
    engine: &dyn Engine,
    id: u32,
    tier: Tier,
    last: &mut LastGroup,
) -> Result<Option<(i64, i64)>, StoreError> {
    let (t, run) = (tier as u8, run_of(id, tier));
    let lo = group_key(t, run, 0, 0);
    let mut hi = group_key(t, run, i64::MAX, i64::MAX).to_vec();
    if last.as_ref().is_none_or(|(r, _)| *r != run) {
        *last = engine.last(Table::Open, &lo, &hi)?.map(|e| (run, e));
    }
    let Some((_, (k, v))) = last.as_ref() else {
        return Ok(None);
    };
    if let Some(found) = newest_in(k, v, id, tier)? {
        return Ok(Some(found));
    }
    // A series missing from its run's newest group (a host gone quiet)
    // costs one look per group back to its own.
    hi.clone_from(k);
    while let Some((k, v)) = engine.last(Table::Open, &lo, &hi)? {
        if let Some(found) = newest_in(&k, &v, id, tier)? {
            return Ok(Some(found));
        }
        hi = k;
    }
    Ok(None)
}

/// The window of group `k` and the newest time of series `id` in it, if
/// it has rows of `id`.
fn newest_in(k: &[u8], v: &[u8], id: u32, tier: Tier) -> Result<Option<(i64, i64)>, StoreError> {
    let mut rows = Rows::new(tier.cols());
    if !Group::parse(v)?.read(id, &mut rows)? {
        return Ok(None);
    }
    Ok(parse_group_key(k)
        .zip(rows.ts.iter().max())
        .map(|((.., window, _), ts)| (window, *ts)))
}

/// Visits every open chunk as (series, tier, chunk bytes), group by group,
/// until `visit` returns false.
pub fn for_each_chunk(
    engine: &dyn Engine,
    visit: &mut dyn FnMut(u32, Tier, &[u8]) -> bool,
) -> Result<(), StoreError> {
    scan_groups(engine, &[], &[0xff; 22], &mut |k, group| {
        let Some(tier) = parse_group_key(k).and_then(|(t, ..)| Tier::from_u8(t)) else {
            return Ok(true);
        };
        for entry in group.entries() {
            let (id, chunk) = entry?;
            if !visit(id, tier, chunk) {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Every (tier, run, window) with groups, in key order: the first group
/// of each window, then a seek past the window's other groups (a window
/// holds one group per checkpoint that wrote it: 15 for a raw window, up
/// to 1,440 for a minute tier's day), so the open reads one entry a window
/// rather than every open chunk of the store.
pub fn windows(engine: &dyn Engine) -> Result<Vec<(Tier, u32, i64)>, StoreError> {
    let mut out: Vec<(Tier, u32, i64)> = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let mut first = None;
        engine.scan(Table::Open, &from, &[0xff; 22], &mut |k, _| {
            first = Some(k.to_vec());
            false
        })?;
        let Some(k) = first else {
            return Ok(out);
        };
        from = match parse_group_key(&k) {
            Some((t, run, w, _)) => {
                if let Some(tier) = Tier::from_u8(t) {
                    out.push((tier, run, w));
                }
                group_key(t, run, w, i64::MAX).to_vec()
            }
            // Not a group's key: only itself is skipped.
            None => k,
        };
        from.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ts: &[i64]) -> Rows {
        let mut r = Rows::new(1);
        for t in ts {
            r.push(*t, &[*t as f64 / 1000.0]);
        }
        r
    }

    #[test]
    fn a_group_reads_back_each_series_chunks_in_order() {
        let mut g = Groups::default();
        g.add(7, Tier::Raw, 0, &rows(&[1_000, 2_000]));
        g.add(3, Tier::Raw, 0, &rows(&[1_500]));
        g.add(7, Tier::Raw, 0, &rows(&[3_000]));
        let (_, b) = g.groups.pop_first().unwrap();
        assert_eq!(b.newest, 3_000);
        let bytes = encode(b);
        let group = Group::parse(&bytes).unwrap();
        let ids: Vec<u32> = group.entries().map(|e| e.unwrap().0).collect();
        assert_eq!(ids, [3, 7, 7]);
        let mut got = Rows::new(1);
        assert!(group.read(7, &mut got).unwrap());
        assert_eq!(got.ts, [1_000, 2_000, 3_000]);
        assert!(!group.read(5, &mut got).unwrap());
        assert!(Group::parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(Group::parse(&bytes[1..]).is_err());
    }

    #[test]
    fn windows_lists_each_window_once_seeking_past_its_groups() {
        use crate::store::engine::Redb;
        let dir = crate::store::tests::temp_dir("chunk-windows");
        let engine = Redb::open(&dir).unwrap();
        let mut ops: Vec<Op> = [
            (0, 1, 900, 1),
            (0, 1, 900, 2),
            (0, 1, 900, 3),
            (0, 1, 1800, 5),
            (0, 2, 0, 7),
            (1, 1, 0, 9),
            (1, 1, 0, 10),
            (2, 3, 0, 11),
        ]
        .into_iter()
        .map(|(t, run, w, stamp)| {
            Op::Put(Table::Open, group_key(t, run, w, stamp).to_vec(), vec![t])
        })
        .collect();
        // Keys that are not a group's (a tier unknown, a short key) are skipped.
        ops.push(Op::Put(Table::Open, group_key(9, 0, 0, 0).to_vec(), vec![]));
        ops.push(Op::Put(Table::Open, vec![0, 1], vec![]));
        engine.apply(&ops).unwrap();
        assert_eq!(
            windows(&engine).unwrap(),
            vec![
                (Tier::Raw, 1, 900),
                (Tier::Raw, 1, 1800),
                (Tier::Raw, 2, 0),
                (Tier::Minute, 1, 0),
                (Tier::Hour, 3, 0),
            ]
        );
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn group_keys_order_tier_run_window_stamp() {
        let k = group_key(1, 2, 3, 4);
        assert_eq!(parse_group_key(&k), Some((1, 2, 3, 4)));
        assert!(group_key(0, 1, 900, 0) < group_key(0, 2, 0, 0));
        assert!(group_key(0, 1, 0, 5) < group_key(0, 1, 900, 0));
    }
}
