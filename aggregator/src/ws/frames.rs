//! Turns queued items into WebSocket frames in the connection's encoding,
//! splits batches at the frame size limit, and says which frames still need
//! compressing and whether that belongs off the async workers.
//!
//! Frames are made once and written many times: a single update is framed
//! once per encoding, header and payload, and every subscriber writes those
//! same bytes ([`Update::framed`]; server frames are unmasked, so they are
//! identical for every connection). A batch
//! (`{"topic":"batch.update","updates":[...]}`, or the same as a MessagePack
//! map) is spliced from the updates' shared encoded bytes: the connection
//! makes only its few header bytes, and the socket writes the pieces with one
//! vectored write. `msgpack+deflate` batches are assembled and compressed,
//! with the thread's reused compressor. Either is done once per subscription
//! group, not per connection: connections that drained the same updates
//! write the batch the first of them built ([`crate::ws::shared`]).
//!
//! A batch whose frame would exceed `ws.max_frame_bytes` is cut into several
//! `batch.update` frames, in order, each as large as fits; an item larger than
//! the limit on its own goes alone in its frame. For `msgpack+deflate` the
//! uncompressed MessagePack is cut at [`deflate_budget`], so the compressed
//! frame fits even when nothing compresses.

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::update::Update;
use crate::ws::encoding::{Encoding, deflate};
use crate::ws::outbox::Item;

/// Topic of a batch frame.
pub const BATCH_TOPIC: &str = "batch.update";

/// Frames whose uncompressed MessagePack is larger than this are deflated on
/// tokio's blocking pool rather than on an async worker (level-1 deflate
/// takes about 1 ms per 64 KiB here: longer would stall the worker's other
/// connections).
pub const DEFLATE_INLINE_MAX: usize = 64 << 10;

const JSON_HEAD: &str = "{\"topic\":\"batch.update\",\"updates\":[";
const JSON_TAIL: &str = "]}";
const COMMA: Bytes = Bytes::from_static(b",");

/// A text frame's opcode.
pub const TEXT: u8 = 0x1;
/// A binary frame's opcode.
pub const BINARY: u8 = 0x2;

/// The opcode of data frames in `encoding`.
pub fn opcode(encoding: Encoding) -> u8 {
    match encoding {
        Encoding::Json => TEXT,
        Encoding::MsgPack | Encoding::MsgPackDeflate => BINARY,
    }
}

/// Appends the header of a final, unmasked server frame (RFC 6455 §5.2).
pub fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    match len {
        0..126 => out.put_u8(len as u8),
        126..=0xffff => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// Room left before a payload for its frame header (the longest is 10).
pub const FRAME_ROOM: usize = 10;

/// A payload written after [`FRAME_ROOM`] bytes of room in `buf`, framed in
/// place: (the payload, the whole frame), sharing one allocation, so an
/// update's frame costs no copy and no second buffer.
pub fn frame_in_place(mut buf: Vec<u8>, opcode: u8) -> (Bytes, Bytes) {
    let len = buf.len() - FRAME_ROOM;
    let mut header = Vec::with_capacity(FRAME_ROOM);
    put_header(&mut header, opcode, len);
    let start = FRAME_ROOM - header.len();
    buf[start..FRAME_ROOM].copy_from_slice(&header);
    let all = Bytes::from(buf);
    (all.slice(FRAME_ROOM..), all.slice(start..))
}

/// `payload` as one whole frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A frame ready to write, or one still to be compressed.
#[derive(Debug)]
pub enum Frame {
    /// A whole frame: shared (an update framed once) or made for this
    /// connection (a `$sys` message).
    Ready(Bytes),
    /// A batch spliced from shared pieces, in order; the first segment holds
    /// the header.
    Spliced(Vec<Bytes>),
    /// MessagePack to deflate into a binary frame (a batch or a `$sys` message).
    Deflate(Bytes),
    /// An update whose shared deflated frame is not made yet.
    DeflateUpdate(Arc<Update>),
}

impl Frame {
    /// Whether finishing it compresses more than [`DEFLATE_INLINE_MAX`]
    /// bytes, and so belongs off the async workers.
    pub fn heavy(&self) -> bool {
        match self {
            Frame::Ready(_) | Frame::Spliced(_) => false,
            Frame::Deflate(b) => b.len() > DEFLATE_INLINE_MAX,
            Frame::DeflateUpdate(u) => u.msgpack().len() > DEFLATE_INLINE_MAX,
        }
    }

    /// Appends the frame's segments to `out`, compressing it now if it still
    /// needs it; returns its length on the wire.
    pub fn finish(self, out: &mut Vec<Bytes>) -> usize {
        match self {
            Frame::Ready(b) => {
                let len = b.len();
                out.push(b);
                len
            }
            Frame::Spliced(segments) => {
                let len = segments.iter().map(Bytes::len).sum();
                out.extend(segments);
                len
            }
            Frame::Deflate(b) => {
                let framed = frame(BINARY, &deflate(&b));
                let len = framed.len();
                out.push(framed);
                len
            }
            Frame::DeflateUpdate(u) => {
                let framed = u.framed(Encoding::MsgPackDeflate).clone();
                let len = framed.len();
                out.push(framed);
                len
            }
        }
    }
}

/// One item as one frame.
pub fn single(item: &Item, encoding: Encoding) -> Frame {
    match (item, encoding) {
        (Item::Update(u), Encoding::MsgPackDeflate) => {
            match u.framed_if_ready(Encoding::MsgPackDeflate) {
                Some(f) => Frame::Ready(f.clone()),
                None => Frame::DeflateUpdate(u.clone()),
            }
        }
        (Item::Update(u), encoding) => Frame::Ready(u.framed(encoding).clone()),
        (Item::Sys(m), Encoding::Json) => Frame::Ready(frame(TEXT, m.json().as_bytes())),
        (Item::Sys(m), Encoding::MsgPack) => Frame::Ready(frame(BINARY, &m.msgpack())),
        (Item::Sys(m), Encoding::MsgPackDeflate) => Frame::Deflate(m.msgpack().into()),
    }
}

/// Uncompressed MessagePack allowed in a `msgpack+deflate` frame of at most
/// `max_bytes`: raw deflate never grows data by more than its stored-block
/// headers (5 bytes per 64 KiB) and a few bytes of end, far below this margin.
pub fn deflate_budget(max_bytes: usize) -> usize {
    max_bytes - max_bytes / 1024 - 64
}

/// `items` as `batch.update` frames of at most `max_bytes` each (an item
/// larger than that alone in its frame), in order.
pub fn batches(items: &[Item], encoding: Encoding, max_bytes: usize) -> Vec<Frame> {
    let pieces: Vec<Bytes> = items
        .iter()
        .map(|i| match (i, encoding) {
            (Item::Update(u), Encoding::Json) => u.json.clone().into(),
            (Item::Update(u), _) => u.msgpack().clone(),
            (Item::Sys(m), Encoding::Json) => m.json().into(),
            (Item::Sys(m), _) => m.msgpack().into(),
        })
        .collect();
    let sizes: Vec<usize> = pieces.iter().map(Bytes::len).collect();
    match encoding {
        Encoding::Json => split(&sizes, json_len, max_bytes)
            .into_iter()
            .map(|run| Frame::Spliced(json_batch(&pieces[run])))
            .collect(),
        Encoding::MsgPack => split(&sizes, msgpack_len, max_bytes)
            .into_iter()
            .map(|run| Frame::Spliced(msgpack_batch(&pieces[run])))
            .collect(),
        Encoding::MsgPackDeflate => split(&sizes, msgpack_len, deflate_budget(max_bytes))
            .into_iter()
            .map(|run| {
                let mut raw =
                    Vec::with_capacity(msgpack_len(run.len(), sizes[run.clone()].iter().sum()));
                for segment in msgpack_batch_raw(&pieces[run]) {
                    raw.extend_from_slice(&segment);
                }
                Frame::Deflate(raw.into())
            })
            .collect(),
    }
}

/// Cuts items of the given encoded sizes into consecutive runs, each as long
/// as its frame (`frame_len(items, bytes of items)`) stays within `budget`;
/// an item too large on its own is a run of one.
fn split(
    sizes: &[usize],
    frame_len: fn(usize, usize) -> usize,
    budget: usize,
) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut sum = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && frame_len(i + 1 - start, sum + size) > budget {
            runs.push(start..i);
            start = i;
            sum = 0;
        }
        sum += size;
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

/// Bytes of a JSON batch frame of `n` items totalling `bytes`.
fn json_len(n: usize, bytes: usize) -> usize {
    JSON_HEAD.len() + JSON_TAIL.len() + bytes + n.saturating_sub(1)
}

/// Bytes of a MessagePack batch frame of `n` items totalling `bytes`.
fn msgpack_len(n: usize, bytes: usize) -> usize {
    // Map header, "topic", "batch.update", "updates".
    let head = 1 + (1 + 5) + (1 + BATCH_TOPIC.len()) + (1 + 7);
    let array = match n {
        0..16 => 1,
        16..=0xffff => 3,
        _ => 5,
    };
    head + array + bytes
}

/// A JSON batch frame of `pieces`: its header and head, then each piece
/// (shared), commas between, and the tail.
fn json_batch(pieces: &[Bytes]) -> Vec<Bytes> {
    let len = json_len(pieces.len(), pieces.iter().map(Bytes::len).sum());
    let mut head = BytesMut::with_capacity(10 + JSON_HEAD.len());
    put_header(&mut head, TEXT, len);
    head.put_slice(JSON_HEAD.as_bytes());
    let mut out = Vec::with_capacity(pieces.len() * 2 + 1);
    out.push(head.freeze());
    for (n, piece) in pieces.iter().enumerate() {
        if n > 0 {
            out.push(COMMA);
        }
        out.push(piece.clone());
    }
    out.push(Bytes::from_static(JSON_TAIL.as_bytes()));
    out
}

/// The MessagePack head of a batch of `n` items: the map, its topic, and
/// the `updates` array's header.
fn msgpack_head(out: &mut impl BufMut, n: usize) {
    let mut w = out.writer();
    // Writing into memory cannot fail.
    rmp::encode::write_map_len(&mut w, 2).expect("memory write");
    rmp::encode::write_str(&mut w, "topic").expect("memory write");
    rmp::encode::write_str(&mut w, BATCH_TOPIC).expect("memory write");
    rmp::encode::write_str(&mut w, "updates").expect("memory write");
    rmp::encode::write_array_len(&mut w, n as u32).expect("memory write");
}

/// A MessagePack batch frame of `pieces`: header and head, then the pieces.
fn msgpack_batch(pieces: &[Bytes]) -> Vec<Bytes> {
    let len = msgpack_len(pieces.len(), pieces.iter().map(Bytes::len).sum());
    let mut head = BytesMut::with_capacity(10 + 32);
    put_header(&mut head, BINARY, len);
    msgpack_head(&mut head, pieces.len());
    let mut out = Vec::with_capacity(pieces.len() + 1);
    out.push(head.freeze());
    out.extend(pieces.iter().cloned());
    out
}

/// The MessagePack of a batch of `pieces`, without a frame header (to be
/// deflated).
fn msgpack_batch_raw(pieces: &[Bytes]) -> impl Iterator<Item = Bytes> + '_ {
    let mut head = BytesMut::with_capacity(32);
    msgpack_head(&mut head, pieces.len());
    std::iter::once(head.freeze()).chain(pieces.iter().cloned())
}

/// Frames read back from their bytes, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Frame;

    /// A finished frame: its opcode and payload, read back from its bytes
    /// on the wire (checked to be one final, unmasked frame).
    pub(crate) struct Wire {
        pub(crate) opcode: u8,
        pub(crate) payload: Vec<u8>,
    }

    pub(crate) fn wire(frame: Frame) -> Wire {
        let mut segments = Vec::new();
        let len = frame.finish(&mut segments);
        let all = crate::ws::socket::concat(&segments);
        assert_eq!(all.len(), len, "reported length");
        assert_eq!(all[0] & 0xf0, 0x80, "final, no reserved bits");
        assert_eq!(all[1] & 0x80, 0, "server frames are unmasked");
        let (n, at) = match all[1] & 0x7f {
            126 => (u16::from_be_bytes([all[2], all[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(all[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(all.len(), at + n, "header length matches the payload");
        Wire {
            opcode: all[0] & 0x0f,
            payload: all[at..].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{Payload, SysMessage};
    use serde_json::Value;
    use std::time::SystemTime;

    fn items() -> Vec<Item> {
        let now = SystemTime::now();
        vec![
            Item::Update(Arc::new(Update::new(
                "a".into(),
                1,
                now,
                now,
                Payload::Other(serde_json::json!({"x": 1})),
            ))),
            Item::Sys(SysMessage::new("$sys.pong", &serde_json::json!({}))),
        ]
    }

    use super::testing::{Wire, wire};

    fn decode(w: Wire) -> Value {
        match w.opcode {
            TEXT => serde_json::from_slice(&w.payload).unwrap(),
            BINARY => rmp_serde::from_slice(&w.payload).unwrap(),
            other => panic!("opcode {other}"),
        }
    }

    /// The one frame of a batch that fits.
    fn whole(items: &[Item], encoding: Encoding) -> Wire {
        let mut frames = batches(items, encoding, 1 << 20);
        assert_eq!(frames.len(), 1);
        wire(frames.pop().unwrap())
    }

    #[test]
    fn batches_decode_to_the_same_updates_in_every_encoding() {
        let items = items();
        let json = decode(whole(&items, Encoding::Json));
        assert_eq!(json["topic"], BATCH_TOPIC);
        assert_eq!(json["updates"][0]["seq"], 1);
        assert_eq!(json["updates"][1]["topic"], "$sys.pong");
        assert_eq!(decode(whole(&items, Encoding::MsgPack)), json);
        assert_eq!(
            decode(wire(single(&items[0], Encoding::MsgPack))),
            json["updates"][0]
        );
        assert_eq!(
            decode(wire(single(&items[0], Encoding::Json))),
            json["updates"][0]
        );
        assert_eq!(
            inflate(wire(single(&items[1], Encoding::MsgPackDeflate))),
            json["updates"][1]
        );
        assert_eq!(
            inflate(whole(&items, Encoding::MsgPackDeflate)),
            json,
            "deflated batch"
        );
    }

    fn update(seq: u64, pad: usize) -> Item {
        let now = SystemTime::now();
        Item::Update(Arc::new(Update::new(
            "t".into(),
            seq,
            now,
            now,
            Payload::Other(serde_json::json!(fastrand_text(seq, pad))),
        )))
    }

    /// Text that deflate cannot shrink much (a different stream per seed).
    fn fastrand_text(seed: u64, len: usize) -> String {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect()
    }

    fn inflate(w: Wire) -> Value {
        assert_eq!(w.opcode, BINARY, "binary expected");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::DeflateDecoder::new(&w.payload[..]),
            &mut raw,
        )
        .unwrap();
        rmp_serde::from_slice(&raw).unwrap()
    }

    fn frame_len(w: &Wire) -> usize {
        w.payload.len()
    }

    #[test]
    fn an_updates_frames_share_its_encoded_bytes() {
        let Item::Update(u) = update(1, 300) else {
            unreachable!()
        };
        let before = u.held_bytes();
        let json = u.framed(Encoding::Json).clone();
        assert_eq!(u.held_bytes(), before, "the JSON frame is the JSON form");
        assert_eq!(wire(Frame::Ready(json)).payload, u.json.as_bytes());
        let _ = u.msgpack();
        let with_msgpack = u.held_bytes();
        assert!(with_msgpack >= before + u.msgpack().len());
        let packed = u.framed(Encoding::MsgPack).clone();
        assert_eq!(
            u.held_bytes(),
            with_msgpack,
            "the MessagePack frame is its form, framed in place"
        );
        assert_eq!(wire(Frame::Ready(packed)).payload, &u.msgpack()[..]);
    }

    #[test]
    fn headers_take_the_shortest_length_form() {
        for (len, head) in [(0, 2), (125, 2), (126, 4), (0xffff, 4), (0x1_0000, 10)] {
            let framed = frame(BINARY, &vec![7u8; len]);
            assert_eq!(framed.len(), len + head, "{len}-byte payload");
            assert_eq!(wire(Frame::Ready(framed)).payload.len(), len);
        }
    }

    #[test]
    fn split_runs_are_consecutive_within_budget_and_oversize_items_stand_alone() {
        let len = |n: usize, bytes: usize| 10 + bytes + n;
        assert_eq!(split(&[], len, 100), Vec::<Range<usize>>::new());
        // 10 + 40 + 1 = 51; 10 + 80 + 2 = 92; a third would be 133.
        assert_eq!(split(&[40, 40, 40], len, 100), vec![0..2, 2..3]);
        // Exactly at the budget still fits.
        assert_eq!(split(&[44, 44], len, 100), vec![0..2]);
        assert_eq!(split(&[45, 44], len, 100), vec![0..1, 1..2]);
        // An item over the budget goes alone, and the run resumes after it.
        assert_eq!(split(&[10, 500, 10, 10], len, 100), vec![0..1, 1..2, 2..4]);
    }

    #[test]
    fn computed_frame_lengths_are_exact() {
        assert!(batches(&[], Encoding::Json, 1 << 20).is_empty());
        for n in [1usize, 15, 16, 17, 300] {
            let items: Vec<Item> = (0..n as u64).map(|s| update(s + 1, 20)).collect();
            let json = whole(&items, Encoding::Json);
            let sizes: usize = items
                .iter()
                .map(|i| match i {
                    Item::Update(u) => u.json.len(),
                    Item::Sys(_) => unreachable!(),
                })
                .sum();
            assert_eq!(frame_len(&json), json_len(n, sizes), "json, {n} items");
            let packed = whole(&items, Encoding::MsgPack);
            let sizes: usize = items
                .iter()
                .map(|i| match i {
                    Item::Update(u) => u.msgpack().len(),
                    Item::Sys(_) => unreachable!(),
                })
                .sum();
            assert_eq!(
                frame_len(&packed),
                msgpack_len(n, sizes),
                "msgpack, {n} items"
            );
        }
    }

    #[test]
    fn large_batches_split_in_order_within_the_limit_in_every_encoding() {
        const MAX: usize = 4 << 10;
        // About 300 KiB of barely compressible updates, with a $sys message
        // in the middle and one update larger than the limit.
        let mut items: Vec<Item> = (1..=300).map(|s| update(s, 1000)).collect();
        items.insert(
            150,
            Item::Sys(SysMessage::new("$sys.pong", &serde_json::json!({}))),
        );
        items[200] = update(200, 10_000);
        for encoding in [Encoding::Json, Encoding::MsgPack, Encoding::MsgPackDeflate] {
            let frames = batches(&items, encoding, MAX);
            assert!(frames.len() > 60, "{encoding:?}: {} frames", frames.len());
            let mut seen = Vec::new();
            for frame in frames {
                let message = wire(frame);
                let len = frame_len(&message);
                let value = match encoding {
                    Encoding::MsgPackDeflate => inflate(message),
                    _ => decode(message),
                };
                assert_eq!(value["topic"], BATCH_TOPIC);
                let updates = value["updates"].as_array().unwrap();
                let oversize = updates.len() == 1 && updates[0]["seq"] == 200;
                assert!(
                    len <= MAX || oversize,
                    "{encoding:?}: a {len}-byte frame of {} items",
                    updates.len()
                );
                seen.extend(updates.iter().map(|u| u["seq"].as_u64().unwrap_or(0)));
            }
            let mut expected: Vec<u64> = (1..=300).collect();
            expected.insert(150, 0);
            assert_eq!(seen, expected, "{encoding:?}: every item once, in order");
        }
    }

    #[test]
    fn deflate_stays_within_the_budget_margin_on_incompressible_data() {
        for max in [1usize << 10, 64 << 10, 256 << 10] {
            let budget = deflate_budget(max);
            let mut x: u64 = 0x9e3779b97f4a7c15;
            let noise: Vec<u8> = (0..budget)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let packed = deflate(&noise);
            assert!(packed.len() <= max, "{max}: {} bytes", packed.len());
        }
    }

    #[test]
    fn only_large_uncompressed_frames_are_heavy() {
        let small = single(&update(1, 100), Encoding::MsgPackDeflate);
        assert!(matches!(small, Frame::DeflateUpdate(_)) && !small.heavy());
        let big = update(2, 80 << 10);
        let frame = single(&big, Encoding::MsgPackDeflate);
        assert!(frame.heavy());
        wire(frame);
        // Once made, the shared deflated form is reused, not compressed again.
        assert!(matches!(
            single(&big, Encoding::MsgPackDeflate),
            Frame::Ready(_)
        ));
        assert!(!single(&big, Encoding::MsgPack).heavy());
    }
}
