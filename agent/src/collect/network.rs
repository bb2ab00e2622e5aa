//! Network interfaces: bytes, packets and errors per second in and out, and
//! the counters they come from.
//!
//! Rates are computed from the cumulative counters over the measured time
//! between two readings ([`super::rate`]); an interface seen for the first
//! time is listed from its second reading on.
//!
//! Where `net/dev` under `collect.proc_root` exists (Linux) the counters are
//! read from it: one file for every interface. sysinfo's `Networks` reads nine sysfs files per
//! interface and asks the kernel for every address on each refresh, which
//! measured about 120 µs per interface per sample here (0.5 ms a second for
//! four interfaces, and tens of milliseconds on a host with hundreds of
//! container interfaces), against about 20 µs for the whole file. sysinfo
//! stays the source elsewhere.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES};
use hostpulse_proto::{Interface, Network};
use sysinfo::Networks;

use super::rate::Rates;
use crate::config::DEFAULT_PROC_ROOT;

/// Counters of one interface, in the order of [`Interface`]'s `*_total`
/// fields: rx bytes, tx bytes, rx packets, tx packets, rx errors, tx errors.
type Counters = [u64; 6];

/// Where the counters come from.
enum Source {
    /// Linux: `<proc_root>/net/dev`.
    ProcNetDev(PathBuf),
    /// Elsewhere: sysinfo.
    Sysinfo(Networks),
}

/// The interface counters' source and the previous counters.
pub(super) struct NetworkCollector {
    source: Source,
    rates: Rates<6>,
}

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
    /// Picks the source and takes the first reading (the baseline):
    /// `net/dev` under `proc_root` where it can be read; sysinfo where it
    /// cannot and `proc_root` is the default (a platform without procfs).
    /// A `proc_root` given explicitly is never silently replaced by the
    /// agent's own view.
    pub(super) fn new(proc_root: &Path) -> Result<Self, String> {
        let path = proc_root.join("net/dev");
        let source = match std::fs::read_to_string(&path) {
            Ok(_) => Source::ProcNetDev(path),
            Err(e) if proc_root != Path::new(DEFAULT_PROC_ROOT) => {
                return Err(format!("cannot read {}: {e}", path.display()));
            }
            Err(_) => Source::Sysinfo(Networks::new().map_err(|e| e.to_string())?),
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
            Source::ProcNetDev(path) => std::fs::read_to_string(path)
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
        let proc_net_dev = Path::new(DEFAULT_PROC_ROOT).join("net/dev");
        if cfg!(target_os = "linux") {
            assert_eq!(names(Source::ProcNetDev(proc_net_dev)), sysinfo);
        }
        assert!(
            sysinfo.iter().any(|n| n == "lo" || n == "lo0"),
            "{sysinfo:?}"
        );
    }

    #[test]
    fn an_explicit_proc_root_is_read_or_refused_never_replaced() {
        let dir = std::env::temp_dir().join(format!("hp-netdev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net")).unwrap();
        let e = NetworkCollector::new(&dir.join("missing")).err().unwrap();
        assert!(e.contains("missing/net/dev"), "{e}");
        std::fs::write(dir.join("net/dev"), SAMPLE).unwrap();
        let mut c = NetworkCollector::new(&dir).unwrap();
        let bumped = SAMPLE.replace("616978203", "616979203");
        std::fs::write(dir.join("net/dev"), bumped).unwrap();
        let n = c.collect();
        let names: Vec<&str> = n.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "lo"]);
        assert_eq!(n.interfaces[0].rx_bytes_total, 616979203);
        assert!(n.interfaces[0].rx_bytes_per_sec > 0.0);
        assert_eq!(n.interfaces[1].rx_bytes_per_sec, 0.0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
