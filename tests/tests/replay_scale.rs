//! Replays at fleet scale, end to end (issue 13, "Tests"): the real
//! `hostpulse-aggregator` binary on its default history and queue settings,
//! hosts preloaded through real gRPC streams ([`FakeAgent`]), and WebSocket
//! clients asking for large replays while a live observer measures how late
//! a steadily published update reaches it.
//!
//! * A fleet view over 2,000 hosts with `history: 120` gets every point and
//!   no `$sys.lagged`, while the observer stays under 100 ms.
//! * A storm of 200 host pages (`history: 300`) connecting, dropping and
//!   reconnecting, plus 10 clients each replaying 100,000 updates, keeps the
//!   observer under 100 ms, and every client gets every point it asked for.
//!
//! Where things run, so that the observer's figures are the server's and not
//! the test's: the aggregator is a process of its own. The heavy clients
//! (fleet view, host pages, large replays) run on the test's own runtime, one
//! thread, and read lightly (topic and seq only, [`WsClient::next_light`]).
//! The live publisher and the observer run on a runtime of their own, on a
//! thread of their own that is idle but for one update per [`LIVE_INTERVAL`],
//! so the kernel wakes it promptly whatever the heavy clients are doing.
//! The two scenarios never run at once (see [`ONE_AT_A_TIME`]).
//!
//! Needs the binaries built first (`cargo build --workspace --bins`, as
//! `make test` does).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostpulse_proto::{Cpu, Load, Sample};
use hostpulse_tests::WAIT;
use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::process::{Proc, addr_in, temp_file};
use hostpulse_tests::ws::{Closed, Light, WsClient, topic_and_seq};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Hosts the fleet view shows.
const FLEET_HOSTS: usize = 2_000;
/// Points per host the fleet view asks for (`history`).
const FLEET_HISTORY: u64 = 120;
/// cpu samples preloaded per fleet host: more than the view asks for, so
/// the replay has to pick each topic's newest [`FLEET_HISTORY`].
const FLEET_SAMPLES: u64 = 130;

/// Hosts in the storm: one host page follows each.
const STORM_HOSTS: usize = 200;
/// Samples (cpu and load, so two topics) preloaded per storm host.
const STORM_SAMPLES: u64 = 500;
/// What a host page asks for: `host.<h>.>` with this `history`.
const HOST_PAGE_HISTORY: u64 = 300;
/// Clients each replaying `host.*.cpu` with [`REPLAY_HISTORY`]:
/// 200 topics × 500 = 100,000 updates each.
const REPLAYERS: usize = 10;
/// `history` of each replaying client.
const REPLAY_HISTORY: u64 = 500;

/// Gap between the live host's samples: 50 a second, so that even the
/// shortest window ([`MIN_WINDOW`]) holds 50 of them and a window of a few
/// seconds enough for its p99 not to be simply its maximum.
const LIVE_INTERVAL: Duration = Duration::from_millis(20);
/// The live host and the one topic the observer follows. Not a cpu topic,
/// so no replaying pattern (`host.*.cpu`) includes it.
const LIVE_HOST: &str = "observed";
const LIVE_TOPIC: &str = "host.observed.load";

/// Issue 13's bound on a live observer's latency while others replay.
///
/// Latency is measured per live update, from the instant the test hands its
/// batch to the gRPC stream to the instant the observer has read it, on one
/// monotonic clock (both ends run in this process). The statistic asserted
/// is the p99 (nearest rank) of the updates sent while the replay runs, an
/// update that never arrives counting as infinitely late. Why p99 and not
/// the maximum: on a shared two-core machine one update can be late because
/// the kernel ran something else, which says nothing about the server; the
/// fault this guards against (a replay holding up live routing) delays every
/// update sent while it lasts, so anything longer than about 1 % of the
/// window fails the p99. It is also the statistic issue 13's benchmark
/// targets name ("the observer's p99 stays at 100 ms or less"). With fewer
/// than 100 updates in the window the p99 is the maximum.
const LATENCY_LIMIT: Duration = Duration::from_millis(100);
/// The observer's window lasts at least this long (from the replay's
/// request), so a replay served very fast is still measured over 50 updates.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// Longest any client may take over its whole replay (or both rounds, for
/// host pages), from the moment the replays were asked for.
const REPLAY_LIMIT: Duration = Duration::from_secs(45);
/// A client that received nothing for this long while it still expected
/// updates has got all it is going to get.
const STALL: Duration = Duration::from_secs(10);
/// Preloading agent streams open at any moment (TCP, HTTP/2, `Hello`, one
/// batch, its ack).
const IN_FLIGHT: usize = 100;

/// Held by each scenario for its whole run: `cargo test` runs a file's tests
/// in parallel, and two of these at once on two cores would measure each
/// other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The real aggregator binary, on loopback ports of its own choosing.
struct Aggregator {
    /// Killed on drop, so a failed test leaves nothing running.
    _process: Proc,
    ingest_url: String,
    ws_url: String,
}

/// Starts the aggregator on its defaults: the file sets its addresses, and
/// every other key keeps its default as in an operator's file, in particular
/// `ws.queue_max_bytes` (4 MiB: a connection with more queued is lagging),
/// `ws.slow_grace_ms` and `hub.history_max_bytes`. `hub.history_len` is
/// written out (at its default, 600) because the preloaded data is sized to
/// fit it: every point a client asks for is held.
fn start_aggregator() -> Aggregator {
    let config = temp_file(
        "aggregator.toml",
        "[ingest]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [hub]\nhistory_len = 600\n",
    );
    let mut process = Proc::spawn(
        "hostpulse-aggregator",
        &["--config", config.to_str().expect("a UTF-8 path")],
    );
    let line = process.wait_for_line("aggregator listening");
    Aggregator {
        ingest_url: format!("http://{}", addr_in(&line, "ingest_addr")),
        ws_url: format!("ws://{}/ws", addr_in(&line, "http_addr")),
        _process: process,
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// A sample taken at `at_ms`: a cpu reading of four cores, and a load
/// average if `load`.
fn sample(seq: u64, at_ms: i64, load: bool) -> Sample {
    let pct = (seq % 100) as f32;
    Sample {
        seq,
        timestamp_ms: at_ms,
        cpu: Some(Cpu {
            total_pct: pct,
            per_core_pct: vec![pct, pct / 2.0, pct / 4.0, pct / 8.0],
        }),
        load: load.then_some(Load {
            one: 0.5,
            five: 0.25,
            fifteen: 0.125,
        }),
        ..Sample::default()
    }
}

/// Publishes `samples` samples (seqs 1 to `samples`, one second apart in
/// sample time, the newest now) for each of `hosts`, each host on its own
/// gRPC stream in one batch, and waits for every ack: the hub has every
/// update queued before any later subscribe.
async fn preload(url: &str, hosts: &[String], samples: u64, load: bool) {
    let now = unix_ms();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut loading = JoinSet::new();
    for host in hosts {
        let (url, host, slots) = (url.to_string(), host.clone(), slots.clone());
        loading.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore open");
            let mut agent = FakeAgent::connect(&url, &host).await;
            let batch: Vec<Sample> = (1..=samples)
                .map(|seq| sample(seq, now - (samples - seq) as i64 * 1000, load))
                .collect();
            agent.send(fake::batch(1, &batch)).await;
            agent.acked(1).await;
        });
    }
    while let Some(done) = loading.join_next().await {
        done.expect("host preloaded");
    }
}

/// One live update as published.
struct Sent {
    seq: u64,
    /// When its batch was handed to the gRPC stream.
    at: Instant,
    /// How late the publisher's timer fired for it: how promptly this
    /// process's own thread was run (a check on the measurement, not on the
    /// server).
    late: Duration,
}

/// One live update as the observer read it.
struct Got {
    /// When it had been read (first arrival).
    at: Instant,
    /// Its `received` minus its `timestamp` (wall clock, milliseconds): the
    /// share of the latency spent before the aggregator's ingest had it.
    to_ingest: Duration,
}

/// What the live publisher sent and the observer received.
struct Timeline {
    sent: Vec<Sent>,
    /// By seq.
    received: HashMap<u64, Got>,
    /// How the observer's connection ended, if it did.
    closed: Option<Closed>,
}

/// A live host publishing one sample per [`LIVE_INTERVAL`] and a client
/// following its [`LIVE_TOPIC`], on their own thread and runtime.
struct Observer {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<Timeline>,
}

impl Observer {
    /// Starts both; returns once the observer is subscribed.
    async fn start(agg: &Aggregator) -> Self {
        let (ingest, ws) = (agg.ingest_url.clone(), agg.ws_url.clone());
        let stop = CancellationToken::new();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the observer's runtime")
                .block_on(observe(ingest, ws, token, ready_tx))
        });
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("observer ready in time")
            .expect("observer thread running");
        Self { stop, thread }
    }

    /// Stops publishing, waits (up to [`WAIT`]) for the last update sent to
    /// arrive, and returns what was seen.
    async fn stop(self) -> Timeline {
        self.stop.cancel();
        let thread = self.thread;
        tokio::time::timeout(
            WAIT + Duration::from_secs(5),
            tokio::task::spawn_blocking(move || thread.join().expect("observer thread")),
        )
        .await
        .expect("observer stops in time")
        .expect("observer joined")
    }
}

async fn observe(
    ingest: String,
    ws: String,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Timeline {
    let FakeAgent { tx, mut inbound } = FakeAgent::connect(&ingest, LIVE_HOST).await;
    // Acks are read and dropped, so the stream never waits on them.
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let mut client = WsClient::connect(&ws).await;
    client.subscribe(LIVE_TOPIC).await;

    // The last seq sent, once publishing has stopped.
    let (last_tx, last_rx) = watch::channel(None::<(u64, Instant)>);
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = Vec::new();
        loop {
            let due = tokio::select! {
                _ = stop.cancelled() => break,
                due = tick.tick() => due,
            };
            let seq = sent.len() as u64 + 1;
            let at = Instant::now();
            let live = fake::batch(seq, &[live_sample(seq)]);
            tx.send(live).await.expect("live stream open");
            let late = at.saturating_duration_since(due.into_std());
            sent.push(Sent { seq, at, late });
        }
        let last = sent.last().map_or(0, |s| s.seq);
        last_tx.send_replace(Some((last, Instant::now())));
        (sent, tx)
    });
    let _ = ready.send(());

    let mut timeline = Timeline {
        sent: Vec::new(),
        received: HashMap::new(),
        closed: None,
    };
    loop {
        if let Some((last, stopped)) = *last_rx.borrow()
            && (last == 0 || timeline.received.contains_key(&last) || stopped.elapsed() > WAIT)
        {
            break;
        }
        match client.recv(Duration::from_millis(100)).await {
            Ok(Some(m)) => {
                let at = Instant::now();
                if m["topic"] != LIVE_TOPIC {
                    continue;
                }
                let seq = m["seq"].as_u64().expect("an update has a seq");
                let wall = |field: &str| {
                    let text = m[field].as_str().expect("an RFC 3339 time");
                    humantime::parse_rfc3339(text).expect("an RFC 3339 time")
                };
                let to_ingest = wall("received")
                    .duration_since(wall("timestamp"))
                    .unwrap_or_default();
                timeline
                    .received
                    .entry(seq)
                    .or_insert(Got { at, to_ingest });
            }
            Ok(None) => {}
            Err(closed) => {
                timeline.closed = Some(closed);
                publishing_stopped(&last_rx).await;
                break;
            }
        }
    }
    let (sent, _tx) = publisher.await.expect("publisher");
    timeline.sent = sent;
    timeline
}

/// Waits until the publisher has stopped (after the observer's connection
/// is gone, there is nothing else to do).
async fn publishing_stopped(last: &watch::Receiver<Option<(u64, Instant)>>) {
    let mut last = last.clone();
    let _ = last.wait_for(|l| l.is_some()).await;
}

/// The live host's sample `seq`: a load average, taken now.
fn live_sample(seq: u64) -> Sample {
    Sample {
        seq,
        timestamp_ms: unix_ms(),
        load: Some(Load {
            one: 1.0,
            five: 0.5,
            fifteen: 0.25,
        }),
        ..Sample::default()
    }
}

/// The observer's latencies over the live updates sent in `from..=to`.
struct Latency {
    /// Updates sent in the window.
    updates: usize,
    /// Of those, never received.
    missing: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// p99 of the share before the aggregator's ingest had them.
    to_ingest_p99: Duration,
    /// The publisher's timer's worst lateness in the window.
    late_max: Duration,
}

/// Nearest rank: the smallest of `sorted` at or above the share `p` of all.
fn rank(sorted: &[Duration], p: f64) -> Duration {
    sorted[((p * sorted.len() as f64).ceil() as usize).max(1) - 1]
}

impl Latency {
    fn of(t: &Timeline, from: Instant, to: Instant) -> Self {
        let window: Vec<&Sent> = t
            .sent
            .iter()
            .filter(|s| (from..=to).contains(&s.at))
            .collect();
        assert!(!window.is_empty(), "no live update was sent in the window");
        let mut each: Vec<Duration> = window
            .iter()
            .map(|s| {
                t.received
                    .get(&s.seq)
                    .map_or(Duration::MAX, |got| got.at.saturating_duration_since(s.at))
            })
            .collect();
        each.sort();
        let mut to_ingest: Vec<Duration> = window
            .iter()
            .filter_map(|s| t.received.get(&s.seq).map(|got| got.to_ingest))
            .collect();
        to_ingest.sort();
        Self {
            updates: each.len(),
            missing: each.iter().filter(|d| **d == Duration::MAX).count(),
            p50: rank(&each, 0.50),
            p99: rank(&each, 0.99),
            max: *each.last().expect("not empty"),
            to_ingest_p99: if to_ingest.is_empty() {
                Duration::MAX
            } else {
                rank(&to_ingest, 0.99)
            },
            late_max: window.iter().map(|s| s.late).max().expect("not empty"),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| {
            if d == Duration::MAX {
                "never".to_string()
            } else {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            }
        };
        write!(
            f,
            "{} live updates: p50 {}, p99 {}, max {}, {} never arrived \
             (sample time to the aggregator's receipt: p99 {}; the publisher's \
             own timer fired at most {} late)",
            self.updates,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.missing,
            ms(self.to_ingest_p99),
            ms(self.late_max)
        )
    }
}

/// Seqs of one topic as received.
#[derive(Debug, Clone, Copy)]
struct Seqs {
    count: u64,
    first: u64,
    last: u64,
    /// Arrivals at or below the last seq already received.
    not_rising: u64,
}

/// What one client received over one subscription's replay.
#[derive(Debug, Default)]
struct Replay {
    topics: HashMap<String, Seqs>,
    updates: u64,
    lagged: Vec<Value>,
    errors: Vec<Value>,
    /// Updates beyond the number expected (by a ping's pong).
    extra: u64,
    /// When the last update arrived.
    last_at: Option<Instant>,
    /// Why reading stopped short, if it did.
    cut: Option<String>,
}

impl Replay {
    fn record(&mut self, topic: String, seq: u64) {
        self.updates += 1;
        self.last_at = Some(Instant::now());
        self.topics
            .entry(topic)
            .and_modify(|s| {
                s.count += 1;
                if seq <= s.last {
                    s.not_rising += 1;
                } else {
                    s.last = seq;
                }
            })
            .or_insert(Seqs {
                count: 1,
                first: seq,
                last: seq,
                not_rising: 0,
            });
    }

    /// Records a message other than a lone update; returns whether it
    /// was (or held) a `$sys.pong`. The updates of a `batch.update` frame
    /// count like any others (these clients ask for no batching, but how
    /// updates are framed is not what is tested here).
    fn other(&mut self, m: Value) -> bool {
        match m["topic"].as_str() {
            Some("$sys.lagged") => self.lagged.push(m),
            Some("$sys.error") => self.errors.push(m),
            Some("$sys.pong") => return true,
            Some("batch.update") => {
                let mut pong = false;
                for item in m["updates"].as_array().into_iter().flatten() {
                    match (item["topic"].as_str(), item["seq"].as_u64()) {
                        (Some(topic), Some(seq)) if !topic.starts_with('$') => {
                            self.record(topic.to_string(), seq);
                        }
                        _ => pong |= self.other(item.clone()),
                    }
                }
                return pong;
            }
            _ => {}
        }
        false
    }

    /// Everything wrong against `expected` (topic → the first and last seq
    /// of exactly the updates asked for): a topic short, long, out of order
    /// or missing, a topic not asked for, any `$sys.lagged` or error, an
    /// early end. Empty when it got exactly what it asked for.
    fn problems(&self, expected: &BTreeMap<String, (u64, u64)>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cut) = &self.cut {
            out.push(cut.clone());
        }
        if !self.lagged.is_empty() {
            out.push(format!(
                "{} $sys.lagged, the first naming {} topics",
                self.lagged.len(),
                self.lagged[0]["payload"]["skipped"]
                    .as_array()
                    .map_or(0, Vec::len)
            ));
        }
        if let Some(e) = self.errors.first() {
            out.push(format!("{} $sys.error, the first: {e}", self.errors.len()));
        }
        if self.extra > 0 {
            out.push(format!("{} updates beyond those asked for", self.extra));
        }
        let (mut missing, mut wrong) = (0, Vec::new());
        for (topic, &(first, last)) in expected {
            match self.topics.get(topic) {
                None => missing += 1,
                Some(s) => {
                    if (s.first, s.last, s.count, s.not_rising)
                        != (first, last, last - first + 1, 0)
                    {
                        wrong.push(format!("{topic}: {s:?}"));
                    }
                }
            }
        }
        if missing > 0 {
            out.push(format!("{missing} topics got nothing"));
        }
        if !wrong.is_empty() {
            out.push(format!(
                "{} topics not exactly seqs as asked, e.g. {}",
                wrong.len(),
                wrong[..wrong.len().min(3)].join("; ")
            ));
        }
        let unasked = self.topics.keys().filter(|t| !expected.contains_key(*t));
        if let Some(t) = unasked.clone().next() {
            out.push(format!(
                "{} topics not asked for, e.g. {t}",
                unasked.count()
            ));
        }
        out
    }

    /// Topics with at least `n` updates.
    fn topics_with(&self, n: u64) -> usize {
        self.topics.values().filter(|s| s.count >= n).count()
    }
}

/// Sends `subscribe` (a `history` request) and reads lightly until
/// `expected` updates arrived, then checks with a ping that nothing more was
/// queued before its pong. Stops early on a close, on [`STALL`] without a
/// message, or at `deadline`.
async fn replay(
    client: &mut WsClient,
    subscribe: Value,
    expected: u64,
    deadline: Instant,
) -> Replay {
    let mut r = Replay::default();
    client.send(subscribe).await;
    while r.updates < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_light(left.min(STALL)).await {
            Ok(Some(Light::Update { topic, seq })) => r.record(topic, seq),
            Ok(Some(Light::Other(m))) => {
                r.other(m);
            }
            Ok(None) => {
                let why = if left <= STALL {
                    "the time limit"
                } else {
                    "a stall"
                };
                r.cut = Some(format!("{} of {expected} updates by {why}", r.updates));
                return r;
            }
            Err(closed) => {
                r.cut = Some(format!("closed ({closed:?}) after {} updates", r.updates));
                return r;
            }
        }
    }
    if client
        .try_send_text(&json!({"action": "ping"}).to_string())
        .await
        .is_err()
    {
        r.cut = Some("closed before the ping".into());
        return r;
    }
    loop {
        match client.next_light(WAIT).await {
            Ok(Some(Light::Update { topic, seq })) => r.record(topic, seq),
            Ok(Some(Light::Other(m))) => {
                if r.other(m) {
                    break;
                }
            }
            Ok(None) => {
                r.cut = Some("no pong".into());
                break;
            }
            Err(closed) => {
                r.cut = Some(format!("closed ({closed:?}) before the pong"));
                break;
            }
        }
    }
    r.extra = r.updates.saturating_sub(expected);
    r
}

fn subscribe(pattern: &str, history: u64) -> Value {
    json!({"action": "subscribe", "topic": pattern, "history": history})
}

/// The window the observer is judged over: from the request to the last
/// replayed update (or [`MIN_WINDOW`], if longer). Waits until it has passed.
async fn window_end(from: Instant, last: Option<Instant>) -> Instant {
    let to = last.unwrap_or(from).max(from + MIN_WINDOW);
    tokio::time::sleep_until(to.into()).await;
    to
}

#[test]
fn the_light_reader_finds_topic_and_seq_in_any_order() {
    let update = r#"{"topic":"host.a.cpu","seq":42,"payload":{"x":[1,2]}}"#;
    assert_eq!(topic_and_seq(update), Some(("host.a.cpu", 42)));
    let late = r#"{ "payload": {"s": "a \"}\" b", "l": [{"seq": 1}]}, "seq" : 7, "topic": "t"}"#;
    assert_eq!(topic_and_seq(late), Some(("t", 7)));
    assert_eq!(topic_and_seq(r#"{"topic":"$sys.pong","payload":{}}"#), None);
    assert_eq!(topic_and_seq(r#"{"topic":"a\"b","seq":1}"#), None);
    assert_eq!(topic_and_seq("[1]"), None);
}

#[tokio::test]
async fn a_fleet_view_of_2000_hosts_gets_all_its_history_while_live_updates_stay_prompt() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let began = Instant::now();
    let agg = start_aggregator();
    let hosts: Vec<String> = (0..FLEET_HOSTS).map(|i| format!("fleet-{i:04}")).collect();
    preload(&agg.ingest_url, &hosts, FLEET_SAMPLES, false).await;
    eprintln!(
        "preloaded {FLEET_HOSTS} hosts × {FLEET_SAMPLES} cpu samples in {:?}",
        began.elapsed()
    );
    let expected: BTreeMap<String, (u64, u64)> = hosts
        .iter()
        .map(|h| {
            let first = FLEET_SAMPLES - FLEET_HISTORY + 1;
            (format!("host.{h}.cpu"), (first, FLEET_SAMPLES))
        })
        .collect();

    let observer = Observer::start(&agg).await;
    let mut view = WsClient::connect(&agg.ws_url).await;
    let from = Instant::now();
    let got = replay(
        &mut view,
        subscribe("host.*.cpu", FLEET_HISTORY),
        FLEET_HOSTS as u64 * FLEET_HISTORY,
        from + REPLAY_LIMIT,
    )
    .await;
    let took = got.last_at.map(|at| at - from);
    let to = window_end(from, got.last_at).await;
    let timeline = observer.stop().await;
    let latency = Latency::of(&timeline, from, to);

    let problems = got.problems(&expected);
    eprintln!(
        "fleet view: {} updates in {took:?}; hosts with all {FLEET_HISTORY}: {}, with 100 or more: {}, \
         with any: {}; $sys.lagged: {}",
        got.updates,
        got.topics_with(FLEET_HISTORY),
        got.topics_with(100),
        got.topics.len(),
        got.lagged.len()
    );
    eprintln!(
        "observer during the replay: {latency}; its connection closed: {:?}",
        timeline.closed
    );
    eprintln!("whole test: {:?}", began.elapsed());
    assert!(
        problems.is_empty(),
        "the fleet view did not get exactly its history:\n{}",
        problems.join("\n")
    );
    assert!(
        latency.p99 < LATENCY_LIMIT,
        "live latency while the fleet view replays: {latency}"
    );
}

/// Host pages: every page connects at once, gets its history and drops;
/// then all of them again. Returns each round's replays (in host order).
async fn host_pages(
    url: String,
    hosts: Vec<String>,
    deadline: Instant,
) -> Vec<Vec<(String, Replay)>> {
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let mut pages = JoinSet::new();
        for host in hosts.clone() {
            let url = url.clone();
            pages.spawn(async move {
                let mut page = WsClient::connect(&url).await;
                let got = replay(
                    &mut page,
                    subscribe(&format!("host.{host}.>"), HOST_PAGE_HISTORY),
                    2 * HOST_PAGE_HISTORY,
                    deadline,
                )
                .await;
                // Dropped: the connection goes without a close handshake, as a
                // closed tab's might.
                drop(page);
                (host, got)
            });
        }
        let mut round = Vec::with_capacity(hosts.len());
        while let Some(page) = pages.join_next().await {
            round.push(page.expect("host page"));
        }
        round.sort_by(|a, b| a.0.cmp(&b.0));
        rounds.push(round);
    }
    rounds
}

#[tokio::test]
async fn a_storm_of_host_pages_and_large_replays_keeps_live_updates_prompt() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let began = Instant::now();
    let agg = start_aggregator();
    let hosts: Vec<String> = (0..STORM_HOSTS).map(|i| format!("storm-{i:03}")).collect();
    preload(&agg.ingest_url, &hosts, STORM_SAMPLES, true).await;
    eprintln!(
        "preloaded {STORM_HOSTS} hosts × {STORM_SAMPLES} samples (cpu, load) in {:?}",
        began.elapsed()
    );
    let page_expects = |host: &str| -> BTreeMap<String, (u64, u64)> {
        let first = STORM_SAMPLES - HOST_PAGE_HISTORY + 1;
        ["cpu", "load"]
            .iter()
            .map(|f| (format!("host.{host}.{f}"), (first, STORM_SAMPLES)))
            .collect()
    };
    let replay_expects: BTreeMap<String, (u64, u64)> = hosts
        .iter()
        .map(|h| {
            let first = STORM_SAMPLES - REPLAY_HISTORY + 1;
            (format!("host.{h}.cpu"), (first, STORM_SAMPLES))
        })
        .collect();
    let per_replayer = STORM_HOSTS as u64 * REPLAY_HISTORY;

    let observer = Observer::start(&agg).await;
    let from = Instant::now();
    let deadline = from + REPLAY_LIMIT;
    let mut replayers = JoinSet::new();
    for _ in 0..REPLAYERS {
        let url = agg.ws_url.clone();
        replayers.spawn(async move {
            let mut client = WsClient::connect(&url).await;
            replay(
                &mut client,
                subscribe("host.*.cpu", REPLAY_HISTORY),
                per_replayer,
                deadline,
            )
            .await
        });
    }
    let pages = tokio::spawn(host_pages(agg.ws_url.clone(), hosts.clone(), deadline));
    let mut replays = Vec::new();
    while let Some(r) = replayers.join_next().await {
        replays.push(r.expect("replaying client"));
    }
    let rounds = pages.await.expect("host pages");
    let last = replays
        .iter()
        .chain(rounds.iter().flatten().map(|(_, r)| r))
        .filter_map(|r| r.last_at)
        .max();
    let took = last.map(|at| at - from);
    let to = window_end(from, last).await;
    let timeline = observer.stop().await;
    let latency = Latency::of(&timeline, from, to);

    let mut problems = Vec::new();
    for (i, r) in replays.iter().enumerate() {
        let p = r.problems(&replay_expects);
        if !p.is_empty() {
            problems.push(format!("replaying client {i}: {}", p.join("; ")));
        }
    }
    for (round, pages) in rounds.iter().enumerate() {
        for (host, r) in pages {
            let p = r.problems(&page_expects(host));
            if !p.is_empty() {
                problems.push(format!(
                    "host page {host}, round {}: {}",
                    round + 1,
                    p.join("; ")
                ));
            }
        }
    }
    let counts: Vec<u64> = replays.iter().map(|r| r.updates).collect();
    eprintln!(
        "storm over in {took:?}; replaying clients got {counts:?} of {per_replayer} each \
         ($sys.lagged on {} of them)",
        replays.iter().filter(|r| !r.lagged.is_empty()).count()
    );
    for (round, pages) in rounds.iter().enumerate() {
        let complete = pages
            .iter()
            .filter(|(h, r)| r.problems(&page_expects(h)).is_empty())
            .count();
        eprintln!(
            "host pages, round {}: {complete} of {} got exactly their history; {} updates of {}; \
             $sys.lagged on {}",
            round + 1,
            pages.len(),
            pages.iter().map(|(_, r)| r.updates).sum::<u64>(),
            pages.len() as u64 * 2 * HOST_PAGE_HISTORY,
            pages.iter().filter(|(_, r)| !r.lagged.is_empty()).count()
        );
    }
    eprintln!(
        "observer during the storm: {latency}; its connection closed: {:?}",
        timeline.closed
    );
    eprintln!("whole test: {:?}", began.elapsed());
    assert!(
        problems.is_empty(),
        "{} clients did not get exactly their history:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    assert!(
        latency.p99 < LATENCY_LIMIT,
        "live latency during the storm: {latency}"
    );
}
