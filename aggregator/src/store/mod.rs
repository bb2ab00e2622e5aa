//! The embedded store: every numeric field of every host, kept on disk in
//! three tiers (per-second raw values, 1-minute and 1-hour rollups), so
//! history outlives a restart. Configured by `[storage]` ([`StorageConfig`]);
//! off without a `dir`.
//!
//! Ingest hands each batch's samples to [`StoreHandle::put`] before it
//! acknowledges the batch; in a cluster the hub hands every host update it
//! takes from a peer to [`StoreHandle::offer_peer`], so any node answers
//! range queries for any host. A queue bounded in batches and in bytes
//! (`storage.queue`, `storage.queue_bytes`) feeds the store's own thread.
//! When it is full, ingest waits for room (the agent keeps its batch until
//! acknowledged, and acks ask agents to sample less often while the queue
//! is `storage.overload_queue_fraction` full), so a store behind ingest
//! slows it instead of losing samples; the hub does not wait, and drops
//! (and counts) a peer's update that does not fit. That thread
//! ([`writer`]) buffers rows in memory and writes them every `flush_interval_ms` in one transaction
//! ([`engine`]: redb, chosen by measurement), so a SIGKILL loses at most one
//! interval and never leaves a half-written flush. A flush is one record of
//! a log; each series' rows move from the log into the per-series tables
//! once per `checkpoint_interval_ms`, a slice of the series with each
//! flush ([`checkpoint`], [`recent`]), and a start after a crash replays
//! the log left. A marker file says
//! whether the last run shut down cleanly; an unclean start is logged, and
//! windows it left open are sealed. Retention and `max_disk_bytes` are kept
//! by [`maintain`].
//!
//! Reading: [`query::series`] returns the points of one host's field in a
//! range at a step, from the tier the step calls for. It reads committed
//! data only (MVCC: never blocked by the writer). It is also the seam for
//! the in-memory history (`crate::history`), which could fall back to it
//! for ranges older than it holds. [`history`] keeps the hub's in-memory
//! history across a clean restart, for WebSocket `history`/`since`.
//!
//! Files: [`config`] `[storage]`; [`tier`] the tiers and rows; [`series`]
//! field names; [`codec`] block and chunk bytes; [`chunks`] the open
//! chunks, grouped per run of series; [`rollup`] min/max/sum/
//! count/last; [`engine`] the key-value engine; [`read`] reading a series
//! back; [`writer`] the write path; [`recent`] the log and the rows since
//! the last checkpoint; [`maintain`] retention and the disk
//! bound; [`query`] range queries.

pub mod checkpoint;
pub mod chunks;
pub mod codec;
pub mod config;
pub mod engine;
pub mod flush;
pub mod history;
pub mod logfiles;
pub mod maintain;
pub mod processes;
pub mod query;
pub mod read;
pub mod recent;
pub mod rollup;
pub mod series;
pub mod stamps;
pub mod tier;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hostpulse_proto::Sample;

use crate::update::Update;

pub use config::StorageConfig;
pub use tier::Tier;

use engine::Engine;
use writer::Writer;

/// File present while the store is closed cleanly (removed while running).
pub const CLEAN_MARKER: &str = "clean-shutdown";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, a full disk, a corrupt file).
    #[error("store engine: {0}")]
    Engine(String),
    /// Stored bytes did not decode.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// The data directory could not be used.
    #[error("store directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of the store, read by `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Raw values written to disk.
    pub values_written: AtomicU64,
    /// Flush transactions.
    pub flushes: AtomicU64,
    /// Time spent in flushes, µs.
    pub flush_micros: AtomicU64,
    /// Duration of the latest flush, µs.
    pub last_flush_micros: AtomicU64,
    /// Flushes that failed (their rows stay in memory for the next).
    pub flush_errors: AtomicU64,
    /// Raw values dropped because flushes kept failing for a whole
    /// rotation (memory would otherwise grow without bound).
    pub values_lost: AtomicU64,
    /// Samples not stored: a peer's updates that found the queue full (the
    /// hub never waits), or any after the writer ended unstopped.
    pub dropped_samples: AtomicU64,
    /// Batches of ingest that waited for room in the queue.
    pub waits: AtomicU64,
    /// Their time waiting, µs.
    pub wait_micros: AtomicU64,
    /// Batches in the queue to the writer.
    pub queued: AtomicU64,
    /// Their bytes as received (MessagePack; a peer's update: its JSON).
    pub queued_bytes: AtomicU64,
    /// Values older than their series' newest, dropped.
    pub late: AtomicU64,
    /// Blocks deleted by retention.
    pub expired_blocks: AtomicU64,
    /// Blocks deleted to stay under `max_disk_bytes`.
    pub evicted_blocks: AtomicU64,
    /// Bytes of those blocks.
    pub evicted_bytes: AtomicU64,
    /// Bytes in use in the store's file.
    pub used_bytes: AtomicU64,
    /// Size of the store's file.
    pub file_bytes: AtomicU64,
}

impl StoreStats {
    /// Reads the engine's bytes in use (once they are known) and file
    /// size into the gauges.
    pub(crate) fn measure(&self, engine: &dyn Engine) -> Result<(), StoreError> {
        if let Some(used) = engine.used_bytes()? {
            self.used_bytes.store(used, Ordering::Relaxed);
        }
        self.file_bytes
            .store(engine.file_bytes(), Ordering::Relaxed);
        Ok(())
    }
}

enum Msg {
    /// A batch's samples, and its weight in the queue (its bytes as
    /// received, [`Room::weight`]).
    Samples(Arc<str>, Vec<Sample>, u32),
    /// A host update another aggregator produced (cluster mode), and its
    /// weight in the queue.
    Peer(Arc<Update>, u32),
    /// Flush and end the thread.
    Stop,
}

/// The queue's room towards the writer: one permit per batch
/// (`storage.queue`) and one per byte as received (`storage.queue_bytes`).
/// A sender takes both before it sends; the writer gives them back as it
/// takes the message.
struct Room {
    slots: tokio::sync::Semaphore,
    bytes: tokio::sync::Semaphore,
    /// Permits of each, when the queue is empty.
    max_slots: usize,
    max_bytes: u32,
    /// `storage.overload_queue_fraction`.
    overload: f64,
    /// Set by [`Store::close`] before it closes the semaphores: a sender
    /// refused from then on is told the store stopped (and the agent keeps
    /// its batch), not that its samples were dropped.
    stopping: std::sync::atomic::AtomicBool,
}

impl Room {
    fn new(config: &StorageConfig) -> Self {
        let max_slots = config.queue.min(tokio::sync::Semaphore::MAX_PERMITS);
        let max_bytes = u32::try_from(config.queue_bytes).unwrap_or(u32::MAX);
        Self {
            slots: tokio::sync::Semaphore::new(max_slots),
            bytes: tokio::sync::Semaphore::new(max_bytes as usize),
            max_slots,
            max_bytes,
            overload: config.overload_queue_fraction,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The permits a batch of `bytes` holds: a batch larger than the whole
    /// bound waits for an empty queue (it would never fit otherwise), and
    /// an empty batch still holds some.
    fn weight(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .max(64)
            .min(self.max_bytes)
    }

    /// Takes room for a batch of `weight` now, if there is some.
    fn try_take(&self, weight: u32) -> bool {
        let Ok(slot) = self.slots.try_acquire() else {
            return false;
        };
        let Ok(bytes) = self.bytes.try_acquire_many(weight) else {
            return false;
        };
        slot.forget();
        bytes.forget();
        true
    }

    /// Waits for room for a batch of `weight`; false once the queue closed.
    async fn take(&self, weight: u32) -> bool {
        let Ok(slot) = self.slots.acquire().await else {
            return false;
        };
        let Ok(bytes) = self.bytes.acquire_many(weight).await else {
            return false;
        };
        slot.forget();
        bytes.forget();
        true
    }

    /// Gives the room of `batches` of `weight` in all back, waking as many
    /// senders waiting as it fits.
    fn give(&self, batches: usize, weight: u64) {
        self.slots.add_permits(batches);
        self.bytes
            .add_permits(usize::try_from(weight).unwrap_or(usize::MAX));
    }

    /// Wakes every sender waiting and refuses every later one.
    fn close(&self) {
        self.slots.close();
        self.bytes.close();
    }

    /// How full the queue is, in batches or in bytes whichever is fuller,
    /// from 0 (empty) to 1 (senders wait).
    fn fill(&self) -> f64 {
        let slots = 1.0 - self.slots.available_permits() as f64 / self.max_slots as f64;
        let bytes = 1.0 - self.bytes.available_permits() as f64 / f64::from(self.max_bytes);
        slots.max(bytes)
    }
}

/// The store has stopped (the aggregator is shutting down): the samples
/// were not taken, and must not be acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("the store has stopped")]
pub struct StoreStopped;

/// The ingest side: hands samples to the writer thread, waiting for room in
/// its queue when it is full.
#[derive(Clone)]
pub struct StoreHandle {
    tx: SyncSender<Msg>,
    stats: Arc<StoreStats>,
    room: Arc<Room>,
}

impl StoreHandle {
    /// Queues `samples` of `host` (`bytes` as received) for the store,
    /// waiting while the queue is full, in batches or in bytes: what an
    /// agent was acknowledged is stored, and a store behind ingest slows
    /// the agents (their batches wait in their spools) instead of losing
    /// samples. The time waited is counted. Fails only once the store
    /// stopped; if its writer ended without being stopped (a bug), the
    /// samples are dropped and counted, and the live path goes on.
    pub async fn put(
        &self,
        host: Arc<str>,
        samples: Vec<Sample>,
        bytes: usize,
    ) -> Result<(), StoreStopped> {
        let weight = self.room.weight(bytes);
        if !self.room.try_take(weight) {
            let started = Instant::now();
            let took = self.room.take(weight).await;
            self.stats.waits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .wait_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            if !took {
                return self.refused(samples.len() as u64);
            }
        }
        let n = samples.len() as u64;
        self.send(Msg::Samples(host, samples, weight), weight, n)
    }

    /// Queues a host update of another aggregator, as the hub took it, so
    /// every node of a cluster stores every host. The hub never waits: when
    /// the queue is full the update is dropped and counted. Decoded on the
    /// store's thread, not the caller's.
    pub fn offer_peer(&self, update: &Arc<Update>) {
        let weight = self.room.weight(update.json.len());
        if !self.room.try_take(weight) {
            self.stats.dropped_samples.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = self.send(Msg::Peer(update.clone(), weight), weight, 1);
    }

    /// How full the queue is, from 0 to 1 (ingest waits).
    pub fn fill(&self) -> f64 {
        self.room.fill()
    }

    /// Whether the queue is full enough (`storage.overload_queue_fraction`)
    /// that acks should ask agents to sample less often.
    pub fn overloaded(&self) -> bool {
        self.room.fill() >= self.room.overload
    }

    /// Sends a message that holds room: the channel has a place for each
    /// permit, so it is never full.
    fn send(&self, msg: Msg, weight: u32, samples: u64) -> Result<(), StoreStopped> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.stats
            .queued_bytes
            .fetch_add(u64::from(weight), Ordering::Relaxed);
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(_) => {
                release(&self.stats, &self.room, weight);
                self.refused(samples)
            }
        }
    }

    /// Samples the queue could not take: the caller must not acknowledge
    /// them while the store stops; a writer that ended on its own drops
    /// them (counted).
    fn refused(&self, samples: u64) -> Result<(), StoreStopped> {
        if self.room.stopping.load(Ordering::Acquire) {
            return Err(StoreStopped);
        }
        self.stats
            .dropped_samples
            .fetch_add(samples, Ordering::Relaxed);
        Ok(())
    }
}

/// Takes a batch of `weight` out of the queue's counts and gives its room
/// back (the writer took it, or it was not sent).
fn release(stats: &StoreStats, room: &Room, weight: u32) {
    release_many(stats, room, 1, u64::from(weight));
}

/// [`release`] for `batches` of `weight` in all.
fn release_many(stats: &StoreStats, room: &Room, batches: usize, weight: u64) {
    if batches == 0 {
        return;
    }
    stats.queued.fetch_sub(batches as u64, Ordering::Relaxed);
    stats.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
    room.give(batches, weight);
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").finish_non_exhaustive()
    }
}

/// A peer's `host.<h>.<metric>` update as a sample of that one family.
fn sample_of(update: &Update) -> Option<(Arc<str>, Sample)> {
    #[derive(serde::Deserialize)]
    struct Envelope<T> {
        payload: T,
    }
    fn payload<T: serde::de::DeserializeOwned>(json: &str) -> Option<T> {
        serde_json::from_str::<Envelope<T>>(json)
            .ok()
            .map(|e| e.payload)
    }
    let (host, metric) = update.topic.strip_prefix("host.")?.rsplit_once('.')?;
    let json = update.json.as_str();
    let mut s = Sample {
        seq: update.seq,
        timestamp_ms: update.taken_ms()?,
        ..Sample::default()
    };
    match metric {
        "cpu" => s.cpu = Some(payload(json)?),
        "memory" => s.memory = Some(payload(json)?),
        "load" => s.load = Some(payload(json)?),
        "processes" => s.processes = Some(payload(json)?),
        "network" => s.network = Some(payload(json)?),
        "disk" => s.disk = Some(payload(json)?),
        "filesystems" => s.filesystems = Some(payload(json)?),
        "system" => s.system = Some(payload(json)?),
        "temperatures" => s.temperatures = Some(payload(json)?),
        _ => return None,
    }
    Some((host.into(), s))
}

/// What readers of the store need: the engine, the counters, the limits.
#[derive(Clone)]
pub struct StoreView {
    /// For queries (reads committed data only).
    pub engine: Arc<dyn Engine>,
    /// Rows flushed since the writer's last checkpoint, which queries read
    /// beside the engine's tables.
    pub recent: Arc<recent::Recent>,
    /// Counters.
    pub stats: Arc<StoreStats>,
    /// `[storage]`.
    pub config: Arc<StorageConfig>,
}

/// The store: its writer thread, and what readers need.
pub struct Store {
    handle: StoreHandle,
    view: StoreView,
    thread: Option<JoinHandle<()>>,
    stop: SyncSender<Msg>,
}

/// Unix ms now.
fn now_ms() -> i64 {
    crate::update::unix_ms_now()
}

impl Store {
    /// Opens the store in `config.dir` and starts its writer thread.
    pub fn open(config: &StorageConfig) -> Result<Store, StoreError> {
        let dir = config.dir.as_deref().expect("open only with a dir");
        std::fs::create_dir_all(dir)?;
        // An empty file (touched, or made by a start that died at once)
        // holds no store yet.
        let existed = std::fs::metadata(dir.join(engine::REDB_FILE)).is_ok_and(|m| m.len() > 0);
        let marker = dir.join(CLEAN_MARKER);
        let clean = marker.exists();
        let opened = Instant::now();
        let engine: Arc<dyn Engine> = Arc::new(engine::Redb::open_with(
            dir,
            usize::try_from(config.cache_bytes).unwrap_or(usize::MAX),
            config.writer_nice,
        )?);
        let migrated = maintain::migrate_open(engine.as_ref())?;
        if migrated > 0 {
            tracing::info!(
                chunks = migrated,
                "store: open chunks of an older build moved into groups"
            );
        }
        let replayed = recent::replay(engine.as_ref())?;
        let leftovers = maintain::leftover_windows(engine.as_ref(), now_ms())?;
        if existed && !clean {
            tracing::warn!(dir = %dir.display(), replayed_flushes = replayed, windows_to_seal = leftovers.ended.len(), recovery_ms = opened.elapsed().as_millis() as u64, "store: last shutdown was not clean; recovered to the last flush");
        } else {
            tracing::info!(dir = %dir.display(), new = !existed, windows_to_seal = leftovers.ended.len(), "store opened");
        }
        if clean {
            std::fs::remove_file(&marker)?;
        }
        sync_dir(dir);
        Self::start_with(engine, config.clone(), leftovers)
    }

    /// Starts the writer thread over an open engine (tests, benchmarks).
    pub fn start(engine: Arc<dyn Engine>, config: StorageConfig) -> Result<Store, StoreError> {
        Self::start_with(engine, config, maintain::Leftovers::default())
    }

    /// Starts the writer thread with windows a previous run left to seal.
    fn start_with(
        engine: Arc<dyn Engine>,
        config: StorageConfig,
        leftovers: maintain::Leftovers,
    ) -> Result<Store, StoreError> {
        let stats = Arc::new(StoreStats::default());
        stats.measure(engine.as_ref())?;
        let mut writer = Writer::new(engine.clone(), stats.clone())?;
        writer.set_checkpoint_every(
            (config.checkpoint_interval_ms / config.flush_interval_ms.max(1))
                .clamp(1, u32::MAX as u64) as u32,
        );
        writer.set_flush_interval(config.flush_interval_ms);
        writer.queue_seals(leftovers.ended);
        writer.seal_when_ended(leftovers.open);
        let recent = writer.recent().clone();
        let room = Arc::new(Room::new(&config));
        // A place for every batch the room admits, and one for `Stop`.
        let (tx, rx) = std::sync::mpsc::sync_channel(room.max_slots + 1);
        let thread = {
            let (stats, config, room) = (stats.clone(), config.clone(), room.clone());
            std::thread::Builder::new()
                .name("hostpulse-store".into())
                .spawn(move || write_loop(writer, rx, &config, &stats, &room))?
        };
        Ok(Store {
            handle: StoreHandle {
                tx: tx.clone(),
                stats: stats.clone(),
                room,
            },
            view: StoreView {
                engine,
                recent,
                stats,
                config: Arc::new(config),
            },
            thread: Some(thread),
            stop: tx,
        })
    }

    /// The ingest side.
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// The read side.
    pub fn view(&self) -> StoreView {
        self.view.clone()
    }

    /// Flushes what is buffered, stops the writer and marks the shutdown
    /// clean. Blocks: call it off the async workers.
    pub fn close(mut self) {
        // Senders waiting for room, and any later, are told the store
        // stopped (so their samples are not acknowledged); what is queued
        // is written before the writer stops.
        self.handle.room.stopping.store(true, Ordering::Release);
        self.handle.room.close();
        let _ = self.stop.send(Msg::Stop);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("store: writer thread panicked; shutdown not marked clean");
            return;
        }
        if let Err(e) = self.view.engine.closing() {
            // The next open counts the bytes in use again.
            tracing::warn!(cause = %e, "store: the bytes in use were not saved");
        }
        if let Some(dir) = &self.view.config.dir {
            let marker = dir.join(CLEAN_MARKER);
            match std::fs::write(&marker, b"hostpulse store closed cleanly\n") {
                Ok(()) => {
                    sync_dir(dir);
                    tracing::info!(dir = %dir.display(), "store closed cleanly");
                }
                Err(e) => {
                    tracing::error!(cause = %e, "store: cannot write the clean-shutdown marker")
                }
            }
        }
    }
}

impl Drop for Store {
    /// Dropped without [`Store::close`] (the aggregator failed to start):
    /// the writer is asked to flush and stop, not waited for, and the
    /// shutdown is not marked clean.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.handle.room.stopping.store(true, Ordering::Release);
            self.handle.room.close();
            let _ = self.stop.try_send(Msg::Stop);
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Sets the calling thread's priority `nice` steps below the main
/// thread's (`storage.writer_nice`): under CPU contention the live path
/// (and clients' reads, [`crate::CLIENT_NICE`]) go first; what the store
/// cannot take at once waits in its queue, and once that is half full,
/// acks ask agents to sample less often, and once it is full, ingest waits
/// for the store (agents keep their batches). Without contention it
/// changes nothing. Best effort: on failure the thread keeps its priority.
pub(crate) fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // The main thread's id is the process id.
    let main = Some(rustix::process::getpid());
    if let Ok(base) = rustix::process::getpriority_process(main) {
        let tid = Some(rustix::thread::gettid());
        let _ = rustix::process::setpriority_process(tid, (base + nice).min(19));
    }
}

/// Samples the writer takes between two reads of the clock, at most (once
/// past it, it reads the clock after the message it is in): a flush is
/// late by about their time, well under a millisecond, whatever the
/// number of samples in a batch.
const DRAIN_BEFORE_CLOCK: usize = 64;

/// The writer thread: takes samples until every sender is gone, flushing
/// every interval and maintaining between flushes; flushes once more at
/// the end.
fn write_loop(
    mut writer: Writer,
    rx: Receiver<Msg>,
    config: &StorageConfig,
    stats: &StoreStats,
    room: &Room,
) {
    /// Closes the queue when the loop ends, however it ends: a sender
    /// never waits for room a writer that is gone would give back.
    struct CloseOnEnd<'a>(&'a Room);
    impl Drop for CloseOnEnd<'_> {
        fn drop(&mut self) {
            if !self.0.stopping.load(Ordering::Acquire) {
                tracing::error!(
                    "store: the writer ended without being stopped; samples are dropped (counted) from now on"
                );
            }
            self.0.close();
        }
    }
    let _close = CloseOnEnd(room);
    lower_priority(config.writer_nice);
    let flush_every = Duration::from_millis(config.flush_interval_ms);
    let maintain_every = Duration::from_millis(config.maintenance_interval_ms);
    let mut next_flush = Instant::now() + flush_every;
    let mut next_maintain = Instant::now() + maintain_every.min(Duration::from_secs(5));
    let flush = |writer: &mut Writer| {
        let started = Instant::now();
        if let Err(e) = writer.flush() {
            stats.flush_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(cause = %e, "store: flush failed; its rows stay in memory until their series' checkpoint (a crash before it loses them)");
        }
        stats
            .last_flush_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    };
    let ingest = |writer: &mut Writer, host: &str, s: &Sample| {
        if let Err(e) = writer.ingest(host, s) {
            tracing::error!(cause = %e, %host, "store: sample not stored");
        }
    };
    // The room of the messages taken since it was last given back: given
    // back once per round of messages, so a full queue wakes the senders
    // waiting for it in groups, not one wake-up (and one thread woken) per
    // batch on this thread.
    let held = std::cell::Cell::new((0usize, 0u64));
    let hold = |weight: u32| {
        let (batches, bytes) = held.get();
        held.set((batches + 1, bytes + u64::from(weight)));
    };
    let give_back = || {
        let (batches, bytes) = held.replace((0, 0));
        release_many(stats, room, batches, bytes);
    };
    // Takes one message: the samples it held, none at the end.
    let take = |writer: &mut Writer, msg: Msg| -> Option<usize> {
        match msg {
            Msg::Samples(host, samples, weight) => {
                hold(weight);
                samples.iter().for_each(|s| ingest(writer, &host, s));
                Some(samples.len())
            }
            Msg::Peer(update, weight) => {
                hold(weight);
                match sample_of(&update) {
                    Some((host, s)) => ingest(writer, &host, &s),
                    None => {
                        tracing::debug!(topic = %update.topic, "store: a peer's update did not decode");
                    }
                }
                Some(1)
            }
            Msg::Stop => None,
        }
    };
    'run: loop {
        let wait = next_flush.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                let Some(mut taken) = take(&mut writer, msg) else {
                    break;
                };
                // What else is queued, before the clock is read again (a
                // clock read per sample cost more than the channel).
                while taken < DRAIN_BEFORE_CLOCK {
                    match rx.try_recv() {
                        Ok(msg) => match take(&mut writer, msg) {
                            Some(n) => taken += n.max(1),
                            None => break 'run,
                        },
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => break 'run,
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        give_back();
        let now = Instant::now();
        if now >= next_flush {
            flush(&mut writer);
            stats
                .file_bytes
                .store(writer.engine().file_bytes(), Ordering::Relaxed);
            // From the flush's end: a flush longer than the interval still
            // leaves an interval to take samples in.
            next_flush = Instant::now() + flush_every;
        }
        if now >= next_maintain {
            if let Err(e) = maintain::run(&mut writer, config, stats, now_ms()) {
                tracing::error!(cause = %e, "store: maintenance failed");
            }
            next_maintain = Instant::now() + maintain_every;
        }
    }
    give_back();
    // Senders that took room before the queue closed may send after
    // `Stop`: their batches are taken too (their agents are acknowledged),
    // until all the room is back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while room.slots.available_permits() < room.max_slots {
        if Instant::now() >= deadline {
            tracing::warn!(
                batches = room.max_slots - room.slots.available_permits(),
                "store: batches still held for the queue at shutdown were not written"
            );
            break;
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(msg) => {
                take(&mut writer, msg);
                give_back();
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    if let Err(e) = writer.close_minutes() {
        tracing::error!(cause = %e, "store: open minutes of process tables not written");
    }
    flush(&mut writer);
    // A clean close leaves no log to replay. Windows still waiting to be
    // sealed are sealed over the next run's first minutes.
    if let Err(e) = writer.checkpoint() {
        tracing::error!(cause = %e, "store: last checkpoint failed; the log is replayed at the next start");
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rotation;
