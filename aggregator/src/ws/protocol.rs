//! The WebSocket protocol, version 1: client requests and error replies.
//!
//! Requests are JSON objects with an `action`. Parsing is strict and every
//! refusal carries a machine code and a sentence naming what was wrong:
//!
//! | code | when |
//! | --- | --- |
//! | `bad_json` | the frame is not a JSON object |
//! | `bad_request` | a field is missing, of the wrong type, or unknown |
//! | `unknown_action` | `action` is not one of subscribe, unsubscribe, ping |
//! | `bad_topic` | the topic or pattern is not valid |
//! | `since_too_large` | `since` names more than [`MAX_SINCE_TOPICS`] topics |
//! | `since_needs_topics` | `since` is a single seq on a wildcard pattern (its topics' seqs are unrelated; send a per-topic map) |
//! | `too_many_subscriptions` | the connection already holds the maximum |
//! | `not_subscribed` | unsubscribe of a pattern this connection does not hold |
//! | `binary_not_supported` | a binary frame was sent; requests are text |
//! | `unauthorized` | no token yet (anonymous access is off), or a bad token in `auth` |
//! | `forbidden` | the token grants no topic the subscription could match |
//! | `rate_limited` | more control messages per second than allowed |

use std::collections::HashMap;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hub::{Since, SubscribeRequest};
use crate::topic::{is_wildcard, validate_pattern_within};
use crate::update::SysMessage;

/// A parsed client request.
#[derive(Debug)]
pub enum Request {
    /// `{"action":"subscribe","topic":...}`
    Subscribe(SubscribeRequest),
    /// `{"action":"unsubscribe","topic":...}`
    Unsubscribe {
        /// Pattern to drop.
        topic: String,
        /// Echoed.
        id: Option<Value>,
    },
    /// `{"action":"ping"}`
    Ping {
        /// Echoed.
        id: Option<Value>,
    },
    /// `{"action":"auth","token":...}`: authenticate (browsers cannot set headers).
    Auth {
        /// The presented token.
        token: String,
        /// Echoed.
        id: Option<Value>,
    },
}

/// A refused request.
#[derive(Debug, PartialEq)]
pub struct ProtocolError {
    /// Machine-readable code.
    pub code: &'static str,
    /// Human sentence.
    pub message: String,
    /// The request's id, when it could be read.
    pub id: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFields {
    #[allow(dead_code)]
    action: String,
    topic: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    since: Option<SinceField>,
    #[serde(default)]
    history: Option<usize>,
    #[serde(default)]
    throttle_ms: Option<u64>,
    #[serde(default)]
    history_every_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SinceField {
    All(u64),
    PerTopic(HashMap<String, u64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFields {
    #[allow(dead_code)]
    action: String,
    topic: String,
    #[serde(default)]
    id: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFields {
    #[allow(dead_code)]
    action: String,
    token: String,
    #[serde(default)]
    id: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingFields {
    #[allow(dead_code)]
    action: String,
    #[serde(default)]
    id: Option<Value>,
}

/// Most updates a `history` request may ask for per topic.
pub const MAX_HISTORY_REQUEST: usize = 100_000;

/// Most topics one `since` map may name. The hub keeps only the entries
/// of topics it does not hold yet, until they appear.
pub const MAX_SINCE_TOPICS: usize = 10_000;

/// Longest throttle interval a subscription may ask for (one hour).
pub const MAX_THROTTLE_MS: u64 = 3_600_000;

/// Longest interval a replay may be thinned to (`history_every_ms`, one hour).
pub const MAX_HISTORY_EVERY_MS: u64 = 3_600_000;

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest topic or pattern, bytes.
    pub max_topic_bytes: usize,
    /// Most segments in a topic or pattern.
    pub max_topic_segments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_topic_bytes: crate::topic::MAX_TOPIC_LEN,
            max_topic_segments: crate::topic::MAX_SEGMENTS,
        }
    }
}

/// Parses one text frame with the default limits.
pub fn parse(text: &str) -> Result<Request, ProtocolError> {
    parse_with(text, Limits::default())
}

/// Parses one text frame.
pub fn parse_with(text: &str, limits: Limits) -> Result<Request, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError {
        code: "bad_json",
        message: format!("request is not valid JSON: {e}"),
        id: None,
    })?;
    let Value::Object(map) = &value else {
        return Err(ProtocolError {
            code: "bad_json",
            message: "request must be a JSON object with an \"action\"".into(),
            id: None,
        });
    };
    let id = map.get("id").cloned();
    let bad = |e: serde_json::Error| ProtocolError {
        code: "bad_request",
        message: e.to_string(),
        id: id.clone(),
    };
    let action = match map.get("action") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => {
            return Err(ProtocolError {
                code: "bad_request",
                message: "\"action\" must be a string".into(),
                id,
            });
        }
        None => {
            return Err(ProtocolError {
                code: "bad_request",
                message: "missing \"action\" (subscribe, unsubscribe or ping)".into(),
                id,
            });
        }
    };
    let topic_ok = |topic: &str| {
        validate_pattern_within(topic, limits.max_topic_bytes, limits.max_topic_segments).map_err(
            |e| ProtocolError {
                code: "bad_topic",
                message: e.to_string(),
                id: id.clone(),
            },
        )
    };
    match action {
        "subscribe" => {
            let seq_ok = |v: &Value| v.is_u64();
            match map.get("since") {
                None | Some(Value::Null) => {}
                Some(v) if seq_ok(v) => {}
                Some(Value::Object(m)) if m.len() > MAX_SINCE_TOPICS => {
                    return Err(ProtocolError {
                        code: "since_too_large",
                        message: format!(
                            "\"since\" names {} topics; at most {MAX_SINCE_TOPICS} may be resumed in one subscribe \
                             (split the pattern, or resume the rest with \"history\")",
                            m.len()
                        ),
                        id,
                    });
                }
                Some(Value::Object(m)) if m.values().all(seq_ok) => {}
                Some(_) => {
                    return Err(ProtocolError {
                        code: "bad_request",
                        message: "\"since\" must be a seq (a whole number from 0) or an object of topic to seq".into(),
                        id,
                    });
                }
            }
            let f = SubscribeFields::deserialize(&value).map_err(bad)?;
            topic_ok(&f.topic)?;
            if f.history.is_some_and(|h| h > MAX_HISTORY_REQUEST) {
                return Err(ProtocolError {
                    code: "bad_request",
                    message: format!("\"history\" may ask for at most {MAX_HISTORY_REQUEST}"),
                    id,
                });
            }
            let since = match f.since {
                None => None,
                // Each topic of a pattern has its own seqs: one number would
                // hide, maybe for days, every topic still below it.
                Some(SinceField::All(s)) if is_wildcard(&f.topic) => {
                    return Err(ProtocolError {
                        code: "since_needs_topics",
                        message: format!(
                            "\"since\": {s} is one seq, but {:?} is a pattern and each of its topics counts its own seqs; \
                             resume a pattern with a seq per topic, e.g. \"since\": {{\"host.a.cpu\": {s}}} \
                             (topics not named start live; add \"history\" for those), or subscribe to one topic",
                            f.topic
                        ),
                        id,
                    });
                }
                Some(SinceField::All(s)) => Some(Since::All(s)),
                Some(SinceField::PerTopic(m)) => Some(Since::PerTopic(m)),
            };
            if f.throttle_ms.is_some_and(|t| t > MAX_THROTTLE_MS) {
                return Err(ProtocolError {
                    code: "bad_request",
                    message: format!("\"throttle_ms\" may be at most {MAX_THROTTLE_MS}"),
                    id,
                });
            }
            if f.history_every_ms.is_some_and(|e| e > MAX_HISTORY_EVERY_MS) {
                return Err(ProtocolError {
                    code: "bad_request",
                    message: format!("\"history_every_ms\" may be at most {MAX_HISTORY_EVERY_MS}"),
                    id,
                });
            }
            Ok(Request::Subscribe(SubscribeRequest {
                pattern: f.topic,
                id: f.id,
                since,
                history: f.history,
                throttle: Duration::from_millis(f.throttle_ms.unwrap_or(0)),
                history_every: Duration::from_millis(f.history_every_ms.unwrap_or(0)),
                grant: None,
            }))
        }
        "unsubscribe" => {
            let f = TopicFields::deserialize(&value).map_err(bad)?;
            topic_ok(&f.topic)?;
            Ok(Request::Unsubscribe {
                topic: f.topic,
                id: f.id,
            })
        }
        "ping" => {
            let f = PingFields::deserialize(&value).map_err(bad)?;
            Ok(Request::Ping { id: f.id })
        }
        "auth" => {
            let f = AuthFields::deserialize(&value).map_err(bad)?;
            Ok(Request::Auth {
                token: f.token,
                id: f.id,
            })
        }
        other => Err(ProtocolError {
            code: "unknown_action",
            message: format!(
                "unknown action {:?}: expected subscribe, unsubscribe, ping or auth",
                other.chars().take(64).collect::<String>()
            ),
            id,
        }),
    }
}

/// A `$sys.error` frame.
pub fn error_message(code: &str, message: &str, id: Option<Value>) -> SysMessage {
    #[derive(Serialize)]
    struct Error<'a> {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    }
    SysMessage::new("$sys.error", &Error { code, message, id })
}

/// A `$sys.pong` frame.
pub fn pong_message(id: Option<Value>) -> SysMessage {
    #[derive(Serialize)]
    struct Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    }
    SysMessage::new("$sys.pong", &Pong { id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse(text).unwrap_err().code
    }

    #[test]
    fn every_refusal_has_its_code() {
        assert_eq!(code("{not json"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_json");
        assert_eq!(code("{\"topic\":\"a\"}"), "bad_request");
        assert_eq!(code("{\"action\":5}"), "bad_request");
        assert_eq!(code("{\"action\":\"dance\"}"), "unknown_action");
        assert_eq!(code("{\"action\":\"subscribe\"}"), "bad_request");
        assert_eq!(
            code("{\"action\":\"subscribe\",\"topic\":7}"),
            "bad_request"
        );
        assert_eq!(
            code("{\"action\":\"subscribe\",\"topic\":\"a..b\"}"),
            "bad_topic"
        );
        assert_eq!(
            code("{\"action\":\"subscribe\",\"topic\":\"a\",\"colour\":1}"),
            "bad_request"
        );
        assert_eq!(
            code("{\"action\":\"subscribe\",\"topic\":\"a\",\"since\":-1}"),
            "bad_request"
        );
    }

    #[test]
    fn one_since_seq_is_for_one_topic_and_a_pattern_needs_a_map() {
        for pattern in ["host.*.cpu", "host.a.>", ">", "*"] {
            let request =
                format!("{{\"action\":\"subscribe\",\"topic\":\"{pattern}\",\"since\":41}}");
            let e = parse(&request).unwrap_err();
            assert_eq!(e.code, "since_needs_topics", "{pattern}");
            assert!(e.message.contains("{\"host.a.cpu\": 41}"), "{}", e.message);
        }
        for (pattern, since) in [("host.a.cpu", "41"), ("host.*.cpu", "{\"host.a.cpu\":41}")] {
            let request =
                format!("{{\"action\":\"subscribe\",\"topic\":\"{pattern}\",\"since\":{since}}}");
            assert!(
                matches!(parse(&request), Ok(Request::Subscribe(_))),
                "{request}"
            );
        }
    }

    #[test]
    fn history_every_ms_parses_and_is_bounded() {
        match parse("{\"action\":\"subscribe\",\"topic\":\"host.*.cpu\",\"history\":60,\"history_every_ms\":5000}")
            .unwrap()
        {
            Request::Subscribe(r) => assert_eq!(r.history_every, Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        let too_long = format!(
            "{{\"action\":\"subscribe\",\"topic\":\"a\",\"history_every_ms\":{}}}",
            MAX_HISTORY_EVERY_MS + 1
        );
        assert_eq!(code(&too_long), "bad_request");
        assert_eq!(
            code("{\"action\":\"subscribe\",\"topic\":\"a\",\"history_every_ms\":-5}"),
            "bad_request"
        );
    }

    #[test]
    fn ids_are_kept_even_on_error() {
        let e = parse("{\"action\":\"subscribe\",\"topic\":\"\",\"id\":42}").unwrap_err();
        assert_eq!(e.id, Some(Value::from(42)));
    }

    #[test]
    fn a_since_map_beyond_the_cap_is_refused_naming_the_limit() {
        let map = |n: usize| {
            let m: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("host.h{i}.cpu"), Value::from(1)))
                .collect();
            serde_json::json!({"action": "subscribe", "topic": "host.*.cpu", "since": m})
                .to_string()
        };
        assert!(matches!(
            parse(&map(MAX_SINCE_TOPICS)),
            Ok(Request::Subscribe(_))
        ));
        let e = parse(&map(MAX_SINCE_TOPICS + 1)).unwrap_err();
        assert_eq!(e.code, "since_too_large");
        assert!(
            e.message.contains(&MAX_SINCE_TOPICS.to_string()),
            "{}",
            e.message
        );
    }

    #[test]
    fn subscribe_with_resume_parses() {
        match parse(
            "{\"action\":\"subscribe\",\"topic\":\"host.*.cpu\",\"since\":{\"host.a.cpu\":5}}",
        )
        .unwrap()
        {
            Request::Subscribe(r) => {
                assert_eq!(r.pattern, "host.*.cpu");
                assert!(matches!(r.since, Some(Since::PerTopic(m)) if m["host.a.cpu"] == 5));
            }
            other => panic!("{other:?}"),
        }
    }
}
