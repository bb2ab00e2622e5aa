//! Block device I/O: bytes read and written per second, per device backing
//! a mounted filesystem (devices never mounted are not seen).
//!
//! On Linux the agent reads `mounts` and `diskstats` under
//! `collect.proc_root` itself, so a containerised agent can be pointed at the
//! host's procfs; elsewhere sysinfo's disk list is the source. This module
//! also owns the refresh of that list, which the `filesystems` family reads
//! on every platform (its space figures come from `statvfs` of each mount
//! point, which sysinfo does and this crate, free of `unsafe`, does not).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES};
use hostpulse_proto::{Disk, DiskDevice};
use sysinfo::{DiskRefreshKind, Disks};

use super::rate::Rates;

/// `diskstats` counts 512-byte sectors whatever the device's block size.
const SECTOR_BYTES: u64 = 512;

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

/// A device name fit to send (not empty, not too long).
fn valid_name(name: &str) -> Option<&str> {
    (!name.is_empty() && name.len() <= MAX_NAME_BYTES).then_some(name)
}

/// The device name as reported by sysinfo (`vda` for `/dev/vda`), or `None`
/// for what is not a block device (on Linux, a mount whose source is not
/// under `/dev`).
fn device_name(disk: &sysinfo::Disk) -> Option<&str> {
    let name = disk.name().to_str()?;
    let name = if cfg!(target_os = "linux") {
        name.strip_prefix("/dev/")?
    } else {
        name
    };
    valid_name(name)
}

/// Filesystem types that are never backed by a block device worth listing,
/// or whose mount may hang (network filesystems): the list sysinfo leaves
/// out of its disks, so both sources see the same devices.
const IGNORED_FS_TYPES: &[&str] = &[
    "rootfs",
    "sysfs",
    "proc",
    "devtmpfs",
    "cgroup",
    "cgroup2",
    "pstore",
    "squashfs",
    "rpc_pipefs",
    "iso9660",
    "devpts",
    "hugetlbfs",
    "mqueue",
    "tmpfs",
    "cifs",
    "nfs",
    "nfs4",
    "autofs",
];

/// The mount sources under `/dev/` in `mounts` text (fstab format: source,
/// mount point, type, ...), in order, skipping the filesystem types above
/// and mounts under `/sys`, `/proc` and `/run` (except `/run/media`).
fn mounted_devices(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (source, mount, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        let mount = Path::new(mount);
        let skipped = IGNORED_FS_TYPES.contains(&fs_type)
            || mount.starts_with("/sys")
            || mount.starts_with("/proc")
            || (mount.starts_with("/run") && !mount.starts_with("/run/media"));
        (!skipped && source.starts_with("/dev/")).then_some(source)
    })
}

/// Bytes read and written of every device in `diskstats` text (fields 3,
/// 6 and 10: name, sectors read, sectors written).
fn parse_diskstats(text: &str) -> HashMap<&str, [u64; 2]> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let sectors = |i: usize| f.get(i)?.parse::<u64>().ok();
            let (read, written) = (sectors(5)?, sectors(9)?);
            Some((
                f[2],
                [
                    read.saturating_mul(SECTOR_BYTES),
                    written.saturating_mul(SECTOR_BYTES),
                ],
            ))
        })
        .collect()
}

/// The kernel's name of the device at `source` (`dm-0` for
/// `/dev/mapper/vg-root`, which is a symlink), or the name under `/dev/` as
/// given where the path does not resolve here.
fn kernel_name(source: &str) -> String {
    std::fs::canonicalize(source)
        .ok()
        .and_then(|p| {
            p.strip_prefix("/dev")
                .ok()
                .map(|r| r.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| source.trim_start_matches("/dev/").to_owned())
}

/// Linux: `mounts` and `diskstats` under `collect.proc_root`.
#[derive(Debug)]
pub(super) struct Procfs {
    mounts: PathBuf,
    diskstats: PathBuf,
    /// Mount source → kernel name, resolved once while it stays mounted.
    kernel_names: HashMap<String, String>,
}

impl Procfs {
    fn new(proc_root: &Path) -> Self {
        Self {
            mounts: proc_root.join("mounts"),
            diskstats: proc_root.join("diskstats"),
            kernel_names: HashMap::new(),
        }
    }

    /// Every mounted block device once, by its name as mounted, with its
    /// counters; devices the kernel keeps no counters for are left out.
    fn read(&mut self) -> Result<Vec<(String, [u64; 2])>, String> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let mounts = read(&self.mounts)?;
        let stats = read(&self.diskstats)?;
        let stats = parse_diskstats(&stats);
        let mut resolved = HashMap::with_capacity(self.kernel_names.len());
        let mut seen = HashSet::new();
        let mut devices = Vec::new();
        for source in mounted_devices(&mounts) {
            let Some(name) = source.strip_prefix("/dev/").and_then(valid_name) else {
                continue;
            };
            if !seen.insert(name) {
                continue;
            }
            let kernel = self
                .kernel_names
                .remove(source)
                .unwrap_or_else(|| kernel_name(source));
            if let Some(counters) = stats.get(kernel.as_str()) {
                devices.push((name.to_owned(), *counters));
            }
            resolved.insert(source.to_owned(), kernel);
        }
        self.kernel_names = resolved;
        Ok(devices)
    }
}

/// Where the device counters come from.
#[derive(Debug)]
enum Source {
    /// Linux: files under `collect.proc_root`.
    Procfs(Procfs),
    /// Elsewhere: sysinfo's disk list, refreshed with I/O counters.
    Sysinfo,
}

/// The counters' source and the previous counters of each device.
#[derive(Debug)]
pub(super) struct DiskIo {
    source: Source,
    rates: Rates<2>,
}

impl DiskIo {
    /// Reads under `proc_root` on Linux, through sysinfo elsewhere.
    pub(super) fn new(proc_root: &Path) -> Self {
        let source = if cfg!(target_os = "linux") {
            Source::Procfs(Procfs::new(proc_root))
        } else {
            Source::Sysinfo
        };
        Self {
            source,
            rates: Rates::default(),
        }
    }

    /// Whether [`collect`](Self::collect) reads sysinfo's disk list (which
    /// must then have been refreshed with I/O counters).
    pub(super) fn uses_sysinfo(&self) -> bool {
        matches!(self.source, Source::Sysinfo)
    }

    /// Rates since the previous call; devices sorted by name, each once
    /// however often mounted.
    pub(super) fn collect(&mut self, disks: Option<&Disks>) -> Result<Disk, String> {
        let mut listed = match &mut self.source {
            Source::Procfs(p) => p.read()?,
            Source::Sysinfo => {
                let disks = disks.ok_or("no disk list")?;
                let mut seen = HashSet::new();
                disks
                    .iter()
                    .filter_map(|d| Some((device_name(d)?, d.usage())))
                    .filter(|(name, _)| seen.insert(*name))
                    .map(|(name, u)| (name.to_owned(), [u.total_read_bytes, u.total_written_bytes]))
                    .collect()
            }
        };
        let mut reading = self.rates.begin(Instant::now());
        listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        listed.truncate(MAX_ENTRIES);
        let mut devices = Vec::with_capacity(listed.len());
        for (name, totals) in listed {
            let Some([read, write]) = self.rates.rate(&mut reading, &name, totals) else {
                continue;
            };
            devices.push(DiskDevice {
                name,
                read_bytes_per_sec: read,
                write_bytes_per_sec: write,
                read_bytes_total: totals[0],
                written_bytes_total: totals[1],
            });
        }
        self.rates.finish(reading);
        Ok(Disk { devices })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
overlay / overlay rw,relatime,lowerdir=/a,upperdir=/b,workdir=/c 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev tmpfs rw,nosuid,size=65536k,mode=755 0 0
/dev/vda1 /etc/hosts ext4 rw,relatime 0 0
/dev/vda1 /etc/hostname ext4 rw,relatime 0 0
/dev/loop3 /snap/core/1 squashfs ro,nodev,relatime 0 0
/dev/sdb1 /run/user/1000/x vfat rw 0 0
/dev/sdc1 /run/media/usb vfat rw 0 0
/dev/sdd1 /proc/fs/x ext4 rw 0 0
/dev/sde1 /system\\040data ext4 rw 0 0
/dev/mapper/vg-home /home xfs rw 0 0
server:/x /mnt/nfs nfs4 rw 0 0
";

    #[test]
    fn mounted_block_devices_are_found_and_pseudo_mounts_skipped() {
        let found: Vec<&str> = mounted_devices(MOUNTS).collect();
        assert_eq!(
            found,
            [
                "/dev/vda1",
                "/dev/vda1",
                "/dev/sdc1",
                "/dev/sde1",
                "/dev/mapper/vg-home"
            ]
        );
    }

    #[test]
    fn diskstats_fields_are_sectors_read_and_written() {
        let text = "\
 253       0 vda 12187 4363 1268778 5325 5539 6004 243592 4339 0 8596 10307 0 0 0 0
 253       1 vda1 11999 4363 1256114 5263 5539 6004 243592 4339 0 8548 9602 0 0 0 0
   7       0 loop0 4 0 8 0
 bad line
";
        let stats = parse_diskstats(text);
        assert_eq!(stats.len(), 2, "{stats:?}");
        assert_eq!(stats["vda"], [1268778 * 512, 243592 * 512]);
        assert_eq!(stats["vda1"], [1256114 * 512, 243592 * 512]);
    }

    #[test]
    fn devices_are_named_as_mounted_and_counted_as_the_kernel_names_them() {
        assert_eq!(kernel_name("/dev/hp-no-such-device"), "hp-no-such-device");
        assert_eq!(kernel_name("/dev/mapper/hp-no-such"), "mapper/hp-no-such");
        let dir = std::env::temp_dir().join(format!("hp-diskstats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A symlink resolves to the kernel's name (as /dev/mapper/x -> /dev/dm-0).
        let link = dir.join("link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        assert_eq!(kernel_name(link.to_str().unwrap()), "null");
        let mut io = DiskIo {
            source: Source::Procfs(Procfs::new(&dir)),
            rates: Rates::default(),
        };
        let e = io.collect(None).unwrap_err();
        assert!(e.contains("mounts"), "{e}");
        std::fs::write(
            dir.join("mounts"),
            "/dev/hpd0 / ext4 rw 0 0\n/dev/hpd0 /var ext4 rw 0 0\n\
             /dev/hpd1 /data xfs rw 0 0\n/dev/hpd9 /gone ext4 rw 0 0\n",
        )
        .unwrap();
        let stats = |k: u64| {
            format!(
                "8 0 hpd0 1 0 {} 0 1 0 {} 0 0 0 0\n8 16 hpd1 1 0 7 0 1 0 9 0 0 0 0\n\
                 8 32 hpd2 1 0 100 0 1 0 100 0 0 0 0\n",
                10 + k,
                20 + 3 * k
            )
        };
        std::fs::write(dir.join("diskstats"), stats(0)).unwrap();
        assert!(
            io.collect(None).unwrap().devices.is_empty(),
            "baseline only"
        );
        std::fs::write(dir.join("diskstats"), stats(2)).unwrap();
        let d = io.collect(None).unwrap();
        let names: Vec<&str> = d.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["hpd0", "hpd1"], "mounted, with counters, once");
        let hpd0 = &d.devices[0];
        assert_eq!(
            (hpd0.read_bytes_total, hpd0.written_bytes_total),
            (12 * 512, 26 * 512)
        );
        assert!(hpd0.read_bytes_per_sec > 0.0);
        // One elapsed time for both: written grew three times as much
        // (each rate rounded to a whole byte a second).
        let (read, write) = (hpd0.read_bytes_per_sec, hpd0.write_bytes_per_sec);
        assert!(
            read.fract() == 0.0 && write.fract() == 0.0,
            "{read} {write}"
        );
        assert!((write - 3.0 * read).abs() <= 2.0, "{read} {write}");
        assert_eq!(d.devices[1].read_bytes_per_sec, 0.0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
