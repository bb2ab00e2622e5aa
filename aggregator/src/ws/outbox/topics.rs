//! The hasher of an outbox's per-topic maps: foldhash, seeded at random
//! once per process, with no state in each map (std's `RandomState` costs
//! every map 16 bytes, and SipHash is slow for the two lookups of each
//! update pushed to each connection).

use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::fast::{FoldHasher, RandomState};

/// Builds the process's topic hasher.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TopicHasher;

impl BuildHasher for TopicHasher {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        static SEED: OnceLock<RandomState> = OnceLock::new();
        SEED.get_or_init(RandomState::default).build_hasher()
    }
}
