//! Which series a sample holds and how they are named.
//!
//! Every numeric field of every host family is a series named
//! `<family>.<field>`, e.g. `cpu.total_pct` or `memory.used_bytes`. Fields of
//! list entries carry the entry as one label, Prometheus style:
//! `cpu.per_core_pct{core="0"}`, `network.rx_bytes_per_sec{interface="eth0"}`,
//! `disk.read_bytes_per_sec{device="vda"}`, `filesystems.used_bytes{mount="/"}`,
//! `temperatures.celsius{sensor="coretemp Package id 0"}`,
//! `system.per_core_frequency_mhz{core="3"}`. A label value escapes `\` and
//! `"` with a backslash. The process table is not a series (its names
//! change); `processes.count` and the `processes.others.*` rollup are.
//! [`FIELDS`] lists every field name and its label key.

use hostpulse_proto::Sample;

/// Every field the store keeps: (name, label key for list entries).
pub const FIELDS: &[(&str, Option<&str>)] = &[
    ("cpu.total_pct", None),
    ("cpu.per_core_pct", Some("core")),
    ("memory.total_bytes", None),
    ("memory.used_bytes", None),
    ("memory.available_bytes", None),
    ("memory.swap_total_bytes", None),
    ("memory.swap_used_bytes", None),
    ("load.one", None),
    ("load.five", None),
    ("load.fifteen", None),
    ("processes.count", None),
    ("processes.others.count", None),
    ("processes.others.cpu_pct", None),
    ("processes.others.memory_bytes", None),
    ("network.rx_bytes_per_sec", Some("interface")),
    ("network.tx_bytes_per_sec", Some("interface")),
    ("network.rx_packets_per_sec", Some("interface")),
    ("network.tx_packets_per_sec", Some("interface")),
    ("network.rx_errors_per_sec", Some("interface")),
    ("network.tx_errors_per_sec", Some("interface")),
    ("network.rx_bytes_total", Some("interface")),
    ("network.tx_bytes_total", Some("interface")),
    ("network.rx_packets_total", Some("interface")),
    ("network.tx_packets_total", Some("interface")),
    ("network.rx_errors_total", Some("interface")),
    ("network.tx_errors_total", Some("interface")),
    ("disk.read_bytes_per_sec", Some("device")),
    ("disk.write_bytes_per_sec", Some("device")),
    ("disk.read_bytes_total", Some("device")),
    ("disk.written_bytes_total", Some("device")),
    ("filesystems.total_bytes", Some("mount")),
    ("filesystems.used_bytes", Some("mount")),
    ("filesystems.free_bytes", Some("mount")),
    ("system.uptime_secs", None),
    ("system.boot_time", None),
    ("system.logical_cores", None),
    ("system.physical_cores", None),
    ("system.cpu_frequency_mhz", None),
    ("system.per_core_frequency_mhz", Some("core")),
    ("temperatures.celsius", Some("sensor")),
    ("temperatures.max_celsius", Some("sensor")),
    ("temperatures.critical_celsius", Some("sensor")),
];

/// `name{key="value"}` with the value escaped.
pub fn labelled(name: &str, key: &str, value: &str) -> String {
    let mut s = String::with_capacity(name.len() + key.len() + value.len() + 5);
    s.push_str(name);
    s.push('{');
    s.push_str(key);
    s.push_str("=\"");
    for c in value.chars() {
        if c == '\\' || c == '"' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push_str("\"}");
    s
}

/// Why a field asked for is not one the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Not a field of any family.
    #[error("unknown field {0:?} (fields are listed in README, \"History\")")]
    Unknown(String),
    /// A list entry's field without its label, or with another label.
    #[error("field {field:?} needs the label {key:?}, e.g. {example}")]
    Label {
        /// What was asked.
        field: String,
        /// The label it takes.
        key: &'static str,
        /// An example.
        example: String,
    },
    /// A label on a field that takes none.
    #[error("field {0:?} takes no label")]
    NoLabel(String),
}

/// Checks a field asked for and returns its canonical series name.
pub fn parse_field(field: &str) -> Result<String, FieldError> {
    let field = field.trim();
    let (name, label) = match field.split_once('{') {
        Some((n, rest)) => (n, Some(rest)),
        None => (field, None),
    };
    let Some((_, key)) = FIELDS.iter().find(|(f, _)| *f == name) else {
        return Err(FieldError::Unknown(field.into()));
    };
    match (key, label) {
        (None, None) => Ok(name.into()),
        (None, Some(_)) => Err(FieldError::NoLabel(field.into())),
        (Some(key), label) => {
            let bad = || FieldError::Label {
                field: field.into(),
                key,
                example: labelled(name, key, "..."),
            };
            let inner = label
                .and_then(|l| l.strip_suffix('}'))
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix("=\""))
                .and_then(|l| l.strip_suffix('"'))
                .ok_or_else(bad)?;
            // Unescape, then escape again: one canonical spelling.
            let mut value = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().ok_or_else(bad)?),
                    '"' => return Err(bad()),
                    c => value.push(c),
                }
            }
            Ok(labelled(name, key, &value))
        }
    }
}

/// Calls `out(series name, value)` for every numeric field of `sample`.
pub fn for_each_value(sample: &Sample, mut out: impl FnMut(&str, f64)) {
    for_each_field(sample, |name, label, v| match label {
        Some((key, value)) => out(&labelled(name, key, value), v),
        None => out(name, v),
    });
}

/// `i` in decimal, written into `buf` (a core's label without allocating).
fn decimal(i: usize, buf: &mut [u8; 20]) -> &str {
    let (mut n, mut at) = (i, buf.len());
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// Calls `out(field name, label, value)` for every numeric field of
/// `sample`: the label (key, entry) of a list entry's field kept apart, not
/// formatted into the series name (alert rules select entries by it).
pub fn for_each_field(
    sample: &Sample,
    mut out: impl FnMut(&'static str, Option<(&'static str, &str)>, f64),
) {
    if let Some(c) = &sample.cpu {
        out("cpu.total_pct", None, f64::from(c.total_pct));
        for (i, v) in c.per_core_pct.iter().enumerate() {
            let mut buf = [0u8; 20];
            out(
                "cpu.per_core_pct",
                Some(("core", decimal(i, &mut buf))),
                f64::from(*v),
            );
        }
    }
    if let Some(m) = &sample.memory {
        out("memory.total_bytes", None, m.total_bytes as f64);
        out("memory.used_bytes", None, m.used_bytes as f64);
        out("memory.available_bytes", None, m.available_bytes as f64);
        out("memory.swap_total_bytes", None, m.swap_total_bytes as f64);
        out("memory.swap_used_bytes", None, m.swap_used_bytes as f64);
    }
    if let Some(l) = &sample.load {
        out("load.one", None, l.one);
        out("load.five", None, l.five);
        out("load.fifteen", None, l.fifteen);
    }
    if let Some(p) = &sample.processes {
        out("processes.count", None, f64::from(p.count));
        out("processes.others.count", None, f64::from(p.others.count));
        out(
            "processes.others.cpu_pct",
            None,
            f64::from(p.others.cpu_pct),
        );
        out(
            "processes.others.memory_bytes",
            None,
            p.others.memory_bytes as f64,
        );
    }
    if let Some(n) = &sample.network {
        for i in &n.interfaces {
            let k = "interface";
            let name = &i.name;
            for (f, v) in [
                ("network.rx_bytes_per_sec", i.rx_bytes_per_sec),
                ("network.tx_bytes_per_sec", i.tx_bytes_per_sec),
                ("network.rx_packets_per_sec", i.rx_packets_per_sec),
                ("network.tx_packets_per_sec", i.tx_packets_per_sec),
                ("network.rx_errors_per_sec", i.rx_errors_per_sec),
                ("network.tx_errors_per_sec", i.tx_errors_per_sec),
                ("network.rx_bytes_total", i.rx_bytes_total as f64),
                ("network.tx_bytes_total", i.tx_bytes_total as f64),
                ("network.rx_packets_total", i.rx_packets_total as f64),
                ("network.tx_packets_total", i.tx_packets_total as f64),
                ("network.rx_errors_total", i.rx_errors_total as f64),
                ("network.tx_errors_total", i.tx_errors_total as f64),
            ] {
                out(f, Some((k, name)), v);
            }
        }
    }
    if let Some(d) = &sample.disk {
        for dev in &d.devices {
            for (f, v) in [
                ("disk.read_bytes_per_sec", dev.read_bytes_per_sec),
                ("disk.write_bytes_per_sec", dev.write_bytes_per_sec),
                ("disk.read_bytes_total", dev.read_bytes_total as f64),
                ("disk.written_bytes_total", dev.written_bytes_total as f64),
            ] {
                out(f, Some(("device", &dev.name)), v);
            }
        }
    }
    if let Some(fs) = &sample.filesystems {
        for m in &fs.mounts {
            for (f, v) in [
                ("filesystems.total_bytes", m.total_bytes),
                ("filesystems.used_bytes", m.used_bytes),
                ("filesystems.free_bytes", m.free_bytes),
            ] {
                out(f, Some(("mount", &m.mount)), v as f64);
            }
        }
    }
    if let Some(s) = &sample.system {
        out("system.uptime_secs", None, s.uptime_secs as f64);
        out("system.boot_time", None, s.boot_time as f64);
        out("system.logical_cores", None, f64::from(s.logical_cores));
        if let Some(p) = s.physical_cores {
            out("system.physical_cores", None, f64::from(p));
        }
        out("system.cpu_frequency_mhz", None, s.cpu_frequency_mhz as f64);
        for (i, v) in s.per_core_frequency_mhz.iter().enumerate() {
            let mut buf = [0u8; 20];
            out(
                "system.per_core_frequency_mhz",
                Some(("core", decimal(i, &mut buf))),
                *v as f64,
            );
        }
    }
    if let Some(t) = &sample.temperatures {
        for s in &t.sensors {
            out(
                "temperatures.celsius",
                Some(("sensor", &s.label)),
                f64::from(s.celsius),
            );
            if let Some(v) = s.max_celsius {
                out(
                    "temperatures.max_celsius",
                    Some(("sensor", &s.label)),
                    f64::from(v),
                );
            }
            if let Some(v) = s.critical_celsius {
                out(
                    "temperatures.critical_celsius",
                    Some(("sensor", &s.label)),
                    f64::from(v),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostpulse_proto::{Cpu, Filesystem, Filesystems, Memory};

    #[test]
    fn fields_are_named_and_labelled_as_documented() {
        let sample = Sample {
            seq: 1,
            timestamp_ms: 1,
            cpu: Some(Cpu {
                total_pct: 12.5,
                per_core_pct: vec![10.0, 15.0],
            }),
            memory: Some(Memory {
                total_bytes: 8,
                used_bytes: 4,
                available_bytes: 4,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            }),
            filesystems: Some(Filesystems {
                mounts: vec![Filesystem {
                    mount: "/we\"ird".into(),
                    used_bytes: 7,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let mut seen = Vec::new();
        for_each_value(&sample, |n, v| seen.push((n.to_string(), v)));
        assert!(seen.contains(&("cpu.total_pct".into(), 12.5)));
        assert!(seen.contains(&("cpu.per_core_pct{core=\"1\"}".into(), 15.0)));
        assert!(seen.contains(&("filesystems.used_bytes{mount=\"/we\\\"ird\"}".into(), 7.0)));
        assert_eq!(seen.len(), 1 + 2 + 5 + 3);
        for (name, _) in &seen {
            assert_eq!(&parse_field(name).unwrap(), name);
        }
    }

    #[test]
    fn unknown_and_mislabelled_fields_are_named() {
        assert_eq!(
            parse_field("cpu.nope"),
            Err(FieldError::Unknown("cpu.nope".into()))
        );
        let e = parse_field("filesystems.used_bytes").unwrap_err();
        assert!(e.to_string().contains("mount"), "{e}");
        assert!(parse_field("cpu.total_pct{core=\"1\"}").is_err());
        assert!(parse_field("cpu.per_core_pct{cpu=\"1\"}").is_err());
        assert_eq!(parse_field(" load.one ").unwrap(), "load.one".to_string());
    }
}
