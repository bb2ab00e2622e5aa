//! `/ws`: the WebSocket upgrade and one task per connection.
//!
//! Each connection is one task that `select!`s (biased) between its outbox
//! and the socket; its heartbeat and the server's shutdown reach it through
//! its outbox. At each wake-up of its outbox it
//! drains everything due and writes it with one flush (or one `batch.update`
//! frame when the client asked for a batching window), so many updates share
//! one system call. Connections own no timers: batching windows, throttles,
//! write deadlines and heartbeats run from a few server-wide tasks
//! ([`ticks`]). Buffers are sized for thousands of mostly
//! idle connections (tungstenite's 128 KiB defaults would cost that much per
//! connection).
//!
//! Writing: frames are made once and written many times. An update is
//! framed once per encoding (header and payload) and every subscriber writes
//! those shared bytes; a batch frame is spliced from the updates' shared
//! encoded bytes behind a few header bytes of its own, and built once for
//! all the connections that drained the same updates under the same window
//! tick ([`shared`]; windows close together on the shared wheel); a
//! connection hands them to the socket with vectored writes, copying
//! nothing, and holds no write buffer while nothing is pending ([`socket`]). Reading (masking,
//! fragments, control frames, UTF-8, size limits) and the answers to pings
//! and to a client's Close are tungstenite's. Batch frames are split at
//! `ws.max_frame_bytes` (see [`frames`]); frames needing more than
//! [`frames::DEFLATE_INLINE_MAX`] bytes of deflate are compressed on tokio's
//! blocking pool (`spawn_blocking`, awaited before the next frame, so order
//! is kept). A frame that cannot be written (larger than the write limit, or
//! a socket error) closes the connection with 1011 and a log line naming the
//! connection and the reason; a client frame breaking RFC 6455 closes it
//! with 1002, text that is not UTF-8 with 1007, a message over
//! `ws.max_message_bytes` with 1009.
//!
//! Connect-time options, as query parameters: `encoding` (`json`, `msgpack`,
//! `msgpack+deflate`; or the subprotocols in [`crate::ws::encoding::SUBPROTOCOLS`])
//! and `batch_ms` (0 = a frame per update; otherwise updates are gathered for
//! up to that long and sent as one `batch.update` frame).
//!
//! Files: `upgrade.rs` admits and upgrades a connection (`handshake.rs`:
//! the opening handshake), `session.rs` is its
//! task (the loop above), with the requests a client sends in
//! `session/requests.rs`; `write.rs` finishes frames and closes politely, [`socket`] reads
//! the client and writes frames; [`outbox`] is
//! the connection's queue (the hub pushes into it), [`ticks`] the shared
//! clocks that wake it, [`frames`] and
//! [`encoding`] its wire forms, [`shared`] the batch frames a subscription
//! group shares, [`protocol`] the client messages, [`replay`]
//! history served at the socket's pace, and `config.rs` the `[ws]` section.

mod config;
pub mod encoding;
pub mod frames;
mod handshake;
pub mod outbox;
pub mod protocol;
pub mod replay;
mod session;
pub mod shared;
pub mod socket;
pub mod ticks;
mod upgrade;
mod write;

pub use config::{MAX_FRAME_BYTES, MIN_FRAME_BYTES, WsConfig};
pub use upgrade::{ConnectOptions, WsState, handler};
pub use write::write_buffer_limit;

/// Close codes used by the server.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke RFC 6455 (unmasked, a reserved bit or opcode, a bad
    /// control frame).
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Heartbeat lost.
    pub const POLICY: u16 = 1008;
    /// A message larger than allowed.
    pub const TOO_BIG: u16 = 1009;
    /// The server could not write a frame to this connection (larger than
    /// its write buffer limit, or a socket error); reconnect and resume with
    /// `since`.
    pub const INTERNAL: u16 = 1011;
    /// Client too slow: reconnect later and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Control messages refused for rate after which a connection is closed (1008).
pub const FLOOD_CLOSE: u64 = 1000;

/// Longest batching window a client may ask for.
pub const MAX_BATCH_MS: u64 = 10_000;
