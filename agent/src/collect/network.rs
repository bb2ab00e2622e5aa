//! Network interfaces: bytes, packets and errors per second in and out, and
//! the counters they come from.
//!
//! Rates are computed from the cumulative counters over the measured time
//! between two readings ([`super::rate`]); an interface seen for the first
//! time is listed from its second reading on.
//!
//! Where `/proc/net/dev` exists (Linux) the counters are read from it: one
//! file for every interface. sysinfo's `Networks` reads nine sysfs files per
//! interface and asks the kernel for every address on each refresh, which
//! measured about 120 µs per interface per sample here (0.5 ms a second for
//! four interfaces, and tens of milliseconds on a host with hundreds of
//! container interfaces), against about 20 µs for the whole file. sysinfo
//! stays the source elsewhere.

use std::time::Instant;

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES};
use hostpulse_proto::{Interface, Network};
use sysinfo::Networks;

use super::rate::Rates;

/// Counters of one interface, in the order of [`Interface`]'s `*_total`
/// fields: rx bytes, tx bytes, rx packets, tx packets, rx errors, tx errors.
type Counters = [u64; 6];

/// Where the counters come from.
enum Source {
    /// Linux: `/proc/net/dev`.
    ProcNetDev,
    /// Elsewhere: sysinfo.
    Sysinfo(Networks),
}

/// The interface counters' source and the previous counters.
pub(super) struct NetworkCollector {
    source: Source,
    rates: Rates<6>,
}

const PROC_NET_DEV: &str = "/proc/net/dev";

/// Every interface in `/proc/net/dev` text: name and counters.
fn parse_proc_net_dev(text: &str) -> Vec<(String, Counters)> {
    text.lines()
        .skip(2) // the two header lines
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            let v: Vec<u64> = fields
                .split_ascii_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast;
            // transmit: bytes packets errs ...
            (v.len() >= 11).then(|| {
                (
                    name.trim().to_owned(),
                    [v[0], v[8], v[1], v[9], v[2], v[10]],
                )
            })
        })
        .collect()
}

impl NetworkCollector {
    /// Picks the source and takes the first reading (the baseline).
    pub(super) fn new() -> Result<Self, sysinfo::Error> {
        let source = if std::fs::read_to_string(PROC_NET_DEV).is_ok() {
            Source::ProcNetDev
        } else {
            Source::Sysinfo(Networks::new()?)
        };
        Ok(Self::with_source(source))
    }

    fn with_source(source: Source) -> Self {
        let mut c = Self {
            source,
            rates: Rates::default(),
        };
        c.collect();
        c
    }

    /// Every interface's counters now.
    fn read(&mut self) -> Vec<(String, Counters)> {
        match &mut self.source {
            Source::ProcNetDev => std::fs::read_to_string(PROC_NET_DEV)
                .map(|text| parse_proc_net_dev(&text))
                .unwrap_or_default(),
            Source::Sysinfo(networks) => {
                networks.refresh(true);
                networks
                    .iter()
                    .filter_map(|(name, d)| {
                        let counters = [
                            d.total_received(),
                            d.total_transmitted(),
                            d.total_packets_received(),
                            d.total_packets_transmitted(),
                            d.total_errors_on_received(),
                            d.total_errors_on_transmitted(),
                        ];
                        Some((name.to_str()?.to_owned(), counters))
                    })
                    .collect()
            }
        }
    }

    /// Reads the counters and returns the rates since the previous call,
    /// interfaces sorted by name.
    pub(super) fn collect(&mut self) -> Network {
        let mut listed = self.read();
        let mut reading = self.rates.begin(Instant::now());
        listed.retain(|(name, _)| !name.is_empty() && name.len() <= MAX_NAME_BYTES);
        listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        listed.truncate(MAX_ENTRIES);
        let mut interfaces = Vec::with_capacity(listed.len());
        for (name, totals) in listed {
            let Some([rx_b, tx_b, rx_p, tx_p, rx_e, tx_e]) =
                self.rates.rate(&mut reading, &name, totals)
            else {
                continue;
            };
            interfaces.push(Interface {
                name,
                rx_bytes_per_sec: rx_b,
                tx_bytes_per_sec: tx_b,
                rx_packets_per_sec: rx_p,
                tx_packets_per_sec: tx_p,
                rx_errors_per_sec: rx_e,
                tx_errors_per_sec: tx_e,
                rx_bytes_total: totals[0],
                tx_bytes_total: totals[1],
                rx_packets_total: totals[2],
                tx_packets_total: totals[3],
                rx_errors_total: totals[4],
                tx_errors_total: totals[5],
            });
        }
        self.rates.finish(reading);
        Network { interfaces }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 43010847807 80381493    0    0    0     0          0         0 43010847807 80381493    0    0    0     0       0          0
  eth0: 616978203   26226    3    0    0     0          0         0  1531530   15767    7    0    0     0       0          0
";

    #[test]
    fn proc_net_dev_columns_are_read_in_order() {
        let parsed = parse_proc_net_dev(SAMPLE);
        assert_eq!(
            parsed,
            [
                (
                    "lo".to_string(),
                    [43010847807, 43010847807, 80381493, 80381493, 0, 0]
                ),
                ("eth0".to_string(), [616978203, 1531530, 26226, 15767, 3, 7]),
            ]
        );
        assert!(parse_proc_net_dev("garbage\n\n  x: 1 2 three\n").is_empty());
    }

    #[test]
    fn both_sources_see_the_same_interfaces() {
        let names = |source| {
            let mut c = NetworkCollector::with_source(source);
            let mut n: Vec<String> = c.read().into_iter().map(|(name, _)| name).collect();
            n.sort();
            n
        };
        let sysinfo = names(Source::Sysinfo(Networks::new().unwrap()));
        if std::path::Path::new(PROC_NET_DEV).exists() {
            assert_eq!(names(Source::ProcNetDev), sysinfo);
        }
        assert!(!sysinfo.is_empty());
    }
}
