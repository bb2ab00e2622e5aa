//! The benchmark's WebSocket subscriber, in two kinds behind one interface:
//! the lean raw reader ([`crate::rawws`]: many frames per read, no allocation
//! per message) and a standard client library (tokio-tungstenite with its
//! default settings: one allocated message per frame, pings answered by the
//! library), as real clients are. `--client raw,tungstenite` runs the same
//! scenario with each, so what the client costs is measured beside what the
//! server costs.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Which client the subscribers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClientKind {
    /// The lean raw reader (handshake by tungstenite, then frames parsed
    /// straight from a 64 KiB buffer).
    Raw,
    /// tokio-tungstenite with its default settings.
    Tungstenite,
    /// The raw reader, thinned for runs where the client must cost little:
    /// each frame is counted as one update, and only one frame in
    /// [`THIN_SAMPLE`] is read for its sample time (unbatched scenarios).
    Thin,
}

/// One frame in this many is timed by a [`ClientKind::Thin`] subscriber.
pub(crate) const THIN_SAMPLE: u64 = 64;

impl ClientKind {
    /// Its name in labels and figures.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ClientKind::Raw => "raw",
            ClientKind::Tungstenite => "tungstenite",
            ClientKind::Thin => "thin",
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ended {
    /// The server sent a close frame, with this code if any.
    Closed(Option<u16>),
    /// The stream ended without a close frame.
    Eof,
    /// A read or write failed.
    Error,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(Some(code)) => write!(f, "closed {code}"),
            Ended::Closed(None) => write!(f, "closed"),
            Ended::Eof => write!(f, "eof"),
            Ended::Error => write!(f, "error"),
        }
    }
}

enum Inner {
    /// The raw reader, with the pings it still has to answer.
    Raw {
        tcp: TcpStream,
        reader: crate::rawws::Reader,
        pongs: Vec<Vec<u8>>,
    },
    /// tokio-tungstenite.
    Tungstenite(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

/// One open WebSocket connection of either kind.
pub(crate) struct Conn {
    inner: Inner,
    /// How it ended, once it has.
    pub(crate) ended: Option<Ended>,
}

impl Conn {
    /// Connects to `url` (ws://host:port/path?query).
    pub(crate) async fn connect(url: &str, kind: ClientKind) -> anyhow::Result<Self> {
        let inner = match kind {
            ClientKind::Raw | ClientKind::Thin => Inner::Raw {
                tcp: crate::rawws::connect(url).await?,
                reader: crate::rawws::Reader::new(),
                pongs: Vec::new(),
            },
            ClientKind::Tungstenite => {
                let (socket, _) = tokio_tungstenite::connect_async(url).await?;
                Inner::Tungstenite(Box::new(socket))
            }
        };
        Ok(Self { inner, ended: None })
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        let sent: anyhow::Result<()> = match &mut self.inner {
            Inner::Raw { tcp, .. } => crate::rawws::send(tcp, 1, text.as_bytes())
                .await
                .map_err(Into::into),
            Inner::Tungstenite(ws) => ws.send(Message::text(text)).await.map_err(Into::into),
        };
        if sent.is_err() {
            self.ended = Some(Ended::Error);
        }
        sent
    }

    /// Waits for data, then calls `each` for every data frame that arrived
    /// (one read: several frames for the raw reader, one message for
    /// tungstenite). `Ok(false)` once the server closed or the stream ended;
    /// `ended` then says how.
    pub(crate) async fn read(&mut self, each: impl FnMut(&[u8])) -> anyhow::Result<bool> {
        let read = self.read_inner(each).await;
        if read.is_err() {
            self.ended = Some(Ended::Error);
        }
        read.map(|_| self.ended.is_none())
    }

    async fn read_inner(&mut self, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
        let ended = &mut self.ended;
        match &mut self.inner {
            Inner::Raw { tcp, reader, pongs } => {
                // Pings read last time are answered first: a caller may
                // cancel this future (a timeout) once frames were handed over.
                while let Some(p) = pongs.first() {
                    crate::rawws::send(tcp, 10, p).await?;
                    pongs.remove(0);
                }
                let n = reader
                    .read(tcp, |frame| match frame {
                        crate::rawws::Frame::Data(data) => each(data),
                        crate::rawws::Frame::Ping(p) => pongs.push(p),
                        crate::rawws::Frame::Close(code) => *ended = Some(Ended::Closed(code)),
                    })
                    .await?;
                if n == 0 && ended.is_none() {
                    *ended = Some(Ended::Eof);
                }
                Ok(())
            }
            Inner::Tungstenite(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        each(t.as_bytes());
                        return Ok(());
                    }
                    Some(Ok(Message::Binary(b))) => {
                        each(&b);
                        return Ok(());
                    }
                    // Pings are answered by the library on its next read or write.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        *ended = Some(Ended::Closed(frame.map(|f| u16::from(f.code))));
                        return Ok(());
                    }
                    None => {
                        *ended = Some(Ended::Eof);
                        return Ok(());
                    }
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }
}
