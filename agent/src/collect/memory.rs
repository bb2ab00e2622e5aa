//! Memory and swap, in bytes.

use hostpulse_proto::Memory;
use sysinfo::{MemoryRefreshKind, System};

/// Refreshes RAM and swap figures only.
pub(super) fn refresh(sys: &mut System) {
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
}

pub(super) fn collect(sys: &System) -> Memory {
    let total = sys.total_memory();
    Memory {
        total_bytes: total,
        used_bytes: sys.used_memory().min(total),
        available_bytes: sys.available_memory().min(total),
        swap_total_bytes: sys.total_swap(),
        swap_used_bytes: sys.used_swap().min(sys.total_swap()),
    }
}
