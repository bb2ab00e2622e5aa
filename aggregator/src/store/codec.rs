//! Bytes of the store: sealed blocks (column-wise and compressed) and open
//! chunks (the rows of one flush, plain).
//!
//! A sealed block holds one series' rows of one tier over one window:
//!
//! ```text
//! u8 version (1) | u8 columns | u32 rows | ts column | value columns...
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
//! costs a few bytes. Decoding restores every value bit for bit.
//!
//! An open chunk is what one flush wrote for a series and tier before its
//! window closed: `u8 columns | rows × (i64 ts, f64 × columns)`, little
//! endian. Chunks are merged into a block when the window is sealed.

use pco::standalone::{simple_compress, simple_decompress};
use pco::{ChunkConfig, DeltaSpec};

use super::tier::Rows;

const VERSION: u8 = 1;
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

/// Compresses `rows` into a sealed block.
pub fn encode_block(rows: &Rows) -> Result<Vec<u8>, CodecError> {
    let config = ChunkConfig::default();
    let mut out = Vec::with_capacity(64 + rows.len());
    out.push(VERSION);
    out.push(rows.cols.len() as u8);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    let mut deltas = Vec::with_capacity(rows.len());
    let mut prev = 0i64;
    for &t in &rows.ts {
        deltas.push(t.wrapping_sub(prev));
        prev = t;
    }
    // Already deltas: no search for a delta encoding of them (which would
    // cost as much as compressing the values), they compress as they are.
    let ts_config = ChunkConfig::default().with_delta_spec(DeltaSpec::NoOp);
    put_column(
        &mut out,
        KIND_I64,
        &simple_compress(&deltas, &ts_config).map_err(pco_err)?,
    );
    for col in &rows.cols {
        if integral(col) {
            let ints: Vec<i64> = col.iter().map(|v| *v as i64).collect();
            put_column(
                &mut out,
                KIND_I64,
                &simple_compress(&ints, &config).map_err(pco_err)?,
            );
        } else {
            put_column(
                &mut out,
                KIND_F64,
                &simple_compress(col, &config).map_err(pco_err)?,
            );
        }
    }
    Ok(out)
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

    fn column(&mut self) -> Result<(u8, &'a [u8]), CodecError> {
        let kind = self.u8()?;
        let len = self.u32()? as usize;
        Ok((kind, self.take(len)?))
    }
}

/// Decompresses a sealed block.
pub fn decode_block(bytes: &[u8]) -> Result<Rows, CodecError> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return Err(CodecError::Corrupt("unknown block version"));
    }
    let ncols = r.u8()? as usize;
    let n = r.u32()? as usize;
    let (_, ts) = r.column()?;
    let deltas: Vec<i64> = simple_decompress(ts).map_err(pco_err)?;
    if deltas.len() != n {
        return Err(CodecError::Corrupt("timestamp count"));
    }
    let mut rows = Rows::new(0);
    let mut acc = 0i64;
    rows.ts = deltas
        .iter()
        .map(|d| {
            acc = acc.wrapping_add(*d);
            acc
        })
        .collect();
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

/// Encodes rows as an open chunk.
pub fn encode_chunk(rows: &Rows) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk_len(rows));
    append_chunk(rows, &mut out);
    out
}

/// Bytes of `rows` as an open chunk.
pub fn chunk_len(rows: &Rows) -> usize {
    1 + rows.len() * 8 * (1 + rows.cols.len())
}

/// Appends `rows` as an open chunk to `out`.
pub fn append_chunk(rows: &Rows, out: &mut Vec<u8>) {
    out.reserve(chunk_len(rows));
    out.push(rows.cols.len() as u8);
    for i in 0..rows.len() {
        out.extend_from_slice(&rows.ts[i].to_le_bytes());
        for col in &rows.cols {
            out.extend_from_slice(&col[i].to_le_bytes());
        }
    }
}

/// Decodes an open chunk, appending its rows to `into` (same columns).
pub fn decode_chunk(bytes: &[u8], into: &mut Rows) -> Result<(), CodecError> {
    let (&ncols, body) = bytes
        .split_first()
        .ok_or(CodecError::Corrupt("empty chunk"))?;
    let ncols = ncols as usize;
    if ncols != into.cols.len() {
        return Err(CodecError::Corrupt("chunk columns"));
    }
    let row = 8 * (1 + ncols);
    if body.len() % row != 0 {
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
    fn chunks_round_trip_and_corruption_is_an_error() {
        let rows = walk(10, 1);
        let mut back = Rows::new(1);
        decode_chunk(&encode_chunk(&rows), &mut back).unwrap();
        assert_eq!(back, rows);
        assert!(decode_chunk(&[1, 2, 3], &mut Rows::new(1)).is_err());
        assert!(decode_block(&[1, 1, 5, 0, 0, 0]).is_err());
        assert!(decode_block(&[]).is_err());
    }
}
