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
}

impl ClientKind {
    /// Its name in labels and figures.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ClientKind::Raw => "raw",
            ClientKind::Tungstenite => "tungstenite",
        }
    }
}

/// One open WebSocket connection of either kind.
pub(crate) enum Conn {
    /// The raw reader, with the pings it still has to answer.
    Raw {
        tcp: TcpStream,
        reader: crate::rawws::Reader,
        pongs: Vec<Vec<u8>>,
    },
    /// tokio-tungstenite.
    Tungstenite(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

impl Conn {
    /// Connects to `url` (ws://host:port/path?query).
    pub(crate) async fn connect(url: &str, kind: ClientKind) -> anyhow::Result<Self> {
        Ok(match kind {
            ClientKind::Raw => Conn::Raw {
                tcp: crate::rawws::connect(url).await?,
                reader: crate::rawws::Reader::new(),
                pongs: Vec::new(),
            },
            ClientKind::Tungstenite => {
                let (socket, _) = tokio_tungstenite::connect_async(url).await?;
                Conn::Tungstenite(Box::new(socket))
            }
        })
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        match self {
            Conn::Raw { tcp, .. } => crate::rawws::send(tcp, 1, text.as_bytes()).await?,
            Conn::Tungstenite(ws) => ws.send(Message::text(text)).await?,
        }
        Ok(())
    }

    /// Waits for data, then calls `each` for every data frame that arrived
    /// (one read: several frames for the raw reader, one message for
    /// tungstenite). `Ok(false)` once the server closed or the stream ended.
    pub(crate) async fn read(&mut self, mut each: impl FnMut(&[u8])) -> anyhow::Result<bool> {
        match self {
            Conn::Raw { tcp, reader, pongs } => {
                // Pings read last time are answered first: a caller may
                // cancel this future (a timeout) once frames were handed over.
                while let Some(p) = pongs.first() {
                    crate::rawws::send(tcp, 10, p).await?;
                    pongs.remove(0);
                }
                let mut closed = false;
                let n = reader
                    .read(tcp, |frame| match frame {
                        crate::rawws::Frame::Data(data) => each(data),
                        crate::rawws::Frame::Ping(p) => pongs.push(p),
                        crate::rawws::Frame::Close => closed = true,
                    })
                    .await?;
                Ok(n > 0 && !closed)
            }
            Conn::Tungstenite(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        each(t.as_bytes());
                        return Ok(true);
                    }
                    Some(Ok(Message::Binary(b))) => {
                        each(&b);
                        return Ok(true);
                    }
                    // Pings are answered by the library on its next read or write.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return Ok(false),
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }
}
