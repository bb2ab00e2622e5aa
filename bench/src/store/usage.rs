//! `store-usage`: what an aggregator's store holds, measured read-only
//! (open it after the aggregator stopped: redb locks the file).
//! For each host and tier: sealed blocks, their bytes per row and per
//! value (and the timestamps' share; a timestamp column blocks share is
//! shared out evenly between them), the values (or rows) a day and the
//! bytes a day; for the raw tier
//! also the bytes per value of each field. Rows still in open chunks are
//! counted apart, with what they would take sealed now (an estimate: a
//! block of fewer rows compresses less well than a full window).
//!
//! `store-fill`: simulated hosts ([`super::sim`]) fed at one sample a second
//! into a new store at `--store-dir`, long enough to seal rollup windows
//! (a day of minute rows, 30 days of hour rows), then measured the same
//! way.
//!
//! A block's bytes are its key and its value, as in `store-engines`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hostpulse_aggregator::store::chunks;
use hostpulse_aggregator::store::codec::{
    block_stamp, decode_block_at, decode_chunk, encode_block, timestamp_bytes,
};
use hostpulse_aggregator::store::engine::{
    Engine, Entry, Op, REDB_FILE, Redb, Table, last_in, parse_block_key, scan_in,
};
use hostpulse_aggregator::store::stamps::{Blocks, stamp_key};
use hostpulse_aggregator::store::tier::{Rows, Tier};
use hostpulse_aggregator::store::writer::Writer;
use hostpulse_aggregator::store::{StoreError, StoreStats};
use redb::{ReadOnlyDatabase, ReadableDatabase};

const DAY_MS: f64 = 86_400_000.0;

/// The store's redb file opened read-only: scans only.
pub(super) struct ReadOnly {
    db: ReadOnlyDatabase,
    path: PathBuf,
}

fn err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(e.into().to_string())
}

impl ReadOnly {
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(REDB_FILE);
        let db = ReadOnlyDatabase::open(&path).map_err(|e| {
            anyhow::anyhow!("{}: {e} (is the aggregator still running?)", path.display())
        })?;
        Ok(Self { db, path })
    }
}

impl Engine for ReadOnly {
    fn apply(&self, _ops: &[Op]) -> Result<(), StoreError> {
        Err(StoreError::Engine("opened read-only".into()))
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        scan_in(&self.db.begin_read().map_err(err)?, table, from, to, visit)
    }

    fn last(&self, table: Table, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError> {
        last_in(&self.db.begin_read().map_err(err)?, table, from, to)
    }

    fn used_bytes(&self) -> Result<Option<u64>, StoreError> {
        Err(StoreError::Engine("opened read-only".into()))
    }

    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

/// Sealed blocks of one series in one tier.
#[derive(Default)]
struct Sealed {
    bytes: u64,
    /// Of which the timestamp column (its kind, length and pco bytes), or
    /// the block's share of the timestamp column it shares with others
    /// (with its key).
    ts_bytes: u64,
    rows: u64,
    blocks: u64,
    first: i64,
    last: i64,
}

impl Sealed {
    /// Time the rows cover, ms: first to last, plus one row's spacing.
    fn span_ms(&self) -> f64 {
        let n = self.rows as f64;
        if n < 2.0 {
            return 0.0;
        }
        (self.last - self.first) as f64 * n / (n - 1.0)
    }

    /// This series' bytes and rows a day.
    fn per_day(&self) -> (f64, f64) {
        let span = self.span_ms();
        if span <= 0.0 {
            return (0.0, 0.0);
        }
        (
            self.bytes as f64 * DAY_MS / span,
            self.rows as f64 * DAY_MS / span,
        )
    }
}

/// One host's tier: sums over its series.
#[derive(Default)]
struct HostTier {
    series: usize,
    blocks: u64,
    bytes: u64,
    ts_bytes: u64,
    rows: u64,
    bytes_per_day: f64,
    rows_per_day: f64,
    open_rows: u64,
    open_sealed_bytes: u64,
}

/// `host \0 field{labels}` → (host, field without labels).
fn split_name(name: &str) -> (String, String) {
    let (host, field) = name.split_once('\0').unwrap_or(("", name));
    let field = field.split('{').next().unwrap_or(field);
    (host.to_owned(), field.to_owned())
}

/// Prints what the store in `dir` holds; the aggregator must have stopped.
/// A file that needs redb's repair first (the aggregator did not close it)
/// is copied, and the copy repaired and measured: the store is never
/// written.
pub(crate) fn run(dir: &Path) -> anyhow::Result<()> {
    match ReadOnly::open(dir) {
        Ok(engine) => {
            println!(
                "store-usage: {} ({} bytes on disk)",
                engine.path.display(),
                engine.file_bytes()
            );
            report(&engine)
        }
        Err(e) => {
            let copy =
                std::env::temp_dir().join(format!("hostpulse-store-usage-{}", std::process::id()));
            println!(
                "store-usage: {e}; measuring a repaired copy in {}",
                copy.display()
            );
            std::fs::create_dir_all(&copy)?;
            std::fs::copy(dir.join(REDB_FILE), copy.join(REDB_FILE))?;
            let measured = Redb::open(&copy)
                .map_err(anyhow::Error::from)
                .and_then(|engine| report(&engine));
            let _ = std::fs::remove_dir_all(&copy);
            measured
        }
    }
}

/// Every series' (host, field without labels), by id.
pub(super) fn series_names(
    engine: &dyn Engine,
) -> Result<HashMap<u32, (String, String)>, StoreError> {
    let mut names = HashMap::new();
    engine.scan(Table::Series, &[], &[0xff], &mut |k, v| {
        if let (Ok(name), Ok(id)) = (std::str::from_utf8(k), <[u8; 4]>::try_from(v)) {
            names.insert(u32::from_be_bytes(id), split_name(name));
        }
        true
    })?;
    Ok(names)
}

fn report(engine: &dyn Engine) -> anyhow::Result<()> {
    let names = series_names(engine)?;
    // Shared timestamp columns: their bytes, and the blocks naming each,
    // which share them out.
    let mut columns: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
    engine.scan(Table::Stamps, &[], &[0xff; 18], &mut |k, v| {
        columns.insert(k.to_vec(), ((k.len() + v.len()) as u64, 0));
        true
    })?;
    engine.scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
        if let (Ok(Some(hash)), Some((_, tier, w))) = (block_stamp(v), parse_block_key(k))
            && let Some(c) = columns.get_mut(stamp_key(tier, w, hash).as_slice())
        {
            c.1 += 1;
        }
        true
    })?;
    // Sealed blocks, per series and tier.
    let mut sealed: BTreeMap<(u32, u8), Sealed> = BTreeMap::new();
    let mut failure = None;
    let mut reader = Blocks::new(engine);
    engine.scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
        let Some((id, tier, _)) = parse_block_key(k) else {
            return true;
        };
        let decoded = reader.column(k, v).and_then(|column| {
            // The timestamps' column with its kind (1) and length (4), or
            // the hash naming a shared column and this block's share of it.
            let (own, shared) = match &column {
                None => (timestamp_bytes(v).map_or(0, |n| 5 + n as u64), 0),
                // The hash naming the column, and the block's share of it.
                Some(c) => (
                    8,
                    columns
                        .get(c.key.as_slice())
                        .map_or(0, |(bytes, refs)| (bytes + refs / 2) / refs.max(&1)),
                ),
            };
            let ts = column.and_then(|c| c.ts);
            let rows = match ts {
                Some(ts) => decode_block_at(v, Some(&ts))?,
                None => decode_block_at(v, None)?,
            };
            Ok((rows, own, shared))
        });
        match decoded {
            Ok((rows, own, shared)) if !rows.is_empty() => {
                let s = sealed.entry((id, tier)).or_default();
                if s.blocks == 0 {
                    s.first = rows.ts[0];
                }
                s.blocks += 1;
                s.bytes += (k.len() + v.len()) as u64 + shared;
                s.ts_bytes += own + shared;
                s.rows += rows.len() as u64;
                s.first = s.first.min(rows.ts[0]);
                s.last = s.last.max(*rows.ts.last().expect("not empty"));
                true
            }
            Ok(_) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        anyhow::bail!("a sealed block did not decode: {e}");
    }
    // Open chunks, per series and tier, merged as they would be sealed.
    let mut open: BTreeMap<(u32, u8), Rows> = BTreeMap::new();
    let mut failure = None;
    chunks::for_each_chunk(engine, &mut |id, t, chunk| {
        let rows = open
            .entry((id, t as u8))
            .or_insert_with(|| Rows::new(t.cols()));
        if let Err(e) = decode_chunk(chunk, rows) {
            failure = Some(e);
            return false;
        }
        true
    })?;
    if let Some(e) = failure {
        anyhow::bail!("an open chunk did not decode: {e}");
    }
    // Per host and tier; per host and field at the raw tier.
    let mut hosts: BTreeMap<(String, u8), HostTier> = BTreeMap::new();
    let mut fields: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for ((id, tier), s) in &sealed {
        let (host, field) = names.get(id).cloned().unwrap_or_default();
        let (bytes_day, rows_day) = s.per_day();
        let h = hosts.entry((host.clone(), *tier)).or_default();
        h.series += 1;
        h.blocks += s.blocks;
        h.bytes += s.bytes;
        h.ts_bytes += s.ts_bytes;
        h.rows += s.rows;
        h.bytes_per_day += bytes_day;
        h.rows_per_day += rows_day;
        if *tier == Tier::Raw as u8 {
            let f = fields.entry(host).or_default().entry(field).or_default();
            f.0 += s.bytes;
            f.1 += s.rows;
        }
    }
    for ((id, tier), rows) in &mut open {
        rows.sort_dedup();
        let (host, _) = names.get(id).cloned().unwrap_or_default();
        let h = hosts.entry((host, *tier)).or_default();
        h.open_rows += rows.len() as u64;
        // As one block of what is open now, with a key (13 bytes).
        h.open_sealed_bytes += encode_block(rows)?.len() as u64 + 13;
    }
    for ((host, tier), h) in &hosts {
        let t = Tier::from_u8(*tier).map_or("?", Tier::name);
        let cols = Tier::from_u8(*tier).map_or(1, Tier::cols) as f64;
        let per_row = h.bytes as f64 / h.rows.max(1) as f64;
        if h.blocks == 0 {
            println!("store-usage [{host}] {t:>3}: no sealed blocks yet");
        } else {
            println!(
                "store-usage [{host}] {t:>3}: sealed {} blocks of {} series, {} rows, {} bytes: \
             {per_row:.3} B/row, {:.3} B/value ({} value(s) a row); \
             {:.0} rows/day, {:.0} bytes/day ({:.2} MiB/day)",
                h.blocks,
                h.series,
                h.rows,
                h.bytes,
                per_row / cols,
                cols,
                h.rows_per_day,
                h.bytes_per_day,
                h.bytes_per_day / (1 << 20) as f64,
            );
            println!(
                "store-usage [{host}] {t:>3}: of which timestamps {:.3} B/row",
                h.ts_bytes as f64 / h.rows.max(1) as f64
            );
        }
        if h.open_rows > 0 {
            println!(
                "store-usage [{host}] {t:>3}: open {} rows, {:.3} B/row if sealed now",
                h.open_rows,
                h.open_sealed_bytes as f64 / h.open_rows as f64
            );
        }
    }
    for (host, by_field) in &fields {
        let (bytes, values) = by_field
            .values()
            .fold((0, 0), |(b, n), (fb, fn_)| (b + fb, n + fn_));
        let mut rows: Vec<_> = by_field.iter().collect();
        rows.sort_by_key(|(_, (b, _))| std::cmp::Reverse(*b));
        println!(
            "store-usage [{host}] raw bytes per value by field ({:.3} B/value over {} values; share of it):",
            bytes as f64 / values.max(1) as f64,
            values
        );
        for (field, (b, n)) in rows {
            println!(
                "  {field:40} {:7.3} B/value  {:5.3}  ({n} values)",
                *b as f64 / *n as f64,
                *b as f64 / values.max(1) as f64
            );
        }
    }
    Ok(())
}

/// Feeds `hosts` simulated hosts for `hours` at 1 Hz into a new store in
/// `dir` (from the start of a 30-day window, so rollup windows are whole),
/// flushing every `flush_secs` of simulated time; then measures it.
pub(crate) fn fill(dir: &Path, hosts: usize, hours: i64, flush_secs: i64) -> anyhow::Result<()> {
    anyhow::ensure!(
        !dir.join(REDB_FILE).exists(),
        "{} exists: store-fill writes a new store",
        dir.join(REDB_FILE).display()
    );
    std::fs::create_dir_all(dir)?;
    let started = std::time::Instant::now();
    let values = {
        let engine: Arc<dyn Engine> = Arc::new(Redb::open(dir)?);
        let mut writer = Writer::new(engine, Arc::new(StoreStats::default()))?;
        let from = Tier::Hour.window_of(super::START) + Tier::Hour.window_ms();
        super::feed(&mut writer, hosts, from, hours * 3600, 1000, flush_secs)
    };
    println!(
        "store-fill: {hosts} host(s), {hours} h at 1 Hz, {values} raw values in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    run(dir)
}
