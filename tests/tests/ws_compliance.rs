//! The server's RFC 6455 obligations, checked against the real aggregator
//! with a client written by hand (`SilentClient`), so a test can send frames
//! no WebSocket library would: unmasked, fragmented with pings between the
//! fragments, reserved bits set, text that is not UTF-8, messages over the
//! limit whole or in fragments, and the close handshake with its codes.
//! Every server frame the client reads is checked to be unmasked.

use std::time::Duration;

use hostpulse_tests::ws::{RawFrame, SilentClient};
use hostpulse_tests::{TestAggregator, WAIT};
use serde_json::Value;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// A frame to send: its first byte and its payload.
type Frame<'a> = (u8, &'a [u8]);

/// Small, so a test can go over it cheaply.
const MAX_MESSAGE: usize = 4 << 10;

async fn aggregator() -> TestAggregator {
    TestAggregator::start(|c| c.ws.max_message_bytes = MAX_MESSAGE).await
}

async fn client(agg: &TestAggregator) -> SilentClient {
    SilentClient::connect(agg.http, "/ws").await
}

/// The frames up to and including the server's close frame: the close's
/// code, after checking the connection then ends.
async fn close_code(c: &mut SilentClient) -> Option<u16> {
    loop {
        match c.next_frame(WAIT).await.expect("a close frame in time") {
            RawFrame::Close(code, _) => {
                // Nothing after a close frame but the end of the connection
                // (once the client's reply is in, or the server gave up).
                c.send_frame(FIN | CLOSE, &code.unwrap_or(1000).to_be_bytes(), true)
                    .await;
                assert_eq!(c.next_frame(WAIT).await, Some(RawFrame::End));
                return code;
            }
            RawFrame::End => panic!("the connection ended without a close frame"),
            _ => continue,
        }
    }
}

/// The next text frame as JSON, skipping control frames.
async fn next_json(c: &mut SilentClient) -> Value {
    loop {
        match c.next_frame(WAIT).await.expect("a frame in time") {
            RawFrame::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            RawFrame::Ping(_) | RawFrame::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn subscribe(topic: &str) -> String {
    serde_json::json!({"action": "subscribe", "topic": topic}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frame_that_is_not_masked_is_closed_with_1002() {
    let agg = aggregator().await;
    let mut c = client(&agg).await;
    c.send_frame(FIN | TEXT, subscribe("host.a.cpu").as_bytes(), false)
        .await;
    assert_eq!(close_code(&mut c).await, Some(1002));
    // The same request, masked, on another connection is served.
    let mut ok = client(&agg).await;
    ok.send_text(&subscribe("host.a.cpu")).await;
    assert_eq!(next_json(&mut ok).await["topic"], "$sys.subscribed");
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_request_with_pings_between_its_fragments_is_answered_in_order() {
    let agg = aggregator().await;
    let mut c = client(&agg).await;
    let request = subscribe("host.a.cpu");
    let (a, rest) = request.as_bytes().split_at(7);
    let (b, z) = rest.split_at(9);
    c.send_frame(TEXT, a, true).await;
    c.send_frame(FIN | PING, b"first", true).await;
    c.send_frame(CONTINUATION, b, true).await;
    c.send_frame(FIN | PING, b"second", true).await;
    c.send_frame(FIN | CONTINUATION, z, true).await;
    // Each ping is answered with its own payload, as it arrives, and the
    // request once its last fragment is in.
    assert_eq!(
        c.next_frame(WAIT).await,
        Some(RawFrame::Pong(b"first".to_vec()))
    );
    assert_eq!(
        c.next_frame(WAIT).await,
        Some(RawFrame::Pong(b"second".to_vec()))
    );
    let reply = next_json(&mut c).await;
    assert_eq!(reply["topic"], "$sys.subscribed", "{reply}");
    assert_eq!(reply["payload"]["topic"], "host.a.cpu", "{reply}");
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_handshake_echoes_the_clients_code_and_refuses_codes_never_sent() {
    let agg = aggregator().await;
    // A normal close: the server replies with the same code, then ends the
    // connection.
    let mut c = client(&agg).await;
    c.send_text(&subscribe("host.a.cpu")).await;
    assert_eq!(next_json(&mut c).await["topic"], "$sys.subscribed");
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    c.send_frame(FIN | CLOSE, &close, true).await;
    assert!(
        matches!(
            c.next_frame(WAIT).await,
            Some(RawFrame::Close(Some(1000), _))
        ),
        "the close is answered with its code"
    );
    assert_eq!(c.next_frame(WAIT).await, Some(RawFrame::End));

    // 1001 (going away) is echoed too.
    let mut c = client(&agg).await;
    c.send_frame(FIN | CLOSE, &1001u16.to_be_bytes(), true)
        .await;
    assert!(matches!(
        c.next_frame(WAIT).await,
        Some(RawFrame::Close(Some(1001), _))
    ));

    // 1005 is reserved: it must never be sent in a close frame.
    let mut c = client(&agg).await;
    c.send_frame(FIN | CLOSE, &1005u16.to_be_bytes(), true)
        .await;
    assert!(
        matches!(
            c.next_frame(WAIT).await,
            Some(RawFrame::Close(Some(1002), _))
        ),
        "a reserved close code is a protocol error"
    );
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_closed_with_1007_whole_or_in_fragments() {
    let agg = aggregator().await;
    let mut c = client(&agg).await;
    c.send_frame(FIN | TEXT, b"{\"action\":\"\xff\xfe\"}", true)
        .await;
    assert_eq!(close_code(&mut c).await, Some(1007));
    // A character cut across two fragments is fine; a bad one at the end is not.
    let mut c = client(&agg).await;
    let request = subscribe("host.\u{e9}.cpu");
    let cut = request.find('\u{e9}').unwrap() + 1;
    c.send_frame(TEXT, &request.as_bytes()[..cut], true).await;
    c.send_frame(FIN | CONTINUATION, &request.as_bytes()[cut..], true)
        .await;
    let reply = next_json(&mut c).await;
    assert_ne!(reply["topic"], Value::Null, "{reply}");
    c.send_frame(TEXT, b"{\"action\":", true).await;
    c.send_frame(FIN | CONTINUATION, b"\"\xc3\"}", true).await;
    assert_eq!(close_code(&mut c).await, Some(1007));
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_closed_with_1009_whole_or_in_fragments() {
    let agg = aggregator().await;
    let big = vec![b' '; MAX_MESSAGE + 1];
    let mut c = client(&agg).await;
    c.send_frame(FIN | TEXT, &big, true).await;
    assert_eq!(close_code(&mut c).await, Some(1009));
    // Fragments each under the limit, over it together.
    let mut c = client(&agg).await;
    let third = vec![b' '; MAX_MESSAGE / 3 + 1];
    c.send_frame(TEXT, &third, true).await;
    c.send_frame(CONTINUATION, &third, true).await;
    c.send_frame(FIN | CONTINUATION, &third, true).await;
    assert_eq!(close_code(&mut c).await, Some(1009));
    // At the limit exactly, a request is read (and refused as JSON, not size).
    let mut c = client(&agg).await;
    let mut padded = subscribe("host.a.cpu").into_bytes();
    padded.resize(MAX_MESSAGE, b' ');
    c.send_frame(FIN | TEXT, &padded, true).await;
    assert_eq!(next_json(&mut c).await["topic"], "$sys.subscribed");
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_breaking_the_protocol_are_closed_with_1002() {
    let agg = aggregator().await;
    let long_ping = vec![b'p'; 126];
    // (what, frames sent in order)
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        (
            "a reserved bit with no extension",
            vec![(FIN | RSV1 | TEXT, b"{}")],
        ),
        ("a reserved opcode", vec![(FIN | 0x3, b"{}")]),
        ("a ping over 125 bytes", vec![(FIN | PING, &long_ping)]),
        (
            "a fragmented ping",
            vec![(PING, b"a"), (FIN | CONTINUATION, b"b")],
        ),
        (
            "a continuation with no message started",
            vec![(FIN | CONTINUATION, b"{}")],
        ),
        (
            "a new message inside a fragmented one",
            vec![(TEXT, b"{"), (FIN | TEXT, b"{}")],
        ),
    ];
    for (what, frames) in cases {
        let mut c = client(&agg).await;
        for (first, payload) in frames {
            c.send_frame(first, payload, true).await;
        }
        assert_eq!(close_code(&mut c).await, Some(1002), "{what}");
    }
    // The server is unharmed: a well-behaved client is served.
    let mut c = client(&agg).await;
    c.send_text(&subscribe("host.a.cpu")).await;
    assert_eq!(next_json(&mut c).await["topic"], "$sys.subscribed");
    tokio::time::timeout(Duration::from_secs(10), agg.stop())
        .await
        .expect("stops");
}
