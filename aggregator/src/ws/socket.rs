//! One connection's socket: tungstenite reads it, and the server writes
//! data frames to it directly.
//!
//! Reading is tungstenite's (`tokio-tungstenite` over the upgraded
//! connection): it checks every client frame (masked, opcodes, reserved
//! bits, fragments with pings between them, UTF-8 of text, size limits) and
//! answers pings and the client's Close. What it writes (pongs, pings, close
//! frames) goes into a small buffer, [`Duplex::control`], which the session
//! puts on the wire between whole data frames, so tungstenite's state (a
//! Close sent or answered) stays true.
//!
//! Data frames bypass it: an update is framed once for all its subscribers
//! (see [`crate::update::Update::framed`]) and a batch is spliced from
//! shared pieces (see [`crate::ws::frames`]), so a connection writes shared
//! bytes with vectored writes (`writev`), copying nothing. Nothing is
//! buffered while nothing is pending: an idle connection holds only
//! tungstenite's small read buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::Message;

/// Most segments given to one `writev` (the kernel takes up to 1,024): the
/// slices are made on the stack at each attempt, not kept.
const MAX_IOV: usize = 64;

/// The upgraded connection as tungstenite sees it: reads go to the socket,
/// writes (control frames only) into [`Duplex::control`].
pub struct Duplex {
    io: TokioIo<Upgraded>,
    /// Control frames written by tungstenite, not yet on the wire. Empty
    /// (no allocation) almost always.
    control: Vec<u8>,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.control.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the session drops it, after its close
        // frame is written.
        Poll::Ready(Ok(()))
    }
}

/// Why the socket could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// A message over `ws.max_message_bytes` (close with 1009).
    TooBig(String),
    /// Text that is not UTF-8 (close with 1007).
    NotUtf8(String),
    /// A frame breaking RFC 6455: unmasked, a bad opcode or reserved bit, a
    /// control frame fragmented or too long (close with 1002).
    Protocol(String),
    /// The connection failed or ended.
    Gone,
}

impl From<tungstenite::Error> for ReadError {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::Error as E;
        match e {
            E::Capacity(c) => ReadError::TooBig(c.to_string()),
            E::Utf8(why) => ReadError::NotUtf8(why),
            E::Protocol(p) => ReadError::Protocol(p.to_string()),
            _ => ReadError::Gone,
        }
    }
}

/// A connection's socket.
pub struct Socket {
    ws: WebSocketStream<Duplex>,
    /// Bytes not yet on the wire.
    out: Outgoing,
}

impl Socket {
    /// The socket of an upgraded connection; messages over `max_message`
    /// bytes are refused as they arrive.
    pub async fn new(upgraded: Upgraded, read_buffer: usize, max_message: usize) -> Self {
        let mut config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        // tungstenite writes control frames only, straight through to
        // `Duplex::control`.
        config.write_buffer_size = 0;
        let duplex = Duplex {
            io: TokioIo::new(upgraded),
            control: Vec::new(),
        };
        Self {
            ws: WebSocketStream::from_raw_socket(duplex, Role::Server, Some(config)).await,
            out: Outgoing::default(),
        }
    }

    /// The client's next message: `None` when the connection has ended.
    /// Pings and the client's Close are answered by tungstenite (see
    /// [`Socket::answer`]).
    pub async fn recv(&mut self) -> Option<Result<Message, ReadError>> {
        match self.ws.next().await? {
            Ok(m) => Some(Ok(m)),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => None,
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Writes the answer tungstenite has made to a ping or to the client's
    /// Close (it makes them as it reads, and hands them over on a flush).
    pub async fn answer(&mut self) -> io::Result<()> {
        if let Err(e) = self.ws.flush().await {
            return Err(io::Error::other(e.to_string()));
        }
        self.drive().await
    }

    /// Sends a control message (a ping, a close frame) through tungstenite,
    /// so its state follows, and writes it after what is pending.
    pub async fn send_control(&mut self, message: Message) -> io::Result<()> {
        if let Err(e) = self.ws.send(message).await {
            return Err(io::Error::other(e.to_string()));
        }
        self.drive().await
    }

    /// Writes `frames` (whole frames, each as one or more segments) after
    /// what is pending, with vectored writes.
    ///
    /// Cancel-safe: a write cut short (a deadline, the connection given up)
    /// keeps the rest, so what is written next (a close frame) never lands
    /// inside a frame.
    pub async fn write_frames(&mut self, frames: Vec<Bytes>) -> io::Result<()> {
        self.take_control();
        self.out.extend(frames);
        self.drive().await
    }

    /// Moves the control frames tungstenite has made behind what is pending.
    fn take_control(&mut self) {
        let control = &mut self.ws.get_mut().control;
        if !control.is_empty() {
            self.out.extend([Bytes::from(std::mem::take(control))]);
        }
    }

    async fn drive(&mut self) -> io::Result<()> {
        self.take_control();
        let io = &mut self.ws.get_mut().io;
        self.out.write_to(io).await
    }
}

/// Segments waiting to be written, and how far the first has gone.
#[derive(Debug, Default)]
struct Outgoing {
    segments: Vec<Bytes>,
    /// First segment not wholly written.
    next: usize,
    /// Bytes of it already written.
    partial: usize,
}

impl Outgoing {
    fn extend(&mut self, more: impl IntoIterator<Item = Bytes>) {
        if self.segments.is_empty() {
            // Nothing held while idle: this write's own Vec is kept only
            // until it is written.
            self.segments = more.into_iter().collect();
        } else {
            self.segments.extend(more);
        }
    }

    /// Writes every segment, in order, and flushes. Each step is recorded
    /// as it completes, so a cancelled call leaves the rest for the next.
    /// Segments are gathered into one buffer first when the socket has no
    /// vectored write (TLS may not).
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        if !io.is_write_vectored() && self.segments.len() - self.next > 1 {
            let rest = &self.segments[self.next..];
            let mut all = Vec::with_capacity(rest.iter().map(Bytes::len).sum());
            all.extend_from_slice(&rest[0][self.partial..]);
            for s in &rest[1..] {
                all.extend_from_slice(s);
            }
            self.segments = vec![Bytes::from(all)];
            self.next = 0;
            self.partial = 0;
        }
        while self.next < self.segments.len() {
            // The slices live only during each attempt (nothing allocated,
            // nothing held while the socket is not ready); one segment (the
            // usual update) is a plain `write`.
            let mut written = std::future::poll_fn(|cx| {
                let rest = &self.segments[self.next..];
                let first = &rest[0][self.partial..];
                if rest.len() == 1 {
                    return Pin::new(&mut *io).poll_write(cx, first);
                }
                let n = rest.len().min(MAX_IOV);
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                slices[0] = IoSlice::new(first);
                for (slice, s) in slices[1..n].iter_mut().zip(&rest[1..n]) {
                    *slice = IoSlice::new(s);
                }
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while self.next < self.segments.len() {
                let left = self.segments[self.next].len() - self.partial;
                if written < left {
                    self.partial += written;
                    break;
                }
                written -= left;
                self.next += 1;
                self.partial = 0;
            }
        }
        *self = Self::default();
        io.flush().await
    }
}

/// Concatenates segments (tests).
#[cfg(test)]
pub fn concat(segments: &[Bytes]) -> Vec<u8> {
    let mut all = Vec::new();
    for s in segments {
        all.extend_from_slice(s);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer taking at most `step` bytes per call, vectored.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        /// Every other call is not ready (when set).
        stall: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.stall && self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_resume_where_they_stopped() {
        let segments: Vec<Bytes> = (0..600u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 7) as usize + 1]))
            .collect();
        let expected = concat(&segments);
        for step in [1, 3, 64, 1000, usize::MAX] {
            let mut w = Trickle {
                out: Vec::new(),
                step: step.min(expected.len() + 1),
                stall: false,
                calls: 0,
            };
            let mut out = Outgoing::default();
            out.extend(segments.iter().cloned());
            out.write_to(&mut w).await.unwrap();
            assert!(out.segments.is_empty() && out.segments.capacity() == 0);
            assert_eq!(w.out, expected, "step {step}");
        }
    }

    #[test]
    fn a_write_cancelled_at_any_point_goes_on_where_it_stopped() {
        use futures_util::FutureExt;
        let segments: Vec<Bytes> = (0..300u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 13) as usize + 1]))
            .collect();
        let expected = concat(&segments);
        let mut w = Trickle {
            out: Vec::new(),
            step: 5,
            stall: true,
            calls: 0,
        };
        let mut out = Outgoing::default();
        out.extend(segments.iter().cloned());
        let mut polls = 0;
        // Each call is polled once and dropped: cancelled after one step.
        while out.write_to(&mut w).now_or_never().is_none() {
            polls += 1;
            assert!(polls < 10_000);
        }
        assert!(polls > 100, "the write was cut short {polls} times");
        assert_eq!(w.out, expected);
    }
}
