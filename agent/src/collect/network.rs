//! Network interfaces: bytes, packets and errors per second in and out, and
//! the counters they come from.
//!
//! Rates are computed from sysinfo's cumulative counters over the measured
//! time between two refreshes ([`super::rate`]); an interface seen for the
//! first time is listed from its second reading on.

use std::time::Instant;

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES};
use hostpulse_proto::{Interface, Network};
use sysinfo::Networks;

use super::rate::Rates;

/// The interface list and the previous counters.
pub(super) struct NetworkCollector {
    networks: Networks,
    rates: Rates<6>,
}

impl NetworkCollector {
    /// Lists the interfaces and takes the first reading (the baseline).
    pub(super) fn new() -> Result<Self, sysinfo::Error> {
        let mut c = Self {
            networks: Networks::new()?,
            rates: Rates::default(),
        };
        c.collect();
        Ok(c)
    }

    /// Refreshes the counters (and the interface list) and returns the rates
    /// since the previous call, interfaces sorted by name.
    pub(super) fn collect(&mut self) -> Network {
        self.networks.refresh(true);
        let mut reading = self.rates.begin(Instant::now());
        let mut listed: Vec<(&str, &sysinfo::NetworkData)> = self
            .networks
            .iter()
            .filter_map(|(name, data)| Some((name.to_str()?, data)))
            .filter(|(name, _)| !name.is_empty() && name.len() <= MAX_NAME_BYTES)
            .collect();
        listed.sort_unstable_by_key(|(name, _)| *name);
        listed.truncate(MAX_ENTRIES);
        let mut interfaces = Vec::with_capacity(listed.len());
        for (name, d) in listed {
            let totals = [
                d.total_received(),
                d.total_transmitted(),
                d.total_packets_received(),
                d.total_packets_transmitted(),
                d.total_errors_on_received(),
                d.total_errors_on_transmitted(),
            ];
            let Some([rx_b, tx_b, rx_p, tx_p, rx_e, tx_e]) =
                self.rates.rate(&mut reading, name, totals)
            else {
                continue;
            };
            interfaces.push(Interface {
                name: name.to_owned(),
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
