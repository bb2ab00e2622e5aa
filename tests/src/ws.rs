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
        self.next_frame_within(limit).await.map(|(_, v)| v)
    }

    /// The next data frame within `limit`, as its payload size on the wire
    /// (after any compression) and its decoded content; `None` on timeout.
    pub async fn next_frame_within(&mut self, limit: Duration) -> Option<(usize, Value)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    return Some((m.len(), decode(&m, self.deflated)?));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(c))) => panic!("server closed: {c:?}"),
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// This client's own address, as the server sees it as the peer.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        match self.socket.get_ref() {
            MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("a local address"),
            _ => panic!("local_addr is for plain connections"),
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
        let (request, stream) = tcp_for(url, |tcp| {
            tcp.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        })
        .await;
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

/// One frame as a [`SilentClient`] read it.
#[derive(Debug, PartialEq)]
pub enum RawFrame {
    /// A text frame (whole message).
    Text(String),
    /// A binary frame (whole message).
    Binary(Vec<u8>),
    /// A ping, with its payload.
    Ping(Vec<u8>),
    /// A pong, with its payload.
    Pong(Vec<u8>),
    /// A close frame: its code (`None` when it carried none) and reason.
    Close(Option<u16>, String),
    /// The connection ended without a close frame.
    End,
}

/// A WebSocket client written by hand over a plain TCP stream: it reads
/// every frame the server sends but never writes anything except the
/// requests a test asks it to send. Unlike [`WsClient`] (tungstenite
/// answers pings whenever it reads), it can go on reading while it has
/// stopped answering, so a test sees exactly what the server sends to a
/// client that went silent, and when.
pub struct SilentClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl SilentClient {
    /// Upgrades `GET path` on `addr` (plain `ws://`), panicking unless the
    /// server answers 101.
    pub async fn connect(addr: std::net::SocketAddr, path: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("TCP connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write upgrade");
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("upgrade answer in time")
                .expect("read upgrade answer");
            assert!(n > 0, "connection closed during the upgrade");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buffer.drain(..end);
        Self { stream, buffer }
    }

    /// Sends one masked text frame (as every client frame must be).
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x80 | 0x1, text.as_bytes(), true).await;
    }

    /// Sends one frame exactly as given: `first` is its first byte (FIN,
    /// reserved bits and opcode), masked or not; nothing is checked, so a
    /// test can send what a client must not.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        use tokio::io::AsyncWriteExt;
        let mask = [0x5a, 0x3c, 0x96, 0x0f];
        let bit = if masked { 0x80 } else { 0 };
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(bit | n as u8),
            n if n <= 0xffff => {
                frame.push(bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The server may close before reading all of it.
        let _ = self.stream.write_all(&frame).await;
    }

    /// Sends a JSON request.
    pub async fn send(&mut self, request: Value) {
        self.send_text(&request.to_string()).await;
    }

    /// The next frame (a fragmented message is joined); `None` when nothing
    /// complete arrived within `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Option<RawFrame> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + limit;
        let mut message: Option<(u8, Vec<u8>)> = None;
        loop {
            while let Some((fin, opcode, payload)) = self.parse_frame() {
                let frame = match opcode {
                    0x0 => {
                        let (_, data) = message.as_mut().expect("a continuation of a message");
                        data.extend_from_slice(&payload);
                        if !fin {
                            continue;
                        }
                        let (first, data) = message.take().expect("checked");
                        (first, data)
                    }
                    0x1 | 0x2 if !fin => {
                        message = Some((opcode, payload));
                        continue;
                    }
                    other => (other, payload),
                };
                return Some(match frame {
                    (0x1, data) => RawFrame::Text(String::from_utf8(data).expect("UTF-8 text")),
                    (0x2, data) => RawFrame::Binary(data),
                    (0x8, data) => RawFrame::Close(
                        (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]])),
                        String::from_utf8_lossy(data.get(2..).unwrap_or_default()).into_owned(),
                    ),
                    (0x9, data) => RawFrame::Ping(data),
                    (0xa, data) => RawFrame::Pong(data),
                    (opcode, _) => panic!("unknown opcode {opcode:#x}"),
                });
            }
            let mut chunk = [0u8; 16 << 10];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(RawFrame::End),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Takes one whole frame off the buffer: (fin, opcode, payload).
    fn parse_frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        let b = &self.buffer;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < header + len {
            return None;
        }
        let payload = b[header..header + len].to_vec();
        self.buffer.drain(..header + len);
        Some((fin, opcode, payload))
    }

    /// Subscribes and reads until `$sys.subscribed` (JSON encoding only).
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"action": "subscribe", "topic": topic}))
            .await;
        loop {
            match self.next_frame(WAIT).await {
                Some(RawFrame::Text(t)) => {
                    let m: Value = serde_json::from_str(&t).expect("server sends JSON text");
                    if m["topic"] == "$sys.subscribed" {
                        return m;
                    }
                }
                Some(RawFrame::Ping(_) | RawFrame::Pong(_)) => {}
                other => panic!("expected $sys.subscribed, got {other:?}"),
            }
        }
    }
}

impl WsClient {
    /// Connects to a plain `ws://` URL from the local address `source` (any
    /// 127.x.y.z works on Linux loopback, so a test can stand for a client
    /// address of its own); an HTTP refusal of the upgrade is returned.
    pub async fn try_connect_from(
        source: std::net::IpAddr,
        url: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>> {
        let (request, stream) = tcp_for(url, |tcp| {
            tcp.bind(std::net::SocketAddr::new(source, 0))
                .expect("bind the source address");
        })
        .await;
        match tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("upgrade answered in time")
        {
            Ok((socket, _)) => Ok(Self {
                socket,
                deflated: false,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(*response),
            Err(e) => panic!("expected an upgrade or an HTTP refusal, got {e}"),
        }
    }

    /// Sends a close frame (1000) and reads until the connection ends;
    /// returns how it ended: the server's close reply, or
    /// [`Closed::Abrupt`] without one. Panics after `limit`.
    pub async fn close(&mut self, limit: Duration) -> Closed {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if self.socket.close(Some(frame)).await.is_err() {
            return Closed::Abrupt;
        }
        tokio::time::timeout(limit, async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Closed::Code(u16::from(frame.code));
                    }
                    Some(Ok(Message::Close(None))) => {
                        return Closed::Code(u16::from(CloseCode::Status));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Closed::Abrupt,
                }
            }
        })
        .await
        .expect("the connection ends after a close")
    }
}

/// The upgrade request for a plain `ws://` URL and a TCP connection to its
/// address, made from a socket that `prepare` sets up first (buffer sizes,
/// source address).
async fn tcp_for(
    url: &str,
    prepare: impl FnOnce(&tokio::net::TcpSocket),
) -> (
    tokio_tungstenite::tungstenite::handshake::client::Request,
    tokio::net::TcpStream,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().expect("a websocket URL");
    let authority = request.uri().authority().expect("host and port").as_str();
    let addr: std::net::SocketAddr = authority.parse().expect("an IP address and port");
    let tcp = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("a TCP socket");
    prepare(&tcp);
    let stream = tokio::time::timeout(WAIT, tcp.connect(addr))
        .await
        .expect("connect in time")
        .expect("TCP connect");
    (request, stream)
}

/// One message as a light reader sees it ([`WsClient::next_light`]).
#[derive(Debug)]
pub enum Light {
    /// A topic update: only its topic and seq were read, not its payload.
    Update {
        /// Its topic.
        topic: String,
        /// Its seq.
        seq: u64,
    },
    /// Anything else (`$sys` messages, `batch.update` frames), decoded whole.
    Other(Value),
}

impl WsClient {
    /// The next data frame within `limit`, read lightly: of an update, only
    /// its topic and seq (so a client counting hundreds of thousands of
    /// updates does not spend its time decoding payloads); anything else
    /// decoded whole. `Ok(None)` on timeout, `Err(..)` when the connection
    /// closed.
    pub async fn next_light(&mut self, limit: Duration) -> Result<Option<Light>, Closed> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => m,
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Err(Closed::Code(u16::from(frame.code)));
                }
                Ok(Some(Ok(Message::Close(None)))) => {
                    return Err(Closed::Code(u16::from(CloseCode::Status)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Err(Closed::Abrupt),
            };
            if let Message::Text(t) = &message
                && let Some((topic, seq)) = topic_and_seq(t)
                && !topic.starts_with('$')
                && topic != "batch.update"
            {
                return Ok(Some(Light::Update {
                    topic: topic.to_string(),
                    seq,
                }));
            }
            let value = decode(&message, self.deflated).expect("a data frame");
            match (value["topic"].as_str(), value["seq"].as_u64()) {
                (Some(topic), Some(seq)) if !topic.starts_with('$') && topic != "batch.update" => {
                    return Ok(Some(Light::Update {
                        topic: topic.to_string(),
                        seq,
                    }));
                }
                _ => return Ok(Some(Light::Other(value))),
            }
        }
    }
}

/// The top-level `topic` and `seq` of a JSON object, found without decoding
/// the rest of it (whatever the order of its fields); `None` when it lacks
/// either, the topic holds an escape, or the text is not a JSON object.
/// Values before both are found are skipped by their brackets and quotes.
pub fn topic_and_seq(text: &str) -> Option<(&str, u64)> {
    let b = text.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let (mut topic, mut seq) = (None, None);
    loop {
        i = skip_space(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = &text[i + 1..key_end - 1];
        i = skip_space(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_space(b, i + 1);
        let end = value_end(b, i)?;
        let value = &text[i..end];
        match key {
            "topic" => {
                let inner = value.strip_prefix('"')?.strip_suffix('"')?;
                if inner.contains('\\') {
                    return None;
                }
                topic = Some(inner);
            }
            "seq" => seq = Some(value.parse().ok()?),
            _ => {}
        }
        if let (Some(t), Some(s)) = (topic, seq) {
            return Some((t, s));
        }
        i = skip_space(b, end);
        if b.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Just past the closing quote of the string opening at `b[i]`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Just past the JSON value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}
