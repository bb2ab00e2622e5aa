//! TLS on both listeners, with a CA and certificate generated here: agents
//! verify the aggregator against the configured CA, WebSocket clients connect
//! over wss://, and anything else is refused at the handshake.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hostpulse_aggregator::tls::TlsConfig;
use hostpulse_tests::process::temp_file;
use hostpulse_tests::{TestAgent, TestAggregator, WAIT, agent_config, wait_until};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

struct Pki {
    ca_pem: String,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    ca_file: std::path::PathBuf,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("hostpulse test CA {name}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_file: temp_file("cert.pem", &leaf.pem()),
        key_file: temp_file("key.pem", &key.serialize_pem()),
        ca_file: temp_file("ca.pem", &ca.pem()),
    }
}

fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_clients_talk_tls_verified_against_the_configured_ca() {
    let server = pki("server");
    let agg = TestAggregator::start(|c| {
        c.tls = TlsConfig {
            cert_file: Some(server.cert_file.clone()),
            key_file: Some(server.key_file.clone()),
        };
    })
    .await;

    let mut config = agent_config(&format!("https://{}", agg.ingest), "secure");
    config.ca_file = Some(server.ca_file.clone());
    let agent = TestAgent::start(config);
    wait_until("the agent connected over TLS", || {
        agent.status.connected.load(Ordering::SeqCst)
    })
    .await;

    let url = format!("wss://{}/ws", agg.http);
    let connector = Connector::Rustls(Arc::new(client_config(&server.ca_pem)));
    let (mut socket, _) = tokio::time::timeout(
        WAIT,
        connect_async_tls_with_config(&url, None, false, Some(connector)),
    )
    .await
    .unwrap()
    .expect("wss connection");
    use futures_util::{SinkExt, StreamExt};
    socket
        .send(Message::Text(
            "{\"action\":\"subscribe\",\"topic\":\"host.secure.cpu\"}".into(),
        ))
        .await
        .unwrap();
    let mut got_update = false;
    while !got_update {
        let m = tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            got_update = v["topic"] == "host.secure.cpu";
        }
    }

    // A client trusting another CA is refused at the handshake.
    let other = pki("other");
    let connector = Connector::Rustls(Arc::new(client_config(&other.ca_pem)));
    let refused = connect_async_tls_with_config(&url, None, false, Some(connector)).await;
    let e = refused
        .expect_err("an untrusted certificate is refused")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // Plain WebSocket to the TLS port gets nowhere.
    assert!(
        tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{}/ws", agg.http))
        )
        .await
        .unwrap()
        .is_err()
    );
    // An agent verifying against the wrong CA cannot connect.
    let hello = hostpulse_proto::v1::Hello {
        agent_id: "wrong-ca".into(),
        hostname: "wrong-ca".into(),
        ..Default::default()
    };
    let err = hostpulse_agent::link::connect(
        format!("https://{}", agg.ingest),
        hello,
        hostpulse_agent::link::LinkSettings {
            connect_timeout: WAIT,
            keepalive_interval: WAIT,
            keepalive_timeout: WAIT,
            token: None,
            ca_pem: Some(other.ca_pem.into_bytes()),
            tls_domain: None,
        },
    )
    .await
    .expect_err("the wrong CA is refused");
    let text = format!("{err:?}").to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("unknownissuer"),
        "{text}"
    );

    agent.stop().await;
    agg.stop().await;
}
