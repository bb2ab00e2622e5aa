//! Host metric families for `/metrics` (behind `[metrics] host_gauges`):
//! the latest update of each `host.<host>.<metric>` topic, read from the
//! hub at scrape time and turned into series labelled by host, and for
//! list sections also by interface, device, mount or sensor.
//!
//! Names follow Prometheus conventions: base units (bytes, seconds, hertz,
//! celsius, ratios) as a suffix, and `_total` only for counters, which is
//! what the agent's cumulative network and disk counters are exported as
//! (take `rate()` of them; the per-second figures stay on the topics).

use std::sync::Arc;

use serde_json::Value;

use super::Family;
use crate::ingest::registry::HostView;
use crate::update::Update;

/// A value read from a metric's payload: one series per host.
struct Scalar {
    metric: &'static str,
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
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
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    counter: bool,
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
        name,
        help,
        unit,
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
        name,
        help,
        unit,
        counter,
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

/// Every host family from the latest `host.*` updates, plus `hostpulse_host_up`.
pub(super) fn families(latest: &[Arc<Update>], hosts: &[HostView]) -> Vec<Family> {
    // (host, metric, parsed update)
    let parsed: Vec<(String, &str, Value)> = latest
        .iter()
        .filter_map(|u| {
            let mut parts = u.topic.splitn(3, '.');
            let (_, host, metric) = (parts.next()?, parts.next()?, parts.next()?);
            let v = serde_json::from_str(u.json.as_str()).ok()?;
            Some((host.to_string(), metric, v))
        })
        .collect();
    let of = |metric: &'static str| {
        parsed
            .iter()
            .filter(move |(_, m, _)| *m == metric)
            .map(|(h, _, v)| (h, v))
    };
    let mut out: Vec<Family> = SCALARS
        .iter()
        .map(|f| Family {
            name: f.name,
            help: f.help,
            unit: f.unit,
            counter: false,
            series: of(f.metric)
                .filter_map(|(h, v)| {
                    let value = v.pointer(f.pointer)?.as_f64()? * f.scale;
                    Some((vec![("host", h.clone())], value))
                })
                .collect(),
        })
        .collect();
    out.extend(LISTED.iter().map(|f| {
        Family {
            name: f.name,
            help: f.help,
            unit: f.unit,
            counter: f.counter,
            series: of(f.metric)
                .filter_map(|(h, v)| Some((h, v.pointer(f.list)?.as_array()?)))
                .flat_map(|(h, entries)| {
                    entries.iter().filter_map(move |e| {
                        let key = e.get(f.key)?.as_str()?.to_string();
                        let value = e.get(f.field)?.as_f64()?;
                        Some((vec![("host", h.clone()), (f.label, key)], value))
                    })
                })
                .collect(),
        }
    }));
    out.push(Family {
        name: "hostpulse_host_up",
        help: "1 while the host is announced online.",
        unit: None,
        counter: false,
        series: hosts
            .iter()
            .map(|h| {
                (
                    vec![("host", h.host.clone())],
                    if h.online { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Payload;
    use hostpulse_proto::{Filesystem, Filesystems, Interface, Network};
    use std::time::SystemTime;

    fn update(topic: &str, payload: Payload) -> Arc<Update> {
        let now = SystemTime::now();
        Arc::new(Update::new(topic.into(), 1, now, now, payload))
    }

    #[test]
    fn list_sections_become_series_labelled_by_entry() {
        let latest = [
            update(
                "host.web-01.network",
                Payload::Network(Network {
                    interfaces: vec![
                        Interface {
                            name: "eth0".into(),
                            rx_bytes_total: 1000,
                            ..Interface::default()
                        },
                        Interface {
                            name: "lo".into(),
                            rx_bytes_total: 7,
                            ..Interface::default()
                        },
                    ],
                }),
            ),
            update(
                "host.web-01.filesystems",
                Payload::Filesystems(Filesystems {
                    mounts: vec![Filesystem {
                        mount: "/mnt/a \"b\"".into(),
                        device: "/dev/vdb".into(),
                        fs_type: "xfs".into(),
                        total_bytes: 100,
                        used_bytes: 40,
                        free_bytes: 60,
                    }],
                }),
            ),
        ];
        let out = families(&latest, &[]);
        let find = |name: &str| out.iter().find(|f| f.name == name).unwrap();
        let rx = find("hostpulse_host_network_receive");
        assert!(rx.counter && rx.unit == Some("bytes"));
        assert_eq!(
            rx.series,
            [
                (
                    vec![("host", "web-01".into()), ("interface", "eth0".into())],
                    1000.0
                ),
                (
                    vec![("host", "web-01".into()), ("interface", "lo".into())],
                    7.0
                ),
            ]
        );
        let used = find("hostpulse_host_filesystem_used");
        assert!(!used.counter);
        assert_eq!(
            used.series,
            [(
                vec![("host", "web-01".into()), ("mount", "/mnt/a \"b\"".into())],
                40.0
            )]
        );
        // Families of metrics not received stay empty (and are not written).
        assert!(find("hostpulse_host_temperature").series.is_empty());
        assert!(find("hostpulse_host_uptime").series.is_empty());
    }
}
