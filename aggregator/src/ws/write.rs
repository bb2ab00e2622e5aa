//! Putting frames on a connection's socket: buffer sizes and the write
//! buffer limit, why a write failed, heavy frames compressed on the blocking
//! pool (in order), and the close handshake.

use std::time::Duration;

use bytes::Bytes;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use crate::ws::socket::Socket;
use crate::ws::{WsConfig, frames};

/// Read buffer per connection: requests are small (a larger one is read in
/// more calls), and tungstenite keeps this buffer resident (zero-filled) for
/// every connection, idle or not.
pub(super) const READ_BUFFER: usize = 256;
/// Wait for the peer's close reply at most this long.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Most bytes of one frame the server writes to a connection: room for any
/// split batch frame, a full queue or a client-sized message, twice. A frame
/// larger than this (one huge update) is not written and closes its
/// connection (1011).
pub fn write_buffer_limit(config: &WsConfig) -> usize {
    4096 + config
        .queue_max_bytes
        .max(config.max_message_bytes)
        .max(config.max_frame_bytes)
        * 2
}

/// Why a write failed.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The frame is larger than the connection's write limit.
    TooBig {
        /// Its size, bytes.
        bytes: usize,
    },
    /// The socket failed (or compression on the blocking pool did).
    Socket(String),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Socket(e.to_string())
    }
}

/// Appends the frame's segments to `out`, compressing it on the blocking pool
/// when that is heavy work (awaited here, so frames still go out in order);
/// refuses a frame over `limit` bytes.
pub(super) async fn finish(
    frame: frames::Frame,
    out: &mut Vec<Bytes>,
    limit: usize,
) -> Result<(), WriteError> {
    let mark = out.len();
    let len = if frame.heavy() {
        let (len, segments) = tokio::task::spawn_blocking(move || {
            let mut segments = Vec::new();
            (frame.finish(&mut segments), segments)
        })
        .await
        .map_err(|e| WriteError::Socket(format!("compression task failed: {e}")))?;
        out.extend(segments);
        len
    } else {
        frame.finish(out)
    };
    if len > limit {
        out.truncate(mark);
        return Err(WriteError::TooBig { bytes: len });
    }
    Ok(())
}

/// Sends a close frame and waits up to `reply_wait` for the peer's reply, so
/// the close is actually written before the socket is dropped.
pub(super) async fn close_politely(
    socket: &mut Socket,
    code: u16,
    reason: &'static str,
    reply_wait: Duration,
) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    if !matches!(
        tokio::time::timeout(reply_wait, socket.send_control(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = tokio::time::timeout(reply_wait, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}
