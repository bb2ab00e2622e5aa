//! Host metric families for `/metrics` (behind `[metrics] host_gauges`):
//! the latest update of each `host.<host>.<metric>` topic, read from the
//! hub at scrape time and turned into series by the table in
//! [`crate::host_series`] (shared with remote-write export), plus
//! `hostpulse_host_up` from the registry.

use std::sync::Arc;

use serde_json::Value;

use super::Family;
use crate::host_series;
use crate::ingest::registry::HostView;
use crate::update::Update;

/// Every host family from the latest `host.*` updates, plus `hostpulse_host_up`.
pub(super) fn families(latest: &[Arc<Update>], hosts: &[HostView]) -> Vec<Family> {
    let mut out: Vec<Family> = host_series::gauges()
        .map(|g| Family {
            name: g.name,
            help: g.help,
            unit: g.unit,
            counter: g.counter,
            series: Vec::new(),
        })
        .collect();
    for u in latest {
        let Some((host, metric)) = host_series::host_and_metric(&u.topic) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(u.json.as_str()) else {
            continue;
        };
        host_series::read(metric, &v, |i, entry, value| {
            let mut labels = vec![("host", host.to_string())];
            if let Some((label, key)) = entry {
                labels.push((label, key.to_string()));
            }
            out[i].series.push((labels, value));
        });
    }
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
