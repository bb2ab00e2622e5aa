//! Batch frames shared by a subscription group: clients subscribed alike,
//! with the same batching window and encoding, receive the same batches,
//! built once by the aggregator and written to each of them.

use std::collections::BTreeMap;

use hostpulse_proto::Sample;
use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAggregator, WAIT, metric};
use serde_json::{Value, json};

const CLIENTS: usize = 6;
const BURSTS: u64 = 8;
/// Samples per burst; each makes two updates (load and processes).
const PER_BURST: u64 = 3;
const TOPICS: [&str; 2] = ["host.shr.load", "host.shr.processes"];
const BUILT: &str = "hostpulse_ws_batch_frames_built_total";
const SHARED: &str = "hostpulse_ws_batch_frames_shared_total";

/// A sample whose load average says which it is.
fn sample(n: u64) -> Sample {
    let mut s = fake::sample(n, 12);
    s.load.as_mut().expect("fake samples carry a load").one = n as f64;
    s
}

fn updates_in(frames: &[(usize, Value)]) -> usize {
    frames
        .iter()
        .map(|(_, f)| f["updates"].as_array().map_or(0, Vec::len))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_subscribed_alike_write_one_shared_deflated_batch_per_window() {
    let agg = TestAggregator::start(|_| {}).await;
    // A long window: each burst below is published just after the frames of
    // the last one arrive, so well inside a window, never across its close.
    let url = format!("{}?encoding=msgpack%2Bdeflate&batch_ms=200", agg.ws_url());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = WsClient::connect(&url).await;
        for topic in TOPICS {
            c.send(json!({"action": "subscribe", "topic": topic})).await;
        }
        // The replies come in batch frames of the connection's own.
        let mut replies = 0;
        while replies < TOPICS.len() {
            let (_, frame) = c.next_frame_within(WAIT).await.expect("subscribed");
            assert_eq!(frame["topic"], "batch.update", "{frame}");
            for item in frame["updates"].as_array().expect("a list of updates") {
                assert_eq!(item["topic"], "$sys.subscribed", "{frame}");
                replies += 1;
            }
        }
        clients.push(c);
    }
    let built = metric(agg.http, BUILT).await;
    let shared = metric(agg.http, SHARED).await;

    let mut agent = FakeAgent::connect(&agg.ingest_url(), "shr").await;
    let mut received: Vec<Vec<(usize, Value)>> = vec![Vec::new(); CLIENTS];
    for burst in 0..BURSTS {
        let samples: Vec<Sample> = (1..=PER_BURST)
            .map(|i| sample(burst * PER_BURST + i))
            .collect();
        agent.send(fake::batch(burst + 1, &samples)).await;
        agent.acked(burst + 1).await;
        let want = ((burst + 1) * PER_BURST) as usize * TOPICS.len();
        for (c, frames) in clients.iter_mut().zip(&mut received) {
            while updates_in(frames) < want {
                let frame = c.next_frame_within(WAIT).await.expect("the burst in time");
                assert_eq!(frame.1["topic"], "batch.update", "{}", frame.1);
                frames.push(frame);
            }
            assert_eq!(updates_in(frames), want, "nothing beyond the burst");
        }
    }

    // One batch per burst, and every client got the very same batches (the
    // same frames, of the same size on the wire).
    let first = &received[0];
    assert_eq!(first.len(), BURSTS as usize, "a frame per burst");
    for (n, frames) in received.iter().enumerate().skip(1) {
        assert_eq!(frames, first, "client {n} got other batches than client 0");
    }
    // What was published, in order, each once.
    let mut by_topic: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for (_, frame) in first {
        for u in frame["updates"].as_array().expect("a list of updates") {
            let topic = u["topic"].as_str().expect("a topic");
            assert!(TOPICS.contains(&topic), "{u}");
            by_topic.entry(topic).or_default().push(u);
        }
    }
    let published = (BURSTS * PER_BURST) as usize;
    for topic in TOPICS {
        let updates = &by_topic[topic];
        assert_eq!(updates.len(), published, "{topic}: every update");
        let seqs: Vec<u64> = updates.iter().map(|u| u["seq"].as_u64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{topic}: in order, none missing: {seqs:?}"
        );
    }
    let loads: Vec<f64> = by_topic["host.shr.load"]
        .iter()
        .map(|u| u["payload"]["one"].as_f64().expect("a load figure"))
        .collect();
    let sent: Vec<f64> = (1..=published as u64).map(|n| n as f64).collect();
    assert_eq!(loads, sent, "the samples' figures, in order");

    // Built once per window, not once per client: at most once more when
    // both workers drain a member of the group at the same moment.
    let frames = (CLIENTS as u64 * BURSTS) as f64;
    let built = metric(agg.http, BUILT).await - built;
    let shared = metric(agg.http, SHARED).await - shared;
    assert_eq!(built + shared, frames, "built {built}, shared {shared}");
    assert!(
        built <= 2.0 * BURSTS as f64,
        "built {built} of {frames} frames, shared {shared}"
    );
    agg.stop().await;
}
