//! Mounted filesystems: mount point, device, type, and total, used and free
//! space (statvfs). Slow-changing, so collected every
//! `collect.filesystems_interval_secs`, not with every sample.
//!
//! sysinfo leaves out pseudo filesystems (proc, sysfs, cgroup, tmpfs, ...)
//! and network mounts (whose statvfs can hang); the ones it keeps that hold
//! no space (nsfs, tracefs, fusectl, ...) report a size of 0 and are left
//! out here.

use std::collections::BTreeMap;

use hostpulse_proto::payload::signals::MAX_ENTRIES;
use hostpulse_proto::{Filesystem, Filesystems};
use sysinfo::Disks;

/// Reads a list just refreshed with space figures; one entry per mount
/// point (the last mounted, which is the one visible), sorted by mount.
pub(super) fn collect(disks: &Disks) -> Filesystems {
    let mut by_mount = BTreeMap::new();
    for d in disks {
        let (Some(mount), Some(device), Some(fs_type)) = (
            d.mount_point().to_str(),
            d.name().to_str(),
            d.file_system().to_str(),
        ) else {
            continue;
        };
        // Names over MAX_NAME_BYTES are truncated with the whole sample.
        if mount.is_empty() {
            continue;
        }
        let total = d.total_space();
        if total == 0 {
            continue;
        }
        let free = d.available_space().min(total);
        by_mount.insert(
            mount,
            Filesystem {
                mount: mount.to_owned(),
                device: device.to_owned(),
                fs_type: fs_type.to_owned(),
                total_bytes: total,
                used_bytes: total - free,
                free_bytes: free,
            },
        );
    }
    Filesystems {
        mounts: by_mount.into_values().take(MAX_ENTRIES).collect(),
    }
}
