//! The subscription index: a trie of topic filter levels, mapping filters to subscriber keys.
//!
//! Crate-private: the [`Endpoint`](crate::Endpoint) and its peer directory use it to find the
//! subscribers of a published topic.

use std::collections::{BTreeMap, BTreeSet};

use smallvec::SmallVec;
use std::fmt;
use std::ops::ControlFlow;

use super::{Topic, TopicFilter};

/// The nodes still to visit while matching a topic, with the rest of the topic at each: on the
/// stack for any but very branchy indexes.
type Work<'a, K> = SmallVec<[(&'a Node<K>, Option<&'a str>); 8]>;

/// Subscriptions indexed by filter, to find the subscribers of a topic quickly.
///
/// The index holds `(filter, key)` entries, where a key names a subscriber (a peer, a
/// subscription id). It is a trie with one node per filter level, so a lookup visits only the
/// nodes on paths that can match the topic: its cost grows with the topic's depth and the number
/// of matching filters, not with the number of entries. Lookups, insertions, removals and drops
/// use explicit work lists, never recursion, so even a topic of
/// [`MAX_TOPIC_LEN`](super::MAX_TOPIC_LEN) one-byte levels cannot overflow the stack. Removing an
/// entry frees every node it alone was using.
///
/// A key that subscribed with several filters matching the same topic is reported once.
///
/// # Examples
///
/// The index is crate-private, so this is not run as a doctest; the unit test
/// `tests::topic::index_doc_example` runs the same code.
///
/// ```ignore
/// use crate::topic::{Topic, TopicError, TopicFilter, TopicIndex};
///
/// let mut index = TopicIndex::new();
/// index.insert(&TopicFilter::new("sensor/+/temp")?, "thermostat");
/// index.insert(&TopicFilter::new("sensor/#")?, "logger");
/// index.insert(&TopicFilter::new("sensor/kitchen/#")?, "logger");
///
/// let topic = Topic::new("sensor/kitchen/temp")?;
/// assert_eq!(index.matches(&topic).to_vec(), ["logger", "thermostat"]);
/// assert!(!index.any_match(&Topic::new("door/front")?));
///
/// assert!(index.remove(&TopicFilter::new("sensor/#")?, &"logger"));
/// assert_eq!(index.len(), 2);
/// # Ok::<(), TopicError>(())
/// ```
pub(crate) struct TopicIndex<K> {
    root: Node<K>,
    len: usize,
    /// The last topic [`matches_cached`](Self::matches_cached) looked up and its keys; any
    /// change to the index forgets it. A publisher usually publishes on one topic, or a few,
    /// again and again.
    last: Option<(Topic, SmallVec<[K; 4]>)>,
}

impl<K> TopicIndex<K> {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self { root: Node::default(), len: 0, last: None }
    }

    /// The number of `(filter, key)` entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the index has no entries.
    #[allow(dead_code, reason = "used by tests")]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of trie nodes, root included: 1 when the index is empty, for leak checks.
    #[allow(dead_code, reason = "used by leak checks in tests")]
    pub(crate) fn node_count(&self) -> usize {
        let mut count = 0;
        let mut work = vec![&self.root];
        while let Some(node) = work.pop() {
            count += 1;
            work.extend(node.children.values());
            work.extend(node.plus.as_deref());
        }
        count
    }
}

impl<K: Ord> TopicIndex<K> {
    /// Adds the entry `(filter, key)`; returns `false` (and changes nothing) if it was present.
    pub(crate) fn insert(&mut self, filter: &TopicFilter, key: K) -> bool {
        self.last = None;
        let mut node = &mut self.root;
        let mut multi = false;
        for level in filter.levels() {
            node = match level {
                "#" => {
                    multi = true;
                    break;
                }
                "+" => node.plus.get_or_insert_with(Box::default),
                literal => node.children.entry(Box::from(literal)).or_default(),
            };
        }
        let inserted = if multi { node.multi.insert(key) } else { node.exact.insert(key) };
        self.len += usize::from(inserted);
        inserted
    }

    /// Removes the entry `(filter, key)`; returns `false` if it was not present.
    ///
    /// Nodes left without entries or children are freed.
    pub(crate) fn remove(&mut self, filter: &TopicFilter, key: &K) -> bool {
        self.last = None;
        let (path, multi) = trie_path(filter);
        let Some(node) = self.root.descend_mut(&path) else {
            return false;
        };
        let removed = if multi { node.multi.remove(key) } else { node.exact.remove(key) };
        if removed {
            self.len -= 1;
            self.prune(&path);
        }
        removed
    }

    /// Calls `f` once for each key with at least one filter matching `topic`, in ascending order.
    ///
    /// A key is passed once even if several of its filters match.
    pub(crate) fn for_each_match(&self, topic: &Topic, f: impl FnMut(&K)) {
        // On the stack for the usual few matching filters: matching runs for every event.
        let mut sets: SmallVec<[&BTreeSet<K>; 4]> = SmallVec::new();
        let _ = self.visit(topic, |keys| {
            sets.push(keys);
            ControlFlow::<()>::Continue(())
        });
        match sets.as_slice() {
            [] => {}
            // Keys in one set are already sorted and distinct.
            [keys] => keys.iter().for_each(f),
            _ => {
                let mut keys: Vec<&K> = sets.iter().flat_map(|keys| keys.iter()).collect();
                // A stable sort merges the already sorted runs cheaply.
                keys.sort();
                keys.dedup();
                keys.into_iter().for_each(f);
            }
        }
    }

    /// Whether any filter matches `topic`; stops at the first match.
    pub(crate) fn any_match(&self, topic: &Topic) -> bool {
        self.visit(topic, |_| ControlFlow::Break(())).is_break()
    }

    /// Calls `on_keys` with every non-empty key set whose filter matches `topic`, until it breaks.
    fn visit<'a, B>(
        &'a self,
        topic: &'a Topic,
        mut on_keys: impl FnMut(&'a BTreeSet<K>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let topic = topic.as_str();
        let mut work: Work<'a, K> = SmallVec::new();
        // MQTT 3.1.1 §4.7.2: a `$` topic is not matched by a filter starting with a wildcard,
        // so the root's wildcard branches are skipped for it.
        let root_wildcards = !topic.starts_with('$');
        self.root.step(Some(topic), root_wildcards, &mut on_keys, &mut work)?;
        while let Some((node, rest)) = work.pop() {
            node.step(rest, true, &mut on_keys, &mut work)?;
        }
        ControlFlow::Continue(())
    }

    /// Frees the nodes on `path` that no longer hold entries or lead to any.
    fn prune(&mut self, path: &[&str]) {
        // Find the shallowest node from which the rest of the path is a bare chain (no keys, no
        // other branches): detaching that node frees exactly the nodes left unused.
        let mut cut = None;
        let mut node = &self.root;
        for (depth, level) in path.iter().enumerate() {
            let Some(child) = node.child(level) else {
                return;
            };
            let last = depth + 1 == path.len();
            let bare = child.exact.is_empty() && child.multi.is_empty() && child.child_count() == usize::from(!last);
            if !bare {
                cut = None;
            } else if cut.is_none() {
                cut = Some(depth);
            }
            node = child;
        }
        if let Some(depth) = cut {
            if let Some(parent) = self.root.descend_mut(&path[..depth]) {
                parent.detach(path[depth]);
            }
        }
    }
}

impl<K: Ord + Clone> TopicIndex<K> {
    /// The keys with at least one filter matching `topic`, sorted and without duplicates.
    pub(crate) fn matches(&self, topic: &Topic) -> SmallVec<[K; 4]> {
        let mut keys = SmallVec::new();
        self.for_each_match(topic, |key| keys.push(key.clone()));
        keys
    }

    /// As [`matches`](Self::matches), answered from the last lookup when it was for the same
    /// topic and the index has not changed since.
    pub(crate) fn matches_cached(&mut self, topic: &Topic) -> SmallVec<[K; 4]> {
        if let Some((last, keys)) = &self.last {
            if last == topic {
                return keys.clone();
            }
        }
        let keys = self.matches(topic);
        self.last = Some((topic.clone(), keys.clone()));
        keys
    }
}

impl<K> Default for TopicIndex<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug> fmt::Debug for TopicIndex<K> {
    /// Lists the entries as a map from filter to keys, without recursion.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries = Vec::new();
        let mut work = vec![(&self.root, String::new(), true)];
        while let Some((node, path, is_root)) = work.pop() {
            if !node.exact.is_empty() {
                entries.push((path.clone(), &node.exact));
            }
            if !node.multi.is_empty() {
                let filter = if is_root { "#".to_owned() } else { format!("{path}/#") };
                entries.push((filter, &node.multi));
            }
            let join = |level: &str| {
                if is_root { level.to_owned() } else { format!("{path}/{level}") }
            };
            if let Some(plus) = &node.plus {
                work.push((plus, join("+"), false));
            }
            for (level, child) in node.children.iter().rev() {
                work.push((child, join(level), false));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        f.debug_struct("TopicIndex").field("len", &self.len).field("entries", &DebugEntries(&entries)).finish()
    }
}

/// One trie level. The root stands for "no level consumed yet".
struct Node<K> {
    /// Children for literal levels.
    children: BTreeMap<Box<str>, Node<K>>,
    /// The child for a `+` level.
    plus: Option<Box<Node<K>>>,
    /// Keys of filters that end at this node.
    exact: BTreeSet<K>,
    /// Keys of filters that end with `#` right below this node (`#` matches the parent level, so
    /// these match whatever is left of the topic, even nothing).
    multi: BTreeSet<K>,
}

impl<K> Node<K> {
    fn child(&self, level: &str) -> Option<&Self> {
        match level {
            "+" => self.plus.as_deref(),
            literal => self.children.get(literal),
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn descend_mut(&mut self, path: &[&str]) -> Option<&mut Self> {
        let mut node = self;
        for level in path {
            node = match *level {
                "+" => node.plus.as_deref_mut()?,
                literal => node.children.get_mut(literal)?,
            };
        }
        Some(node)
    }

    fn detach(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            literal => {
                self.children.remove(literal);
            }
        }
    }
}

impl<K: Ord> Node<K> {
    /// Matches this node against the unconsumed `rest` of a topic (`None` once every level is
    /// consumed): reports its matching key sets and queues the children to try next.
    fn step<'a, B>(
        &'a self,
        rest: Option<&'a str>,
        wildcards: bool,
        on_keys: &mut impl FnMut(&'a BTreeSet<K>) -> ControlFlow<B>,
        work: &mut Work<'a, K>,
    ) -> ControlFlow<B> {
        if wildcards && !self.multi.is_empty() {
            on_keys(&self.multi)?;
        }
        let Some(rest) = rest else {
            if !self.exact.is_empty() {
                on_keys(&self.exact)?;
            }
            return ControlFlow::Continue(());
        };
        let (level, tail) = match rest.split_once('/') {
            Some((level, tail)) => (level, Some(tail)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(level) {
            work.push((child, tail));
        }
        if let Some(plus) = self.plus.as_deref().filter(|_| wildcards) {
            work.push((plus, tail));
        }
        ControlFlow::Continue(())
    }
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self { children: BTreeMap::new(), plus: None, exact: BTreeSet::new(), multi: BTreeSet::new() }
    }
}

impl<K> Drop for Node<K> {
    /// Dismantles the subtree with a work list: the default drop recurses once per level, and a
    /// filter can be 32 768 levels deep.
    fn drop(&mut self) {
        if self.plus.is_none() && self.children.is_empty() {
            return;
        }
        let mut work: Vec<Self> = Vec::new();
        work.extend(std::mem::take(&mut self.children).into_values());
        work.extend(self.plus.take().map(|node| *node));
        while let Some(mut node) = work.pop() {
            work.extend(std::mem::take(&mut node.children).into_values());
            work.extend(node.plus.take().map(|node| *node));
            // `node` now has no children, so dropping it here does not recurse.
        }
    }
}

/// The trie levels of `filter` (all but a trailing `#`) and whether it ends with `#`.
fn trie_path(filter: &TopicFilter) -> (Vec<&str>, bool) {
    let mut path: Vec<&str> = filter.levels().collect();
    let multi = path.last() == Some(&"#");
    if multi {
        path.pop();
    }
    (path, multi)
}

/// Formats index entries as a map from filter to keys.
struct DebugEntries<'a, K>(&'a [(String, &'a BTreeSet<K>)]);

impl<K: fmt::Debug> fmt::Debug for DebugEntries<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(filter, keys)| (filter, keys))).finish()
    }
}
