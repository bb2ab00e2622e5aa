//! Chunks stay under their budget and come back whole; a gap voids a set.

use std::collections::BTreeMap;

use super::*;

fn view(i: usize) -> HostView {
    let host = format!("host-{i:05}");
    HostView {
        host: host.clone(),
        online: !i.is_multiple_of(3),
        last_seen: Some("2026-11-30T06:00:00Z".into()),
        agent: HostEvent {
            event: "online".into(),
            host: host.clone(),
            agent_id: format!("agent-{i}"),
            hostname: host,
            epoch: 7,
            version: "1.0.0".into(),
            labels: BTreeMap::from([("rack".to_string(), format!("r{}", i % 20))]),
            interval_ms: 1000,
            aggregator: Some("agg-1".into()),
        },
    }
}

#[test]
fn a_presence_of_thousands_of_hosts_is_cut_under_the_budget_and_reassembled_whole() {
    let hosts: Vec<HostView> = (0..3000).map(view).collect();
    let (chunks, skipped) = presence("agg-1", 9, false, &hosts, budget(64 << 10));
    assert_eq!(skipped, 0);
    assert!(chunks.len() > 5, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() <= budget(64 << 10)));
    let mut slot = None;
    let mut whole = None;
    for c in &chunks {
        let p: PresenceChunk = serde_json::from_slice(c).unwrap();
        assert_eq!((p.node.as_str(), p.generation), ("agg-1", 9));
        assert!(whole.is_none(), "complete before the last chunk");
        whole = Assembly::take(&mut slot, p.generation, p.index, p.count, p.hosts).unwrap();
    }
    let back: Vec<HostView> = whole
        .unwrap()
        .into_iter()
        .flatten()
        .map(Into::into)
        .collect();
    assert_eq!(back.len(), hosts.len());
    for (a, b) in back.iter().zip(&hosts) {
        assert_eq!(
            (&a.host, a.online, &a.agent.labels),
            (&b.host, b.online, &b.agent.labels)
        );
    }
}

#[test]
fn an_empty_presence_is_one_chunk_and_a_host_too_large_alone_is_left_out() {
    let (chunks, skipped) = presence("n", 1, true, &[], 1024);
    assert_eq!((chunks.len(), skipped), (1, 0));
    let p: PresenceChunk = serde_json::from_slice(&chunks[0]).unwrap();
    assert!(p.leaving && p.hosts.is_empty() && p.count == 1);

    let mut big = view(1);
    big.agent.labels.insert("blob".into(), "x".repeat(2000));
    let (chunks, skipped) = presence("n", 2, false, &[view(0), big, view(2)], 1024);
    assert_eq!(skipped, 1);
    let hosts: usize = chunks
        .iter()
        .map(|c| {
            serde_json::from_slice::<PresenceChunk>(c)
                .unwrap()
                .hosts
                .len()
        })
        .sum();
    assert_eq!(hosts, 2);
}

#[test]
fn a_request_lists_every_floor_across_its_chunks() {
    let floors: HashMap<String, u64> = (0..20_000)
        .map(|i| (format!("host.h-{i:05}.cpu"), i as u64))
        .collect();
    let chunks = request("agg-3", 4, &floors, budget(32 << 10), false);
    assert!(chunks.len() > 5);
    assert!(chunks.iter().all(|c| c.len() <= budget(32 << 10)));
    let mut slot = None;
    let mut whole = None;
    for c in &chunks {
        let r: RequestChunk = serde_json::from_slice(c).unwrap();
        whole = Assembly::take(&mut slot, r.request, r.index, r.count, r.floors).unwrap();
    }
    let back: HashMap<String, u64> = whole.unwrap().into_iter().flatten().collect();
    assert_eq!(back, floors);
}

#[test]
fn a_missing_chunk_voids_the_set_and_a_newer_one_starts_over() {
    let mut slot = None;
    assert_eq!(Assembly::take(&mut slot, 1, 0, 3, 'a'), Ok(None));
    assert_eq!(
        Assembly::take(&mut slot, 1, 2, 3, 'c'),
        Err(AssemblyError::Gap {
            id: 1,
            expected: 1,
            got: 2
        })
    );
    assert!(slot.is_none());
    // The rest of the broken set is refused too.
    assert!(Assembly::take(&mut slot, 1, 2, 3, 'c').is_err());
    // A newer set, interrupted by a still newer one, which completes.
    assert_eq!(Assembly::take(&mut slot, 2, 0, 2, 'x'), Ok(None));
    assert_eq!(Assembly::take(&mut slot, 3, 0, 2, 'p'), Ok(None));
    assert_eq!(
        Assembly::take(&mut slot, 3, 1, 2, 'q'),
        Ok(Some(vec!['p', 'q']))
    );
    assert_eq!(
        Assembly::take(&mut slot, 4, 0, MAX_CHUNKS + 1, 'z'),
        Err(AssemblyError::Bounds {
            index: 0,
            count: MAX_CHUNKS + 1
        })
    );
}
