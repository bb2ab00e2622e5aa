//! `store-open`: how long a stopped aggregator's store (`--store-dir`)
//! takes to open, as after a crash (no saved bytes in use: the pages are
//! counted beside the open) and as after a clean close (the bytes in use
//! saved then), and how long the exact count of its pages takes: what an
//! open waited for before counts at open moved off its thread. Runs on the
//! store in place (the operating system's cache warm after the first run);
//! it leaves the store as a clean close would.

use std::path::Path;
use std::time::Instant;

use hostpulse_aggregator::store::engine::{Engine, REDB_FILE, Redb, USAGE_FILE};

/// Milliseconds since `t`.
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub(crate) fn run(dir: &Path, runs: usize) -> anyhow::Result<()> {
    let file = dir.join(REDB_FILE);
    anyhow::ensure!(file.exists(), "{} does not exist", file.display());
    let file_bytes = std::fs::metadata(&file)?.len();
    let mut figures = Vec::new();
    for run in 1..=runs.max(1) {
        // As after a crash: no saved bytes in use.
        let _ = std::fs::remove_file(dir.join(USAGE_FILE));
        let began = Instant::now();
        let engine = Redb::open(dir)?;
        let opened = ms(began);
        engine.join_count();
        let count = ms(began);
        let used = engine
            .used_bytes()?
            .ok_or_else(|| anyhow::anyhow!("no bytes in use after the count ended"))?;
        engine.closing()?;
        drop(engine);
        // As after a clean close.
        let began = Instant::now();
        let engine = Redb::open(dir)?;
        let opened_clean = ms(began);
        anyhow::ensure!(
            engine.used_bytes()? == Some(used),
            "the saved bytes in use were not taken"
        );
        engine.closing()?;
        drop(engine);
        println!(
            "store-open run {run}: file {:.1} MiB, in use {:.1} MiB; open after a crash {opened:.1} ms (pages counted beside it in {count:.0} ms), after a clean close {opened_clean:.1} ms",
            file_bytes as f64 / 1048576.0,
            used as f64 / 1048576.0
        );
        figures.push(vec![
            ("crash", opened),
            ("count", count),
            ("clean", opened_clean),
        ]);
    }
    let m = crate::median(&figures);
    let (opened, count, opened_clean) = (m[0].1, m[1].1, m[2].1);
    println!(
        "store-open: median of {}: open after a crash {opened:.1} ms, the count it no longer waits for {count:.0} ms ({:.2} s per GiB of file), open after a clean close {opened_clean:.1} ms",
        figures.len(),
        count / 1000.0 / (file_bytes as f64 / (1u64 << 30) as f64),
    );
    Ok(())
}
