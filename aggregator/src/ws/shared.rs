//! Batch frames shared by a subscription group: built once, written by every
//! connection of the group.
//!
//! Batching windows close on the wheel's clock ([`crate::ws::ticks`]), so
//! connections with the same window and the same subscriptions are woken in
//! one sweep and drain the same updates in the same order. The first of them
//! to write builds the batch (each frame gathered into one buffer: header,
//! separators and updates, or for `msgpack+deflate` the compressed frame)
//! and leaves it here;
//! the others find it and write those same bytes, making nothing of their
//! own.
//!
//! A batch is found by its encoding, frame limit and updates, compared by
//! pointer (the entry holds the updates, so no address is reused while it
//! lives): equal updates in the same order make byte-identical frames. Only
//! batches of updates alone are shared; one with a `$sys` reply is that
//! connection's own, and so is a batch nobody else drained (a lagging,
//! throttled or replaying connection builds its own, as it always did).
//!
//! Bounded: at most [`MAX_ENTRIES`] batches and [`MAX_BYTES`] of frames,
//! and only those built for the last two window ticks seen (a sweep running
//! past the next close still finds its group's batch); older ones are
//! dropped when a newer tick is seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use crate::update::Update;
use crate::ws::encoding::Encoding;
use crate::ws::frames;
use crate::ws::outbox::Item;
use crate::ws::write::{WriteError, finish};

/// Most batches held at once.
pub const MAX_ENTRIES: usize = 64;

/// Most bytes of frames held at once (counted on the wire, though spliced
/// frames share the updates' own bytes).
pub const MAX_BYTES: usize = 16 << 20;

/// A batch's frames, finished, in order.
#[derive(Debug)]
struct Built {
    /// Every frame, whole, in order.
    segments: Vec<Bytes>,
    /// Each frame's length on the wire.
    lens: Vec<usize>,
}

impl Built {
    fn bytes(&self) -> usize {
        self.lens.iter().sum()
    }
}

/// What a batch is found by.
struct Key<'a> {
    encoding: Encoding,
    max_bytes: usize,
    hash: u64,
    items: &'a [Item],
}

impl<'a> Key<'a> {
    /// The key of `items`, if they are updates alone.
    fn of(items: &'a [Item], encoding: Encoding, max_bytes: usize) -> Option<Self> {
        let mut hash = max_bytes as u64 ^ ((encoding as u64) << 56);
        for item in items {
            let Item::Update(u) = item else { return None };
            hash = (hash.rotate_left(5) ^ Arc::as_ptr(u) as usize as u64)
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        Some(Self {
            encoding,
            max_bytes,
            hash,
            items,
        })
    }
}

#[derive(Debug)]
struct Entry {
    tick: u64,
    encoding: Encoding,
    max_bytes: usize,
    hash: u64,
    /// The batch's updates, held so that none of their addresses is reused
    /// while the entry lives.
    updates: Box<[Arc<Update>]>,
    built: Arc<Built>,
}

impl Entry {
    fn is(&self, key: &Key<'_>) -> bool {
        self.hash == key.hash
            && self.encoding == key.encoding
            && self.max_bytes == key.max_bytes
            && self.updates.len() == key.items.len()
            && self
                .updates
                .iter()
                .zip(key.items)
                .all(|(held, item)| matches!(item, Item::Update(u) if Arc::ptr_eq(held, u)))
    }
}

#[derive(Debug, Default)]
struct Held {
    /// The newest window tick seen, and the one before it: entries of older
    /// ticks are dropped.
    newest: u64,
    previous: u64,
    entries: Vec<Entry>,
    bytes: usize,
}

impl Held {
    /// Notes a drain under `tick`, dropping entries two ticks old.
    fn see(&mut self, tick: u64) {
        if tick <= self.newest {
            return;
        }
        self.previous = self.newest;
        self.newest = tick;
        let floor = self.previous;
        self.entries.retain(|e| e.tick >= floor);
        self.bytes = self.entries.iter().map(|e| e.built.bytes()).sum();
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
    }

    fn find(&self, key: &Key<'_>) -> Option<&Arc<Built>> {
        self.entries.iter().find(|e| e.is(key)).map(|e| &e.built)
    }
}

/// The batches built for the current window ticks, shared by every
/// connection of a server, with counts of frames built and shared.
#[derive(Debug, Default)]
pub struct SharedBatches {
    held: Mutex<Held>,
    /// Batch frames a connection wrote from a batch another one built.
    pub shared: AtomicU64,
    /// Batch frames a connection built (shared afterwards or not).
    pub built: AtomicU64,
}

impl SharedBatches {
    /// Appends `items` to `out` as `batch.update` frames of at most
    /// `max_bytes` each (see [`frames::batches`]): the group's batch when
    /// another connection drained the same updates and built it, else built
    /// here, and offered to the group when `tick` says under which window
    /// tick they were drained (`None`: this connection's own, as during a
    /// replay). Refuses a frame over `limit` bytes.
    pub(super) async fn write(
        &self,
        items: &[Item],
        encoding: Encoding,
        max_bytes: usize,
        tick: Option<u64>,
        out: &mut Vec<Bytes>,
        limit: usize,
    ) -> Result<(), WriteError> {
        let key = tick.and_then(|tick| Some((tick, Key::of(items, encoding, max_bytes)?)));
        let Some((tick, key)) = key.filter(|_| !items.is_empty()) else {
            let batches = frames::batches(items, encoding, max_bytes);
            self.built
                .fetch_add(batches.len() as u64, Ordering::Relaxed);
            for frame in batches {
                finish(frame, out, limit).await?;
            }
            return Ok(());
        };
        if let Some(built) = self.lookup(tick, &key) {
            if let Some(&bytes) = built.lens.iter().find(|&&len| len > limit) {
                return Err(WriteError::TooBig { bytes });
            }
            out.extend(built.segments.iter().cloned());
            self.shared
                .fetch_add(built.lens.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        // Each frame gathered into one buffer: one copy here, and every
        // connection of the group then writes one segment per frame rather
        // than a header and two per update.
        let mut segments = Vec::new();
        let mut lens = Vec::new();
        let mut pieces = Vec::new();
        for frame in frames::batches(items, encoding, max_bytes) {
            pieces.clear();
            finish(frame, &mut pieces, limit).await?;
            let len = pieces.iter().map(Bytes::len).sum();
            segments.push(match pieces.as_slice() {
                [one] => one.clone(),
                _ => {
                    let mut flat = BytesMut::with_capacity(len);
                    pieces.iter().for_each(|p| flat.extend_from_slice(p));
                    flat.freeze()
                }
            });
            lens.push(len);
        }
        self.built.fetch_add(lens.len() as u64, Ordering::Relaxed);
        out.extend(segments.iter().cloned());
        self.insert(tick, &key, Built { segments, lens });
        Ok(())
    }

    fn lookup(&self, tick: u64, key: &Key<'_>) -> Option<Arc<Built>> {
        let mut held = self.held.lock().expect("shared batches lock");
        held.see(tick);
        held.find(key).cloned()
    }

    /// Keeps `built` for the rest of the group, if there is room and it is
    /// not too old; a batch of the same updates built meanwhile (by another
    /// worker) stays.
    fn insert(&self, tick: u64, key: &Key<'_>, built: Built) {
        let bytes = built.bytes();
        let mut held = self.held.lock().expect("shared batches lock");
        held.see(tick);
        if tick < held.previous
            || held.entries.len() >= MAX_ENTRIES
            || held.bytes + bytes > MAX_BYTES
            || held.find(key).is_some()
        {
            return;
        }
        let updates = key
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Update(u) => Some(u.clone()),
                Item::Sys(_) => None,
            })
            .collect();
        held.bytes += bytes;
        held.entries.push(Entry {
            tick,
            encoding: key.encoding,
            max_bytes: key.max_bytes,
            hash: key.hash,
            updates,
            built: Arc::new(built),
        });
    }

    /// Batches held now.
    pub fn held(&self) -> usize {
        self.held.lock().expect("shared batches lock").entries.len()
    }
}

#[cfg(test)]
mod tests;
