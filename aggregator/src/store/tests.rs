//! The store on a real redb file: what is written reads back exactly, the
//! rollups equal those computed here from the values sent, windows seal,
//! a reopened store resumes its series, retention and the disk bound trim.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hostpulse_proto::{Cpu, Load, Sample};

use super::engine::{Engine, Redb, Table};
use super::query::{Point, series};
use super::rollup::Agg;
use super::writer::Writer;
use super::{StorageConfig, StoreStats, maintain};

/// 2026-11-20T00:00:00Z, a whole day.
pub(super) const T0: i64 = 1_795_132_800_000;

pub(super) fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "hostpulse-store-{name}-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fastrand_u64() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

pub(super) fn sample(seq: u64, ts: i64, cpu: f32, load: f64) -> Sample {
    Sample {
        seq,
        timestamp_ms: ts,
        cpu: Some(Cpu {
            total_pct: cpu,
            per_core_pct: vec![cpu, cpu / 2.0],
        }),
        load: Some(Load {
            one: load,
            five: load / 2.0,
            fifteen: 0.25,
        }),
        ..Default::default()
    }
}

pub(super) fn cpu_at(i: i64) -> f32 {
    ((i * 7919) % 1000) as f32 / 10.0
}

pub(super) fn open(dir: &std::path::Path) -> (Arc<dyn Engine>, Writer) {
    let engine: Arc<dyn Engine> = Arc::new(Redb::open(dir).unwrap());
    let writer = Writer::new(engine.clone(), Arc::new(StoreStats::default())).unwrap();
    (engine, writer)
}

fn agg_of(values: impl Iterator<Item = f64>) -> Agg {
    let mut it = values;
    let mut a = Agg::of(it.next().unwrap());
    it.for_each(|v| a.add(v));
    a
}

fn assert_point(p: &Point, a: &Agg) {
    assert_eq!(
        (p.min, p.max, p.last, p.count),
        (a.min, a.max, a.last, a.count as u64)
    );
    assert!((p.avg - a.avg()).abs() < 1e-9, "{} vs {}", p.avg, a.avg());
}

#[test]
fn raw_values_and_rollups_read_back_across_windows_and_a_reopen() {
    let dir = temp_dir("roundtrip");
    // 2 h 10 min of one-second samples, flushed every 2 s: many sealed raw
    // windows, two closed hours.
    let n = 2 * 3600 + 600;
    {
        let (engine, mut w) = open(&dir);
        for i in 0..n {
            w.ingest(
                "web-01",
                &sample(i as u64 + 1, T0 + i * 1000, cpu_at(i), 1.5),
            )
            .unwrap();
            if i % 2 == 1 {
                w.flush().unwrap();
            }
        }
        w.flush().unwrap();
        let mut blocks = 0;
        engine
            .scan(Table::Blocks, &[], &[0xff; 14], &mut |_, _| {
                blocks += 1;
                true
            })
            .unwrap();
        assert!(blocks >= 8, "{blocks} sealed blocks");
    }
    let (engine, mut w) = open(&dir);
    let e = engine.as_ref();
    // Raw: exact.
    let raw = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.total_pct",
        T0,
        T0 + n * 1000,
        1000,
    )
    .unwrap();
    assert_eq!(raw.len(), n as usize);
    for (i, p) in raw.iter().enumerate() {
        assert_eq!(p.ts, T0 + i as i64 * 1000);
        assert_eq!(p.last, f64::from(cpu_at(i as i64)));
    }
    // Minutes: from the minute tier (and raw for the open minute).
    let minutes = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.total_pct",
        T0,
        T0 + n * 1000,
        60_000,
    )
    .unwrap();
    assert_eq!(minutes.len(), (n / 60) as usize);
    for (m, p) in minutes.iter().enumerate() {
        let a = agg_of((m as i64 * 60..(m as i64 + 1) * 60).map(|i| f64::from(cpu_at(i))));
        assert_point(p, &a);
    }
    // Hours: two closed hours, the third filled in from minutes and raw.
    let hours = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.total_pct",
        T0,
        T0 + n * 1000,
        3_600_000,
    )
    .unwrap();
    assert_eq!(hours.len(), 3);
    for (h, p) in hours.iter().enumerate() {
        let end = ((h as i64 + 1) * 3600).min(n);
        assert_point(
            p,
            &agg_of((h as i64 * 3600..end).map(|i| f64::from(cpu_at(i)))),
        );
    }
    // A `from` inside a bucket gets the whole bucket.
    let inside = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.total_pct",
        T0 + 90_000,
        T0 + 180_000,
        60_000,
    )
    .unwrap();
    assert_eq!(inside.len(), 2);
    assert_eq!(inside[0].ts, T0 + 60_000);
    assert_eq!(inside[0].count, 60);
    // On-the-fly rollup of raw at 10 s.
    let tens = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.per_core_pct{core=\"1\"}",
        T0,
        T0 + 60_000,
        10_000,
    )
    .unwrap();
    assert_eq!(tens.len(), 6);
    assert_point(
        &tens[1],
        &agg_of((10..20).map(|i| f64::from(cpu_at(i) / 2.0))),
    );
    // The reopened writer resumes: the open minute and hour continue.
    for i in n..n + 120 {
        w.ingest(
            "web-01",
            &sample(i as u64 + 1, T0 + i * 1000, cpu_at(i), 1.5),
        )
        .unwrap();
    }
    w.flush().unwrap();
    let hours = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.total_pct",
        T0,
        T0 + 4 * 3_600_000,
        3_600_000,
    )
    .unwrap();
    assert_point(
        &hours[2],
        &agg_of((7200..n + 120).map(|i| f64::from(cpu_at(i)))),
    );
    let minutes = series(
        e,
        Some(w.recent()),
        "web-01",
        "load.one",
        T0 + 7_200_000,
        T0 + 3 * 3_600_000,
        60_000,
    )
    .unwrap();
    assert_eq!(minutes.len(), 12);
    assert!(minutes.iter().all(|p| p.count == 60 && p.avg == 1.5));
    // Late values are dropped; unknown series are empty.
    w.ingest("web-01", &sample(1, T0, 99.0, 9.0)).unwrap();
    w.flush().unwrap();
    let first = series(
        e,
        Some(w.recent()),
        "web-01",
        "cpu.total_pct",
        T0,
        T0 + 1000,
        1000,
    )
    .unwrap();
    assert_eq!(first[0].last, f64::from(cpu_at(0)));
    assert!(
        series(
            e,
            Some(w.recent()),
            "nope",
            "cpu.total_pct",
            T0,
            T0 + 1000,
            1000
        )
        .unwrap()
        .is_empty()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retention_and_the_disk_bound_delete_the_oldest_first() {
    let dir = temp_dir("retention");
    let (engine, mut w) = open(&dir);
    let stats = StoreStats::default();
    let now = T0 + 5 * 3_600_000;
    // Three hours of samples ending two hours before `now`. Retention
    // deletes sealed blocks: every series checkpointed and every ended
    // window sealed, as at steady state.
    three_sealed_hours(&mut w);
    let config = StorageConfig {
        raw_retention_hours: 3,
        ..StorageConfig::default()
    };
    maintain::run(&mut w, &config, &stats, now).unwrap();
    let e = engine.as_ref();
    let raw = series(e, Some(w.recent()), "db-01", "cpu.total_pct", T0, now, 1000).unwrap();
    // Windows ending more than 3 h before `now` are gone, later ones stay.
    assert!(
        raw.first().unwrap().ts >= now - 4 * 3_600_000,
        "{:?}",
        raw.first()
    );
    assert!(raw.first().unwrap().ts < now - 3 * 3_600_000);
    assert!(
        stats
            .expired_blocks
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // The minute tier keeps the whole three hours.
    let minutes = series(
        e,
        Some(w.recent()),
        "db-01",
        "cpu.total_pct",
        T0,
        now,
        60_000,
    )
    .unwrap();
    assert_eq!(minutes.first().unwrap().ts, T0);
    // A disk bound below what is held evicts raw windows, oldest first.
    let used = engine
        .used_bytes()
        .unwrap()
        .expect("a small store is counted as it opens");
    let config = StorageConfig {
        max_disk_bytes: used - 1,
        raw_retention_hours: 1000,
        ..StorageConfig::default()
    };
    maintain::run(&mut w, &config, &stats, now).unwrap();
    assert!(
        stats
            .evicted_blocks
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(engine.used_bytes().unwrap().unwrap() < used);
    let after = series(e, Some(w.recent()), "db-01", "cpu.total_pct", T0, now, 1000).unwrap();
    assert!(after.first().is_none_or(|p| p.ts > raw.first().unwrap().ts));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn process_tables_are_read_per_host_and_deleted_past_retention() {
    use super::processes::{OpenMinute, delete_before, read, write};
    use hostpulse_proto::{Process, Processes};
    let dir = temp_dir("procs");
    let engine = Redb::open(&dir).unwrap();
    let mut ops = Vec::new();
    for host in ["a", "b"] {
        for m in 0..5i64 {
            let mut open = OpenMinute::new(m * 60_000);
            open.fold(&Processes {
                count: 1,
                top_cpu: vec![Process {
                    pid: m as u32 + 1,
                    start_time: 7,
                    name: format!("{host}{m}"),
                    cpu_pct: 1.0,
                    memory_bytes: 2,
                }],
                top_memory: Vec::new(),
                others: Default::default(),
            });
            write(&engine, host, open, false, &mut ops).unwrap();
        }
    }
    engine.apply(&ops).unwrap();
    let names = |host: &str| -> Vec<String> {
        read(&engine, host, 0, 10 * 60_000, 100)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t[0].name.clone())
            .collect()
    };
    assert_eq!(names("a"), ["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(read(&engine, "b", 60_000, 180_000, 100).unwrap().len(), 2);
    let (gone, bytes) = delete_before(&engine, 3 * 60_000, None).unwrap();
    assert_eq!(gone, 6, "three minutes of two hosts");
    assert!(bytes > 0);
    assert_eq!(names("a"), ["a3", "a4"]);
    assert_eq!(names("b"), ["b3", "b4"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Open chunks, over every group.
pub(super) fn open_chunks(engine: &dyn Engine) -> usize {
    let mut n = 0;
    super::chunks::for_each_chunk(engine, &mut |_, _, _| {
        n += 1;
        true
    })
    .unwrap();
    n
}

pub(super) fn entries(engine: &dyn Engine, table: Table) -> usize {
    let mut n = 0;
    engine
        .scan(table, &[], &[0xff; 14], &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

/// Files in the store's log directory.
fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join(super::engine::LOG_DIR))
        .unwrap()
        .count()
}

#[test]
fn rows_since_the_last_checkpoint_are_read_from_memory_and_replayed_after_a_crash() {
    let dir = temp_dir("log");
    let n = 100;
    {
        let (engine, mut w) = open(&dir);
        w.set_checkpoint_every(1_000);
        for i in 0..n {
            w.ingest("h", &sample(i as u64 + 1, T0 + i * 1000, cpu_at(i), 1.0))
                .unwrap();
            if i % 2 == 1 {
                w.flush().unwrap();
            }
        }
        // One log record per flush but the first, which checkpointed the
        // slice of all six series (ids 0-5, slice 0 of 1,000) instead; in
        // the per-series tables only those first rows.
        assert_eq!(entries(engine.as_ref(), Table::Log), (n / 2 - 1) as usize);
        // On redb the records are files beside the store's file.
        assert_eq!(log_files(&dir), (n / 2 - 1) as usize);
        assert_eq!(open_chunks(engine.as_ref()), 6);
        let raw = series(
            engine.as_ref(),
            Some(w.recent()),
            "h",
            "cpu.total_pct",
            T0,
            T0 + n * 1000,
            1000,
        )
        .unwrap();
        assert_eq!(raw.len(), n as usize);
        // Dropped without a checkpoint, as by a SIGKILL.
    }
    let (engine, w) = open(&dir);
    let e = engine.as_ref();
    assert_eq!(entries(e, Table::Log), 0, "the log was replayed");
    assert_eq!(
        log_files(&dir),
        0,
        "the replayed records' files were removed"
    );
    assert!(open_chunks(e) > 0);
    let raw = series(e, None, "h", "cpu.total_pct", T0, T0 + n * 1000, 1000).unwrap();
    assert_eq!(raw.len(), n as usize);
    for (i, p) in raw.iter().enumerate() {
        assert_eq!(p.last, f64::from(cpu_at(i as i64)));
    }
    let minutes = series(
        e,
        Some(w.recent()),
        "h",
        "load.one",
        T0,
        T0 + n * 1000,
        60_000,
    )
    .unwrap();
    assert_eq!(
        minutes.iter().map(|p| p.count).collect::<Vec<_>>(),
        [60, 40]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_chunks_of_an_older_build_are_moved_into_groups_and_read_back() {
    use super::codec::encode_chunk;
    use super::engine::{Op, block_key};
    use super::tier::{Rows, Tier};
    let dir = temp_dir("legacy-open");
    let id = {
        let (engine, mut w) = open(&dir);
        w.ingest("h", &sample(1, T0, 1.0, 1.0)).unwrap();
        w.checkpoint().unwrap();
        w.flush().unwrap();
        w.checkpoint().unwrap();
        let id = super::read::series_id(
            engine.as_ref(),
            &super::read::series_name("h", "cpu.total_pct"),
        )
        .unwrap()
        .unwrap();
        // Two chunks as a build before the groups wrote them: one per
        // series and checkpoint, keyed series · tier · first row's time.
        let mut ops = Vec::new();
        for part in [1..60i64, 60..90] {
            let mut rows = Rows::new(1);
            part.clone()
                .for_each(|i| rows.push(T0 + i * 1000, &[i as f64]));
            ops.push(Op::Put(
                Table::LegacyOpen,
                block_key(id, Tier::Raw as u8, T0 + part.start * 1000).to_vec(),
                encode_chunk(&rows),
            ));
        }
        engine.apply(&ops).unwrap();
        id
    };
    let engine: Arc<dyn Engine> = Arc::new(Redb::open(&dir).unwrap());
    assert_eq!(maintain::migrate_open(engine.as_ref()).unwrap(), 2);
    assert_eq!(entries(engine.as_ref(), Table::LegacyOpen), 0);
    let got = series(
        engine.as_ref(),
        None,
        "h",
        "cpu.total_pct",
        T0,
        T0 + 90_000,
        1000,
    )
    .unwrap();
    assert_eq!(got.len(), 90);
    assert_eq!(got[0].last, 1.0);
    assert!(
        got[1..]
            .iter()
            .enumerate()
            .all(|(i, p)| p.last == (i + 1) as f64)
    );
    assert_eq!(
        super::chunks::newest(engine.as_ref(), id, Tier::Raw).unwrap(),
        Some((Tier::Raw.window_of(T0), T0 + 89_000))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crash_before_a_flush_commits_drops_the_log_rows_of_series_it_created() {
    use super::engine::Op;
    use super::read::{series_id, series_name};
    use super::recent::{append_entry, log_key};
    use super::tier::{Rows, Tier};
    let dir = temp_dir("unnamed");
    let n = 10;
    let (named, unnamed) = {
        let (engine, mut w) = open(&dir);
        for i in 0..n {
            w.ingest("h", &sample(i as u64 + 1, T0 + i * 1000, cpu_at(i), 1.0))
                .unwrap();
        }
        w.flush().unwrap();
        let e = engine.as_ref();
        let named = series_id(e, &series_name("h", "cpu.total_pct"))
            .unwrap()
            .unwrap();
        let unnamed = super::writer::stored_next_id(e).unwrap();
        // The record of a flush that created series `unnamed` and was
        // killed before its transaction: on disk, with no name for it.
        let mut record = Vec::new();
        let mut row = Rows::new(1);
        row.push(T0 + n * 1000, &[42.0]);
        append_entry(&mut record, named, Tier::Raw, &row);
        append_entry(&mut record, unnamed, Tier::Raw, &row);
        engine
            .apply(&[Op::Put(Table::Log, log_key(1_000).to_vec(), record)])
            .unwrap();
        (named, unnamed)
    };
    let (engine, mut w) = open(&dir);
    let e = engine.as_ref();
    assert_eq!(entries(e, Table::Log), 0, "the log was replayed");
    let raw = series(e, None, "h", "cpu.total_pct", T0, T0 + 60_000, 1000).unwrap();
    assert_eq!(
        raw.len(),
        n as usize + 1,
        "the named series' row is replayed"
    );
    assert_eq!(raw.last().unwrap().last, 42.0);
    // The id goes to the next new series, which holds only its own values.
    w.ingest("h2", &sample(1, T0 + 5_000, 7.0, 1.0)).unwrap();
    w.flush().unwrap();
    w.checkpoint().unwrap();
    let e = engine.as_ref();
    // cpu.total_pct is a sample's first field: it takes the id.
    let id = series_id(e, &series_name("h2", "cpu.total_pct")).unwrap();
    assert_eq!(id, Some(unnamed), "named series {named}");
    let got = series(
        e,
        Some(w.recent()),
        "h2",
        "cpu.total_pct",
        T0,
        T0 + 60_000,
        1000,
    )
    .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].ts, got[0].last), (T0 + 5_000, 7.0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store handle over a queue of `queue` batches and `queue_bytes`, with
/// no writer: what is queued stays until the test takes it.
fn handle_without_writer(
    queue: usize,
    queue_bytes: u64,
) -> (super::StoreHandle, std::sync::mpsc::Receiver<super::Msg>) {
    let config = StorageConfig {
        queue,
        queue_bytes,
        ..StorageConfig::default()
    };
    let room = Arc::new(super::Room::new(&config));
    let (tx, rx) = std::sync::mpsc::sync_channel(room.max_slots + 1);
    let handle = super::StoreHandle {
        tx,
        stats: Arc::new(StoreStats::default()),
        room,
    };
    (handle, rx)
}

/// Takes one queued message as the writer does, giving its room back;
/// its sample count, none if nothing is queued.
fn take(handle: &super::StoreHandle, rx: &std::sync::mpsc::Receiver<super::Msg>) -> Option<usize> {
    let (n, weight) = match rx.try_recv().ok()? {
        super::Msg::Samples(_, samples, weight) => (samples.len(), weight),
        super::Msg::Peer(_, weight) => (1, weight),
        super::Msg::Stop => panic!("no stop was sent"),
    };
    super::release(&handle.stats, &handle.room, weight);
    Some(n)
}

/// Takes one queued message; its sample count.
fn take_one(handle: &super::StoreHandle, rx: &std::sync::mpsc::Receiver<super::Msg>) -> usize {
    take(handle, rx).expect("a message queued")
}

/// `f`'s output, which must come within 10 s.
async fn soon<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("done within 10 s")
}

#[tokio::test]
async fn a_full_queue_makes_ingest_wait_for_room_and_drops_only_peer_updates() {
    use futures_util::FutureExt;
    use std::sync::atomic::Ordering::Relaxed;
    let (handle, rx) = handle_without_writer(3, 10_000);
    let stats = handle.stats.clone();
    let host: Arc<str> = "h".into();
    let two = vec![sample(1, 1_000, 1.0, 1.0), sample(2, 2_000, 2.0, 1.0)];
    let counts = || {
        (
            stats.queued.load(Relaxed),
            stats.queued_bytes.load(Relaxed),
            stats.dropped_samples.load(Relaxed),
            stats.waits.load(Relaxed),
        )
    };
    soon(handle.put(host.clone(), two.clone(), 4_000))
        .await
        .unwrap();
    soon(handle.put(host.clone(), two.clone(), 4_000))
        .await
        .unwrap();
    assert_eq!(counts(), (2, 8_000, 0, 0));
    assert!((handle.fill() - 0.8).abs() < 1e-9, "{}", handle.fill());
    // Under storage.overload_queue_fraction (0.9): acks do not ask agents
    // to slow down yet.
    assert!(!handle.overloaded());
    // Over queue_bytes: the third batch waits, nothing dropped.
    let mut third = std::pin::pin!(handle.put(host.clone(), two.clone(), 4_000));
    assert!(third.as_mut().now_or_never().is_none(), "waits for room");
    // The hub's peer update does not wait: dropped and counted.
    let update = Arc::new(crate::update::Update::new(
        "host.p.load".into(),
        1,
        std::time::SystemTime::now(),
        std::time::SystemTime::now(),
        crate::update::Payload::Load(Load {
            one: 1.0,
            five: 1.0,
            fifteen: 1.0,
        }),
    ));
    handle.offer_peer(&update);
    assert_eq!(counts(), (2, 8_000, 1, 0));
    // The writer takes one batch: its room goes to the one waiting.
    assert_eq!(take_one(&handle, &rx), 2);
    soon(third).await.unwrap();
    assert_eq!(counts(), (2, 8_000, 1, 1));
    assert!(stats.wait_micros.load(Relaxed) > 0);
    // Bytes fit, slots run out: one more fits (the third slot), the next
    // waits for a slot.
    soon(handle.put(host.clone(), two[..1].to_vec(), 100))
        .await
        .unwrap();
    assert_eq!(handle.fill(), 1.0);
    assert!(handle.overloaded());
    let mut fifth = std::pin::pin!(handle.put(host.clone(), two[..1].to_vec(), 100));
    assert!(fifth.as_mut().now_or_never().is_none(), "waits for a slot");
    assert_eq!(take_one(&handle, &rx), 2);
    soon(fifth).await.unwrap();
    // Every sample put is queued, none lost.
    let mut taken = 0;
    while let Some(n) = take(&handle, &rx) {
        taken += n;
    }
    assert_eq!(taken, 2 + 1 + 1);
    assert_eq!(counts(), (0, 0, 1, 2));
    assert_eq!(handle.fill(), 0.0);
    // A batch larger than the whole bound goes into an empty queue (it
    // would never fit otherwise), and waits for one holding another.
    soon(handle.put(host.clone(), two.clone(), 50_000))
        .await
        .unwrap();
    assert_eq!(counts(), (1, 10_000, 1, 2));
    let mut small = std::pin::pin!(handle.put(host.clone(), two.clone(), 10));
    assert!(
        small.as_mut().now_or_never().is_none(),
        "waits for an empty queue"
    );
    take_one(&handle, &rx);
    soon(small).await.unwrap();
    assert_eq!(counts(), (1, 64, 1, 3));
}

#[tokio::test]
async fn a_stopping_store_refuses_waiting_ingest_and_a_dead_writer_drops_and_counts() {
    use std::sync::atomic::Ordering::{Relaxed, Release};
    let host: Arc<str> = "h".into();
    let one = vec![sample(1, 1_000, 1.0, 1.0)];
    // Stopping: a sender waiting for room is told, so its agent is not
    // acknowledged; so is a later one.
    let (handle, _rx) = handle_without_writer(1, 10_000);
    soon(handle.put(host.clone(), one.clone(), 100))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (handle, host, one) = (handle.clone(), host.clone(), one.clone());
        async move { handle.put(host, one, 100).await }
    });
    tokio::task::yield_now().await;
    handle.room.stopping.store(true, Release);
    handle.room.close();
    assert!(soon(waiting).await.unwrap().is_err());
    assert!(
        soon(handle.put(host.clone(), one.clone(), 100))
            .await
            .is_err()
    );
    assert_eq!(handle.stats.dropped_samples.load(Relaxed), 0);
    // A writer gone without a stop (a bug): the live path goes on, and the
    // samples are counted dropped.
    let (handle, rx) = handle_without_writer(4, 10_000);
    drop(rx);
    soon(handle.put(host.clone(), one.clone(), 100))
        .await
        .unwrap();
    handle.room.close();
    soon(handle.put(host.clone(), one.clone(), 100))
        .await
        .unwrap();
    assert_eq!(handle.stats.dropped_samples.load(Relaxed), 2);
    assert_eq!(handle.stats.queued.load(Relaxed), 0);
}

#[test]
fn a_burst_through_a_queue_of_one_batch_stores_every_sample() {
    // Eight senders, a queue of one batch and a real writer: every put
    // waits for the writer in turn, and every value reads back.
    let dir = temp_dir("burst");
    let engine: Arc<dyn Engine> = Arc::new(Redb::open(&dir).unwrap());
    let config = StorageConfig {
        dir: Some(dir.clone()),
        queue: 1,
        queue_bytes: 1 << 20,
        flush_interval_ms: 50,
        ..StorageConfig::default()
    };
    let store = super::Store::start(engine.clone(), config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    const HOSTS: i64 = 8;
    const SAMPLES: i64 = 300;
    runtime.block_on(async {
        let mut senders = Vec::new();
        for h in 0..HOSTS {
            let handle = store.handle();
            senders.push(tokio::spawn(async move {
                let host: Arc<str> = format!("burst-{h}").into();
                for i in 0..SAMPLES {
                    let s = sample(i as u64 + 1, T0 + i * 1000, cpu_at(i + h), 1.0);
                    soon(handle.put(host.clone(), vec![s], 200)).await.unwrap();
                }
            }));
        }
        for s in senders {
            soon(s).await.unwrap();
        }
    });
    let view = store.view();
    store.close();
    let stats = view.stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.dropped_samples.load(Relaxed), 0);
    assert!(
        stats.waits.load(Relaxed) > 0,
        "the queue of one batch filled"
    );
    for h in 0..HOSTS {
        cpu_reads_back(engine.as_ref(), Some(&view.recent), "burst", h, SAMPLES);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A put of entry `i` into `blocks`: 4 KiB that do not compress.
fn incompressible_put(i: u32, rng: &mut u64) -> super::engine::Op {
    let v: Vec<u8> = (0..4096)
        .map(|_| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng as u8
        })
        .collect();
    super::engine::Op::Put(Table::Blocks, i.to_be_bytes().to_vec(), v)
}

/// Puts entries `from..from + 4096` (16 MiB) in transactions of 256.
fn put_16_mib(engine: &Redb, from: u32, rng: &mut u64) {
    for batch in 0..16u32 {
        let first = from + batch * 256;
        let ops: Vec<_> = (first..first + 256)
            .map(|i| incompressible_put(i, rng))
            .collect();
        engine.apply(&ops).unwrap();
    }
}

#[test]
fn bytes_in_use_follow_writes_and_deletes_between_exact_counts() {
    use super::engine::Op;
    let dir = temp_dir("usage");
    let engine = Redb::open(&dir).unwrap();
    let empty = engine.used_bytes().unwrap().unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let put = incompressible_put;
    put_16_mib(&engine, 0, &mut rng);
    // Not counted again yet: an estimate from the entries written, which
    // an exact count then confirms within its pages' slack.
    let estimated = engine.used_bytes().unwrap().unwrap();
    assert!(estimated >= empty + (16 << 20), "{estimated} after {empty}");
    let counted = engine.count_used_bytes().unwrap();
    assert!(counted >= 16 << 20, "counted {counted}");
    let ratio = estimated as f64 / counted as f64;
    assert!(
        (0.6..=1.6).contains(&ratio),
        "estimated {estimated}, counted {counted}"
    );
    assert_eq!(engine.used_bytes().unwrap(), Some(counted));
    // Replacing a value with one as long changes nothing; deleting half
    // the entries takes their bytes, scaled by the pages per byte counted.
    engine.apply(&[put(0, &mut rng)]).unwrap();
    assert_eq!(engine.used_bytes().unwrap(), Some(counted));
    let deletes: Vec<Op> = (0..2048u32)
        .map(|i| Op::Delete(Table::Blocks, i.to_be_bytes().to_vec()))
        .collect();
    engine.apply(&deletes).unwrap();
    let after = engine.used_bytes().unwrap().unwrap();
    assert!(
        after + (8 << 20) <= counted && after > counted / 4,
        "{after} after deleting half of {counted}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_count_on_its_own_thread_sees_each_commit_once() {
    let dir = temp_dir("usage-behind");
    let mut engine = Redb::open(&dir).unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    engine.used_bytes().unwrap();
    put_16_mib(&engine, 0, &mut rng);
    // Due at once: this call takes a snapshot of the first 16 MiB, starts
    // its count and returns the estimate without waiting for it; 16 MiB more
    // are committed before the count ends (the gate holds it).
    engine.set_recount_every(Duration::ZERO);
    let gate = engine.count_gate.clone();
    let held = gate.lock().unwrap();
    let before = engine.used_bytes().unwrap().unwrap();
    engine.set_recount_every(Duration::from_secs(3600));
    put_16_mib(&engine, 4096, &mut rng);
    drop(held);
    engine.join_count();
    let estimated = engine.used_bytes().unwrap().unwrap();
    let counted = engine.count_used_bytes().unwrap();
    // A commit counted twice would make the estimate about 1.5 times the
    // count; one lost, about half of it.
    let ratio = estimated as f64 / counted as f64;
    assert!(
        (0.8..=1.25).contains(&ratio),
        "estimated {estimated} after the count, counted {counted} (before it {before})"
    );
    assert!(counted >= 32 << 20, "counted {counted}");
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three hours of one host's samples from `T0`, every window sealed.
fn three_sealed_hours(w: &mut Writer) {
    for i in 0..3 * 3600 {
        w.ingest(
            "db-01",
            &sample(i as u64 + 1, T0 + i * 1000, cpu_at(i), 2.0),
        )
        .unwrap();
        if i % 600 == 599 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    w.seal_queued().unwrap();
}

#[test]
fn a_large_store_opened_after_a_crash_opens_at_once_and_evicts_only_once_counted() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = temp_dir("count-at-open");
    {
        let (_engine, mut w) = open(&dir);
        three_sealed_hours(&mut w);
        // Dropped without `closing`: no count is saved, as after a crash.
    }
    assert!(!dir.join(super::engine::USAGE_FILE).exists());
    // Every file is "large" (counted on a thread of its own), and the
    // count is held: the open returns without it.
    let gate = Arc::new(std::sync::Mutex::new(()));
    let held = gate.lock().unwrap();
    let redb = Arc::new(Redb::open_gated(&dir, gate.clone(), 0).unwrap());
    let engine: Arc<dyn Engine> = redb.clone();
    assert_eq!(engine.used_bytes().unwrap(), None);
    // Over a bound of one byte, eviction waits for the count: nothing goes,
    // and the gauge is not set from a guess.
    let mut w = Writer::new(engine.clone(), Arc::new(StoreStats::default())).unwrap();
    let stats = StoreStats::default();
    let config = StorageConfig {
        max_disk_bytes: 1,
        raw_retention_hours: 1000,
        ..StorageConfig::default()
    };
    let now = T0 + 5 * 3_600_000;
    maintain::run(&mut w, &config, &stats, now).unwrap();
    assert_eq!(stats.evicted_blocks.load(Relaxed), 0);
    assert_eq!(stats.used_bytes.load(Relaxed), 0);
    let raw = series(
        engine.as_ref(),
        Some(w.recent()),
        "db-01",
        "cpu.total_pct",
        T0,
        now,
        1000,
    )
    .unwrap();
    assert_eq!(raw.len(), 3 * 3600);
    // Once counted, the bound holds again.
    drop(held);
    redb.join_count();
    let used = engine.used_bytes().unwrap().expect("counted");
    assert!(used > 0);
    maintain::run(&mut w, &config, &stats, now).unwrap();
    assert!(stats.evicted_blocks.load(Relaxed) > 0);
    assert!(stats.used_bytes.load(Relaxed) < used);
    drop((w, engine, redb));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_clean_close_saves_the_bytes_in_use_for_the_next_open_only() {
    use super::engine::USAGE_FILE;
    let dir = temp_dir("usage-saved");
    let usage = dir.join(USAGE_FILE);
    let engine = Redb::open(&dir).unwrap();
    let mut rng = 0x5851_f42d_4c95_7f2du64;
    put_16_mib(&engine, 0, &mut rng);
    let estimated = engine.used_bytes().unwrap().unwrap();
    engine.closing().unwrap();
    drop(engine);
    assert!(usage.exists());
    let saved = std::fs::read_to_string(&usage).unwrap();
    // Taken at the next open, with any count held: no count is needed.
    let gate = Arc::new(std::sync::Mutex::new(()));
    let open_held = || {
        let held = gate.lock().unwrap();
        (Redb::open_gated(&dir, gate.clone(), 0).unwrap(), held)
    };
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), Some(estimated));
    assert!(!usage.exists(), "taken once");
    drop(held);
    put_16_mib(&engine, 4096, &mut rng);
    drop(engine);
    // Not closed cleanly: counted again, from the file as it is now.
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), None);
    drop(held);
    engine.join_count();
    let counted = engine.used_bytes().unwrap().unwrap();
    assert!(counted >= 32 << 20, "counted {counted}");
    engine.closing().unwrap();
    drop(engine);
    // A count saved for another file (a store put back from a copy) is not
    // taken, nor one for this file changed since without a change of length
    // (written by a build that does not read the count).
    std::fs::write(&usage, &saved).unwrap();
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), None);
    assert!(!usage.exists());
    drop((held, engine));
    let file = dir.join(super::engine::REDB_FILE);
    let now_saved = |pages: u64, per_byte: &str, age_ms: u64| {
        let m = std::fs::metadata(&file).unwrap();
        let ns = m
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "hostpulse store usage 2\nfile_bytes {}\nmodified_ns {ns}\npages {pages}\nper_byte {per_byte}\ncount_age_ms {age_ms}\n",
            m.len()
        )
    };
    let current = now_saved(12_345, "1.5", 0);
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::write(&usage, &current).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), None, "taken though changed");
    drop((held, engine));
    // A count out of the range a count finds is not taken either.
    std::fs::write(&usage, now_saved(12_345, "1e300", 0)).unwrap();
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), None);
    drop((held, engine));
    // A saved count keeps its age: a fresh one stands, one older than the
    // interval between counts is counted again at once.
    std::fs::write(&usage, now_saved(12_345, "1.5", 0)).unwrap();
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), Some(12_345));
    drop(held);
    engine.join_count();
    assert_eq!(engine.used_bytes().unwrap(), Some(12_345));
    drop(engine);
    let age = super::engine::EXACT_USAGE_EVERY.as_millis() as u64 + 1000;
    std::fs::write(&usage, now_saved(12_345, "1.5", age)).unwrap();
    let (engine, held) = open_held();
    assert_eq!(engine.used_bytes().unwrap(), Some(12_345));
    drop(held);
    engine.join_count();
    let recounted = engine.used_bytes().unwrap().unwrap();
    assert!(recounted >= 32 << 20, "recounted {recounted}");
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn windows_a_previous_run_left_open_are_left_to_the_writer_which_seals_them_after_the_open() {
    use super::checkpoint::Window;
    use super::tier::Tier;
    use std::collections::BTreeSet;
    const SECS: i64 = 40 * 60;
    let dir = temp_dir("leftovers");
    left_open(&dir, "left", 3, SECS);
    let (engine, _) = open(&dir);
    assert_eq!(entries(engine.as_ref(), Table::Blocks), 0);
    let chunks = open_chunks(engine.as_ref());
    let leftovers = |now: i64| -> [BTreeSet<(Tier, i64)>; 2] {
        let got = maintain::leftover_windows(engine.as_ref(), now).unwrap();
        let set = |v: Vec<Window>| v.into_iter().map(|(_, tier, w)| (tier, w)).collect();
        [set(got.ended), set(got.open)]
    };
    let windows = |now: i64| {
        let [ended, _] = leftovers(now);
        ended
    };
    let raw: Vec<i64> = (0..SECS)
        .step_by(60)
        .map(|i| Tier::Raw.window_of(T0 + i * 1000))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(raw.len() >= 3, "{raw:?}");
    let last = T0 + (SECS - 1) * 1000;
    // While the newest raw window has not ended, it is left for the series
    // to resume into; the older ones are handed to the writer.
    let older: BTreeSet<_> = raw[..raw.len() - 1]
        .iter()
        .map(|w| (Tier::Raw, *w))
        .collect();
    assert_eq!(windows(last + 1), older);
    let open = &leftovers(last + 1)[1];
    assert!(open.contains(&(Tier::Raw, raw[raw.len() - 1])), "{open:?}");
    assert!(open.contains(&(Tier::Minute, Tier::Minute.window_of(last))));
    assert!(leftovers(i64::MAX)[1].is_empty());
    // After an outage every window has ended: all of them, newest too, and
    // finding them seals nothing.
    let all = windows(i64::MAX);
    for w in &raw {
        assert!(all.contains(&(Tier::Raw, *w)), "{w} in {all:?}");
    }
    assert!(all.contains(&(Tier::Minute, Tier::Minute.window_of(T0))));
    assert_eq!(entries(engine.as_ref(), Table::Blocks), 0);
    assert_eq!(open_chunks(engine.as_ref()), chunks);
    drop(engine);
    // The store opens (now: every window ended) and its writer seals them
    // over its first flushes; every value reads back.
    let store = super::Store::open(&StorageConfig {
        dir: Some(dir.clone()),
        flush_interval_ms: 50,
        // Retention would delete these old windows once sealed.
        raw_retention_hours: 1 << 20,
        minute_retention_days: 1 << 20,
        ..StorageConfig::default()
    })
    .unwrap();
    let view = store.view();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_chunks(view.engine.as_ref()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} open chunks left after 30 s",
            open_chunks(view.engine.as_ref())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    store.close();
    for h in 0..3 {
        cpu_reads_back(view.engine.as_ref(), None, "left", h, SECS);
    }
    drop(view);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `secs` seconds of hosts `{prefix}-0`.. checkpointed but not sealed:
/// open chunks, as a crash (or a stop mid-window) leaves them. Returns the
/// time of the last value.
fn left_open(dir: &std::path::Path, prefix: &str, hosts: i64, secs: i64) -> i64 {
    let (_engine, mut w) = open(dir);
    for i in 0..secs {
        for h in 0..hosts {
            let s = sample(i as u64 + 1, T0 + i * 1000, cpu_at(i + h), 1.0);
            w.ingest(&format!("{prefix}-{h}"), &s).unwrap();
        }
        if i % 600 == 599 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    T0 + (secs - 1) * 1000
}

/// The first `secs` raw values of `cpu.total_pct` of host `{prefix}-{h}`
/// read back: `cpu_at(i + h)` at `T0 + i` seconds, as [`left_open`] and
/// the burst test send them.
fn cpu_reads_back(
    engine: &dyn Engine,
    recent: Option<&super::recent::Recent>,
    prefix: &str,
    h: i64,
    secs: i64,
) {
    let got = series(
        engine,
        recent,
        &format!("{prefix}-{h}"),
        "cpu.total_pct",
        T0,
        T0 + secs * 1000,
        1000,
    )
    .unwrap();
    let values: Vec<f64> = got.iter().map(|p| p.last).collect();
    let sent: Vec<f64> = (0..secs).map(|i| f64::from(cpu_at(i + h))).collect();
    assert_eq!(values, sent, "host {prefix}-{h}");
}

/// Hosts `gone-0` and `gone-1` left 20 minutes in ([`left_open`]),
/// reopened as the store opens just after: the windows that ended sealed,
/// the newest ones handed to [`Writer::seal_when_ended`]. Returns the time
/// of the last value and the newest raw window's start and end.
fn reopened_mid_window(dir: &std::path::Path) -> (Arc<dyn Engine>, Writer, i64, i64, i64) {
    use super::tier::Tier;
    let last = left_open(dir, "gone", 2, 20 * 60);
    let (engine, mut w) = open(dir);
    let left = maintain::leftover_windows(engine.as_ref(), last + 1).unwrap();
    w.queue_seals(left.ended);
    w.seal_queued().unwrap();
    w.seal_when_ended(left.open);
    let newest = Tier::Raw.window_of(last);
    (engine, w, last, newest, newest + Tier::Raw.window_ms())
}

#[test]
fn a_window_left_open_by_hosts_that_do_not_come_back_is_sealed_once_it_ends() {
    use super::tier::Tier;
    let dir = temp_dir("gone-quiet");
    let (engine, mut w, last, _, end) = reopened_mid_window(&dir);
    let chunks = open_chunks(engine.as_ref());
    assert!(chunks > 0);
    // Before the window ends, it stays open for the hosts to come back.
    assert_eq!(w.seal_idle(end - 1).unwrap(), 0);
    assert_eq!(w.backlog().0, 0);
    // Neither came back: once it ended, it is queued, and sealed.
    w.seal_idle(end + 1).unwrap();
    assert!(w.backlog().0 >= 1, "nothing queued");
    w.seal_queued().unwrap();
    assert!(open_chunks(engine.as_ref()) < chunks);
    let windows = super::chunks::windows(engine.as_ref()).unwrap();
    assert!(
        windows.iter().all(|(tier, ..)| *tier != Tier::Raw),
        "raw windows left open: {windows:?}"
    );
    // Queued once: a later pass queues nothing more.
    w.seal_idle(end + 2).unwrap();
    assert_eq!(w.backlog().0, 0);
    for h in 0..2 {
        cpu_reads_back(engine.as_ref(), None, "gone", h, (last - T0) / 1000 + 1);
    }
    drop((engine, w));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_window_left_open_that_a_returning_host_resumed_into_is_sealed_by_that_host() {
    use super::tier::Tier;
    let dir = temp_dir("gone-back");
    let (engine, mut w, last, newest, end) = reopened_mid_window(&dir);
    // gone-0 comes back within the window: its series resume into it.
    let mut t = last + 1000;
    while t < end {
        let i = (t - T0) / 1000;
        w.ingest("gone-0", &sample(i as u64 + 1, t, cpu_at(i), 1.0))
            .unwrap();
        t += 1000;
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    // Its series hold the window: once ended, they seal it themselves,
    // for the whole run (gone-1 included), and the leftover is not queued
    // again.
    assert!(w.seal_idle(end + 1).unwrap() >= 1);
    assert_eq!(w.backlog().0, 0);
    let windows = super::chunks::windows(engine.as_ref()).unwrap();
    assert!(
        !windows
            .iter()
            .any(|&(t, _, w)| t == Tier::Raw && w == newest),
        "the window left open is still open: {windows:?}"
    );
    cpu_reads_back(engine.as_ref(), None, "gone", 0, (t - T0) / 1000);
    cpu_reads_back(engine.as_ref(), None, "gone", 1, (last - T0) / 1000 + 1);
    drop((engine, w));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shared timestamp columns of raw window `w`, as (hash, rows).
fn stamp_columns(engine: &dyn Engine, w: i64) -> Vec<(u64, usize)> {
    use super::stamps::{parse_stamp_key, stamp_key};
    let mut columns = Vec::new();
    engine
        .scan(
            Table::Stamps,
            &stamp_key(0, w, 0),
            &stamp_key(0, w + 1, 0),
            &mut |k, v| {
                let (_, _, hash) = parse_stamp_key(k).unwrap();
                columns.push((hash, super::codec::decode_stamps(v).unwrap().len()));
                true
            },
        )
        .unwrap();
    columns
}

/// Which raw blocks of window `w` name a shared column, and which hold
/// their own timestamps.
fn raw_blocks_sharing(engine: &dyn Engine, w: i64) -> (usize, usize) {
    let (mut shared, mut own) = (0, 0);
    engine
        .scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
            let (_, tier, bw) = super::engine::parse_block_key(k).unwrap();
            if tier == 0 && bw == w {
                match super::codec::block_stamp(v).unwrap() {
                    Some(_) => shared += 1,
                    None => own += 1,
                }
            }
            true
        })
        .unwrap();
    (shared, own)
}

#[test]
fn a_hosts_raw_blocks_share_one_timestamp_column_through_a_second_seal_and_retention() {
    use super::Tier;
    use super::read::{read_rows, series_id, series_name};
    let dir = temp_dir("stamps");
    let (engine, mut w) = open(&dir);
    let e = engine.as_ref();
    // Two hosts whose samples jitter differently; six series each.
    let ts_a = |i: i64| T0 + i * 1000 + (i * 37) % 200;
    let ts_b = |i: i64| T0 + i * 1000 + 500 + (i * 53) % 300;
    let host = |w: &mut Writer, name: &str, i: i64, ts: i64| {
        w.ingest(name, &sample(i as u64 + 1, ts, cpu_at(i), i as f64))
            .unwrap();
    };
    // `a` reports for 5 minutes and goes quiet; `b` goes on into the next
    // raw window (15 minutes), which seals the first: the window of their
    // run of series ids, a's rows with b's.
    for i in 0..300 {
        host(&mut w, "a", i, ts_a(i));
        host(&mut w, "b", i, ts_b(i));
    }
    for i in 300..1000 {
        host(&mut w, "b", i, ts_b(i));
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    assert!(w.seal_queued().unwrap() > 0);
    let mut columns = stamp_columns(e, T0);
    columns.sort_by_key(|c| c.1);
    assert_eq!(
        columns.iter().map(|c| c.1).collect::<Vec<_>>(),
        [300, 900],
        "one column per host"
    );
    assert_eq!(raw_blocks_sharing(e, T0), (12, 0));
    // Then `a` sends what it held back: its window is sealed again, with
    // the blocks sealed before.
    for i in 300..1000 {
        host(&mut w, "a", i, ts_a(i));
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    w.seal_queued().unwrap();
    let mut columns = stamp_columns(e, T0);
    columns.sort_by_key(|c| c.1);
    // a's first column stays (written once, never changed) until its
    // window goes.
    assert_eq!(
        columns.iter().map(|c| c.1).collect::<Vec<_>>(),
        [300, 900, 900]
    );
    assert_eq!(raw_blocks_sharing(e, T0), (12, 0));
    // Every timestamp and value reads back exactly, from the blocks and
    // the columns they name.
    let end = T0 + 1001 * 1000;
    for (name, ts) in [("a", &ts_a as &dyn Fn(i64) -> i64), ("b", &ts_b)] {
        for (field, value) in [
            (
                "cpu.total_pct",
                &(|i: i64| f64::from(cpu_at(i))) as &dyn Fn(i64) -> f64,
            ),
            ("load.one", &(|i: i64| i as f64)),
        ] {
            let id = series_id(e, &series_name(name, field)).unwrap().unwrap();
            let raw = read_rows(e, Some(w.recent()), id, Tier::Raw, T0, end).unwrap();
            let sent: Vec<(i64, f64)> = (0..1000).map(|i| (ts(i), value(i))).collect();
            let back: Vec<(i64, f64)> = raw.ts.iter().copied().zip(raw.cols[0].clone()).collect();
            assert_eq!(back, sent, "{name} {field}");
        }
    }
    // Retention takes the first window's blocks and its columns, not the
    // next window's.
    w.seal_idle(T0 + 31 * 60_000).unwrap();
    let next = T0 + 15 * 60_000;
    assert_eq!(stamp_columns(e, next).len(), 2);
    let config = StorageConfig {
        raw_retention_hours: 3,
        ..StorageConfig::default()
    };
    maintain::run(
        &mut w,
        &config,
        &StoreStats::default(),
        T0 + 3 * 3_600_000 + 25 * 60_000,
    )
    .unwrap();
    assert_eq!(raw_blocks_sharing(e, T0), (0, 0));
    assert!(stamp_columns(e, T0).is_empty());
    assert_eq!(raw_blocks_sharing(e, next), (12, 0));
    assert_eq!(stamp_columns(e, next).len(), 2);
    let id = series_id(e, &series_name("a", "load.one"))
        .unwrap()
        .unwrap();
    let raw = read_rows(e, Some(w.recent()), id, Tier::Raw, T0, end).unwrap();
    assert_eq!(raw.ts, (900..1000).map(ts_a).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_an_older_build_wrote_reads_a_table_it_lacks_as_empty() {
    use super::engine::{Op, REDB_FILE, last_in, scan_in};
    use redb::ReadableDatabase;
    let dir = temp_dir("older");
    let path = dir.join(REDB_FILE);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("series"))
            .unwrap();
        tx.commit().unwrap();
    }
    // Read-only, as `hostpulse-bench store-usage` opens a stopped store.
    {
        let db = redb::ReadOnlyDatabase::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let mut seen = 0;
        scan_in(&tx, Table::Stamps, &[], &[0xff], &mut |_, _| {
            seen += 1;
            true
        })
        .unwrap();
        assert_eq!(seen, 0);
        assert!(last_in(&tx, Table::Stamps, &[], &[0xff]).unwrap().is_none());
    }
    // The store opening it creates the table.
    let engine = Redb::open(&dir).unwrap();
    engine
        .apply(&[Op::Put(Table::Stamps, vec![1], vec![2])])
        .unwrap();
    let mut seen = Vec::new();
    engine
        .scan(Table::Stamps, &[], &[0xff], &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    assert_eq!(seen, [(vec![1], vec![2])]);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_deletion_cut_short_between_blocks_and_columns_leaves_every_block_readable() {
    use super::Tier;
    use super::read::{read_rows, series_id, series_name};
    let (failing, engine, _, mut w) = super::tests_rotation::Flaky::writer("stamps-cut", false);
    let e = engine.as_ref();
    let ts = |i: i64| T0 + i * 1000 + (i * 41) % 250;
    for i in 0..1000 {
        w.ingest("a", &sample(i as u64 + 1, ts(i), cpu_at(i), 1.0))
            .unwrap();
    }
    w.flush().unwrap();
    w.checkpoint().unwrap();
    w.seal_queued().unwrap();
    w.seal_idle(T0 + 31 * 60_000).unwrap();
    let next = T0 + 15 * 60_000;
    assert_eq!(stamp_columns(e, T0).len(), 1);
    assert_eq!(stamp_columns(e, next).len(), 1);
    // Retention of the first window: its blocks' deletion commits, the
    // deletion of its column fails (as a crash there would leave it).
    let config = StorageConfig {
        raw_retention_hours: 3,
        ..StorageConfig::default()
    };
    let now = T0 + 3 * 3_600_000 + 25 * 60_000;
    failing.fail_nth(2);
    assert!(maintain::run(&mut w, &config, &StoreStats::default(), now).is_err());
    assert_eq!(raw_blocks_sharing(e, T0), (0, 0));
    assert_eq!(stamp_columns(e, T0).len(), 1, "left over");
    // Every block left reads back: none lost its column.
    let id = series_id(e, &series_name("a", "cpu.total_pct"))
        .unwrap()
        .unwrap();
    let raw = read_rows(e, Some(w.recent()), id, Tier::Raw, T0, T0 + 1001 * 1000).unwrap();
    assert_eq!(raw.ts, (900..1000).map(ts).collect::<Vec<_>>());
    // The next window's deletion takes the column left over with its own.
    maintain::run(&mut w, &config, &StoreStats::default(), now + 15 * 60_000).unwrap();
    assert!(stamp_columns(e, T0).is_empty());
    assert!(stamp_columns(e, next).is_empty());
    assert_eq!(raw_blocks_sharing(e, next), (0, 0));
}
