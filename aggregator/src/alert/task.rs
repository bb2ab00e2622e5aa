//! The alert task: takes the evaluator's transitions, keeps the board
//! (what fires now, and recent history, read by `GET /api/v1/alerts` and
//! `/metrics`), publishes each transition on the `alerts` topic through the
//! hub, hands it to every receiver's queue, re-sends what fires to
//! Alertmanager every resend interval, and ticks the `absent` rules.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::{AmAlert, ReceiverStats};
use super::eval::{Alert, Engine, Status};
use crate::hub::{Command, HubHandle};
use crate::update::{Payload, Unnumbered};

/// The topic transitions are published on.
pub const TOPIC: &str = "alerts";

type Key = (Arc<str>, String, Option<String>);

#[derive(Debug, Default)]
struct Held {
    firing: BTreeMap<Key, Alert>,
    history: VecDeque<Alert>,
}

/// What fires now and what happened lately.
#[derive(Debug)]
pub struct Board {
    held: Mutex<Held>,
    history_len: usize,
    /// Every rule's (name, severity), for gauges that read 0.
    pub rules: Vec<(String, String)>,
}

impl Board {
    /// An empty board.
    pub fn new(rules: Vec<(String, String)>, history_len: usize) -> Self {
        Self {
            held: Mutex::new(Held::default()),
            history_len,
            rules,
        }
    }

    /// (firing now, recent transitions newest first).
    pub fn snapshot(&self) -> (Vec<Alert>, Vec<Alert>) {
        let held = self.held.lock().expect("alert board lock");
        (
            held.firing.values().cloned().collect(),
            held.history.iter().rev().cloned().collect(),
        )
    }

    /// Alerts firing per (rule, severity), every rule listed.
    pub fn firing_counts(&self) -> Vec<(String, String, u64)> {
        let held = self.held.lock().expect("alert board lock");
        self.rules
            .iter()
            .map(|(rule, severity)| {
                let n = held.firing.keys().filter(|(r, _, _)| **r == **rule).count();
                (rule.clone(), severity.clone(), n as u64)
            })
            .collect()
    }

    fn apply(&self, alert: &Alert) {
        let mut held = self.held.lock().expect("alert board lock");
        match alert.status {
            Status::Firing => {
                held.firing.insert(alert.key(), alert.clone());
            }
            Status::Resolved => {
                held.firing.remove(&alert.key());
            }
        }
        held.history.push_back(alert.clone());
        while held.history.len() > self.history_len {
            held.history.pop_front();
        }
    }

    fn firing(&self) -> Vec<Alert> {
        self.held
            .lock()
            .expect("alert board lock")
            .firing
            .values()
            .cloned()
            .collect()
    }
}

/// A receiver's queue and counters.
#[derive(Debug)]
pub struct Outlet<T> {
    /// Its queue.
    pub queue: mpsc::Sender<T>,
    /// Its counters.
    pub stats: Arc<ReceiverStats>,
}

impl<T> Outlet<T> {
    fn offer(&self, item: T) {
        if self.queue.try_send(item).is_err() {
            self.stats.drop_one();
        }
    }
}

/// The hosts other aggregators of the cluster announce online (ingest's
/// registry knows; handed in so this module does not reach into ingest).
pub type Elsewhere = Box<dyn Fn() -> std::collections::HashSet<String> + Send + Sync>;

/// What the task needs.
pub struct Settings {
    /// The evaluator (for the absent tick).
    pub engine: Arc<Engine>,
    /// Which hosts stream to other aggregators now (for the absent tick).
    pub elsewhere: Elsewhere,
    /// The board.
    pub board: Arc<Board>,
    /// The hub, for the `alerts` topic.
    pub hub: HubHandle,
    /// Alertmanager queues.
    pub alertmanagers: Vec<Outlet<Vec<AmAlert>>>,
    /// Webhook queues.
    pub webhooks: Vec<Outlet<Alert>>,
    /// How often firing alerts are sent to Alertmanager again.
    pub resend: Duration,
    /// `generatorURL`.
    pub generator_url: String,
}

/// Runs until shutdown.
pub async fn run(s: Settings, mut events: mpsc::Receiver<Alert>, shutdown: CancellationToken) {
    // Alertmanager holds a firing alert until its endsAt: a few resend
    // intervals, so one lost resend does not resolve it.
    let valid = s.resend * 4;
    let mut resend = tokio::time::interval_at(Instant::now() + s.resend, s.resend);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The absent rules' one timer: a quarter of the shortest `after`, at
    // most a second, so silence is noticed within that much of it. It
    // also lets go of hosts that moved to another node of the cluster, so
    // it runs (every second) without absent rules too.
    let tick_every = s
        .engine
        .shortest_after()
        .map_or(Duration::from_secs(1), |a| {
            (a / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        });
    let mut absent = tokio::time::interval(tick_every);
    absent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.recv() => {
                let Some(alert) = e else { break };
                s.board.apply(&alert);
                tracing::info!(rule = %alert.rule, host = %alert.host, entry = ?alert.entry, status = ?alert.status, value = alert.value, "alert");
                let update = Unnumbered {
                    topic: TOPIC.into(),
                    at: SystemTime::now(),
                    payload: Payload::Other(serde_json::to_value(&alert).expect("alerts serialise")),
                };
                // Resolved here because its host moved to another node:
                // Alertmanager keeps it for that node to carry on.
                if !alert.moved {
                    let am = AmAlert::from_alert(&alert, valid, &s.generator_url);
                    for o in &s.alertmanagers {
                        o.offer(vec![am.clone()]);
                    }
                }
                for o in &s.webhooks {
                    o.offer(alert.clone());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = s.hub.send(Command::PublishNext(vec![update])) => {}
                }
            }
            _ = resend.tick() => {
                if s.alertmanagers.is_empty() {
                    continue;
                }
                let firing: Vec<AmAlert> = s
                    .board
                    .firing()
                    .iter()
                    .map(|a| AmAlert::from_alert(a, valid, &s.generator_url))
                    .collect();
                if !firing.is_empty() {
                    for o in &s.alertmanagers {
                        o.offer(firing.clone());
                    }
                }
            }
            _ = absent.tick() => {
                s.engine.tick(Instant::now(), &(s.elsewhere)());
            }
        }
    }
}
