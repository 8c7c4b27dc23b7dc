//! Hash maps keyed by ids (peers, calls, subscriptions) and names, for the hot paths.
//!
//! They hash with `foldhash` instead of SipHash: every event and call looks up several of them
//! on both sides, and SipHash was about 5 % of an event's cost. foldhash does not claim to
//! resist hash flooding the way SipHash does, and many keys here are picked by peers (their
//! ids, their request ids, the services they announce). So each map's seed is drawn from the
//! operating system's randomness (through std's `RandomState`), never from addresses or the
//! clock: another process cannot compute keys that collide in it. The maps are bounded too
//! (peers, calls in flight, subscriptions), which bounds what collisions could cost.

use std::hash::BuildHasher;

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};

/// A [`std::collections::HashMap`] with a fast hasher, randomly seeded per map.
pub type FastMap<K, V> = std::collections::HashMap<K, V, RandomlySeeded>;

/// The hasher of a [`FastMap`]: foldhash with a per-map seed from the operating system's
/// randomness.
#[derive(Clone, Debug)]
pub struct RandomlySeeded(SeedableRandomState);

impl Default for RandomlySeeded {
    fn default() -> Self {
        // std's `RandomState` holds keys from the OS's randomness (drawn once per thread, then
        // counted up); hashing through it turns them into a fresh, unpredictable seed.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
        RandomlySeeded(SeedableRandomState::with_seed(seed, SharedSeed::global_random()))
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
