//! Sealed history blocks: a run of one topic's updates, compressed together.
//!
//! Consecutive updates of a topic differ little (same keys, same process
//! names, timestamps a second apart), so deflating a run of them as one
//! stream keeps a small fraction of their JSON size. A block is immutable
//! once made and shared (`Arc`) between the history and every reader, so a
//! replay reads it with no lock held.
//!
//! Layout before compression: for each update, its JSON length as a LEB128
//! varint, then its JSON text. Seqs are kept beside the compressed bytes, as
//! 32-bit offsets from the first, so finding where a replay starts needs no
//! decompression.
//!
//! Decoding is cached briefly: the decoded updates are kept through a weak
//! reference, so replays running at the same time (a storm of reconnecting
//! dashboards) decode a block once and share the updates, and their binary
//! forms, until the last of them lets go.

use std::io::Write;
use std::sync::{Arc, Mutex, Weak};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use flate2::write::DeflateDecoder;

use crate::update::Update;
use crate::ws::encoding::deflate_at;

/// Compression level for blocks: sealing runs for every update of the fleet,
/// so a fast level; the long runs of repeated keys compress well anyway.
const LEVEL: u32 = 3;

/// One sealed run of updates.
#[derive(Debug)]
pub struct Block {
    topic: Arc<str>,
    first: u64,
    /// Each update's seq minus `first`, ascending.
    offsets: Box<[u32]>,
    data: Box<[u8]>,
    /// Length before compression.
    raw_len: u32,
    decoded: Mutex<Weak<Vec<Arc<Update>>>>,
}

impl Block {
    /// Compresses `updates` (one topic, seqs ascending, each within
    /// `u32::MAX` of the first: see [`Block::fits`]).
    pub fn seal(updates: &[Arc<Update>]) -> Self {
        let first = updates.first().expect("a block holds updates").seq;
        let mut raw = Vec::with_capacity(updates.iter().map(|u| u.json.len() + 3).sum());
        let mut varint = [0u8; 10];
        for u in updates {
            let n = leb128(u.json.len() as u64, &mut varint);
            raw.extend_from_slice(&varint[..n]);
            raw.extend_from_slice(u.json.as_bytes());
        }
        let data = deflate_at(&raw, LEVEL).into_boxed_slice();
        Block {
            topic: updates[0].topic.clone(),
            first,
            offsets: updates
                .iter()
                .map(|u| u32::try_from(u.seq - first).expect("checked by fits"))
                .collect(),
            data,
            raw_len: raw.len() as u32,
            decoded: Mutex::new(Weak::new()),
        }
    }

    /// Whether `seq` may follow in a block starting at `first`.
    pub fn fits(first: u64, seq: u64) -> bool {
        seq.checked_sub(first)
            .is_some_and(|d| d <= u64::from(u32::MAX))
    }

    /// Updates held.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Never true: a block holds at least one update.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Seq of the `i`th update.
    pub fn seq(&self, i: usize) -> u64 {
        self.first + u64::from(self.offsets[i])
    }

    /// Seq of the last update.
    pub fn last_seq(&self) -> u64 {
        self.seq(self.len() - 1)
    }

    /// Index of the first update with a seq above `after`.
    pub fn index_after(&self, after: u64) -> usize {
        self.offsets
            .partition_point(|&o| self.first + u64::from(o) <= after)
    }

    /// Memory held: compressed bytes, seqs and bookkeeping.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.offsets.len() * 4 + std::mem::size_of::<Self>() + 16
    }

    /// Bytes of JSON it holds, uncompressed (to pace readers).
    pub fn raw_len(&self) -> usize {
        self.raw_len as usize
    }

    /// The updates, decoded (or shared with a reader that decoded them).
    pub fn updates(&self) -> Arc<Vec<Arc<Update>>> {
        let mut cached = self.decoded.lock().expect("block cache lock");
        if let Some(d) = cached.upgrade() {
            return d;
        }
        let decoded = Arc::new(self.decode());
        *cached = Arc::downgrade(&decoded);
        decoded
    }

    fn decode(&self) -> Vec<Arc<Update>> {
        let mut dec = DeflateDecoder::new(Vec::with_capacity(self.raw_len as usize));
        dec.write_all(&self.data).expect("blocks are made here");
        let raw = Bytes::from(dec.finish().expect("blocks are made here"));
        let mut out = Vec::with_capacity(self.len());
        let mut at = 0;
        for i in 0..self.len() {
            let (len, n) = read_leb128(&raw[at..]);
            at += n;
            let json = raw.slice(at..at + len as usize);
            at += len as usize;
            let json = Utf8Bytes::try_from(json).expect("blocks hold JSON text");
            out.push(Arc::new(Update::stored(
                self.topic.clone(),
                self.seq(i),
                json,
            )));
        }
        out
    }
}

fn leb128(mut v: u64, out: &mut [u8; 10]) -> usize {
    let mut i = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

fn read_leb128(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    panic!("truncated length in a history block")
}

#[cfg(test)]
mod tests {
    use super::*;
    fn up(seq: u64, body: &str) -> Arc<Update> {
        Update::test("host.a.cpu", seq, body.into())
    }

    #[test]
    fn a_block_gives_back_exactly_what_was_sealed() {
        let updates: Vec<_> = [(5, ""), (6, "é"), (9, &"x".repeat(300) as &str)]
            .iter()
            .map(|(s, b)| up(*s, b))
            .collect();
        let b = Block::seal(&updates);
        assert_eq!(b.len(), 3);
        assert_eq!((b.seq(0), b.last_seq()), (5, 9));
        assert_eq!(b.index_after(4), 0);
        assert_eq!(b.index_after(6), 2);
        assert_eq!(b.index_after(9), 3);
        let back = b.updates();
        for (a, b) in updates.iter().zip(back.iter()) {
            assert_eq!((a.seq, &a.topic, &a.json), (b.seq, &b.topic, &b.json));
            assert_eq!(a.msgpack(), b.msgpack());
        }
        // Shared while held, decoded again once let go.
        assert!(Arc::ptr_eq(&back, &b.updates()));
        let ptr = Arc::as_ptr(&back) as *const u8;
        drop(back);
        let again = b.updates();
        assert_eq!(again.len(), 3);
        let _ = ptr;
    }

    #[test]
    fn similar_updates_compress_well() {
        let updates: Vec<_> = (1..=32)
            .map(|s| up(s, &format!("{{\"total_pct\": {}.{}}}", s % 7, s % 10)))
            .collect();
        let json: usize = updates.iter().map(|u| u.json.len()).sum();
        let b = Block::seal(&updates);
        assert!(b.bytes() * 3 < json, "{} of {json}", b.bytes());
        assert!(Block::fits(1, 1 + u64::from(u32::MAX)));
        assert!(!Block::fits(1, 2 + u64::from(u32::MAX)));
        assert!(!Block::fits(2, 1));
    }
}
