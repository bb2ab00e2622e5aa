//! The evaluator's state machine, per rule kind, on exact samples.

use super::*;
use hostpulse_proto::{Cpu, Filesystem, Filesystems};
use std::path::Path;

fn engine(rules: &str) -> (Arc<Engine>, mpsc::Receiver<Alert>) {
    let rules = super::super::rules::parse(rules, Path::new("t.toml")).unwrap();
    let (tx, rx) = mpsc::channel(100);
    (Arc::new(Engine::new(rules.into(), tx)), rx)
}

fn cpu(t_secs: i64, pct: f32) -> Sample {
    Sample {
        seq: t_secs as u64 + 1,
        timestamp_ms: 1_000_000 + t_secs * 1000,
        cpu: Some(Cpu {
            total_pct: pct,
            per_core_pct: vec![],
        }),
        ..Default::default()
    }
}

fn drain(rx: &mut mpsc::Receiver<Alert>) -> Vec<(Status, f64)> {
    let mut out = Vec::new();
    while let Ok(a) = rx.try_recv() {
        out.push((a.status, a.value));
    }
    out
}

#[test]
fn threshold_waits_for_for_and_resolves_past_clear() {
    let (e, mut rx) = engine(
        "[[rule]]\nname = \"cpu\"\nexpr = \"cpu.total_pct > 90\"\nfor = \"3s\"\nclear = 80\n",
    );
    let h = e.attach("web-1", &BTreeMap::new()).unwrap();
    assert!(
        e.attach("other", &BTreeMap::new()).is_some(),
        "no host glob: every host"
    );
    // Pending at 0 s, interrupted at 2 s: no alert.
    h.observe(&[cpu(0, 95.0), cpu(1, 95.0), cpu(2, 50.0)]);
    assert!(drain(&mut rx).is_empty());
    // Held from 3 s to 6 s: fires once.
    h.observe(&[
        cpu(3, 95.0),
        cpu(4, 96.0),
        cpu(5, 97.0),
        cpu(6, 98.0),
        cpu(7, 99.0),
    ]);
    assert_eq!(drain(&mut rx), vec![(Status::Firing, 98.0)]);
    // Noise between clear and threshold does not flap it.
    h.observe(&[cpu(8, 85.0), cpu(9, 91.0), cpu(10, 81.0), cpu(11, 95.0)]);
    assert!(drain(&mut rx).is_empty());
    // An old sample (resent backlog) is ignored.
    h.observe(&[cpu(1, 10.0)]);
    assert!(drain(&mut rx).is_empty());
    h.observe(&[cpu(12, 80.0)]);
    assert_eq!(drain(&mut rx), vec![(Status::Resolved, 80.0)]);
}

#[test]
fn wildcard_rules_alert_per_entry_with_its_label() {
    let (e, mut rx) = engine(
        "[[rule]]\nname = \"full\"\nexpr = \"filesystems.mounts[*].used_bytes / filesystems.mounts[*].total_bytes > 0.9\"\nsummary = \"{{entry}} {{value}}\"\n",
    );
    let h = e.attach("db", &BTreeMap::new()).unwrap();
    let mount = |m: &str, used| Filesystem {
        mount: m.into(),
        total_bytes: 100,
        used_bytes: used,
        free_bytes: 100 - used,
        ..Default::default()
    };
    h.observe(&[Sample {
        seq: 1,
        timestamp_ms: 1,
        filesystems: Some(Filesystems {
            mounts: vec![mount("/", 50), mount("/data", 95)],
        }),
        ..Default::default()
    }]);
    let a = rx.try_recv().unwrap();
    assert_eq!(a.entry.as_deref(), Some("/data"));
    assert_eq!(a.labels["mount"], "/data");
    assert_eq!(a.labels["alertname"], "full");
    assert_eq!(a.annotations["summary"], "/data 0.95");
    assert!(rx.try_recv().is_err());
}

#[test]
fn predict_fires_when_the_line_crosses_within_the_horizon() {
    let (e, mut rx) = engine(
        "[[rule]]\nname = \"fill\"\nkind = \"predict\"\nexpr = 'filesystems.mounts[mount=\"/\"].free_bytes < 0'\nwindow = \"100s\"\nhorizon = \"60s\"\n",
    );
    let h = e.attach("db", &BTreeMap::new()).unwrap();
    let at = |t: i64, free: u64| Sample {
        seq: t as u64 + 1,
        timestamp_ms: 1_000_000 + t * 1000,
        filesystems: Some(Filesystems {
            mounts: vec![Filesystem {
                mount: "/".into(),
                total_bytes: 10_000,
                used_bytes: 10_000 - free,
                free_bytes: free,
                ..Default::default()
            }],
        }),
        ..Default::default()
    };
    // Steady: never.
    h.observe(&(0..50).map(|t| at(t, 5000)).collect::<Vec<_>>());
    assert!(drain(&mut rx).is_empty());
    // Losing 50 bytes a second from 5000: 0 reached 100 s later, then
    // within the 60 s horizon once under 3000.
    h.observe(
        &(50..100)
            .map(|t| at(t, 5000 - 50 * (t as u64 - 50)))
            .collect::<Vec<_>>(),
    );
    h.observe(
        &(100..120)
            .map(|t| at(t, 2500 - 50 * (t as u64 - 100)))
            .collect::<Vec<_>>(),
    );
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, Status::Firing);
    assert!(got[0].1 < 0.0);
}

#[test]
fn absent_fires_on_the_tick_and_resolves_on_the_next_sample() {
    let (e, mut rx) = engine(
        "[[rule]]\nname = \"gone\"\nkind = \"absent\"\nafter = \"5s\"\nhosts = [\"web-*\"]\n",
    );
    let none = std::collections::HashSet::new();
    assert!(e.attach("db-1", &BTreeMap::new()).is_none());
    let h = e.attach("web-1", &BTreeMap::new()).unwrap();
    e.tick(Instant::now() + Duration::from_secs(1), &none);
    assert!(drain(&mut rx).is_empty());
    e.tick(Instant::now() + Duration::from_secs(6), &none);
    e.tick(Instant::now() + Duration::from_secs(7), &none);
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Status::Firing);
    h.observe(&[cpu(0, 1.0)]);
    assert_eq!(drain(&mut rx).len(), 1);
    assert_eq!(e.shortest_after(), Some(Duration::from_secs(5)));

    // Gone again and firing; then its agent streams to another
    // aggregator: resolved here (marked moved, so Alertmanager is left
    // to the new node) and no longer watched here.
    drop(h);
    e.tick(Instant::now() + Duration::from_secs(6), &none);
    let fired = rx.try_recv().expect("fired");
    assert_eq!(
        (fired.status, fired.value, fired.moved),
        (Status::Firing, 6.0, false)
    );
    let elsewhere = std::collections::HashSet::from(["web-1".to_string()]);
    e.tick(Instant::now() + Duration::from_secs(60), &elsewhere);
    let left = rx.try_recv().expect("resolved");
    assert_eq!((left.status, left.moved), (Status::Resolved, true));
    assert!(drain(&mut rx).is_empty());
    e.tick(Instant::now() + Duration::from_secs(120), &none);
    assert!(drain(&mut rx).is_empty(), "not watched here any more");

    // Attached here (online elsewhere is stale news): still watched.
    let h = e.attach("web-2", &BTreeMap::new()).unwrap();
    let elsewhere = std::collections::HashSet::from(["web-2".to_string()]);
    e.tick(Instant::now() + Duration::from_secs(6), &elsewhere);
    assert_eq!(drain(&mut rx).len(), 1);
    // Forgotten: what fires resolves.
    e.forget("web-2");
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Status::Resolved);
    drop(h);
}

#[test]
fn an_entry_gone_from_its_list_resolves_and_is_forgotten() {
    let (e, mut rx) =
        engine("[[rule]]\nname = \"hot\"\nexpr = \"temperatures.sensors[*].celsius > 85\"\n");
    let h = e.attach("h", &BTreeMap::new()).unwrap();
    let temps = |seq: u64, sensors: &[(&str, f32)]| Sample {
        seq,
        timestamp_ms: seq as i64 * 1000,
        temperatures: Some(hostpulse_proto::Temperatures {
            sensors: sensors
                .iter()
                .map(|(l, c)| hostpulse_proto::Sensor {
                    label: (*l).into(),
                    celsius: *c,
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    };
    h.observe(&[temps(1, &[("a", 90.0), ("b", 90.0)])]);
    assert_eq!(drain(&mut rx).len(), 2);
    h.observe(&[temps(2, &[("a", 90.0)])]);
    let got = drain(&mut rx);
    assert_eq!(got, vec![(Status::Resolved, 90.0)]);
    let state = e.hosts.lock().unwrap();
    assert_eq!(state["h"].series.len(), 1);
}

#[test]
fn a_host_no_longer_selected_has_its_alerts_resolved() {
    let (e, mut rx) = engine(
        "[[rule]]\nname = \"cpu\"\nexpr = \"cpu.total_pct > 90\"\nmatch_labels = { role = \"web\" }\n",
    );
    let web = BTreeMap::from([("role".to_string(), "web".to_string())]);
    let h = e.attach("h", &web).unwrap();
    h.observe(&[cpu(0, 95.0)]);
    assert_eq!(drain(&mut rx), vec![(Status::Firing, 95.0)]);
    drop(h);
    // The agent comes back with other labels.
    assert!(e.attach("h", &BTreeMap::new()).is_none());
    assert_eq!(drain(&mut rx), vec![(Status::Resolved, 95.0)]);
}
