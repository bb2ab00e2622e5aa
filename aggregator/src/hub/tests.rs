//! Tests of the hub: numbering, history bounds, replay and join, routing
//! groups, forgetting and resume points.

use super::*;
use crate::update::Payload;
use crate::ws::outbox::{Item, OutboxStats};
use std::time::SystemTime;

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
        rate_limits: Vec::new(),
        export: Some(export),
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
    let sent: Vec<u64> = [exported.recv().await, exported.recv().await]
        .into_iter()
        .map(|u| u.unwrap().seq)
        .collect();
    assert_eq!(sent, vec![1, 2]);
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
    );
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
        rate_limits: Vec::new(),
        export: None,
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
        rate_limits: Vec::new(),
        export: None,
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
        rate_limits: Vec::new(),
        export: None,
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
    let (replay, rx) = tokio::sync::oneshot::channel();
    hub.send(Command::Subscribe {
        conn,
        outbox: outbox.clone(),
        request,
        replay,
    })
    .await
    .unwrap();
    if let Some(mut r) = crate::ws::replay::Replaying::new(rx.await.unwrap()) {
        let join = r.fill(conn, outbox, usize::MAX).expect("all read at once");
        hub.send(join).await.unwrap();
    }
}

fn subscribe_to(pattern: &str, since: Option<Since>, throttle: Duration) -> SubscribeRequest {
    SubscribeRequest {
        pattern: pattern.into(),
        id: None,
        since,
        history: None,
        throttle,
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

/// The update seqs in `outbox`, drained.
fn drained_seqs(outbox: &Outbox) -> Vec<(String, u64)> {
    let mut items = Vec::new();
    outbox.drain_into(&mut items);
    items
        .iter()
        .filter_map(|i| match i {
            Item::Update(u) => Some((u.topic.to_string(), u.seq)),
            Item::Sys(_) => None,
        })
        .collect()
}

#[test]
fn identical_subscriptions_share_one_routing_entry_per_topic() {
    let mut hub = Hub::new(settings(), 0, Arc::new(HubStats::default()));
    for h in 0..20 {
        hub.publish(update(&format!("host.h{h}.cpu"), 1));
        hub.publish(update(&format!("host.h{h}.memory"), 1));
    }
    let patterns = ["host.*.cpu", "host.*.memory", "hosts"];
    let outboxes: Vec<_> = (0..500).map(|_| test_outbox()).collect();
    for (conn, outbox) in outboxes.iter().enumerate() {
        for p in patterns {
            let _ = hub.subscribe(
                conn as ConnId,
                outbox.clone(),
                subscribe_to(p, None, Duration::ZERO),
            );
        }
    }
    // 500 dashboards, three patterns: three groups, one entry per topic.
    assert_eq!(hub.routing.len(), 3);
    assert_eq!(hub.stats.groups.load(Ordering::Relaxed), 3);
    assert!(hub.topics.values().all(|t| t.groups.len() == 1));
    hub.publish(update("hosts", 1));
    assert_eq!(
        hub.topics["hosts"].groups.len(),
        1,
        "a new topic finds its group"
    );
    hub.publish(update("host.h3.cpu", 2));
    for outbox in &outboxes {
        assert_eq!(
            drained_seqs(outbox),
            vec![("hosts".to_string(), 1), ("host.h3.cpu".to_string(), 2)]
        );
    }

    // A throttled subscription to the same pattern is a group of its own.
    let _ = hub.subscribe(
        1000,
        test_outbox(),
        subscribe_to("host.*.cpu", None, Duration::from_secs(5)),
    );
    assert_eq!(hub.routing.len(), 4);
    assert!(hub.topics["host.h0.cpu"].groups.len() == 2);

    // Disconnects touch only the leaver's groups; the last one out takes
    // the group off its topics.
    for conn in 0..500 {
        hub.disconnect(conn);
    }
    assert_eq!(hub.routing.len(), 1);
    assert_eq!(hub.topics["host.h0.cpu"].groups.len(), 1);
    assert!(hub.topics["host.h0.memory"].groups.is_empty());
    assert!(hub.topics["hosts"].groups.is_empty());
    hub.disconnect(1000);
    assert_eq!(hub.routing.len(), 0);
    assert!(hub.topics.values().all(|t| t.groups.is_empty()));
    assert_eq!(hub.stats.subscriptions.load(Ordering::Relaxed), 0);
}

#[test]
fn a_connection_matching_a_topic_twice_gets_each_update_once() {
    let mut hub = Hub::new(settings(), 0, Arc::new(HubStats::default()));
    let outbox = test_outbox();
    hub.publish(update("host.a.cpu", 1));
    for p in ["host.a.>", "host.*.cpu", ">"] {
        let _ = hub.subscribe(1, outbox.clone(), subscribe_to(p, None, Duration::ZERO));
    }
    hub.publish(update("host.a.cpu", 2));
    hub.publish(update("host.a.cpu", 3));
    hub.publish(update("host.b.cpu", 1));
    assert_eq!(
        drained_seqs(&outbox),
        vec![
            ("host.a.cpu".to_string(), 2),
            ("host.a.cpu".to_string(), 3),
            ("host.b.cpu".to_string(), 1)
        ]
    );
    // Unsubscribing one pattern leaves the others delivering.
    hub.unsubscribe(1, "host.a.>".into(), None);
    hub.unsubscribe(1, ">".into(), None);
    hub.publish(update("host.a.cpu", 4));
    hub.publish(update("host.a.memory", 1));
    assert_eq!(drained_seqs(&outbox), vec![("host.a.cpu".to_string(), 4)]);
}

#[test]
fn a_replay_joins_live_at_the_exact_seq_whatever_was_published_meanwhile() {
    let mut hub = Hub::new(settings(), 0, Arc::new(HubStats::default()));
    for seq in 1..=50 {
        hub.publish(update("host.a.cpu", seq));
    }
    let outbox = test_outbox();
    let replay = hub.subscribe(
        1,
        outbox.clone(),
        SubscribeRequest {
            history: Some(20),
            ..subscribe_to("host.a.cpu", None, Duration::ZERO)
        },
    );
    // Live updates while the session has not read anything yet: held back.
    for seq in 51..=60 {
        hub.publish(update("host.a.cpu", seq));
    }
    assert!(drained_seqs(&outbox).is_empty());
    // The session reads part of it, more is published, it reads on, joins.
    let mut r = crate::ws::replay::Replaying::new(replay).expect("something to replay");
    assert!(r.fill(1, &outbox, 1).is_none());
    let mut got = drained_seqs(&outbox);
    for seq in 61..=65 {
        hub.publish(update("host.a.cpu", seq));
    }
    let join = loop {
        if let Some(join) = r.fill(1, &outbox, 1 << 20) {
            break join;
        }
    };
    got.extend(drained_seqs(&outbox));
    for seq in 66..=67 {
        hub.publish(update("host.a.cpu", seq));
    }
    hub.handle(join);
    hub.publish(update("host.a.cpu", 68));
    got.extend(drained_seqs(&outbox));
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (31..=68).collect::<Vec<_>>());
}

/// The hub micro-benchmark (`make bench-hub`, release build): subscribe
/// and disconnect at 10,000 topics × 1,000 connections of three patterns
/// each, as a fleet's dashboards hold them (their host page, the fleet's
/// CPU, the `hosts` events). Prints medians; asserts nothing about speed.
#[test]
#[ignore = "benchmark: make bench-hub"]
fn hub_costs() {
    const HOSTS: usize = 1_000;
    const KINDS: [&str; 10] = [
        "cpu",
        "memory",
        "load",
        "processes",
        "network",
        "disk",
        "filesystems",
        "system",
        "temperatures",
        "extra",
    ];
    const CONNS: u64 = 1_000;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut runs = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut hub = Hub::new(settings(), 0, Arc::new(HubStats::default()));
        for h in 0..HOSTS {
            for k in KINDS {
                hub.publish(update(&format!("host.h{h:04}.{k}"), 1));
            }
        }
        hub.publish(update("hosts", 1));
        let outboxes: Vec<_> = (0..CONNS).map(|_| test_outbox()).collect();
        let started = std::time::Instant::now();
        for (conn, outbox) in outboxes.iter().enumerate() {
            let conn = conn as ConnId;
            let host = format!("host.h{:04}.>", conn as usize % HOSTS);
            for p in [host.as_str(), "host.*.cpu", "hosts"] {
                let _ = hub.subscribe(conn, outbox.clone(), subscribe_to(p, None, Duration::ZERO));
            }
        }
        let subscribe = started.elapsed().as_secs_f64() * 1e6 / (3 * CONNS) as f64;
        // Publishing, with every connection subscribed.
        let started = std::time::Instant::now();
        for seq in 2..=3 {
            for h in 0..HOSTS {
                hub.publish(update(&format!("host.h{h:04}.cpu"), seq));
            }
        }
        let publish = started.elapsed().as_secs_f64() * 1e6 / (2 * HOSTS) as f64;
        let started = std::time::Instant::now();
        for conn in 0..CONNS {
            hub.disconnect(conn);
        }
        let disconnect = started.elapsed().as_secs_f64() * 1e6 / CONNS as f64;
        assert_eq!(hub.routing.len(), 0);
        runs.0.push(subscribe);
        runs.1.push(publish);
        runs.2.push(disconnect);
    }
    println!(
        "hub at {} topics x {CONNS} connections (3 patterns each), medians of 3: \
         subscribe {:.1} us/pattern, publish {:.1} us/update to {CONNS} subscribers, \
         disconnect {:.1} us/connection",
        HOSTS * KINDS.len() + 1,
        median(runs.0),
        median(runs.1),
        median(runs.2)
    );
}
