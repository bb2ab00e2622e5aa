//! A light reader's account of one subscription: of each update only its
//! topic and seq are read (no payload decoded), and checked against what
//! `$sys.subscribed` said each topic held and what the simulated fleet is
//! known to have published, so "every history point asked for" is an exact
//! count per topic rather than a rate.

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::Value;

use super::sim::{FAMILIES, family_count, parse_topic};

/// Where one topic stands on one connection.
#[derive(Debug, Clone, Copy)]
struct TopicTally {
    /// The topic's family (its schedule).
    family: u8,
    /// The topic's seq when subscribed: updates up to it are history.
    sub_seq: u64,
    /// History points the connection should get.
    asked: u32,
    /// History points it got.
    got: u32,
    /// The first history point received.
    first: u64,
    /// Highest seq received (each topic's seqs must rise strictly).
    last: u64,
}

impl TopicTally {
    /// History points missing before the first one received (dropped from
    /// the front of the topic's history after the subscribe, before the
    /// replay read them), as opposed to holes after it.
    fn missing_front(&self) -> u64 {
        let period = FAMILIES[self.family as usize].1;
        if self.asked == 0 || self.got == self.asked {
            return 0;
        }
        let newest = self.sub_seq - (self.sub_seq - 1) % period;
        let expected_first = newest.saturating_sub((self.asked as u64 - 1) * period);
        let first = if self.got == 0 {
            newest + period
        } else {
            self.first
        };
        (first.saturating_sub(expected_first) / period).min(self.asked as u64)
    }
}

/// One connection's account of its subscription.
#[derive(Debug)]
pub(crate) struct Tally {
    /// `history` asked per topic.
    history: u64,
    topics: HashMap<u32, TopicTally>,
    /// `$sys.subscribed` received.
    pub(crate) subscribed: bool,
    /// History points still expected.
    remaining: u64,
    /// Topics whose replay has not yet reached the seq they had when
    /// subscribed.
    behind: usize,
    /// History points to get: min(`history`, what the topic held).
    pub(crate) asked: u64,
    /// What the client would ask for had the aggregator kept everything the
    /// fleet sent (min(`history`, updates published so far)).
    pub(crate) asked_full: u64,
    /// History points received.
    pub(crate) got: u64,
    /// Updates received (history and live).
    pub(crate) updates: u64,
    /// When the last history point arrived.
    pub(crate) history_done_at: Option<Instant>,
    /// When every topic's replay had reached the seq it had when subscribed
    /// (with every point or not).
    pub(crate) caught_up_at: Option<Instant>,
    /// When the first live update after that arrived.
    pub(crate) live_at: Option<Instant>,
    /// `$sys.lagged` notices.
    pub(crate) lagged: u64,
    /// `$sys.error` messages (the first is kept).
    pub(crate) errors: u64,
    /// The first error's text.
    pub(crate) first_error: Option<String>,
    /// Updates at or below a seq already received on their topic.
    pub(crate) disorder: u64,
    /// Updates of topics not listed by `$sys.subscribed`.
    pub(crate) unlisted: u64,
    /// Frames that could not be read.
    pub(crate) malformed: u64,
    /// Live updates: from their sample's time to receipt, ms (updates read
    /// lightly only; those in a frame with a `$sys` message are not timed).
    pub(crate) staleness: Histogram<u64>,
    /// Live updates: from their sample's time to the aggregator's ingest
    /// (`received`), ms.
    pub(crate) to_ingest: Histogram<u64>,
}

/// A histogram of milliseconds up to an hour.
pub(crate) fn ms_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 2).expect("histogram bounds")
}

fn key(host: usize, family: usize) -> u32 {
    (host * FAMILIES.len() + family) as u32
}

impl Tally {
    /// An account for a subscription asking `history` per topic.
    pub(crate) fn new(history: u64) -> Self {
        Self {
            history,
            topics: HashMap::new(),
            subscribed: false,
            remaining: 0,
            behind: 0,
            asked: 0,
            asked_full: 0,
            got: 0,
            updates: 0,
            history_done_at: None,
            caught_up_at: None,
            live_at: None,
            lagged: 0,
            errors: 0,
            first_error: None,
            disorder: 0,
            unlisted: 0,
            malformed: 0,
            staleness: ms_histogram(),
            to_ingest: ms_histogram(),
        }
    }

    /// Whether the replay caught up and a live update followed.
    pub(crate) fn is_live(&self) -> bool {
        self.live_at.is_some()
    }

    /// Topics that got fewer history points than asked.
    pub(crate) fn short_topics(&self) -> u64 {
        self.topics.values().filter(|t| t.got < t.asked).count() as u64
    }

    /// History points missing at the front of their topic's window (see
    /// [`TopicTally::missing_front`]); the rest of `asked - got` are holes.
    pub(crate) fn missing_front(&self) -> u64 {
        self.topics.values().map(TopicTally::missing_front).sum()
    }

    /// Reads one data frame (one update, a `$sys` message or a batch).
    pub(crate) fn frame(&mut self, data: &[u8], now: Instant) {
        let mut wall: Option<i64> = None;
        let Ok(text) = std::str::from_utf8(data) else {
            self.malformed += 1;
            return;
        };
        if text.contains("\"$sys.") {
            // Rare (the subscribe reply, notices): decode the whole frame.
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                self.malformed += 1;
                return;
            };
            match value["updates"].as_array() {
                Some(items) => {
                    for item in items {
                        self.message(item, now);
                    }
                }
                None => self.message(&value, now),
            }
            return;
        }
        const KEY: &str = "{\"topic\":\"";
        for (at, _) in text.match_indices(KEY) {
            let rest = &text[at + KEY.len()..];
            let Some(end) = rest.find('"') else {
                self.malformed += 1;
                continue;
            };
            let topic = &rest[..end];
            if topic == "batch.update" {
                continue;
            }
            let Some(after) = rest[end..].strip_prefix("\",\"seq\":") else {
                self.malformed += 1;
                continue;
            };
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            match after[..digits].parse::<u64>() {
                Ok(seq) => {
                    if self.update(topic, seq, now) {
                        let wall = *wall.get_or_insert_with(crate::load::now_ms);
                        self.time_live(&after[digits..], wall);
                    }
                }
                Err(_) => self.malformed += 1,
            }
        }
    }

    /// Records a live update's staleness and its delay to the aggregator's
    /// ingest, from the `,"timestamp":"…","received":"…"` that follow its seq.
    fn time_live(&mut self, rest: &str, now_ms: i64) {
        const TAKEN: &str = ",\"timestamp\":\"";
        const RECEIVED: &str = "\",\"received\":\"";
        let at = |from: usize| {
            rest.get(from..from + 24)
                .and_then(crate::load::parse_rfc3339_ms)
        };
        let taken = at(TAKEN.len());
        let received = at(TAKEN.len() + 24 + RECEIVED.len());
        if let (Some(taken), Some(received)) = (taken, received) {
            self.staleness
                .saturating_record((now_ms - taken).max(0) as u64);
            self.to_ingest
                .saturating_record((received - taken).max(0) as u64);
        }
    }

    fn message(&mut self, m: &Value, now: Instant) {
        let topic = m["topic"].as_str().unwrap_or("");
        match topic {
            "$sys.subscribed" => self.subscribed(&m["payload"], now),
            "$sys.lagged" => self.lagged += 1,
            "$sys.error" => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(m["payload"].to_string());
                }
            }
            t if t.starts_with("$sys.") => {}
            t => match m["seq"].as_u64() {
                Some(seq) => {
                    self.update(t, seq, now);
                }
                None => self.malformed += 1,
            },
        }
    }

    fn subscribed(&mut self, payload: &Value, now: Instant) {
        self.subscribed = true;
        for t in payload["topics"].as_array().into_iter().flatten() {
            let (Some(name), Some(seq)) = (t["topic"].as_str(), t["seq"].as_u64()) else {
                self.malformed += 1;
                continue;
            };
            let Some((host, family)) = parse_topic(name) else {
                continue;
            };
            let held = t["history_start"]
                .as_u64()
                .map_or(0, |start| family_count(host, family, start, seq));
            let asked = self.history.min(held);
            self.asked += asked;
            self.asked_full += self.history.min(family_count(host, family, 1, seq));
            self.remaining += asked;
            self.behind += usize::from(asked > 0);
            self.topics.insert(
                key(host, family),
                TopicTally {
                    family: family as u8,
                    sub_seq: seq,
                    asked: asked as u32,
                    got: 0,
                    first: 0,
                    last: 0,
                },
            );
        }
        if self.remaining == 0 {
            self.history_done_at = Some(now);
        }
        if self.behind == 0 {
            self.caught_up_at = Some(now);
        }
    }

    /// Counts an update; whether it is live (after the subscribe point).
    fn update(&mut self, topic: &str, seq: u64, now: Instant) -> bool {
        self.updates += 1;
        let Some(t) = parse_topic(topic).and_then(|(h, f)| self.topics.get_mut(&key(h, f))) else {
            self.unlisted += 1;
            return false;
        };
        if seq <= t.last {
            self.disorder += 1;
            return false;
        }
        let was_behind = t.asked > 0 && t.last < t.sub_seq;
        t.last = seq;
        if seq <= t.sub_seq && t.got < t.asked {
            if t.got == 0 {
                t.first = seq;
            }
            t.got += 1;
            self.got += 1;
            self.remaining -= 1;
            if self.remaining == 0 {
                self.history_done_at = Some(now);
            }
        }
        if was_behind && seq >= t.sub_seq {
            self.behind -= 1;
            if self.behind == 0 {
                self.caught_up_at = Some(now);
            }
        } else if seq > t.sub_seq && self.caught_up_at.is_some() && self.live_at.is_none() {
            self.live_at = Some(now);
        }
        seq > t.sub_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_history_then_live() {
        let now = Instant::now();
        let mut t = Tally::new(2);
        t.frame(
            br#"{"topic":"$sys.subscribed","timestamp":"x","payload":{"topic":"host.fleet-00001.>","topics":[
                {"topic":"host.fleet-00001.cpu","seq":10,"history_start":5},
                {"topic":"host.fleet-00001.filesystems","seq":1,"history_start":1}],"complete":true}}"#,
            now,
        );
        assert!(t.subscribed);
        // cpu: 2 of 6 held; filesystems: only its seq 1 was published.
        assert_eq!((t.asked, t.asked_full), (3, 3));
        t.frame(br#"{"topic":"batch.update","updates":[{"topic":"host.fleet-00001.filesystems","seq":1,"payload":{}},{"topic":"host.fleet-00001.cpu","seq":9,"timestamp":"t"}]}"#, now);
        assert_eq!(t.got, 2);
        assert!(t.history_done_at.is_none());
        t.frame(
            br#"{"topic":"host.fleet-00001.cpu","seq":10,"payload":{"x":"{\"topic\":"}}"#,
            now,
        );
        assert_eq!(t.got, 3);
        assert!(t.history_done_at.is_some() && t.caught_up_at.is_some() && !t.is_live());
        t.frame(br#"{"topic":"host.fleet-00001.cpu","seq":10}"#, now);
        assert_eq!(t.disorder, 1);
        t.frame(
            br#"{"topic":"host.fleet-00001.cpu","seq":11,"timestamp":"2026-11-18T11:06:40.123Z","received":"2026-11-18T11:06:40.130Z","payload":{}}"#,
            now,
        );
        assert!(t.is_live());
        assert_eq!((t.to_ingest.len(), t.to_ingest.max()), (1, 7));
        assert_eq!(t.staleness.len(), 1);
        assert_eq!((t.short_topics(), t.malformed, t.unlisted), (0, 0, 0));
        assert_eq!(t.missing_front(), 0);
        t.frame(
            br#"{"topic":"batch.update","updates":[{"topic":"$sys.lagged","payload":{}}]}"#,
            now,
        );
        assert_eq!(t.lagged, 1);
    }

    #[test]
    fn points_dropped_from_the_front_are_told_from_holes() {
        let now = Instant::now();
        let mut t = Tally::new(5);
        t.frame(
            br#"{"topic":"$sys.subscribed","payload":{"topics":[
                {"topic":"host.fleet-00002.cpu","seq":20,"history_start":1},
                {"topic":"host.fleet-00002.system","seq":11,"history_start":1}]}}"#,
            now,
        );
        // cpu asks 16..=20 and gets 18..=20 (two dropped from the front);
        // system asks 1 and 11, gets 1 only (a hole at the end).
        for (topic, seq) in [("cpu", 18), ("cpu", 19), ("cpu", 20), ("system", 1)] {
            let frame = format!(r#"{{"topic":"host.fleet-00002.{topic}","seq":{seq}}}"#);
            t.frame(frame.as_bytes(), now);
        }
        assert_eq!((t.asked, t.got, t.short_topics()), (7, 4, 2));
        assert_eq!(t.missing_front(), 2);
        assert!(t.history_done_at.is_none() && t.caught_up_at.is_none());
        // The system topic's replay reaches the subscribe point by a later
        // update: caught up, then live.
        t.frame(br#"{"topic":"host.fleet-00002.system","seq":21}"#, now);
        assert!(t.caught_up_at.is_some() && !t.is_live());
        t.frame(br#"{"topic":"host.fleet-00002.cpu","seq":21}"#, now);
        assert!(t.is_live());
    }
}
