//! Temperature sensors (hwmon, or thermal zones where there is no hwmon),
//! where the host has any. Collected every
//! `collect.temperatures_interval_secs`.
//!
//! A host without readable sensors (most virtual machines) sends no
//! `temperatures` section at all rather than an empty list, the same way a
//! platform without a load average sends no `load`. Readings outside
//! [`TEMPERATURE_RANGE_C`] come from broken or unplugged sensors and are
//! left out (thresholds outside it are dropped).

use std::collections::HashSet;

use hostpulse_proto::payload::signals::{MAX_ENTRIES, MAX_NAME_BYTES, TEMPERATURE_RANGE_C};
use hostpulse_proto::{Sensor, Temperatures};
use sysinfo::Components;

/// Re-scans the sensors and reads them; `None` when there is none to read.
pub(super) fn collect(components: &mut Components) -> Option<Temperatures> {
    components.refresh(true);
    let in_range = |v: Option<f32>| v.filter(|v| TEMPERATURE_RANGE_C.contains(v));
    let mut taken: HashSet<String> = HashSet::new();
    let mut sensors: Vec<Sensor> = components
        .iter()
        .filter_map(|c| {
            let celsius = in_range(c.temperature())?;
            let mut label: String = c.label().trim().chars().take(MAX_NAME_BYTES / 4).collect();
            if label.is_empty() {
                label = "sensor".into();
            }
            // Labels name series (Prometheus, dashboards): keep them unique.
            let label = unique(label, &mut taken);
            Some(Sensor {
                label,
                celsius,
                max_celsius: in_range(c.max()),
                critical_celsius: in_range(c.critical()),
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
}
