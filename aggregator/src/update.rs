//! Topic updates and their wire form, encoded once and shared.
//!
//! An [`Update`] is built once from a sample (or an event) and encoded to JSON
//! once; every subscriber and the history hold the same `Arc<Update>`, and a
//! socket write clones the encoded [`Utf8Bytes`] (a reference-count bump).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

/// One update of one topic.
#[derive(Debug)]
pub struct Update {
    /// Concrete topic (no wildcards).
    pub topic: Arc<str>,
    /// Position in the topic: rises by one per update within a source's run.
    pub seq: u64,
    /// The JSON text frame, encoded once.
    pub json: Utf8Bytes,
}

impl Update {
    /// Builds and encodes an update.
    ///
    /// `taken` is when the data was observed (the sample time on the host),
    /// `received` when the aggregator got it; both go on the wire so a viewer
    /// can show how fresh it is.
    pub fn new<P: Serialize>(
        topic: Arc<str>,
        seq: u64,
        taken: SystemTime,
        received: SystemTime,
        payload: &P,
    ) -> Self {
        #[derive(Serialize)]
        struct Envelope<'a, P> {
            topic: &'a str,
            seq: u64,
            timestamp: String,
            received: String,
            payload: &'a P,
        }
        let json = serde_json::to_string(&Envelope {
            topic: &topic,
            seq,
            timestamp: rfc3339(taken),
            received: rfc3339(received),
            payload,
        })
        .expect("update payloads serialise");
        Self {
            topic,
            seq,
            json: json.into(),
        }
    }

    /// Bytes this update holds (for queue and history bounds).
    pub fn size(&self) -> usize {
        self.json.len() + self.topic.len() + std::mem::size_of::<Self>()
    }
}

/// A `$sys.*` message: replies and notices, with no seq.
pub fn sys_message<P: Serialize>(topic: &str, payload: &P) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Sys<'a, P> {
        topic: &'a str,
        timestamp: String,
        payload: &'a P,
    }
    serde_json::to_string(&Sys {
        topic,
        timestamp: rfc3339(SystemTime::now()),
        payload,
    })
    .expect("system payloads serialise")
    .into()
}

/// RFC 3339 with milliseconds, UTC: `2026-11-28T12:34:56.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Unix milliseconds (as sent by agents) to a `SystemTime`.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_documented_shape() {
        let u = Update::new(
            "host.a.cpu".into(),
            7,
            from_unix_ms(1_795_000_000_123),
            from_unix_ms(1_795_000_000_200),
            &serde_json::json!({"total_pct": 1.5}),
        );
        let v: serde_json::Value = serde_json::from_str(&u.json).unwrap();
        assert_eq!(v["topic"], "host.a.cpu");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["timestamp"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v["received"], "2026-11-18T11:06:40.200Z");
        assert_eq!(v["payload"]["total_pct"], 1.5);
    }
}
