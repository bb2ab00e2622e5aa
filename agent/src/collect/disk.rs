//! Block device I/O: bytes read and written per second, per device backing
//! a mounted filesystem (sysinfo reads the counters from `/proc/diskstats`
//! for the devices it finds in `/proc/mounts`; devices never mounted are not
//! seen). Also owns the shared `Disks` list the `filesystems` family reads.

use std::collections::HashSet;
use std::time::Instant;

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES};
use hostpulse_proto::{Disk, DiskDevice};
use sysinfo::{DiskRefreshKind, Disks};

use super::rate::Rates;

/// Re-reads the mount list, and I/O counters and/or space as asked.
pub(super) fn refresh(disks: &mut Disks, io: bool, storage: bool) {
    let mut kind = DiskRefreshKind::nothing();
    if io {
        kind = kind.with_io_usage();
    }
    if storage {
        kind = kind.with_storage();
    }
    disks.refresh_specifics(true, kind);
}

/// The device name as reported (`vda` for `/dev/vda`), or `None` for what
/// is not a block device (on Linux, a mount whose source is not under `/dev`).
fn device_name(disk: &sysinfo::Disk) -> Option<&str> {
    let name = disk.name().to_str()?;
    let name = if cfg!(target_os = "linux") {
        name.strip_prefix("/dev/")?
    } else {
        name
    };
    (!name.is_empty() && name.len() <= MAX_NAME_BYTES).then_some(name)
}

/// The previous counters of each device.
#[derive(Debug, Default)]
pub(super) struct DiskIo {
    rates: Rates<2>,
}

impl DiskIo {
    /// Rates since the previous call, from a list just refreshed with I/O
    /// counters; devices sorted by name, each once however often mounted.
    pub(super) fn collect(&mut self, disks: &Disks) -> Disk {
        let mut reading = self.rates.begin(Instant::now());
        let mut seen = HashSet::new();
        let mut listed: Vec<(&str, sysinfo::DiskUsage)> = disks
            .iter()
            .filter_map(|d| Some((device_name(d)?, d.usage())))
            .filter(|(name, _)| seen.insert(*name))
            .collect();
        listed.sort_unstable_by_key(|(name, _)| *name);
        listed.truncate(MAX_ENTRIES);
        let mut devices = Vec::with_capacity(listed.len());
        for (name, usage) in listed {
            let totals = [usage.total_read_bytes, usage.total_written_bytes];
            let Some([read, write]) = self.rates.rate(&mut reading, name, totals) else {
                continue;
            };
            devices.push(DiskDevice {
                name: name.to_owned(),
                read_bytes_per_sec: read,
                write_bytes_per_sec: write,
                read_bytes_total: totals[0],
                written_bytes_total: totals[1],
            });
        }
        self.rates.finish(reading);
        Disk { devices }
    }
}
