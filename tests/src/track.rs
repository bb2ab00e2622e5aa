//! Bookkeeping for delivery tests: every seq seen per topic, with the
//! duplicates and gaps found, and the `since` map a resuming client sends.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// What a subscriber has received, per topic.
#[derive(Debug, Default)]
pub struct Tracker {
    /// First and last seq per topic.
    pub range: BTreeMap<String, (u64, u64)>,
    /// Updates received per topic.
    pub count: BTreeMap<String, u64>,
    /// (topic, seq) received twice or out of order.
    pub duplicates: Vec<(String, u64)>,
    /// (topic, first missing, last missing).
    pub gaps: Vec<(String, u64, u64)>,
}

impl Tracker {
    /// Records an update message; ignores `$sys` and other non-update messages.
    pub fn record(&mut self, m: &Value) {
        let (Some(topic), Some(seq)) = (m["topic"].as_str(), m["seq"].as_u64()) else {
            return;
        };
        *self.count.entry(topic.to_string()).or_default() += 1;
        match self.range.get_mut(topic) {
            None => {
                self.range.insert(topic.to_string(), (seq, seq));
            }
            Some((_, last)) => {
                if seq <= *last {
                    self.duplicates.push((topic.to_string(), seq));
                } else {
                    if seq > *last + 1 {
                        self.gaps.push((topic.to_string(), *last + 1, seq - 1));
                    }
                    *last = seq;
                }
            }
        }
    }

    /// Last seq seen on `topic`.
    pub fn last(&self, topic: &str) -> Option<u64> {
        self.range.get(topic).map(|r| r.1)
    }

    /// A subscribe request resuming every topic seen so far.
    pub fn resume(&self, pattern: &str) -> Value {
        if self.range.is_empty() {
            return json!({"action": "subscribe", "topic": pattern});
        }
        let since: BTreeMap<&str, u64> =
            self.range.iter().map(|(t, r)| (t.as_str(), r.1)).collect();
        json!({"action": "subscribe", "topic": pattern, "since": since})
    }

    /// Panics unless every topic's seqs ran consecutively, each exactly once.
    pub fn assert_exactly_once(&self) {
        assert!(
            self.duplicates.is_empty(),
            "duplicates: {:?}",
            self.duplicates
        );
        assert!(self.gaps.is_empty(), "gaps: {:?}", self.gaps);
        for (topic, (first, last)) in &self.range {
            assert_eq!(self.count[topic], last - first + 1, "{topic}");
        }
    }
}
