//! Host sampling with `sysinfo`: one long-lived [`Collector`] per agent.
//!
//! Each metric family lives in its own file and fills its section of the
//! [`Sample`]; a family that fails logs once, counts and is skipped, never
//! aborting the sample. Only what is sent is refreshed (CPU before processes,
//! so per-process CPU is measured against the same window). Refreshes block,
//! so the agent runs [`Collector::sample`] on the blocking pool.

mod cpu;
mod load;
mod memory;
mod processes;

use std::time::{SystemTime, UNIX_EPOCH};

use hostpulse_proto::Sample;
use sysinfo::System;

use crate::config::{CollectConfig, MIN_INTERVAL_MS};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// sysinfo does not support this platform.
    #[error("host metrics are not supported on this platform: {0}")]
    Unsupported(String),
}

/// Owns the `sysinfo` state and numbers the samples of one run epoch.
///
/// The process table is the one family whose cost grows with the machine
/// (reading `/proc/<pid>/stat` for every process), so it is paced: after
/// each refresh, the next waits until the time it took is no more than
/// `processes_budget_pct` of one core. With a hundred processes that is every
/// sample; with a thousand, every few seconds (samples in between carry no
/// `processes` section, so that topic's seqs skip those samples).
pub struct Collector {
    sys: System,
    config: CollectConfig,
    table: processes::ProcessTable,
    next_processes: Option<std::time::Instant>,
    next_seq: u64,
    /// Collection failures so far (a family that could not be read).
    pub errors: u64,
    load_failed_logged: bool,
}

/// The first sample seq of a run that started at `epoch_ms`.
///
/// Seqs are derived from the start time in units of the shortest sampling
/// interval, so a restarted agent's seqs continue above the previous run's
/// (which cannot have taken more than one sample per [`MIN_INTERVAL_MS`])
/// without any state on disk, and topic seqs keep their meaning across agent
/// and aggregator restarts.
pub fn first_seq(epoch_ms: u64) -> u64 {
    epoch_ms / MIN_INTERVAL_MS
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Collector {
    /// Creates the collector and primes the counters that need two readings
    /// (CPU usage), so the first [`sample`](Self::sample) after one interval is real.
    pub fn new(config: CollectConfig, epoch_ms: u64) -> Result<Self, CollectError> {
        let sys = System::new().map_err(|e| CollectError::Unsupported(e.to_string()))?;
        let mut collector = Self {
            sys,
            config,
            table: processes::ProcessTable::default(),
            next_processes: None,
            next_seq: first_seq(epoch_ms) + 1,
            errors: 0,
            load_failed_logged: false,
        };
        collector.refresh();
        if collector.config.processes {
            processes::refresh(&mut collector.sys);
            collector.table.collect(&collector.sys, 0);
        }
        Ok(collector)
    }

    fn refresh(&mut self) {
        // CPU before processes: per-process usage is computed against the
        // CPU time elapsed since the previous refresh.
        if self.config.cpu || self.config.processes {
            self.sys.refresh_cpu_usage();
        }
        if self.config.memory {
            memory::refresh(&mut self.sys);
        }
    }

    /// Takes one sample and gives it the next seq.
    pub fn sample(&mut self) -> Sample {
        self.refresh();
        let load = if self.config.load {
            match load::collect() {
                Ok(l) => Some(l),
                Err(e) => {
                    self.errors += 1;
                    if !self.load_failed_logged {
                        tracing::warn!(cause = %e, "load average unavailable; skipping it");
                        self.load_failed_logged = true;
                    }
                    None
                }
            }
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        Sample {
            seq,
            timestamp_ms: now_ms() as i64,
            cpu: self.config.cpu.then(|| cpu::collect(&self.sys)),
            memory: self.config.memory.then(|| memory::collect(&self.sys)),
            load,
            processes: self.processes(),
        }
    }
}

impl Collector {
    /// The process summary, if the table is due for a refresh.
    fn processes(&mut self) -> Option<hostpulse_proto::Processes> {
        let now = std::time::Instant::now();
        if !self.config.processes || self.next_processes.is_some_and(|t| now < t) {
            return None;
        }
        processes::refresh(&mut self.sys);
        let summary = self.table.collect(&self.sys, self.config.top_processes);
        let took = now.elapsed();
        let budget = self.config.processes_budget_pct / 100.0;
        self.next_processes = Some(now + took.div_f64(budget));
        Some(summary)
    }
}

/// The system's host name, or `localhost` where it cannot be read.
pub fn system_hostname() -> String {
    System::host_name().unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_holds_every_enabled_family() {
        let mut c = Collector::new(CollectConfig::default(), 1_000_000).unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = c.sample();
        s.validate().unwrap();
        assert_eq!(s.seq, first_seq(1_000_000) + 1);
        let cpu = s.cpu.unwrap();
        assert!(!cpu.per_core_pct.is_empty());
        let mem = s.memory.unwrap();
        assert!(mem.total_bytes > 0 && mem.used_bytes <= mem.total_bytes);
        let procs = s.processes.unwrap();
        assert!(procs.count > 0);
        let listed: std::collections::HashSet<_> = procs
            .top_cpu
            .iter()
            .chain(&procs.top_memory)
            .map(|p| p.pid)
            .collect();
        assert_eq!(listed.len() as u32 + procs.others.count, procs.count);
        assert_eq!(c.sample().seq, first_seq(1_000_000) + 2);
    }

    #[test]
    fn disabled_families_are_absent() {
        let config = CollectConfig {
            cpu: false,
            processes: false,
            ..CollectConfig::default()
        };
        let s = Collector::new(config, 1).unwrap().sample();
        assert!(s.cpu.is_none() && s.processes.is_none());
        assert!(s.memory.is_some());
    }

    #[test]
    fn seqs_keep_rising_across_restarts() {
        // A run sampling at the fastest rate for 60 s, then a restart.
        let first_run = 1_795_000_000_000;
        let last_of_first = first_seq(first_run) + 60_000 / MIN_INTERVAL_MS;
        assert!(first_seq(first_run + 60_000) + 1 > last_of_first);
    }
}
