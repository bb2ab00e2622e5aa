//! Uptime, boot time, logical and physical core counts and CPU frequency.
//!
//! Collected every `collect.system_interval_secs`: where the kernel has no
//! cpufreq, sysinfo reads the whole of `/proc/cpuinfo` once per core to find
//! each frequency, which on a large machine is too dear for every sample.

use hostpulse_proto::SystemInfo;
use hostpulse_proto::payload::signals::MAX_CORES;
use sysinfo::{CpuRefreshKind, System};

/// Physical cores, read once (the figure does not change while running).
pub(super) fn physical_cores() -> Option<u32> {
    System::physical_core_count()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
}

/// Refreshes each core's frequency (and the core list on first use).
pub(super) fn refresh(sys: &mut System) {
    sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_frequency());
}

pub(super) fn collect(sys: &System, physical: Option<u32>) -> Result<SystemInfo, sysinfo::Error> {
    let per_core: Vec<u64> = sys
        .cpus()
        .iter()
        .take(MAX_CORES)
        .map(|c| c.frequency())
        .collect();
    let logical = per_core.len().max(1) as u32;
    let mean = per_core.iter().sum::<u64>() / per_core.len().max(1) as u64;
    Ok(SystemInfo {
        uptime_secs: System::uptime()?,
        boot_time: System::boot_time()?,
        logical_cores: logical,
        physical_cores: physical.filter(|p| *p <= logical),
        cpu_frequency_mhz: mean,
        per_core_frequency_mhz: per_core,
    })
}
