//! Turns queued items into WebSocket messages in the connection's encoding.
//!
//! A single update reuses the bytes encoded once for all subscribers. A batch
//! (`{"topic":"batch.update","updates":[...]}`, or the same as a MessagePack
//! map) is assembled per connection by splicing those pre-encoded bytes, so
//! nothing is re-serialised; only `msgpack+deflate` batches are compressed per
//! connection, with the thread's reused compressor.

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;

use crate::encoding::{Encoding, deflate};
use crate::outbox::Item;

/// Topic of a batch frame.
pub const BATCH_TOPIC: &str = "batch.update";

/// One item as one message.
pub fn single(item: &Item, encoding: Encoding) -> Message {
    match (item, encoding) {
        (Item::Update(u), Encoding::Json) => Message::Text(u.json.clone()),
        (Item::Update(u), Encoding::MsgPack) => Message::Binary(u.msgpack().clone()),
        (Item::Update(u), Encoding::MsgPackDeflate) => Message::Binary(u.deflated().clone()),
        (Item::Sys(m), Encoding::Json) => Message::Text(m.json().into()),
        (Item::Sys(m), Encoding::MsgPack) => Message::Binary(m.msgpack().into()),
        (Item::Sys(m), Encoding::MsgPackDeflate) => Message::Binary(deflate(&m.msgpack())),
    }
}

/// Several items as one `batch.update` message, in order.
pub fn batch(items: &[Item], encoding: Encoding) -> Message {
    match encoding {
        Encoding::Json => {
            let mut text = String::with_capacity(
                64 + items
                    .iter()
                    .map(|i| match i {
                        Item::Update(u) => u.json.len() + 1,
                        Item::Sys(_) => 256,
                    })
                    .sum::<usize>(),
            );
            text.push_str("{\"topic\":\"");
            text.push_str(BATCH_TOPIC);
            text.push_str("\",\"updates\":[");
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    text.push(',');
                }
                match item {
                    Item::Update(u) => text.push_str(u.json.as_str()),
                    Item::Sys(m) => text.push_str(&m.json()),
                }
            }
            text.push_str("]}");
            Message::Text(Utf8Bytes::from(text))
        }
        Encoding::MsgPack => Message::Binary(msgpack_batch(items)),
        Encoding::MsgPackDeflate => Message::Binary(deflate(&msgpack_batch(items))),
    }
}

fn msgpack_batch(items: &[Item]) -> Bytes {
    let mut out = Vec::with_capacity(
        32 + items
            .iter()
            .map(|i| match i {
                Item::Update(u) => u.msgpack().len(),
                Item::Sys(_) => 256,
            })
            .sum::<usize>(),
    );
    // Writing into a Vec cannot fail.
    rmp::encode::write_map_len(&mut out, 2).expect("vec write");
    rmp::encode::write_str(&mut out, "topic").expect("vec write");
    rmp::encode::write_str(&mut out, BATCH_TOPIC).expect("vec write");
    rmp::encode::write_str(&mut out, "updates").expect("vec write");
    rmp::encode::write_array_len(&mut out, items.len() as u32).expect("vec write");
    for item in items {
        match item {
            Item::Update(u) => out.extend_from_slice(u.msgpack()),
            Item::Sys(m) => out.extend_from_slice(&m.msgpack()),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{Payload, SysMessage, Update};
    use serde_json::Value;
    use std::sync::Arc;
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

    #[test]
    fn batches_decode_to_the_same_updates_in_every_encoding() {
        let items = items();
        let json = decode(batch(&items, Encoding::Json));
        assert_eq!(json["topic"], BATCH_TOPIC);
        assert_eq!(json["updates"][0]["seq"], 1);
        assert_eq!(json["updates"][1]["topic"], "$sys.pong");
        assert_eq!(decode(batch(&items, Encoding::MsgPack)), json);
        assert_eq!(
            decode(single(&items[0], Encoding::MsgPack)),
            json["updates"][0]
        );
    }
}
