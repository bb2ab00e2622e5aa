//! Wire encodings a WebSocket client may choose, and the shared deflater.
//!
//! | name | frames | chosen by |
//! | --- | --- | --- |
//! | `json` (default) | text, one JSON object per update | `?encoding=json` or subprotocol `hostpulse.v1.json` |
//! | `msgpack` | binary, one MessagePack map per update, same fields as JSON | `?encoding=msgpack` or `hostpulse.v1.msgpack` |
//! | `msgpack+deflate` | binary, the MessagePack frame compressed with raw deflate (RFC 1951), each frame on its own | `?encoding=msgpack+deflate` or `hostpulse.v1.msgpack-deflate` |
//!
//! A single update is encoded once per encoding and the bytes are shared by
//! every subscriber; only batch frames (`batch.update`), whose contents differ
//! per client, are assembled per connection, by splicing the pre-encoded
//! updates rather than re-encoding them.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

/// A client's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON text frames.
    #[default]
    Json,
    /// MessagePack binary frames.
    MsgPack,
    /// Deflated MessagePack binary frames.
    MsgPackDeflate,
}

/// WebSocket subprotocols offered, in order of the server's preference.
pub const SUBPROTOCOLS: [&str; 3] = [
    "hostpulse.v1.json",
    "hostpulse.v1.msgpack",
    "hostpulse.v1.msgpack-deflate",
];

impl Encoding {
    /// From a query parameter value.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "msgpack" => Some(Self::MsgPack),
            "msgpack+deflate" | "msgpack-deflate" => Some(Self::MsgPackDeflate),
            _ => None,
        }
    }

    /// From a negotiated subprotocol.
    pub fn from_subprotocol(protocol: &str) -> Option<Self> {
        match protocol {
            "hostpulse.v1.json" => Some(Self::Json),
            "hostpulse.v1.msgpack" => Some(Self::MsgPack),
            "hostpulse.v1.msgpack-deflate" => Some(Self::MsgPackDeflate),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MsgPack => "msgpack",
            Self::MsgPackDeflate => "msgpack+deflate",
        }
    }
}

/// Level of `msgpack+deflate` frames. Not 1: with the zlib-rs backend, level
/// 1 is zlib-ng's quick strategy, fixed Huffman codes only, which grows
/// incompressible data by about 6 %, past a frame's budget
/// ([`crate::ws::frames::deflate_budget`]); level 2 falls back to stored
/// blocks as zlib does.
const FRAME_LEVEL: u32 = 2;

thread_local! {
    /// One compressor per thread and level, reset between uses: creating one
    /// allocates and zeroes its tables, which costs more than compressing a
    /// typical update or history block.
    static DEFLATE: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// Compresses `data` as one self-contained raw deflate stream, at the level
/// of `msgpack+deflate` frames.
pub fn deflate(data: &[u8]) -> Bytes {
    Bytes::from(deflate_at(data, FRAME_LEVEL))
}

/// Compresses `data` as one self-contained raw deflate stream at `level`
/// (0..=9), with this thread's compressor for that level.
pub fn deflate_at(data: &[u8], level: u32) -> Vec<u8> {
    DEFLATE.with_borrow_mut(|all| {
        let i = match all.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                all.push((level, Compress::new(Compression::new(level), false)));
                all.len() - 1
            }
        };
        let c = &mut all[i].1;
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let status = c
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
                .expect("deflate into a growing buffer");
            match status {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn deflate_round_trips_and_the_compressor_is_reusable() {
        for text in ["", "hello hello hello hello", &"x".repeat(100_000)] {
            let packed = deflate(text.as_bytes());
            let mut back = String::new();
            flate2::read::DeflateDecoder::new(&packed[..])
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn names_and_subprotocols_agree() {
        for e in [Encoding::Json, Encoding::MsgPack, Encoding::MsgPackDeflate] {
            assert_eq!(Encoding::from_name(e.name()), Some(e));
        }
        for p in SUBPROTOCOLS {
            assert!(Encoding::from_subprotocol(p).is_some());
        }
        assert_eq!(Encoding::from_name("xml"), None);
    }
}
