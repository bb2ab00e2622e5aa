//! The hub task: its command loop, publishing (numbering, history, routing
//! to groups), forgetting departed hosts' topics, and applying resume points
//! when a topic appears.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::history::Histories;
use crate::topic;
use crate::update::Update;
use crate::ws::outbox::Pushed;

use super::routing::Routing;
use super::{Command, Hub, HubSettings, HubStats, Queued, ReplayTopic, Topic};

impl Hub {
    pub(super) fn new(settings: HubSettings, numbered_from: u64, stats: Arc<HubStats>) -> Self {
        let histories = Histories::new(
            settings.history_len,
            settings.history_max_bytes,
            stats.history.clone(),
        );
        Hub {
            numbered_from,
            topics: HashMap::new(),
            conns: HashMap::new(),
            settings,
            stats,
            histories,
            tokens: 0,
            routing: Routing::default(),
            names: BTreeSet::new(),
            pending_since: HashMap::new(),
            exports: 0,
            restoring: false,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        while let Some(queued) = rx.recv().await {
            // Its bytes are freed once handled.
            self.handle(queued.command);
        }
    }

    pub(super) fn handle(&mut self, command: Command) {
        match command {
            Command::Publish(updates) => {
                for u in updates {
                    self.publish(u);
                }
            }
            Command::PublishNext(updates) => {
                for u in updates {
                    let current = self.topics.get(&*u.topic).map_or(0, |t| t.seq);
                    let seq = current.max(self.numbered_from) + 1;
                    self.publish(u.number(seq));
                }
            }
            Command::Subscribe {
                conn,
                outbox,
                request,
                replay,
            } => {
                let _ = replay.send(self.subscribe(conn, outbox, request));
            }
            Command::Join {
                conn,
                token,
                reached,
            } => self.join(conn, token, reached),
            Command::Unsubscribe { conn, pattern, id } => self.unsubscribe(conn, pattern, id),
            Command::Disconnect { conn } => self.disconnect(conn),
            Command::Broadcast(message) => {
                for c in self.conns.values() {
                    c.outbox.push_sys(message.clone());
                }
            }
            Command::Export { floors, reply } => {
                let out = self
                    .topics
                    .iter()
                    .filter(|(name, t)| t.local && name.starts_with("host."))
                    .map(|(name, t)| ReplayTopic {
                        topic: name.clone(),
                        history: t.history.clone(),
                        after: floors.get(&**name).copied().unwrap_or(0),
                        intervals: None,
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Command::Snapshot { reply } => {
                let out = self
                    .topics
                    .iter()
                    .filter(|(name, _)| name.starts_with("host."))
                    .map(|(name, t)| {
                        let topic = ReplayTopic {
                            topic: name.clone(),
                            history: t.history.clone(),
                            after: 0,
                            intervals: None,
                        };
                        (topic, t.local)
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Command::Restore { updates, local } => {
                let topic = updates.first().map(|u| u.topic.clone());
                self.restoring = true;
                for u in updates {
                    self.publish(u);
                }
                self.restoring = false;
                if let Some(t) = topic.and_then(|name| self.topics.get_mut(&name)) {
                    t.local = local;
                }
            }
            Command::Floors { reply } => {
                let floors = self
                    .topics
                    .iter()
                    .filter(|(name, _)| name.starts_with("host."))
                    .map(|(name, t)| (name.to_string(), t.seq))
                    .collect();
                let _ = reply.send(floors);
            }
            Command::Forget { keep, idle, reply } => {
                let _ = reply.send(self.forget(&keep, idle));
            }
            Command::Latest { prefix, reply } => {
                let latest = self
                    .topics
                    .iter()
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .filter_map(|(_, t)| t.history.last())
                    .collect();
                let _ = reply.send(latest);
            }
        }
    }

    pub(super) fn publish(&mut self, update: Update) {
        let update = Arc::new(update);
        if !self.topics.contains_key(&update.topic) {
            let groups = self.routing.matching(&update.topic);
            self.resume_points_for(&update.topic);
            self.names.insert(update.topic.clone());
            let min_interval = self
                .settings
                .rate_limits
                .iter()
                .find(|r| topic::matches(&r.pattern, &update.topic))
                .map_or(Duration::ZERO, |r| r.min_interval);
            self.topics.insert(
                update.topic.clone(),
                Topic {
                    kind: topic::kind_index(&update.topic),
                    seq: 0,
                    history: self.histories.topic(),
                    groups,
                    min_interval,
                    last_accepted: None,
                    last_published: Instant::now(),
                    local: false,
                },
            );
            self.stats.topics.fetch_add(1, Ordering::Relaxed);
        }
        let t = self.topics.get_mut(&update.topic).expect("inserted above");
        if update.seq <= t.seq {
            self.stats.updates_duplicate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A peer's update was already thinned by its origin's limit; thinning
        // it again by arrival time here would make seqs differ between
        // aggregators.
        if !t.min_interval.is_zero() && update.origin.is_none() && !self.restoring {
            let now = Instant::now();
            if t.last_accepted.is_some_and(|at| now < at + t.min_interval) {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                return;
            }
            t.last_accepted = Some(now);
        }
        t.seq = update.seq;
        t.last_published = Instant::now();
        t.local = update.origin.is_none();
        if t.local
            && !self.restoring
            && let Some(export) = &self.settings.export
            && update.topic.starts_with("host.")
        {
            self.exports += 1;
            match export.try_send((self.exports, update.clone())) {
                Ok(()) => self.stats.exported.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.stats.export_dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
        if !t.local
            && !self.restoring
            && let Some(store) = &self.settings.store
            && update.topic.starts_with("host.")
        {
            store.offer_peer(&update);
        }
        if !self.restoring
            && let Some(tap) = &self.settings.remote_write
            && update.topic.starts_with("host.")
            && tap.try_send(update.clone()).is_err()
        {
            self.stats
                .remote_write_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        let over = self.histories.push(&t.history, update.clone());
        self.stats.updates_published.fetch_add(1, Ordering::Relaxed);
        self.stats.published_by_kind[t.kind].fetch_add(1, Ordering::Relaxed);
        let (mut delivered, mut held, mut dropped) = (0, 0, 0);
        for g in t.groups.iter().filter_map(|id| self.routing.get(*id)) {
            for outbox in g.members.values() {
                match outbox.push_update(&update, g.throttle) {
                    Pushed::Queued => delivered += 1,
                    Pushed::Held => held += 1,
                    Pushed::Refused => dropped += 1,
                    // Already had through another of its groups, at or below
                    // its resume point, or its topic is being replayed.
                    Pushed::Stale => {}
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats.deliveries_by_kind[t.kind].fetch_add(delivered, Ordering::Relaxed);
        self.stats.held.fetch_add(held, Ordering::Relaxed);
        self.stats
            .overflow_drops
            .fetch_add(dropped, Ordering::Relaxed);
        if over {
            self.histories
                .rebalance(self.topics.values().map(|t| &t.history));
        }
    }

    /// Forgets idle hosts not in `keep` (see [`Command::Forget`]).
    pub(super) fn forget(&mut self, keep: &HashSet<String>, idle: Duration) -> Vec<String> {
        let now = Instant::now();
        // Host → whether every one of its topics is idle.
        let mut hosts: HashMap<&str, bool> = HashMap::new();
        for (name, t) in &self.topics {
            let Some(host) = name
                .strip_prefix("host.")
                .and_then(|rest| rest.split('.').next())
            else {
                continue;
            };
            if keep.contains(host) {
                continue;
            }
            let idle_here = now.saturating_duration_since(t.last_published) >= idle;
            *hosts.entry(host).or_insert(true) &= idle_here;
        }
        let mut gone: Vec<String> = hosts
            .into_iter()
            .filter(|(_, idle)| *idle)
            .map(|(h, _)| h.to_string())
            .collect();
        gone.sort();
        if gone.is_empty() {
            return gone;
        }
        let doomed: Vec<Arc<str>> = self
            .topics
            .keys()
            .filter(|name| {
                name.strip_prefix("host.")
                    .and_then(|rest| rest.split('.').next())
                    .is_some_and(|h| gone.binary_search_by(|g| g.as_str().cmp(h)).is_ok())
            })
            .cloned()
            .collect();
        for name in doomed {
            let t = self.topics.remove(&name).expect("listed above");
            self.histories.forget(&t.history);
            self.stats.topics.fetch_sub(1, Ordering::Relaxed);
            self.names.remove(&name);
            for g in t.groups.iter().filter_map(|id| self.routing.get(*id)) {
                for outbox in g.members.values() {
                    outbox.forget_topic(&name);
                }
            }
        }
        self.topics.shrink_to_fit();
        self.stats
            .hosts_forgotten
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone
    }

    /// A topic appears: the resume points waiting for it are applied to
    /// their connections' outboxes, and kept no longer.
    pub(super) fn resume_points_for(&mut self, topic: &Arc<str>) {
        let Some(waiting) = self.pending_since.remove(&**topic) else {
            return;
        };
        for conn in waiting {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let mut floor: Option<u64> = None;
            for s in c.subscriptions.iter_mut().filter(|s| s.wants(topic)) {
                if let Some(f) = s.since.as_ref().and_then(|x| x.for_topic(topic)) {
                    floor = Some(floor.map_or(f, |g| g.min(f)));
                }
                if let Some(since) = s.since.take() {
                    s.since = since.still_needed(&s.pattern, |_| true, |t| t == &**topic);
                }
            }
            if let Some(f) = floor {
                c.outbox.prime(topic, f);
            }
        }
    }
}
