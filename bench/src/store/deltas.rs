//! `store-deltas`: the sealed raw blocks of a stopped aggregator's store,
//! compressed again with each way of choosing a value column's delta
//! encoding in pco ([`Delta`]): pco's search on every block (as sealed),
//! none, first-order deltas, and as the writer does now ([`Deltas`]: the
//! encoding the search chose for the series' previous block, searching
//! again one window in [`SEARCH_EVERY`]). For each: the
//! bytes per value (key and timestamps included, each block with its own
//! as before timestamp columns were shared: `store-usage` gives the
//! store's figure), the
//! encoding time per value, and per field the encodings the search chose.
//! Every way is timed on the same blocks in turns, `--runs` times, so the
//! machine's noise falls on all of them alike.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hostpulse_aggregator::store::checkpoint::{Deltas, SEARCH_EVERY};
use hostpulse_aggregator::store::codec::{Delta, encode_block_with, timestamp_bytes};
use hostpulse_aggregator::store::engine::{Engine, Table, parse_block_key};
use hostpulse_aggregator::store::stamps::Blocks;
use hostpulse_aggregator::store::tier::{Rows, Tier};
use pco::ChunkConfig;
use pco::standalone::simple_compress;

use super::usage::{ReadOnly, series_names};

/// Ways of choosing, in the order printed.
const WAYS: [&str; 4] = [
    "search (as sealed)",
    "none",
    "first-order",
    "the writer's Deltas",
];

/// One series' sealed raw blocks and their windows, in time order.
struct Series {
    field: String,
    blocks: Vec<(i64, Rows)>,
}

pub(crate) fn run(dir: &Path, runs: usize) -> anyhow::Result<()> {
    let engine = ReadOnly::open(dir)?;
    let names = series_names(&engine)?;
    let mut series: BTreeMap<u32, Series> = BTreeMap::new();
    let mut failure = None;
    let mut reader = Blocks::new(&engine);
    engine.scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
        match parse_block_key(k) {
            Some((id, tier, w)) if tier == Tier::Raw as u8 => match reader.decode(k, v) {
                Ok(rows) if !rows.is_empty() => {
                    series
                        .entry(id)
                        .or_insert_with(|| Series {
                            field: names.get(&id).map(|(_, f)| f.clone()).unwrap_or_default(),
                            blocks: Vec::new(),
                        })
                        .blocks
                        .push((w, rows));
                }
                Ok(_) => {}
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            },
            _ => {}
        }
        true
    })?;
    if let Some(e) = failure {
        anyhow::bail!("a sealed block did not decode: {e}");
    }
    let values: u64 = series
        .values()
        .flat_map(|s| &s.blocks)
        .map(|(_, b)| b.len() as u64)
        .sum();
    let blocks: usize = series.values().map(|s| s.blocks.len()).sum();
    anyhow::ensure!(values > 0, "no sealed raw blocks in {}", dir.display());
    println!(
        "store-deltas: {} series, {blocks} sealed raw blocks, {values} values, {runs} runs; \
         the writer's Deltas search one window in {SEARCH_EVERY}",
        series.len()
    );
    // Bytes per way (each block with its 13-byte key), per field and way,
    // and the search's choices per field.
    let mut bytes = [0u64; WAYS.len()];
    let mut field_bytes: BTreeMap<&str, ([u64; WAYS.len()], u64)> = BTreeMap::new();
    let mut chosen: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    let mut times: Vec<[Duration; WAYS.len()]> = Vec::new();
    // Blocks after a series' first, and those the search gave the same
    // encoding as the block before.
    let (mut followers, mut same) = (0u32, 0u32);
    // Timestamps: as sealed (differences, compressed without deltas), and
    // the times themselves left to pco's search (a mode that splits off a
    // multiple of the pace, and deltas); pco's bytes only.
    let (mut ts_sealed, mut ts_searched) = (0u64, 0u64);
    let searched = ChunkConfig::default();
    for run in 0..runs.max(1) {
        let mut time = [Duration::ZERO; WAYS.len()];
        let mut deltas = Deltas::default();
        for (&id, s) in &series {
            let mut before: Option<Vec<Delta>> = None;
            for (w, rows) in &s.blocks {
                for (way, spent) in time.iter_mut().enumerate() {
                    let started = Instant::now();
                    let (block, used) = match way {
                        0 => encode_block_with(rows, |_| Delta::Search)?,
                        1 => encode_block_with(rows, |_| Delta::None)?,
                        2 => encode_block_with(rows, |_| Delta::Consecutive(1))?,
                        _ => {
                            let delta = deltas.for_block(id, Tier::Raw, *w);
                            let (block, used) = encode_block_with(rows, |_| delta)?;
                            deltas.used(id, Tier::Raw, &used);
                            (block, used)
                        }
                    };
                    *spent += started.elapsed();
                    if run == 0 {
                        let b = block.len() as u64 + 13;
                        bytes[way] += b;
                        let f = field_bytes.entry(&s.field).or_default();
                        f.0[way] += b;
                        if way == 0 {
                            ts_sealed += timestamp_bytes(&block)? as u64;
                            ts_searched += simple_compress(&rows.ts, &searched)?.len() as u64;
                            if let Some(b) = before.replace(used.clone()) {
                                followers += 1;
                                same += u32::from(b == used);
                            }
                            f.1 += rows.len() as u64;
                            for d in &used {
                                *chosen
                                    .entry(&s.field)
                                    .or_default()
                                    .entry(format!("{d:?}"))
                                    .or_default() += 1;
                            }
                        }
                    }
                }
            }
        }
        times.push(time);
    }
    println!(
        "{:22} {:>10} {:>12} {:>16}",
        "way", "B/value", "ns/value", "(median of runs)"
    );
    for (way, name) in WAYS.iter().enumerate() {
        let mut ns: Vec<f64> = times
            .iter()
            .map(|t| t[way].as_nanos() as f64 / values as f64)
            .collect();
        ns.sort_by(f64::total_cmp);
        println!(
            "{name:22} {:>10.3} {:>12.0}",
            bytes[way] as f64 / values as f64,
            ns[ns.len() / 2]
        );
    }
    println!(
        "timestamps: as sealed {:.3} B/value; the times left to pco's search {:.3}",
        ts_sealed as f64 / values as f64,
        ts_searched as f64 / values as f64
    );
    println!(
        "the search chose what it chose for the series' block before: {same} of {followers} blocks"
    );
    println!("per field: B/value by way, and the search's choices");
    for (field, (b, n)) in &field_bytes {
        let per: Vec<String> = b
            .iter()
            .map(|x| format!("{:.3}", *x as f64 / (*n).max(1) as f64))
            .collect();
        println!(
            "  {field:40} {}  {:?}",
            per.join(" / "),
            chosen.get(field).cloned().unwrap_or_default()
        );
    }
    Ok(())
}
