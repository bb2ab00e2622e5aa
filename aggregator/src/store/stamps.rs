//! Timestamp columns shared by the raw blocks of a window.
//!
//! A host's series are sampled together: every field of one sample has the
//! same timestamp, so most of a host's raw blocks of a window hold the
//! same timestamps. On real agents' samples (jittery by a few ms to a few
//! hundred) a block's own timestamp column took 0.53–0.58 of the 1.0–1.1
//! bytes per value (BENCHMARKS.md, "Bytes per value on real agents'
//! samples"). So a seal writes each distinct timestamp column of its raw
//! blocks once, in the `stamps` table under
//! `u8 tier | i64 window | u64 hash of the timestamps` (big endian), and
//! each block that holds those timestamps names the column by its hash
//! ([`super::codec::encode_block_shared`]). A column only one block of the
//! seal holds stays in that block.
//!
//! A column is written once and never changed: a window sealed again
//! (late rows) writes the new timestamps under their own hash, and the
//! blocks not sealed again keep naming the old column. Columns go with
//! their window ([`delete_through`]). Two different timestamp columns of
//! one window with the same 64-bit hash would be confused (within a seal
//! they are compared, and the second keeps its own; across seals the later
//! one replaces the earlier): with 10,000 columns a window the odds are
//! about 3 × 10^-12, and a block's row count is checked against its
//! column's.
//!
//! [`Blocks`] reads blocks back, fetching the columns they name.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::StoreError;
use super::codec::{CodecError, block_stamp, decode_block_at, decode_stamps};
use super::engine::{Engine, Op, Table, parse_block_key};
use super::tier::Rows;

/// Key of a shared timestamp column.
pub fn stamp_key(tier: u8, window: i64, hash: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = tier;
    k[1..9].copy_from_slice(&window.max(0).to_be_bytes());
    k[9..].copy_from_slice(&hash.to_be_bytes());
    k
}

/// (tier, window, hash) of a `stamps` key.
pub fn parse_stamp_key(k: &[u8]) -> Option<(u8, i64, u64)> {
    (k.len() == 17).then(|| {
        (
            k[0],
            i64::from_be_bytes(k[1..9].try_into().expect("8")),
            u64::from_be_bytes(k[9..].try_into().expect("8")),
        )
    })
}

/// The hash naming timestamp column `ts`. Only writers compute it (a block
/// stores it), so it need not be stable across builds.
pub fn hash(ts: &[i64]) -> u64 {
    let mut h = DefaultHasher::new();
    i64::hash_slice(ts, &mut h);
    h.finish()
}

/// For each series' rows of one seal (in series order), the hash of its
/// timestamps if a column of them is to be shared (another series of the
/// seal has the same timestamps), else `None`. Neighbours (a host's
/// series) are compared before any hashing; timestamps whose hash another
/// column of the seal has already are compared with that column, and keep
/// their own if they differ.
pub fn sharing<'a>(rows: impl Iterator<Item = &'a Rows>) -> Vec<Option<u64>> {
    let mut hashes: Vec<Option<u64>> = Vec::new();
    // Per hash: the first timestamps with it, and how many series have them.
    let mut columns: HashMap<u64, (&[i64], u32)> = HashMap::new();
    let mut prev: Option<&[i64]> = None;
    for r in rows {
        let ts = r.ts.as_slice();
        let h = match (prev, hashes.last()) {
            (Some(p), Some(h)) if p == ts => *h,
            _ => {
                let h = hash(ts);
                let first = columns.entry(h).or_insert((ts, 0)).0;
                (first == ts).then_some(h)
            }
        };
        if let Some(h) = h {
            columns.get_mut(&h).expect("entered").1 += 1;
        }
        hashes.push(h);
        prev = Some(ts);
    }
    hashes
        .into_iter()
        .map(|h| h.filter(|h| columns[h].1 > 1))
        .collect()
}

/// Adds to `ops` the deletion of the shared columns of `tier`'s windows up
/// to `last` (included); returns the bytes (keys and values) deleted. The
/// caller deletes those windows' blocks first, in transactions that commit
/// before these ops.
pub fn delete_through(
    engine: &dyn Engine,
    tier: u8,
    last: i64,
    ops: &mut Vec<Op>,
) -> Result<u64, StoreError> {
    let mut bytes = 0u64;
    engine.scan(
        Table::Stamps,
        &stamp_key(tier, 0, 0),
        &stamp_key(tier, last.saturating_add(1), 0),
        &mut |k, v| {
            bytes += (k.len() + v.len()) as u64;
            ops.push(Op::Delete(Table::Stamps, k.to_vec()));
            true
        },
    )?;
    Ok(bytes)
}

/// The shared timestamp column a block names.
pub struct Column {
    /// Its key in `stamps`.
    pub key: [u8; 17],
    /// Its timestamps; `None` when it is not there.
    pub ts: Option<Arc<[i64]>>,
}

/// Columns a [`Blocks`] keeps before it starts again: a reader of a whole
/// store walks blocks in series order, over every window.
const CACHED: usize = 1024;

/// Sealed blocks read back, the shared columns they name fetched once each
/// (the last [`CACHED`]).
pub struct Blocks<'a> {
    engine: &'a dyn Engine,
    columns: HashMap<[u8; 17], Arc<[i64]>>,
}

impl<'a> Blocks<'a> {
    /// Reads through `engine`.
    pub fn new(engine: &'a dyn Engine) -> Self {
        Self {
            engine,
            columns: HashMap::new(),
        }
    }

    /// The shared column `block` (under `key` in `blocks`) names, if any.
    pub fn column(&mut self, key: &[u8], block: &[u8]) -> Result<Option<Column>, StoreError> {
        let Some(hash) = block_stamp(block)? else {
            return Ok(None);
        };
        let (_, tier, w) = parse_block_key(key).ok_or(CodecError::Corrupt("block key"))?;
        let k = stamp_key(tier, w, hash);
        if let Some(ts) = self.columns.get(&k) {
            return Ok(Some(Column {
                key: k,
                ts: Some(ts.clone()),
            }));
        }
        let ts: Option<Arc<[i64]>> = match self.engine.get(Table::Stamps, &k)? {
            Some(v) => Some(decode_stamps(&v)?.into()),
            None => None,
        };
        if let Some(ts) = &ts {
            if self.columns.len() >= CACHED {
                self.columns.clear();
            }
            self.columns.insert(k, ts.clone());
        }
        Ok(Some(Column { key: k, ts }))
    }

    /// Decodes `block` (under `key` in `blocks`). A block naming a column
    /// that is not there is corrupt.
    pub fn decode(&mut self, key: &[u8], block: &[u8]) -> Result<Rows, StoreError> {
        match self.column(key, block)? {
            None => Ok(decode_block_at(block, None)?),
            Some(Column { ts: Some(ts), .. }) => Ok(decode_block_at(block, Some(&ts))?),
            Some(Column { ts: None, .. }) => {
                Err(CodecError::Corrupt("its shared timestamps are missing").into())
            }
        }
    }
}
