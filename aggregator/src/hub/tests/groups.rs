//! Tests of routing by groups and of replays joining live: shared entries,
//! one delivery per connection, the exact join seq, and the costs of
//! subscribe and disconnect at scale.

use super::*;

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
