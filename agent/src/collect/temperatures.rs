//! Temperature sensors (hwmon, or thermal zones where there is no hwmon),
//! where the host has any. Collected every
//! `collect.temperatures_interval_secs`.
//!
//! On Linux the agent reads `class/hwmon` (or `class/thermal`) under
//! `collect.sys_root` itself, so a containerised agent can be pointed at the
//! host's sysfs; elsewhere sysinfo is the source. Labels are those sysinfo
//! gives hwmon sensors (`<chip> <label> [<model>]`, or `<chip> temp<N>`),
//! a thermal zone is labelled by its type, and `max_celsius` is the highest
//! reading seen (the chip's own record where it keeps one).
//!
//! A host without readable sensors (most virtual machines) sends no
//! `temperatures` section at all rather than an empty list, the same way a
//! platform without a load average sends no `load`. Readings outside
//! [`TEMPERATURE_RANGE_C`] come from broken or unplugged sensors and are
//! left out (thresholds outside it are dropped).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES, TEMPERATURE_RANGE_C};
use hostpulse_proto::{Sensor, Temperatures};
use sysinfo::Components;

/// One sensor as read, before labels are made unique.
#[derive(Debug, PartialEq)]
struct Reading {
    label: String,
    celsius: f32,
    max: Option<f32>,
    critical: Option<f32>,
}

/// Where the readings come from.
enum Source {
    /// Linux: `<sys_root>/class`, and the highest reading seen per sensor
    /// (keyed by its directory and number, which labels may not be).
    Sysfs {
        class: PathBuf,
        highest: HashMap<String, f32>,
    },
    /// Elsewhere: sysinfo (which keeps the highest reading itself).
    Sysinfo(Components),
}

/// The sensors' source.
pub(super) struct TemperatureCollector {
    source: Source,
}

impl TemperatureCollector {
    /// Reads under `sys_root` on Linux, through sysinfo elsewhere.
    pub(super) fn new(sys_root: &Path) -> Result<Self, sysinfo::Error> {
        let source = if cfg!(target_os = "linux") {
            Source::Sysfs {
                class: sys_root.join("class"),
                highest: HashMap::new(),
            }
        } else {
            Source::Sysinfo(Components::new()?)
        };
        Ok(Self { source })
    }

    /// Re-scans the sensors and reads them; `None` when there is none to read.
    pub(super) fn collect(&mut self) -> Option<Temperatures> {
        let readings = match &mut self.source {
            Source::Sysfs { class, highest } => read_sysfs(class, highest),
            Source::Sysinfo(components) => {
                components.refresh(true);
                components
                    .iter()
                    .filter_map(|c| {
                        Some(Reading {
                            label: c.label().to_owned(),
                            celsius: c.temperature()?,
                            max: c.max(),
                            critical: c.critical(),
                        })
                    })
                    .collect()
            }
        };
        summarise(readings)
    }
}

/// The payload: readings in range, labels unique, sorted by label.
fn summarise(readings: Vec<Reading>) -> Option<Temperatures> {
    let in_range = |v: Option<f32>| v.filter(|v| TEMPERATURE_RANGE_C.contains(v));
    let mut taken: HashSet<String> = HashSet::new();
    let mut sensors: Vec<Sensor> = readings
        .into_iter()
        .filter_map(|r| {
            let celsius = in_range(Some(r.celsius))?;
            let mut label: String = r.label.trim().chars().take(MAX_NAME_BYTES / 4).collect();
            if label.is_empty() {
                label = "sensor".into();
            }
            // Labels name series (Prometheus, dashboards): keep them unique.
            let label = unique(label, &mut taken);
            Some(Sensor {
                label,
                celsius,
                max_celsius: in_range(r.max),
                critical_celsius: in_range(r.critical),
            })
        })
        .collect();
    if sensors.is_empty() {
        return None;
    }
    sensors.sort_by(|a, b| a.label.cmp(&b.label));
    sensors.truncate(MAX_ENTRIES);
    Some(Temperatures { sensors })
}

/// A small sysfs text file, trimmed; `None` if unreadable or empty.
fn read_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A sysfs temperature in millidegrees, as °C.
fn read_celsius(path: &Path) -> Option<f32> {
    let milli: i64 = read_line(path)?.parse().ok()?;
    Some(milli as f32 / 1000.0)
}

/// The entries of `dir` named `<prefix><number>`, by number.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    found
}

/// The files in `dir` named `<prefix><middle><suffix>`: each middle, with the path.
fn files_named<'a>(
    dir: &Path,
    prefix: &'a str,
    suffix: &'a str,
) -> impl Iterator<Item = (String, std::path::PathBuf)> + 'a {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |e| {
            let file = e.file_name();
            let middle = file.to_str()?.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((middle.to_string(), e.path()))
        })
}

/// Every hwmon sensor with a readable `temp<N>_input`, in order of chip and
/// number; thermal zones only where hwmon has none. `highest` is the
/// highest reading seen of each sensor, kept for the next call.
fn read_sysfs(class: &Path, highest: &mut HashMap<String, f32>) -> Vec<Reading> {
    let mut readings = Vec::new();
    let mut seen = HashMap::new();
    for (_, chip) in numbered(&class.join("hwmon"), "hwmon") {
        let name = read_line(&chip.join("name")).unwrap_or_default();
        let model = read_line(&chip.join("device/model"));
        let mut inputs: Vec<u32> = files_named(&chip, "temp", "_input")
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        inputs.sort_unstable();
        for n in inputs {
            let file = |item: &str| chip.join(format!("temp{n}_{item}"));
            let Some(celsius) = read_celsius(&file("input")) else {
                continue;
            };
            let label = match (read_line(&file("label")), &model) {
                (Some(label), Some(model)) => format!("{name} {label} {model}"),
                (Some(label), None) => format!("{name} {label}"),
                (None, Some(model)) => format!("{name} {model}"),
                (None, None) => format!("{name} temp{n}"),
            };
            let key = format!("{}/{n}", chip.display());
            let recorded = read_celsius(&file("highest"));
            readings.push((key, celsius, recorded, label, read_celsius(&file("crit"))));
        }
    }
    if readings.is_empty() {
        for (_, zone) in numbered(&class.join("thermal"), "thermal_zone") {
            let (Some(celsius), Some(kind)) = (
                read_celsius(&zone.join("temp")),
                read_line(&zone.join("type")),
            ) else {
                continue;
            };
            let critical = files_named(&zone, "trip_point_", "_type")
                .filter(|(_, path)| read_line(path).as_deref() == Some("critical"))
                .find_map(|(n, _)| read_celsius(&zone.join(format!("trip_point_{n}_temp"))));
            let key = zone.display().to_string();
            readings.push((key, celsius, None, kind, critical));
        }
    }
    let out = readings
        .into_iter()
        .map(|(key, celsius, recorded, label, critical)| {
            // Broken sensors' readings must not become the record.
            let plausible = |v: f32| TEMPERATURE_RANGE_C.contains(&v).then_some(v);
            let max = [
                highest.get(&key).copied(),
                recorded.and_then(plausible),
                plausible(celsius),
            ]
            .into_iter()
            .flatten()
            .reduce(f32::max);
            if let Some(m) = max {
                seen.insert(key, m);
            }
            Reading {
                label,
                celsius,
                max,
                critical,
            }
        })
        .collect();
    *highest = seen;
    out
}

/// `label`, or the first free `label #2`, `label #3`, ... (a real label may
/// itself look like a suffixed one).
fn unique(label: String, taken: &mut HashSet<String>) -> String {
    if taken.insert(label.clone()) {
        return label;
    }
    (2u32..)
        .map(|n| format!("{label} #{n}"))
        .find(|l| taken.insert(l.clone()))
        .expect("a free suffix exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_made_unique_even_against_suffix_like_labels() {
        let mut taken = HashSet::new();
        let got: Vec<String> = ["x #2", "x", "x", "x"]
            .into_iter()
            .map(|l| unique(l.to_string(), &mut taken))
            .collect();
        assert_eq!(got, ["x #2", "x", "x #3", "x #4"]);
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn hwmon_sensors_are_read_under_sys_root_and_remember_their_highest() {
        let root = std::env::temp_dir().join(format!("hp-hwmon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let hwmon = root.join("class/hwmon");
        let mut c = TemperatureCollector::new(&root).unwrap();
        assert_eq!(c.collect(), None, "no sensors: no section");

        // A thermal zone is the fallback only.
        let zone = root.join("class/thermal/thermal_zone0");
        write(&zone.join("type"), "acpitz\n");
        write(&zone.join("temp"), "27800\n");
        write(&zone.join("trip_point_0_type"), "passive\n");
        write(&zone.join("trip_point_0_temp"), "90000\n");
        write(&zone.join("trip_point_1_type"), "critical\n");
        write(&zone.join("trip_point_1_temp"), "105000\n");
        let t = c.collect().unwrap();
        assert_eq!(
            t.sensors,
            [Sensor {
                label: "acpitz".into(),
                celsius: 27.8,
                max_celsius: Some(27.8),
                critical_celsius: Some(105.0),
            }]
        );

        write(&hwmon.join("hwmon0/name"), "coretemp\n");
        write(&hwmon.join("hwmon0/temp1_label"), "Package id 0\n");
        write(&hwmon.join("hwmon0/temp1_input"), "42500\n");
        write(&hwmon.join("hwmon0/temp1_crit"), "100000\n");
        write(&hwmon.join("hwmon0/temp2_input"), "38000\n");
        write(&hwmon.join("hwmon0/temp2_highest"), "61000\n");
        write(&hwmon.join("hwmon1/name"), "nvme\n");
        write(&hwmon.join("hwmon1/device/model"), "Disk X\n");
        write(&hwmon.join("hwmon1/temp1_input"), "-273150\n");
        write(&hwmon.join("hwmon10/name"), "coretemp\n");
        write(&hwmon.join("hwmon10/temp1_label"), "Package id 0\n");
        write(&hwmon.join("hwmon10/temp1_input"), "50000\n");
        let sensor = |label: &str, celsius, max, critical| Sensor {
            label: label.into(),
            celsius,
            max_celsius: max,
            critical_celsius: critical,
        };
        let t = c.collect().unwrap();
        assert_eq!(
            t.sensors,
            [
                sensor("coretemp Package id 0", 42.5, Some(42.5), Some(100.0)),
                sensor("coretemp Package id 0 #2", 50.0, Some(50.0), None),
                sensor("coretemp temp2", 38.0, Some(61.0), None),
            ],
            "hwmon0 before hwmon10; the out-of-range nvme sensor left out"
        );

        write(&hwmon.join("hwmon0/temp1_input"), "47500\n");
        write(&hwmon.join("hwmon1/temp1_input"), "35850\n");
        assert_eq!(c.collect().unwrap().sensors[0].max_celsius, Some(47.5));
        write(&hwmon.join("hwmon0/temp1_input"), "45000\n");
        let t = c.collect().unwrap();
        assert_eq!(
            t.sensors[0],
            sensor("coretemp Package id 0", 45.0, Some(47.5), Some(100.0)),
            "the highest reading is kept"
        );
        assert_eq!(
            t.sensors[3],
            sensor("nvme Disk X", 35.85, Some(35.85), None)
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
