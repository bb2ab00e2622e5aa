//! The process table, summarised: count, top N by CPU and by memory, and a
//! rollup of everything else, so the payload stays small with thousands of
//! processes.

use std::cmp::Ordering;

use hostpulse_proto::{Process, ProcessRollup, Processes};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

/// Refreshes CPU and resident memory of every process, without threads
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

pub(super) fn collect(sys: &System, top: usize) -> Processes {
    let mut all: Vec<&sysinfo::Process> = sys
        .processes()
        .values()
        .filter(|p| p.thread_kind().is_none())
        .collect();
    let count = all.len() as u32;

    let by_cpu = |a: &&sysinfo::Process, b: &&sysinfo::Process| {
        b.cpu_usage()
            .partial_cmp(&a.cpu_usage())
            .unwrap_or(Ordering::Equal)
            .then(a.pid().cmp(&b.pid()))
    };
    let by_mem = |a: &&sysinfo::Process, b: &&sysinfo::Process| {
        b.memory().cmp(&a.memory()).then(a.pid().cmp(&b.pid()))
    };
    let top_cpu = top_n(&mut all, top, by_cpu);
    let top_memory = top_n(&mut all, top, by_mem);

    let mut others = ProcessRollup::default();
    for p in &all {
        let listed = |list: &[Process]| list.iter().any(|l| l.pid == p.pid().as_u32());
        if !listed(&top_cpu) && !listed(&top_memory) {
            others.count += 1;
            others.cpu_pct += p.cpu_usage().max(0.0);
            others.memory_bytes += p.memory();
        }
    }
    Processes {
        count,
        top_cpu,
        top_memory,
        others,
    }
}

/// The first `n` of `all` by `cmp`, in order, without sorting the whole table.
fn top_n<F>(all: &mut [&sysinfo::Process], n: usize, cmp: F) -> Vec<Process>
where
    F: Fn(&&sysinfo::Process, &&sysinfo::Process) -> Ordering,
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
    head.iter().map(|p| to_wire(p)).collect()
}

fn to_wire(p: &sysinfo::Process) -> Process {
    Process {
        pid: p.pid().as_u32(),
        start_time: p.start_time(),
        name: p.name().to_string_lossy().into_owned(),
        cpu_pct: p.cpu_usage().max(0.0),
        memory_bytes: p.memory(),
    }
}
