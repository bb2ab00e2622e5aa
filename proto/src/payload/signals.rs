//! The payload sections added after the first four: `network`, `disk`,
//! `filesystems`, `system` and `temperatures`, with their validation.
//!
//! Each is a list keyed by a name (interface, device, mount point, sensor)
//! or a small record. Lists and names are bounded ([`MAX_ENTRIES`],
//! [`MAX_NAME_BYTES`]) so a hostile or broken agent cannot make the
//! aggregator hold or fan out arbitrarily large updates; the agent applies
//! the same bounds before sending, so a real host never has a batch refused.

use serde::{Deserialize, Serialize};

/// Most entries in one list (interfaces, devices, mounts, sensors).
pub const MAX_ENTRIES: usize = 1024;
/// Most bytes in one name (process, interface, device, mount point, sensor
/// label, filesystem device and type); the agent truncates longer ones.
pub const MAX_NAME_BYTES: usize = 256;
/// Most logical cores a host may report.
pub const MAX_CORES: usize = 8192;
/// Temperatures accepted, in degrees Celsius; sensors reading outside this
/// range are broken (or unplugged) and are left out by the agent.
pub const TEMPERATURE_RANGE_C: std::ops::RangeInclusive<f32> = -100.0..=300.0;

/// Network interfaces: rates over the time since the previous sample and
/// counters since the interface appeared. The agent rounds every rate to a
/// whole number of units (bytes, packets, errors) per second: the fraction
/// would only be the jitter of the measured interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// One entry per interface, by name.
    pub interfaces: Vec<Interface>,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (`lo`, `eth0`, ...).
    pub name: String,
    /// Bytes received per second, a whole number.
    pub rx_bytes_per_sec: f64,
    /// Bytes sent per second, a whole number.
    pub tx_bytes_per_sec: f64,
    /// Packets received per second, a whole number.
    pub rx_packets_per_sec: f64,
    /// Packets sent per second, a whole number.
    pub tx_packets_per_sec: f64,
    /// Receive errors per second, a whole number.
    pub rx_errors_per_sec: f64,
    /// Send errors per second, a whole number.
    pub tx_errors_per_sec: f64,
    /// Bytes received, counter.
    pub rx_bytes_total: u64,
    /// Bytes sent, counter.
    pub tx_bytes_total: u64,
    /// Packets received, counter.
    pub rx_packets_total: u64,
    /// Packets sent, counter.
    pub tx_packets_total: u64,
    /// Receive errors, counter.
    pub rx_errors_total: u64,
    /// Send errors, counter.
    pub tx_errors_total: u64,
}

/// Block device I/O, for the devices backing mounted filesystems. Rates
/// are over the time since the previous sample, rounded to whole bytes per
/// second like the network's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// One entry per device, by name.
    pub devices: Vec<DiskDevice>,
}

/// One block device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskDevice {
    /// Device name without `/dev/` (`vda`, `nvme0n1p1`, ...).
    pub name: String,
    /// Bytes read per second, a whole number.
    pub read_bytes_per_sec: f64,
    /// Bytes written per second, a whole number.
    pub write_bytes_per_sec: f64,
    /// Bytes read, counter.
    pub read_bytes_total: u64,
    /// Bytes written, counter.
    pub written_bytes_total: u64,
}

/// Mounted filesystems and their space.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filesystems {
    /// One entry per mount point.
    pub mounts: Vec<Filesystem>,
}

/// One mounted filesystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filesystem {
    /// Mount point (`/`, `/var`, ...).
    pub mount: String,
    /// Device as mounted (`/dev/vda`, ...).
    pub device: String,
    /// Filesystem type (`ext4`, `xfs`, ...).
    pub fs_type: String,
    /// Size.
    pub total_bytes: u64,
    /// `total_bytes - free_bytes`: includes blocks reserved for root.
    pub used_bytes: u64,
    /// Space available to unprivileged users (statvfs `f_bavail`).
    pub free_bytes: u64,
}

/// Uptime, boot time and the CPU's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// Boot time, Unix seconds.
    pub boot_time: u64,
    /// Logical cores (hardware threads).
    pub logical_cores: u32,
    /// Physical cores; absent where the platform does not say.
    #[serde(default)]
    pub physical_cores: Option<u32>,
    /// Mean current frequency over the logical cores, MHz (0 where unknown).
    pub cpu_frequency_mhz: u64,
    /// Current frequency of each logical core, MHz, in core order.
    pub per_core_frequency_mhz: Vec<u64>,
}

/// Temperature sensors, where the host has any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Temperatures {
    /// One entry per sensor with a reading.
    pub sensors: Vec<Sensor>,
}

/// One temperature sensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    /// Sensor label (`coretemp Package id 0`, `acpitz temp1`, ...).
    pub label: String,
    /// Current reading, °C.
    pub celsius: f32,
    /// Highest reading seen, °C, where known.
    #[serde(default)]
    pub max_celsius: Option<f32>,
    /// Critical threshold, °C, where the sensor has one.
    #[serde(default)]
    pub critical_celsius: Option<f32>,
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} name of {} bytes, outside 1..={MAX_NAME_BYTES}",
            name.len()
        ));
    }
    Ok(())
}

pub(crate) fn check_len(
    what: impl std::fmt::Display,
    len: usize,
    max: usize,
) -> Result<(), String> {
    if len > max {
        return Err(format!("{what} lists {len} entries, more than {max}"));
    }
    Ok(())
}

fn check_rate(what: &str, name: &str, field: &str, v: f64) -> Result<(), String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{what} {name:?} {field} is {v}"));
    }
    Ok(())
}

impl Network {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_len("network.interfaces", self.interfaces.len(), MAX_ENTRIES)?;
        for i in &self.interfaces {
            check_name("network interface", &i.name)?;
            for (field, v) in [
                ("rx_bytes_per_sec", i.rx_bytes_per_sec),
                ("tx_bytes_per_sec", i.tx_bytes_per_sec),
                ("rx_packets_per_sec", i.rx_packets_per_sec),
                ("tx_packets_per_sec", i.tx_packets_per_sec),
                ("rx_errors_per_sec", i.rx_errors_per_sec),
                ("tx_errors_per_sec", i.tx_errors_per_sec),
            ] {
                check_rate("network interface", &i.name, field, v)?;
            }
        }
        Ok(())
    }
}

impl Disk {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_len("disk.devices", self.devices.len(), MAX_ENTRIES)?;
        for d in &self.devices {
            check_name("disk device", &d.name)?;
            check_rate(
                "disk device",
                &d.name,
                "read_bytes_per_sec",
                d.read_bytes_per_sec,
            )?;
            check_rate(
                "disk device",
                &d.name,
                "write_bytes_per_sec",
                d.write_bytes_per_sec,
            )?;
        }
        Ok(())
    }
}

impl Filesystems {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_len("filesystems.mounts", self.mounts.len(), MAX_ENTRIES)?;
        for f in &self.mounts {
            check_name("filesystem mount", &f.mount)?;
            if f.device.len() > MAX_NAME_BYTES || f.fs_type.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "filesystem {:?} device or type longer than {MAX_NAME_BYTES} bytes",
                    f.mount
                ));
            }
            if f.used_bytes > f.total_bytes || f.free_bytes > f.total_bytes {
                return Err(format!(
                    "filesystem {:?} used or free exceeds total",
                    f.mount
                ));
            }
        }
        Ok(())
    }
}

impl SystemInfo {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.logical_cores == 0 || self.logical_cores as usize > MAX_CORES {
            return Err(format!(
                "system.logical_cores is {}, outside 1..={MAX_CORES}",
                self.logical_cores
            ));
        }
        if let Some(p) = self.physical_cores
            && (p == 0 || p > self.logical_cores)
        {
            return Err(format!(
                "system.physical_cores is {p}, outside 1..={}",
                self.logical_cores
            ));
        }
        check_len(
            "system.per_core_frequency_mhz",
            self.per_core_frequency_mhz.len(),
            super::MAX_PER_CORE,
        )
    }
}

impl Temperatures {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_len("temperatures.sensors", self.sensors.len(), MAX_ENTRIES)?;
        for s in &self.sensors {
            check_name("temperature sensor", &s.label)?;
            for (field, v) in [
                ("celsius", Some(s.celsius)),
                ("max_celsius", s.max_celsius),
                ("critical_celsius", s.critical_celsius),
            ] {
                if let Some(v) = v
                    && !TEMPERATURE_RANGE_C.contains(&v)
                {
                    return Err(format!(
                        "temperature sensor {:?} {field} is {v}, outside {TEMPERATURE_RANGE_C:?}",
                        s.label
                    ));
                }
            }
        }
        Ok(())
    }
}
