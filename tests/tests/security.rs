//! Hostile input, table by table, against one running aggregator with tokens
//! required: every case gets its documented answer, and afterwards a healthy
//! agent and subscriber still exchange every sample.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostpulse_aggregator::auth::TokenConfig;
use hostpulse_proto::v1::{AgentMessage, Hello, agent_message};
use hostpulse_tests::fake::{self, hello, raw_batch, refusal_of};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{TestAgent, TestAggregator, WAIT, agent_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const FULL: &str = "full-client-token-0123";
const CPU: &str = "cpu-client-token-0123";
const OLD: &str = "old-client-token-0123";
const AGENT_ALPHA: &str = "alpha-agent-token-0123";
const AGENT_OLD: &str = "old-agent-token-0123";

fn token(name: &str, secret: &str, patterns: &[&str], agent: bool) -> TokenConfig {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    let (hosts, topics) = if agent {
        (patterns, Vec::new())
    } else {
        (Vec::new(), patterns)
    };
    TokenConfig {
        name: name.into(),
        token: Some(secret.into()),
        hosts,
        topics,
        ..Default::default()
    }
}

async fn start() -> TestAggregator {
    TestAggregator::start(|c| {
        c.auth.anonymous_agents = false;
        c.auth.anonymous_clients = false;
        c.auth.client_tokens = vec![
            token("full", FULL, &[">"], false),
            token("cpu", CPU, &["host.*.cpu"], false),
            TokenConfig {
                expires: Some("2020-01-01T00:00:00Z".into()),
                ..token("old", OLD, &[">"], false)
            },
        ];
        c.auth.agent_tokens = vec![
            token("alpha", AGENT_ALPHA, &["alpha"], true),
            token("any", AGENT_ANY, &[], true),
            TokenConfig {
                expires: Some("2020-01-01T00:00:00Z".into()),
                ..token("old-agent", AGENT_OLD, &[], true)
            },
        ];
        c.ws.max_subscriptions = 100;
        c.ws.control_per_sec = 1000;
        c.ws.max_connections_per_ip = 40;
        c.ingest.max_samples_per_batch = 100;
        c.ingest.max_message_bytes = 1 << 20;
    })
    .await
}

/// The cases answered so far, by section; each is recorded once, after its
/// checks passed.
#[derive(Debug, Default)]
struct Answered(BTreeMap<&'static str, Vec<String>>);

impl Answered {
    fn case(&mut self, section: &'static str, case: impl Into<String>) {
        let case = case.into();
        let list = self.0.entry(section).or_default();
        assert!(!list.contains(&case), "case {case:?} counted twice");
        list.push(case);
    }

    fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.0.iter().map(|(k, v)| (*k, v.len())).collect()
    }
}

/// The HTTP status and body of a refused WebSocket upgrade.
async fn upgrade_refused(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            String::from_utf8(r.body().clone().unwrap_or_default()).unwrap(),
        ),
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_documented_answer_and_nothing_is_lost() {
    let agg = start().await;
    let ws = |token: &str| format!("{}?token={token}", agg.ws_url());
    let mut answered = Answered::default();

    // The healthy pair, running through everything below.
    let mut healthy_config = agent_config(&agg.ingest_url(), "alpha");
    healthy_config.token = Some(AGENT_ALPHA.into());
    let healthy = TestAgent::start(healthy_config);
    let mut watcher = WsClient::connect(&ws(FULL)).await;
    watcher.subscribe("host.alpha.cpu").await;
    // What the watcher received, from its subscription on.
    let mut tracker = Tracker::default();

    // --- WebSocket requests -------------------------------------------------
    let mut c = WsClient::connect(&ws(FULL)).await;
    let table: &[(&str, &str, &str)] = &[
        ("this is not json", "bad_json", "not valid JSON"),
        ("[1,2,3]", "bad_json", "JSON object"),
        ("\"subscribe\"", "bad_json", "JSON object"),
        ("{\"topic\":\"hosts\"}", "bad_request", "missing \"action\""),
        ("{\"action\":42}", "bad_request", "must be a string"),
        (
            "{\"action\":\"explode\"}",
            "unknown_action",
            "unknown action",
        ),
        (
            "{\"action\":\"subscribe\"}",
            "bad_request",
            "missing field `topic`",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":[\"a\"]}",
            "bad_request",
            "invalid type",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"host..cpu\"}",
            "bad_topic",
            "empty segment",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\".\"}",
            "bad_topic",
            "empty segment",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"host.web-*\"}",
            "bad_topic",
            "whole segments",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q\"}",
            "bad_topic",
            "limit of 16",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"hosts\",\"since\":-5}",
            "bad_request",
            "since",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"hosts\",\"since\":\"yesterday\"}",
            "bad_request",
            "since",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"hosts\",\"history\":1000000000}",
            "bad_request",
            "at most 100000",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"hosts\",\"throttle_ms\":99999999999}",
            "bad_request",
            "at most 3600000",
        ),
        (
            "{\"action\":\"unsubscribe\",\"topic\":\"never\"}",
            "not_subscribed",
            "no subscription",
        ),
        (
            "{\"action\":\"auth\"}",
            "bad_request",
            "missing field `token`",
        ),
    ];
    for (request, code, phrase) in table {
        // The answer is the very next message: nothing else is subscribed yet.
        c.send_text(request).await;
        let m = c.next().await;
        assert_eq!(m["topic"], "$sys.error", "{request} -> {m}");
        assert_eq!(m["payload"]["code"], *code, "{request} -> {m}");
        let message = m["payload"]["message"].as_str().expect("an error message");
        assert!(message.contains(phrase), "{request} -> {message}");
        answered.case("websocket", *request);
    }
    let long_topic = format!(
        "{{\"action\":\"subscribe\",\"topic\":\"{}\"}}",
        "x".repeat(10_000)
    );
    c.send_text(&long_topic).await;
    let m = c.next().await;
    assert_eq!(
        (&m["topic"], &m["payload"]["code"]),
        (&json!("$sys.error"), &json!("bad_topic")),
        "{m}"
    );
    assert!(
        m["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 256")
    );
    answered.case("websocket", "a 10,000-byte topic");
    c.send_message(Message::Binary(vec![0xde, 0xad].into()))
        .await;
    let m = c.next().await;
    assert_eq!(
        (&m["topic"], &m["payload"]["code"]),
        (&json!("$sys.error"), &json!("binary_not_supported")),
        "{m}"
    );
    answered.case("websocket", "a binary frame");
    // 1000 subscriptions, each answered before the next is sent: the first
    // 100 are accepted, and every one from the 101st on is refused, naming
    // the limit (the id tells which request each answer is for).
    for i in 0..1000 {
        c.send(json!({"action":"subscribe","topic":format!("t.{i}"),"id":i}))
            .await;
        let m = c.next().await;
        assert_eq!(m["payload"]["id"], i, "answer to subscription {i}: {m}");
        if i < 100 {
            assert_eq!(m["topic"], "$sys.subscribed", "subscription {i}: {m}");
        } else {
            assert_eq!(m["topic"], "$sys.error", "subscription {i}: {m}");
            assert_eq!(
                m["payload"]["code"], "too_many_subscriptions",
                "subscription {i}: {m}"
            );
            assert!(
                m["payload"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("maximum of 100"),
                "subscription {i}: {m}"
            );
        }
    }
    answered.case("websocket", "1000 subscriptions against a limit of 100");
    // Still usable after all of that.
    c.send(json!({"action":"ping","id":"after"})).await;
    assert_eq!(c.next_on("$sys.pong").await["payload"]["id"], "after");

    // A 10 MB frame closes the connection with 1009 as soon as its header is
    // read; the server does not read the rest, so the client may see the
    // reset before the close frame (a small oversized message gets 1009
    // deterministically in protocol_errors.rs).
    let mut big = WsClient::connect(&ws(FULL)).await;
    let _ = big.try_send_text(&"x".repeat(10 << 20)).await;
    let end = big.closed(WAIT).await;
    assert!(
        matches!(end, Closed::Code(1009) | Closed::Abrupt),
        "{end:?}"
    );
    answered.case("websocket", "a 10 MB frame");

    // A flood of 10,000 control messages: refused as rate_limited, then closed.
    let mut flood = WsClient::connect(&ws(FULL)).await;
    for _ in 0..10_000 {
        flood.send_text("{\"action\":\"ping\"}").await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let end = loop {
        match flood.recv(WAIT).await {
            Ok(Some(m)) if m["topic"] == "$sys.pong" => pongs += 1,
            Ok(Some(m)) if m["payload"]["code"] == "rate_limited" => {
                limited += 1;
                assert!(
                    m["payload"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("more than 1000")
                );
            }
            Ok(Some(m)) => panic!("unexpected {m}"),
            Ok(None) => panic!("flood neither refused nor closed"),
            Err(closed) => break closed,
        }
    };
    assert_eq!(end, Closed::Code(1008));
    // A burst of twice the rate passes; the rest is refused.
    assert!(pongs <= 3000, "{pongs} pings answered in a burst of 10,000");
    assert!(
        (1..=5).contains(&limited),
        "{limited} rate_limited errors for one flood"
    );
    answered.case("websocket", "a flood of 10,000 pings");

    // --- Client tokens ------------------------------------------------------
    let (status, body) = upgrade_refused(&ws("wrong-token-0123456789")).await;
    assert_eq!(
        (status, body.contains("unknown token")),
        (401, true),
        "{body}"
    );
    answered.case("client token", "unknown");
    let (status, body) = upgrade_refused(&ws(OLD)).await;
    assert_eq!((status, body.contains("expired")), (401, true), "{body}");
    answered.case("client token", "expired");
    // No token: connected, but nothing until it authenticates.
    let mut anon = WsClient::connect(&agg.ws_url()).await;
    anon.expect_error(
        "{\"action\":\"subscribe\",\"topic\":\"hosts\"}",
        "unauthorized",
        "authenticate first",
    )
    .await;
    answered.case("client token", "none, then a subscribe");
    anon.send(json!({"action":"auth","token":"not-a-real-token-000"}))
        .await;
    assert_eq!(
        anon.next_on("$sys.error").await["payload"]["code"],
        "unauthorized"
    );
    assert_eq!(anon.closed(WAIT).await, Closed::Code(1008));
    answered.case("client token", "a bad token in an auth message");
    // First-message authentication works for browsers.
    let mut browser = WsClient::connect(&agg.ws_url()).await;
    browser
        .send(json!({"action":"auth","token":CPU,"id":1}))
        .await;
    assert_eq!(
        browser.next_on("$sys.authenticated").await["payload"]["token"],
        "cpu"
    );
    // A subscription outside the grant is forbidden; a wildcard is filtered.
    browser
        .expect_error(
            "{\"action\":\"subscribe\",\"topic\":\"host.alpha.memory\"}",
            "forbidden",
            "grants no topic",
        )
        .await;
    answered.case("client token", "a subscription outside the grant");
    browser.subscribe(">").await;
    for _ in 0..8 {
        let m = browser.next().await;
        assert!(
            m["topic"].as_str().unwrap().ends_with(".cpu"),
            "only granted topics: {m}"
        );
    }
    answered.case("client token", "a wildcard wider than the grant");

    // --- HTTP and TCP abuse -------------------------------------------------
    // An upgrade with bad headers is refused by HTTP, not by crashing.
    let mut tcp = tokio::net::TcpStream::connect(agg.http).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    answered.case("http", "an upgrade without its key");
    // Slowloris: half-open connections trickling headers do not block others.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(agg.http).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: slow\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut during = WsClient::connect(&ws(FULL)).await;
    during.send(json!({"action":"ping"})).await;
    during.next_on("$sys.pong").await;
    drop(slow);
    answered.case("http", "20 half-open requests");
    // Connections per address are capped (40 here). From an address of its
    // own (any 127.x.y.z reaches loopback) a test knows it holds nothing
    // else: exactly the first 40 are accepted and the 41st gets HTTP 429.
    let source: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for i in 1..=40 {
        match WsClient::try_connect_from(source, &ws(FULL)).await {
            Ok(client) => held.push(client),
            Err(r) => panic!("connection {i} of 40 refused with {}", r.status()),
        }
    }
    let refused = |r: Result<WsClient, _>| match r {
        Ok(_) => panic!("a connection past the cap of 40 was accepted"),
        Err(r) => r,
    };
    let r = refused(WsClient::try_connect_from(source, &ws(FULL)).await);
    let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
    assert_eq!(r.status().as_u16(), 429, "{body}");
    assert!(body.contains("limit of 40"), "{body}");
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    // Another address is not affected.
    let mut other = WsClient::connect(&ws(FULL)).await;
    other.send(json!({"action":"ping"})).await;
    other.next_on("$sys.pong").await;
    // Closing one gives its place back: the next connection is accepted
    // once the server has seen the close (refused, with 429, until then).
    let how = held.pop().unwrap().close(WAIT).await;
    assert_eq!(how, Closed::Code(1000), "the server answers a close");
    let deadline = tokio::time::Instant::now() + WAIT;
    let replacement = loop {
        match WsClient::try_connect_from(source, &ws(FULL)).await {
            Ok(client) => break client,
            Err(r) => assert_eq!(r.status().as_u16(), 429),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place given back after a close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    held.push(replacement);
    let r = refused(WsClient::try_connect_from(source, &ws(FULL)).await);
    assert_eq!(r.status().as_u16(), 429);
    drop(held);
    answered.case("http", "41 connections from one address");
    // Junk bytes on the gRPC port (HTTP/1.1 and garbage where the HTTP/2
    // preface belongs): the server hangs up (a close or a reset), having
    // sent nothing but HTTP/2 frames (its SETTINGS, perhaps a GOAWAY)...
    let mut junk = tokio::net::TcpStream::connect(agg.ingest).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage")
        .await
        .unwrap();
    let mut sink = Vec::new();
    match tokio::time::timeout(WAIT, junk.read_to_end(&mut sink))
        .await
        .expect("the gRPC port hangs up on junk")
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("junk on the gRPC port: {e}"),
    }
    let mut rest = &sink[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "not HTTP/2 frames: {sink:?}");
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        // 4 SETTINGS, 7 GOAWAY, 8 WINDOW_UPDATE
        assert!(
            matches!(rest[3], 4 | 7 | 8),
            "HTTP/2 frame type {} in answer to junk: {sink:?}",
            rest[3]
        );
        rest = &rest[(9 + length).min(rest.len())..];
    }
    // ...and goes on serving: the healthy agent's samples still arrive, and a
    // new agent stream and a new WebSocket client are served.
    let before = healthy.status.last_sample_seq.load(Ordering::SeqCst);
    while tracker
        .last("host.alpha.cpu")
        .is_none_or(|seq| seq <= before)
    {
        tracker.record(&watcher.next().await);
    }
    let mut newcomer = fake::open_as(
        &agg.ingest_url(),
        Some(AGENT_ANY),
        vec![
            hello("after-junk", 1),
            fake::batch(1, &[fake::sample(1, 0)]),
        ],
    )
    .await
    .expect("a new agent stream is accepted");
    newcomer.acked(1).await;
    let mut late = WsClient::connect(&ws(FULL)).await;
    late.send(json!({"action":"ping","id":"late"})).await;
    assert_eq!(late.next_on("$sys.pong").await["payload"]["id"], "late");
    answered.case("http", "junk bytes on the gRPC port");

    // --- Agents -------------------------------------------------------------
    let url = agg.ingest_url();
    let code = |s: &tonic::Status| (s.code(), s.message().to_string());
    let s = refusal_of(&url, None, vec![hello("alpha", 1)]).await;
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{:?}", code(&s));
    assert!(s.message().contains("a token is required"));
    answered.case("agent", "no token");
    let s = refusal_of(&url, Some("wrong-agent-token-000"), vec![hello("alpha", 1)]).await;
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    assert!(s.message().contains("unknown token") && !s.message().contains("wrong-agent"));
    answered.case("agent", "unknown token");
    let s = refusal_of(&url, Some(AGENT_OLD), vec![hello("zeta", 1)]).await;
    assert!(
        s.code() == tonic::Code::Unauthenticated && s.message().contains("expired"),
        "{:?}",
        code(&s)
    );
    answered.case("agent", "expired token");
    let s = refusal_of(&url, Some(AGENT_ALPHA), vec![hello("beta", 1)]).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    assert!(
        s.message().contains("may not publish for host \"beta\""),
        "{:?}",
        code(&s)
    );
    answered.case("agent", "a host outside the token");
    let bad_hello = |hostname: &str, schema: u32| AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: "x".into(),
            hostname: hostname.into(),
            version: "x".into(),
            labels: Default::default(),
            epoch: 1,
            schema_version: schema,
            interval_ms: 1000,
            instance: 0,
        })),
    };
    let s = refusal_of(&url, Some(AGENT_ALPHA), vec![bad_hello("", 1)]).await;
    assert!(
        s.code() == tonic::Code::InvalidArgument && s.message().contains("hostname"),
        "{:?}",
        code(&s)
    );
    answered.case("agent", "an empty hostname");
    let s = refusal_of(&url, Some(AGENT_ALPHA), vec![bad_hello("alpha", 99)]).await;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    assert!(s.message().contains("schema version 99"));
    answered.case("agent", "schema version 99");
    // Batch checks use a token bound to no host, each on a host of its own.
    let batch_cases: Vec<(Vec<AgentMessage>, tonic::Code, &str)> = vec![
        (
            vec![raw_batch(1, 1, vec![0xc1, 0x00, 0xff])],
            tonic::Code::InvalidArgument,
            "MessagePack",
        ),
        (
            vec![raw_batch(1, 1_000_000_000, vec![0x90])],
            tonic::Code::InvalidArgument,
            "limit of 100",
        ),
        (
            vec![raw_batch(1, 1, vec![0u8; 2 << 20])],
            tonic::Code::OutOfRange,
            "message length too large",
        ),
        (
            vec![fake::batch(1, &[nan_sample()])],
            tonic::Code::InvalidArgument,
            "is NaN",
        ),
        (
            vec![fake::batch(1, &[negative_sample()])],
            tonic::Code::InvalidArgument,
            "load.one is -1",
        ),
        (
            vec![fake::batch(1, &[future_sample()])],
            tonic::Code::InvalidArgument,
            "in the future",
        ),
        (
            vec![hello("alpha", 1)],
            tonic::Code::InvalidArgument,
            "only Batch may follow Hello",
        ),
        // Sample bounds: each refusal names its limit.
        (
            vec![fake::batch(1, &[bounded(|s| per_core(s, 1025))])],
            tonic::Code::InvalidArgument,
            "cpu.per_core_pct lists 1025 entries, more than 1024",
        ),
        (
            vec![fake::batch(1, &[bounded(|s| process_name(s, 10_000))])],
            tonic::Code::InvalidArgument,
            "name of 10000 bytes, more than 256",
        ),
        (
            vec![fake::batch(1, &[bounded(|s| top_list(s, 101))])],
            tonic::Code::InvalidArgument,
            "processes.top_cpu lists 101 entries, more than 100",
        ),
        (
            vec![fake::batch(1, &[bounded(|s| interface_name(s, 300))])],
            tonic::Code::InvalidArgument,
            "network interface name of 300 bytes, outside 1..=256",
        ),
        (
            vec![fake::batch(1, &[bounded(|s| mount_name(s, 300))])],
            tonic::Code::InvalidArgument,
            "filesystem mount name of 300 bytes, outside 1..=256",
        ),
        (
            vec![fake::batch(1, &[bounded(|s| sensor_label(s, 300))])],
            tonic::Code::InvalidArgument,
            "temperature sensor name of 300 bytes, outside 1..=256",
        ),
    ];
    for (i, (messages, expected, phrase)) in batch_cases.into_iter().enumerate() {
        let host = format!("bad-{i}");
        let mut first = vec![hello(&host, 1)];
        first.extend(messages);
        let s = refusal_of(&url, Some(AGENT_ANY), first).await;
        assert_eq!(s.code(), expected, "case {i}: {:?}", code(&s));
        assert!(s.message().contains(phrase), "case {i}: {:?}", code(&s));
        answered.case("agent", format!("batch: {phrase}"));
    }

    // One stream per agent id: while one is live, another process's is
    // refused, naming where the live one comes from.
    let mut holder = fake::open_as(
        &url,
        Some(AGENT_ANY),
        vec![hello("clone", 1), fake::batch(1, &[fake::sample(1, 0)])],
    )
    .await
    .expect("the first stream is accepted");
    holder.acked(1).await;
    let s = refusal_of(&url, Some(AGENT_ANY), vec![hello("clone", 2)]).await;
    assert_eq!(s.code(), tonic::Code::AlreadyExists, "{:?}", code(&s));
    assert!(
        s.message()
            .contains("agent_id \"fake-clone\" is already streaming from 127.0.0.1:"),
        "{:?}",
        code(&s)
    );
    answered.case("agent", "a second process with a live agent id");
    drop(holder);

    // Every case above got its documented answer, each counted once: a
    // table that lost a row or a loop that ran short shows here.
    assert_eq!(
        answered.counts(),
        BTreeMap::from([
            ("agent", 20),
            ("client token", 6),
            ("http", 4),
            ("websocket", 23),
        ]),
        "{answered:#?}"
    );

    // --- Nothing lost -------------------------------------------------------
    let status = healthy.status.clone();
    healthy.stop().await;
    let last = status.last_sample_seq.load(Ordering::SeqCst);
    while tracker.last("host.alpha.cpu") != Some(last) {
        let m: Value = watcher.next().await;
        tracker.record(&m);
    }
    tracker.assert_exactly_once();
    assert!(tracker.count["host.alpha.cpu"] >= 5, "{:?}", tracker.count);
    agg.stop().await;
}

const AGENT_ANY: &str = "any-agent-token-0123";

fn nan_sample() -> hostpulse_proto::Sample {
    let mut s = fake::sample(1, 0);
    s.cpu = Some(hostpulse_proto::Cpu {
        total_pct: f32::NAN,
        per_core_pct: vec![],
    });
    s
}

fn negative_sample() -> hostpulse_proto::Sample {
    let mut s = fake::sample(1, 0);
    s.load.as_mut().unwrap().one = -1.0;
    s
}

fn future_sample() -> hostpulse_proto::Sample {
    let mut s = fake::sample(1, 0);
    s.timestamp_ms = 4_000_000_000_000; // the year 2096
    s
}

/// A valid sample with every section the bounds apply to, changed by `f`.
fn bounded(f: impl FnOnce(&mut hostpulse_proto::Sample)) -> hostpulse_proto::Sample {
    use hostpulse_proto::{Filesystem, Filesystems, Interface, Network, Sensor, Temperatures};
    let mut s = fake::sample(1, 1);
    s.network = Some(Network {
        interfaces: vec![Interface {
            name: "eth0".into(),
            ..Interface::default()
        }],
    });
    s.filesystems = Some(Filesystems {
        mounts: vec![Filesystem {
            mount: "/".into(),
            device: "/dev/vda".into(),
            fs_type: "ext4".into(),
            total_bytes: 10,
            used_bytes: 5,
            free_bytes: 5,
        }],
    });
    s.temperatures = Some(Temperatures {
        sensors: vec![Sensor {
            label: "cpu".into(),
            celsius: 40.0,
            ..Sensor::default()
        }],
    });
    f(&mut s);
    s
}

fn per_core(s: &mut hostpulse_proto::Sample, n: usize) {
    s.cpu = Some(hostpulse_proto::Cpu {
        total_pct: 1.0,
        per_core_pct: vec![1.0; n],
    });
}

fn process_name(s: &mut hostpulse_proto::Sample, bytes: usize) {
    s.processes.as_mut().unwrap().top_cpu[0].name = "p".repeat(bytes);
}

fn interface_name(s: &mut hostpulse_proto::Sample, bytes: usize) {
    s.network.as_mut().unwrap().interfaces[0].name = "i".repeat(bytes);
}

fn mount_name(s: &mut hostpulse_proto::Sample, bytes: usize) {
    s.filesystems.as_mut().unwrap().mounts[0].mount = "/".repeat(bytes);
}

fn sensor_label(s: &mut hostpulse_proto::Sample, bytes: usize) {
    s.temperatures.as_mut().unwrap().sensors[0].label = "t".repeat(bytes);
}

fn top_list(s: &mut hostpulse_proto::Sample, n: usize) {
    let p = s.processes.as_mut().unwrap();
    p.top_cpu = vec![p.top_cpu[0].clone(); n];
}
