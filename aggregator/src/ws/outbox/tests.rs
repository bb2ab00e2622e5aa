//! Named cases of the outbox: conflation, the grace period, throttling, and
//! the ordering bugs once found (each connection sees every topic's seqs
//! strictly rise, whatever mix of throttle, lag, batching and replay).

use super::*;

/// An update of `topic` whose JSON form is about `pad` bytes longer than the
/// smallest.
pub(super) fn up(topic: &str, seq: u64, pad: usize) -> Arc<Update> {
    Update::test(topic, seq, serde_json::json!("x".repeat(pad)))
}

/// The (topic, seq) of each update in `items`, in order.
pub(super) fn seqs(items: &[Item]) -> Vec<(String, u64)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Update(u) => Some((u.topic.to_string(), u.seq)),
            Item::Sys(_) => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_lagging_client_is_conflated_then_told_what_it_skipped() {
    let stats = Arc::new(OutboxStats::default());
    // Five updates of this size exceed the bound: the fifth starts the lag.
    let size = up("a", 1, 300).json.len();
    let o = Outbox::new(size * 5 - 1, Duration::from_secs(5), stats.clone());
    for seq in 1..=5 {
        assert_eq!(
            o.push_update(&up("a", seq, 300), Duration::ZERO),
            Pushed::Queued
        );
    }
    assert!(o.lagging());
    for seq in 6..=9 {
        assert_eq!(
            o.push_update(&up("a", seq, 300), Duration::ZERO),
            Pushed::Held
        );
    }
    o.push_update(&up("b", 1, 10), Duration::ZERO);
    let mut out = Vec::new();
    o.drain_into(&mut out);
    let got = seqs(&out);
    assert_eq!(
        got[..5].iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(&got[5..], &[("a".into(), 9), ("b".into(), 1)]);
    let Item::Sys(notice) = &out[5] else {
        panic!("notice before the newest")
    };
    assert_eq!(notice.topic, "$sys.lagged");
    assert_eq!(
        notice.payload["skipped"][0],
        serde_json::json!({"topic": "a", "from": 6, "to": 8, "count": 3})
    );
    assert!(!o.lagging());
    assert_eq!(stats.conflated.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn a_client_lagging_past_the_grace_period_is_refused() {
    let stats = Arc::new(OutboxStats::default());
    let o = Outbox::new(100, Duration::from_millis(500), stats.clone());
    o.push_update(&up("a", 1, 200), Duration::ZERO);
    assert!(o.lagging());
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(
        o.push_update(&up("a", 2, 10), Duration::ZERO),
        Pushed::Refused
    );
    assert!(o.overflowed());
    assert_eq!(stats.lag_disconnects.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn throttle_sends_at_most_one_per_interval_and_the_newest() {
    let o = Outbox::new(1 << 20, Duration::from_secs(5), Arc::default());
    let t = Duration::from_millis(100);
    assert_eq!(o.push_update(&up("a", 1, 0), t), Pushed::Queued);
    assert_eq!(o.push_update(&up("a", 2, 0), t), Pushed::Held);
    assert_eq!(o.push_update(&up("a", 3, 0), t), Pushed::Held);
    let mut out = Vec::new();
    let due = o.drain_into(&mut out).expect("a pending update");
    assert_eq!(seqs(&out), vec![("a".into(), 1)]);
    out.clear();
    tokio::time::advance(due - Instant::now()).await;
    assert!(o.drain_into(&mut out).is_none());
    assert_eq!(seqs(&out), vec![("a".into(), 3)]);
}

/// Seqs of one topic, in the order they went out.
fn of(items: &[Item], topic: &str) -> Vec<u64> {
    seqs(items)
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, s)| s)
        .collect()
}

/// The `skipped` entries of every `$sys.lagged` notice in `items`.
fn lagged(items: &[Item]) -> Vec<serde_json::Value> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Sys(m) if m.topic == "$sys.lagged" => m.payload["skipped"].as_array().cloned(),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Drains until nothing is held: the socket keeps reading and throttled
/// updates fall due.
async fn drain_all(o: &Outbox, out: &mut Vec<Item>) {
    loop {
        let due = o.drain_into(out);
        match due {
            Some(at) => tokio::time::advance(at - Instant::now()).await,
            None if o.has_queued() => {}
            None => return,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn throttle_then_lag_never_sends_the_stale_pending_update_after_the_newest() {
    // a is throttled: a1 goes out, a2 waits for the interval. Then b floods
    // the queue past its bound, the client lags, and a3, a4 are conflated.
    let t = Duration::from_millis(100);
    let o = Outbox::new(1_000, Duration::from_secs(60), Arc::default());
    assert_eq!(o.push_update(&up("a", 1, 0), t), Pushed::Queued);
    assert_eq!(o.push_update(&up("a", 2, 0), t), Pushed::Held);
    for seq in 1..=3 {
        o.push_update(&up("b", seq, 500), Duration::ZERO);
    }
    assert!(o.lagging());
    o.push_update(&up("a", 3, 0), t);
    o.push_update(&up("a", 4, 0), t);
    let mut out = Vec::new();
    drain_all(&o, &mut out).await;
    // Once a4 went out, the pending a2 is stale: it is never sent after it.
    assert_eq!(of(&out, "a"), vec![1, 4]);
    assert_eq!(of(&out, "b"), vec![1, 2, 3]);
    assert_eq!(
        lagged(&out),
        vec![serde_json::json!({"topic": "a", "from": 3, "to": 3, "count": 1})]
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_while_a_throttled_update_is_pending_does_not_resend_it() {
    // a is throttled: a1 is sent; a2 then a3 are held (a3 pending). A second
    // subscription replays a's history 1..=3, unthrottled.
    let t = Duration::from_millis(100);
    let o = Outbox::new(1 << 20, Duration::from_secs(60), Arc::default());
    let mut out = Vec::new();
    o.push_update(&up("a", 1, 0), t);
    o.drain_into(&mut out);
    o.push_update(&up("a", 2, 0), t);
    o.push_update(&up("a", 3, 0), t);
    for seq in 1..=3 {
        o.push_update(&up("a", seq, 0), Duration::ZERO);
    }
    drain_all(&o, &mut out).await;
    // a1 is not sent again; a2 and a3 come from the replay; the pending a3
    // is not sent a second time when its interval ends.
    assert_eq!(of(&out, "a"), vec![1, 2, 3]);
    // Live updates go on after the replay, throttled as before.
    o.push_update(&up("a", 4, 0), t);
    drain_all(&o, &mut out).await;
    assert_eq!(of(&out, "a"), vec![1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_replay_while_lagging_never_goes_below_what_was_sent() {
    // a4 is in the queue; the client lags; a replay of a's history 1..=5
    // arrives. Nothing at or below a4 follows it, and a5 still goes out.
    let o = Outbox::new(1_000, Duration::from_secs(60), Arc::default());
    let mut out = Vec::new();
    for seq in 1..=3 {
        o.push_update(&up("a", seq, 0), Duration::ZERO);
    }
    o.drain_into(&mut out);
    o.push_update(&up("a", 4, 0), Duration::ZERO);
    o.push_update(&up("b", 1, 1_000), Duration::ZERO);
    assert!(o.lagging());
    for seq in 1..=5 {
        o.push_update(&up("a", seq, 0), Duration::ZERO);
    }
    drain_all(&o, &mut out).await;
    assert_eq!(of(&out, "a"), vec![1, 2, 3, 4, 5]);
    assert!(lagged(&out).is_empty(), "nothing newer was skipped");
}

#[tokio::test(start_paused = true)]
async fn batching_with_lag_keeps_each_topic_rising_within_the_batch_frame() {
    // A 100 ms batching window: the session drains only when it ends. a is
    // throttled at 50 ms, so a2 falls due inside the window; then b floods
    // the queue and a3, a4 are conflated. The one batch frame must still show
    // a's seqs rising, the lag notice (a3 skipped) before the newest.
    let batch = Duration::from_millis(100);
    let t = Duration::from_millis(50);
    let o = Outbox::new(1_000, Duration::from_secs(60), Arc::default());
    o.push_update(&up("a", 1, 0), t);
    o.push_update(&up("a", 2, 0), t);
    tokio::time::advance(Duration::from_millis(60)).await;
    for seq in 1..=3 {
        o.push_update(&up("b", seq, 500), Duration::ZERO);
    }
    assert!(o.lagging());
    o.push_update(&up("a", 3, 0), t);
    o.push_update(&up("a", 4, 0), t);
    tokio::time::advance(batch - Duration::from_millis(60)).await;
    let mut items = Vec::new();
    o.drain_into(&mut items);
    let mut frames =
        crate::ws::frames::batches(&items, crate::ws::encoding::Encoding::Json, 1 << 20);
    assert_eq!(frames.len(), 1, "one frame holds the whole batch");
    let text = crate::ws::frames::testing::wire(frames.pop().unwrap());
    assert_eq!(
        text.opcode,
        crate::ws::frames::TEXT,
        "a JSON batch is a text frame"
    );
    let frame: serde_json::Value = serde_json::from_slice(&text.payload).expect("batch JSON");
    let topics: Vec<(String, Option<u64>)> = frame["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| {
            (
                u["topic"].as_str().expect("topic").into(),
                u["seq"].as_u64(),
            )
        })
        .collect();
    let a: Vec<u64> = topics
        .iter()
        .filter(|(t, _)| t == "a")
        .filter_map(|(_, s)| *s)
        .collect();
    assert_eq!(a, vec![1, 4]);
    assert_eq!(
        lagged(&items),
        vec![serde_json::json!({"topic": "a", "from": 3, "to": 3, "count": 1})]
    );
    let notice = topics.iter().position(|(t, _)| t == "$sys.lagged");
    let newest = topics.iter().position(|(t, s)| t == "a" && *s == Some(4));
    assert!(notice.is_some() && notice < newest, "{topics:?}");
    // Nothing is left to send later below a4.
    let mut rest = Vec::new();
    drain_all(&o, &mut rest).await;
    assert!(of(&rest, "a").is_empty(), "{:?}", seqs(&rest));
}

#[tokio::test(start_paused = true)]
async fn an_unthrottled_update_while_one_is_pending_is_not_followed_by_the_pending_one() {
    // a2 waits for a's interval; then another subscription lowers the
    // connection's throttle on a to zero and a3 goes straight to the queue.
    // When the interval ends, a2 must not follow a3.
    let t = Duration::from_millis(100);
    let o = Outbox::new(1 << 20, Duration::from_secs(60), Arc::default());
    let mut out = Vec::new();
    assert_eq!(o.push_update(&up("a", 1, 0), t), Pushed::Queued);
    assert_eq!(o.push_update(&up("a", 2, 0), t), Pushed::Held);
    assert_eq!(
        o.push_update(&up("a", 3, 0), Duration::ZERO),
        Pushed::Queued
    );
    drain_all(&o, &mut out).await;
    assert_eq!(of(&out, "a"), vec![1, 3]);
}

#[tokio::test(start_paused = true)]
async fn forgetting_a_topic_lets_a_new_subscription_replay_it_again() {
    // Once no subscription covers a topic, its ordering state goes with its
    // throttle: a later subscription's replay starts afresh.
    let o = Outbox::new(1 << 20, Duration::from_secs(60), Arc::default());
    let mut out = Vec::new();
    o.push_update(&up("a", 5, 0), Duration::ZERO);
    assert_eq!(o.push_update(&up("a", 4, 0), Duration::ZERO), Pushed::Stale);
    o.forget_throttle(|t| t != "a");
    assert_eq!(
        o.push_update(&up("a", 4, 0), Duration::ZERO),
        Pushed::Queued
    );
    o.drain_into(&mut out);
    assert_eq!(of(&out, "a"), vec![5, 4]);
}

#[test]
fn a_drained_burst_gives_its_memory_back_and_blocked_topics_wait_for_the_replay() {
    let o = Outbox::new(1 << 30, Duration::from_secs(5), Arc::default());
    for seq in 1..=5000 {
        o.push_update(&up("a", seq, 10), Duration::ZERO);
    }
    let mut items = Vec::new();
    o.drain_into(&mut items);
    assert_eq!(items.len(), 5000);
    assert_eq!(o.state.lock().unwrap().queue.capacity(), 0, "nothing kept");

    // While `b` is replayed, its live updates are not queued; the replay's
    // are, and a resume point (prime) holds back what is at or below it.
    let topic: Arc<str> = "b".into();
    o.block(&topic);
    assert_eq!(
        o.push_update(&up("b", 10, 0), Duration::ZERO),
        Pushed::Stale
    );
    assert_eq!(o.push_replay(&up("b", 8, 0)), Pushed::Queued);
    o.unblock("b");
    assert_eq!(
        o.push_update(&up("b", 11, 0), Duration::ZERO),
        Pushed::Queued
    );
    o.prime(&"c".into(), 5);
    assert_eq!(o.push_update(&up("c", 5, 0), Duration::ZERO), Pushed::Stale);
    assert_eq!(
        o.push_update(&up("c", 6, 0), Duration::ZERO),
        Pushed::Queued
    );
    items.clear();
    o.drain_into(&mut items);
    assert_eq!(
        seqs(&items),
        vec![("b".into(), 8), ("b".into(), 11), ("c".into(), 6)]
    );
}

/// An outbox with batching window `window`, woken by a running wheel;
/// cancel the token to stop the wheel.
fn on_wheel(window: Duration) -> (Arc<Outbox>, Arc<Wheel>, tokio_util::sync::CancellationToken) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let wheel = Wheel::new();
    tokio::spawn(wheel.clone().drive(shutdown.clone()));
    let o = Outbox::with_window(
        1 << 20,
        Duration::from_secs(5),
        Arc::default(),
        window,
        Some(wheel.clone()),
    );
    (o, wheel, shutdown)
}

/// Waits for the outbox's wake-up, and says how long after `from` it came.
async fn woken_after(o: &Outbox, from: Instant) -> Duration {
    tokio::time::timeout(Duration::from_secs(60), o.notified())
        .await
        .expect("woken");
    from.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_batching_window_wakes_the_session_once_when_it_closes() {
    let window = Duration::from_millis(50);
    let (o, wheel, shutdown) = on_wheel(window);
    let start = Instant::now();
    for seq in 1..=3 {
        o.push_update(&up("a", seq, 10), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    o.push_sys(SysMessage::new("$sys.x", &serde_json::json!(1)));
    // One wake-up for the window, at its end, not one per push.
    assert_eq!(wheel.pending(), 1);
    let woke = woken_after(&o, start).await;
    assert!(
        woke >= window && woke <= window + Duration::from_millis(1),
        "{woke:?}"
    );
    let mut out = Vec::new();
    o.drain_into(&mut out);
    assert_eq!(out.len(), 4);
    // Drained: the next push opens a new window.
    let again = Instant::now();
    o.push_update(&up("a", 4, 10), Duration::ZERO);
    let woke = woken_after(&o, again).await;
    assert!(woke >= window, "{woke:?}");
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_throttled_update_wakes_the_session_when_it_falls_due() {
    let (o, wheel, shutdown) = on_wheel(Duration::ZERO);
    let throttle = Duration::from_millis(200);
    assert_eq!(o.push_update(&up("a", 1, 10), throttle), Pushed::Queued);
    woken_after(&o, Instant::now()).await;
    let mut out = Vec::new();
    o.drain_into(&mut out);
    let start = Instant::now();
    tokio::time::advance(Duration::from_millis(20)).await;
    // Held: the first asks for a wake-up when due, the next ride on it.
    for seq in 2..=5 {
        assert_eq!(o.push_update(&up("a", seq, 10), throttle), Pushed::Held);
    }
    assert_eq!(wheel.pending(), 1);
    let woke = woken_after(&o, start).await;
    assert!(woke >= Duration::from_millis(180), "{woke:?}");
    out.clear();
    o.drain_into(&mut out);
    assert_eq!(seqs(&out), vec![("a".into(), 5)]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn while_replaying_a_batched_outbox_wakes_at_once() {
    let (o, _wheel, shutdown) = on_wheel(Duration::from_secs(1));
    // Queued in a window, then a replay starts: the session is woken now.
    o.push_update(&up("a", 1, 10), Duration::ZERO);
    let start = Instant::now();
    o.set_immediate(true);
    assert_eq!(woken_after(&o, start).await, Duration::ZERO);
    let mut out = Vec::new();
    o.drain_into(&mut out);
    o.push_replay(&up("b", 1, 10));
    assert_eq!(woken_after(&o, start).await, Duration::ZERO);
    o.drain_into(&mut out);
    // Replay over: back to the window.
    o.set_immediate(false);
    let again = Instant::now();
    o.push_update(&up("a", 2, 10), Duration::ZERO);
    assert!(woken_after(&o, again).await >= Duration::from_secs(1));
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_rare_state_is_made_on_first_use_and_freed_once_empty() {
    let o = Outbox::new(1 << 20, Duration::from_secs(5), Arc::default());
    let rare = |o: &Outbox| o.state.lock().unwrap().rare.is_some();
    o.push_update(&up("a", 1, 10), Duration::ZERO);
    assert!(!rare(&o), "plain updates need none");
    let topic: Arc<str> = "b".into();
    o.block(&topic);
    assert!(rare(&o));
    o.unblock("b");
    assert!(!rare(&o), "freed with the last blocked topic");
    o.push_update(&up("c", 1, 10), Duration::from_millis(100));
    assert!(rare(&o), "a throttle is kept");
    o.forget_throttle(|t| t != "c");
    assert!(!rare(&o), "freed with the last throttle");
    let mut items = Vec::new();
    o.drain_into(&mut items);
    assert_eq!(seqs(&items), vec![("a".into(), 1), ("c".into(), 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_lag_starting_inside_a_window_wakes_the_session_at_once() {
    let window = Duration::from_millis(50);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let wheel = Wheel::new();
    tokio::spawn(wheel.clone().drive(shutdown.clone()));
    let size = up("a", 1, 300).json.len();
    let o = Outbox::with_window(
        size * 3 - 1,
        Duration::from_secs(5),
        Arc::default(),
        window,
        Some(wheel.clone()),
    );
    let start = Instant::now();
    o.push_update(&up("a", 1, 300), Duration::ZERO);
    o.push_update(&up("a", 2, 300), Duration::ZERO);
    tokio::time::advance(Duration::from_millis(10)).await;
    // The third goes over the bound: conflation starts and the session is
    // woken now, not when the window closes.
    o.push_update(&up("a", 3, 300), Duration::ZERO);
    assert!(o.lagging());
    let woke = woken_after(&o, start).await;
    assert!(woke < window, "{woke:?}");
    let mut items = Vec::new();
    let drained = o.drain(&mut items);
    assert!(!drained.overflowed && !o.lagging());
    assert_eq!(seqs(&items).len(), 3);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_drain_hands_over_the_queue_and_says_when_the_client_is_given_up() {
    let o = Outbox::new(100, Duration::from_millis(500), Arc::default());
    o.push_update(&up("a", 1, 10), Duration::ZERO);
    o.push_update(&up("a", 2, 10), Duration::ZERO);
    let queued = o.state.lock().unwrap().queue.as_ptr();
    let mut items = Vec::new();
    assert_eq!(o.drain(&mut items), Drained::default());
    assert_eq!(items.as_ptr(), queued, "the queue's buffer, not a copy");
    assert_eq!(o.state.lock().unwrap().queue.capacity(), 0);
    items.clear();
    o.push_update(&up("a", 3, 200), Duration::ZERO);
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(
        o.push_update(&up("a", 4, 10), Duration::ZERO),
        Pushed::Refused
    );
    let drained = o.drain(&mut items);
    assert!(drained.overflowed);
    assert!(items.is_empty(), "nothing more for a client given up on");
    o.beat();
    assert!(o.drain(&mut items).beat);
}
