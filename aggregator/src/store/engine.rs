//! The key-value engine under the store: the [`Engine`] trait the writer and
//! queries use, the key layout, and its implementation on redb ([`Redb`]),
//! chosen by measurement (BENCHMARKS.md, "Embedded store"; the benchmark
//! implements the same trait on fjall).
//!
//! Tables (all keys big endian, so byte order is time order):
//! - `series`: `host \0 field` → series id (u32); `\xff next` → next id.
//! - `blocks`: series (u32) · tier (u8) · window start (i64) → sealed block.
//! - `open_groups`: tier · run of series · window start · stamp → the open
//!   chunks of one checkpoint of that run ([`super::chunks`]). Builds
//!   before it kept a chunk per series in `open` (series · tier · first
//!   row's time), moved here when the store opens.
//! - `log`: flush number (u64) → the rows of every series that flush took,
//!   until the next checkpoint ([`super::recent`]). On redb, files in
//!   `log/` beside the redb file ([`super::logfiles`]).
//! - `by_time`: tier · window start · series → block bytes (u32): retention
//!   and eviction walk the oldest windows without touching the blocks.
//! - `stamps`: tier · window start · hash (u64) → a timestamp column the
//!   raw blocks of that window with those timestamps share
//!   ([`super::stamps`]).
//! - `history`: topic → the hub's history of it at the last clean shutdown
//!   ([`super::history`]).
//! - `procs`, `procs_by_time`: process tables per host and minute
//!   ([`super::processes`]).
//!
//! redb is copy-on-write with checksummed commits: a transaction is on disk
//! whole or not at all, so a crash at any moment leaves the last committed
//! flush (it repairs its free-page bookkeeping on the next open).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTableMetadata, TableDefinition,
};

use super::StoreError;
use super::logfiles::LogFiles;

/// A table of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Series names to ids.
    Series,
    /// Sealed blocks.
    Blocks,
    /// Open chunks, in groups per run of series ([`super::chunks`]).
    Open,
    /// Open chunks one per series and checkpoint, as builds before the
    /// groups wrote them: moved into `Open` when the store opens.
    LegacyOpen,
    /// Each flush's rows until the next checkpoint.
    Log,
    /// Sealed blocks by tier and time.
    ByTime,
    /// The hub's history, per topic, from the last clean shutdown.
    History,
    /// Process tables per host and minute.
    Procs,
    /// Process table minutes by time.
    ProcsByTime,
    /// Timestamp columns shared by the raw blocks of a window
    /// ([`super::stamps`]).
    Stamps,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 10] = [
        Table::Series,
        Table::Blocks,
        Table::Open,
        Table::LegacyOpen,
        Table::Log,
        Table::ByTime,
        Table::History,
        Table::Procs,
        Table::ProcsByTime,
        Table::Stamps,
    ];

    /// Its name in the engine.
    pub fn name(self) -> &'static str {
        match self {
            Table::Series => "series",
            Table::Blocks => "blocks",
            Table::Open => "open_groups",
            Table::LegacyOpen => "open",
            Table::Log => "log",
            Table::ByTime => "by_time",
            Table::History => "history",
            Table::Procs => "procs",
            Table::ProcsByTime => "procs_by_time",
            Table::Stamps => "stamps",
        }
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One change in a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert or replace.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove (absent keys are fine).
    Delete(Table, Vec<u8>),
}

/// What the store needs of an embedded key-value engine. Keys are ordered
/// bytewise; [`apply`](Engine::apply) is atomic and durable when it returns.
pub trait Engine: Send + Sync + 'static {
    /// Applies `ops` in one durable transaction.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Visits `[from, to)` in key order until `visit` returns false.
    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// The last entry in `[from, to)`.
    fn last(&self, table: Table, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// The last key in `[from, to)` (its value not copied).
    fn last_key(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.last(table, from, to)?.map(|(k, _)| k))
    }
    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut end = key.to_vec();
        end.push(0);
        Ok(self
            .last(table, key, &end)?
            .and_then(|(k, v)| (k == key).then_some(v)))
    }
    /// Bytes of storage in use (what `max_disk_bytes` bounds); `None`
    /// while they are not known yet (a large store opened after a crash,
    /// counted on a thread of its own: [`Redb::open`]).
    fn used_bytes(&self) -> Result<Option<u64>, StoreError>;
    /// Bytes the engine's files take on disk.
    fn file_bytes(&self) -> u64;
    /// Nothing more will be written: keeps what the next open needs to
    /// start at once (on redb, the bytes in use, [`USAGE_FILE`]).
    fn closing(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Key of a block or an open chunk.
pub fn block_key(series: u32, tier: u8, ts: i64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&series.to_be_bytes());
    k[4] = tier;
    k[5..].copy_from_slice(&ts.max(0).to_be_bytes());
    k
}

/// (series, tier, time) of a block or chunk key.
pub fn parse_block_key(k: &[u8]) -> Option<(u32, u8, i64)> {
    (k.len() == 13).then(|| {
        (
            u32::from_be_bytes(k[..4].try_into().expect("4")),
            k[4],
            i64::from_be_bytes(k[5..].try_into().expect("8")),
        )
    })
}

/// Key of a `by_time` entry.
pub fn time_key(tier: u8, window: i64, series: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = tier;
    k[1..9].copy_from_slice(&window.max(0).to_be_bytes());
    k[9..].copy_from_slice(&series.to_be_bytes());
    k
}

/// (tier, window, series) of a `by_time` key.
pub fn parse_time_key(k: &[u8]) -> Option<(u8, i64, u32)> {
    (k.len() == 13).then(|| {
        (
            k[0],
            i64::from_be_bytes(k[1..9].try_into().expect("8")),
            u32::from_be_bytes(k[9..].try_into().expect("4")),
        )
    })
}

/// The redb file in the data directory.
pub const REDB_FILE: &str = "store.redb";

/// Pages redb caches in memory unless configured
/// ([`super::StorageConfig::cache_bytes`]).
pub const CACHE_BYTES: usize = 64 << 20;

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

fn def(t: Table) -> Def {
    TableDefinition::new(t.name())
}

fn err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(e.into().to_string())
}

/// `table` in a read transaction; `None` when the file has none (a store an
/// older build wrote, opened read-only: the store creates every table when
/// it opens).
fn open_in(tx: &redb::ReadTransaction, table: Table) -> Result<Option<ReadTable>, StoreError> {
    match tx.open_table(def(table)) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// [`Engine::scan`] in a read transaction of a redb file (the store's, or
/// one opened read-only to measure it).
pub fn scan_in(
    tx: &redb::ReadTransaction,
    table: Table,
    from: &[u8],
    to: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StoreError> {
    let Some(t) = open_in(tx, table)? else {
        return Ok(());
    };
    for entry in t.range(from..to).map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        if !visit(k.value(), v.value()) {
            break;
        }
    }
    Ok(())
}

/// [`Engine::last`] in a read transaction of a redb file.
pub fn last_in(
    tx: &redb::ReadTransaction,
    table: Table,
    from: &[u8],
    to: &[u8],
) -> Result<Option<Entry>, StoreError> {
    let Some(t) = open_in(tx, table)? else {
        return Ok(None);
    };
    let last = t.range(from..to).map_err(err)?.next_back();
    match last {
        Some(entry) => {
            let (k, v) = entry.map_err(err)?;
            Ok(Some((k.value().to_vec(), v.value().to_vec())))
        }
        None => Ok(None),
    }
}

/// The store on redb: one file, one writer, readers never blocked; the
/// `log` table as files beside it ([`LogFiles`]).
pub struct Redb {
    /// Open until dropped.
    db: Option<Database>,
    path: std::path::PathBuf,
    log: LogFiles,
    /// Bytes in use, shared with a count under way.
    usage: Arc<Mutex<Usage>>,
    /// The count of pages under way on its own thread, if any.
    counter: Mutex<Option<JoinHandle<()>>>,
    /// Asks that count to end early (the store is closing).
    closing: Arc<AtomicBool>,
    /// How old a count may get before the next begins
    /// ([`EXACT_USAGE_EVERY`]).
    recount_every: Duration,
    /// `storage.writer_nice`, for a count on its own thread.
    count_nice: i32,
    /// Save the bytes in use when the file has closed ([`Engine::closing`]).
    save_at_drop: AtomicBool,
    /// Held by a test to keep a count from reading its snapshot.
    #[cfg(test)]
    pub(crate) count_gate: Arc<Mutex<()>>,
}

/// Longest an estimate of the pages in use goes without an exact count.
/// redb counts them only by reading every page of every table, about a
/// second per GB of store here: done at each maintenance pass, it took 11-13 %
/// of the writer's thread at 10,000 hosts a few minutes in, and more as the
/// store grew. Counts after the first run on a thread of their own
/// ([`Redb::used_bytes`]), so the writer never waits for one.
pub const EXACT_USAGE_EVERY: Duration = Duration::from_secs(600);

/// Pages in use per byte of entries written since an exact count, when
/// that count found too few entries to measure it by: a B-tree's pages
/// are two thirds full on average, and a large value takes a power of two
/// of pages.
const DEFAULT_PAGES_PER_BYTE: f64 = 1.5;

/// Bytes in use: redb's pages as last counted exactly, and the bytes of the
/// entries (keys and values) written since, less those removed.
#[derive(Debug, Default)]
struct Usage {
    /// When the last count began.
    counted: Option<Instant>,
    /// Bytes of the pages in use then.
    pages: u64,
    /// Page bytes per entry byte then ([`DEFAULT_PAGES_PER_BYTE`] in a
    /// nearly empty store), at least 1.
    per_byte: f64,
    /// Entry bytes written since, less those removed.
    since: i64,
    /// A count under way: `since` as its snapshot began, which its result
    /// includes.
    counting: Option<i64>,
}

impl Usage {
    /// The estimate: the count, and what was written since at the count's
    /// pages per byte.
    fn estimate(&self) -> u64 {
        (self.pages as f64 + self.since as f64 * self.per_byte).max(0.0) as u64
    }

    /// Takes a count of a snapshot taken when `since` was `seen`: what was
    /// written after the snapshot stays in `since`.
    fn counted(&mut self, (pages, entries): (u64, u64), began: Instant, seen: i64) {
        self.counted = Some(began);
        self.pages = pages;
        self.per_byte = if entries < 1 << 20 {
            DEFAULT_PAGES_PER_BYTE
        } else {
            (pages as f64 / entries as f64).clamp(1.0, 4.0)
        };
        self.since -= seen;
    }
}

/// Bytes of the pages of every table in `tx`'s snapshot, and of the entries
/// in them; `None` if `closing` was raised between two tables.
fn count_pages_in(
    tx: &ReadTransaction,
    closing: &AtomicBool,
) -> Result<Option<(u64, u64)>, StoreError> {
    let (mut pages, mut entries) = (0, 0);
    for t in Table::ALL {
        if closing.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let stats = tx.open_table(def(t)).map_err(err)?.stats().map_err(err)?;
        // A page's bytes are its pairs, its own layout and its free space.
        pages += stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        entries += stats.stored_bytes();
    }
    Ok(Some((pages, entries)))
}

/// The directory of the `log` table's files, beside the redb file.
pub const LOG_DIR: &str = "log";

/// The file beside the redb file that keeps the bytes in use at a clean
/// close ([`Engine::closing`]); the next open reads and removes it, so a
/// store that was not closed cleanly is counted again.
pub const USAGE_FILE: &str = "usage";

/// A redb file up to this size is counted as it opens (a few tens of
/// milliseconds). A larger one, with no count saved at a clean close, is
/// counted on a thread of its own: about a second per GB would otherwise
/// hold up the aggregator's start. Until that count ends its bytes in use
/// are unknown, and eviction waits for it.
pub const COUNT_AT_OPEN_BELOW: u64 = 64 << 20;

/// The bytes in use a clean close saved ([`USAGE_FILE`]), written once
/// the redb file is closed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SavedUsage {
    /// Length of the closed redb file: one changed since (a later run of a
    /// build that does not read this file, a copy put back) is counted
    /// again.
    file_bytes: u64,
    /// Its time of last change, in ns since the epoch, likewise.
    modified_ns: u128,
    /// The estimate of its pages in use.
    pages: u64,
    /// Page bytes per entry byte.
    per_byte: f64,
    /// How old the last exact count was, in ms.
    count_age_ms: u64,
}

/// Length and time of last change (ns since the epoch) of `path`.
fn file_stamp(path: &Path) -> std::io::Result<(u64, u128)> {
    let m = std::fs::metadata(path)?;
    let modified = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok((m.len(), modified))
}

impl SavedUsage {
    const HEADER: &'static str = "hostpulse store usage 2";

    fn to_text(self) -> String {
        format!(
            "{}\nfile_bytes {}\nmodified_ns {}\npages {}\nper_byte {}\ncount_age_ms {}\n",
            Self::HEADER,
            self.file_bytes,
            self.modified_ns,
            self.pages,
            self.per_byte,
            self.count_age_ms
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != Self::HEADER {
            return None;
        }
        let mut field = |name: &str| {
            lines
                .next()?
                .strip_prefix(name)?
                .strip_prefix(' ')
                .map(str::to_owned)
        };
        let saved = SavedUsage {
            file_bytes: field("file_bytes")?.parse().ok()?,
            modified_ns: field("modified_ns")?.parse().ok()?,
            pages: field("pages")?.parse().ok()?,
            per_byte: field("per_byte")?.parse().ok()?,
            count_age_ms: field("count_age_ms")?.parse().ok()?,
        };
        // As a count finds them ([`Usage::counted`]): pages per byte
        // between 1 and 4, and no more pages than the file holds.
        ((1.0..=4.0).contains(&saved.per_byte) && saved.pages <= saved.file_bytes).then_some(saved)
    }

    /// Writes `self` beside `path` (the closed redb file).
    fn save(self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let to = path.with_file_name(USAGE_FILE);
        let partial = path.with_file_name(format!("{USAGE_FILE}.partial"));
        let mut f = std::fs::File::create(&partial)?;
        f.write_all(self.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&partial, &to)?;
        if let Some(dir) = path.parent() {
            super::sync_dir(dir);
        }
        Ok(())
    }

    /// The count a clean close left beside `path` (the redb file, not open
    /// yet), if it is there, readable, and the file is as it was then; the
    /// saved count is removed either way.
    fn take(path: &Path) -> Option<Self> {
        let saved_at = path.with_file_name(USAGE_FILE);
        let text = match std::fs::read_to_string(&saved_at) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %saved_at.display(), cause = %e, "store: the saved bytes in use are unreadable; counting them again");
                return None;
            }
        };
        if let Err(e) = std::fs::remove_file(&saved_at) {
            // Left behind, it could be taken for a later close's count.
            tracing::warn!(file = %saved_at.display(), cause = %e, "store: the saved bytes in use cannot be removed; counting them again");
            return None;
        }
        let Some(saved) = Self::parse(&text) else {
            tracing::warn!(file = %saved_at.display(), "store: the saved bytes in use are not in the expected form; counting them again");
            return None;
        };
        let now = file_stamp(path).unwrap_or((0, 0));
        if now != (saved.file_bytes, saved.modified_ns) {
            tracing::info!(
                saved_file_bytes = saved.file_bytes,
                file_bytes = now.0,
                "store: the file changed after its bytes in use were saved; counting them again"
            );
            return None;
        }
        Some(saved)
    }
}

impl Redb {
    /// Opens (or creates) `dir/store.redb`; a file left by a crash is
    /// repaired first. Its bytes in use are those a clean close saved
    /// ([`USAGE_FILE`]), or counted: at once up to
    /// [`COUNT_AT_OPEN_BELOW`], on a thread of their own above it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, CACHE_BYTES, 0)
    }

    /// [`open`](Self::open), caching up to `cache_bytes` of pages, with
    /// counts of pages on their own thread `count_nice` steps below the
    /// main thread's priority (`storage.writer_nice`).
    pub fn open_with(dir: &Path, cache_bytes: usize, count_nice: i32) -> Result<Self, StoreError> {
        let (mut engine, saved) = Self::open_uncounted(dir, cache_bytes)?;
        engine.count_nice = count_nice;
        engine.start_usage(saved, COUNT_AT_OPEN_BELOW)?;
        Ok(engine)
    }

    /// Opens `dir` with `gate` holding any count on its own thread, and
    /// files from `count_below` bytes counted there.
    #[cfg(test)]
    pub(crate) fn open_gated(
        dir: &Path,
        gate: Arc<Mutex<()>>,
        count_below: u64,
    ) -> Result<Self, StoreError> {
        let (mut engine, saved) = Self::open_uncounted(dir, CACHE_BYTES)?;
        engine.count_gate = gate;
        engine.start_usage(saved, count_below)?;
        Ok(engine)
    }

    /// The engine, its bytes in use not known yet, and those a clean close
    /// saved (taken before the file opens: opening it may change it).
    fn open_uncounted(
        dir: &Path,
        cache_bytes: usize,
    ) -> Result<(Self, Option<SavedUsage>), StoreError> {
        let path = dir.join(REDB_FILE);
        let saved = SavedUsage::take(&path);
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| {
                // Names the file: a store made by another user (root) is
                // refused with a bare "Permission denied".
                StoreError::Engine(format!("{}: {}", path.display(), redb::Error::from(e)))
            })?;
        let tx = db.begin_write().map_err(err)?;
        for t in Table::ALL {
            tx.open_table(def(t)).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        let log = LogFiles::open(&dir.join(LOG_DIR))?;
        let engine = Self {
            db: Some(db),
            path,
            log,
            usage: Arc::default(),
            counter: Mutex::default(),
            closing: Arc::default(),
            recount_every: EXACT_USAGE_EVERY,
            count_nice: 0,
            save_at_drop: AtomicBool::new(false),
            #[cfg(test)]
            count_gate: Arc::default(),
        };
        Ok((engine, saved))
    }

    /// The open file.
    fn db(&self) -> &Database {
        self.db.as_ref().expect("open until dropped")
    }

    /// The records of the `log` table a build before [`LogFiles`] left in
    /// the redb file, then the files, in key order each.
    fn scan_log(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut more = true;
        let tx = self.db().begin_read().map_err(err)?;
        scan_in(&tx, Table::Log, from, to, &mut |k, v| {
            more = visit(k, v);
            more
        })?;
        if more {
            self.log.scan(from, to, visit)?;
        }
        Ok(())
    }
}

impl Drop for Redb {
    /// Ends a count under way (at its next table) before the file closes;
    /// once it has, saves the bytes in use a clean close asked to keep.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        self.join_count();
        drop(self.db.take());
        let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        if self.save_at_drop.load(Ordering::Relaxed)
            && let Some(counted) = usage.counted
        {
            let saved = file_stamp(&self.path).and_then(|(file_bytes, modified_ns)| {
                SavedUsage {
                    file_bytes,
                    modified_ns,
                    pages: usage.estimate(),
                    per_byte: usage.per_byte,
                    count_age_ms: counted.elapsed().as_millis() as u64,
                }
                .save(&self.path)
            });
            if let Err(e) = saved {
                // The next open counts them.
                tracing::warn!(cause = %e, "store: the bytes in use were not saved");
            }
        }
    }
}

impl Engine for Redb {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        // The log's records: written before the transaction, removed again
        // if it fails; its deletions once it committed.
        let mut written: Vec<&[u8]> = Vec::new();
        for op in ops {
            if let Op::Put(Table::Log, k, v) = op {
                if let Err(e) = self.log.put(k, v) {
                    self.unput(&written);
                    return Err(e);
                }
                written.push(k);
            }
        }
        let result = self.apply_tables(ops);
        if result.is_err() {
            self.unput(&written);
        }
        result?;
        // Committed: a record not removed now is only replayed (and
        // skipped) at the next start.
        for op in ops {
            if let Op::Delete(Table::Log, k) = op
                && let Err(e) = self.log.delete(k)
            {
                tracing::warn!(cause = %e, "store: a log record the tables hold was not removed");
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        if table == Table::Log {
            return self.scan_log(from, to, visit);
        }
        scan_in(
            &self.db().begin_read().map_err(err)?,
            table,
            from,
            to,
            visit,
        )
    }

    fn last(&self, table: Table, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError> {
        if table == Table::Log {
            let mut last = None;
            self.scan_log(from, to, &mut |k, v| {
                last = Some((k.to_vec(), v.to_vec()));
                true
            })?;
            return Ok(last);
        }
        last_in(&self.db().begin_read().map_err(err)?, table, from, to)
    }

    fn last_key(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if table == Table::Log {
            return Ok(self.last(table, from, to)?.map(|(k, _)| k));
        }
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(def(table)).map_err(err)?;
        let last = t.range(from..to).map_err(err)?.next_back();
        last.map(|entry| entry.map(|(k, _)| k.value().to_vec()).map_err(err))
            .transpose()
    }

    /// The pages as last counted plus what was written since ([`Usage`]);
    /// `None` until the first count ends ([`Redb::open`]). A call when the
    /// last count is [`EXACT_USAGE_EVERY`] old (or the first one failed)
    /// starts one on a thread of its own (at `storage.writer_nice`,
    /// [`Redb::open_with`]) and returns the estimate.
    fn used_bytes(&self) -> Result<Option<u64>, StoreError> {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let due = usage
            .counted
            .is_none_or(|at| at.elapsed() >= self.recount_every);
        if due && usage.counting.is_none() {
            self.start_count(&mut usage);
        }
        Ok(usage.counted.map(|_| usage.estimate() + self.log.bytes()))
    }

    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len()) + self.log.bytes()
    }

    /// Asks for the estimate of the pages in use, if there is one, to be
    /// saved for the next open ([`USAGE_FILE`]) once the file has closed
    /// (when this engine is dropped).
    fn closing(&self) -> Result<(), StoreError> {
        self.save_at_drop.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl Redb {
    /// Starts the bytes in use of a store just opened: those a clean close
    /// saved, or a count, on this thread for a file under `count_below`
    /// bytes and on a thread of its own for a larger one.
    fn start_usage(&self, saved: Option<SavedUsage>, count_below: u64) -> Result<(), StoreError> {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(saved) = saved {
            // As old as the count it came from: the next is due as it
            // would have been without the restart.
            let now = Instant::now();
            usage.counted = Some(
                now.checked_sub(Duration::from_millis(saved.count_age_ms))
                    .unwrap_or(now),
            );
            usage.pages = saved.pages;
            usage.per_byte = saved.per_byte;
            tracing::info!(
                page_bytes = saved.pages,
                "store: bytes in use as saved at the last clean close"
            );
            return Ok(());
        }
        let file_bytes = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if file_bytes < count_below {
            return self.count_pages(&mut usage);
        }
        tracing::info!(
            file_bytes,
            "store: counting the pages in use on a thread of their own; eviction under max_disk_bytes waits for the count"
        );
        self.start_count(&mut usage);
        Ok(())
    }

    /// Bytes in use, with redb's pages counted exactly now (reading every
    /// page), after any count under way has ended.
    pub fn count_used_bytes(&self) -> Result<u64, StoreError> {
        self.join_count();
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        self.count_pages(&mut usage)?;
        Ok(usage.estimate() + self.log.bytes())
    }

    /// Counts redb's pages in use (reading every page) into `usage`, on
    /// this thread: at the first call, and when a count is asked for. The
    /// caller's lock on `usage` keeps commits out for the whole count
    /// ([`Self::apply_tables`]).
    fn count_pages(&self, usage: &mut Usage) -> Result<(), StoreError> {
        let began = Instant::now();
        let tx = self.db().begin_read().map_err(err)?;
        if let Some(counted) = count_pages_in(&tx, &AtomicBool::new(false))? {
            let seen = usage.since;
            usage.counted(counted, began, seen);
        }
        Ok(())
    }

    /// Starts a count on its own thread: its snapshot is taken now, under
    /// the lock on `usage` the caller holds, so it sees exactly the commits
    /// `since` holds.
    fn start_count(&self, usage: &mut Usage) {
        self.join_count();
        let tx = match self.db().begin_read() {
            Ok(tx) => tx,
            Err(e) => {
                tracing::warn!(cause = %err(e), "store: pages not counted; the estimate of bytes in use stands");
                return;
            }
        };
        let began = Instant::now();
        usage.counting = Some(usage.since);
        let (shared, closing) = (self.usage.clone(), self.closing.clone());
        #[cfg(test)]
        let gate = self.count_gate.clone();
        let nice = self.count_nice;
        let count = move || {
            super::lower_priority(nice);
            // Held by a test until it lets the count read; a test that
            // fails holding it drops the engine, which must not wait.
            #[cfg(test)]
            while let Err(std::sync::TryLockError::WouldBlock) = gate.try_lock()
                && !closing.load(Ordering::Relaxed)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            // A panic in the walk must still clear `counting` below, or no
            // count would start again.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                count_pages_in(&tx, &closing)
            }))
            .unwrap_or_else(|_| Err(StoreError::Engine("the count of pages panicked".into())));
            drop(tx);
            let mut usage = shared.lock().unwrap_or_else(PoisonError::into_inner);
            let seen = usage.counting.take().unwrap_or(0);
            match result {
                Ok(Some(counted)) => {
                    if usage.counted.is_none() {
                        tracing::info!(
                            page_bytes = counted.0,
                            count_ms = began.elapsed().as_millis() as u64,
                            "store: pages in use counted"
                        );
                    }
                    usage.counted(counted, began, seen);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(cause = %e, "store: pages not counted; the estimate of bytes in use stands");
                }
            }
        };
        match std::thread::Builder::new()
            .name("hostpulse-store-count".into())
            .spawn(count)
        {
            Ok(handle) => {
                *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
            }
            Err(e) => {
                usage.counting = None;
                tracing::warn!(cause = %e, "store: pages not counted (no thread); the estimate of bytes in use stands");
            }
        }
    }

    /// Counts every `every` instead of [`EXACT_USAGE_EVERY`].
    #[cfg(test)]
    pub(crate) fn set_recount_every(&mut self, every: Duration) {
        self.recount_every = every;
    }

    /// Waits for a count under way, if any.
    pub fn join_count(&self) {
        let handle = self
            .counter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Removes log records a failed transaction's flush wrote.
    fn unput(&self, keys: &[&[u8]]) {
        for k in keys {
            if let Err(e) = self.log.delete(k) {
                tracing::warn!(cause = %e, "store: a failed flush's log record was not removed; it is replayed at the next start");
            }
        }
    }

    /// The transaction of every op but the log's records (a deletion of a
    /// record a build before [`LogFiles`] left in the file included).
    fn apply_tables(&self, ops: &[Op]) -> Result<(), StoreError> {
        // Entry bytes added, less those removed ([`Usage`]).
        let mut written = 0i64;
        let mut tx = self.db().begin_write().map_err(err)?;
        tx.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut tables: Vec<_> = Table::ALL
                .iter()
                .map(|t| tx.open_table(def(*t)).map_err(err))
                .collect::<Result<_, _>>()?;
            let index = |t: Table| Table::ALL.iter().position(|x| *x == t).expect("listed");
            for op in ops {
                match op {
                    Op::Put(Table::Log, _, _) => {}
                    Op::Put(t, k, v) => {
                        let old = tables[index(*t)]
                            .insert(k.as_slice(), v.as_slice())
                            .map_err(err)?;
                        let old = old.map_or(0, |o| k.len() + o.value().len());
                        written += (k.len() + v.len()) as i64 - old as i64;
                    }
                    Op::Delete(t, k) => {
                        let old = tables[index(*t)].remove(k.as_slice()).map_err(err)?;
                        written -= old.map_or(0, |o| k.len() + o.value().len()) as i64;
                    }
                }
            }
        }
        // Committed and counted under one lock: a count's snapshot is taken
        // under it too, so it sees a commit exactly when `since` holds it.
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        tx.commit().map_err(err)?;
        usage.since += written;
        Ok(())
    }
}
