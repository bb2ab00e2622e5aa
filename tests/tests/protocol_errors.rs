//! Bad client input gets a `$sys.error` with a code and a clear sentence, and
//! the connection stays usable.

use hostpulse_tests::TestAggregator;
use hostpulse_tests::ws::WsClient;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

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
        client.expect_error(request, code, phrase).await;
    }
    // The configured segment limit (4 here) is the one enforced and named.
    client
        .expect_error(
            "{\"action\":\"subscribe\",\"topic\":\"a.b.c.d.e\"}",
            "bad_topic",
            "5 segments, more than the limit of 4",
        )
        .await;
    let long = format!(
        "{{\"action\":\"subscribe\",\"topic\":\"{}\"}}",
        "a".repeat(10_000)
    );
    client
        .expect_error(&long, "bad_topic", "limit of 256")
        .await;

    // The id of a refused request is echoed.
    client.send_text("{\"action\":\"dance\",\"id\":9}").await;
    assert_eq!(client.next_on("$sys.error").await["payload"]["id"], 9);

    // Binary frames are refused with their own code.
    client
        .send_message(Message::Binary(vec![1, 2, 3].into()))
        .await;
    let m = client.next_on("$sys.error").await;
    assert_eq!(m["payload"]["code"], "binary_not_supported");

    // The subscription limit names the limit.
    for t in ["a", "b", "c"] {
        client.subscribe(t).await;
    }
    client
        .expect_error(
            "{\"action\":\"subscribe\",\"topic\":\"d\",\"id\":\"four\"}",
            "too_many_subscriptions",
            "maximum of 3",
        )
        .await;

    // Still usable: ping is answered, subscribe works.
    client.send(json!({"action": "ping", "id": 1})).await;
    let pong = client.next_on("$sys.pong").await;
    assert_eq!(pong["payload"]["id"], 1);
    client
        .send(json!({"action":"unsubscribe","topic":"a"}))
        .await;
    client.next_on("$sys.unsubscribed").await;
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
    assert_eq!(
        client.closed(hostpulse_tests::WAIT).await,
        hostpulse_tests::ws::Closed::Code(1009)
    );
    bystander.send(json!({"action": "ping"})).await;
    bystander.next_on("$sys.pong").await;
    agg.stop().await;
}
