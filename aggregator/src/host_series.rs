//! The host series table: which field of which `host.<host>.<metric>`
//! update becomes which Prometheus series, with its labels and scale. One
//! table for both places that speak Prometheus: the host gauges of
//! `/metrics` (`http::metrics::host`, behind `[metrics] host_gauges`) and
//! remote-write export (`export::remote_write`), so a series has the same
//! name, labels and value whichever way it reaches Prometheus.
//!
//! Names follow Prometheus conventions: base units (bytes, seconds, hertz,
//! celsius, ratios) as a suffix, and `_total` only for counters, which is
//! what the agent's cumulative network and disk counters are exported as
//! (take `rate()` of them; the per-second figures stay on the topics).
//! Every series is labelled by `host` (the topic segment), and those of list
//! sections also by interface, device, mount or sensor.

use serde_json::Value;

/// One family of host series, as `/metrics` describes it.
#[derive(Debug)]
pub struct Gauge {
    /// Base name, without unit or `_total`.
    pub name: &'static str,
    /// The HELP text.
    pub help: &'static str,
    /// Appended to the name (`bytes`, `seconds`, ...).
    pub unit: Option<&'static str>,
    /// A counter (`_total`) rather than a gauge.
    pub counter: bool,
}

impl Gauge {
    /// The series name as a scrape shows it: the base name, then `_<unit>`,
    /// then `_total` for a counter (`hostpulse_host_network_receive_bytes_total`).
    pub fn series_name(&self) -> String {
        let mut name = self.name.to_string();
        if let Some(unit) = self.unit {
            name.push('_');
            name.push_str(unit);
        }
        if self.counter {
            name.push_str("_total");
        }
        name
    }
}

/// A value read from a metric's payload: one series per host.
struct Scalar {
    metric: &'static str,
    gauge: Gauge,
    /// JSON pointer into the update.
    pointer: &'static str,
    scale: f64,
}

/// A value read from each entry of a list in a metric's payload: one series
/// per host and entry.
struct Listed {
    metric: &'static str,
    /// JSON pointer of the list in the update.
    list: &'static str,
    /// The entry's field naming it, and the label it becomes.
    key: &'static str,
    label: &'static str,
    gauge: Gauge,
    /// The entry's field holding the value.
    field: &'static str,
}

const fn scalar(
    metric: &'static str,
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    pointer: &'static str,
    scale: f64,
) -> Scalar {
    Scalar {
        metric,
        gauge: Gauge {
            name,
            help,
            unit,
            counter: false,
        },
        pointer,
        scale,
    }
}

/// (metric, list pointer, key field, label) of each list section.
type ListOf = (&'static str, &'static str, &'static str, &'static str);
const INTERFACES: ListOf = ("network", "/payload/interfaces", "name", "interface");
const DEVICES: ListOf = ("disk", "/payload/devices", "name", "device");
const MOUNTS: ListOf = ("filesystems", "/payload/mounts", "mount", "mount");
const SENSORS: ListOf = ("temperatures", "/payload/sensors", "label", "sensor");

const fn listed(
    of: ListOf,
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    counter: bool,
    field: &'static str,
) -> Listed {
    Listed {
        metric: of.0,
        list: of.1,
        key: of.2,
        label: of.3,
        gauge: Gauge {
            name,
            help,
            unit,
            counter,
        },
        field,
    }
}

const BYTES: Option<&str> = Some("bytes");

const SCALARS: &[Scalar] = &[
    scalar(
        "cpu",
        "hostpulse_host_cpu_usage",
        "CPU busy, all cores, 0 to 1.",
        Some("ratios"),
        "/payload/total_pct",
        0.01,
    ),
    scalar(
        "memory",
        "hostpulse_host_memory_total",
        "Installed memory.",
        BYTES,
        "/payload/total_bytes",
        1.0,
    ),
    scalar(
        "memory",
        "hostpulse_host_memory_used",
        "Memory in use.",
        BYTES,
        "/payload/used_bytes",
        1.0,
    ),
    scalar(
        "memory",
        "hostpulse_host_memory_available",
        "Memory available without swapping.",
        BYTES,
        "/payload/available_bytes",
        1.0,
    ),
    scalar(
        "memory",
        "hostpulse_host_swap_used",
        "Swap in use.",
        BYTES,
        "/payload/swap_used_bytes",
        1.0,
    ),
    scalar(
        "load",
        "hostpulse_host_load1",
        "Load average over 1 minute.",
        None,
        "/payload/one",
        1.0,
    ),
    scalar(
        "load",
        "hostpulse_host_load5",
        "Load average over 5 minutes.",
        None,
        "/payload/five",
        1.0,
    ),
    scalar(
        "load",
        "hostpulse_host_load15",
        "Load average over 15 minutes.",
        None,
        "/payload/fifteen",
        1.0,
    ),
    scalar(
        "processes",
        "hostpulse_host_processes",
        "Processes on the host.",
        None,
        "/payload/count",
        1.0,
    ),
    scalar(
        "system",
        "hostpulse_host_uptime",
        "Time since boot.",
        Some("seconds"),
        "/payload/uptime_secs",
        1.0,
    ),
    scalar(
        "system",
        "hostpulse_host_boot_time",
        "Boot time, Unix time.",
        Some("seconds"),
        "/payload/boot_time",
        1.0,
    ),
    scalar(
        "system",
        "hostpulse_host_cpu_logical_cores",
        "Logical cores (hardware threads).",
        None,
        "/payload/logical_cores",
        1.0,
    ),
    scalar(
        "system",
        "hostpulse_host_cpu_physical_cores",
        "Physical cores.",
        None,
        "/payload/physical_cores",
        1.0,
    ),
    scalar(
        "system",
        "hostpulse_host_cpu_frequency",
        "Mean current CPU frequency over the logical cores.",
        Some("hertz"),
        "/payload/cpu_frequency_mhz",
        1e6,
    ),
];

const LISTED: &[Listed] = &[
    listed(
        INTERFACES,
        "hostpulse_host_network_receive",
        "Bytes received by the interface.",
        BYTES,
        true,
        "rx_bytes_total",
    ),
    listed(
        INTERFACES,
        "hostpulse_host_network_transmit",
        "Bytes sent by the interface.",
        BYTES,
        true,
        "tx_bytes_total",
    ),
    listed(
        INTERFACES,
        "hostpulse_host_network_receive_packets",
        "Packets received by the interface.",
        None,
        true,
        "rx_packets_total",
    ),
    listed(
        INTERFACES,
        "hostpulse_host_network_transmit_packets",
        "Packets sent by the interface.",
        None,
        true,
        "tx_packets_total",
    ),
    listed(
        INTERFACES,
        "hostpulse_host_network_receive_errors",
        "Receive errors on the interface.",
        None,
        true,
        "rx_errors_total",
    ),
    listed(
        INTERFACES,
        "hostpulse_host_network_transmit_errors",
        "Send errors on the interface.",
        None,
        true,
        "tx_errors_total",
    ),
    listed(
        DEVICES,
        "hostpulse_host_disk_read",
        "Bytes read from the device.",
        BYTES,
        true,
        "read_bytes_total",
    ),
    listed(
        DEVICES,
        "hostpulse_host_disk_written",
        "Bytes written to the device.",
        BYTES,
        true,
        "written_bytes_total",
    ),
    listed(
        MOUNTS,
        "hostpulse_host_filesystem_size",
        "Size of the filesystem.",
        BYTES,
        false,
        "total_bytes",
    ),
    listed(
        MOUNTS,
        "hostpulse_host_filesystem_used",
        "Space in use (size minus free, so blocks reserved for root count as used).",
        BYTES,
        false,
        "used_bytes",
    ),
    listed(
        MOUNTS,
        "hostpulse_host_filesystem_free",
        "Space available to unprivileged users.",
        BYTES,
        false,
        "free_bytes",
    ),
    listed(
        SENSORS,
        "hostpulse_host_temperature",
        "Current reading of the sensor.",
        Some("celsius"),
        false,
        "celsius",
    ),
];

/// Every family, in a fixed order; [`read`] names families by their
/// position in it.
pub fn gauges() -> impl Iterator<Item = &'static Gauge> {
    SCALARS
        .iter()
        .map(|s| &s.gauge)
        .chain(LISTED.iter().map(|l| &l.gauge))
}

/// The host and metric of a `host.<host>.<metric>` topic.
pub fn host_and_metric(topic: &str) -> Option<(&str, &str)> {
    let mut parts = topic.splitn(3, '.');
    match (parts.next()?, parts.next()?, parts.next()?) {
        ("host", host, metric) => Some((host, metric)),
        _ => None,
    }
}

/// Calls `emit(family, entry label, value)` for every series value in the
/// parsed update `update` of metric `metric`: `family` is the position in
/// [`gauges`], and the entry label, for list sections, the label name and
/// the entry's name (`("interface", "eth0")`). Fields missing or not
/// numeric are skipped.
pub fn read<'v>(
    metric: &str,
    update: &'v Value,
    mut emit: impl FnMut(usize, Option<(&'static str, &'v str)>, f64),
) {
    for (i, s) in SCALARS.iter().enumerate() {
        if s.metric != metric {
            continue;
        }
        if let Some(v) = update.pointer(s.pointer).and_then(Value::as_f64) {
            emit(i, None, v * s.scale);
        }
    }
    for (i, l) in LISTED.iter().enumerate() {
        if l.metric != metric {
            continue;
        }
        let Some(entries) = update.pointer(l.list).and_then(Value::as_array) else {
            continue;
        };
        for e in entries {
            let (Some(key), Some(value)) = (
                e.get(l.key).and_then(Value::as_str),
                e.get(l.field).and_then(Value::as_f64),
            ) else {
                continue;
            };
            emit(SCALARS.len() + i, Some((l.label, key)), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_carry_unit_and_total() {
        let names: Vec<String> = gauges().map(Gauge::series_name).collect();
        for n in [
            "hostpulse_host_cpu_usage_ratios",
            "hostpulse_host_memory_used_bytes",
            "hostpulse_host_load1",
            "hostpulse_host_network_receive_bytes_total",
            "hostpulse_host_network_receive_packets_total",
            "hostpulse_host_filesystem_free_bytes",
            "hostpulse_host_temperature_celsius",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert_eq!(host_and_metric("host.web-01.cpu"), Some(("web-01", "cpu")));
        assert_eq!(host_and_metric("hosts"), None);
    }

    #[test]
    fn values_are_scaled_and_list_entries_labelled() {
        let cpu = serde_json::json!({"payload": {"total_pct": 50.0}});
        let mut got = Vec::new();
        read("cpu", &cpu, |i, label, v| got.push((i, label, v)));
        assert_eq!(got, [(0, None, 0.5)]);
        let net = serde_json::json!({"payload": {"interfaces": [
            {"name": "eth0", "rx_bytes_total": 10, "tx_bytes_total": 20},
            {"rx_bytes_total": 1}
        ]}});
        let mut got = Vec::new();
        read("network", &net, |i, label, v| {
            got.push((gauges().nth(i).unwrap().series_name(), label, v))
        });
        assert_eq!(
            got,
            [
                (
                    "hostpulse_host_network_receive_bytes_total".to_string(),
                    Some(("interface", "eth0")),
                    10.0
                ),
                (
                    "hostpulse_host_network_transmit_bytes_total".to_string(),
                    Some(("interface", "eth0")),
                    20.0
                ),
            ]
        );
    }
}
