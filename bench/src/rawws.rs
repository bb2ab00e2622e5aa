//! A lean WebSocket reader for the load generator: the handshake is done by
//! tungstenite, then frames are parsed straight from a 64 KiB read buffer, so
//! one read system call yields many updates and no message is allocated. Only
//! what a subscriber needs: unmasked server frames, text and binary data,
//! pings (answered) and close.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frame's opcode and payload.
pub(crate) enum Frame<'a> {
    /// Text or binary data.
    Data(&'a [u8]),
    /// A ping to answer.
    Ping(Vec<u8>),
    /// The server closed, with this close code (if it gave one).
    Close(Option<u16>),
}

/// Connects to `url` (ws://host:port/path?query) and returns the raw stream.
pub(crate) async fn connect(url: &str) -> anyhow::Result<TcpStream> {
    let (socket, _) = tokio_tungstenite::connect_async(url).await?;
    match socket.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => Ok(tcp),
        _ => anyhow::bail!("only plain ws:// is supported by the generator"),
    }
}

/// Sends a masked client frame (`opcode` 1 text, 10 pong).
pub(crate) async fn send(tcp: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await
}

/// Buffered frame reader.
pub(crate) struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
        }
    }

    /// Reads once (many frames at a time) and calls `each` for every complete frame.
    pub(crate) async fn read(
        &mut self,
        tcp: &mut TcpStream,
        mut each: impl FnMut(Frame<'_>),
    ) -> std::io::Result<usize> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            // Make room: move the partial frame to the front, grow if one frame is larger.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = tcp.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        while let Some((header, len, opcode)) = parse_header(&self.buf[self.start..self.end]) {
            let payload = &self.buf[self.start + header..self.start + header + len];
            match opcode {
                0..=2 => each(Frame::Data(payload)),
                8 => each(Frame::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                )),
                9 => each(Frame::Ping(payload.to_vec())),
                _ => {}
            }
            self.start += header + len;
        }
        Ok(n)
    }
}

/// (header length, payload length, opcode) of a complete frame at the start of `b`.
fn parse_header(b: &[u8]) -> Option<(usize, usize, u8)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let (header, len) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() >= 10 => (10, u64::from_be_bytes(b[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (b.len() >= header + len).then_some((header, len, opcode))
}
