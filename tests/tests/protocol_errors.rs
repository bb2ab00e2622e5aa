//! Bad client input gets a `$sys.error` with a code and a clear sentence, and
//! the connection stays usable; a request the protocol refuses by rule (one
//! `since` seq on a pattern) is refused the same way.

use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{TestAggregator, WAIT, http_get};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Sends `request` and checks that the very next message is a `$sys.error`
/// with `code` whose message contains `phrase` (nothing else is subscribed,
/// so nothing else may come first).
async fn expect_next_error(
    client: &mut WsClient,
    request: &str,
    code: &str,
    phrase: &str,
) -> Value {
    client.send_text(request).await;
    let m = client.next().await;
    assert_eq!(m["topic"], "$sys.error", "{request} -> {m}");
    assert_eq!(m["payload"]["code"], code, "{request} -> {m}");
    let message = m["payload"]["message"].as_str().expect("an error message");
    assert!(message.contains(phrase), "{request} -> {message}");
    m
}

#[tokio::test]
async fn each_bad_request_is_answered_and_the_connection_survives() {
    let agg = TestAggregator::start(|c| {
        c.ws.max_subscriptions = 3;
        c.ws.max_topic_segments = 4;
    })
    .await;
    let mut client = WsClient::connect(&agg.ws_url()).await;

    let cases: &[(&str, &str, &str)] = &[
        ("{\"action\": \"subscribe\", ", "bad_json", "not valid JSON"),
        ("\"subscribe\"", "bad_json", "JSON object"),
        (
            "{\"action\":\"dance\",\"id\":9}",
            "unknown_action",
            "unknown action \"dance\"",
        ),
        ("{\"topic\":\"hosts\"}", "bad_request", "missing \"action\""),
        (
            "{\"action\":\"subscribe\"}",
            "bad_request",
            "missing field `topic`",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"host..cpu\"}",
            "bad_topic",
            "empty segment",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"host.>.cpu\"}",
            "bad_topic",
            "whole segments",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"host.web-*.cpu\"}",
            "bad_topic",
            "whole segments",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"\"}",
            "bad_topic",
            "empty",
        ),
        (
            "{\"action\":\"subscribe\",\"topic\":\"a\",\"colour\":1}",
            "bad_request",
            "unknown field `colour`",
        ),
        (
            "{\"action\":\"unsubscribe\",\"topic\":\"never.subscribed\"}",
            "not_subscribed",
            "no subscription",
        ),
    ];
    for (request, code, phrase) in cases {
        expect_next_error(&mut client, request, code, phrase).await;
    }
    // The configured segment limit (4 here) is the one enforced and named.
    expect_next_error(
        &mut client,
        "{\"action\":\"subscribe\",\"topic\":\"a.b.c.d.e\"}",
        "bad_topic",
        "5 segments, more than the limit of 4",
    )
    .await;
    let long = format!(
        "{{\"action\":\"subscribe\",\"topic\":\"{}\"}}",
        "a".repeat(10_000)
    );
    expect_next_error(&mut client, &long, "bad_topic", "limit of 256").await;

    // The id of a refused request is echoed.
    let m = expect_next_error(
        &mut client,
        "{\"action\":\"dance\",\"id\":9}",
        "unknown_action",
        "dance",
    )
    .await;
    assert_eq!(m["payload"]["id"], 9);

    // Binary frames are refused with their own code.
    client
        .send_message(Message::Binary(vec![1, 2, 3].into()))
        .await;
    let m = client.next().await;
    assert_eq!(
        (&m["topic"], &m["payload"]["code"]),
        (&json!("$sys.error"), &json!("binary_not_supported")),
        "{m}"
    );

    // The subscription limit names the limit.
    for t in ["a", "b", "c"] {
        client.subscribe(t).await;
    }
    let m = expect_next_error(
        &mut client,
        "{\"action\":\"subscribe\",\"topic\":\"d\",\"id\":\"four\"}",
        "too_many_subscriptions",
        "maximum of 3",
    )
    .await;
    assert_eq!(m["payload"]["id"], "four");

    // Still usable: ping is answered, subscribe works.
    client.send(json!({"action": "ping", "id": 1})).await;
    let pong = client.next().await;
    assert_eq!(
        (&pong["topic"], &pong["payload"]["id"]),
        (&json!("$sys.pong"), &json!(1)),
        "{pong}"
    );
    client
        .send(json!({"action":"unsubscribe","topic":"a"}))
        .await;
    assert_eq!(client.next().await["topic"], "$sys.unsubscribed");
    let reply = client.subscribe("hosts").await;
    assert_eq!(reply["payload"]["topic"], "hosts");
    agg.stop().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_others_are_unaffected() {
    let agg = TestAggregator::start(|c| c.ws.max_message_bytes = 1024).await;
    let mut bystander = WsClient::connect(&agg.ws_url()).await;
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.send_text(&"x".repeat(4096)).await;
    assert_eq!(client.closed(WAIT).await, Closed::Code(1009));
    bystander.send(json!({"action": "ping"})).await;
    bystander.next_on("$sys.pong").await;
    agg.stop().await;
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_and_the_connection_released() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("hosts").await;
    // The close handshake completes: the server echoes the close frame.
    assert_eq!(client.close(WAIT).await, Closed::Code(1000));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(agg.http, "/healthz").await;
        let health: Value = serde_json::from_str(&body).expect("JSON health");
        if health["ws_connections"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still counted after its close: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    agg.stop().await;
}

/// Publishes samples `seqs` of `agent` (their `load` topic) and waits for the ack.
async fn publish_load(agent: &mut FakeAgent, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        agent.send(fake::batch(seq, &[fake::sample(seq, 0)])).await;
        agent.acked(seq).await;
    }
}

/// Reads `n` updates (skipping nothing: anything else fails) as (topic, seq),
/// then checks with a ping that nothing more was queued before its pong.
async fn exactly_updates(client: &mut WsClient, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = client.next().await;
        let topic = m["topic"].as_str().expect("a topic").to_string();
        assert!(!topic.starts_with("$sys."), "expected an update, got {m}");
        got.push((topic, m["seq"].as_u64().expect("a seq")));
    }
    client.send(json!({"action": "ping"})).await;
    let m = client.next().await;
    assert_eq!(m["topic"], "$sys.pong", "more than {got:?}: {m}");
    got
}

#[tokio::test]
async fn one_since_seq_on_a_pattern_is_refused_and_the_per_topic_map_resumes_it() {
    let agg = TestAggregator::start(|_| {}).await;
    // Two hosts whose seqs differ: a single `since: 3` on `host.*.load`
    // would hide host b (seqs 1 and 2) until it passed 3.
    let mut a = FakeAgent::connect(&agg.ingest_url(), "a").await;
    let mut b = FakeAgent::connect(&agg.ingest_url(), "b").await;
    publish_load(&mut a, 1..=5).await;
    publish_load(&mut b, 1..=2).await;

    let mut client = WsClient::connect(&agg.ws_url()).await;
    for pattern in ["host.*.load", "host.a.>", ">"] {
        let request = json!({"action": "subscribe", "topic": pattern, "since": 3, "id": "w"});
        let m = expect_next_error(
            &mut client,
            &request.to_string(),
            "since_needs_topics",
            "\"since\": {\"host.a.cpu\": 3}",
        )
        .await;
        assert_eq!(m["payload"]["id"], "w", "{m}");
        // Refused outright: nothing was subscribed.
        expect_next_error(
            &mut client,
            &json!({"action": "unsubscribe", "topic": pattern}).to_string(),
            "not_subscribed",
            "no subscription",
        )
        .await;
    }

    // One exact topic still takes a single number.
    let mut exact = WsClient::connect(&agg.ws_url()).await;
    exact
        .send(json!({"action": "subscribe", "topic": "host.a.load", "since": 3}))
        .await;
    let reply = exact.next().await;
    assert_eq!(reply["topic"], "$sys.subscribed", "{reply}");
    assert_eq!(reply["payload"]["complete"], true, "{reply}");
    assert_eq!(
        exactly_updates(&mut exact, 2).await,
        [
            ("host.a.load".to_string(), 4),
            ("host.a.load".to_string(), 5)
        ]
    );

    // The per-topic map the error points to resumes each topic from its own seq.
    let mut mapped = WsClient::connect(&agg.ws_url()).await;
    mapped
        .send(json!({"action": "subscribe", "topic": "host.*.load",
            "since": {"host.a.load": 3, "host.b.load": 0}}))
        .await;
    let reply = mapped.next().await;
    assert_eq!(reply["topic"], "$sys.subscribed", "{reply}");
    assert_eq!(reply["payload"]["complete"], true, "{reply}");
    let got = exactly_updates(&mut mapped, 4).await;
    let want: Vec<(String, u64)> = [("a", 4), ("a", 5), ("b", 1), ("b", 2)]
        .iter()
        .map(|(h, s)| (format!("host.{h}.load"), *s))
        .collect();
    assert_eq!(got, want);
    agg.stop().await;
}
