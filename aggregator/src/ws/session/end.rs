//! How a session ends: the ways it closes, and how a failed read or write
//! ends it.

use std::time::Duration;

use super::Session;
use crate::ws::close;
use crate::ws::socket::ReadError;
use crate::ws::write::{CLOSE_WAIT, WriteError, write_buffer_limit};

/// How a session ends.
pub(super) enum End {
    /// The peer vanished.
    Gone,
    /// The peer sent a close frame: tungstenite has made the reply, which
    /// [`Socket::answer`] writes.
    PeerClosed,
    /// The server closes with this code and reason and waits (bounded) for
    /// the peer's close reply.
    Close(u16, &'static str),
    /// Like `Close`, but nothing queued is written first: a frame could not
    /// be written, and what follows it would reach the client with a gap.
    Fail(u16, &'static str),
    /// The peer is not keeping up: try to send the close frame for at most
    /// the given time (it may be stuck behind unread data), and go.
    Abandon(u16, &'static str, Duration),
}

/// A client still lagging after the grace period: 1013 with a retry hint.
/// The close frame waits behind what the client has not read yet, so it gets
/// a while to go through.
pub(super) const TOO_SLOW_END: End = End::Abandon(
    close::TRY_AGAIN_LATER,
    "too slow: fell behind past the grace period; reconnect and resume with since",
    CLOSE_WAIT,
);

/// The hub has stopped: the aggregator is shutting down.
pub(super) const SHUTTING_DOWN: End = End::Close(close::GOING_AWAY, "server shutting down");

impl Session {
    /// How a failed write ends the session: logged (the line names
    /// the connection and peer) and closed with 1011.
    pub(super) fn write_failed(&self, e: WriteError) -> End {
        match e {
            WriteError::TooBig { bytes } => {
                let limit = write_buffer_limit(&self.state.config);
                log!(
                    warn,
                    self,
                    bytes,
                    limit,
                    "frame larger than the write buffer limit cannot be written; closing with 1011"
                );
                End::Fail(
                    close::INTERNAL,
                    "a frame larger than the write buffer limit could not be written",
                )
            }
            WriteError::Socket(cause) => {
                log!(info, self, %cause, "write failed; closing with 1011");
                // Bounded like any close: a broken socket fails both the
                // close frame and the wait for its reply at once.
                End::Fail(close::INTERNAL, "write failed")
            }
        }
    }
}

/// How a failed read ends the session: a message over the limit with 1009,
/// text that is not UTF-8 with 1007, a frame breaking the protocol with
/// 1002 (each logged), a lost connection quietly.
pub(super) fn read_failed(session: &Session, e: ReadError) -> End {
    match e {
        ReadError::TooBig(cause) => {
            log!(info, session, %cause, "message over the size limit");
            End::Close(close::TOO_BIG, "message too big")
        }
        ReadError::NotUtf8(cause) => {
            log!(info, session, %cause, "text message that is not UTF-8");
            End::Fail(close::INVALID_DATA, "text message is not valid UTF-8")
        }
        ReadError::Protocol(cause) => {
            log!(info, session, %cause, "WebSocket protocol error");
            End::Fail(close::PROTOCOL, "protocol error")
        }
        ReadError::Gone => End::Gone,
    }
}
