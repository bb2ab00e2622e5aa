//! CPU usage: the average over all cores and each logical core, 0–100.

use hostpulse_proto::Cpu;
use sysinfo::System;

/// Reads the usage computed by the last `refresh_cpu_usage`.
pub(super) fn collect(sys: &System) -> Cpu {
    Cpu {
        total_pct: sys.global_cpu_usage().clamp(0.0, 100.0),
        per_core_pct: sys
            .cpus()
            .iter()
            .map(|c| c.usage().clamp(0.0, 100.0))
            .collect(),
    }
}
