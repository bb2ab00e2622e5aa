//! A misbehaving agent is refused with a clear gRPC status, and a healthy
//! agent on the same aggregator keeps flowing.

use hostpulse_proto::v1::AgentMessage;
use hostpulse_tests::fake::{self, hello, raw_batch};
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, agent_config};

/// Opens a stream, sends `messages`, and returns the status that ended it.
async fn refused_with(url: &str, messages: Vec<AgentMessage>) -> tonic::Status {
    match fake::open(url, messages).await {
        Err(status) => status,
        Ok(mut agent) => agent.refusal().await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_batches_are_refused_and_a_healthy_agent_keeps_flowing() {
    let agg = TestAggregator::start(|c| c.ingest.max_samples_per_batch = 100).await;
    let healthy = TestAgent::start(agent_config(&agg.ingest_url(), "healthy"));
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.healthy.cpu").await;
    let first = client.next_on("host.healthy.cpu").await["seq"]
        .as_u64()
        .unwrap();

    let url = agg.ingest_url();
    let status = refused_with(
        &url,
        vec![
            hello("bad1", 1),
            raw_batch(1, 1, vec![0xc1, 0xff, 0x00, 0x13]),
        ],
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("batch 1") && status.message().contains("MessagePack"),
        "{status:?}"
    );

    let huge = refused_with(
        &url,
        vec![hello("bad2", 1), raw_batch(1, 1_000_000_000, vec![0x90])],
    )
    .await;
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    assert!(huge.message().contains("limit of 100"), "{huge:?}");

    let mismatch = refused_with(&url, vec![hello("bad3", 1), raw_batch(1, 5, vec![0x90])]).await;
    assert!(
        mismatch
            .message()
            .contains("declares 5 samples but holds 0"),
        "{mismatch:?}"
    );

    let no_hello = refused_with(&url, vec![raw_batch(1, 0, vec![0x90])]).await;
    assert_eq!(no_hello.code(), tonic::Code::InvalidArgument);
    assert!(
        no_hello
            .message()
            .contains("first message of a stream must be Hello")
    );

    let mut nan = fake::sample(5, 0);
    nan.cpu = Some(hostpulse_proto::Cpu {
        total_pct: f32::NAN,
        per_core_pct: vec![],
    });
    let invalid = refused_with(&url, vec![hello("bad4", 1), fake::batch(1, &[nan])]).await;
    assert!(
        invalid.message().contains("cpu.total_pct is NaN"),
        "{invalid:?}"
    );

    // The healthy host never stopped: its seqs continue without a gap.
    let mut prev = first;
    for _ in 0..10 {
        let m = client.next_on("host.healthy.cpu").await;
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, prev + 1);
        prev = seq;
    }
    assert!(
        healthy
            .status
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    );
    healthy.stop().await;
    agg.stop().await;
}

#[tokio::test]
async fn a_second_agent_claiming_a_connected_host_is_refused() {
    let agg = TestAggregator::start(|_| {}).await;
    let first = TestAgent::start(agent_config(&agg.ingest_url(), "shared"));
    hostpulse_tests::wait_until("first agent connected", || {
        first
            .status
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let status = refused_with(&agg.ingest_url(), vec![hello("shared", 1)]).await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert!(
        status.message().contains("already published by agent"),
        "{status:?}"
    );
    first.stop().await;
    agg.stop().await;
}
