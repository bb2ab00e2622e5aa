//! Putting frames on a connection's socket: buffer sizes and the write
//! buffer limit, why a write failed, heavy frames compressed on the blocking
//! pool (in order), and the close handshake.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};

use crate::ws::{WsConfig, frames};

/// Read buffer per connection: requests are small (a larger one is read in
/// more calls), and tungstenite keeps this buffer resident (zero-filled) for
/// every connection, idle or not.
pub(super) const READ_BUFFER: usize = 512;
/// Write buffer: frames are gathered up to this size before a write.
pub(super) const WRITE_BUFFER: usize = 4 << 10;
/// Wait for the peer's close reply at most this long.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Most bytes tungstenite may hold unwritten for one connection: room for
/// any split batch frame, a full queue or a client-sized message, twice. A
/// frame larger than this cannot be written and closes its connection (1011).
pub fn write_buffer_limit(config: &WsConfig) -> usize {
    WRITE_BUFFER
        + config
            .queue_max_bytes
            .max(config.max_message_bytes)
            .max(config.max_frame_bytes)
            * 2
}

/// Why a write failed.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The frame is larger than the connection's write buffer limit.
    TooBig {
        /// Its size, bytes.
        bytes: usize,
    },
    /// The socket failed (or compression on the blocking pool did).
    Socket(String),
}

impl From<axum::Error> for WriteError {
    fn from(e: axum::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(tungstenite::Error::WriteBufferFull(message)) =
                s.downcast_ref::<tungstenite::Error>()
            {
                return WriteError::TooBig {
                    bytes: message.len(),
                };
            }
            source = s.source();
        }
        WriteError::Socket(e.to_string())
    }
}

/// The frame's message, compressing it on the blocking pool when that is
/// heavy work (awaited here, so frames still go out in order).
pub(super) async fn finish(frame: frames::Frame) -> Result<Message, WriteError> {
    if !frame.heavy() {
        return Ok(frame.finish());
    }
    tokio::task::spawn_blocking(move || frame.finish())
        .await
        .map_err(|e| WriteError::Socket(format!("compression task failed: {e}")))
}

pub(super) fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        source = s.source();
    }
    false
}

/// Sends a close frame and waits up to `reply_wait` for the peer's reply, so
/// the close is actually written before the socket is dropped.
pub(super) async fn close_politely(
    socket: &mut WebSocket,
    code: u16,
    reason: &'static str,
    reply_wait: Duration,
) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if tokio::time::timeout(reply_wait, socket.send(Message::Close(Some(frame))))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(reply_wait, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}
