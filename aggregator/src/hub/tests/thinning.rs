//! Thinned replays (`history_every_ms`): at most one update per interval of
//! sample time, the newest of each; `history: N` counts intervals; a resume
//! with `since` is thinned too; live delivery joins at the next seq, with
//! seqs strictly rising on the connection throughout.

use super::*;
use crate::update::from_unix_ms;

/// A multiple of 5 s, so that intervals of 5 s start at seqs 1, 6, 11…
const BASE_MS: i64 = 1_795_000_000_000;

/// Update `seq` of `topic`, taken `seq - 1` seconds after [`BASE_MS`].
fn timed(topic: &str, seq: u64) -> Update {
    let at = from_unix_ms(BASE_MS + (seq as i64 - 1) * 1000);
    Update::new(
        topic.into(),
        seq,
        at,
        at,
        Payload::Other(serde_json::json!({"total_pct": seq})),
    )
}

/// Subscribes as a session does, reading the replay `budget` bytes at a
/// time (so a topic is read in several pieces), then joining.
async fn subscribe_in_pieces(
    hub: &HubHandle,
    conn: ConnId,
    outbox: &Arc<Outbox>,
    request: SubscribeRequest,
    budget: usize,
) {
    let Some(mut r) = subscribe_for_replay(hub, conn, outbox, request).await else {
        return;
    };
    loop {
        if let Some(join) = r.fill(conn, outbox, budget) {
            hub.send(join).await.unwrap();
            return;
        }
        let mut drained = Vec::new();
        outbox.drain_into(&mut drained);
        PUSHED.with(|p| p.borrow_mut().extend(drained));
    }
}

thread_local! {
    /// What `subscribe_in_pieces` drained to make room, in order.
    static PUSHED: std::cell::RefCell<Vec<Item>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// (topic, seq) of every update queued so far, in order.
async fn received(outbox: &Outbox, at_least: usize) -> Vec<(String, u64)> {
    let mut items = PUSHED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            outbox.drain_into(&mut items);
            let n = items
                .iter()
                .filter(|i| matches!(i, Item::Update(_)))
                .count();
            if n >= at_least {
                break;
            }
            outbox.notified().await;
        }
    })
    .await
    .expect("the updates arrive");
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Update(u) => Some((u.topic.to_string(), u.seq)),
            Item::Sys(_) => None,
        })
        .collect()
}

fn seqs_of(got: &[(String, u64)], topic: &str) -> Vec<u64> {
    got.iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, s)| *s)
        .collect()
}

#[tokio::test]
async fn a_thinned_history_sends_the_newest_of_each_of_the_last_n_intervals() {
    let (hub, _task) = spawn(settings());
    // 100 s of samples, one a second, on two topics.
    for seq in 1..=100 {
        hub.send(Command::Publish(vec![
            timed("host.a.cpu", seq),
            timed("host.b.cpu", seq),
        ]))
        .await
        .unwrap();
    }
    // Read all at once, then in small pieces. The second subscriber also
    // sees the first one's live update, 101: the newest of interval 20.
    let every_fifth = vec![75, 80, 85, 90, 95, 100];
    let with_live = vec![80, 85, 90, 95, 100, 101];
    for (conn, budget, a, live_seq) in [
        (1, usize::MAX, &every_fifth, 101),
        (2, 300, &with_live, 102),
    ] {
        PUSHED.with(|p| p.borrow_mut().clear());
        let outbox = test_outbox();
        subscribe_in_pieces(
            &hub,
            conn,
            &outbox,
            SubscribeRequest {
                history: Some(6),
                history_every: Duration::from_secs(5),
                ..subscribe_to("host.*.cpu", None, Duration::ZERO)
            },
            budget,
        )
        .await;
        let got = received(&outbox, 12).await;
        assert_eq!(&seqs_of(&got, "host.a.cpu"), a, "budget {budget}: {got:?}");
        assert_eq!(seqs_of(&got, "host.b.cpu"), every_fifth, "budget {budget}");
        // Live from the very next seq.
        hub.send(Command::Publish(vec![timed("host.a.cpu", live_seq)]))
            .await
            .unwrap();
        let live = received(&outbox, 1).await;
        assert_eq!(live, vec![("host.a.cpu".to_string(), live_seq)]);
    }
}

#[tokio::test]
async fn a_thinned_resume_sends_one_per_interval_after_since_and_never_repeats() {
    let (hub, _task) = spawn(settings());
    for seq in 1..=40 {
        hub.send(Command::Publish(vec![timed("host.a.cpu", seq)]))
            .await
            .unwrap();
    }
    let outbox = test_outbox();
    // Already has up to 22: intervals from 21–25 on, the newest of each,
    // never 22 or below.
    subscribe_in_pieces(
        &hub,
        1,
        &outbox,
        SubscribeRequest {
            history_every: Duration::from_secs(5),
            ..subscribe_to(
                "host.*.cpu",
                Some(Since::PerTopic(HashMap::from([(
                    "host.a.cpu".to_string(),
                    22,
                )]))),
                Duration::ZERO,
            )
        },
        200,
    )
    .await;
    let got = received(&outbox, 4).await;
    assert_eq!(seqs_of(&got, "host.a.cpu"), vec![25, 30, 35, 40]);

    // Asking again on a topic the connection follows fills in only what it
    // has not had: nothing at or below 40 again.
    for seq in 41..=47 {
        hub.send(Command::Publish(vec![timed("host.a.cpu", seq)]))
            .await
            .unwrap();
    }
    let live = received(&outbox, 7).await;
    assert_eq!(seqs_of(&live, "host.a.cpu"), (41..=47).collect::<Vec<_>>());
    subscribe_in_pieces(
        &hub,
        1,
        &outbox,
        SubscribeRequest {
            history: Some(100),
            history_every: Duration::from_secs(5),
            ..subscribe_to("host.a.cpu", None, Duration::ZERO)
        },
        usize::MAX,
    )
    .await;
    hub.send(Command::Publish(vec![timed("host.a.cpu", 48)]))
        .await
        .unwrap();
    let after = received(&outbox, 1).await;
    let seqs = seqs_of(&after, "host.a.cpu");
    assert_eq!(seqs, vec![48], "{after:?}");
}

#[tokio::test]
async fn without_history_every_a_replay_is_exact() {
    let (hub, _task) = spawn(settings());
    for seq in 1..=12 {
        hub.send(Command::Publish(vec![timed("host.a.cpu", seq)]))
            .await
            .unwrap();
    }
    let outbox = test_outbox();
    subscribe_in_pieces(
        &hub,
        1,
        &outbox,
        SubscribeRequest {
            history: Some(6),
            ..subscribe_to("host.a.cpu", None, Duration::ZERO)
        },
        usize::MAX,
    )
    .await;
    let got = received(&outbox, 6).await;
    assert_eq!(seqs_of(&got, "host.a.cpu"), (7..=12).collect::<Vec<_>>());
}
