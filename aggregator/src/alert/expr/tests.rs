//! Parsing and evaluating the documented examples, and refusals that say where.

use super::*;
use hostpulse_proto::{Cpu, Filesystem, Filesystems, Memory, Sample, Sensor, Temperatures};

fn sample() -> Sample {
    Sample {
        seq: 1,
        timestamp_ms: 1,
        cpu: Some(Cpu {
            total_pct: 95.0,
            per_core_pct: vec![],
        }),
        memory: Some(Memory {
            total_bytes: 100,
            used_bytes: 95,
            available_bytes: 5,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
        }),
        filesystems: Some(Filesystems {
            mounts: vec![
                Filesystem {
                    mount: "/".into(),
                    total_bytes: 100,
                    used_bytes: 50,
                    free_bytes: 50,
                    ..Default::default()
                },
                Filesystem {
                    mount: "/data".into(),
                    total_bytes: 100,
                    used_bytes: 99,
                    free_bytes: 1,
                    ..Default::default()
                },
            ],
        }),
        temperatures: Some(Temperatures {
            sensors: vec![Sensor {
                label: "core 0".into(),
                celsius: 90.0,
                ..Default::default()
            }],
        }),
        ..Default::default()
    }
}

fn all() -> HashSet<&'static str> {
    FIELDS.iter().map(|(f, _)| *f).collect()
}

#[test]
fn the_documented_examples_parse_and_evaluate() {
    let v = Values::of(&sample(), &all());
    let c = parse_condition("cpu.total_pct > 90").unwrap();
    assert_eq!(c.expr.eval(&v, None), Some(95.0));
    assert!(c.cmp.holds(95.0, c.threshold));
    let c = parse_condition("memory.used_bytes / memory.total_bytes > 0.9").unwrap();
    assert_eq!(c.expr.eval(&v, None), Some(0.95));
    let c = parse_condition(
        r#"filesystems.mounts[mount="/"].used_bytes / filesystems.mounts[mount="/"].total_bytes > 0.9"#,
    )
    .unwrap();
    assert_eq!(c.expr.eval(&v, None), Some(0.5));
    let c = parse_condition("temperatures.sensors[*].celsius > 85").unwrap();
    assert_eq!(c.expr.entries(&v), vec![Some("core 0".to_string())]);
    assert_eq!(c.expr.eval(&v, Some("core 0")), Some(90.0));
    let c = parse_condition(
        "filesystems.mounts[*].used_bytes / filesystems.mounts[*].total_bytes >= 0.9",
    )
    .unwrap();
    let hits: Vec<_> = c
        .expr
        .entries(&v)
        .into_iter()
        .filter(|e| {
            c.cmp
                .holds(c.expr.eval(&v, e.as_deref()).unwrap(), c.threshold)
        })
        .collect();
    assert_eq!(hits, vec![Some("/data".to_string())]);
    let c = parse_condition("-(load.one - 2) * 3 < -1.5").unwrap();
    assert_eq!(c.threshold, -1.5);
    assert_eq!(c.expr.eval(&v, None), None, "no load in the sample");
}

#[test]
fn bad_expressions_say_where_and_why() {
    for (bad, at, why) in [
        ("cpu.nope > 1", 0, "not a numeric field"),
        ("cpu.total_pct", 13, "expected a comparison"),
        ("cpu.total_pct > memory.used_bytes", 16, "must be a number"),
        ("filesystems.mounts.used_bytes > 1", 0, "[mount="),
        (
            "filesystems.mounts[dev=\"/\"].used_bytes > 1",
            18,
            "chosen by `mount`",
        ),
        ("cpu.total_pct[*] > 1", 13, "not a list"),
        ("(cpu.total_pct > 1", 15, "expected `)`"),
        ("cpu.total_pct > 1 2", 18, "unexpected text"),
        ("cpu.total_pct > 1x", 16, "not a number"),
        (
            "filesystems.mounts[*].used_bytes + temperatures.sensors[*].celsius > 1",
            0,
            "one list",
        ),
    ] {
        let e = parse_condition(bad).unwrap_err();
        assert_eq!(e.at, at, "{bad}: {e}");
        assert!(e.reason.contains(why), "{bad}: {e}");
    }
}
