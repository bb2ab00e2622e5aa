//! The shared batches: the same updates make one batch, written as the same
//! bytes; anything different is built apart; what is held stays bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;

use super::*;
use crate::update::{Payload, SysMessage, Update};

const MAX: usize = 256 << 10;
const LIMIT: usize = 1 << 20;

fn update(seq: u64) -> Arc<Update> {
    let now = SystemTime::now();
    Arc::new(Update::new(
        "host.a.cpu".into(),
        seq,
        now,
        now,
        Payload::Other(serde_json::json!({"total_pct": seq as f64 / 3.0})),
    ))
}

fn items(updates: &[Arc<Update>]) -> Vec<Item> {
    updates.iter().cloned().map(Item::Update).collect()
}

/// What one connection writes for `items`.
async fn write(
    cache: &SharedBatches,
    items: &[Item],
    encoding: Encoding,
    max: usize,
    tick: Option<u64>,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    cache
        .write(items, encoding, max, tick, &mut out, LIMIT)
        .await
        .expect("written");
    out
}

/// The same buffers, not just equal bytes.
fn same_buffers(a: &[Bytes], b: &[Bytes]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.as_ptr() == y.as_ptr() && x.len() == y.len())
}

fn counts(cache: &SharedBatches) -> (u64, u64) {
    (
        cache.built.load(Ordering::Relaxed),
        cache.shared.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn the_same_updates_are_built_once_and_written_as_the_same_bytes() {
    let updates: Vec<_> = (1..=5).map(update).collect();
    for encoding in [Encoding::Json, Encoding::MsgPack, Encoding::MsgPackDeflate] {
        let cache = SharedBatches::default();
        // Each connection drains its own Vec of the same shared updates.
        let first = write(&cache, &items(&updates), encoding, MAX, Some(50)).await;
        for _ in 0..3 {
            let again = write(&cache, &items(&updates), encoding, MAX, Some(50)).await;
            assert!(same_buffers(&first, &again), "{encoding:?}: shared bytes");
        }
        assert_eq!(
            counts(&cache),
            (1, 3),
            "{encoding:?}: one built, three shared"
        );
        // And it is the batch a connection would have built on its own.
        let own = write(&cache, &items(&updates), encoding, MAX, None).await;
        assert_eq!(
            crate::ws::socket::concat(&first),
            crate::ws::socket::concat(&own),
            "{encoding:?}: the same frame"
        );
    }
}

#[tokio::test]
async fn different_updates_order_encoding_or_limit_are_not_shared() {
    let updates: Vec<_> = (1..=3).map(update).collect();
    let cache = SharedBatches::default();
    let first = write(&cache, &items(&updates), Encoding::Json, MAX, Some(50)).await;
    // Equal content in other updates: not the same updates.
    let copies: Vec<_> = (1..=3).map(update).collect();
    let other = write(&cache, &items(&copies), Encoding::Json, MAX, Some(50)).await;
    assert!(!same_buffers(&first, &other));
    // A different order, a subset.
    let reversed: Vec<_> = updates.iter().rev().cloned().collect();
    write(&cache, &items(&reversed), Encoding::Json, MAX, Some(50)).await;
    write(&cache, &items(&updates[..2]), Encoding::Json, MAX, Some(50)).await;
    // Another encoding, another frame limit.
    write(&cache, &items(&updates), Encoding::MsgPack, MAX, Some(50)).await;
    write(&cache, &items(&updates), Encoding::Json, MAX / 2, Some(50)).await;
    assert_eq!(counts(&cache), (6, 0), "each built apart");
    assert_eq!(cache.held(), 6);
    // A $sys reply makes the batch the connection's own: never held.
    let mut with_sys = items(&updates);
    with_sys.push(Item::Sys(SysMessage::new(
        "$sys.pong",
        &serde_json::json!({}),
    )));
    write(&cache, &with_sys, Encoding::Json, MAX, Some(50)).await;
    write(&cache, &with_sys, Encoding::Json, MAX, Some(50)).await;
    assert_eq!(counts(&cache), (8, 0));
    // As is one written outside a window tick (a replay).
    write(&cache, &items(&copies[..1]), Encoding::Json, MAX, None).await;
    write(&cache, &items(&copies[..1]), Encoding::Json, MAX, None).await;
    assert_eq!(counts(&cache), (10, 0));
    assert_eq!(cache.held(), 6);
}

#[tokio::test]
async fn batches_of_older_ticks_are_dropped() {
    let a: Vec<_> = (1..=2).map(update).collect();
    let b: Vec<_> = (3..=4).map(update).collect();
    let cache = SharedBatches::default();
    write(&cache, &items(&a), Encoding::Json, MAX, Some(50)).await;
    // The next tick: a late drain of the last one still finds its batch.
    write(&cache, &items(&b), Encoding::Json, MAX, Some(100)).await;
    write(&cache, &items(&a), Encoding::Json, MAX, Some(100)).await;
    assert_eq!(counts(&cache), (2, 1));
    assert_eq!(cache.held(), 2);
    // Two ticks on, the first tick's batch is gone (and its updates with it).
    write(&cache, &items(&b[..1]), Encoding::Json, MAX, Some(150)).await;
    assert_eq!(cache.held(), 2, "ticks 100 and 150");
    let weak = Arc::downgrade(&a[0]);
    drop(a);
    assert!(weak.upgrade().is_none(), "nothing holds tick 50's updates");
    // A drain under a tick older than those held builds its own, unheld.
    let c: Vec<_> = (5..=6).map(update).collect();
    write(&cache, &items(&c), Encoding::Json, MAX, Some(50)).await;
    assert_eq!(cache.held(), 2);
}

#[tokio::test]
async fn what_is_held_is_bounded() {
    let cache = SharedBatches::default();
    let updates: Vec<_> = (1..=MAX_ENTRIES as u64 + 10).map(update).collect();
    for u in &updates {
        write(
            &cache,
            &items(std::slice::from_ref(u)),
            Encoding::Json,
            MAX,
            Some(50),
        )
        .await;
    }
    assert_eq!(cache.held(), MAX_ENTRIES);
    // Past the bound it still writes correctly, built apart.
    let last = items(&updates[updates.len() - 1..]);
    let a = write(&cache, &last, Encoding::Json, MAX, Some(50)).await;
    let b = write(&cache, &last, Encoding::Json, MAX, Some(50)).await;
    assert_eq!(crate::ws::socket::concat(&a), crate::ws::socket::concat(&b));
    assert!(!same_buffers(&a, &b));
    // A new tick makes room again.
    write(&cache, &last, Encoding::Json, MAX, Some(100)).await;
    write(&cache, &last, Encoding::Json, MAX, Some(150)).await;
    assert_eq!(cache.held(), 1);
}

#[tokio::test]
async fn a_shared_batch_over_the_write_limit_is_refused_for_every_connection() {
    let updates: Vec<_> = (1..=20).map(update).collect();
    let cache = SharedBatches::default();
    let mut out = Vec::new();
    let items = items(&updates);
    cache
        .write(&items, Encoding::Json, MAX, Some(50), &mut out, LIMIT)
        .await
        .expect("within the limit");
    let mut small = Vec::new();
    let refused = cache
        .write(&items, Encoding::Json, MAX, Some(50), &mut small, 100)
        .await;
    assert!(
        matches!(refused, Err(WriteError::TooBig { .. })),
        "{refused:?}"
    );
    assert!(small.is_empty(), "nothing of it written");
}
