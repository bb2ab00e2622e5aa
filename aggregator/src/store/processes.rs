//! Process tables at the 1-minute tier: for each host and minute, the union
//! of that minute's top processes (by CPU and by memory, as agents report
//! them), each with its highest CPU and resident memory in the minute, so a
//! spike of one process survives even when it topped the list for a second.
//!
//! Tables: `procs`: `host \0 minute (i64 BE)` → the minute's table;
//! `procs_by_time`: `minute · host` → nothing, for retention and eviction to
//! walk the oldest minutes without touching the tables. A table is
//! MessagePack `[[pid, start_time, name, max_cpu_pct, max_memory_bytes], …]`,
//! deflated. Kept as long as the 1-minute tier (`minute_retention_days`).
//!
//! The writer folds each sample into its host's open minute and writes the
//! minute when the host's first sample of a later minute arrives, or at the
//! store's clean close; a crash loses the open minute. A minute written
//! again (a restart within it) is merged with what is on disk.

use std::collections::HashMap;
use std::io::{Read, Write};

use hostpulse_proto::{Process, Processes};
use serde::Serialize;

use super::StoreError;
use super::engine::{Engine, Op, Table};

/// One process of a minute's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteProcess {
    /// Process id.
    pub pid: u32,
    /// Start time, Unix seconds (with the pid, identifies the process).
    pub start_time: u64,
    /// Executable name.
    pub name: String,
    /// Highest CPU in the minute (100 = one core).
    pub max_cpu_pct: f32,
    /// Highest resident memory in the minute.
    pub max_memory_bytes: u64,
}

/// A host's minute being folded.
#[derive(Debug, Default)]
pub struct OpenMinute {
    /// Its start, Unix ms.
    pub minute: i64,
    procs: HashMap<(u32, u64), MinuteProcess, foldhash::fast::RandomState>,
}

impl OpenMinute {
    /// An empty minute starting at `minute` (Unix ms).
    pub fn new(minute: i64) -> Self {
        Self {
            minute,
            procs: HashMap::default(),
        }
    }

    /// Folds one sample's top lists in.
    pub fn fold(&mut self, p: &Processes) {
        for proc in p.top_cpu.iter().chain(&p.top_memory) {
            self.fold_one(proc);
        }
    }

    fn fold_one(&mut self, p: &Process) {
        let e = self
            .procs
            .entry((p.pid, p.start_time))
            .or_insert_with(|| MinuteProcess {
                pid: p.pid,
                start_time: p.start_time,
                name: p.name.clone(),
                max_cpu_pct: p.cpu_pct,
                max_memory_bytes: p.memory_bytes,
            });
        e.max_cpu_pct = e.max_cpu_pct.max(p.cpu_pct);
        e.max_memory_bytes = e.max_memory_bytes.max(p.memory_bytes);
    }

    /// The table, highest CPU first.
    pub fn table(&self) -> Vec<MinuteProcess> {
        let mut t: Vec<MinuteProcess> = self.procs.values().cloned().collect();
        t.sort_by(|a, b| {
            b.max_cpu_pct
                .total_cmp(&a.max_cpu_pct)
                .then(a.pid.cmp(&b.pid))
        });
        t
    }

    fn merge(&mut self, table: Vec<MinuteProcess>) {
        for p in table {
            let e = self
                .procs
                .entry((p.pid, p.start_time))
                .or_insert_with(|| p.clone());
            e.max_cpu_pct = e.max_cpu_pct.max(p.max_cpu_pct);
            e.max_memory_bytes = e.max_memory_bytes.max(p.max_memory_bytes);
        }
    }
}

/// Key of a host's minute.
pub fn key(host: &str, minute: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 9);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&minute.max(0).to_be_bytes());
    k
}

fn time_key(minute: i64, host: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 8);
    k.extend_from_slice(&minute.max(0).to_be_bytes());
    k.extend_from_slice(host.as_bytes());
    k
}

/// Encodes a table.
pub fn encode(table: &[MinuteProcess]) -> Vec<u8> {
    let rows: Vec<(u32, u64, &str, f32, u64)> = table
        .iter()
        .map(|p| {
            (
                p.pid,
                p.start_time,
                p.name.as_str(),
                p.max_cpu_pct,
                p.max_memory_bytes,
            )
        })
        .collect();
    let packed = rmp_serde::to_vec(&rows).expect("a table serialises");
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&packed).expect("writing to memory");
    z.finish().expect("writing to memory")
}

/// Decodes a table.
pub fn decode(bytes: &[u8]) -> Result<Vec<MinuteProcess>, StoreError> {
    let mut packed = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_end(&mut packed)
        .map_err(|e| StoreError::Engine(format!("process table: {e}")))?;
    let rows: Vec<(u32, u64, String, f32, u64)> = rmp_serde::from_slice(&packed)
        .map_err(|e| StoreError::Engine(format!("process table: {e}")))?;
    Ok(rows
        .into_iter()
        .map(
            |(pid, start_time, name, max_cpu_pct, max_memory_bytes)| MinuteProcess {
                pid,
                start_time,
                name,
                max_cpu_pct,
                max_memory_bytes,
            },
        )
        .collect())
}

/// The writes of a finished minute of `host` (merged with a table already
/// on disk when `merge` is set: the first write of a host since start).
pub fn write(
    engine: &dyn Engine,
    host: &str,
    mut open: OpenMinute,
    merge: bool,
    ops: &mut Vec<Op>,
) -> Result<(), StoreError> {
    let k = key(host, open.minute);
    if merge && let Some(bytes) = engine.get(Table::Procs, &k)? {
        open.merge(decode(&bytes)?);
    }
    if open.procs.is_empty() {
        return Ok(());
    }
    ops.push(Op::Put(Table::Procs, k, encode(&open.table())));
    ops.push(Op::Put(
        Table::ProcsByTime,
        time_key(open.minute, host),
        Vec::new(),
    ));
    Ok(())
}

/// The tables of `host` in `[from, to)`, oldest first, at most `max`.
pub fn read(
    engine: &dyn Engine,
    host: &str,
    from: i64,
    to: i64,
    max: usize,
) -> Result<Vec<(i64, Vec<MinuteProcess>)>, StoreError> {
    let mut raw = Vec::new();
    engine.scan(
        Table::Procs,
        &key(host, from),
        &key(host, to),
        &mut |k, v| {
            let ts = k
                .len()
                .checked_sub(8)
                .map(|at| i64::from_be_bytes(k[at..].try_into().expect("8 bytes")))
                .unwrap_or(0);
            raw.push((ts, v.to_vec()));
            raw.len() < max
        },
    )?;
    raw.into_iter()
        .map(|(ts, v)| decode(&v).map(|t| (ts, t)))
        .collect()
}

/// Deletes the minutes before `cutoff` (at most `limit` of them); returns
/// how many went and their bytes.
pub fn delete_before(
    engine: &dyn Engine,
    cutoff: i64,
    limit: Option<usize>,
) -> Result<(u64, u64), StoreError> {
    let mut keys: Vec<(i64, String)> = Vec::new();
    engine.scan(
        Table::ProcsByTime,
        &0i64.to_be_bytes(),
        &cutoff.max(0).to_be_bytes(),
        &mut |k, _| {
            if k.len() >= 8 {
                let minute = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                keys.push((minute, String::from_utf8_lossy(&k[8..]).into_owned()));
            }
            limit.is_none_or(|l| keys.len() < l)
        },
    )?;
    if keys.is_empty() {
        return Ok((0, 0));
    }
    let mut bytes = 0u64;
    let mut ops = Vec::with_capacity(keys.len() * 2);
    for (minute, host) in &keys {
        let k = key(host, *minute);
        if let Some(v) = engine.get(Table::Procs, &k)? {
            bytes += v.len() as u64;
        }
        ops.push(Op::Delete(Table::Procs, k));
        ops.push(Op::Delete(Table::ProcsByTime, time_key(*minute, host)));
    }
    engine.apply(&ops)?;
    Ok((keys.len() as u64, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, name: &str, cpu: f32, mem: u64) -> Process {
        Process {
            pid,
            start_time: 100 + u64::from(pid),
            name: name.into(),
            cpu_pct: cpu,
            memory_bytes: mem,
        }
    }

    #[test]
    fn a_minute_keeps_the_union_of_its_top_lists_with_each_ones_max() {
        let mut m = OpenMinute::new(60_000);
        m.fold(&Processes {
            count: 3,
            top_cpu: vec![p(1, "a", 90.0, 10), p(2, "b", 5.0, 20)],
            top_memory: vec![p(3, "c", 1.0, 900)],
            others: Default::default(),
        });
        m.fold(&Processes {
            count: 3,
            top_cpu: vec![p(2, "b", 70.0, 25), p(1, "a", 10.0, 12)],
            top_memory: vec![p(3, "c", 0.5, 800)],
            others: Default::default(),
        });
        let t = m.table();
        let got: Vec<(u32, f32, u64)> = t
            .iter()
            .map(|p| (p.pid, p.max_cpu_pct, p.max_memory_bytes))
            .collect();
        assert_eq!(got, vec![(1, 90.0, 12), (2, 70.0, 25), (3, 1.0, 900)]);
        assert_eq!(decode(&encode(&t)).unwrap(), t);
        assert!(decode(&[1, 2, 3]).is_err());
    }
}
