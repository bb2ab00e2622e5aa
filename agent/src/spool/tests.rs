//! Tests of the spool: retention, eviction, refusals, settling and splits.

use super::*;

fn batch(seq: u64, size: usize) -> SpooledBatch {
    SpooledBatch {
        seq,
        sample_count: 2,
        payload: Bytes::from(vec![0u8; size]),
    }
}

fn seqs(s: &mut Spool) -> Vec<u64> {
    std::iter::from_fn(|| s.next_unsent().map(|b| b.seq)).collect()
}

fn counts(s: &Spool) -> (u64, u64, u64, u64) {
    (
        s.dropped_batches,
        s.dropped_samples,
        s.unconfirmed_batches,
        s.unconfirmed_samples,
    )
}

#[test]
fn acked_batches_are_retained_within_budget_and_resent_on_request() {
    let mut s = Spool::new(1000, 4);
    for seq in 1..=5 {
        s.push(batch(seq, 10));
    }
    assert_eq!(seqs(&mut s), vec![1, 2, 3, 4, 5]);
    s.ack_through(3);
    // 3 acked batches of 2 samples exceed the budget of 4: batch 1 goes.
    assert_eq!(s.len(), 4);
    assert_eq!(s.unacked(), 2);
    s.end_stream();
    s.start_stream(Some(3));
    assert_eq!(seqs(&mut s), vec![4, 5]);
    s.end_stream();
    s.start_stream(None);
    assert_eq!(seqs(&mut s), vec![2, 3, 4, 5]);
    assert!(!s.has_unsent());
    assert_eq!(counts(&s), (0, 0, 0, 0));
}

#[test]
fn full_spool_drops_oldest_and_counts_only_unacked_losses() {
    let mut s = Spool::new(100, 100);
    for seq in 1..=5 {
        s.push(batch(seq, 10));
    }
    s.ack_through(5);
    for seq in 6..=25 {
        s.push(batch(seq, 10));
    }
    assert!(s.bytes() <= 100);
    assert_eq!(s.len(), 10);
    // 15 batches went: the 5 acknowledged ones are no loss.
    assert_eq!(counts(&s), (10, 20, 0, 0));
    s.start_stream(Some(5));
    assert_eq!(s.next_unsent().unwrap().seq, 16);
    assert_eq!(s.oldest_unacked(), Some(16));
}

#[test]
fn refused_batches_are_discarded_and_counted() {
    let mut s = Spool::new(1000, 0);
    for seq in 1..=3 {
        s.push(batch(seq, 10));
    }
    s.start_stream(Some(0));
    assert_eq!(seqs(&mut s), vec![1, 2, 3]);
    assert_eq!(s.discard_refused(), Some(1));
    assert_eq!(s.dropped_batches, 1);
    s.end_stream();
    s.start_stream(Some(1));
    assert_eq!(seqs(&mut s), vec![2, 3]);
}

#[test]
fn a_refused_retained_batch_goes_without_counting_and_spares_the_unacknowledged() {
    // Acknowledged 1..=3 by an aggregator that then went away; 4 and 5
    // are unacknowledged. A fresh aggregator gets the retained ones
    // again, acknowledges 1 and refuses 2.
    let mut s = Spool::new(10_000, 1_000);
    for seq in 1..=5 {
        s.push(batch(seq, 10));
    }
    s.start_stream(Some(0));
    assert_eq!(seqs(&mut s), vec![1, 2, 3, 4, 5]);
    s.ack_through(3);
    s.end_stream();
    s.start_stream(None);
    assert_eq!(seqs(&mut s), vec![1, 2, 3, 4, 5]);
    s.ack_through(1);
    assert_eq!(s.discard_refused(), Some(2));
    assert_eq!(counts(&s), (0, 0, 0, 0), "an acknowledged batch is no loss");
    assert_eq!(s.unacked(), 2, "4 and 5 are kept");
    s.end_stream();
    s.start_stream(Some(1));
    assert_eq!(seqs(&mut s), vec![4, 5]);
}

#[test]
fn a_batch_evicted_while_in_flight_is_not_dropped_when_its_ack_arrives() {
    // Reconnected with a full spool: everything is sent at once, then
    // the next sample's batch pushes the oldest out before its ack.
    let mut s = Spool::new(100, 0);
    for seq in 1..=10 {
        s.push(batch(seq, 10));
    }
    assert_eq!(seqs(&mut s), (1..=10).collect::<Vec<_>>());
    s.push(batch(11, 10));
    s.push(batch(12, 10));
    assert!(s.bytes() <= 100);
    assert_eq!(s.evicted_in_flight(), 2);
    assert_eq!(counts(&s), (0, 0, 0, 0), "in flight is not dropped");
    s.ack_through(1);
    assert_eq!(s.evicted_in_flight(), 1);
    s.ack_through(10);
    assert_eq!(s.evicted_in_flight(), 0);
    assert_eq!(counts(&s), (0, 0, 0, 0), "acknowledged: delivered");
    assert_eq!(seqs(&mut s), vec![11, 12]);
}

#[test]
fn an_aggregator_that_knows_the_run_settles_batches_evicted_in_flight() {
    let mut s = Spool::new(100, 0);
    for seq in 1..=10 {
        s.push(batch(seq, 10));
    }
    seqs(&mut s);
    s.push(batch(11, 10));
    s.push(batch(12, 10));
    s.push(batch(13, 10));
    // Batches 1..=3 were evicted in flight, then the stream broke.
    s.end_stream();
    assert_eq!(counts(&s), (0, 0, 0, 0));
    // The aggregator held through batch 1: 2 and 3 never arrived.
    s.start_stream(Some(1));
    assert_eq!(s.evicted_in_flight(), 0);
    assert_eq!(counts(&s), (2, 4, 0, 0));
    // What it does not hold is sent again, and evictable as unsent.
    s.push(batch(14, 10));
    assert_eq!(counts(&s), (3, 6, 0, 0));
    assert_eq!(seqs(&mut s), (5..=14).collect::<Vec<_>>());
}

#[test]
fn batches_evicted_in_flight_to_an_aggregator_that_is_gone_are_unconfirmed_not_dropped() {
    let mut s = Spool::new(100, 0);
    for seq in 1..=10 {
        s.push(batch(seq, 10));
    }
    seqs(&mut s);
    s.push(batch(11, 10));
    s.push(batch(12, 10));
    s.end_stream();
    // A fresh aggregator (restarted, or another one): no one can tell.
    s.start_stream(None);
    assert_eq!(s.evicted_in_flight(), 0);
    assert_eq!(counts(&s), (0, 0, 2, 4));
    assert_eq!(seqs(&mut s), (3..=12).collect::<Vec<_>>());
}

#[test]
fn batches_sent_before_a_stream_broke_stay_while_newer_unsent_ones_go() {
    // The aggregator went away with batches 1..=3 unacknowledged: it may
    // have published them. While it is down, newer batches are evicted
    // instead (a loss), and 1..=3 are sent again to the next aggregator.
    let mut s = Spool::new(100, 0);
    for seq in 1..=3 {
        s.push(batch(seq, 10));
    }
    assert_eq!(seqs(&mut s), vec![1, 2, 3]);
    s.end_stream();
    for seq in 4..=12 {
        s.push(batch(seq, 10));
    }
    assert!(s.bytes() <= 100);
    assert_eq!(counts(&s), (2, 4, 0, 0), "batches 4 and 5 dropped");
    assert_eq!(s.evicted_in_flight(), 0);
    s.start_stream(None);
    assert_eq!(
        seqs(&mut s),
        vec![1, 2, 3, 6, 7, 8, 9, 10, 11, 12],
        "one hole, exactly the dropped batches"
    );
    assert_eq!(counts(&s), (2, 4, 0, 0));
}

#[test]
fn when_only_batches_of_a_broken_stream_are_left_the_oldest_goes_unsettled() {
    let mut s = Spool::new(30, 0);
    for seq in 1..=3 {
        s.push(batch(seq, 10));
    }
    seqs(&mut s);
    s.end_stream();
    s.push(batch(4, 10));
    assert_eq!(s.len(), 3);
    assert_eq!(s.evicted_in_flight(), 1, "batch 1 awaits the next Welcome");
    assert_eq!(counts(&s), (0, 0, 0, 0));
    // The aggregator that took it is back and holds it: delivered.
    s.start_stream(Some(1));
    assert_eq!(counts(&s), (0, 0, 0, 0));
    assert_eq!(seqs(&mut s), vec![2, 3, 4]);
}

fn parts(n: usize) -> Vec<(u32, Bytes)> {
    (0..n).map(|_| (1, Bytes::from(vec![0u8; 5]))).collect()
}

#[test]
fn a_split_batch_is_renumbered_in_place_and_later_seqs_move_up() {
    let mut s = Spool::new(10_000, 100);
    for seq in 1..=4 {
        s.push(batch(seq, 10));
    }
    s.start_stream(Some(0));
    assert_eq!(s.next_unsent().unwrap().seq, 1);
    s.ack_through(1);
    // Batch 2 is next and too large: three parts, 2..=4; old 3 and 4 are 5 and 6.
    assert_eq!(s.peek_unsent().unwrap().seq, 2);
    assert_eq!(s.split(2, parts(3)), 2);
    assert_eq!(seqs(&mut s), vec![2, 3, 4, 5, 6]);
    assert_eq!(s.unacked(), 5);
    assert_eq!(s.bytes(), 10 + 15 + 20);
    s.ack_through(6);
    assert_eq!(s.unacked(), 0);
    assert_eq!(counts(&s), (0, 0, 0, 0));
}

#[test]
fn a_refused_batch_is_found_split_or_given_up_and_acked_marks_follow() {
    let mut s = Spool::new(10_000, 100);
    for seq in 1..=4 {
        s.push(batch(seq, 10));
    }
    s.start_stream(Some(0));
    assert_eq!(seqs(&mut s), vec![1, 2, 3, 4]);
    s.ack_through(1);
    assert_eq!(s.refused().unwrap().seq, 2);
    assert_eq!(s.split(2, parts(2)), 1);
    s.end_stream();
    // The aggregator held batch 1: the parts and what followed are sent again.
    s.start_stream(Some(1));
    assert_eq!(seqs(&mut s), vec![2, 3, 4, 5]);
    // A batch none of whose samples can ever be sent goes; nothing moves.
    assert_eq!(s.split(3, Vec::new()), 0);
    s.end_stream();
    s.start_stream(Some(1));
    assert_eq!(seqs(&mut s), vec![2, 4, 5]);
    // Retained (acknowledged) batches split for a fresh aggregator stay acknowledged.
    s.ack_through(5);
    s.end_stream();
    s.start_stream(None);
    assert_eq!(s.split(1, parts(2)), 1);
    assert_eq!(s.unacked(), 0);
    assert_eq!(seqs(&mut s), vec![1, 2, 3, 5, 6]);
}
