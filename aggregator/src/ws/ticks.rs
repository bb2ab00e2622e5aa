//! Shared clocks for every WebSocket connection of a server, so that
//! thousands of connections cost a few timers, not three each:
//!
//! * [`Wheel`]: batching windows and throttled updates falling due. An
//!   outbox asks to be woken at a time (rounded up to the millisecond); one
//!   task sleeps until the earliest such time and wakes every outbox due then,
//!   so connections whose windows close together are woken in one sweep.
//!   Batching windows are aligned on the wheel's clock
//!   ([`Wheel::window_close`]): a window of `batch` closes at the next
//!   multiple of `batch` since the wheel's origin, so every connection with
//!   that window closes in the same sweep and drains the same updates (which
//!   lets them share one batch frame, see [`crate::ws::shared`]).
//! * the coarse clock ([`Ticks::after`]): write deadlines. One tick every
//!   [`COARSE`]; a write that is still blocked after enough ticks has timed
//!   out. A write that completes at once (the usual case) never waits on it.
//! * heartbeats ([`Ticks::heartbeat`]): connections are spread over
//!   [`HEARTBEAT_SLOTS`] slots, and one task beats a slot every
//!   `ping_interval / HEARTBEAT_SLOTS`, so each connection hears its slot once
//!   per ping interval and the pings of a server are spread over it. A beat
//!   is told through the connection's outbox (its next drain says so), so an
//!   idle connection waits on nothing but its outbox and its socket; a slot
//!   holds a weak pointer per outbox, dropped at the first beat after the
//!   connection has gone. On shutdown every outbox is woken, and its session
//!   sees the signal.
//!
//! The tasks stop on the server's shutdown signal.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Outboxes of one heartbeat slot.
type Slot = Mutex<Vec<Weak<Outbox>>>;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::ws::outbox::Outbox;

/// Granularity of write deadlines.
pub const COARSE: Duration = Duration::from_millis(100);

/// Heartbeat slots: a server's pings go out in this many groups, spread over
/// the ping interval.
pub const HEARTBEAT_SLOTS: usize = 16;

/// Outboxes to wake, by the millisecond they are due.
#[derive(Debug)]
pub struct Wheel {
    origin: Instant,
    slots: Mutex<BTreeMap<u64, Vec<Weak<Outbox>>>>,
    /// Wakes the driver when a time earlier than the one it sleeps for is
    /// asked.
    earlier: Notify,
}

impl Wheel {
    /// A wheel with no driver yet (see [`Wheel::drive`]).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            slots: Mutex::new(BTreeMap::new()),
            earlier: Notify::new(),
        })
    }

    /// Wakes `outbox` at `at` or within the millisecond after it.
    pub fn wake_at(&self, at: Instant, outbox: Weak<Outbox>) {
        let slot = at
            .saturating_duration_since(self.origin)
            .as_micros()
            .div_ceil(1000) as u64;
        let mut slots = self.slots.lock().expect("wheel lock");
        let earliest = slots.first_key_value().is_none_or(|(&s, _)| slot < s);
        slots.entry(slot).or_default().push(outbox);
        drop(slots);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// When a batching window of `window` open at `now` closes: the next
    /// multiple of `window` on the wheel's clock strictly after `now` (so a
    /// window opened just before a close waits for the next one rather than
    /// none). Every connection with the same window closes together.
    pub fn window_close(&self, now: Instant, window: Duration) -> Instant {
        let w = window.as_micros().max(1);
        let since = now.saturating_duration_since(self.origin).as_micros();
        let close = (since / w + 1) * w;
        self.origin + Duration::from_micros(close as u64)
    }

    /// The tick of the window of `window` that has closed last at `now`: the
    /// last multiple of `window` on the wheel's clock at or before `now`, in
    /// milliseconds since the wheel's origin. Connections woken by the same
    /// close see the same tick.
    pub fn window_tick(&self, now: Instant, window: Duration) -> u64 {
        let w = window.as_millis().max(1);
        let since = now.saturating_duration_since(self.origin).as_millis();
        (since / w * w) as u64
    }

    /// Outboxes waiting for a wake-up.
    pub fn pending(&self) -> usize {
        let slots = self.slots.lock().expect("wheel lock");
        slots.values().map(Vec::len).sum()
    }

    /// Sleeps until the earliest time asked and wakes every outbox due by
    /// then, until `shutdown`.
    pub async fn drive(self: Arc<Self>, shutdown: CancellationToken) {
        let mut due: Vec<Weak<Outbox>> = Vec::new();
        loop {
            let next = {
                let slots = self.slots.lock().expect("wheel lock");
                slots
                    .first_key_value()
                    .map(|(&s, _)| self.origin + Duration::from_millis(s))
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = self.earlier.notified() => continue,
                _ = sleep_until_opt(next) => {}
            }
            let now = Instant::now()
                .saturating_duration_since(self.origin)
                .as_millis() as u64;
            {
                let mut slots = self.slots.lock().expect("wheel lock");
                while let Some(entry) = slots.first_entry() {
                    if *entry.key() > now {
                        break;
                    }
                    let mut outboxes = entry.remove();
                    if due.is_empty() {
                        due = std::mem::take(&mut outboxes);
                    } else {
                        due.append(&mut outboxes);
                    }
                }
            }
            for outbox in due.drain(..) {
                if let Some(outbox) = outbox.upgrade() {
                    outbox.wake();
                }
            }
            // A sweep over thousands of connections leaves no large buffer.
            if due.capacity() > 4096 {
                due = Vec::new();
            }
        }
    }
}

/// The server's shared clocks: the wheel, the coarse clock and the
/// heartbeat slots.
#[derive(Debug)]
pub struct Ticks {
    /// Batching windows and throttles.
    pub wheel: Arc<Wheel>,
    coarse: watch::Receiver<u64>,
    heartbeats: Arc<[Slot]>,
}

impl Ticks {
    /// Starts the clocks' tasks on the current runtime; they stop on
    /// `shutdown`.
    pub fn start(ping_interval: Duration, shutdown: &CancellationToken) -> Self {
        let wheel = Wheel::new();
        tokio::spawn(wheel.clone().drive(shutdown.clone()));

        let (coarse_tx, coarse) = watch::channel(0u64);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COARSE);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => coarse_tx.send_modify(|n| *n += 1),
                }
            }
        });

        let heartbeats: Arc<[Slot]> = (0..HEARTBEAT_SLOTS).map(|_| Slot::default()).collect();
        let slots = heartbeats.clone();
        let stop = shutdown.clone();
        let step = (ping_interval / HEARTBEAT_SLOTS as u32).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + step, step);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for slot in (0..HEARTBEAT_SLOTS).cycle() {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => sweep(&slots[slot], Outbox::beat),
                }
            }
            // Every session hears the shutdown at its next wake-up.
            for slot in slots.iter() {
                sweep(slot, Outbox::wake);
            }
        });
        Self {
            wheel,
            coarse,
            heartbeats,
        }
    }

    /// Beats connection `conn`'s outbox once per ping interval (see
    /// [`Outbox::beat`]) while it lives, and wakes it on shutdown.
    pub fn heartbeat(&self, conn: u64, outbox: &Arc<Outbox>) {
        let mut slot = self.heartbeats[conn as usize % HEARTBEAT_SLOTS]
            .lock()
            .expect("heartbeat lock");
        // Gone connections are dropped before the slot grows.
        if slot.len() == slot.capacity() {
            slot.retain(|o| o.strong_count() > 0);
        }
        slot.push(Arc::downgrade(outbox));
    }

    /// Completes `d` (at most one [`COARSE`] tick more) after it is first
    /// polled; never, if the server is shutting down. Nothing is done until
    /// then: a write that completes at once never pays for its deadline.
    pub fn after(&self, d: Duration) -> impl Future<Output = ()> + Send + '_ {
        // One tick more: the first may come at once.
        let ticks = (d.as_millis().div_ceil(COARSE.as_millis()) as u64) + 1;
        async move {
            let mut clock = self.coarse.clone();
            let start = *clock.borrow_and_update();
            loop {
                if clock.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if clock.borrow().wrapping_sub(start) >= ticks {
                    return;
                }
            }
        }
    }
}

/// Calls `f` on every live outbox of `slot`, dropping the gone ones.
fn sweep(slot: &Slot, f: fn(&Outbox)) {
    let mut slot = slot.lock().expect("heartbeat lock");
    slot.retain(|o| match o.upgrade() {
        Some(o) => {
            f(&o);
            true
        }
        None => false,
    });
    if slot.capacity() > 2 * slot.len() + 64 {
        slot.shrink_to_fit();
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Arc<Outbox> {
        Outbox::new(1 << 20, Duration::from_secs(5), Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn the_wheel_wakes_each_outbox_at_its_time_not_before() {
        let shutdown = CancellationToken::new();
        let wheel = Wheel::new();
        tokio::spawn(wheel.clone().drive(shutdown.clone()));
        let (early, late) = (outbox(), outbox());
        let start = Instant::now();
        wheel.wake_at(start + Duration::from_millis(50), Arc::downgrade(&late));
        wheel.wake_at(start + Duration::from_millis(20), Arc::downgrade(&early));
        early.notified().await;
        let woke = start.elapsed();
        assert!(
            woke >= Duration::from_millis(20) && woke < Duration::from_millis(22),
            "{woke:?}"
        );
        assert_eq!(wheel.pending(), 1);
        late.notified().await;
        let woke = start.elapsed();
        assert!(
            woke >= Duration::from_millis(50) && woke < Duration::from_millis(52),
            "{woke:?}"
        );
        assert_eq!(wheel.pending(), 0);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn one_sweep_wakes_every_outbox_due_together() {
        let shutdown = CancellationToken::new();
        let wheel = Wheel::new();
        tokio::spawn(wheel.clone().drive(shutdown.clone()));
        let outboxes: Vec<_> = (0..1000).map(|_| outbox()).collect();
        let at = Instant::now() + Duration::from_millis(50);
        for o in &outboxes {
            wheel.wake_at(at, Arc::downgrade(o));
        }
        for o in &outboxes {
            tokio::time::timeout(Duration::from_millis(51), o.notified())
                .await
                .expect("woken by the sweep");
        }
        // A dropped outbox is skipped.
        let gone = outbox();
        wheel.wake_at(
            Instant::now() + Duration::from_millis(5),
            Arc::downgrade(&gone),
        );
        drop(gone);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(wheel.pending(), 0);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn windows_close_on_multiples_of_their_length_since_the_origin() {
        let wheel = Wheel::new();
        let origin = wheel.origin;
        let ms = Duration::from_millis;
        let w = ms(50);
        // Opened anywhere within a window, it closes at that window's end;
        // opened exactly at a close, at the next one.
        for (opened, closes) in [(0, 50), (1, 50), (49, 50), (50, 100), (73, 100), (120, 150)] {
            assert_eq!(
                wheel.window_close(origin + ms(opened), w),
                origin + ms(closes),
                "opened at {opened} ms"
            );
        }
        assert_eq!(wheel.window_close(origin + ms(10), ms(30)), origin + ms(30));
        // The tick a drain falls under is the last close before it.
        assert_eq!(wheel.window_tick(origin + ms(50), w), 50);
        assert_eq!(wheel.window_tick(origin + ms(99), w), 50);
        assert_eq!(wheel.window_tick(origin + ms(100), w), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn outboxes_whose_windows_open_apart_are_woken_together_at_the_close() {
        let shutdown = CancellationToken::new();
        let wheel = Wheel::new();
        tokio::spawn(wheel.clone().drive(shutdown.clone()));
        let window = Duration::from_millis(50);
        let batched = || {
            Outbox::with_window(
                1 << 20,
                Duration::from_secs(5),
                Arc::default(),
                window,
                Some(wheel.clone()),
            )
        };
        let (a, b) = (batched(), batched());
        let update = |seq| {
            let now = std::time::SystemTime::now();
            Arc::new(crate::update::Update::new(
                "t".into(),
                seq,
                now,
                now,
                crate::update::Payload::Other(serde_json::json!(seq)),
            ))
        };
        tokio::time::advance(Duration::from_millis(7)).await;
        a.push_update(&update(1), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(30)).await;
        b.push_update(&update(1), Duration::ZERO);
        assert_eq!(wheel.pending(), 2);
        tokio::time::timeout(window, a.notified())
            .await
            .expect("a woken when its window closes");
        let woke = Instant::now();
        assert_eq!(woke, wheel.origin + window, "a's window closes on the tick");
        // b, opened 30 ms later, closes in the same sweep.
        tokio::time::timeout(Duration::ZERO, b.notified())
            .await
            .expect("b woken in the same sweep");
        assert_eq!(wheel.pending(), 0);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_never_early_and_at_most_a_tick_late() {
        let shutdown = CancellationToken::new();
        let ticks = Ticks::start(Duration::from_secs(15), &shutdown);
        tokio::time::sleep(Duration::from_millis(37)).await;
        let start = Instant::now();
        ticks.after(Duration::from_millis(250)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(
            waited <= Duration::from_millis(250) + 2 * COARSE,
            "{waited:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn each_connection_hears_its_heartbeat_once_per_interval() {
        let shutdown = CancellationToken::new();
        let interval = Duration::from_millis(1600);
        let ticks = Ticks::start(interval, &shutdown);
        let outboxes: Vec<_> = (0..HEARTBEAT_SLOTS as u64 * 2)
            .map(|c| {
                let o = outbox();
                ticks.heartbeat(c, &o);
                o
            })
            .collect();
        let start = Instant::now();
        let mut items = Vec::new();
        for round in 1..=3u32 {
            for o in &outboxes {
                tokio::time::timeout(interval, o.notified())
                    .await
                    .expect("woken for its beat within an interval");
                assert!(o.drain(&mut items).beat, "woken for its beat");
                assert!(!o.drain(&mut items).beat, "one beat, told once");
            }
            // Every slot has been beaten once more by the end of the round.
            assert!(start.elapsed() <= interval * round, "{:?}", start.elapsed());
        }
        // The last slot's third beat.
        let step = interval / HEARTBEAT_SLOTS as u32;
        assert!(
            start.elapsed() >= interval * 3 - step,
            "{:?}",
            start.elapsed()
        );
        assert!(items.is_empty());
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_every_outbox_and_gone_ones_are_dropped() {
        let shutdown = CancellationToken::new();
        let ticks = Ticks::start(Duration::from_secs(15), &shutdown);
        let mut outboxes: Vec<_> = (0..100u64)
            .map(|c| {
                let o = outbox();
                ticks.heartbeat(c, &o);
                o
            })
            .collect();
        // Half go: their slots drop them at their next beat.
        let live = outboxes.split_off(50);
        drop(outboxes);
        let mut items = Vec::new();
        for o in &live {
            // The first beat of every slot.
            tokio::time::timeout(Duration::from_secs(16), o.notified())
                .await
                .expect("beaten");
            assert!(o.drain(&mut items).beat);
        }
        let held: usize = ticks
            .heartbeats
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert_eq!(held, 50, "gone outboxes dropped at their slot's beat");
        shutdown.cancel();
        for o in &live {
            tokio::time::timeout(Duration::from_millis(10), o.notified())
                .await
                .expect("woken on shutdown");
            assert!(!o.drain(&mut items).beat, "a wake-up, not a beat");
        }
    }
}
