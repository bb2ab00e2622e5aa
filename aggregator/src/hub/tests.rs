//! Tests of the hub: numbering, history bounds, replay and join, routing
//! groups, forgetting and resume points.

use super::*;
use crate::update::{Payload, Unnumbered};
use crate::ws::outbox::{Item, OutboxStats};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

mod groups;
mod thinning;

fn update(topic: &str, seq: u64) -> Update {
    let now = SystemTime::now();
    Update::new(
        topic.into(),
        seq,
        now,
        now,
        Payload::Other("x".repeat(100).into()),
    )
}

#[tokio::test]
async fn only_local_host_updates_are_exported_and_answered_for() {
    let (export, mut exported) = mpsc::channel(2);
    let (hub, _task) = spawn(HubSettings {
        history_len: 100,
        history_max_bytes: 1 << 20,
        queue: 64,
        queue_bytes: 1 << 20,
        rate_limits: Vec::new(),
        export: Some(export),
        store: None,
        remote_write: None,
    });
    let remote = |topic: &str, seq| {
        let u = update(topic, seq);
        Update::remote(u.topic.clone(), seq, u.json.clone(), "peer".into())
    };
    hub.send(Command::Publish(vec![
        update("host.a.cpu", 1),
        update("host.a.cpu", 2),
        remote("host.b.cpu", 7),
        update("hosts", 1),
        // Beyond the export queue: counted, not waited for.
        update("host.a.cpu", 3),
        // Already held: neither kept nor exported again.
        remote("host.a.cpu", 2),
    ]))
    .await
    .unwrap();
    let floors = hub.ask(|reply| Command::Floors { reply }).await.unwrap();
    assert_eq!(floors.get("host.a.cpu"), Some(&3));
    assert_eq!(floors.get("host.b.cpu"), Some(&7));
    assert!(!floors.contains_key("hosts"));
    let sent: Vec<(u64, u64)> = [exported.recv().await, exported.recv().await]
        .into_iter()
        .map(|u| u.map(|(n, u)| (n, u.seq)).unwrap())
        .collect();
    assert_eq!(sent, vec![(1, 1), (2, 2)], "(number, seq)");
    assert_eq!(hub.stats.export_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(hub.stats.updates_duplicate.load(Ordering::Relaxed), 1);
    // A peer holding host.a.cpu up to 1 gets 2 and 3; nothing of host.b.
    let answer = hub
        .ask(|reply| Command::Export {
            floors: HashMap::from([("host.a.cpu".to_string(), 1)]),
            reply,
        })
        .await
        .unwrap();
    let got: Vec<(String, u64)> = answer
        .iter()
        .flat_map(|t| t.history.all_after(t.after))
        .map(|u| (u.topic.to_string(), u.seq))
        .collect();
    assert_eq!(
        got,
        vec![("host.a.cpu".to_string(), 2), ("host.a.cpu".to_string(), 3)]
    ); // The one dropped still took its number: peers see the gap.
    hub.send(Command::Publish(vec![update("host.a.cpu", 4)]))
        .await
        .unwrap();
    let (n, u) = exported.recv().await.unwrap();
    assert_eq!((n, u.seq), (4, 4));
}

#[tokio::test]
async fn remote_write_takes_every_accepted_host_update_and_counts_what_the_full_queue_drops() {
    let (tap, mut tapped) = mpsc::channel(2);
    let (hub, _task) = spawn(HubSettings {
        remote_write: Some(tap),
        ..settings()
    });
    let remote = |topic: &str, seq| {
        let u = update(topic, seq);
        Update::remote(u.topic.clone(), seq, u.json.clone(), "peer".into())
    };
    hub.send(Command::Publish(vec![
        update("host.a.cpu", 1),
        // A peer's host updates are exported too: the fleet's data.
        remote("host.b.cpu", 7),
        // Not a host metric.
        update("hosts", 1),
        // Already held: not exported again.
        update("host.a.cpu", 1),
        // Beyond the queue: counted, not waited for.
        update("host.a.cpu", 2),
    ]))
    .await
    .unwrap();
    let got: Vec<(String, u64)> = [tapped.recv().await, tapped.recv().await]
        .into_iter()
        .map(|u| u.map(|u| (u.topic.to_string(), u.seq)).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![("host.a.cpu".to_string(), 1), ("host.b.cpu".to_string(), 7)]
    );
    let floors = hub.ask(|reply| Command::Floors { reply }).await.unwrap();
    assert_eq!(floors.get("host.a.cpu"), Some(&2), "published all the same");
    assert_eq!(hub.stats.remote_write_dropped.load(Ordering::Relaxed), 1);
    assert!(tapped.try_recv().is_err());
}

/// A presence event as ingest makes it: no seq until the hub gives one.
fn presence(host: &str) -> Unnumbered {
    Unnumbered {
        topic: "hosts".into(),
        at: SystemTime::now(),
        payload: Payload::Other(serde_json::json!({"event": "online", "host": host})),
    }
}

#[tokio::test]
async fn presence_events_are_numbered_in_the_order_they_reach_the_hub() {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 10;
    let (hub, _task) = spawn(HubSettings {
        history_len: 100,
        history_max_bytes: 1 << 20,
        queue: 64,
        queue_bytes: 1 << 20,
        rate_limits: Vec::new(),
        export: None,
        store: None,
        remote_write: None,
    });
    // Each pair is made first-to-last and submitted in both orders, as
    // two ingest tasks racing to the hub would.
    let (a, b) = (presence("a"), presence("b"));
    hub.send(Command::PublishNext(vec![a])).await.unwrap();
    hub.send(Command::PublishNext(vec![b])).await.unwrap();
    let (c, d) = (presence("c"), presence("d"));
    hub.send(Command::PublishNext(vec![d])).await.unwrap();
    hub.send(Command::PublishNext(vec![c])).await.unwrap();

    let outbox = test_outbox();
    subscribe_replayed(
        &hub,
        1,
        &outbox,
        SubscribeRequest {
            history: Some(100),
            ..subscribe_to("hosts", None, Duration::ZERO)
        },
    )
    .await;
    let mut items = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while items.len() < 5 {
            outbox.notified().await;
            outbox.drain_into(&mut items);
        }
    })
    .await
    .expect("the reply and four events");
    let got: Vec<(u64, String)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Update(u) => {
                let v: Value = serde_json::from_str(&u.json).unwrap();
                Some((u.seq, v["payload"]["host"].as_str().unwrap().to_string()))
            }
            Item::Sys(_) => None,
        })
        .collect();
    let hosts: Vec<&str> = got.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(hosts, ["a", "b", "d", "c"], "{got:?}");
    assert!(
        got.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "seqs not consecutive: {got:?}"
    );
    // Above any earlier run's: derived from the start time, not from 0.
    assert!(got[0].0 > started, "{got:?}");
    assert_eq!(hub.stats.updates_duplicate.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn history_stays_within_its_byte_bound_dropping_the_oldest_first() {
    let (hub, _task) = spawn(HubSettings {
        history_len: 1000,
        history_max_bytes: 20_000,
        queue: 64,
        queue_bytes: 1 << 20,
        rate_limits: Vec::new(),
        export: None,
        store: None,
        remote_write: None,
    });
    for seq in 1..=200 {
        let updates = ["a", "b", "c"].iter().map(|t| update(t, seq)).collect();
        hub.send(Command::Publish(updates)).await.unwrap();
    }
    let outbox = test_outbox();
    subscribe_replayed(
        &hub,
        1,
        &outbox,
        SubscribeRequest {
            history: Some(1000),
            ..subscribe_to("a", None, Duration::ZERO)
        },
    )
    .await;
    let mut items = Vec::new();
    while items.len() < 2 {
        outbox.notified().await;
        outbox.drain_into(&mut items);
    }
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Update(u) => Some(u.seq),
            Item::Sys(_) => None,
        })
        .collect();
    let held = hub.stats.history.bytes();
    assert!(held <= 20_000 && held > 15_000, "{held}");
    // Only the newest of topic `a` remain, consecutive up to the last.
    assert_eq!(*seqs.last().unwrap(), 200);
    assert!(
        seqs.len() < 200 && seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{seqs:?}"
    );
}

fn settings() -> HubSettings {
    HubSettings {
        history_len: 100,
        history_max_bytes: 1 << 20,
        queue: 64,
        queue_bytes: 1 << 20,
        rate_limits: Vec::new(),
        export: None,
        store: None,
        remote_write: None,
    }
}

/// An outbox of 1 MiB with a 5 s grace, as a connection would have.
fn test_outbox() -> Arc<Outbox> {
    Outbox::new(
        1 << 20,
        Duration::from_secs(5),
        Arc::new(OutboxStats::default()),
    )
}

/// Subscribes as a session does: the hub's reply, then the replay read
/// from history and joined to live delivery.
async fn subscribe_replayed(
    hub: &HubHandle,
    conn: ConnId,
    outbox: &Arc<Outbox>,
    request: SubscribeRequest,
) {
    if let Some(mut r) = subscribe_for_replay(hub, conn, outbox, request).await {
        let join = r.fill(conn, outbox, usize::MAX).expect("all read at once");
        hub.send(join).await.unwrap();
    }
}

/// Sends the subscribe as a session does; the replay to read, if any.
async fn subscribe_for_replay(
    hub: &HubHandle,
    conn: ConnId,
    outbox: &Arc<Outbox>,
    request: SubscribeRequest,
) -> Option<crate::ws::replay::Replaying> {
    let (replay, rx) = tokio::sync::oneshot::channel();
    hub.send(Command::Subscribe {
        conn,
        outbox: outbox.clone(),
        request,
        replay,
    })
    .await
    .unwrap();
    crate::ws::replay::Replaying::new(rx.await.unwrap())
}

fn subscribe_to(pattern: &str, since: Option<Since>, throttle: Duration) -> SubscribeRequest {
    SubscribeRequest {
        pattern: pattern.into(),
        id: None,
        since,
        history: None,
        throttle,
        history_every: Duration::ZERO,
        grant: None,
    }
}

#[tokio::test]
async fn forgetting_a_host_drops_its_topics_history_and_throttles_only() {
    let (hub, _task) = spawn(settings());
    let stats = hub.stats.clone();
    let outbox = test_outbox();
    subscribe_replayed(
        &hub,
        1,
        &outbox,
        subscribe_to(">", None, Duration::from_secs(60)),
    )
    .await;
    let floors = |hub: &HubHandle| {
        let hub = hub.clone();
        async move { hub.ask(|reply| Command::Floors { reply }).await.unwrap() }
    };
    // What stays: a host kept attached, and `hosts`.
    hub.send(Command::Publish(vec![
        update("host.b.cpu", 1),
        update("host.b.cpu", 2),
        update("hosts", 1),
    ]))
    .await
    .unwrap();
    floors(&hub).await;
    let (topics, bytes, tracked) = (
        stats.topics.load(Ordering::Relaxed),
        stats.history.bytes(),
        outbox.tracked_topics(),
    );
    hub.send(Command::Publish(
        (1..=20)
            .flat_map(|seq| [update("host.a.cpu", seq), update("host.a.memory", seq)])
            .collect(),
    ))
    .await
    .unwrap();
    floors(&hub).await;
    assert_eq!(stats.topics.load(Ordering::Relaxed), topics + 2);
    assert!(stats.history.bytes() > bytes + 20 * 100);
    assert!(
        outbox.tracked_topics() > tracked,
        "a's topics are throttled"
    );

    let forget = |keep: &[&str], idle: Duration| {
        let hub = hub.clone();
        let keep: HashSet<String> = keep.iter().map(|h| h.to_string()).collect();
        async move {
            hub.ask(|reply| Command::Forget { keep, idle, reply })
                .await
                .unwrap()
        }
    };
    // Not idle long enough, or kept: nothing goes.
    assert!(forget(&["b"], Duration::from_secs(3600)).await.is_empty());
    assert!(forget(&["a", "b"], Duration::ZERO).await.is_empty());
    assert_eq!(stats.topics.load(Ordering::Relaxed), topics + 2);

    assert_eq!(forget(&["b"], Duration::ZERO).await, vec!["a".to_string()]);
    assert_eq!(stats.topics.load(Ordering::Relaxed), topics);
    assert_eq!(stats.history.bytes(), bytes);
    assert_eq!(outbox.tracked_topics(), tracked);
    assert_eq!(stats.hosts_forgotten.load(Ordering::Relaxed), 1);
    let held = floors(&hub).await;
    assert!(!held.contains_key("host.a.cpu") && held.contains_key("host.b.cpu"));

    // Back again, it starts fresh: seq 1 is new, not a duplicate.
    hub.send(Command::Publish(vec![update("host.a.cpu", 1)]))
        .await
        .unwrap();
    assert_eq!(floors(&hub).await.get("host.a.cpu"), Some(&1));
    assert_eq!(stats.updates_duplicate.load(Ordering::Relaxed), 0);
}

#[test]
fn a_since_map_keeps_only_topics_not_held_yet_until_they_appear() {
    let mut hub = Hub::new(settings(), 0, Arc::new(HubStats::default()));
    hub.publish(update("host.a.cpu", 3));
    let outbox = test_outbox();
    let since = Since::PerTopic(HashMap::from([
        ("host.a.cpu".to_string(), 1),
        ("host.b.cpu".to_string(), 5),
        ("host.a.memory".to_string(), 9),
    ]));
    hub.subscribe(
        1,
        outbox.clone(),
        subscribe_to("host.*.cpu", Some(since), Duration::ZERO),
    );
    let kept = |hub: &Hub| hub.conns[&1].subscriptions[0].since.clone();
    // host.a.cpu is replayed and joined; host.a.memory is not matched.
    assert_eq!(
        kept(&hub),
        Some(Since::PerTopic(HashMap::from([(
            "host.b.cpu".to_string(),
            5
        )])))
    );
    let mut items = Vec::new();
    outbox.drain_into(&mut items);
    items.clear();
    // host.b.cpu appears: the resume point holds back seq 5, then goes.
    hub.publish(update("host.b.cpu", 5));
    assert_eq!(kept(&hub), None);
    hub.publish(update("host.b.cpu", 6));
    outbox.drain_into(&mut items);
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Update(u) => Some(u.seq),
            Item::Sys(_) => None,
        })
        .collect();
    assert_eq!(seqs, vec![6]);

    // One seq on an exact topic is kept only while the topic is not held.
    hub.subscribe(
        2,
        outbox.clone(),
        subscribe_to("host.a.cpu", Some(Since::All(2)), Duration::ZERO),
    );
    hub.subscribe(
        2,
        outbox.clone(),
        subscribe_to("host.c.cpu", Some(Since::All(2)), Duration::ZERO),
    );
    let subs = &hub.conns[&2].subscriptions;
    assert_eq!(subs[0].since, None);
    assert_eq!(subs[1].since, Some(Since::All(2)));
}

#[tokio::test]
async fn the_hub_queue_is_bounded_in_bytes_as_well_as_commands() {
    let one = update("host.a.cpu", 1).size();
    let (hub, mut rx) = queue(&HubSettings {
        queue_bytes: 10 * one,
        ..settings()
    });
    // Two commands of four updates fit; a third waits for room, although
    // the queue has room for 61 more commands.
    let batch = |from: u64| (from..from + 4).map(|s| update("host.a.cpu", s)).collect();
    hub.send(Command::Publish(batch(1))).await.unwrap();
    hub.send(Command::Publish(batch(5))).await.unwrap();
    assert!(hub.queue_fill() >= 0.8, "{}", hub.queue_fill());
    let third = hub.send(Command::Publish(batch(9)));
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut third)
            .await
            .is_err(),
        "a third batch went past the byte bound"
    );
    // The hub takes and handles one: its bytes are freed, the third goes in.
    drop(rx.recv().await.expect("queued"));
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("room after the first was handled")
        .unwrap();
    // A command larger than the whole bound still goes, alone.
    drop(rx.recv().await);
    drop(rx.recv().await);
    hub.send(Command::Publish(
        batch(100)
            .into_iter()
            .chain(batch(200))
            .chain(batch(300))
            .collect(),
    ))
    .await
    .unwrap();
}
