//! Tests of the history: reads across sealed blocks and the tail, the size
//! of sealed blocks, the byte bound and its fair trimming, forgetting.

use super::*;
use std::time::{Duration, Instant};

fn up(topic: &str, seq: u64, body_len: usize) -> Arc<Update> {
    Update::test(topic, seq, format!("{seq}:{}", "x".repeat(body_len)).into())
}

/// Like [`up`], with a body that does not compress (so only the byte
/// bound, not sealing, can keep it small).
fn noisy(topic: &str, seq: u64, body_len: usize) -> Arc<Update> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: String = (0..body_len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x & 15) as usize])
        })
        .collect();
    Update::test(topic, seq, body.into())
}

fn seqs(updates: &[Arc<Update>]) -> Vec<u64> {
    updates.iter().map(|u| u.seq).collect()
}

/// Waits until the sealer has sealed `n` blocks in all.
fn sealed(stats: &HistoryStats, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.sealed.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "blocks not sealed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn reads_span_sealed_blocks_and_the_tail_exactly() {
    let stats = Arc::new(HistoryStats::default());
    let mut hs = Histories::new(100, usize::MAX, stats.clone());
    let h = hs.topic();
    let published: Vec<_> = (11..=130).map(|seq| up("t", seq, 50)).collect();
    for u in &published {
        assert!(!hs.push(&h, u.clone()));
    }
    // 120 pushed, 100 kept; three blocks sealed at 36, 68 and 100 held.
    sealed(&stats, 3);
    assert_eq!(h.len(), 100);
    assert_eq!(stats.entries(), 100);
    assert_eq!(h.first_seq(), Some(31));
    assert_eq!(h.last().map(|u| u.seq), Some(130));
    assert_eq!(seqs(&h.all_after(0)), (31..=130).collect::<Vec<_>>());
    assert_eq!(seqs(&h.all_after(64)), (65..=130).collect::<Vec<_>>());
    assert!(h.all_after(130).is_empty());
    assert_eq!(h.before_last(10), 120);
    assert_eq!(h.before_last(70), 60);
    assert_eq!(h.before_last(500), 30);
    // The JSON read back from a block is what was published.
    for u in h.all_after(40) {
        assert_eq!(u.json, published[(u.seq - 11) as usize].json);
    }
    // Chunked reads: about the budget each, and nothing missed between.
    let mut after = 30;
    let mut got = Vec::new();
    loop {
        let (chunk, more) = h.read_after(after, 1000);
        assert!(!chunk.is_empty());
        after = chunk.last().unwrap().seq;
        got.extend(seqs(&chunk));
        if !more {
            break;
        }
    }
    assert_eq!(got, (31..=130).collect::<Vec<_>>());
}

#[test]
fn sealed_history_is_a_fraction_of_its_json() {
    let stats = Arc::new(HistoryStats::default());
    let mut hs = Histories::new(600, usize::MAX, stats.clone());
    let h = hs.topic();
    let mut json = 0;
    for seq in 1..=600 {
        let u = up("host.a.cpu", seq, 200);
        json += u.json.len();
        assert!(!hs.push(&h, u));
    }
    sealed(&stats, (600 - KEEP as u64) / BLOCK as u64);
    assert_eq!(stats.bytes() as usize, h.bytes());
    assert!(
        h.bytes() * 4 < json,
        "{} held for {json} of JSON",
        h.bytes()
    );
}

#[test]
fn the_byte_bound_trims_the_largest_topics_and_spares_the_small_ones() {
    let stats = Arc::new(HistoryStats::default());
    let bound = 200_000;
    let mut hs = Histories::new(1000, bound, stats.clone());
    let (busy, hosts) = (hs.topic(), hs.topic());
    let topics = [busy.clone(), hosts.clone()];
    let mut hosts_seq = 0;
    for seq in 1..=2000 {
        // A big, busy topic, and a small event now and then.
        if hs.push(&busy, noisy("busy", seq, 2000)) {
            hs.rebalance(topics.iter());
        }
        if seq % 20 == 0 {
            hosts_seq += 1;
            if hs.push(&hosts, up("hosts", hosts_seq, 100)) {
                hs.rebalance(topics.iter());
            }
        }
    }
    assert!(stats.bytes() as usize <= bound, "{}", stats.bytes());
    assert!(stats.trimmed.load(Ordering::Relaxed) > 0);
    // Every event kept, and the busy topic its newest, consecutive.
    assert_eq!(seqs(&hosts.all_after(0)), (1..=100).collect::<Vec<_>>());
    let kept = seqs(&busy.all_after(0));
    assert_eq!(kept.last(), Some(&2000));
    assert!(kept.len() < 1000, "{}", kept.len());
    if let Some(w) = kept.windows(2).find(|w| w[1] != w[0] + 1) {
        panic!("{} then {}", w[0], w[1]);
    }
    assert!(hs.level().is_some());
}

#[test]
fn forgetting_a_topic_returns_its_bytes() {
    let stats = Arc::new(HistoryStats::default());
    let mut hs = Histories::new(100, usize::MAX, stats.clone());
    let (a, b) = (hs.topic(), hs.topic());
    for seq in 1..=80 {
        let _ = hs.push(&a, up("a", seq, 100));
        let _ = hs.push(&b, up("b", seq, 100));
    }
    sealed(&stats, 4);
    let before = stats.bytes();
    hs.forget(&a);
    assert_eq!(stats.bytes(), before - a.bytes() as u64);
    assert_eq!(stats.entries(), 80);
    hs.forget(&b);
    assert_eq!((stats.bytes(), stats.entries()), (0, 0));
}

#[test]
fn the_water_level_fills_the_budget() {
    assert_eq!(water_level(vec![10, 20, 30], 100), usize::MAX);
    assert_eq!(water_level(vec![10, 50, 50], 70), 30);
    assert_eq!(water_level(vec![100, 100], 100), 50);
}
