//! The peer directory: who is on the bus, what each peer serves, what it subscribes to.
//!
//! Learned from announce and goodbye frames; announces double as heartbeats. Service lookup is a
//! hash map and topic lookup a trie ([`TopicIndex`]), so neither scans every peer.

use std::collections::{BTreeMap, BTreeSet};

use crate::fast_map::FastMap as HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::id::PeerId;
use crate::topic::{TopicFilter, TopicIndex};

/// What a peer says about itself in its announce frames.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The hub's name (unique on the bus).
    pub name: String,
    /// The operating-system process id, so a peer's death can be watched for on one machine.
    pub pid: u32,
    /// Services it serves (method names up to their last `.`).
    pub services: Vec<String>,
    /// Topic patterns it subscribes to.
    pub patterns: Vec<String>,
    /// Those of its patterns with a reliable subscription: events on them take its credit.
    #[serde(default)]
    pub reliable: Vec<String>,
    /// The credit it grants each publisher for events to its reliable subscriptions.
    #[serde(default)]
    pub event_window: u32,
    /// The same credit in bytes of event payloads; 0 (and a peer that announces none) bounds
    /// nothing.
    #[serde(default)]
    pub event_window_bytes: u64,
    /// How many peers the sender knows, itself included: a newcomer has finished discovery
    /// once it knows as many.
    #[serde(default)]
    pub peers: u32,
}

/// A peer as the directory knows it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its id.
    pub id: PeerId,
    /// What it announced.
    pub info: PeerInfo,
    pub(crate) generation: u64,
    pub(crate) last_seen: Instant,
    pub(crate) filters: Vec<TopicFilter>,
    pub(crate) reliable_filters: Vec<TopicFilter>,
}

/// How a peer's announce changed the directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    New,
    Changed,
    Same,
}

#[derive(Debug, Default)]
pub(crate) struct Directory {
    peers: BTreeMap<PeerId, Peer>,
    providers: HashMap<String, BTreeSet<PeerId>>,
    topics: TopicIndex<PeerId>,
    /// The patterns of reliable subscriptions only.
    reliable_topics: TopicIndex<PeerId>,
    round_robin: u64,
}

impl Directory {
    /// Adds or refreshes a peer from its announce. Invalid patterns in it are skipped.
    pub(crate) fn learn(&mut self, now: Instant, id: PeerId, generation: u64, info: PeerInfo) -> Learned {
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_seen = now;
            if generation <= p.generation {
                return Learned::Same;
            }
        }
        let filters = parse_filters(id, &info.patterns);
        let reliable_filters = parse_filters(id, &info.reliable);
        let existed = self.unindex(id);
        for s in &info.services {
            self.providers.entry(s.clone()).or_default().insert(id);
        }
        for f in &filters {
            self.topics.insert(f, id);
        }
        for f in &reliable_filters {
            self.reliable_topics.insert(f, id);
        }
        self.peers.insert(id, Peer { id, info, generation, last_seen: now, filters, reliable_filters });
        if existed { Learned::Changed } else { Learned::New }
    }

    /// Updates the local peer's own entry (it never expires, so its `last_seen` is kept).
    pub(crate) fn learn_local(&mut self, id: PeerId, generation: u64, info: PeerInfo) {
        if let Some(seen) = self.peers.get(&id).map(|p| p.last_seen) {
            self.learn(seen, id, generation, info);
        }
    }

    /// Marks a peer as heard from.
    pub(crate) fn touch(&mut self, now: Instant, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_seen = now;
        }
    }

    /// Forgets a peer; returns whether it was known.
    pub(crate) fn remove(&mut self, id: PeerId) -> bool {
        let existed = self.unindex(id);
        self.peers.remove(&id);
        existed
    }

    /// Peers whose last announce is at or before `cutoff`.
    pub(crate) fn silent_since(&self, cutoff: Instant, except: PeerId) -> Vec<PeerId> {
        self.peers.values().filter(|p| p.id != except && p.last_seen <= cutoff).map(|p| p.id).collect()
    }

    /// A provider of `service`, round-robin over all of them (fair across calls).
    pub(crate) fn pick_provider(&mut self, service: &str) -> Option<PeerId> {
        let set = self.providers.get(service)?;
        if set.is_empty() {
            return None;
        }
        self.round_robin = self.round_robin.wrapping_add(1);
        set.iter().nth((self.round_robin % set.len() as u64) as usize).copied()
    }

    pub(crate) fn serves(&self, peer: PeerId, service: &str) -> bool {
        self.providers.get(service).is_some_and(|s| s.contains(&peer))
    }

    pub(crate) fn subscribers(&mut self, topic: &crate::topic::Topic) -> smallvec::SmallVec<[PeerId; 4]> {
        self.topics.matches_cached(topic)
    }

    /// The peers with a reliable subscription matching `topic`.
    pub(crate) fn reliable_subscribers(&mut self, topic: &crate::topic::Topic) -> smallvec::SmallVec<[PeerId; 4]> {
        self.reliable_topics.matches_cached(topic)
    }

    /// Whether some peer subscribes to a pattern matching `topic`.
    pub(crate) fn has_subscriber(&self, topic: &crate::topic::Topic) -> bool {
        self.topics.any_match(topic)
    }

    pub(crate) fn get(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Removes a peer's services and patterns from the indexes; returns whether it was known.
    fn unindex(&mut self, id: PeerId) -> bool {
        let Some(old) = self.peers.get(&id) else {
            return false;
        };
        for s in &old.info.services {
            if let Some(set) = self.providers.get_mut(s) {
                set.remove(&id);
                if set.is_empty() {
                    self.providers.remove(s);
                }
            }
        }
        for f in &old.filters {
            self.topics.remove(f, &id);
        }
        for f in &old.reliable_filters {
            self.reliable_topics.remove(f, &id);
        }
        true
    }
}

/// The valid patterns of an announce; invalid ones are skipped.
fn parse_filters(id: PeerId, patterns: &[String]) -> Vec<TopicFilter> {
    patterns
        .iter()
        .filter_map(|p| match TopicFilter::new(p) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(peer = %id, pattern = %p, error = %e, "ignoring invalid pattern in announce");
                None
            }
        })
        .collect()
}
