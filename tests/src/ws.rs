//! A WebSocket test client speaking hostpulse's JSON protocol.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::WAIT;

/// A connected client.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Binary frames are deflated MessagePack (else plain MessagePack).
    pub deflated: bool,
}

/// Decodes one data frame: text as JSON, binary as MessagePack (inflated first when `deflated`).
pub fn decode(message: &Message, deflated: bool) -> Option<Value> {
    match message {
        Message::Text(t) => Some(serde_json::from_str(t).expect("server sends JSON text")),
        Message::Binary(b) => {
            let raw = if deflated {
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::DeflateDecoder::new(&b[..]),
                    &mut out,
                )
                .expect("valid deflate");
                out
            } else {
                b.to_vec()
            };
            Some(rmp_serde::from_slice(&raw).expect("valid MessagePack"))
        }
        _ => None,
    }
}

/// What the server sent last, when it closed.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection ended without a close frame.
    Abrupt,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(WAIT, connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket connect");
        Self {
            socket,
            deflated: url.contains("encoding=msgpack+deflate")
                || url.contains("encoding=msgpack%2Bdeflate"),
        }
    }

    /// Connects offering `subprotocol`; returns the client and the protocol the server chose.
    pub async fn connect_with_protocol(url: &str, subprotocol: &str) -> (Self, Option<String>) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("a websocket URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            subprotocol.parse().expect("a header value"),
        );
        let (socket, response) = tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect in time")
            .expect("websocket connect");
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        let deflated = chosen.as_deref() == Some("hostpulse.v1.msgpack-deflate");
        (Self { socket, deflated }, chosen)
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a raw text frame; an error (the server hung up) is returned, not a panic.
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), String> {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a raw frame.
    pub async fn send_message(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }

    /// Sends a JSON request.
    pub async fn send(&mut self, request: Value) {
        self.send_text(&request.to_string()).await;
    }

    /// Subscribes and waits for `$sys.subscribed` (updates before it are kept out).
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"action": "subscribe", "topic": topic}))
            .await;
        self.next_on("$sys.subscribed").await
    }

    /// The next JSON text message, within `limit`; `None` on timeout.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    return decode(&m, self.deflated);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(c))) => panic!("server closed: {c:?}"),
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// The next JSON message within `limit`: `Ok(None)` on timeout,
    /// `Err(..)` when the connection closed (for tests that expect it to).
    pub async fn recv(&mut self, limit: Duration) -> Result<Option<Value>, Closed> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                    return Ok(decode(&m, self.deflated));
                }
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Err(Closed::Code(u16::from(frame.code)));
                }
                Ok(Some(Ok(Message::Close(None)))) => {
                    return Err(Closed::Code(u16::from(CloseCode::Status)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Err(Closed::Abrupt),
            }
        }
    }

    /// Connects, retrying every 50 ms until `limit` (for servers restarting).
    pub async fn connect_retrying(url: &str, limit: Duration) -> Self {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Ok((socket, _))) =
                tokio::time::timeout(Duration::from_secs(2), connect_async(url)).await
            {
                return Self {
                    socket,
                    deflated: false,
                };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "could not connect to {url} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next JSON message; panics after [`WAIT`].
    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT)
            .await
            .expect("a message within the wait limit")
    }

    /// Skips messages until one on `topic` arrives.
    pub async fn next_on(&mut self, topic: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["topic"] == topic {
                return m;
            }
        }
    }

    /// Sends `request` and expects a `$sys.error` with `code` whose message
    /// contains `phrase`.
    pub async fn expect_error(&mut self, request: &str, code: &str, phrase: &str) {
        self.send_text(request).await;
        let m = self.next_on("$sys.error").await;
        let short: String = request.chars().take(80).collect();
        assert_eq!(m["payload"]["code"], code, "{short} -> {m}");
        let message = m["payload"]["message"].as_str().expect("an error message");
        assert!(message.contains(phrase), "{short} -> {message}");
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self, limit: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => panic!("server did not close within {limit:?}"),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Closed::Code(u16::from(frame.code));
                }
                Ok(Some(Ok(Message::Close(None)))) => {
                    return Closed::Code(u16::from(CloseCode::Status));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Closed::Abrupt,
            }
        }
    }
}

/// An upgrade the server refused with an HTTP answer.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status code.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The response body.
    pub body: String,
}

impl WsClient {
    /// Connects, or returns the HTTP answer that refused the upgrade
    /// (panics on anything else, such as a transport error or a timeout).
    pub async fn try_connect(url: &str) -> Result<Self, Refused> {
        use tokio_tungstenite::tungstenite::Error;
        match tokio::time::timeout(WAIT, connect_async(url))
            .await
            .expect("an answer in time")
        {
            Ok((socket, _)) => Ok(Self {
                socket,
                deflated: false,
            }),
            Err(Error::Http(r)) => Err(Refused {
                status: r.status().as_u16(),
                retry_after: r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().expect("ASCII header").to_string()),
                body: String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
            }),
            Err(e) => panic!("expected an upgrade or an HTTP refusal, got {e}"),
        }
    }

    /// Connects to a plain `ws://` URL over a socket whose kernel receive
    /// buffer is asked to be `bytes` (the kernel may round it up), set before
    /// connecting so the advertised window stays small: a client that then
    /// stops reading soon blocks the server's writes.
    pub async fn connect_with_recv_buffer(url: &str, bytes: u32) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let request = url.into_client_request().expect("a websocket URL");
        let authority = request.uri().authority().expect("host and port").as_str();
        let addr: std::net::SocketAddr = authority.parse().expect("an IP address and port");
        let tcp = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("a TCP socket");
        tcp.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = tokio::time::timeout(WAIT, tcp.connect(addr))
            .await
            .expect("connect in time")
            .expect("TCP connect");
        let (socket, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("upgrade in time")
        .expect("websocket upgrade");
        Self {
            socket,
            deflated: false,
        }
    }

    /// The exact text of the next text frame (an update's bytes as the
    /// server encoded them); panics after [`WAIT`] or on a close.
    pub async fn next_text(&mut self) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame within the wait limit")
            {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}
