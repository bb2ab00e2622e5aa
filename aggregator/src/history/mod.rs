//! Per-topic history: the last `history_len` updates, for resume and replay,
//! held compactly and read by sessions concurrently with the hub.
//!
//! Each topic's history is a [`TopicHistory`], shared (`Arc`) between the hub,
//! which appends to it and trims it, and any number of readers (WebSocket
//! sessions replaying, cluster catch-up answers), which copy out what they
//! need under a short lock and decode it with no lock held. Nothing a reader
//! does goes through the hub task, so one client's replay never delays
//! another client's live update.
//!
//! The newest updates stay as they were published (the *tail*: shared with
//! the outboxes that are sending them). Older ones are sealed by a background
//! thread into compressed [`Block`]s of [`BLOCK`] updates, a small fraction of
//! their JSON size (by the hub itself when that thread is behind, which
//! slows ingest instead of letting unsealed history pile up). Bytes are counted as held: compressed blocks, and the
//! tail's JSON plus whichever binary forms clients have made of it.
//!
//! Bounds: each topic keeps at most `history_len` updates. Over all topics,
//! [`Histories`] keeps the total within `history_max_bytes` fairly: when the
//! total is over, a byte *level* is set so that topics under it keep all they
//! have and only the ones above it (the busiest, or the largest updates) are
//! trimmed down to it, oldest first. So the `hosts` topic and rarely updated
//! topics keep their whole window however busy the rest of the fleet is. The
//! newest update of a topic is never dropped.

mod block;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

pub use block::Block;

use crate::update::Update;

/// Updates sealed into one block.
pub const BLOCK: usize = 32;
/// Newest updates always kept as published (a live join and `latest` read
/// them without decoding).
const KEEP: usize = 4;
/// Topics waiting to be sealed before the hub stops asking (they are asked
/// again on their next update).
const SEAL_QUEUE: usize = 8192;

/// Counters shared by every topic's history.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Bytes held, over all topics.
    bytes: AtomicI64,
    /// Updates held, over all topics.
    entries: AtomicI64,
    /// Updates dropped by the byte bound (not by `history_len`).
    pub trimmed: AtomicU64,
    /// Blocks sealed.
    pub sealed: AtomicU64,
}

impl HistoryStats {
    /// Bytes held, over all topics.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Updates held, over all topics.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed).max(0) as u64
    }

    fn add(&self, bytes: isize, entries: isize) {
        self.bytes.fetch_add(bytes as i64, Ordering::Relaxed);
        self.entries.fetch_add(entries as i64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Log {
    blocks: VecDeque<Arc<Block>>,
    /// Updates at the front of the first block already dropped.
    skip: usize,
    /// Newest updates, with the bytes each was counted at.
    tail: VecDeque<(Arc<Update>, usize)>,
    len: usize,
    bytes: usize,
    /// Forgotten: the sealer leaves it alone.
    dead: bool,
}

impl Log {
    /// Drops the oldest update (never the newest); its bytes freed.
    fn drop_oldest(&mut self) -> Option<usize> {
        if self.len <= 1 {
            return None;
        }
        self.len -= 1;
        if let Some(front) = self.blocks.front() {
            self.skip += 1;
            if self.skip < front.len() {
                return Some(0);
            }
            let freed = front.bytes();
            self.blocks.pop_front();
            self.skip = 0;
            self.bytes -= freed;
            return Some(freed);
        }
        let (_, counted) = self.tail.pop_front().expect("len > 1");
        self.bytes -= counted;
        Some(counted)
    }

    fn first_seq(&self) -> Option<u64> {
        match self.blocks.front() {
            Some(b) => Some(b.seq(self.skip)),
            None => self.tail.front().map(|(u, _)| u.seq),
        }
    }

    /// Seq of the update at `index` (0: the oldest held).
    fn seq_at(&self, index: usize) -> u64 {
        let mut i = index + self.skip;
        for b in &self.blocks {
            if i < b.len() {
                return b.seq(i);
            }
            i -= b.len();
        }
        self.tail[i].0.seq
    }
}

/// One topic's history. Cheap to share; every method takes a short lock.
#[derive(Debug)]
pub struct TopicHistory {
    log: Mutex<Log>,
    sealing: AtomicBool,
}

impl TopicHistory {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("history lock")
    }

    /// Seq of the oldest update held.
    pub fn first_seq(&self) -> Option<u64> {
        self.log().first_seq()
    }

    /// Updates held.
    pub fn len(&self) -> usize {
        self.log().len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.log().bytes
    }

    /// The newest update.
    pub fn last(&self) -> Option<Arc<Update>> {
        let log = self.log();
        if let Some((u, _)) = log.tail.back() {
            return Some(u.clone());
        }
        let b = log.blocks.back()?.clone();
        drop(log);
        b.updates().last().cloned()
    }

    /// The seq after which the last `n` updates follow: replaying what is
    /// above it replays exactly those `n` (or all, if fewer are held).
    pub fn before_last(&self, n: usize) -> u64 {
        let log = self.log();
        if n >= log.len {
            return log.first_seq().map_or(0, |s| s.saturating_sub(1));
        }
        log.seq_at(log.len - n - 1)
    }

    /// Updates with a seq above `after`, oldest first: as many as make about
    /// `max_bytes` of JSON (at least one, if any), and whether more follow.
    pub fn read_after(&self, after: u64, max_bytes: usize) -> (Vec<Arc<Update>>, bool) {
        // Under the lock, only Arcs are copied; blocks are decoded after.
        enum Part {
            Block(Arc<Block>, usize),
            Tail(Arc<Update>),
        }
        let mut parts = Vec::new();
        let mut budget = 0usize;
        let mut more = false;
        {
            let log = self.log();
            let start = log.blocks.partition_point(|b| b.last_seq() <= after);
            'blocks: for (i, b) in log.blocks.iter().enumerate().skip(start) {
                let from = b.index_after(after).max(if i == 0 { log.skip } else { 0 });
                if budget >= max_bytes {
                    more = true;
                    break 'blocks;
                }
                budget += b.raw_len() * (b.len() - from) / b.len();
                parts.push(Part::Block(b.clone(), from));
            }
            if !more {
                for (u, _) in log.tail.iter().filter(|(u, _)| u.seq > after) {
                    if budget >= max_bytes {
                        more = true;
                        break;
                    }
                    budget += u.json.len();
                    parts.push(Part::Tail(u.clone()));
                }
            }
        }
        let mut out = Vec::new();
        for p in parts {
            match p {
                Part::Block(b, from) => out.extend(b.updates()[from..].iter().cloned()),
                Part::Tail(u) => out.push(u),
            }
        }
        (out, more)
    }

    /// Everything above `after`, oldest first.
    pub fn all_after(&self, after: u64) -> Vec<Arc<Update>> {
        self.read_after(after, usize::MAX).0
    }
}

/// Every topic's history: makes them, bounds them, seals them.
#[derive(Debug)]
pub struct Histories {
    history_len: usize,
    max_bytes: usize,
    /// Topics above this many bytes are trimmed to it on their next update.
    level: usize,
    pushes: u64,
    seal: SyncSender<Arc<TopicHistory>>,
    /// Shared counters.
    pub stats: Arc<HistoryStats>,
}

impl Histories {
    /// Starts the sealing thread; it ends when this is dropped.
    pub fn new(history_len: usize, max_bytes: usize, stats: Arc<HistoryStats>) -> Self {
        let (seal, queue) = std::sync::mpsc::sync_channel(SEAL_QUEUE);
        let sealer_stats = stats.clone();
        std::thread::Builder::new()
            .name("history-sealer".into())
            .spawn(move || sealer(queue, sealer_stats))
            .expect("a thread can be started");
        Histories {
            history_len,
            max_bytes,
            level: usize::MAX,
            pushes: 0,
            seal,
            stats,
        }
    }

    /// A new, empty topic history.
    pub fn topic(&self) -> Arc<TopicHistory> {
        Arc::new(TopicHistory {
            log: Mutex::new(Log::default()),
            sealing: AtomicBool::new(false),
        })
    }

    /// Appends `update` (its seq above every held one), trimming the topic
    /// to its bounds. Returns true when the total is over the byte bound:
    /// then the hub calls [`Histories::rebalance`] with every topic.
    #[must_use]
    pub fn push(&mut self, h: &Arc<TopicHistory>, update: Arc<Update>) -> bool {
        let counted = update.held_bytes();
        let (mut bytes, mut entries) = (counted as isize, 1isize);
        let want_seal;
        let mut trimmed = 0;
        {
            let mut log = h.log();
            log.tail.push_back((update, counted));
            log.len += 1;
            log.bytes += counted;
            while log.len > self.history_len {
                bytes -= log.drop_oldest().expect("len > history_len >= 1") as isize;
                entries -= 1;
            }
            while log.bytes > self.level {
                let Some(freed) = log.drop_oldest() else {
                    break;
                };
                bytes -= freed as isize;
                entries -= 1;
                trimmed += 1;
            }
            want_seal = log.tail.len() >= BLOCK + KEEP;
        }
        self.stats.add(bytes, entries);
        self.stats.trimmed.fetch_add(trimmed, Ordering::Relaxed);
        if want_seal && !h.sealing.swap(true, Ordering::AcqRel) {
            match self.seal.try_send(h.clone()) {
                Ok(()) => {}
                // The sealer is behind (a burst: agents sending their
                // backlog after an outage): seal here. That slows the hub,
                // and through its queue the agents, rather than letting
                // unsealed history grow past what the bound would trim.
                Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => {
                    while seal_one(&h, &self.stats) {}
                    h.sealing.store(false, Ordering::Release);
                }
            }
        }
        self.pushes += 1;
        let total = self.stats.bytes() as usize;
        if self.pushes.is_multiple_of(1024)
            && self.level != usize::MAX
            && total < self.max_bytes / 10 * 9
        {
            // Well under again (topics forgotten, blocks sealed): let topics
            // grow back, a tenth at a time.
            self.level = self.level.saturating_add(self.level / 10 + 1);
        }
        total > self.max_bytes
    }

    /// Drops a forgotten topic's history from the counts.
    pub fn forget(&self, h: &TopicHistory) {
        let mut log = h.log();
        log.dead = true;
        self.stats.add(-(log.bytes as isize), -(log.len as isize));
    }

    /// Sets the fair level so that every topic's bytes, capped at it, add up
    /// to a little under the bound, and trims the topics above it now.
    pub fn rebalance<'a>(&mut self, topics: impl Iterator<Item = &'a Arc<TopicHistory>>) {
        let held: Vec<(usize, &Arc<TopicHistory>)> = topics.map(|h| (h.bytes(), h)).collect();
        self.level = water_level(
            held.iter().map(|(b, _)| *b).collect(),
            self.max_bytes / 20 * 19,
        );
        let (mut freed, mut n) = (0isize, 0isize);
        for (bytes, h) in held {
            if bytes > self.level {
                let mut log = h.log();
                while log.bytes > self.level {
                    let Some(f) = log.drop_oldest() else { break };
                    freed += f as isize;
                    n += 1;
                }
            }
        }
        self.stats.add(-freed, -n);
        self.stats.trimmed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The current fair level in bytes (`None`: no topic is limited).
    pub fn level(&self) -> Option<usize> {
        (self.level != usize::MAX).then_some(self.level)
    }
}

/// The largest level `l` with `sum(min(b, l)) <= budget`.
fn water_level(mut held: Vec<usize>, budget: usize) -> usize {
    held.sort_unstable();
    let mut below = 0usize;
    let n = held.len();
    for (i, b) in held.iter().enumerate() {
        let rest = n - i;
        // Every topic from here on at level `b`:
        if below + b * rest > budget {
            return (budget - below) / rest;
        }
        below += b;
    }
    usize::MAX
}

/// Seals the oldest [`BLOCK`] updates of each topic sent, until every sender
/// is gone.
fn sealer(queue: Receiver<Arc<TopicHistory>>, stats: Arc<HistoryStats>) {
    while let Ok(h) = queue.recv() {
        loop {
            while seal_one(&h, &stats) {}
            h.sealing.store(false, Ordering::Release);
            // A push between the last look and clearing the flag saw it
            // still set and asked for nothing: look once more.
            let due = {
                let log = h.log();
                !log.dead && log.tail.len() >= BLOCK + KEEP
            };
            if !due || h.sealing.swap(true, Ordering::AcqRel) {
                break;
            }
        }
    }
}

/// Seals the oldest run of the tail if it is long enough; whether it did.
fn seal_one(h: &TopicHistory, stats: &HistoryStats) -> bool {
    let batch: Vec<Arc<Update>> = {
        let log = h.log();
        if log.dead || log.tail.len() < BLOCK + KEEP {
            return false;
        }
        let first = log.tail[0].0.seq;
        log.tail
            .iter()
            .take(BLOCK)
            .map(|(u, _)| u.clone())
            .take_while(|u| Block::fits(first, u.seq))
            .collect()
    };
    let block = Arc::new(Block::seal(&batch));
    let mut log = h.log();
    // The hub may have trimmed the tail meanwhile (only when no block is
    // left); then this work is stale and the next update asks again.
    if log.dead
        || log
            .tail
            .front()
            .is_none_or(|(u, _)| !Arc::ptr_eq(u, &batch[0]))
    {
        return false;
    }
    let mut delta = block.bytes() as isize;
    for _ in 0..batch.len() {
        let (_, counted) = log.tail.pop_front().expect("checked above");
        delta -= counted as isize;
    }
    // The tail's binary forms made since it was counted now count too.
    for (u, counted) in log.tail.iter_mut() {
        let now = u.held_bytes();
        delta += now as isize - *counted as isize;
        *counted = now;
    }
    log.blocks.push_back(block);
    log.bytes = (log.bytes as isize + delta) as usize;
    drop(log);
    stats.add(delta, 0);
    stats.sealed.fetch_add(1, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests;
