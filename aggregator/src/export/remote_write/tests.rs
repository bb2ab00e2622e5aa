//! The exporter against a stand-in receiver (axum on a loopback port):
//! the headers and body remote-write needs, a 5xx retried until taken, a
//! 4xx counted and not retried, shutdown flushing what waits, `local_only`,
//! and https verified against `ca_file` with basic auth.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hostpulse_proto::Load;

use super::*;
use crate::update::Payload;

/// What the stand-in received, and the statuses it answers with in turn
/// (then 204).
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(HeaderMap, Bytes)>>,
    answers: Mutex<VecDeque<StatusCode>>,
}

async fn write(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((headers, body));
    let next = r.answers.lock().unwrap().pop_front();
    next.unwrap_or(StatusCode::NO_CONTENT)
}

/// Starts a stand-in answering `answers` first; its write URL.
async fn receiver(answers: &[StatusCode]) -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    r.answers.lock().unwrap().extend(answers);
    let app = Router::new()
        .route("/api/v1/write", post(write))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn load(host: &str, seq: u64) -> Arc<Update> {
    let now = SystemTime::now();
    Arc::new(Update::new(
        format!("host.{host}.load").into(),
        seq,
        now,
        now,
        Payload::Load(Load {
            one: seq as f64,
            five: 2.0,
            fifteen: 3.0,
        }),
    ))
}

struct Running {
    tx: mpsc::Sender<Arc<Update>>,
    stats: Arc<RemoteWriteStats>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

fn start_with(url: String, tune: impl FnOnce(&mut RemoteWriteConfig)) -> Running {
    let mut config = RemoteWriteConfig {
        url: Some(url),
        bearer_token: Some("s3cret".into()),
        batch_wait_ms: 10,
        min_backoff_ms: 10,
        max_backoff_ms: 20,
        timeout_ms: 2_000,
        ..RemoteWriteConfig::default()
    };
    tune(&mut config);
    let settings = config.settings().unwrap();
    let (tx, q, stats) = queue(&settings);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    start(settings, q, stats.clone(), shutdown.clone(), &tasks).unwrap();
    Running {
        tx,
        stats,
        shutdown,
        tasks,
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_batch_failing_with_5xx_is_retried_until_taken_with_the_remote_write_headers() {
    let (r, url) = receiver(&[StatusCode::SERVICE_UNAVAILABLE]).await;
    let rw = start_with(url, |_| {});
    rw.tx.send(load("a", 1)).await.unwrap();
    until("sent", || n(&rw.stats.samples_sent) == 3).await;
    assert_eq!(n(&rw.stats.requests_retried), 1);
    assert_eq!(n(&rw.stats.samples_failed), 0);
    assert!(!rw.stats.failing.load(Ordering::Relaxed));
    assert_eq!(n(&rw.stats.pending_samples), 0);
    let got = r.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "the same batch twice");
    assert_eq!(got[0].1, got[1].1);
    let (headers, body) = &got[1];
    for (name, value) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
        ("authorization", "Bearer s3cret"),
    ] {
        assert_eq!(headers[name], value, "{name}");
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
    let req: wire::WriteRequest = prost::Message::decode(raw.as_slice()).unwrap();
    let mut names: Vec<&str> = req
        .timeseries
        .iter()
        .map(|t| t.labels[0].value.as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "hostpulse_host_load1",
            "hostpulse_host_load15",
            "hostpulse_host_load5"
        ]
    );
    rw.shutdown.cancel();
    rw.tasks.close();
    rw.tasks.wait().await;
}

#[tokio::test]
async fn a_refused_batch_is_counted_failed_and_not_retried() {
    let (r, url) = receiver(&[StatusCode::BAD_REQUEST]).await;
    let rw = start_with(url, |_| {});
    rw.tx.send(load("a", 1)).await.unwrap();
    until("refused", || n(&rw.stats.samples_failed) == 3).await;
    assert!(rw.stats.failing.load(Ordering::Relaxed));
    rw.tx.send(load("a", 2)).await.unwrap();
    until("the next sent", || n(&rw.stats.samples_sent) == 3).await;
    assert_eq!(n(&rw.stats.requests_retried), 0);
    assert_eq!(n(&rw.stats.requests_refused), 1);
    assert!(!rw.stats.failing.load(Ordering::Relaxed));
    assert_eq!(r.got.lock().unwrap().len(), 2);
    rw.shutdown.cancel();
    rw.tasks.close();
    rw.tasks.wait().await;
}

#[tokio::test]
async fn shutdown_sends_what_waits_and_batches_hold_at_most_batch_size() {
    let (r, url) = receiver(&[]).await;
    // A batch would wait a minute to fill: only shutdown sends it.
    let rw = start_with(url, |c| {
        c.batch_wait_ms = 60_000;
        c.batch_size = 4;
    });
    for seq in 1..=3 {
        rw.tx.send(load("a", seq)).await.unwrap();
    }
    // Nine samples: two full batches go at once, one waits.
    until("two batches", || n(&rw.stats.samples_sent) == 8).await;
    until("the rest read", || rw.stats.queued() == 0).await;
    rw.shutdown.cancel();
    rw.tasks.close();
    tokio::time::timeout(FLUSH_TIMEOUT + Duration::from_secs(1), rw.tasks.wait())
        .await
        .expect("the exporter stops within its flush bound");
    assert_eq!(n(&rw.stats.samples_sent), 9);
    assert_eq!(r.got.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn local_only_leaves_peers_hosts_out() {
    let (r, url) = receiver(&[]).await;
    let rw = start_with(url, |c| c.local_only = true);
    let peer = load("peer-host", 1);
    let peer = Update::remote(peer.topic.clone(), 1, peer.json.clone(), "agg-2".into());
    rw.tx.send(Arc::new(peer)).await.unwrap();
    rw.tx.send(load("own-host", 1)).await.unwrap();
    until("sent", || n(&rw.stats.samples_sent) == 3).await;
    rw.shutdown.cancel();
    rw.tasks.close();
    rw.tasks.wait().await;
    let got = r.got.lock().unwrap().clone();
    let hosts: Vec<String> = got
        .iter()
        .flat_map(|(_, body)| {
            let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
            let req: wire::WriteRequest = prost::Message::decode(raw.as_slice()).unwrap();
            req.timeseries
                .into_iter()
                .flat_map(|t| t.labels)
                .filter(|l| l.name == "host")
                .map(|l| l.value)
        })
        .collect();
    assert_eq!(hosts, ["own-host"; 3]);
    assert_eq!(n(&rw.stats.samples_sent), 3);
}

#[tokio::test]
async fn https_is_verified_against_ca_file_and_basic_auth_is_sent() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("hostpulse-rw-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = crate::tls::Tls::load(&crate::tls::TlsConfig {
        cert_file: Some(file("cert.pem", &leaf.pem())),
        key_file: Some(file("key.pem", &key.serialize_pem())),
    })
    .unwrap()
    .unwrap();
    let ca_file = file("ca.pem", &ca.pem());

    let r = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/api/v1/write", post(write))
        .with_state(r.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/api/v1/write", tcp.local_addr().unwrap());
    let server_stop = CancellationToken::new();
    let listener = tls.listener(tcp, server_stop.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Against another CA, the endpoint is not trusted: nothing is sent.
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
    let other_file = file("other-ca.pem", &other.pem());
    let untrusting = start_with(url.clone(), |c| c.ca_file = Some(other_file));
    untrusting.tx.send(load("a", 1)).await.unwrap();
    until("a failed handshake", || {
        n(&untrusting.stats.requests_retried) >= 1
    })
    .await;
    assert_eq!(n(&untrusting.stats.samples_sent), 0);
    untrusting.shutdown.cancel();
    untrusting.tasks.close();
    untrusting.tasks.wait().await;
    assert!(r.got.lock().unwrap().is_empty());

    let rw = start_with(url, |c| {
        c.bearer_token = None;
        c.username = Some("hostpulse".into());
        c.password = Some("pw".into());
        c.ca_file = Some(ca_file);
    });
    rw.tx.send(load("a", 1)).await.unwrap();
    until("sent over https", || n(&rw.stats.samples_sent) == 3).await;
    let got = r.got.lock().unwrap().clone();
    // base64("hostpulse:pw")
    assert_eq!(got[0].0["authorization"], "Basic aG9zdHB1bHNlOnB3");
    rw.shutdown.cancel();
    rw.tasks.close();
    rw.tasks.wait().await;
    server_stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
