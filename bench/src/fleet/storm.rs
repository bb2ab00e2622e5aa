//! The WebSocket side of the fleet scenarios, on a thread and runtime of
//! its own: groups of clients that connect at once, subscribe, count what
//! they get with a light reader ([`Tally`]), and on a signal all drop their
//! connections and reconnect at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::tally::Tally;
use crate::client::{ClientKind, Conn};

/// One kind of client in a storm.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// Its name in the figures.
    pub(crate) name: &'static str,
    /// Connections.
    pub(crate) clients: usize,
    /// `batch_ms` of their connections (0: none).
    pub(crate) batch_ms: u64,
    /// The pattern of each client.
    pub(crate) patterns: Arc<[String]>,
    /// `history` asked.
    pub(crate) history: u64,
    /// `throttle_ms` (0: none).
    pub(crate) throttle_ms: u64,
    /// Leave (drop the connection) once live: the client came for its
    /// replay, and a bench client following 5,000 topics live would measure
    /// its own reading speed, not the server.
    pub(crate) leave_when_live: bool,
}

/// How a storm goes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) http: SocketAddr,
    pub(crate) kind: ClientKind,
    pub(crate) groups: Vec<Group>,
    /// Rounds: 1 connects once; 2 connects, then drops and reconnects.
    pub(crate) rounds: usize,
    /// A round ends once every client is live (or gone), or after this long.
    pub(crate) settle_timeout: Duration,
    /// Or, for replays that take long, once no client got a history point
    /// for this long.
    pub(crate) stall: Duration,
    /// Time every client stays connected and live before the next round.
    pub(crate) hold: Duration,
}

/// One round of one group.
#[derive(Debug, Default, Clone)]
pub(crate) struct GroupRound {
    pub(crate) clients: usize,
    /// Clients that connected and got their `$sys.subscribed`.
    pub(crate) subscribed: usize,
    /// Clients that got their whole history.
    pub(crate) complete: usize,
    /// Clients whose replay reached, on every topic, the seq it had when
    /// they subscribed (with every point or not).
    pub(crate) caught_up: usize,
    /// Clients live again (whole history, then a live update).
    pub(crate) live: usize,
    pub(crate) asked: u64,
    pub(crate) asked_full: u64,
    pub(crate) got: u64,
    /// Least asked and got by one client.
    pub(crate) min_asked: u64,
    pub(crate) min_got: u64,
    /// Topics (over every client) short of what was asked.
    pub(crate) short_topics: u64,
    /// Of the points short, those missing at the front of their topic's
    /// window (dropped from history before the replay read them); the rest
    /// are holes.
    pub(crate) missing_front: u64,
    pub(crate) updates: u64,
    pub(crate) lagged: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) disorder: u64,
    pub(crate) unlisted: u64,
    pub(crate) malformed: u64,
    /// Connections that failed or ended before the round did.
    pub(crate) failed: usize,
    /// How they failed or ended, and how many each way.
    pub(crate) endings: std::collections::BTreeMap<String, usize>,
    /// Live updates (read lightly): sample time to receipt, and to the
    /// aggregator's ingest, ms.
    pub(crate) staleness: Option<hdrhistogram::Histogram<u64>>,
    pub(crate) to_ingest: Option<hdrhistogram::Histogram<u64>>,
    /// From the round's start to the last client's last history point (or
    /// to its catching up, if points were missing).
    pub(crate) history_secs: f64,
    /// From the round's start to the last client being live (the settle
    /// time; the round's end if some connected client never was).
    pub(crate) settle_secs: f64,
}

/// One round: when it started (both clocks) and each group's account.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    pub(crate) start_us: i64,
    /// When every client was live, or the round gave up (unix µs).
    pub(crate) settled_us: i64,
    pub(crate) groups: Vec<GroupRound>,
}

/// Progress shared by every client of a round.
#[derive(Default)]
struct Progress {
    live: AtomicUsize,
    /// Clients whose connection failed or ended before they were live: the
    /// round does not wait for them.
    gone: AtomicUsize,
    /// History points received by all, to tell a slow replay from a stalled one.
    points: AtomicUsize,
}

/// Runs the storm; returns each round's account.
pub(crate) async fn run(plan: Plan) -> Vec<Round> {
    let total: usize = plan.groups.iter().map(|g| g.clients).sum();
    let (round_tx, round_rx) = watch::channel(0usize);
    let progress: Vec<Arc<Progress>> = (0..plan.rounds).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    let start = Instant::now();
    let mut starts = vec![(start, super::observer::unix_us())];
    for (g, group) in plan.groups.iter().enumerate() {
        for i in 0..group.clients {
            let (group, progress, rounds) = (group.clone(), progress.clone(), round_rx.clone());
            let (http, kind) = (plan.http, plan.kind);
            tasks.push((
                g,
                tokio::spawn(async move { client(http, kind, group, i, progress, rounds).await }),
            ));
        }
    }
    let mut settled = Vec::new();
    for r in 0..plan.rounds {
        let (round_start, _) = starts[r];
        let mut last_points = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let p = &progress[r];
            let points = p.points.load(Ordering::Relaxed);
            if points != last_points.0 {
                last_points = (points, Instant::now());
            }
            if p.live.load(Ordering::Relaxed) + p.gone.load(Ordering::Relaxed) >= total
                || round_start.elapsed() > plan.settle_timeout
                || last_points.1.elapsed() > plan.stall
            {
                break;
            }
        }
        settled.push(super::observer::unix_us());
        tokio::time::sleep(plan.hold).await;
        // Every client drops its connection and (but after the last round)
        // reconnects, all at once.
        starts.push((Instant::now(), super::observer::unix_us()));
        let _ = round_tx.send(r + 1);
    }
    let mut rounds: Vec<Round> = (0..plan.rounds)
        .map(|r| Round {
            start_us: starts[r].1,
            settled_us: settled[r],
            groups: plan
                .groups
                .iter()
                .map(|g| GroupRound {
                    clients: g.clients,
                    min_asked: u64::MAX,
                    min_got: u64::MAX,
                    ..GroupRound::default()
                })
                .collect(),
        })
        .collect();
    for (g, task) in tasks {
        let Ok(tallies) = task.await else { continue };
        for (r, tally) in tallies.into_iter().enumerate() {
            let (round_start, start_us) = starts[r];
            // A client still connected but not live counts as settling no
            // sooner than the round's end; one whose connection ended is
            // counted under `failed` and `not_live` instead.
            let round_secs = (settled[r] - start_us) as f64 / 1e6;
            let a = &mut rounds[r].groups[g];
            let (tally, ended) = tally;
            let gone = ended.is_some();
            if let Some(why) = ended {
                a.failed += 1;
                *a.endings.entry(why).or_default() += 1;
            }
            let Some(t) = tally else { continue };
            let since = |at: Option<Instant>| at.map(|at| (at - round_start).as_secs_f64());
            a.subscribed += usize::from(t.subscribed);
            a.complete += usize::from(t.history_done_at.is_some());
            a.caught_up += usize::from(t.caught_up_at.is_some());
            a.missing_front += t.missing_front();
            a.live += usize::from(t.is_live());
            a.asked += t.asked;
            a.asked_full += t.asked_full;
            a.got += t.got;
            a.min_asked = a.min_asked.min(t.asked);
            a.min_got = a.min_got.min(t.got);
            a.short_topics += t.short_topics();
            a.updates += t.updates;
            a.lagged += t.lagged;
            a.errors += t.errors;
            if a.first_error.is_none() {
                a.first_error = t.first_error.clone();
            }
            a.disorder += t.disorder;
            for (into, from) in [
                (&mut a.staleness, &t.staleness),
                (&mut a.to_ingest, &t.to_ingest),
            ] {
                let _ = into
                    .get_or_insert_with(super::tally::ms_histogram)
                    .add(from);
            }
            a.unlisted += t.unlisted;
            a.malformed += t.malformed;
            let (history, live) = (
                since(t.history_done_at.or(t.caught_up_at)),
                since(t.live_at),
            );
            if !gone || history.is_some() {
                a.history_secs = a.history_secs.max(history.unwrap_or(round_secs));
            }
            if !gone || live.is_some() {
                a.settle_secs = a.settle_secs.max(live.unwrap_or(round_secs));
            }
        }
    }
    for r in &mut rounds {
        for a in &mut r.groups {
            a.min_asked = a.min_asked.min(a.asked);
            a.min_got = a.min_got.min(a.got);
        }
    }
    rounds
}

/// One round of one client: its tally (`None`: it never connected and
/// subscribed) and, if its connection ended before the round did, how.
type Outcome = (Option<Tally>, Option<String>);

/// One client through every round.
async fn client(
    http: SocketAddr,
    kind: ClientKind,
    group: Group,
    i: usize,
    progress: Vec<Arc<Progress>>,
    mut rounds: watch::Receiver<usize>,
) -> Vec<Outcome> {
    let url = format!("ws://{http}/ws?batch_ms={}", group.batch_ms);
    let mut request = format!(
        "{{\"action\":\"subscribe\",\"topic\":\"{}\",\"history\":{}",
        group.patterns[i], group.history
    );
    if group.throttle_ms > 0 {
        request.push_str(&format!(",\"throttle_ms\":{}", group.throttle_ms));
    }
    request.push('}');
    let mut out = Vec::new();
    for (r, p) in progress.iter().enumerate() {
        let outcome = one_round(&url, kind, &request, &group, p, &mut rounds, r).await;
        if outcome.1.is_some() && !outcome.0.as_ref().is_some_and(Tally::is_live) {
            p.gone.fetch_add(1, Ordering::Relaxed);
        }
        out.push(outcome);
        // Whatever happened, wait for the round to end before the next.
        let _ = rounds.wait_for(|n| *n > r).await;
    }
    out
}

async fn one_round(
    url: &str,
    kind: ClientKind,
    request: &str,
    group: &Group,
    progress: &Progress,
    rounds: &mut watch::Receiver<usize>,
    r: usize,
) -> Outcome {
    let connect = async {
        let mut conn = Conn::connect(url, kind).await?;
        conn.send_text(request).await?;
        anyhow::Ok(conn)
    };
    let mut conn = tokio::select! {
        c = connect => match c {
            Ok(c) => c,
            Err(e) => {
                let mut why = format!("connect: {e}");
                why.truncate(80);
                return (None, Some(why));
            }
        },
        _ = rounds.wait_for(|n| *n > r) => {
            return (None, Some("not connected by the round's end".into()));
        }
    };
    let mut tally = Tally::new(group.history);
    loop {
        let (got_before, live_before) = (tally.got, tally.is_live());
        tokio::select! {
            read = conn.read(|data| tally.frame(data, Instant::now())) => {
                if !matches!(read, Ok(true)) {
                    let why = conn.ended.map_or("error".to_string(), |e| e.to_string());
                    return (Some(tally), Some(why));
                }
            }
            _ = rounds.wait_for(|n| *n > r) => break,
        }
        progress
            .points
            .fetch_add((tally.got - got_before) as usize, Ordering::Relaxed);
        if tally.is_live() && !live_before {
            progress.live.fetch_add(1, Ordering::Relaxed);
            if group.leave_when_live {
                break;
            }
        }
    }
    // Dropping `conn` closes the TCP connection without a close handshake,
    // as a browser tab that is closed or reloaded may.
    (Some(tally), None)
}
