//! Topic updates and `$sys` messages, and their wire forms.
//!
//! An [`Update`] is built once from a sample (or an event). Its JSON form is
//! encoded at once (nearly every subscriber wants it), after room for a
//! WebSocket frame header, so its text frame is the same bytes; the
//! MessagePack form is transcoded from it on first use (framed the same
//! way), and the deflated form compressed from that. Every subscriber and the history hold the same
//! `Arc<Update>`, so each form is encoded once however many clients receive
//! it, and sending it is a reference-count bump.
//!
//! [`HostEvent`] is the `hosts` topic's payload; the registry produces it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use hostpulse_proto::{
    Cpu, Disk, Filesystems, Load, Memory, Network, Processes, SystemInfo, Temperatures,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ws::encoding::{Encoding, deflate};
use crate::ws::frames::{BINARY, FRAME_ROOM, TEXT, frame_in_place};

/// An event on the `hosts` topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEvent {
    /// `online`, `restarted` (a new run epoch), `offline` or `forgotten`
    /// (departed for `hub.forget_after`: its topics and history are gone).
    pub event: Cow<'static, str>,
    /// Topic segment.
    pub host: String,
    /// Agent id.
    pub agent_id: String,
    /// Host name as reported.
    pub hostname: String,
    /// Agent run epoch (Unix ms at its start).
    pub epoch: u64,
    /// Agent version.
    pub version: String,
    /// Agent labels.
    pub labels: BTreeMap<String, String>,
    /// Sampling interval.
    pub interval_ms: u32,
    /// Cluster mode: the node name of the aggregator the agent is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<String>,
}

impl HostEvent {
    /// The `forgotten` event of a host known only by its topics (a peer's
    /// host this aggregator never saw announced).
    pub fn forgotten(host: &str) -> Self {
        Self {
            event: "forgotten".into(),
            host: host.into(),
            agent_id: String::new(),
            hostname: host.into(),
            epoch: 0,
            version: String::new(),
            labels: BTreeMap::new(),
            interval_ms: 0,
            aggregator: None,
        }
    }
}

/// Turns an event into an update of the `hosts` topic, for the hub to number
/// (`Command::PublishNext`).
pub fn hosts_update(event: &HostEvent) -> Unnumbered {
    Unnumbered {
        topic: "hosts".into(),
        at: SystemTime::now(),
        payload: Payload::Host(event.clone()),
    }
}

/// What an update carries.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Payload {
    /// `host.<h>.cpu`
    Cpu(Cpu),
    /// `host.<h>.memory`
    Memory(Memory),
    /// `host.<h>.load`
    Load(Load),
    /// `host.<h>.processes`
    Processes(Processes),
    /// `host.<h>.network`
    Network(Network),
    /// `host.<h>.disk`
    Disk(Disk),
    /// `host.<h>.filesystems`
    Filesystems(Filesystems),
    /// `host.<h>.system`
    System(SystemInfo),
    /// `host.<h>.temperatures`
    Temperatures(Temperatures),
    /// `hosts`
    Host(HostEvent),
    /// Anything else (tests, `$sys` statistics).
    Other(Value),
}

#[derive(Serialize)]
struct Envelope<'a> {
    topic: &'a str,
    seq: u64,
    timestamp: &'a str,
    received: &'a str,
    payload: &'a Payload,
}

/// One update of one topic.
#[derive(Debug)]
pub struct Update {
    /// Concrete topic (no wildcards).
    pub topic: Arc<str>,
    /// Position in the topic: rises by one per update within a source's run.
    pub seq: u64,
    /// The JSON text frame.
    pub json: Utf8Bytes,
    /// The cluster node it came from, when another aggregator produced it
    /// (`None`: produced here, from this aggregator's own agents). Only
    /// updates produced here are published to the broker.
    pub origin: Option<Arc<str>>,
    /// The JSON text frame, when the JSON form was framed in place as it
    /// was encoded (updates built here): the same bytes.
    json_frame: Option<Bytes>,
    /// The binary forms and the frames not made at encoding, made on first
    /// use (most updates never need them: kept out of line).
    more: OnceLock<Box<Forms>>,
}

/// An update's forms made on first use.
#[derive(Debug, Default)]
struct Forms {
    msgpack: OnceLock<Bytes>,
    deflated: OnceLock<Bytes>,
    /// Whole frames per encoding: the MessagePack one framed in place as
    /// its form is made; the others copies.
    framed: [OnceLock<Bytes>; 3],
}

impl Update {
    /// Builds an update and encodes its JSON form.
    ///
    /// `taken` is when the data was observed (the sample time on the host),
    /// `received` when the aggregator got it; both go on the wire so a viewer
    /// can show how fresh it is.
    pub fn new(
        topic: Arc<str>,
        seq: u64,
        taken: SystemTime,
        received: SystemTime,
        payload: Payload,
    ) -> Self {
        let timestamp = rfc3339(taken);
        let received = rfc3339(received);
        // Encoded after room for the frame header: the JSON text frame is
        // the same bytes, framed in place.
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; FRAME_ROOM]);
        serde_json::to_writer(
            &mut buf,
            &Envelope {
                topic: &topic,
                seq,
                timestamp: &timestamp,
                received: &received,
                payload: &payload,
            },
        )
        .expect("update payloads serialise");
        let (json, framed) = frame_in_place(buf, TEXT);
        Self {
            topic,
            seq,
            json: Utf8Bytes::try_from(json).expect("serde_json writes UTF-8"),
            origin: None,
            json_frame: Some(framed),
            more: OnceLock::new(),
        }
    }

    /// An update another aggregator produced, from its already encoded JSON
    /// form (as it travels through the broker): nothing is encoded again.
    pub fn remote(topic: Arc<str>, seq: u64, json: Utf8Bytes, origin: Arc<str>) -> Self {
        Self {
            topic,
            seq,
            json,
            origin: Some(origin),
            json_frame: None,
            more: OnceLock::new(),
        }
    }

    /// An update read back from history (its JSON form as it was sent).
    pub fn stored(topic: Arc<str>, seq: u64, json: Utf8Bytes) -> Self {
        Self {
            topic,
            seq,
            json,
            origin: None,
            json_frame: None,
            more: OnceLock::new(),
        }
    }

    fn forms(&self) -> &Forms {
        self.more.get_or_init(Box::default)
    }

    /// The MessagePack form (a map with the JSON form's fields), encoded once.
    pub fn msgpack(&self) -> &Bytes {
        let forms = self.forms();
        forms.msgpack.get_or_init(|| {
            // Framed in place, as the JSON form is.
            let mut out = Vec::with_capacity(self.json.len() + FRAME_ROOM);
            out.extend_from_slice(&[0; FRAME_ROOM]);
            let mut from = serde_json::Deserializer::from_str(self.json.as_str());
            let mut to = rmp_serde::Serializer::new(&mut out).with_struct_map();
            serde_transcode::transcode(&mut from, &mut to).expect("our own JSON transcodes");
            let (payload, framed) = frame_in_place(out, BINARY);
            let _ = forms.framed[Encoding::MsgPack as usize].set(framed);
            payload
        })
    }

    /// The deflated MessagePack form, encoded once.
    pub fn deflated(&self) -> &Bytes {
        self.forms()
            .deflated
            .get_or_init(|| deflate(self.msgpack()))
    }

    /// The deflated MessagePack form if it was already made (so a caller on
    /// an async worker can tell whether asking for it would compress now).
    pub fn deflated_if_ready(&self) -> Option<&Bytes> {
        self.more.get()?.deflated.get()
    }

    /// The update as one whole WebSocket frame in `encoding`, header and
    /// payload, made once and written as it is to every subscriber.
    pub fn framed(&self, encoding: Encoding) -> &Bytes {
        if encoding == Encoding::Json
            && let Some(framed) = &self.json_frame
        {
            return framed;
        }
        // Making the MessagePack form frames it in place.
        let payload = self.bytes(encoding);
        self.forms().framed[encoding as usize]
            .get_or_init(|| crate::ws::frames::frame(crate::ws::frames::opcode(encoding), payload))
    }

    /// The frame in `encoding` if it was already made (see
    /// [`Update::deflated_if_ready`]).
    pub fn framed_if_ready(&self, encoding: Encoding) -> Option<&Bytes> {
        if encoding == Encoding::Json
            && let Some(framed) = &self.json_frame
        {
            return Some(framed);
        }
        self.more.get()?.framed[encoding as usize].get()
    }

    /// When the sample was taken (Unix ms), read back from the JSON form's
    /// `timestamp` (the envelope's third field, before any payload, so the
    /// first match is it: a quote inside the topic is escaped). `None` for a
    /// form without one.
    pub fn taken_ms(&self) -> Option<i64> {
        const KEY: &str = "\"timestamp\":\"";
        let text = self.json.as_str();
        let at = text.find(KEY)? + KEY.len();
        let end = at + text[at..].find('"')?;
        let t = humantime::parse_rfc3339(&text[at..end]).ok()?;
        Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
    }

    /// Bytes of the form `encoding` sends.
    pub fn bytes(&self, encoding: Encoding) -> &[u8] {
        match encoding {
            Encoding::Json => self.json.as_bytes(),
            Encoding::MsgPack => self.msgpack(),
            Encoding::MsgPackDeflate => self.deflated(),
        }
    }

    /// Bytes this update holds for queue and history bounds: its JSON form
    /// and bookkeeping. Binary forms, made only when a client asks for them,
    /// add up to about 1.7 times as much and are not counted.
    pub fn size(&self) -> usize {
        self.json.len() + self.topic.len() + std::mem::size_of::<Self>()
    }

    /// Bytes this update holds now: [`Update::size`] plus whichever binary
    /// forms have been made of it (history counts what it really holds).
    pub fn held_bytes(&self) -> usize {
        self.size() + self.more.get().map_or(0, |f| f.held_bytes())
    }
}

impl Forms {
    /// Bytes held apart from the update: the box, the binary forms, and the
    /// frames that are copies (the MessagePack frame shares its form).
    fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.msgpack.get().map_or(0, |b| b.len())
            + self.deflated.get().map_or(0, |b| b.len())
            + self.framed[Encoding::Json as usize]
                .get()
                .map_or(0, |b| b.len())
            + self.framed[Encoding::MsgPackDeflate as usize]
                .get()
                .map_or(0, |b| b.len())
    }
}

#[cfg(test)]
impl Update {
    /// An update of `topic` taken and received now, for tests.
    pub(crate) fn test(topic: &str, seq: u64, payload: Value) -> Arc<Self> {
        let now = SystemTime::now();
        Arc::new(Self::new(
            topic.into(),
            seq,
            now,
            now,
            Payload::Other(payload),
        ))
    }
}

/// An update whose seq the hub assigns: the next of its topic, taken in the
/// hub task in the order such updates arrive there. Events that no sample
/// numbers (the `hosts` topic) are published this way, so two produced at
/// once can never be numbered in one order and arrive in the other.
#[derive(Debug)]
pub struct Unnumbered {
    /// Concrete topic (no wildcards).
    pub topic: Arc<str>,
    /// When it happened (both `timestamp` and `received` on the wire).
    pub at: SystemTime,
    /// What it carries.
    pub payload: Payload,
}

impl Unnumbered {
    /// Numbers it `seq` and encodes its JSON form.
    pub fn number(self, seq: u64) -> Update {
        Update::new(self.topic, seq, self.at, self.at, self.payload)
    }
}

/// A `$sys.*` reply or notice for one connection: no seq.
#[derive(Debug, Clone, Serialize)]
pub struct SysMessage {
    /// `$sys.subscribed`, `$sys.error`, ...
    pub topic: &'static str,
    /// When it was made.
    pub timestamp: String,
    /// Its content.
    pub payload: SysPayload,
}

/// What a `$sys` message carries.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SysPayload {
    /// Anything small, already a JSON value.
    Value(Value),
    /// A `$sys.subscribed` reply, which can list thousands of topics: kept
    /// as made and serialised straight into the frame by the connection's
    /// own task, not by the hub.
    Subscribed(Arc<Subscribed>),
}

impl std::ops::Index<&str> for SysPayload {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        match self {
            SysPayload::Value(v) => &v[key],
            SysPayload::Subscribed(_) => &Value::Null,
        }
    }
}

/// The `$sys.subscribed` reply.
#[derive(Debug, Serialize)]
pub struct Subscribed {
    /// The request's `id`, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The pattern subscribed to.
    pub topic: String,
    /// Each matching topic held.
    pub topics: Vec<TopicInfo>,
    /// False when a `since` reaches back further than history.
    pub complete: bool,
}

/// One topic in a `$sys.subscribed` reply.
#[derive(Debug, Serialize)]
pub struct TopicInfo {
    /// The topic.
    pub topic: Arc<str>,
    /// Its current seq.
    pub seq: u64,
    /// The oldest seq its history holds.
    pub history_start: Option<u64>,
    /// Non-zero when a configured rate limit thins this topic.
    #[serde(skip_serializing_if = "is_zero")]
    pub min_interval_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl SysMessage {
    /// A message on `topic` made now.
    pub fn new<P: Serialize>(topic: &'static str, payload: &P) -> Self {
        Self::with(
            topic,
            SysPayload::Value(serde_json::to_value(payload).expect("system payloads serialise")),
        )
    }

    /// A message on `topic` made now, carrying `payload` as it is.
    pub fn with(topic: &'static str, payload: SysPayload) -> Self {
        Self {
            topic,
            timestamp: rfc3339(SystemTime::now()),
            payload,
        }
    }

    /// Its JSON text.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("system payloads serialise")
    }

    /// Its MessagePack form.
    pub fn msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("system payloads serialise")
    }

    /// Approximate size, for queue bounds.
    pub fn size(&self) -> usize {
        256
    }
}

/// RFC 3339 with milliseconds, UTC: `2026-11-28T12:34:56.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Unix time now, in milliseconds.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds (as sent by agents) to a `SystemTime`.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update::new(
            "host.a.cpu".into(),
            7,
            from_unix_ms(1_795_000_000_123),
            from_unix_ms(1_795_000_000_200),
            Payload::Other(serde_json::json!({"total_pct": 1.5})),
        )
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let v: Value = serde_json::from_str(&update().json).unwrap();
        assert_eq!(v["topic"], "host.a.cpu");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["timestamp"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v["received"], "2026-11-18T11:06:40.200Z");
        assert_eq!(v["payload"]["total_pct"], 1.5);
    }

    #[test]
    fn the_sample_time_reads_back_from_the_json_form() {
        assert_eq!(update().taken_ms(), Some(1_795_000_000_123));
        let odd = Update::stored("a".into(), 1, "{\"topic\":\"a\",\"seq\":1}".into());
        assert_eq!(odd.taken_ms(), None);
    }

    #[test]
    fn every_encoding_carries_the_same_update() {
        let u = update();
        let json: Value = serde_json::from_str(&u.json).unwrap();
        let packed: Value = rmp_serde::from_slice(u.msgpack()).unwrap();
        assert_eq!(packed, json);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::DeflateDecoder::new(&u.deflated()[..]),
            &mut raw,
        )
        .unwrap();
        assert_eq!(&raw[..], &u.msgpack()[..]);
        // Encoded once: the same bytes on every call.
        assert_eq!(u.msgpack().as_ptr(), u.msgpack().as_ptr());
    }
}
