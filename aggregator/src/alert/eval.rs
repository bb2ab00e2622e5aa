//! Evaluation: every sample checked, as it arrives, against the rules that
//! select its host, and the state of each rule, host and list entry moved
//! through inactive → pending → firing → resolved (then inactive again).
//!
//! Ingest calls [`HostAlerts::observe`] for each accepted batch, on the
//! stream's own task; the work is a few map lookups per rule and sample
//! under a short lock, never held across `.await`. A transition becomes an
//! [`Alert`] handed to the alert task through a bounded queue (`try_send`:
//! ingest never waits for delivery; an event that does not fit is counted
//! in `dropped` and logged). Time is the sample's own timestamp for
//! `threshold` and `predict` rules, so `for` and the fitted line follow the
//! host's clock and a resent backlog evaluates as it happened; `absent`
//! rules are wall-clock silence, checked by [`Engine::tick`] from one timer
//! over all hosts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hostpulse_proto::{Process, Sample};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::expr::Values;
use super::rules::{Kind, Rule};
use crate::update::from_unix_ms;
pub use record::{Alert, Status};
use record::{Seen, build, resolve};

mod record;

/// Top processes kept per host for the alerts that fire on it.
const TOP_PROCESSES: usize = 5;

/// Points a `predict` rule keeps per series: older ones are thinned.
const MAX_POINTS: usize = 512;

#[derive(Debug, Clone)]
enum Phase {
    Inactive,
    Pending { since_ms: i64 },
    Firing { alert: Box<Alert> },
}

#[derive(Debug)]
struct Series {
    phase: Phase,
    last_ms: i64,
    /// `predict`: (time ms, value), oldest first.
    points: VecDeque<(i64, f64)>,
}

#[derive(Debug)]
struct HostState {
    /// Streams of the host attached here now (a new stream attaches
    /// before the one it supersedes ends).
    streams: u32,
    labels: BTreeMap<String, String>,
    rules: Vec<usize>,
    last_seen: Instant,
    series: HashMap<(usize, Option<String>), Series>,
    /// `absent` rules firing now.
    absent: HashMap<usize, Box<Alert>>,
    top_cpu: Vec<Process>,
    top_memory: Vec<Process>,
}

/// The rules and the state of every host they select.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<[Rule]>,
    /// Every field some rule reads.
    fields: std::collections::HashSet<&'static str>,
    hosts: Mutex<HashMap<Arc<str>, HostState>>,
    events: mpsc::Sender<Alert>,
    /// Transitions that did not fit the queue to the alert task.
    pub dropped: AtomicU64,
}

/// One host's handle on the engine, held by its ingest stream; dropping it
/// marks the stream gone (its state stays: `absent` rules watch for the
/// host's return).
#[derive(Debug)]
pub struct HostAlerts {
    engine: Arc<Engine>,
    host: Arc<str>,
}

impl Engine {
    /// An engine for `rules`, sending transitions to `events`.
    pub fn new(rules: Arc<[Rule]>, events: mpsc::Sender<Alert>) -> Self {
        let mut fields = std::collections::HashSet::new();
        for c in rules.iter().filter_map(|r| r.condition.as_ref()) {
            c.expr.fields(&mut fields);
        }
        Self {
            rules,
            fields,
            hosts: Mutex::new(HashMap::new()),
            events,
            dropped: AtomicU64::new(0),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A host's agent attached here: `None` when no rule selects it.
    /// State kept from an earlier stream of the host (pending, firing)
    /// carries on.
    pub fn attach(
        self: &Arc<Self>,
        host: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<HostAlerts> {
        let rules: Vec<usize> = (0..self.rules.len())
            .filter(|i| self.rules[*i].selects(host, labels))
            .collect();
        let mut hosts = self.hosts.lock().expect("alert state lock");
        if rules.is_empty() {
            // No rule selects it (any more: its labels changed).
            let resolved = drop_host(&mut hosts, host);
            drop(hosts);
            for a in resolved {
                self.emit(a);
            }
            return None;
        }
        let host: Arc<str> = host.into();
        let state = hosts.entry(host.clone()).or_insert_with(|| HostState {
            streams: 0,
            labels: BTreeMap::new(),
            rules: Vec::new(),
            last_seen: Instant::now(),
            series: HashMap::new(),
            absent: HashMap::new(),
            top_cpu: Vec::new(),
            top_memory: Vec::new(),
        });
        state.streams += 1;
        state.labels = labels.clone();
        // Rules that no longer select it: what fired for them resolves.
        let now = SystemTime::now();
        let mut resolved = Vec::new();
        state.series.retain(|(r, _), s| {
            let keep = rules.contains(r);
            if let (false, Phase::Firing { alert }) = (keep, &s.phase) {
                resolved.push(resolve((**alert).clone(), alert.value, now));
            }
            keep
        });
        state.absent.retain(|r, alert| {
            let keep = rules.contains(r);
            if !keep {
                resolved.push(resolve((**alert).clone(), alert.value, now));
            }
            keep
        });
        state.rules = rules;
        state.last_seen = Instant::now();
        drop(hosts);
        for a in resolved {
            self.emit(a);
        }
        Some(HostAlerts {
            engine: self.clone(),
            host,
        })
    }

    fn emit(&self, alert: Alert) {
        if self.events.try_send(alert).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::warn!(
                "alert queue full: transitions dropped (counted in hostpulse_alert_events_dropped_total)"
            );
        }
    }

    /// Fires `absent` rules of hosts silent for their `after`: called by
    /// the one timer over all hosts. A host in `elsewhere` (online on
    /// another aggregator of the cluster) and attached here no more is
    /// that aggregator's to watch: dropped here, with what fired resolved.
    pub fn tick(&self, now: Instant, elsewhere: &std::collections::HashSet<String>) {
        let mut out = Vec::new();
        {
            let mut hosts = self.hosts.lock().expect("alert state lock");
            let moved: Vec<Arc<str>> = hosts
                .iter()
                .filter(|(h, s)| s.streams == 0 && elsewhere.contains(&***h))
                .map(|(h, _)| h.clone())
                .collect();
            for h in moved {
                tracing::debug!(host = %h, "alert state dropped: the host streams to another aggregator");
                out.extend(drop_host(&mut hosts, &h).into_iter().map(|mut a| {
                    a.moved = true;
                    a
                }));
            }
            for (host, state) in hosts.iter_mut() {
                let silent = now.saturating_duration_since(state.last_seen);
                for &i in &state.rules {
                    let rule = &self.rules[i];
                    if rule.kind != Kind::Absent
                        || silent < rule.after
                        || state.absent.contains_key(&i)
                    {
                        continue;
                    }
                    let at = SystemTime::now();
                    let alert = build(
                        rule,
                        host,
                        state.seen(),
                        None,
                        silent.as_secs_f64().floor(),
                        at - silent,
                    );
                    state.absent.insert(i, Box::new(alert.clone()));
                    out.push(alert);
                }
            }
        }
        for a in out {
            self.emit(a);
        }
    }

    /// A host forgotten (departed for `hub.forget_after`): its state goes,
    /// and whatever fires for it is resolved.
    pub fn forget(&self, host: &str) {
        let out = {
            let mut hosts = self.hosts.lock().expect("alert state lock");
            drop_host(&mut hosts, host)
        };
        for a in out {
            self.emit(a);
        }
    }

    /// The shortest `after` of the `absent` rules (how often to tick).
    pub fn shortest_after(&self) -> Option<Duration> {
        self.rules
            .iter()
            .filter(|r| r.kind == Kind::Absent)
            .map(|r| r.after)
            .min()
    }
}

impl HostState {
    fn seen(&self) -> Seen<'_> {
        Seen {
            labels: &self.labels,
            top_cpu: &self.top_cpu,
            top_memory: &self.top_memory,
        }
    }
}

/// Removes a host's state; returns its firing alerts, resolved now.
fn drop_host(hosts: &mut HashMap<Arc<str>, HostState>, host: &str) -> Vec<Alert> {
    let Some(state) = hosts.remove(host) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let absent = state.absent.into_values();
    let series = state.series.into_values().filter_map(|s| match s.phase {
        Phase::Firing { alert } => Some(alert),
        _ => None,
    });
    absent
        .chain(series)
        .map(|a| {
            let v = a.value;
            resolve(*a, v, now)
        })
        .collect()
}

/// Least squares line through `points`, evaluated at `at_ms`.
fn fit(points: &VecDeque<(i64, f64)>, at_ms: i64) -> Option<f64> {
    let n = points.len() as f64;
    let t0 = points.front()?.0;
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for (t, v) in points {
        let x = (t - t0) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxx += x * x;
        sxy += x * v;
    }
    let denom = n * sxx - sx * sx;
    if denom.abs() < f64::EPSILON {
        return None;
    }
    let slope = (n * sxy - sx * sy) / denom;
    let intercept = (sy - slope * sx) / n;
    let v = intercept + slope * (at_ms - t0) as f64 / 1000.0;
    v.is_finite().then_some(v)
}

impl Drop for HostAlerts {
    fn drop(&mut self) {
        let mut hosts = self.engine.hosts.lock().expect("alert state lock");
        if let Some(state) = hosts.get_mut(&self.host) {
            state.streams = state.streams.saturating_sub(1);
        }
    }
}

impl HostAlerts {
    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Checks each sample against the host's rules, in order.
    pub fn observe(&self, samples: &[Sample]) {
        let engine = &self.engine;
        let mut out = Vec::new();
        {
            let mut hosts = engine.hosts.lock().expect("alert state lock");
            let Some(state) = hosts.get_mut(&self.host) else {
                return;
            };
            let now = Instant::now();
            let silent = now.saturating_duration_since(state.last_seen);
            state.last_seen = now;
            for (_, firing) in std::mem::take(&mut state.absent) {
                out.push(resolve(
                    *firing,
                    silent.as_secs_f64().floor(),
                    SystemTime::now(),
                ));
            }
            for sample in samples {
                self.observe_one(engine, state, sample, &mut out);
            }
        }
        for a in out {
            engine.emit(a);
        }
    }

    fn observe_one(
        &self,
        engine: &Engine,
        state: &mut HostState,
        sample: &Sample,
        out: &mut Vec<Alert>,
    ) {
        if let Some(p) = &sample.processes {
            state.top_cpu = p.top_cpu.iter().take(TOP_PROCESSES).cloned().collect();
            state.top_memory = p.top_memory.iter().take(TOP_PROCESSES).cloned().collect();
        }
        let t = sample.timestamp_ms;
        let at = from_unix_ms(t);
        let values = Values::of(sample, &engine.fields);
        let HostState {
            labels,
            rules,
            series: all,
            top_cpu,
            top_memory,
            ..
        } = state;
        let seen = || Seen {
            labels,
            top_cpu,
            top_memory,
        };
        for &i in rules.iter() {
            let rule = &engine.rules[i];
            let Some(cond) = &rule.condition else {
                continue;
            };
            let entries = cond.expr.entries(&values);
            if cond.expr.each_field().is_some() && !entries.is_empty() {
                // Entries gone from the list (an unmounted filesystem, a
                // container's interface) are dropped, resolving what fired
                // for them: state stays bounded by what the host has now.
                let gone: Vec<_> = all
                    .keys()
                    .filter(|(r, e)| *r == i && !entries.contains(e))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(Series {
                        phase: Phase::Firing { alert },
                        ..
                    }) = all.remove(&key)
                    {
                        let v = alert.value;
                        out.push(resolve(*alert, v, at));
                    }
                }
            }
            for entry in entries {
                let Some(raw) = cond.expr.eval(&values, entry.as_deref()) else {
                    continue;
                };
                let series = all.entry((i, entry.clone())).or_insert_with(|| Series {
                    phase: Phase::Inactive,
                    last_ms: i64::MIN,
                    points: VecDeque::new(),
                });
                if t <= series.last_ms {
                    // Out of order (a resent backlog overlapping): the
                    // state has moved past it.
                    continue;
                }
                series.last_ms = t;
                let value = match rule.kind {
                    Kind::Predict => {
                        let window_ms = rule.window.as_millis() as i64;
                        let spacing = window_ms / MAX_POINTS as i64;
                        if series
                            .points
                            .back()
                            .is_none_or(|(last, _)| t - last >= spacing)
                        {
                            series.points.push_back((t, raw));
                        }
                        while series
                            .points
                            .front()
                            .is_some_and(|(p, _)| *p < t - window_ms)
                        {
                            series.points.pop_front();
                        }
                        let span = series.points.back().map_or(0, |b| b.0)
                            - series.points.front().map_or(0, |f| f.0);
                        // A line through a few close points predicts noise.
                        if series.points.len() < 3 || span < window_ms / 4 {
                            continue;
                        }
                        let Some(v) = fit(&series.points, t + rule.horizon.as_millis() as i64)
                        else {
                            continue;
                        };
                        v
                    }
                    _ => raw,
                };
                let holds = cond.cmp.holds(value, cond.threshold);
                let phase = std::mem::replace(&mut series.phase, Phase::Inactive);
                series.phase = match phase {
                    Phase::Inactive | Phase::Pending { .. } if !holds => Phase::Inactive,
                    Phase::Inactive | Phase::Pending { .. } => {
                        let since_ms = match phase {
                            Phase::Pending { since_ms } => since_ms,
                            _ => t,
                        };
                        if t - since_ms >= rule.hold.as_millis() as i64 {
                            let alert = build(
                                rule,
                                &self.host,
                                seen(),
                                entry.as_deref(),
                                value,
                                from_unix_ms(since_ms),
                            );
                            out.push(alert.clone());
                            Phase::Firing {
                                alert: Box::new(alert),
                            }
                        } else {
                            Phase::Pending { since_ms }
                        }
                    }
                    Phase::Firing { alert } => {
                        if rule.still_firing(value) {
                            Phase::Firing { alert }
                        } else {
                            out.push(resolve(*alert, value, at));
                            Phase::Inactive
                        }
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
