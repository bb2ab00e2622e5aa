//! Host sampling with `sysinfo`: one long-lived [`Collector`] per agent.
//! On Linux the `network`, `disk` and `temperatures` families read their
//! procfs and sysfs files themselves, under `collect.proc_root` and
//! `collect.sys_root` (sysinfo's paths are fixed), so an agent in a
//! container can watch its host and tests can give it a fake tree.
//!
//! Each metric family lives in its own file and fills its section of the
//! [`Sample`]; a family that fails logs once, counts and is skipped, never
//! aborting the sample. Only what is sent is refreshed (CPU before processes,
//! so per-process CPU is measured against the same window). Refreshes block,
//! so the agent runs [`Collector::sample`] on the blocking pool.
//!
//! Families that change slowly or cost more to read (`filesystems`, `system`,
//! `temperatures`) are collected at most once per their own interval
//! ([`Paced`]); the samples in between carry no such section, so those
//! topics' seqs skip them, as with the paced process table.

mod bounds;
#[cfg(test)]
mod cost;
mod cpu;
mod disk;
mod filesystems;
mod load;
mod memory;
mod network;
mod processes;
mod rate;
mod system;
mod temperatures;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostpulse_proto::Sample;
use sysinfo::{Disks, System};

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
    /// `None` when the family is off or the platform has no interface list.
    network: Option<network::NetworkCollector>,
    /// sysinfo's disk list: read by `filesystems`, and by `disk` where the
    /// platform has no procfs; `None` when neither needs it.
    disks: Option<Disks>,
    disk_io: disk::DiskIo,
    filesystems_due: Paced,
    system_due: Paced,
    physical_cores: Option<u32>,
    /// `None` when the family is off or the platform has no sensors API.
    temperatures: Option<temperatures::TemperatureCollector>,
    temperatures_due: Paced,
    next_seq: u64,
    /// Collection failures so far (a family that could not be read).
    pub errors: u64,
    /// Families whose failure was already logged (each is logged once).
    failed_logged: Vec<&'static str>,
}

/// A family collected at most once per interval; the first sample always
/// carries it. The next is due after 95 % of the interval, so sampling
/// jitter does not push it a whole sample later.
#[derive(Debug)]
struct Paced {
    every: Duration,
    next: Option<Instant>,
}

impl Paced {
    fn new(every_secs: u64) -> Self {
        Self {
            every: Duration::from_secs(every_secs),
            next: None,
        }
    }

    /// Whether the family is due at `now`; if so, the next is scheduled.
    fn due(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        self.next = Some(now + self.every.mul_f64(0.95));
        true
    }
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
            table: processes::ProcessTable::default(),
            next_processes: None,
            network: None,
            disks: None,
            disk_io: disk::DiskIo::new(&config.proc_root),
            filesystems_due: Paced::new(config.filesystems_interval_secs),
            system_due: Paced::new(config.system_interval_secs),
            physical_cores: None,
            temperatures: None,
            temperatures_due: Paced::new(config.temperatures_interval_secs),
            config,
            next_seq: first_seq(epoch_ms) + 1,
            errors: 0,
            failed_logged: Vec::new(),
        };
        collector.refresh();
        if collector.config.processes {
            processes::refresh(&mut collector.sys);
            collector.table.collect(&collector.sys, 0);
        }
        if collector.config.network {
            match network::NetworkCollector::new(&collector.config.proc_root) {
                Ok(n) => collector.network = Some(n),
                Err(e) => collector.failed("network", &e),
            }
        }
        let io_from_list = collector.config.disk && collector.disk_io.uses_sysinfo();
        if io_from_list || collector.config.filesystems {
            match Disks::new() {
                Ok(d) => collector.disks = Some(d),
                Err(e) => collector.failed("filesystems", &e),
            }
        }
        if collector.config.disk {
            // The baseline of the I/O rates.
            if let Some(d) = collector.disks.as_mut().filter(|_| io_from_list) {
                disk::refresh(d, true, false);
            }
            if let Err(e) = collector.disk_io.collect(collector.disks.as_ref()) {
                collector.failed("disk", &e);
            }
        }
        if collector.config.system {
            collector.physical_cores = system::physical_cores();
        }
        if collector.config.temperatures {
            match temperatures::TemperatureCollector::new(&collector.config.sys_root) {
                Ok(t) => collector.temperatures = Some(t),
                Err(e) => collector.failed("temperatures", &e),
            }
        }
        Ok(collector)
    }

    /// Counts a family that could not be read, logging it the first time.
    fn failed(&mut self, family: &'static str, cause: &dyn std::fmt::Display) {
        self.errors += 1;
        if !self.failed_logged.contains(&family) {
            tracing::warn!(family, cause = %cause, "metric family unavailable; skipping it");
            self.failed_logged.push(family);
        }
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
                    self.failed("load", &e);
                    None
                }
            }
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = Instant::now();
        let (disk, filesystems) = self.storage(now);
        let mut sample = Sample {
            seq,
            timestamp_ms: now_ms() as i64,
            cpu: self.config.cpu.then(|| cpu::collect(&self.sys)),
            memory: self.config.memory.then(|| memory::collect(&self.sys)),
            load,
            processes: self.processes(),
            network: self.network.as_mut().map(|n| n.collect()),
            disk,
            filesystems,
            system: self.system(now),
            temperatures: self.temperatures(now),
        };
        if bounds::bound(&mut sample) && !self.failed_logged.contains(&"bounds") {
            self.failed_logged.push("bounds");
            tracing::info!(
                "names, per-core or top-process lists over the aggregator's bounds are truncated"
            );
        }
        sample
    }
}

impl Collector {
    /// Disk I/O (every sample) and filesystem space (when due); sysinfo's
    /// list is refreshed once for whichever of them reads it.
    fn storage(
        &mut self,
        now: Instant,
    ) -> (
        Option<hostpulse_proto::Disk>,
        Option<hostpulse_proto::Filesystems>,
    ) {
        let io = self.config.disk;
        let io_from_list = io && self.disk_io.uses_sysinfo();
        let space =
            self.config.filesystems && self.disks.is_some() && self.filesystems_due.due(now);
        if (io_from_list || space)
            && let Some(disks) = self.disks.as_mut()
        {
            disk::refresh(disks, io_from_list, space);
        }
        let disk = if io {
            match self.disk_io.collect(self.disks.as_ref()) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.failed("disk", &e);
                    None
                }
            }
        } else {
            None
        };
        let filesystems = self
            .disks
            .as_ref()
            .filter(|_| space)
            .map(filesystems::collect);
        (disk, filesystems)
    }

    /// Uptime, boot time, cores and frequency, when due.
    fn system(&mut self, now: Instant) -> Option<hostpulse_proto::SystemInfo> {
        if !self.config.system || !self.system_due.due(now) {
            return None;
        }
        system::refresh(&mut self.sys);
        match system::collect(&self.sys, self.physical_cores) {
            Ok(s) => Some(s),
            Err(e) => {
                self.failed("system", &e);
                None
            }
        }
    }

    /// Temperature readings, when due and where the host has sensors.
    fn temperatures(&mut self, now: Instant) -> Option<hostpulse_proto::Temperatures> {
        let sensors = self.temperatures.as_mut()?;
        if !self.temperatures_due.due(now) {
            return None;
        }
        sensors.collect()
    }

    /// The process summary, if the table is due for a refresh.
    fn processes(&mut self) -> Option<hostpulse_proto::Processes> {
        let now = std::time::Instant::now();
        if !self.config.processes || !processes_due(self.next_processes, now) {
            return None;
        }
        processes::refresh(&mut self.sys);
        let summary = self.table.collect(&self.sys, self.config.top_processes);
        self.next_processes = Some(next_processes(
            now,
            now.elapsed(),
            self.config.processes_budget_pct,
        ));
        Some(summary)
    }
}

/// Whether the process table may be refreshed at `now`, given when the last
/// refresh said the next may run (`None`: never refreshed).
fn processes_due(next: Option<Instant>, now: Instant) -> bool {
    next.is_none_or(|t| now >= t)
}

/// When the process table may next be refreshed after a refresh that began
/// at `started` and took `took`: late enough that refreshing costs at most
/// `budget_pct` of one core.
fn next_processes(started: Instant, took: Duration, budget_pct: f64) -> Instant {
    started + took.div_f64(budget_pct / 100.0)
}

/// The system's host name, or `localhost` where it cannot be read.
pub fn system_hostname() -> String {
    System::host_name().unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests;
