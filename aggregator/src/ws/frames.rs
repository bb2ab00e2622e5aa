//! Turns queued items into WebSocket frames in the connection's encoding,
//! splits batches at the frame size limit, and says which frames still need
//! compressing and whether that belongs off the async workers.
//!
//! A single update reuses the bytes encoded once for all subscribers. A batch
//! (`{"topic":"batch.update","updates":[...]}`, or the same as a MessagePack
//! map) is assembled per connection by splicing those pre-encoded bytes, so
//! nothing is re-serialised; only `msgpack+deflate` batches are compressed per
//! connection, with the thread's reused compressor.
//!
//! A batch whose frame would exceed `ws.max_frame_bytes` is cut into several
//! `batch.update` frames, in order, each as large as fits; an item larger than
//! the limit on its own goes alone in its frame. For `msgpack+deflate` the
//! uncompressed MessagePack is cut at [`deflate_budget`], so the compressed
//! frame fits even when nothing compresses.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;

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

/// A frame ready to send, or one still to be compressed.
#[derive(Debug)]
pub enum Frame {
    /// Ready.
    Ready(Message),
    /// MessagePack to deflate into a binary frame (a batch or a `$sys` message).
    Deflate(Bytes),
    /// An update whose shared deflated form is not made yet.
    DeflateUpdate(Arc<Update>),
}

impl Frame {
    /// Whether finishing it compresses more than [`DEFLATE_INLINE_MAX`]
    /// bytes, and so belongs off the async workers.
    pub fn heavy(&self) -> bool {
        match self {
            Frame::Ready(_) => false,
            Frame::Deflate(b) => b.len() > DEFLATE_INLINE_MAX,
            Frame::DeflateUpdate(u) => u.msgpack().len() > DEFLATE_INLINE_MAX,
        }
    }

    /// The message, compressing it now if it still needs it.
    pub fn finish(self) -> Message {
        match self {
            Frame::Ready(m) => m,
            Frame::Deflate(b) => Message::Binary(deflate(&b)),
            Frame::DeflateUpdate(u) => Message::Binary(u.deflated().clone()),
        }
    }
}

/// One item as one frame.
pub fn single(item: &Item, encoding: Encoding) -> Frame {
    Frame::Ready(match (item, encoding) {
        (Item::Update(u), Encoding::Json) => Message::Text(u.json.clone()),
        (Item::Update(u), Encoding::MsgPack) => Message::Binary(u.msgpack().clone()),
        (Item::Update(u), Encoding::MsgPackDeflate) => match u.deflated_if_ready() {
            Some(d) => Message::Binary(d.clone()),
            None => return Frame::DeflateUpdate(u.clone()),
        },
        (Item::Sys(m), Encoding::Json) => Message::Text(m.json().into()),
        (Item::Sys(m), Encoding::MsgPack) => Message::Binary(m.msgpack().into()),
        (Item::Sys(m), Encoding::MsgPackDeflate) => return Frame::Deflate(m.msgpack().into()),
    })
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
    match encoding {
        Encoding::Json => {
            let pieces: Vec<Cow<'_, str>> = items
                .iter()
                .map(|i| match i {
                    Item::Update(u) => Cow::Borrowed(u.json.as_str()),
                    Item::Sys(m) => Cow::Owned(m.json()),
                })
                .collect();
            let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            split(&sizes, json_len, max_bytes)
                .into_iter()
                .map(|run| Frame::Ready(Message::Text(json_batch(&pieces[run]))))
                .collect()
        }
        Encoding::MsgPack | Encoding::MsgPackDeflate => {
            let deflated = encoding == Encoding::MsgPackDeflate;
            let pieces: Vec<Cow<'_, [u8]>> = items
                .iter()
                .map(|i| match i {
                    Item::Update(u) => Cow::Borrowed(&u.msgpack()[..]),
                    Item::Sys(m) => Cow::Owned(m.msgpack()),
                })
                .collect();
            let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            let budget = if deflated {
                deflate_budget(max_bytes)
            } else {
                max_bytes
            };
            split(&sizes, msgpack_len, budget)
                .into_iter()
                .map(|run| {
                    let raw = msgpack_batch(&pieces[run]);
                    if deflated {
                        Frame::Deflate(raw)
                    } else {
                        Frame::Ready(Message::Binary(raw))
                    }
                })
                .collect()
        }
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

fn json_batch(pieces: &[Cow<'_, str>]) -> Utf8Bytes {
    let mut text =
        String::with_capacity(json_len(pieces.len(), pieces.iter().map(|p| p.len()).sum()));
    text.push_str(JSON_HEAD);
    for (n, piece) in pieces.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(piece);
    }
    text.push_str(JSON_TAIL);
    Utf8Bytes::from(text)
}

fn msgpack_batch(pieces: &[Cow<'_, [u8]>]) -> Bytes {
    let mut out = Vec::with_capacity(msgpack_len(
        pieces.len(),
        pieces.iter().map(|p| p.len()).sum(),
    ));
    // Writing into a Vec cannot fail.
    rmp::encode::write_map_len(&mut out, 2).expect("vec write");
    rmp::encode::write_str(&mut out, "topic").expect("vec write");
    rmp::encode::write_str(&mut out, BATCH_TOPIC).expect("vec write");
    rmp::encode::write_str(&mut out, "updates").expect("vec write");
    rmp::encode::write_array_len(&mut out, pieces.len() as u32).expect("vec write");
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    Bytes::from(out)
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

    fn decode(m: Message) -> Value {
        match m {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            Message::Binary(b) => rmp_serde::from_slice(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// The one frame of a batch that fits.
    fn whole(items: &[Item], encoding: Encoding) -> Message {
        let mut frames = batches(items, encoding, 1 << 20);
        assert_eq!(frames.len(), 1);
        frames.pop().unwrap().finish()
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
            decode(single(&items[0], Encoding::MsgPack).finish()),
            json["updates"][0]
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

    fn inflate(m: Message) -> Value {
        let Message::Binary(b) = m else {
            panic!("binary expected")
        };
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&b[..]), &mut raw)
            .unwrap();
        rmp_serde::from_slice(&raw).unwrap()
    }

    fn frame_len(m: &Message) -> usize {
        match m {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            other => panic!("{other:?}"),
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
                let message = frame.finish();
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
        frame.finish();
        // Once made, the shared deflated form is reused, not compressed again.
        assert!(matches!(
            single(&big, Encoding::MsgPackDeflate),
            Frame::Ready(_)
        ));
        assert!(!single(&big, Encoding::MsgPack).heavy());
    }
}
