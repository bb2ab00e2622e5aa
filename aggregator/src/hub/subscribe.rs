//! A connection's subscriptions: subscribe (joining or creating its group,
//! resume points, the replay to hand to the session), a replay joining
//! live, unsubscribe and disconnect. Each touches only the connection's own
//! groups.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::Value;

use crate::topic;
use crate::update::{Subscribed, SysMessage, SysPayload, TopicInfo};
use crate::ws::outbox::Outbox;

use super::{
    Conn, ConnId, Hub, Replay, ReplayTopic, SubscribeRequest, Subscription, candidates, since_keys,
};

impl Hub {
    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        outbox: Arc<Outbox>,
        request: SubscribeRequest,
    ) -> Replay {
        // Kept with the subscription: only the resume points of topics not
        // held yet (the others are replayed and joined live).
        let kept_since = request.since.clone().and_then(|since| {
            since.still_needed(
                &request.pattern,
                |t| {
                    topic::matches(&request.pattern, t)
                        && request.grant.as_ref().is_none_or(|g| g.allows(t))
                },
                |t| self.topics.contains_key(t),
            )
        });
        self.tokens += 1;
        let token = self.tokens;
        // A subscription to the same pattern again replaces the old one.
        if let Some(old) = self.conns.get_mut(&conn).and_then(|c| {
            let i = c
                .subscriptions
                .iter()
                .position(|s| s.pattern == request.pattern)?;
            Some(c.subscriptions.swap_remove(i))
        }) {
            self.drop_subscription(conn, old);
        } else {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        let (group, new) = self.routing.join(
            conn,
            &outbox,
            &request.pattern,
            request.throttle,
            request.grant.as_ref(),
        );
        if new {
            let g = self.routing.get(group).expect("just made");
            for name in candidates(&self.names, &request.pattern) {
                if g.wants(name) {
                    self.topics
                        .get_mut(name)
                        .expect("names are topics")
                        .groups
                        .push(group);
                }
            }
            self.stats
                .groups
                .store(self.routing.len() as u64, Ordering::Relaxed);
        }
        if let Some(since) = &kept_since {
            for key in since_keys(&request.pattern, since) {
                self.pending_since
                    .entry(key.to_string())
                    .or_default()
                    .push(conn);
            }
        }
        self.conns
            .entry(conn)
            .or_insert_with(|| Conn {
                outbox: outbox.clone(),
                // Most connections hold one to three patterns: room for
                // one, not the four a first push would make.
                subscriptions: Vec::with_capacity(1),
            })
            .subscriptions
            .push(Subscription {
                pattern: request.pattern.clone(),
                token,
                group,
                since: kept_since,
                grant: request.grant.clone(),
            });

        let names: Vec<Arc<str>> = candidates(&self.names, &request.pattern)
            .filter(|t| request.grant.as_ref().is_none_or(|g| g.allows(t)))
            .cloned()
            .collect();
        let mut infos = Vec::with_capacity(names.len());
        let every_ms = request.history_every.as_millis() as u64;
        let mut replay = Replay {
            token,
            topics: Vec::new(),
            every_ms,
        };
        let mut complete = true;
        for name in &names {
            let t = &self.topics[name];
            let first_seq = t.history.first_seq();
            let since = request.since.as_ref().and_then(|s| s.for_topic(name));
            // Thinned, `history: N` counts intervals: the session reads the
            // whole history and keeps the last N of them.
            let intervals = request
                .history
                .filter(|n| since.is_none() && every_ms > 0 && *n > 0);
            let after = match since {
                Some(since) => {
                    complete &= since >= t.seq || first_seq.is_some_and(|f| f <= since + 1);
                    // Never at or below the resume point, should an agent
                    // resend it.
                    outbox.prime(name, since);
                    Some(since)
                }
                None => request.history.filter(|n| *n > 0).map(|n| {
                    t.history
                        .before_last(if intervals.is_some() { usize::MAX } else { n })
                }),
            };
            if let Some(after) = after.filter(|a| *a < t.seq) {
                // The session reads it from history, then joins; until then
                // live updates of the topic wait (the join sends them).
                outbox.block(name);
                replay.topics.push(ReplayTopic {
                    topic: name.clone(),
                    history: t.history.clone(),
                    after,
                    intervals,
                });
            }
            infos.push(TopicInfo {
                topic: name.clone(),
                seq: t.seq,
                history_start: first_seq,
                min_interval_ms: t.min_interval.as_millis() as u64,
            });
        }

        let reply = SysMessage::with(
            "$sys.subscribed",
            SysPayload::Subscribed(Arc::new(Subscribed {
                id: request.id,
                topic: request.pattern,
                topics: infos,
                complete,
            })),
        );
        outbox.push_sys(reply);
        replay
    }

    /// A replay caught up: each topic still held (the same history: not
    /// forgotten and made again meanwhile) gets what was published after
    /// what the session sent, then live delivery.
    pub(super) fn join(&mut self, conn: ConnId, token: u64, reached: Vec<ReplayTopic>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        // Unsubscribed (or replaced) meanwhile: nothing more of it is sent,
        // but its topics flow again for the connection's other subscriptions.
        let current = c.subscriptions.iter().any(|s| s.token == token);
        let outbox = c.outbox.clone();
        for r in reached {
            outbox.unblock(&r.topic);
            match self.topics.get(&r.topic) {
                Some(t) if Arc::ptr_eq(&t.history, &r.history) => {
                    if current {
                        for u in t.history.all_after(r.after) {
                            outbox.push_replay(&u);
                        }
                    }
                }
                // Forgotten while replaying (and perhaps made again, its
                // seqs starting afresh): so is what was sent of it.
                _ => outbox.forget_topic(&r.topic),
            }
        }
    }

    /// Undoes a subscription's routing: leaves its group (gone from its
    /// topics when it was the last member) and its waiting resume points.
    pub(super) fn drop_subscription(&mut self, conn: ConnId, s: Subscription) {
        if let Some(g) = self.routing.leave(s.group, conn) {
            for name in candidates(&self.names, &g.pattern) {
                if let Some(t) = self.topics.get_mut(name) {
                    t.groups.retain(|id| *id != s.group);
                }
            }
            self.stats
                .groups
                .store(self.routing.len() as u64, Ordering::Relaxed);
        }
        if let Some(since) = &s.since {
            for key in since_keys(&s.pattern, since) {
                if let Some(waiting) = self.pending_since.get_mut(key) {
                    waiting.retain(|c| *c != conn);
                    if waiting.is_empty() {
                        self.pending_since.remove(key);
                    }
                }
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, pattern: String, id: Option<Value>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(i) = c.subscriptions.iter().position(|s| s.pattern == pattern) else {
            // The session checks this before asking; nothing to undo.
            return;
        };
        let gone = c.subscriptions.swap_remove(i);
        let outbox = c.outbox.clone();
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        self.drop_subscription(conn, gone);
        #[derive(Serialize)]
        struct Unsubscribed<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: &'a Option<Value>,
            topic: &'a str,
        }
        outbox.push_sys(SysMessage::new(
            "$sys.unsubscribed",
            &Unsubscribed {
                id: &id,
                topic: &pattern,
            },
        ));
        let c = &self.conns[&conn];
        outbox.forget_throttle(|t| c.subscriptions.iter().any(|s| s.wants(t)));
    }

    pub(super) fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.stats
            .subscriptions
            .fetch_sub(c.subscriptions.len() as u64, Ordering::Relaxed);
        for s in c.subscriptions {
            self.drop_subscription(conn, s);
        }
    }
}
