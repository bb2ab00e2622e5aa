//! Tests of the registry: peers' hosts listed offline once gone,
//! forgetting departed hosts (never an attached one), and one process per
//! agent id.

use super::*;
use std::collections::BTreeMap;

fn remote_view(host: &str, node: &str) -> HostView {
    HostView {
        host: host.into(),
        online: true,
        last_seen: None,
        agent: HostEvent {
            event: "online".into(),
            host: host.into(),
            agent_id: host.into(),
            hostname: host.into(),
            epoch: 1,
            version: "0".into(),
            labels: BTreeMap::new(),
            interval_ms: 1000,
            aggregator: Some(node.into()),
        },
    }
}

#[test]
fn a_gone_peers_hosts_stay_listed_offline_until_announced_again() {
    let r = Registry::with_node(Some("agg-1".into()));
    r.set_remote("agg-2", Some(vec![remote_view("web-01", "agg-2")]));
    assert!(r.hosts()[0].online);

    r.set_remote("agg-2", None);
    let hosts = r.hosts();
    assert_eq!(hosts.len(), 1, "still listed");
    assert!(!hosts[0].online);
    assert_eq!(hosts[0].agent.event, "offline");
    assert_eq!(hosts[0].agent.aggregator.as_deref(), Some("agg-2"));

    // Announced online by another node (its agent failed over): that wins.
    r.set_remote("agg-3", Some(vec![remote_view("web-01", "agg-3")]));
    let hosts = r.hosts();
    assert_eq!(hosts.len(), 1);
    assert!(hosts[0].online);
    assert_eq!(hosts[0].agent.aggregator.as_deref(), Some("agg-3"));
}

fn hello(host: &str, epoch: u64) -> Hello {
    Hello {
        agent_id: format!("agent-{host}"),
        hostname: host.into(),
        epoch,
        interval_ms: 1000,
        ..Hello::default()
    }
}

#[test]
fn a_detached_agent_is_forgotten_after_its_departure_and_an_attached_one_never() {
    let r = Registry::new();
    let (gone, _) = r.attach(&hello("gone", 1), None).unwrap();
    r.attach(&hello("stays", 1), None).unwrap();
    r.commit("agent-gone", gone.generation, 7);
    let before = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(2));
    r.detach("agent-gone", gone.generation).unwrap();
    // Departed after the cutoff: still remembered.
    assert!(r.retained_hosts(before).contains("gone"));
    assert!(r.forget(before).is_empty());

    let now = Instant::now();
    let keep = r.retained_hosts(now);
    assert!(!keep.contains("gone") && keep.contains("stays"), "{keep:?}");
    let events = r.forget(now);
    assert_eq!(events.len(), 1);
    assert_eq!((&*events[0].event, &*events[0].host), ("forgotten", "gone"));
    assert_eq!(r.agents(), 1);
    assert_eq!(
        r.hosts()
            .iter()
            .map(|h| h.host.as_str())
            .collect::<Vec<_>>(),
        ["stays"]
    );
    assert!(r.forget(Instant::now()).is_empty(), "forgotten once");

    // Back with the same run: a fresh start, announced online.
    let (again, event) = r.attach(&hello("gone", 1), None).unwrap();
    assert_eq!(event.event, "online");
    assert!(!again.known);
    assert_eq!(again.last_seq, 0);
}

#[test]
fn a_host_no_peer_announces_is_forgotten_after_its_departure() {
    let r = Registry::with_node(Some("agg-1".into()));
    r.set_remote("agg-2", Some(vec![remote_view("web-01", "agg-2")]));
    r.set_remote("agg-3", Some(vec![remote_view("db-01", "agg-3")]));
    assert!(r.retained_hosts(Instant::now()).contains("web-01"));
    assert!(r.forget(Instant::now()).is_empty(), "announced online");

    let before = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(2));
    r.set_remote("agg-2", Some(Vec::new()));
    r.set_remote("agg-3", None);
    assert!(r.retained_hosts(before).contains("web-01"));
    assert!(r.retained_hosts(before).contains("db-01"));
    assert!(r.forget(before).is_empty());

    let mut events = r.forget(Instant::now());
    events.sort_by(|a, b| a.host.cmp(&b.host));
    let got: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .map(|e| (&*e.event, e.host.as_str(), e.aggregator.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("forgotten", "db-01", Some("agg-3")),
            ("forgotten", "web-01", Some("agg-2"))
        ]
    );
    assert!(r.hosts().is_empty());
    assert!(r.retained_hosts(Instant::now()).is_empty());
}

#[test]
fn a_live_agent_id_is_refused_to_another_process_and_taken_over_by_its_own() {
    let r = Registry::new();
    let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let mut first = hello("web", 1);
    first.instance = 7;
    let (a, _) = r.attach(&first, Some(peer)).unwrap();

    // A clone (another process: other epoch or instance) is refused,
    // naming where the live stream comes from; nothing changes.
    for (epoch, instance) in [(2, 7), (1, 8), (2, 0)] {
        let mut clone = hello("web", epoch);
        clone.instance = instance;
        let e = r.attach(&clone, Some("10.0.0.2:5000".parse().unwrap()));
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("agent_id \"agent-web\" is already streaming from 10.0.0.1:4000"),
            "{e}"
        );
    }
    assert_eq!(r.check("agent-web", a.generation, 1), Verdict::New);

    // The same process reconnecting takes over its old stream.
    let (b, event) = r
        .attach(&first, Some("10.0.0.1:4001".parse().unwrap()))
        .unwrap();
    assert_eq!(event.event, "online");
    assert!(b.known);
    assert_eq!(r.check("agent-web", a.generation, 1), Verdict::Superseded);

    // Once the live stream falls silent, another process may take over
    // (a host that rebooted while its old connection still looks open).
    r.presence("agent-web", b.generation, false).unwrap();
    let mut restarted = hello("web", 2);
    restarted.instance = 9;
    let (c, event) = r.attach(&restarted, None).unwrap();
    assert_eq!(event.event, "restarted");
    assert_eq!(r.check("agent-web", b.generation, 1), Verdict::Superseded);

    // And after a stream ends, anyone may attach.
    r.detach("agent-web", c.generation).unwrap();
    r.attach(&first, None).unwrap();
}

#[test]
fn a_host_name_a_peer_announces_is_refused_to_another_agent_and_open_to_the_same_one() {
    let r = Registry::with_node(Some("agg-1".into()));
    let mut theirs = remote_view("web-01", "agg-2");
    theirs.agent.agent_id = "agent-web-01".into();
    r.set_remote("agg-2", Some(vec![theirs]));
    let mut other = hello("web-01", 1);
    other.agent_id = "someone-else".into();
    match r.attach(&other, None) {
        Err(AttachError::HostOnPeer { host, node }) => {
            assert_eq!((host.as_str(), node.as_str()), ("web-01", "agg-2"))
        }
        other => panic!("expected HostOnPeer, got {other:?}"),
    }
    // The same agent moving here (failing over) is welcome.
    r.attach(&hello("web-01", 1), None).unwrap();
    let hosts = r.hosts();
    assert_eq!(hosts[0].agent.aggregator.as_deref(), Some("agg-1"));
}

#[test]
fn a_new_announcement_yields_only_the_changes_and_names_conflicts() {
    let r = Registry::with_node(Some("agg-1".into()));
    r.attach(&hello("mine", 1), None).unwrap();
    let first = r.set_remote(
        "agg-2",
        Some(vec![remote_view("a", "agg-2"), remote_view("b", "agg-2")]),
    );
    let got: Vec<(&str, &str)> = first
        .events
        .iter()
        .map(|e| (e.host.as_str(), &*e.event))
        .collect();
    assert_eq!(got, [("a", "online"), ("b", "online")]);
    assert!(first.conflicts.is_empty());
    // Same again: nothing changed.
    let again = r.set_remote(
        "agg-2",
        Some(vec![remote_view("a", "agg-2"), remote_view("b", "agg-2")]),
    );
    assert!(again.events.is_empty(), "{:?}", again.events);
    // `b` gone, `mine` claimed by another agent there: one offline event,
    // one conflict, and the local agent still wins.
    let mut clash = remote_view("mine", "agg-2");
    clash.agent.agent_id = "other".into();
    let change = r.set_remote("agg-2", Some(vec![remote_view("a", "agg-2"), clash]));
    let got: Vec<(&str, &str)> = change
        .events
        .iter()
        .map(|e| (e.host.as_str(), &*e.event))
        .collect();
    assert_eq!(got, [("b", "offline")]);
    assert_eq!(change.conflicts, ["mine"]);
    let mine = r.hosts().into_iter().find(|h| h.host == "mine").unwrap();
    assert_eq!(mine.agent.aggregator.as_deref(), Some("agg-1"));
    // The node goes: its online host goes offline.
    let gone = r.set_remote("agg-2", None);
    let got: Vec<(&str, &str)> = gone
        .events
        .iter()
        .map(|e| (e.host.as_str(), &*e.event))
        .collect();
    assert_eq!(got, [("a", "offline")]);
}
