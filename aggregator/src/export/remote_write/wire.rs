//! What goes on the wire: the remote-write 1.0 messages (`WriteRequest`,
//! `TimeSeries`, `Label`, `Sample` of Prometheus' `prompb`, the fields a
//! sender needs), derived with prost, and turning host updates into
//! samples and samples into one snappy-compressed request.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use crate::host_series;
use crate::update::Update;

/// `prometheus.WriteRequest` (metadata, field 3, is not sent).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WriteRequest {
    /// The series, each with its samples.
    #[prost(message, repeated, tag = "1")]
    pub(super) timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TimeSeries {
    /// Sorted by name, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub(super) labels: Vec<Label>,
    /// In timestamp order.
    #[prost(message, repeated, tag = "2")]
    pub(super) samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub(super) struct Label {
    /// The label name.
    #[prost(string, tag = "1")]
    pub(super) name: String,
    /// Its value.
    #[prost(string, tag = "2")]
    pub(super) value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub(super) value: f64,
    /// Unix time in ms.
    #[prost(int64, tag = "2")]
    pub(super) timestamp: i64,
}

/// One sample of one series, waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point {
    /// The series' labels, sorted by name.
    pub(super) labels: Vec<Label>,
    /// Unix time in ms: when the host took the sample.
    pub(super) timestamp: i64,
    /// The value, scaled as `/metrics` shows it.
    pub(super) value: f64,
}

/// Turns host updates into points: the series names of [`host_series`]
/// computed once, and the external labels.
pub(super) struct Points {
    names: Vec<String>,
    external: Vec<Label>,
}

impl Points {
    /// With `external` labels (name, value) added to every series.
    pub(super) fn new(external: &[(String, String)]) -> Self {
        Self {
            names: host_series::gauges()
                .map(host_series::Gauge::series_name)
                .collect(),
            external: external
                .iter()
                .map(|(name, value)| Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }

    /// Appends the points of `update` to `out`; returns how many. An update
    /// that is not a host metric, or has no sample time, gives none.
    pub(super) fn of(&self, update: &Update, out: &mut impl Extend<Point>) -> usize {
        let Some((host, metric)) = host_series::host_and_metric(&update.topic) else {
            return 0;
        };
        let Some(timestamp) = update.taken_ms() else {
            return 0;
        };
        let Ok(parsed) = serde_json::from_str::<Value>(update.json.as_str()) else {
            return 0;
        };
        let mut n = 0;
        host_series::read(metric, &parsed, |i, entry, value| {
            let label = |name: &str, value: &str| Label {
                name: name.into(),
                value: value.into(),
            };
            let mut labels = Vec::with_capacity(3 + self.external.len());
            labels.push(label("__name__", &self.names[i]));
            labels.push(label("host", host));
            if let Some((name, key)) = entry {
                labels.push(label(name, key));
            }
            labels.extend(self.external.iter().cloned());
            labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            out.extend([Point {
                labels,
                timestamp,
                value,
            }]);
            n += 1;
        });
        n
    }
}

/// The request body for `points`: series grouped, each series' samples in
/// timestamp order (a later point at the same time replaces an earlier
/// one), protobuf-encoded, then snappy-compressed (block format).
pub(super) fn encode(points: impl IntoIterator<Item = Point>) -> Bytes {
    let mut series: HashMap<Vec<Label>, Vec<Sample>> = HashMap::new();
    for p in points {
        series.entry(p.labels).or_default().push(Sample {
            value: p.value,
            timestamp: p.timestamp,
        });
    }
    let mut timeseries: Vec<TimeSeries> = series
        .into_iter()
        .map(|(labels, mut samples)| {
            // Stable: of two at one time, the later arrival stays.
            samples.sort_by_key(|s| s.timestamp);
            samples.reverse();
            samples.dedup_by_key(|s| s.timestamp);
            samples.reverse();
            TimeSeries { labels, samples }
        })
        .collect();
    // Not required; it makes a request reproducible.
    timeseries.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    let body = prost::Message::encode_to_vec(&WriteRequest { timeseries });
    snap::raw::Encoder::new()
        .compress_vec(&body)
        .expect("snappy takes any input below 4 GiB")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Payload;
    use hostpulse_proto::{Cpu, Interface, Network};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn decode(body: &[u8]) -> WriteRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        prost::Message::decode(raw.as_slice()).unwrap()
    }

    fn names(labels: &[Label]) -> Vec<(&str, &str)> {
        labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn updates_become_labelled_points_at_their_sample_time() {
        let points = Points::new(&[("region".into(), "eu".into())]);
        let cpu = Update::new(
            "host.web-01.cpu".into(),
            1,
            at(1_700_000_000_123),
            at(1_700_000_001_000),
            Payload::Cpu(Cpu {
                total_pct: 50.0,
                per_core_pct: vec![50.0],
            }),
        );
        let net = Update::new(
            "host.web-01.network".into(),
            1,
            at(1_700_000_000_500),
            at(1_700_000_001_000),
            Payload::Network(Network {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    rx_bytes_total: 1000,
                    ..Interface::default()
                }],
            }),
        );
        let mut out = Vec::new();
        assert_eq!(points.of(&cpu, &mut out), 1);
        assert_eq!(points.of(&net, &mut out), 6, "six counters per interface");
        assert_eq!(
            names(&out[0].labels),
            [
                ("__name__", "hostpulse_host_cpu_usage_ratios"),
                ("host", "web-01"),
                ("region", "eu")
            ]
        );
        assert_eq!((out[0].timestamp, out[0].value), (1_700_000_000_123, 0.5));
        assert_eq!(
            names(&out[1].labels),
            [
                ("__name__", "hostpulse_host_network_receive_bytes_total"),
                ("host", "web-01"),
                ("interface", "eth0"),
                ("region", "eu")
            ]
        );
        assert_eq!(
            (out[1].timestamp, out[1].value),
            (1_700_000_000_500, 1000.0)
        );
        let hosts = Update::new("hosts".into(), 1, at(1), at(1), Payload::Other(Value::Null));
        assert_eq!(points.of(&hosts, &mut out), 0);
    }

    #[test]
    fn a_request_groups_series_with_samples_in_time_order() {
        let labels = |host: &str| {
            vec![
                Label {
                    name: "__name__".into(),
                    value: "m".into(),
                },
                Label {
                    name: "host".into(),
                    value: host.into(),
                },
            ]
        };
        let point = |host: &str, timestamp, value| Point {
            labels: labels(host),
            timestamp,
            value,
        };
        let body = encode([
            point("b", 20, 2.0),
            point("a", 30, 3.0),
            point("b", 10, 1.0),
            point("b", 20, 2.5),
        ]);
        let req = decode(&body);
        assert_eq!(req.timeseries.len(), 2);
        assert_eq!(req.timeseries[0].labels, labels("a"));
        assert_eq!(req.timeseries[1].labels, labels("b"));
        let b: Vec<(i64, f64)> = req.timeseries[1]
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value))
            .collect();
        assert_eq!(
            b,
            [(10, 1.0), (20, 2.5)],
            "sorted, the later of a time kept"
        );
    }
}
