//! The process table, summarised: count, top N by CPU and by memory, and a
//! rollup of everything else, so the payload stays small with thousands of
//! processes.
//!
//! Per-process CPU is computed here from each process's accumulated CPU time
//! over the wall time since the previous refresh, not taken from sysinfo,
//! whose figure is relative to the last *CPU* refresh: that keeps it right
//! when the process table is refreshed less often than the CPU (see
//! [`super::Collector`]'s pacing).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Instant;

use hostpulse_proto::{Process, ProcessRollup, Processes};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

/// Refreshes CPU time and resident memory of every process, without threads
/// (tasks) and without fields never sent (command line, environment, disk).
pub(super) fn refresh(sys: &mut System) {
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .without_tasks(),
    );
}

/// CPU time of each process at the previous refresh.
#[derive(Debug, Default)]
pub(super) struct ProcessTable {
    /// (pid, start time) -> accumulated CPU milliseconds.
    previous: HashMap<(u32, u64), u64>,
    at: Option<Instant>,
}

struct Row<'a> {
    p: &'a sysinfo::Process,
    cpu_pct: f32,
}

impl ProcessTable {
    /// Summarises the freshly refreshed table.
    pub(super) fn collect(&mut self, sys: &System, top: usize) -> Processes {
        let now = Instant::now();
        let elapsed_ms = self
            .at
            .map(|at| now.duration_since(at).as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let mut current = HashMap::with_capacity(self.previous.len());
        let mut all: Vec<Row> = sys
            .processes()
            .values()
            .filter(|p| p.thread_kind().is_none())
            .map(|p| {
                let key = (p.pid().as_u32(), p.start_time());
                let cpu_ms = p.accumulated_cpu_time();
                current.insert(key, cpu_ms);
                let cpu_pct = match self.previous.get(&key) {
                    Some(before) if elapsed_ms > 0.0 => {
                        (cpu_ms.saturating_sub(*before) as f64 / elapsed_ms * 100.0) as f32
                    }
                    _ => 0.0,
                };
                Row { p, cpu_pct }
            })
            .collect();
        self.previous = current;
        self.at = Some(now);
        let count = all.len() as u32;

        let by_cpu = |a: &Row, b: &Row| {
            b.cpu_pct
                .partial_cmp(&a.cpu_pct)
                .unwrap_or(Ordering::Equal)
                .then(a.p.pid().cmp(&b.p.pid()))
        };
        let by_mem = |a: &Row, b: &Row| {
            b.p.memory()
                .cmp(&a.p.memory())
                .then(a.p.pid().cmp(&b.p.pid()))
        };
        let top_cpu = top_n(&mut all, top, by_cpu);
        let top_memory = top_n(&mut all, top, by_mem);

        let mut others = ProcessRollup::default();
        for r in &all {
            let listed = |list: &[Process]| list.iter().any(|l| l.pid == r.p.pid().as_u32());
            if !listed(&top_cpu) && !listed(&top_memory) {
                others.count += 1;
                others.cpu_pct += r.cpu_pct;
                others.memory_bytes += r.p.memory();
            }
        }
        Processes {
            count,
            top_cpu,
            top_memory,
            others,
        }
    }
}

/// The first `n` of `all` by `cmp`, in order, without sorting the whole table.
fn top_n<F>(all: &mut [Row], n: usize, cmp: F) -> Vec<Process>
where
    F: Fn(&Row, &Row) -> Ordering,
{
    let n = n.min(all.len());
    if n == 0 {
        return Vec::new();
    }
    if n < all.len() {
        all.select_nth_unstable_by(n - 1, &cmp);
    }
    let head = &mut all[..n];
    head.sort_unstable_by(&cmp);
    head.iter()
        .map(|r| Process {
            pid: r.p.pid().as_u32(),
            start_time: r.p.start_time(),
            name: r.p.name().to_string_lossy().into_owned(),
            cpu_pct: r.cpu_pct.max(0.0),
            memory_bytes: r.p.memory(),
        })
        .collect()
}
