//! Bytes of the store: sealed blocks (column-wise and compressed) and open
//! chunks (the rows of one flush, plain).
//!
//! A sealed block holds one series' rows of one tier over one window, with
//! its own timestamps or naming a timestamp column it shares with other
//! series of its window ([`super::stamps`]):
//!
//! ```text
//! u8 version (1) | u8 columns | u32 rows | ts column | value columns...
//! u8 version (2) | u8 columns | u32 rows | u64 stamp | value columns...
//! column = u8 kind | u32 length | bytes
//! ```
//!
//! Timestamps are delta-encoded (the first, then differences) and the
//! deltas compressed with pco as integers (as they are, without pco's search
//! for a further delta encoding): at a steady one-second pace they
//! take almost nothing. A value column whose values are all whole numbers
//! (bytes, counts, counters) is compressed as 64-bit integers, any other as
//! 64-bit floats; pco finds the precision a float column really has (an f32
//! widened to f64, a percentage with two decimals) and a constant column
//! costs a few bytes. Decoding restores every value bit for bit. A value
//! column's delta encoding is pco's to choose ([`Delta::Search`]) or the
//! caller's ([`encode_block_with`]; the writer reuses a series' last one,
//! [`super::checkpoint::Deltas`]); the block does not record which, pco's
//! own bytes do.
//!
//! An open chunk is what one flush or checkpoint wrote for a series and tier
//! before its window closed; chunks are merged into a block when the window
//! is sealed. It is written often and read rarely (at a seal, a replay, a
//! query of an open window), so it is cheap to encode rather than small:
//!
//! ```text
//! u8 (0x80 | columns) | rows × (ts, value × columns)
//! ts    = zigzag varint: the first ts, then each delta minus the one before
//! value = its f64 bits XOR the column's previous bits (0 before the first):
//!         u8 0 when equal, else u8 (trailing zero bytes << 4 | n) and the
//!         n bytes between the leading and trailing zero bytes
//! ```
//!
//! At a steady pace a timestamp takes one byte, and a value 1 to 9 (an f32
//! widened to f64 about 4, a slowly moving counter 2 to 3) instead of 8.
//! The plain chunk of older builds, `u8 columns | rows × (i64 ts, f64 ×
//! columns)` little endian (the first byte below 0x80), still decodes: log
//! records and open chunks written before an upgrade are read back.

use pco::data_types::Number;
use pco::metadata::DeltaEncoding;
use pco::standalone::{FileCompressor, simple_decompress};
use pco::{ChunkConfig, DeltaSpec};

use super::tier::Rows;

const VERSION: u8 = 1;
/// A block whose timestamps are its window's shared column.
const VERSION_SHARED: u8 = 2;
const KIND_F64: u8 = 0;
const KIND_I64: u8 = 1;

/// Why bytes read back from the store could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Shorter than its header says, or an unknown version or kind.
    #[error("corrupt block: {0}")]
    Corrupt(&'static str),
    /// pco refused the column.
    #[error("column compression: {0}")]
    Pco(String),
}

fn pco_err(e: pco::errors::PcoError) -> CodecError {
    CodecError::Pco(e.to_string())
}

/// Largest integer a f64 holds exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

fn integral(values: &[f64]) -> bool {
    values
        .iter()
        .all(|v| v.fract() == 0.0 && v.abs() <= EXACT && !(*v == 0.0 && v.is_sign_negative()))
}

fn put_column(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A value column's delta encoding in pco.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delta {
    /// pco's choice: it compresses a sample of the column (200 values)
    /// without deltas, with lookback deltas, and with deltas of rising order
    /// while each is smaller, and keeps the smallest.
    Search,
    /// The values as they are.
    None,
    /// Differences between neighbours, taken `order` times.
    Consecutive(u8),
    /// Differences to an earlier value pco picks for each.
    Lookback,
}

impl Delta {
    fn spec(self) -> DeltaSpec {
        match self {
            Self::Search => DeltaSpec::Auto,
            Self::None => DeltaSpec::NoOp,
            Self::Consecutive(order) => DeltaSpec::TryConsecutive(usize::from(order)),
            Self::Lookback => DeltaSpec::TryLookback,
        }
    }

    fn of(encoding: &DeltaEncoding) -> Self {
        match encoding {
            DeltaEncoding::Consecutive { order, .. } => {
                Self::Consecutive((*order).min(usize::from(u8::MAX)) as u8)
            }
            DeltaEncoding::Lookback { .. } => Self::Lookback,
            _ => Self::None,
        }
    }
}

/// `nums` compressed by pco as one chunk (as `simple_compress` does for a
/// column of a block: under 2^18 values), and the delta encoding used.
fn compress<T: Number>(nums: &[T], delta: Delta) -> Result<(Vec<u8>, Delta), CodecError> {
    let config = ChunkConfig::default().with_delta_spec(delta.spec());
    let file = FileCompressor::default().with_n_hint(nums.len());
    let mut out = file.write_header(Vec::new()).map_err(pco_err)?;
    let mut used = Delta::None;
    if !nums.is_empty() {
        let mut chunk = file.chunk_compressor(nums, &config).map_err(pco_err)?;
        used = Delta::of(&chunk.meta().delta_encoding);
        out = chunk.write(out).map_err(pco_err)?;
    }
    Ok((file.write_footer(out).map_err(pco_err)?, used))
}

/// Compresses `rows` into a sealed block, pco choosing each value column's
/// delta encoding ([`Delta::Search`]).
pub fn encode_block(rows: &Rows) -> Result<Vec<u8>, CodecError> {
    encode_block_with(rows, |_| Delta::Search).map(|(block, _)| block)
}

/// Compresses `rows` into a sealed block with value column `i` delta
/// encoded as `delta(i)` says; returns the block and the encoding each
/// value column got.
pub fn encode_block_with(
    rows: &Rows,
    delta: impl FnMut(usize) -> Delta,
) -> Result<(Vec<u8>, Vec<Delta>), CodecError> {
    let mut out = header(VERSION, rows);
    put_column(&mut out, KIND_I64, &encode_stamps(&rows.ts)?);
    let used = put_values(&mut out, rows, delta)?;
    Ok((out, used))
}

/// As [`encode_block_with`], without the timestamps: the block names them
/// by `stamp`, the key of its window's timestamp column that holds
/// `rows.ts` ([`encode_stamps`], [`super::stamps`]).
pub fn encode_block_shared(
    rows: &Rows,
    stamp: u64,
    delta: impl FnMut(usize) -> Delta,
) -> Result<(Vec<u8>, Vec<Delta>), CodecError> {
    let mut out = header(VERSION_SHARED, rows);
    out.extend_from_slice(&stamp.to_le_bytes());
    let used = put_values(&mut out, rows, delta)?;
    Ok((out, used))
}

fn header(version: u8, rows: &Rows) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + rows.len());
    out.push(version);
    out.push(rows.cols.len() as u8);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    out
}

fn put_values(
    out: &mut Vec<u8>,
    rows: &Rows,
    mut delta: impl FnMut(usize) -> Delta,
) -> Result<Vec<Delta>, CodecError> {
    let mut used = Vec::with_capacity(rows.cols.len());
    for (i, col) in rows.cols.iter().enumerate() {
        let (kind, (bytes, got)) = if integral(col) {
            let ints: Vec<i64> = col.iter().map(|v| *v as i64).collect();
            (KIND_I64, compress(&ints, delta(i))?)
        } else {
            (KIND_F64, compress(col, delta(i))?)
        };
        put_column(out, kind, &bytes);
        used.push(got);
    }
    Ok(used)
}

/// A timestamp column, compressed: the first timestamp and the
/// differences, as pco integers. Already deltas: no search for a delta
/// encoding of them (which would cost as much as compressing the values),
/// they compress as they are.
pub fn encode_stamps(ts: &[i64]) -> Result<Vec<u8>, CodecError> {
    let mut deltas = Vec::with_capacity(ts.len());
    let mut prev = 0i64;
    for &t in ts {
        deltas.push(t.wrapping_sub(prev));
        prev = t;
    }
    Ok(compress(&deltas, Delta::None)?.0)
}

/// The timestamps of [`encode_stamps`]' bytes.
pub fn decode_stamps(bytes: &[u8]) -> Result<Vec<i64>, CodecError> {
    let deltas: Vec<i64> = simple_decompress(bytes).map_err(pco_err)?;
    let mut acc = 0i64;
    Ok(deltas
        .iter()
        .map(|d| {
            acc = acc.wrapping_add(*d);
            acc
        })
        .collect())
}

/// The key of the shared timestamp column a block names, if it names one
/// (else its timestamps are its own).
pub fn block_stamp(block: &[u8]) -> Result<Option<u64>, CodecError> {
    let mut r = Reader(block);
    match r.u8()? {
        VERSION => Ok(None),
        VERSION_SHARED => {
            r.take(5)?; // columns, rows
            Ok(Some(r.u64()?))
        }
        _ => Err(CodecError::Corrupt("unknown block version")),
    }
}

/// Bytes of a sealed block's own timestamp column (pco's, without the
/// column's kind and length); 0 when it names a shared one.
pub fn timestamp_bytes(block: &[u8]) -> Result<usize, CodecError> {
    if block_stamp(block)?.is_some() {
        return Ok(0);
    }
    let mut r = Reader(block);
    r.take(6)?; // version, columns, rows
    Ok(r.column()?.1.len())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn column(&mut self) -> Result<(u8, &'a [u8]), CodecError> {
        let kind = self.u8()?;
        let len = self.u32()? as usize;
        Ok((kind, self.take(len)?))
    }
}

/// Decompresses a sealed block with its own timestamps.
pub fn decode_block(bytes: &[u8]) -> Result<Rows, CodecError> {
    decode_block_at(bytes, None)
}

/// Decompresses a sealed block; `shared` is the timestamp column it names
/// ([`block_stamp`]), if it names one.
pub fn decode_block_at(bytes: &[u8], shared: Option<&[i64]>) -> Result<Rows, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    let ncols = r.u8()? as usize;
    let n = r.u32()? as usize;
    let mut rows = Rows::new(0);
    match (version, shared) {
        (VERSION, _) => rows.ts = decode_stamps(r.column()?.1)?,
        (VERSION_SHARED, Some(ts)) => {
            r.u64()?;
            rows.ts = ts.to_vec();
        }
        (VERSION_SHARED, None) => {
            return Err(CodecError::Corrupt("shared timestamps not given"));
        }
        _ => return Err(CodecError::Corrupt("unknown block version")),
    }
    if rows.ts.len() != n {
        return Err(CodecError::Corrupt("timestamp count"));
    }
    for _ in 0..ncols {
        let (kind, data) = r.column()?;
        let col: Vec<f64> = match kind {
            KIND_F64 => simple_decompress(data).map_err(pco_err)?,
            KIND_I64 => simple_decompress::<i64>(data)
                .map_err(pco_err)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            _ => return Err(CodecError::Corrupt("unknown column kind")),
        };
        if col.len() != n {
            return Err(CodecError::Corrupt("column length"));
        }
        rows.cols.push(col);
    }
    Ok(rows)
}

/// The first byte of a compact chunk: this flag and the column count.
const COMPACT: u8 = 0x80;

/// Encodes rows as an open chunk.
pub fn encode_chunk(rows: &Rows) -> Vec<u8> {
    let mut out = Vec::new();
    append_chunk(rows, &mut out);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn put_xor(out: &mut Vec<u8>, x: u64) {
    if x == 0 {
        out.push(0);
        return;
    }
    let trail = x.trailing_zeros() / 8;
    let n = 8 - x.leading_zeros() / 8 - trail;
    out.push((trail << 4 | n) as u8);
    out.extend_from_slice(&(x >> (8 * trail)).to_le_bytes()[..n as usize]);
}

/// Appends `rows` as an open chunk to `out`.
pub fn append_chunk(rows: &Rows, out: &mut Vec<u8>) {
    let ncols = rows.cols.len();
    out.reserve(1 + rows.len() * (2 + 5 * ncols));
    out.push(COMPACT | ncols as u8);
    let (mut prev_ts, mut prev_delta) = (0i64, 0i64);
    let mut prev = [0u64; 8];
    for i in 0..rows.len() {
        let ts = rows.ts[i];
        let delta = ts.wrapping_sub(prev_ts);
        put_varint(out, zigzag(delta.wrapping_sub(prev_delta)));
        (prev_ts, prev_delta) = (ts, if i == 0 { 0 } else { delta });
        for (c, col) in rows.cols.iter().enumerate() {
            let bits = col[i].to_bits();
            put_xor(out, bits ^ prev[c]);
            prev[c] = bits;
        }
    }
}

/// Reads compact chunk bytes one field at a time.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(CodecError::Corrupt("chunk timestamp"))
    }

    fn xor(&mut self) -> Result<u64, CodecError> {
        let (&head, rest) = self
            .0
            .split_first()
            .ok_or(CodecError::Corrupt("chunk length"))?;
        let (trail, n) = (u32::from(head >> 4), usize::from(head & 0x0f));
        if head != 0 && (n == 0 || trail as usize + n > 8) {
            return Err(CodecError::Corrupt("chunk value"));
        }
        let bytes = rest.get(..n).ok_or(CodecError::Corrupt("chunk length"))?;
        let mut word = [0u8; 8];
        word[..n].copy_from_slice(bytes);
        self.0 = &rest[n..];
        Ok(u64::from_le_bytes(word) << (8 * trail))
    }
}

/// Decodes an open chunk, appending its rows to `into` (same columns).
pub fn decode_chunk(bytes: &[u8], into: &mut Rows) -> Result<(), CodecError> {
    let (&head, body) = bytes
        .split_first()
        .ok_or(CodecError::Corrupt("empty chunk"))?;
    let ncols = usize::from(head & !COMPACT);
    if ncols != into.cols.len() {
        return Err(CodecError::Corrupt("chunk columns"));
    }
    if head & COMPACT == 0 {
        return decode_plain(body, into);
    }
    let mut f = Fields(body);
    let (mut ts, mut delta) = (0i64, 0i64);
    let mut prev = [0u64; 8];
    let mut first = true;
    while !f.0.is_empty() {
        let dod = unzigzag(f.varint()?);
        if first {
            ts = dod;
            first = false;
        } else {
            delta = delta.wrapping_add(dod);
            ts = ts.wrapping_add(delta);
        }
        into.ts.push(ts);
        for (c, col) in into.cols.iter_mut().enumerate() {
            prev[c] ^= f.xor()?;
            col.push(f64::from_bits(prev[c]));
        }
    }
    Ok(())
}

/// The plain chunk of older builds.
fn decode_plain(body: &[u8], into: &mut Rows) -> Result<(), CodecError> {
    let row = 8 * (1 + into.cols.len());
    if !body.len().is_multiple_of(row) {
        return Err(CodecError::Corrupt("chunk length"));
    }
    for r in body.chunks_exact(row) {
        into.ts
            .push(i64::from_le_bytes(r[..8].try_into().expect("8 bytes")));
        for (c, col) in into.cols.iter_mut().enumerate() {
            let at = 8 * (1 + c);
            col.push(f64::from_le_bytes(
                r[at..at + 8].try_into().expect("8 bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pco::standalone::simple_compress;

    fn walk(n: usize, seed: u64) -> Rows {
        let mut rows = Rows::new(1);
        let mut v = 50.0f32;
        let mut x = seed;
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v = (v + ((x >> 33) as f32 / u32::MAX as f32 - 0.25)).clamp(0.0, 100.0);
            rows.push(1_795_000_000_000 + i as i64 * 1000, &[f64::from(v)]);
        }
        rows
    }

    #[test]
    fn blocks_round_trip_bit_for_bit() {
        let rows = walk(900, 7);
        let bytes = encode_block(&rows).unwrap();
        assert_eq!(decode_block(&bytes).unwrap(), rows);
        // Integers, negatives, gaps in time, five columns.
        let mut r = Rows::new(5);
        for i in 0..100i64 {
            let t = 1_795_000_000_000 + i * 60_000 + (i % 7) * 13;
            r.push(t, &[-3.0, 1e15 + i as f64, 0.1 * i as f64, 60.0, f64::MAX]);
        }
        assert_eq!(decode_block(&encode_block(&r).unwrap()).unwrap(), r);
        let empty = Rows::new(1);
        assert_eq!(decode_block(&encode_block(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn a_steady_f32_walk_takes_about_two_bytes_and_counters_far_less() {
        let rows = walk(900, 3);
        let bytes = encode_block(&rows).unwrap();
        assert!(bytes.len() < 900 * 3, "{} bytes", bytes.len());
        let mut c = Rows::new(1);
        for i in 0..900i64 {
            c.push(
                1_795_000_000_000 + i * 1000,
                &[(1i64 << 40) as f64 + (i * 4096) as f64],
            );
        }
        let bytes = encode_block(&c).unwrap();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
    }

    #[test]
    fn every_delta_encoding_round_trips_and_is_reported_as_used() {
        // A counter rising by about the same step.
        let mut rows = Rows::new(1);
        for i in 0..900i64 {
            rows.push(1_795_000_000_000 + i * 1000, &[(i * 4096 + i % 3) as f64]);
        }
        let (block, used) = encode_block_with(&rows, |_| Delta::Search).unwrap();
        assert_eq!(block, encode_block(&rows).unwrap());
        assert_eq!(used, [Delta::Consecutive(1)], "the search on a counter");
        // Each column is the bytes pco's `simple_compress` makes, as blocks
        // written before the choice was the caller's.
        let mut r = Reader(&block[6..]);
        let (_, ts) = r.column().unwrap();
        let (_, values) = r.column().unwrap();
        let deltas: Vec<i64> = std::iter::once(rows.ts[0])
            .chain(rows.ts.windows(2).map(|w| w[1] - w[0]))
            .collect();
        let no_op = ChunkConfig::default().with_delta_spec(DeltaSpec::NoOp);
        assert_eq!(ts, simple_compress(&deltas, &no_op).unwrap());
        let ints: Vec<i64> = rows.cols[0].iter().map(|v| *v as i64).collect();
        assert_eq!(
            values,
            simple_compress(&ints, &ChunkConfig::default()).unwrap()
        );
        for delta in [
            Delta::None,
            Delta::Consecutive(1),
            Delta::Consecutive(2),
            Delta::Lookback,
        ] {
            let (block, used) = encode_block_with(&rows, |_| delta).unwrap();
            assert_eq!(used, [delta]);
            assert_eq!(decode_block(&block).unwrap(), rows, "{delta:?}");
        }
        let walk = walk(900, 11);
        let (block, used) = encode_block_with(&walk, |_| Delta::None).unwrap();
        assert_eq!(used, [Delta::None]);
        assert_eq!(decode_block(&block).unwrap(), walk);
    }

    #[test]
    fn a_block_naming_a_shared_timestamp_column_reads_back_with_it() {
        let rows = walk(900, 5);
        let column = encode_stamps(&rows.ts).unwrap();
        let (block, _) = encode_block_shared(&rows, 0xfeed, |_| Delta::Search).unwrap();
        let (own, _) = encode_block_with(&rows, |_| Delta::Search).unwrap();
        // The timestamps are all that differs: a hash in place of them.
        assert_eq!(block.len() + column.len() + 5, own.len() + 8);
        assert_eq!(block_stamp(&block).unwrap(), Some(0xfeed));
        assert_eq!(block_stamp(&own).unwrap(), None);
        assert_eq!(timestamp_bytes(&block).unwrap(), 0);
        assert_eq!(timestamp_bytes(&own).unwrap(), column.len());
        let ts = decode_stamps(&column).unwrap();
        assert_eq!(decode_block_at(&block, Some(&ts)).unwrap(), rows);
        assert_eq!(decode_block(&own).unwrap(), rows);
        // Without its column, or with one of another length, it is an
        // error rather than rows at the wrong times.
        assert!(decode_block(&block).is_err());
        assert!(decode_block_at(&block, Some(&ts[1..])).is_err());
    }

    #[test]
    fn chunks_round_trip_and_corruption_is_an_error() {
        let rows = walk(10, 1);
        let mut back = Rows::new(1);
        decode_chunk(&encode_chunk(&rows), &mut back).unwrap();
        assert_eq!(back, rows);
        assert!(decode_chunk(&[1, 2, 3], &mut Rows::new(1)).is_err());
        assert!(decode_block(&[1, 1, 5, 0, 0, 0]).is_err());
        assert!(decode_block(&[]).is_err());
    }

    fn bits(rows: &Rows) -> Vec<Vec<u64>> {
        rows.cols
            .iter()
            .map(|c| c.iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    #[test]
    fn compact_chunks_keep_every_bit_of_odd_values_and_times() {
        let mut r = Rows::new(5);
        let odd = [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
        ];
        let times = [
            i64::MIN,
            -5,
            0,
            3,
            i64::MAX,
            1_795_000_000_000,
            1_795_000_000_000,
        ];
        for (i, &t) in times.iter().enumerate() {
            let v = odd[i % odd.len()];
            r.push(
                t,
                &[
                    v,
                    -v,
                    1e15 + i as f64,
                    0.1 * i as f64,
                    odd[(i + 3) % odd.len()],
                ],
            );
        }
        let bytes = encode_chunk(&r);
        assert_eq!(bytes[0], COMPACT | 5);
        let mut back = Rows::new(5);
        decode_chunk(&bytes, &mut back).unwrap();
        assert_eq!(back.ts, r.ts);
        assert_eq!(bits(&back), bits(&r));
        // Appending decodes after rows already there.
        decode_chunk(&bytes, &mut back).unwrap();
        assert_eq!(back.len(), 2 * r.len());
        // A chunk cut short decodes fewer rows or is refused; none panics.
        for cut in 1..bytes.len() {
            let mut into = Rows::new(5);
            let ends_on_a_row = decode_chunk(&bytes[..cut], &mut into).is_ok();
            assert!(!ends_on_a_row || into.len() < r.len(), "cut at {cut}");
        }
        // The wrong column count, a bad value header.
        assert!(decode_chunk(&bytes, &mut Rows::new(1)).is_err());
        assert!(decode_chunk(&[COMPACT | 1, 0, 0x09], &mut Rows::new(1)).is_err());
        assert!(decode_chunk(&[COMPACT | 1, 0, 0x70], &mut Rows::new(1)).is_err());
    }

    #[test]
    fn plain_chunks_of_older_builds_still_decode() {
        let rows = walk(5, 2);
        let mut plain = vec![1u8];
        for i in 0..rows.len() {
            plain.extend_from_slice(&rows.ts[i].to_le_bytes());
            plain.extend_from_slice(&rows.cols[0][i].to_le_bytes());
        }
        let mut back = Rows::new(1);
        decode_chunk(&plain, &mut back).unwrap();
        assert_eq!(back, rows);
        assert!(decode_chunk(&plain[..20], &mut Rows::new(1)).is_err());
    }

    #[test]
    fn a_steady_f32_walk_takes_under_six_bytes_a_row_in_a_chunk() {
        let rows = walk(900, 5);
        let bytes = encode_chunk(&rows);
        assert!(bytes.len() < 900 * 6, "{} bytes", bytes.len());
        let mut c = Rows::new(1);
        for i in 0..900i64 {
            c.push(
                1_795_000_000_000 + i * 1000,
                &[(1i64 << 40) as f64 + (i * 4096) as f64],
            );
        }
        assert!(
            encode_chunk(&c).len() < 900 * 4,
            "{} bytes",
            encode_chunk(&c).len()
        );
    }
}
