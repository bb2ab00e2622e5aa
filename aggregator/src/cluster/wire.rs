//! What aggregators say to each other through NATS: subject names, headers,
//! and the forms of an update, a host in a presence announcement and a
//! catch-up answer's chunk (the chunked envelopes are in [`super::chunk`]).
//!
//! An update travels on `<prefix>.<topic>` (topics follow NATS subject rules,
//! so the mapping is one to one) with its already encoded JSON form as the
//! payload, its origin node and seq in headers. Nothing is re-encoded on
//! either side: the receiver checks that the JSON starts with the topic and
//! seq the subject and headers claim, and shares it as is.

use std::borrow::Cow;
use std::sync::Arc;

use async_nats::HeaderMap;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ingest::registry::HostView;
use crate::update::HostEvent;
use crate::update::Update;

/// Header naming the node that produced a message.
pub const NODE: &str = "Hostpulse-Node";
/// Header carrying an update's seq.
pub const SEQ: &str = "Hostpulse-Seq";
/// Header numbering a node's host updates: `<run> <n>`, its run (chosen at
/// start) and a count that rises by one per update it offers to the broker
/// (see [`super::gaps`]).
pub const LINK: &str = "Hostpulse-Link";

/// Where an update stands in its node's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The node's run: a new one each time it starts.
    pub run: u64,
    /// Updates the node offered to the broker in this run, this one included.
    pub n: u64,
}

/// The [`LINK`] an update carries (none from a node that does not number).
pub fn link_of(headers: Option<&HeaderMap>) -> Option<Link> {
    let v = headers?.get(LINK)?;
    let (run, n) = v.as_str().split_once(' ')?;
    Some(Link {
        run: run.parse().ok()?,
        n: n.parse().ok()?,
    })
}

/// Subject names under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `hostpulse`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Where `topic`'s updates are published.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    /// Every host update (what each aggregator consumes).
    pub fn all_hosts(&self) -> String {
        format!("{}.host.>", self.prefix)
    }

    /// The topic a subject carries, if it is one of ours.
    pub fn topic_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')
    }

    /// Where `node` announces its hosts.
    pub fn presence(&self, node: &str) -> String {
        format!("{}._cluster.presence.{node}", self.prefix)
    }

    /// Every node's presence.
    pub fn all_presence(&self) -> String {
        format!("{}._cluster.presence.*", self.prefix)
    }

    /// Where catch-up requests go (every node answers for its own hosts).
    pub fn catchup(&self) -> String {
        format!("{}._cluster.catchup", self.prefix)
    }
}

/// Why a message from the broker was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    /// The subject is not `<prefix>.<topic>`.
    #[error("subject {0:?} is not under the cluster prefix")]
    Subject(String),
    /// A header is missing or malformed.
    #[error("header {0} missing or malformed")]
    Header(&'static str),
    /// The payload is not the JSON update the subject and headers describe.
    #[error("payload is not the update for {topic} seq {seq}")]
    Payload {
        /// Topic from the subject.
        topic: String,
        /// Seq from the header.
        seq: u64,
    },
}

/// Headers for an update produced by `node`.
pub fn update_headers(node: &str, seq: u64, link: Link) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(NODE, node);
    h.insert(SEQ, seq.to_string());
    h.insert(LINK, format!("{} {}", link.run, link.n));
    h
}

/// The node a message says it came from.
pub fn node_of(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get(NODE).map(|v| v.as_str())
}

/// The JSON form as the payload (a reference-count bump).
pub fn payload(update: &Update) -> Bytes {
    Bytes::from(update.json.clone())
}

/// Rebuilds an update received on `topic` from `origin`.
pub fn decode_update(
    topic: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    origin: &Arc<str>,
) -> Result<Update, WireError> {
    let seq: u64 = headers
        .and_then(|h| h.get(SEQ))
        .and_then(|v| v.as_str().parse().ok())
        .ok_or(WireError::Header(SEQ))?;
    let bad = || WireError::Payload {
        topic: topic.to_string(),
        seq,
    };
    // Our envelope always starts with the topic and the seq, in that order.
    let expected = format!("{{\"topic\":\"{topic}\",\"seq\":{seq},");
    if !payload.starts_with(expected.as_bytes()) {
        return Err(bad());
    }
    // A copy: the payload is a slice of the client's shared read buffer,
    // and history would otherwise pin that whole buffer per update.
    let json = Utf8Bytes::try_from(Bytes::copy_from_slice(&payload)).map_err(|_| bad())?;
    Ok(Update::remote(topic.into(), seq, json, origin.clone()))
}

/// One host in a presence announcement.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceHost {
    /// Announced online (attached and not silent).
    pub online: bool,
    /// When its last batch was published (RFC 3339), if ever.
    pub last_seen: Option<String>,
    /// The agent's details, as on the `hosts` topic.
    pub agent: HostEvent,
}

impl From<HostView> for PresenceHost {
    fn from(v: HostView) -> Self {
        Self {
            online: v.online,
            last_seen: v.last_seen,
            agent: v.agent,
        }
    }
}

impl From<PresenceHost> for HostView {
    fn from(p: PresenceHost) -> Self {
        Self {
            host: p.agent.host.clone(),
            online: p.online,
            last_seen: p.last_seen,
            agent: p.agent,
        }
    }
}

/// Splits updates into payloads of newline-separated JSON updates, each at
/// most `max_bytes` (an update larger than that gets a payload of its own).
pub fn chunk(updates: &[std::sync::Arc<Update>], max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for u in updates {
        if !current.is_empty() && current.len() + u.json.len() + 1 > max_bytes {
            out.push(Bytes::from(std::mem::take(&mut current)));
        }
        current.extend_from_slice(u.json.as_bytes());
        current.push(b'\n');
    }
    if !current.is_empty() {
        out.push(Bytes::from(current));
    }
    out
}

/// The updates in one catch-up payload; lines that are not updates are skipped.
pub fn unchunk(payload: &Bytes, origin: &Arc<str>) -> Vec<Update> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        topic: Cow<'a, str>,
        seq: u64,
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < payload.len() {
        let end = payload[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(payload.len(), |p| start + p);
        let line = payload.slice(start..end);
        start = end + 1;
        let Ok(head) = serde_json::from_slice::<Head<'_>>(&line) else {
            continue;
        };
        if !head.topic.starts_with("host.") {
            continue;
        }
        let topic: Arc<str> = head.topic.as_ref().into();
        let seq = head.seq;
        // A copy, so history does not pin the whole answer chunk per line.
        if let Ok(json) = Utf8Bytes::try_from(Bytes::copy_from_slice(&line)) {
            out.push(Update::remote(topic, seq, json, origin.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{Payload, from_unix_ms};

    const LINK_1: Link = Link { run: 17, n: 3 };

    fn update(topic: &str, seq: u64) -> Arc<Update> {
        Arc::new(Update::new(
            topic.into(),
            seq,
            from_unix_ms(1),
            from_unix_ms(2),
            Payload::Other(serde_json::json!({"v": seq})),
        ))
    }

    #[test]
    fn an_update_survives_the_broker_unchanged() {
        let u = update("host.a.cpu", 42);
        let s = Subjects::new("hp.test");
        let subject = s.topic(&u.topic);
        assert_eq!(subject, "hp.test.host.a.cpu");
        let topic = s.topic_of(&subject).unwrap();
        let origin: Arc<str> = "n1".into();
        let headers = update_headers("n1", u.seq, LINK_1);
        assert_eq!(node_of(Some(&headers)), Some("n1"));
        assert_eq!(link_of(Some(&headers)), Some(LINK_1));
        let back = decode_update(topic, Some(&headers), payload(&u), &origin).unwrap();
        assert_eq!(back.json, u.json);
        assert_eq!((back.seq, &*back.topic), (42, "host.a.cpu"));
        assert_eq!(back.origin.as_deref(), Some("n1"));
    }

    #[test]
    fn a_payload_that_disagrees_with_its_subject_is_refused() {
        let u = update("host.a.cpu", 42);
        let origin: Arc<str> = "n1".into();
        let e = decode_update(
            "host.b.cpu",
            Some(&update_headers("n1", 42, LINK_1)),
            payload(&u),
            &origin,
        )
        .unwrap_err();
        assert!(matches!(e, WireError::Payload { .. }));
        let e = decode_update(
            "host.a.cpu",
            Some(&update_headers("n1", 41, LINK_1)),
            payload(&u),
            &origin,
        )
        .unwrap_err();
        assert!(matches!(e, WireError::Payload { .. }));
        let e = decode_update("host.a.cpu", None, payload(&u), &origin).unwrap_err();
        assert_eq!(e, WireError::Header(SEQ));
    }

    #[test]
    fn catchup_chunks_round_trip_within_their_bound() {
        let updates: Vec<_> = (1..=50).map(|i| update("host.a.load", i)).collect();
        let chunks = chunk(&updates, 500);
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|c| c.len() <= 500));
        let origin: Arc<str> = "n2".into();
        let back: Vec<u64> = chunks
            .iter()
            .flat_map(|c| unchunk(c, &origin))
            .map(|u| u.seq)
            .collect();
        assert_eq!(back, (1..=50).collect::<Vec<_>>());
    }
}
