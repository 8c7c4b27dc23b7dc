//! Hash maps keyed by ids (peers, calls, subscriptions) and names, for the hot paths.
//!
//! They hash with `foldhash`'s seeded hasher instead of SipHash: every event and call looks up
//! several of them on both sides, and SipHash was about 5 % of an event's cost. Each map gets
//! its own random seed, so keys a peer picks cannot be aimed at a map's buckets ahead of time.

/// A [`std::collections::HashMap`] with a fast, per-map seeded hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A [`std::collections::HashSet`] with a fast, per-map seeded hasher.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
