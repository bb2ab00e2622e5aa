//! The hub's history on disk, across a restart: at a clean shutdown every
//! host topic's in-memory history (each update as it was sent, with its
//! seq) is written to the `history` table, one entry per topic; the next
//! start reads it back into the hub before serving, so a client resuming
//! with `since`, or asking for `history`, across the restart gets what it
//! missed. Read once: the table is emptied as it is loaded, so an older
//! snapshot is never loaded after a later run.
//!
//! An entry is one byte (1: the topic was produced here, 0: by a peer),
//! then the updates as MessagePack `[[seq, json], …]`, deflated.

use std::io::{Read, Write};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::StoreError;
use super::engine::{Engine, Op, Table};
use crate::update::Update;

/// One topic's history read back: its updates, oldest first, and whether
/// it was produced here.
pub struct Restored {
    /// The updates (origin unset).
    pub updates: Vec<Update>,
    /// Produced by this aggregator's own agents.
    pub local: bool,
}

/// Encodes one topic's history.
pub fn encode(local: bool, updates: &[Arc<Update>]) -> Vec<u8> {
    let rows: Vec<(u64, &str)> = updates.iter().map(|u| (u.seq, u.json.as_str())).collect();
    let packed = rmp_serde::to_vec(&rows).expect("updates serialise");
    let mut out = vec![u8::from(local)];
    let mut z = flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::fast());
    z.write_all(&packed).expect("writing to memory");
    z.finish().expect("writing to memory");
    out
}

/// Decodes one topic's history.
pub fn decode(topic: &str, bytes: &[u8]) -> Result<Restored, StoreError> {
    let bad = |what: String| StoreError::Engine(format!("history of {topic}: {what}"));
    let (&local, deflated) = bytes.split_first().ok_or_else(|| bad("empty".into()))?;
    let mut packed = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .read_to_end(&mut packed)
        .map_err(|e| bad(e.to_string()))?;
    let rows: Vec<(u64, String)> =
        rmp_serde::from_slice(&packed).map_err(|e| bad(e.to_string()))?;
    let topic: Arc<str> = topic.into();
    Ok(Restored {
        updates: rows
            .into_iter()
            .map(|(seq, json)| Update::stored(topic.clone(), seq, Utf8Bytes::from(json)))
            .collect(),
        local: local == 1,
    })
}

/// Replaces the stored history with `topics` (name, produced here, updates),
/// in one transaction per `batch` topics; returns the topics written.
pub fn save(
    engine: &dyn Engine,
    topics: impl Iterator<Item = (Arc<str>, bool, Vec<Arc<Update>>)>,
    batch: usize,
) -> Result<usize, StoreError> {
    clear(engine)?;
    let mut ops = Vec::new();
    let mut written = 0;
    for (topic, local, updates) in topics {
        if updates.is_empty() {
            continue;
        }
        ops.push(Op::Put(
            Table::History,
            topic.as_bytes().to_vec(),
            encode(local, &updates),
        ));
        written += 1;
        if ops.len() >= batch {
            engine.apply(&std::mem::take(&mut ops))?;
        }
    }
    engine.apply(&ops)?;
    Ok(written)
}

/// Topics read back, and the last key read (`None`: nothing was left).
pub type Taken = (Vec<(String, Restored)>, Option<Vec<u8>>);

/// Reads up to `max` topics after `after` (a topic name; empty: from the
/// start), deleting them from the table; returns them and the last name
/// read (`None` once there is nothing left).
pub fn take(engine: &dyn Engine, after: &[u8], max: usize) -> Result<Taken, StoreError> {
    let mut raw: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    engine.scan(Table::History, after, &[0xff; 1], &mut |k, v| {
        if k != after {
            raw.push((k.to_vec(), v.to_vec()));
        }
        raw.len() < max
    })?;
    let last = raw.last().map(|(k, _)| k.clone());
    let ops: Vec<Op> = raw
        .iter()
        .map(|(k, _)| Op::Delete(Table::History, k.clone()))
        .collect();
    let mut out = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        let topic = String::from_utf8_lossy(&k).into_owned();
        match decode(&topic, &v) {
            Ok(r) => out.push((topic, r)),
            Err(e) => {
                tracing::warn!(cause = %e, "store: a topic's history did not decode; skipped")
            }
        }
    }
    engine.apply(&ops)?;
    Ok((out, last))
}

/// Empties the history table.
fn clear(engine: &dyn Engine) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    engine.scan(Table::History, &[], &[0xff; 1], &mut |k, _| {
        keys.push(Op::Delete(Table::History, k.to_vec()));
        true
    })?;
    engine.apply(&keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_history_survives_encoding() {
        let topic: Arc<str> = "host.a.cpu".into();
        let updates: Vec<Arc<Update>> = (1..=3)
            .map(|s| {
                Arc::new(Update::stored(
                    topic.clone(),
                    s,
                    format!("{{\"topic\":\"host.a.cpu\",\"seq\":{s}}}").into(),
                ))
            })
            .collect();
        let back = decode("host.a.cpu", &encode(false, &updates)).unwrap();
        assert!(!back.local);
        let got: Vec<(u64, &str)> = back
            .updates
            .iter()
            .map(|u| (u.seq, u.json.as_str()))
            .collect();
        let want: Vec<(u64, &str)> = updates.iter().map(|u| (u.seq, u.json.as_str())).collect();
        assert_eq!(got, want);
        assert!(decode("t", &[]).is_err());
        assert!(decode("t", &[1, 2, 3]).is_err());
    }
}
