//! The checkpoint spread over the flushes ([`super::checkpoint`]) on a real
//! redb file: every row readable after every flush, the log trimmed after
//! a rotation, a crash anywhere in a rotation replayed to exactly the rows
//! sent, seals that fall due together spread over flushes, and failed
//! flushes: no series name lost, memory bounded after a whole rotation.

use super::codec::decode_chunk;
use super::engine::{Engine, Table, parse_block_key};
use super::query::series;
use super::tests::{T0, cpu_at, entries, open, open_chunks, sample, temp_dir};
use super::tier::{Rows, Tier};
use super::writer::Writer;

const HOSTS: [&str; 3] = ["a", "b", "c"];

/// Takes second `i` of every host.
fn take(w: &mut Writer, start: i64, i: i64) {
    for (h, host) in HOSTS.iter().enumerate() {
        let ts = start + i * 1000;
        w.ingest(host, &sample(i as u64 + 1, ts, cpu_at(i + h as i64), 1.0))
            .unwrap();
    }
}

/// Asserts that each host's `cpu.total_pct` reads back as seconds
/// `0..n` from `start`, each once, with its value.
fn assert_all_rows(engine: &dyn Engine, w: Option<&Writer>, start: i64, n: i64) {
    for (h, host) in HOSTS.iter().enumerate() {
        let got = series(
            engine,
            w.map(|w| w.recent().as_ref()),
            host,
            "cpu.total_pct",
            start - 3_600_000,
            start + 3_600_000,
            1000,
        )
        .unwrap();
        assert_eq!(got.len(), n as usize, "host {host}");
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.ts, start + i as i64 * 1000);
            assert_eq!(p.last, f64::from(cpu_at(i as i64 + h as i64)));
        }
    }
}

/// Raw rows stored in the tables (open chunks and sealed blocks), by
/// series: duplicates would be counted twice.
fn stored_raw_rows(engine: &dyn Engine) -> std::collections::BTreeMap<u32, usize> {
    let mut rows = std::collections::BTreeMap::new();
    super::chunks::for_each_chunk(engine, &mut |id, tier, chunk| {
        if tier == Tier::Raw {
            let mut r = Rows::new(1);
            decode_chunk(chunk, &mut r).unwrap();
            *rows.entry(id).or_insert(0) += r.len();
        }
        true
    })
    .unwrap();
    let mut reader = super::stamps::Blocks::new(engine);
    engine
        .scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
            let (id, t, _) = parse_block_key(k).unwrap();
            if t == Tier::Raw as u8 {
                *rows.entry(id).or_insert(0) += reader.decode(k, v).unwrap().len();
            }
            true
        })
        .unwrap();
    rows
}

fn log_keys(engine: &dyn Engine) -> Vec<u64> {
    let mut keys = Vec::new();
    engine
        .scan(Table::Log, &[], &[0xff; 9], &mut |k, _| {
            keys.push(u64::from_be_bytes(k.try_into().unwrap()));
            true
        })
        .unwrap();
    keys
}

#[test]
fn a_checkpoint_spread_over_flushes_leaves_every_row_readable_and_trims_the_log() {
    let dir = temp_dir("spread");
    let (engine, mut w) = open(&dir);
    let e = engine.as_ref();
    w.set_slices(4, 1);
    let mut chunks = Vec::new();
    for step in 0..12i64 {
        take(&mut w, T0, 2 * step);
        take(&mut w, T0, 2 * step + 1);
        w.flush().unwrap();
        assert_all_rows(e, Some(&w), T0, 2 * step + 2);
        // The log holds the records of the last rotation only: a record
        // goes once every slice has been checkpointed after it.
        let keys = log_keys(e);
        assert!(keys.len() <= 3, "step {step}: {keys:?}");
        assert!(
            keys.iter().all(|k| *k as i64 > step - 4),
            "step {step}: {keys:?}"
        );
        chunks.push(open_chunks(e));
    }
    // Each flush wrote one slice's chunks, not every series' at once.
    let grown: Vec<usize> = chunks.windows(2).map(|c| c[1] - c[0]).collect();
    assert!(grown.iter().all(|g| *g > 0 && *g < 18), "{grown:?}");
    // A full checkpoint empties the log and the rows still read back.
    w.checkpoint().unwrap();
    assert_eq!(entries(e, Table::Log), 0);
    assert_all_rows(e, None, T0, 24);
    assert_eq!(w.backlog(), (0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crash_anywhere_in_a_rotation_replays_every_row_once() {
    // Across a raw window's end, so that windows wait to be sealed too.
    let start = T0 + 15 * 60_000 - 20_000;
    for flushes in 1..=11i64 {
        let dir = temp_dir("crash");
        let n = 2 * flushes + 1;
        {
            let (engine, mut w) = open(&dir);
            w.set_slices(4, 1);
            for i in 0..n {
                take(&mut w, start, i);
                if i % 2 == 1 {
                    w.flush().unwrap();
                }
            }
            assert!(entries(engine.as_ref(), Table::Log) > 0);
            // The last second is pending, not flushed: a SIGKILL loses it.
            // Dropped without a checkpoint.
        }
        let (engine, w) = open(&dir);
        let e = engine.as_ref();
        assert_eq!(entries(e, Table::Log), 0, "after {flushes} flushes");
        assert_all_rows(e, None, start, n - 1);
        assert_all_rows(e, Some(&w), start, n - 1);
        let stored = stored_raw_rows(e);
        assert_eq!(stored.len(), 18);
        assert!(
            stored.values().all(|r| *r == (n - 1) as usize),
            "after {flushes} flushes: {stored:?}"
        );
        // Replaying again changes nothing.
        drop((engine, w));
        let (engine, _w) = open(&dir);
        assert_eq!(stored_raw_rows(engine.as_ref()), stored);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn seals_that_fall_due_together_are_spread_over_flushes() {
    let dir = temp_dir("seals");
    let (engine, mut w) = open(&dir);
    let e = engine.as_ref();
    w.set_slices(3, 1);
    // Seals spread over 11 flushes (11.25 minutes at one a minute).
    w.set_flush_interval(60_000);
    // 1,536 series: six runs of 256, the unit a seal takes.
    let hosts: Vec<String> = (0..256).map(|h| format!("h{h}")).collect();
    let start = T0 + 15 * 60_000 - 10_000;
    let mut blocks = Vec::new();
    for i in 0..40i64 {
        for host in &hosts {
            w.ingest(
                host,
                &sample(i as u64 + 1, start + i * 1000, cpu_at(i), 1.0),
            )
            .unwrap();
        }
        if i % 2 == 1 {
            w.flush().unwrap();
            blocks.push(entries(e, Table::Blocks));
            let got = series(
                e,
                Some(w.recent()),
                "h7",
                "load.five",
                start,
                start + 60_000,
                1000,
            )
            .unwrap();
            assert_eq!(got.len(), i as usize + 1);
        }
    }
    // Every raw series' first window ended after 10 s (the minute and hour
    // tiers' have not): 1,536 windows, sealed over several flushes, never
    // more than the fewest runs a flush seals in one.
    assert_eq!(*blocks.last().unwrap(), 1536, "{blocks:?}");
    let per_flush: Vec<usize> = blocks.windows(2).map(|b| b[1] - b[0]).collect();
    let most = super::checkpoint::MIN_SEALS_PER_FLUSH * super::chunks::RUN as usize;
    assert!(per_flush.iter().all(|n| *n <= most), "{per_flush:?}");
    assert!(
        per_flush.iter().filter(|n| **n > 0).count() >= 3,
        "{per_flush:?}"
    );
    assert_eq!(w.backlog().0, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An engine whose writes fail while `failing` is set, and once at the
/// `n`th write after [`Flaky::fail_nth`].
pub(super) struct Flaky {
    inner: super::engine::Redb,
    failing: std::sync::atomic::AtomicBool,
    countdown: std::sync::atomic::AtomicI64,
}

impl Engine for Flaky {
    fn apply(&self, ops: &[super::engine::Op]) -> Result<(), super::StoreError> {
        use std::sync::atomic::Ordering;
        if self.failing.load(Ordering::Relaxed)
            || self.countdown.fetch_sub(1, Ordering::Relaxed) == 1
        {
            return Err(super::StoreError::Engine("write refused (test)".into()));
        }
        self.inner.apply(ops)
    }
    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), super::StoreError> {
        self.inner.scan(table, from, to, visit)
    }
    fn last(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<super::engine::Entry>, super::StoreError> {
        self.inner.last(table, from, to)
    }
    fn used_bytes(&self) -> Result<Option<u64>, super::StoreError> {
        self.inner.used_bytes()
    }
    fn file_bytes(&self) -> u64 {
        self.inner.file_bytes()
    }
}

impl Flaky {
    /// Fails the `n`th write from now (the first is 1), once.
    pub(super) fn fail_nth(&self, n: i64) {
        self.countdown
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A writer over a flaky engine in a fresh directory `name`, refusing
    /// writes from the start if `failing`.
    pub(super) fn writer(
        name: &str,
        failing: bool,
    ) -> (
        std::sync::Arc<Flaky>,
        std::sync::Arc<dyn Engine>,
        std::sync::Arc<super::StoreStats>,
        Writer,
    ) {
        use std::sync::Arc;
        let flaky = Arc::new(Flaky {
            inner: super::engine::Redb::open(&temp_dir(name)).unwrap(),
            failing: failing.into(),
            countdown: 0.into(),
        });
        let engine: Arc<dyn Engine> = flaky.clone();
        let stats = Arc::new(super::StoreStats::default());
        let w = Writer::new(engine.clone(), stats.clone()).unwrap();
        (flaky, engine, stats, w)
    }
}

#[test]
fn a_failed_flush_keeps_the_new_series_names_for_the_next_one() {
    use std::sync::atomic::Ordering;
    let (flaky, engine, _, mut w) = Flaky::writer("failed-flush-names", true);
    let start = T0;
    for i in 0..3 {
        take(&mut w, start, i);
    }
    assert!(w.flush().is_err(), "the engine refuses writes");
    flaky.failing.store(false, Ordering::Relaxed);
    for i in 3..5 {
        take(&mut w, start, i);
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    // From the tables alone (no rows in memory): the names made before
    // the failed flush are on disk, so the rows are found by name.
    assert_all_rows(engine.as_ref(), None, start, 5);
}

#[test]
fn flushes_failing_for_a_whole_rotation_drop_new_rows_and_keep_the_held_ones() {
    use std::sync::atomic::Ordering;
    let (flaky, engine, stats, mut w) = Flaky::writer("failing-rotation", false);
    w.set_checkpoint_every(3);
    let start = T0;
    take(&mut w, start, 0);
    w.flush().unwrap();
    flaky.failing.store(true, Ordering::Relaxed);
    // Three failed flushes (a rotation): their rows are held.
    for i in 1..4 {
        take(&mut w, start, i);
        assert!(w.flush().is_err());
    }
    assert_eq!(stats.values_lost.load(Ordering::Relaxed), 0);
    // The next ones drop their rows, counted.
    for i in 4..6 {
        take(&mut w, start, i);
        assert!(w.flush().is_err());
    }
    let per_second = stats.values_lost.load(Ordering::Relaxed) / 2;
    assert!(per_second > 0, "the dropped rows are counted");
    flaky.failing.store(false, Ordering::Relaxed);
    w.flush().unwrap();
    w.checkpoint().unwrap();
    // Seconds 0..4 were held and reach the tables; 4 and 5 were dropped.
    assert_all_rows(engine.as_ref(), None, start, 4);
}
