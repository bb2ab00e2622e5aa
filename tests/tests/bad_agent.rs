//! A misbehaving agent is refused with a clear gRPC status, and a healthy
//! agent on the same aggregator keeps flowing.

use hostpulse_proto::v1::{
    AgentMessage, Batch, Hello, agent_message, aggregator_message, ingest_client::IngestClient,
};
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, WAIT, agent_config};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn hello(host: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: format!("fake-{host}"),
            hostname: host.into(),
            version: "0.0.0".into(),
            labels: Default::default(),
            epoch: 1,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: 1000,
        })),
    }
}

fn batch(seq: u64, count: u32, bytes: Vec<u8>) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq,
            sample_count: count,
            samples: bytes.into(),
        })),
    }
}

/// Opens a stream, sends `messages`, and returns the status that ended it.
async fn refused_with(url: &str, messages: Vec<AgentMessage>) -> tonic::Status {
    let mut client = IngestClient::connect(url.to_string())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let result = client.stream(ReceiverStream::new(rx)).await;
    let mut inbound = match result {
        Err(status) => return status,
        Ok(r) => r.into_inner(),
    };
    loop {
        match tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("an answer in time")
        {
            Ok(Some(m)) => assert!(
                matches!(m.kind, Some(aggregator_message::Kind::Welcome(_))),
                "only Welcome precedes the refusal: {m:?}"
            ),
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => return status,
        }
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
        vec![hello("bad1"), batch(1, 1, vec![0xc1, 0xff, 0x00, 0x13])],
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("batch 1") && status.message().contains("MessagePack"),
        "{status:?}"
    );

    let huge = refused_with(
        &url,
        vec![hello("bad2"), batch(1, 1_000_000_000, vec![0x90])],
    )
    .await;
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    assert!(huge.message().contains("limit of 100"), "{huge:?}");

    let mismatch = refused_with(&url, vec![hello("bad3"), batch(1, 5, vec![0x90])]).await;
    assert!(
        mismatch
            .message()
            .contains("declares 5 samples but holds 0"),
        "{mismatch:?}"
    );

    let no_hello = refused_with(&url, vec![batch(1, 0, vec![0x90])]).await;
    assert_eq!(no_hello.code(), tonic::Code::InvalidArgument);
    assert!(
        no_hello
            .message()
            .contains("first message of a stream must be Hello")
    );

    let nan = hostpulse_proto::Sample {
        seq: 5,
        timestamp_ms: 1_795_000_000_000,
        cpu: Some(hostpulse_proto::Cpu {
            total_pct: f32::NAN,
            per_core_pct: vec![],
        }),
        memory: None,
        load: None,
        processes: None,
    };
    let bytes = hostpulse_proto::encode_batch(std::slice::from_ref(&nan));
    let invalid = refused_with(&url, vec![hello("bad4"), batch(1, 1, bytes)]).await;
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
    let status = refused_with(&agg.ingest_url(), vec![hello("shared")]).await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert!(
        status.message().contains("already published by agent"),
        "{status:?}"
    );
    first.stop().await;
    agg.stop().await;
}
