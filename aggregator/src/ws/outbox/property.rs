//! The ordering invariant of the outbox, as a property over random
//! interleavings of live pushes (throttled or not), replays of history
//! (overlapping what went out live, or run as the session does: the topic
//! blocked, history read in chunks while live updates go on, then joined to
//! live at the seq where the replay ended), the queue's byte bound being
//! exceeded (conflation), time passing (throttle intervals ending) and
//! drains (the socket taking frames out; batching only spaces the drains).
//!
//! For each topic the client must see:
//! * seqs strictly rising;
//! * every update pushed to it either sent, or named in a `$sys.lagged`
//!   notice, or older than one pushed before it (a replay overlapping what
//!   was already live), or replaced by a newer one while a throttle held it
//!   (the README's "the seq jump shows what was skipped");
//! * the newest update, in the end (a throttled one once its interval ends).
//!
//! Time is tokio's paused clock, advanced by the test: no real sleeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::tests::up;
use super::{Item, Outbox, Pushed};

/// Topics and their throttle (ms; zero for none).
const TOPICS: [(&str, u64); 3] = [("a", 100), ("b", 0), ("c", 30)];
/// Queue bound: a few padded updates exceed it.
const BOUND: usize = 2_000;

#[derive(Debug, Clone)]
enum Op {
    /// The topic's next live update; `thin` false pushes it unthrottled, as
    /// when another subscription lowers the connection's throttle to zero.
    Push {
        topic: usize,
        pad: usize,
        thin: bool,
    },
    /// Up to `len` updates of the topic's history, from `back` before its
    /// newest (a `history` or `since` subscribe): never throttled.
    Replay { topic: usize, back: u64, len: u64 },
    /// A session's replay of the topic starts `back` before its newest: live
    /// updates of it are held back (blocked) until the join.
    ReplayStart { topic: usize, back: u64 },
    /// The next `len` updates of a running replay are read from history.
    ReplayChunk { topic: usize, len: u64 },
    /// The replay joins live: what was published since its last chunk goes
    /// out, then live updates flow again.
    Join { topic: usize },
    /// Time passes.
    Advance { ms: u64 },
    /// The session drains what is due.
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, prop_oneof![Just(0usize), Just(60), Just(700)], prop::bool::weighted(0.85))
            .prop_map(|(topic, pad, thin)| Op::Push { topic, pad, thin }),
        1 => (0..3usize, 0..10u64, 1..12u64)
            .prop_map(|(topic, back, len)| Op::Replay { topic, back, len }),
        1 => (0..3usize, 0..10u64).prop_map(|(topic, back)| Op::ReplayStart { topic, back }),
        2 => (0..3usize, 1..6u64).prop_map(|(topic, len)| Op::ReplayChunk { topic, len }),
        1 => (0..3usize).prop_map(|topic| Op::Join { topic }),
        2 => (1..150u64).prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Drain),
    ]
}

/// One update pushed into the outbox.
#[derive(Debug)]
struct Sent {
    topic: &'static str,
    seq: u64,
    /// Pushed with a throttle (so a newer one may replace it silently).
    throttled: bool,
    /// The newest seq of its topic pushed before it.
    newest_before: u64,
}

/// Runs `ops` on a fresh outbox, then lets the client read until nothing is
/// held; returns what it received and what was pushed.
fn run(ops: &[Op]) -> (Vec<Item>, Vec<Sent>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        // A grace period no run reaches: the client is never dropped.
        let o = Outbox::new(BOUND, Duration::from_secs(3_600), Arc::default());
        let mut published = [0u64; 3];
        let mut newest = [0u64; 3];
        // Per topic, the next seq a running replay reads.
        let mut replaying: [Option<u64>; 3] = [None; 3];
        let mut pushed = Vec::new();
        let mut out = Vec::new();
        let mut push = |o: &Outbox, topic: usize, seq: u64, pad: usize, throttle: u64| {
            pushed.push(Sent {
                topic: TOPICS[topic].0,
                seq,
                throttled: throttle > 0,
                newest_before: newest[topic],
            });
            newest[topic] = newest[topic].max(seq);
            let r = o.push_update(
                &up(TOPICS[topic].0, seq, pad),
                Duration::from_millis(throttle),
            );
            assert_ne!(r, Pushed::Refused);
        };
        // History read by a session's replay: never throttled, queued even
        // while its topic is blocked.
        let replay = |o: &Outbox, topic: usize, seqs: std::ops::RangeInclusive<u64>| {
            for seq in seqs {
                assert_ne!(
                    o.push_replay(&up(TOPICS[topic].0, seq, 60)),
                    Pushed::Refused
                );
            }
        };
        let join = |o: &Outbox, topic: usize, next: u64, published: u64| {
            replay(o, topic, next..=published);
            o.unblock(TOPICS[topic].0);
        };
        for op in ops {
            match *op {
                Op::Push { topic, pad, thin } => {
                    published[topic] += 1;
                    let throttle = if thin { TOPICS[topic].1 } else { 0 };
                    push(&o, topic, published[topic], pad, throttle);
                }
                Op::Replay { topic, back, len } => {
                    if published[topic] == 0 {
                        continue;
                    }
                    let from = published[topic].saturating_sub(back).max(1);
                    let to = (from + len - 1).min(published[topic]);
                    for seq in from..=to {
                        push(&o, topic, seq, 60, 0);
                    }
                }
                Op::ReplayStart { topic, back } => {
                    if published[topic] == 0 || replaying[topic].is_some() {
                        continue;
                    }
                    o.block(&Arc::from(TOPICS[topic].0));
                    replaying[topic] = Some(published[topic].saturating_sub(back).max(1));
                }
                Op::ReplayChunk { topic, len } => {
                    let Some(next) = replaying[topic] else {
                        continue;
                    };
                    let to = (next + len - 1).min(published[topic]);
                    replay(&o, topic, next..=to);
                    replaying[topic] = Some(to + 1);
                }
                Op::Join { topic } => {
                    if let Some(next) = replaying[topic].take() {
                        join(&o, topic, next, published[topic]);
                    }
                }
                Op::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Drain => {
                    o.drain_into(&mut out);
                }
            }
        }
        // Replays still running join.
        for topic in 0..3 {
            if let Some(next) = replaying[topic].take() {
                join(&o, topic, next, published[topic]);
            }
        }
        // The client keeps reading: whatever is held falls due and goes out.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            if o.drain_into(&mut out).is_none() && !o.has_queued() {
                break;
            }
        }
        assert!(
            o.drain_into(&mut out).is_none() && !o.has_queued(),
            "still held"
        );
        (out, pushed)
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn each_topic_rises_skips_only_announced_and_ends_with_the_newest(
        ops in prop::collection::vec(op(), 1..80)
    ) {
        let (out, pushed) = run(&ops);
        let mut got: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut announced: Vec<(String, u64, u64)> = Vec::new();
        for item in &out {
            match item {
                Item::Update(u) => {
                    let topic = TOPICS.iter().find(|t| *t.0 == *u.topic).expect("known").0;
                    got.entry(topic).or_default().push(u.seq);
                }
                Item::Sys(m) if m.topic == "$sys.lagged" => {
                    for s in m.payload["skipped"].as_array().expect("skipped") {
                        let (from, to) = (s["from"].as_u64().expect("from"), s["to"].as_u64().expect("to"));
                        prop_assert!(from <= to, "{s}");
                        announced.push((s["topic"].as_str().expect("topic").into(), from, to));
                    }
                }
                Item::Sys(m) => prop_assert!(false, "unexpected {}", m.topic),
            }
        }
        for (topic, seqs) in &got {
            prop_assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{topic} went out as {seqs:?}"
            );
        }
        for (topic, _) in TOPICS {
            let newest = pushed.iter().filter(|p| p.topic == topic).map(|p| p.seq).max();
            let last = got.get(topic).and_then(|s| s.last().copied());
            prop_assert_eq!(last, newest, "the newest of {} never went out", topic);
        }
        for p in &pushed {
            let seqs = got.get(p.topic).map(Vec::as_slice).unwrap_or_default();
            let ok = seqs.contains(&p.seq)
                || announced.iter().any(|(t, from, to)| t == p.topic && (*from..=*to).contains(&p.seq))
                || p.seq <= p.newest_before
                || (p.throttled && seqs.iter().any(|s| *s > p.seq));
            prop_assert!(ok, "{p:?} skipped silently; {} went out as {seqs:?}", p.topic);
        }
    }
}
