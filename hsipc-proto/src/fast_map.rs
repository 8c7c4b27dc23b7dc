//! Hash maps keyed by ids (peers, calls, subscriptions) and names, for the hot paths.
//!
//! They hash with `foldhash` instead of SipHash: every event and call looks up several of them
//! on both sides, and SipHash was about 5 % of an event's cost. foldhash does not claim to
//! resist hash flooding the way SipHash does, and many keys here are picked by peers (their
//! ids, their request ids, the services they announce). So both of foldhash's seeds are drawn
//! from the operating system's randomness (through std's `RandomState`), not from addresses
//! and the clock as foldhash's own are: the seed shared by all maps once per process, and each
//! map's own. Another process cannot compute keys that collide in them. The maps are bounded
//! too (peers, calls in flight, subscriptions), which bounds what collisions could cost.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};

/// A [`std::collections::HashMap`] with a fast hasher, randomly seeded per map.
pub type FastMap<K, V> = std::collections::HashMap<K, V, RandomlySeeded>;

/// The hasher of a [`FastMap`]: foldhash seeded from the operating system's randomness.
#[derive(Clone, Debug)]
pub struct RandomlySeeded(SeedableRandomState);

/// A seed from the operating system's randomness: std's `RandomState` holds keys drawn from it
/// (once per thread, then counted up); hashing through it turns them into a fresh one.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0u64)
}

impl Default for RandomlySeeded {
    fn default() -> Self {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random_u64()));
        RandomlySeeded(SeedableRandomState::with_seed(random_u64(), shared))
    }
}

impl BuildHasher for RandomlySeeded {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_maps_hash_the_same_key_differently() {
        let (a, b) = (RandomlySeeded::default(), RandomlySeeded::default());
        // Equal by chance once in 2^64.
        assert_ne!(a.hash_one(42u64), b.hash_one(42u64));
        assert_eq!(a.hash_one(42u64), a.hash_one(42u64));
    }
}
