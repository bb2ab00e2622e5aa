//! Messages larger than the broker takes, cut into numbered chunks.
//!
//! The broker refuses a message above the `max_payload` it announces (1 MiB
//! by default), and a list of every host or every topic outgrows that at a
//! few thousand hosts. A presence announcement and a catch-up request are
//! therefore sent as `count` chunks numbered `index` 0.. under one
//! `generation` (presence) or `request` (catch-up) id, each a JSON object
//! below [`budget`] bytes. Chunks of one sender on one subject arrive in
//! order, so a receiver assembles them as they come ([`Assembly`]) and
//! acts on the whole only: a lost chunk voids that generation, never
//! applies half of it.
//!
//! Catch-up answers are chunked too (newline-separated updates, see
//! [`super::wire::chunk`]), with headers numbering them and a last message
//! saying how many chunks and updates were sent ([`DONE`]).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::wire::PresenceHost;
use crate::ingest::registry::HostView;
use crate::update::HostEvent;

/// Header on each catch-up answer chunk: its index, from 0.
pub const CHUNK: &str = "Hostpulse-Chunk";
/// Header on the last message of an answer: `<chunks> <updates>` sent.
pub const DONE: &str = "Hostpulse-Done";
/// Header on the first message of an answer (sent as soon as the request is
/// in, so the asker knows who is answering before any history arrives).
pub const BEGIN: &str = "Hostpulse-Begin";

/// Header on a catch-up request asked again of some peers only: their
/// names, comma-separated; the others ignore it.
pub const TO: &str = "Hostpulse-To";

/// Most chunks one announcement or request may have (a receiver refuses
/// more rather than hold them).
pub const MAX_CHUNKS: u32 = 4096;

/// Payload bytes to fill per message under the broker's `max_payload`,
/// leaving room for headers and the envelope.
pub fn budget(max_payload: usize) -> usize {
    let headroom = (max_payload / 4).min(4096);
    max_payload.saturating_sub(headroom).max(512)
}

/// Groups items of the given encoded lengths (plus one separator each)
/// into runs of at most `room` bytes, in order; always at least one run
/// (maybe empty). An item larger than `room` alone is left out and counted.
fn pack(lengths: impl Iterator<Item = usize>, room: usize) -> (Vec<Vec<usize>>, usize) {
    let mut runs: Vec<Vec<usize>> = vec![Vec::new()];
    let (mut used, mut skipped) = (0, 0);
    for (i, len) in lengths.enumerate() {
        if len + 1 > room {
            skipped += 1;
            continue;
        }
        if used + len + 1 > room && runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
            used = 0;
        }
        used += len + 1;
        runs.last_mut().expect("one run at least").push(i);
    }
    (runs, skipped)
}

/// A host as a presence chunk sends it (borrowed: nothing is copied).
#[derive(Serialize)]
struct HostRef<'a> {
    online: bool,
    last_seen: &'a Option<String>,
    agent: &'a HostEvent,
}

/// One chunk of a node's announcement of its hosts.
#[derive(Debug, Deserialize)]
pub struct PresenceChunk {
    /// Node name.
    pub node: String,
    /// Which announcement this chunk belongs to.
    pub generation: u64,
    /// This chunk's place, from 0.
    pub index: u32,
    /// Chunks in the announcement.
    pub count: u32,
    /// The node is shutting down: forget its hosts at once.
    #[serde(default)]
    pub leaving: bool,
    /// Some of the hosts attached to it now.
    pub hosts: Vec<PresenceHost>,
}

/// A presence announcement of `hosts`, chunked to `budget` bytes each;
/// also how many hosts were left out, each alone larger than that.
pub fn presence(
    node: &str,
    generation: u64,
    leaving: bool,
    hosts: &[HostView],
    budget: usize,
) -> (Vec<Bytes>, usize) {
    let items: Vec<Vec<u8>> = hosts
        .iter()
        .map(|v| {
            serde_json::to_vec(&HostRef {
                online: v.online,
                last_seen: &v.last_seen,
                agent: &v.agent,
            })
            .expect("a host serialises")
        })
        .collect();
    let node_json = serde_json::to_string(node).expect("a name serialises");
    let envelope = node_json.len() + 120;
    let (runs, skipped) = pack(
        items.iter().map(Vec::len),
        budget.saturating_sub(envelope).max(1),
    );
    let count = runs.len();
    let chunks = runs
        .iter()
        .enumerate()
        .map(|(index, run)| {
            let mut out = format!(
                "{{\"node\":{node_json},\"generation\":{generation},\"index\":{index},\"count\":{count},\"leaving\":{leaving},\"hosts\":["
            )
            .into_bytes();
            for (n, &i) in run.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&items[i]);
            }
            out.extend_from_slice(b"]}");
            Bytes::from(out)
        })
        .collect();
    (chunks, skipped)
}

/// One chunk of a request for what a node missed.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestChunk {
    /// Who asks (it does not answer itself).
    pub node: String,
    /// Which request this chunk belongs to.
    pub request: u64,
    /// This chunk's place, from 0.
    pub index: u32,
    /// Chunks in the request.
    pub count: u32,
    /// Topic → the last seq the asker holds; topics named in no chunk are
    /// sent whole.
    pub floors: HashMap<String, u64>,
    /// The asker is back after losing the broker: what it could not publish
    /// meanwhile is only in its history, so every node that hears this
    /// catches up once in turn (a request made for that reason says
    /// `false`, so it never starts another round).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconnect: bool,
}

/// A catch-up request listing every floor, chunked to `budget` bytes each.
pub fn request(
    node: &str,
    request: u64,
    floors: &HashMap<String, u64>,
    budget: usize,
    reconnect: bool,
) -> Vec<Bytes> {
    let entries: Vec<(&String, &u64)> = floors.iter().collect();
    // `"topic":seq,` with room for escapes.
    let sizes = entries.iter().map(|(t, _)| t.len() + 24);
    let (runs, _) = pack(sizes, budget.saturating_sub(node.len() + 120).max(64));
    let count = runs.len() as u32;
    runs.iter()
        .enumerate()
        .map(|(index, run)| {
            let chunk = RequestChunk {
                node: node.to_string(),
                request,
                index: index as u32,
                count,
                reconnect,
                floors: run
                    .iter()
                    .map(|&i| (entries[i].0.clone(), *entries[i].1))
                    .collect(),
            };
            Bytes::from(serde_json::to_vec(&chunk).expect("a request serialises"))
        })
        .collect()
}

/// Why chunks were not assembled.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// A chunk is missing (lost on the way): the partial set is dropped.
    #[error("chunk {got} of {id} arrived while chunk {expected} was due")]
    Gap {
        /// The id the chunks belong to.
        id: u64,
        /// The index that was due.
        expected: u32,
        /// The index that came.
        got: u32,
    },
    /// A count of zero, above [`MAX_CHUNKS`], or an index beyond it.
    #[error("chunk {index} of {count} is out of bounds")]
    Bounds {
        /// Its index.
        index: u32,
        /// Its count.
        count: u32,
    },
}

/// The chunks of one sender's latest announcement or request, as they come.
#[derive(Debug)]
pub struct Assembly<T> {
    id: u64,
    count: u32,
    next: u32,
    parts: Vec<T>,
}

impl<T> Assembly<T> {
    /// Takes chunk `index` of `count` of message `id`. A chunk 0 starts
    /// over (a newer message replaces an unfinished one). Returns every
    /// part once the last arrives.
    pub fn take(
        slot: &mut Option<Self>,
        id: u64,
        index: u32,
        count: u32,
        part: T,
    ) -> Result<Option<Vec<T>>, AssemblyError> {
        if count == 0 || count > MAX_CHUNKS || index >= count {
            *slot = None;
            return Err(AssemblyError::Bounds { index, count });
        }
        if index == 0 {
            *slot = Some(Self {
                id,
                count,
                next: 0,
                parts: Vec::with_capacity(count.min(64) as usize),
            });
        }
        let Some(a) = slot.as_mut().filter(|a| a.id == id && a.count == count) else {
            *slot = None;
            return Err(AssemblyError::Gap {
                id,
                expected: 0,
                got: index,
            });
        };
        if a.next != index {
            let expected = a.next;
            *slot = None;
            return Err(AssemblyError::Gap {
                id,
                expected,
                got: index,
            });
        }
        a.next += 1;
        a.parts.push(part);
        if a.next < a.count {
            return Ok(None);
        }
        Ok(slot.take().map(|a| a.parts))
    }
}

#[cfg(test)]
mod tests;
