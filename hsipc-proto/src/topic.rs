//! Topics, topic filters and the subscription index, with MQTT's rules.
//!
//! - A [`Topic`] is what an event is published to: `/`-separated levels and no wildcards
//!   (`sensor/kitchen/temp`).
//! - A [`TopicFilter`] is what a subscriber asks for: a topic in which a level may be `+` (exactly
//!   one level) and the last level may be `#` (the parent level and any number of levels below
//!   it). `sensor/+/temp` and `sensor/#` are filters.
//! - A [`TopicIndex`] maps filters to subscriber keys and answers "who wants this topic" by
//!   walking a trie of levels, so the cost depends on the topic and on the matching filters, not
//!   on how many subscriptions exist.
//!
//! Both types are validated once, when they are built ("parse, don't validate"); afterwards
//! matching cannot fail. The rules are those of MQTT 3.1.1 §4.7:
//!
//! - a topic or filter is 1 to [`MAX_TOPIC_LEN`] bytes of UTF-8 without NUL;
//! - empty levels are allowed and significant: `a//b`, `/a` and `a/` are three different topics;
//! - a topic whose first level starts with `$` (such as `$SYS/uptime`) is not matched by a filter
//!   whose first level is `+` or `#`, so `#` does not see the bus's own bookkeeping; subscribe to
//!   `$SYS/#` for that.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::iter::FusedIterator;
use std::ops::ControlFlow;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest topic or filter, in bytes (MQTT's limit for a length-prefixed string).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// A validated, concrete topic: where an event is published.
///
/// Levels are separated by `/`. A topic is never empty, is at most [`MAX_TOPIC_LEN`] bytes, and
/// contains neither NUL nor the wildcards `+` and `#`. [`Display`](fmt::Display) and
/// [`FromStr`] round-trip, and serde (de)serializes a topic as its string, validating it.
///
/// # Examples
///
/// ```
/// use hsipc_proto::topic::{Topic, TopicError};
///
/// let topic = Topic::new("sensor/kitchen/temp")?;
/// assert_eq!(topic.levels().collect::<Vec<_>>(), ["sensor", "kitchen", "temp"]);
/// assert_eq!(topic.to_string().parse::<Topic>()?, topic);
///
/// // Publish topics name one place; wildcards belong in subscriptions.
/// assert!(matches!(Topic::new("sensor/+"), Err(TopicError::WildcardInTopic { .. })));
/// # Ok::<(), TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

/// A validated subscription pattern: a topic whose levels may be the wildcards `+` and `#`.
///
/// `+` stands for exactly one level (possibly empty) and must fill its level; `#` stands for the
/// parent level and every level below it, and must fill the last level. So `sport/+` matches
/// `sport/tennis` and `sport/` but not `sport` or `sport/tennis/x`, while `sport/#` matches
/// `sport`, `sport/tennis` and `sport/tennis/x`. A filter whose first level is a wildcard does not
/// match topics starting with `$`. Every [`Topic`] is also a filter that matches only itself
/// (`TopicFilter::from(topic)`).
///
/// # Examples
///
/// ```
/// use hsipc_proto::topic::{Topic, TopicError, TopicFilter};
///
/// let filter: TopicFilter = "sensor/+/temp".parse()?;
/// assert!(filter.matches(&Topic::new("sensor/kitchen/temp")?));
/// assert!(!filter.matches(&Topic::new("sensor/kitchen/humidity")?));
///
/// let all = TopicFilter::new("#")?;
/// assert!(all.matches(&Topic::new("sensor/kitchen/temp")?));
/// assert!(!all.matches(&Topic::new("$SYS/uptime")?));
///
/// assert_eq!(
///     TopicFilter::new("sensor/#/temp"),
///     Err(TopicError::HashNotLast { filter: "sensor/#/temp".into() }),
/// );
/// # Ok::<(), TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicFilter(String);

/// Why a string is not a valid [`Topic`] or [`TopicFilter`].
#[derive(Error, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TopicError {
    /// The string is empty.
    #[error("topic is empty; give at least one level, e.g. `sensor/temp`")]
    Empty,
    /// The string is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is {len} bytes long, over the limit of {max} bytes; use a shorter topic")]
    TooLong {
        /// Length of the rejected string, in bytes.
        len: usize,
        /// The limit, [`MAX_TOPIC_LEN`].
        max: usize,
    },
    /// The string contains a NUL character.
    #[error("topic `{}` contains a NUL character (`\\0`); remove it", Shown(.topic))]
    ContainsNul {
        /// The rejected string.
        topic: String,
    },
    /// A topic to publish to contains `+` or `#`.
    #[error(
        "topic `{}` contains wildcard `{wildcard}`; wildcards are only allowed in subscription patterns",
        Shown(.topic)
    )]
    WildcardInTopic {
        /// The rejected topic.
        topic: String,
        /// The first wildcard found, `+` or `#`.
        wildcard: char,
    },
    /// A filter has `+` sharing a level with other characters (`a+/b`).
    #[error(
        "topic filter `{}` has `+` inside a level; `+` must fill a whole level, as in `a/+/b`",
        Shown(.filter)
    )]
    PlusNotWholeLevel {
        /// The rejected filter.
        filter: String,
    },
    /// A filter has `#` sharing a level with other characters (`a#`).
    #[error(
        "topic filter `{}` has `#` inside a level; `#` must fill a whole level, as in `a/#`",
        Shown(.filter)
    )]
    HashNotWholeLevel {
        /// The rejected filter.
        filter: String,
    },
    /// A filter has levels after `#` (`a/#/b`).
    #[error(
        "topic filter `{}` has levels after `#`; `#` must be the last level, as in `a/#`",
        Shown(.filter)
    )]
    HashNotLast {
        /// The rejected filter.
        filter: String,
    },
}

/// The levels of a [`Topic`] or [`TopicFilter`], from first to last.
///
/// Empty levels are yielded too: `/a` has the levels `""` and `"a"`.
#[derive(Clone, Debug)]
pub struct Levels<'a>(std::str::Split<'a, char>);

/// Subscriptions indexed by filter, to find the subscribers of a topic quickly.
///
/// The index holds `(filter, key)` entries, where a key names a subscriber (a peer, a
/// subscription id). It is a trie with one node per filter level, so a lookup visits only the
/// nodes on paths that can match the topic: its cost grows with the topic's depth and the number
/// of matching filters, not with the number of entries. Lookups, insertions, removals and drops
/// use explicit work lists, never recursion, so even a topic of [`MAX_TOPIC_LEN`] one-byte levels
/// cannot overflow the stack. Removing an entry frees every node it alone was using.
///
/// A key that subscribed with several filters matching the same topic is reported once.
///
/// # Examples
///
/// ```
/// use hsipc_proto::topic::{Topic, TopicError, TopicFilter, TopicIndex};
///
/// let mut index = TopicIndex::new();
/// index.insert(&TopicFilter::new("sensor/+/temp")?, "thermostat");
/// index.insert(&TopicFilter::new("sensor/#")?, "logger");
/// index.insert(&TopicFilter::new("sensor/kitchen/#")?, "logger");
///
/// let topic = Topic::new("sensor/kitchen/temp")?;
/// assert_eq!(index.matches(&topic), ["logger", "thermostat"]);
/// assert!(!index.any_match(&Topic::new("door/front")?));
///
/// assert!(index.remove(&TopicFilter::new("sensor/#")?, &"logger"));
/// assert_eq!(index.len(), 2);
/// # Ok::<(), TopicError>(())
/// ```
pub struct TopicIndex<K> {
    root: Node<K>,
    len: usize,
}

impl Topic {
    /// Validates `topic` as a topic to publish to.
    ///
    /// # Errors
    ///
    /// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::ContainsNul`], or
    /// [`TopicError::WildcardInTopic`] if it contains `+` or `#`.
    pub fn new(topic: impl Into<String>) -> Result<Self, TopicError> {
        let topic = topic.into();
        match check_topic(&topic) {
            Ok(()) => Ok(Self(topic)),
            Err(defect) => Err(defect.into_error(topic)),
        }
    }

    /// The topic as a string, exactly as it was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The levels of the topic, from first to last; there is always at least one.
    pub fn levels(&self) -> Levels<'_> {
        Levels(self.0.split('/'))
    }
}

impl TopicFilter {
    /// Validates `filter` as a subscription pattern.
    ///
    /// # Errors
    ///
    /// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::ContainsNul`],
    /// [`TopicError::PlusNotWholeLevel`], [`TopicError::HashNotWholeLevel`] or
    /// [`TopicError::HashNotLast`]; when a filter breaks several rules, the first offending level
    /// decides.
    pub fn new(filter: impl Into<String>) -> Result<Self, TopicError> {
        let filter = filter.into();
        match check_filter(&filter) {
            Ok(()) => Ok(Self(filter)),
            Err(defect) => Err(defect.into_error(filter)),
        }
    }

    /// Whether `topic` matches this filter, by MQTT's rules (see [`TopicFilter`]).
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut filter_levels = self.levels();
        let mut topic_levels = topic.levels();
        if topic.as_str().starts_with('$') && self.as_str().starts_with(['+', '#']) {
            // MQTT 3.1.1 §4.7.2: a leading wildcard does not match a `$` topic. Validation
            // guarantees that a leading `+` or `#` is the whole first level.
            return false;
        }
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                // `#` also matches the parent level, so it does not need a topic level.
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(wanted), Some(level)) if wanted == level => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// The filter as a string, exactly as it was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The levels of the filter, from first to last, wildcards included.
    pub fn levels(&self) -> Levels<'_> {
        Levels(self.0.split('/'))
    }

    /// Whether the filter contains `+` or `#`, i.e. may match more than one topic.
    pub fn is_wildcard(&self) -> bool {
        // Validation guarantees these characters only occur as whole levels.
        self.0.contains(['+', '#'])
    }
}

impl<K> TopicIndex<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self { root: Node::default(), len: 0 }
    }

    /// The number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index has no entries.
    pub fn is_empty(&self) -> bool {
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
    pub fn insert(&mut self, filter: &TopicFilter, key: K) -> bool {
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
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> bool {
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
    pub fn for_each_match(&self, topic: &Topic, f: impl FnMut(&K)) {
        let mut sets = Vec::new();
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
    pub fn any_match(&self, topic: &Topic) -> bool {
        self.visit(topic, |_| ControlFlow::Break(())).is_break()
    }

    /// Calls `on_keys` with every non-empty key set whose filter matches `topic`, until it breaks.
    fn visit<'a, B>(
        &'a self,
        topic: &'a Topic,
        mut on_keys: impl FnMut(&'a BTreeSet<K>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let topic = topic.as_str();
        let mut work = Vec::new();
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
    pub fn matches(&self, topic: &Topic) -> Vec<K> {
        let mut keys = Vec::new();
        self.for_each_match(topic, |key| keys.push(key.clone()));
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

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;

    fn try_from(topic: String) -> Result<Self, Self::Error> {
        Self::new(topic)
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;

    fn try_from(topic: &str) -> Result<Self, Self::Error> {
        Self::new(topic)
    }
}

impl From<Topic> for String {
    fn from(topic: Topic) -> Self {
        topic.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TopicFilter {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = TopicError;

    fn try_from(filter: String) -> Result<Self, Self::Error> {
        Self::new(filter)
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    fn try_from(filter: &str) -> Result<Self, Self::Error> {
        Self::new(filter)
    }
}

impl From<TopicFilter> for String {
    fn from(filter: TopicFilter) -> Self {
        filter.0
    }
}

impl From<Topic> for TopicFilter {
    /// The filter matching exactly `topic`: a topic obeys every rule a filter does.
    fn from(topic: Topic) -> Self {
        Self(topic.0)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Levels<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back()
    }
}

impl FusedIterator for Levels<'_> {}

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
        work: &mut Vec<(&'a Self, Option<&'a str>)>,
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

/// A rule broken by a topic or filter, before the offending string is attached.
enum Defect {
    Empty,
    TooLong(usize),
    ContainsNul,
    Wildcard(char),
    PlusNotWholeLevel,
    HashNotWholeLevel,
    HashNotLast,
}

impl Defect {
    fn into_error(self, s: String) -> TopicError {
        match self {
            Self::Empty => TopicError::Empty,
            Self::TooLong(len) => TopicError::TooLong { len, max: MAX_TOPIC_LEN },
            Self::ContainsNul => TopicError::ContainsNul { topic: s },
            Self::Wildcard(wildcard) => TopicError::WildcardInTopic { topic: s, wildcard },
            Self::PlusNotWholeLevel => TopicError::PlusNotWholeLevel { filter: s },
            Self::HashNotWholeLevel => TopicError::HashNotWholeLevel { filter: s },
            Self::HashNotLast => TopicError::HashNotLast { filter: s },
        }
    }
}

/// The rules shared by topics and filters.
fn check_common(s: &str) -> Result<(), Defect> {
    if s.is_empty() {
        Err(Defect::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Err(Defect::TooLong(s.len()))
    } else if s.contains('\0') {
        Err(Defect::ContainsNul)
    } else {
        Ok(())
    }
}

fn check_topic(topic: &str) -> Result<(), Defect> {
    check_common(topic)?;
    match topic.find(['+', '#']) {
        Some(at) => Err(Defect::Wildcard(if topic.as_bytes()[at] == b'+' { '+' } else { '#' })),
        None => Ok(()),
    }
}

fn check_filter(filter: &str) -> Result<(), Defect> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" {
                return Err(Defect::HashNotWholeLevel);
            }
            if levels.peek().is_some() {
                return Err(Defect::HashNotLast);
            }
        } else if level.contains('+') && level != "+" {
            return Err(Defect::PlusNotWholeLevel);
        }
    }
    Ok(())
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

/// Shows a possibly huge, possibly unprintable string in an error message: control characters
/// are escaped and anything past the first few dozen bytes is elided.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_LEN: usize = 64;
        for (at, c) in self.0.char_indices() {
            if at >= SHOWN_LEN {
                return f.write_char('…');
            }
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Formats index entries as a map from filter to keys.
struct DebugEntries<'a, K>(&'a [(String, &'a BTreeSet<K>)]);

impl<K: fmt::Debug> fmt::Debug for DebugEntries<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(filter, keys)| (filter, keys))).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    /// The reference matcher, written from the rule text and sharing no code with the crate:
    /// without `#`, same number of levels and each filter level is `+` or equal; with a trailing
    /// `#`, the same holds for the levels before it against a prefix of the topic.
    fn naive_match(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        let level_ok = |(fl, tl): (&&str, &&str)| *fl == "+" || fl == tl;
        if f[f.len() - 1] == "#" {
            let prefix = &f[..f.len() - 1];
            t.len() >= prefix.len() && prefix.iter().zip(&t).all(level_ok)
        } else {
            f.len() == t.len() && f.iter().zip(&t).all(level_ok)
        }
    }

    fn naive_valid_topic(s: &str) -> bool {
        !s.is_empty() && s.len() <= MAX_TOPIC_LEN && !s.contains(['\0', '+', '#'])
    }

    fn naive_valid_filter(s: &str) -> bool {
        let levels: Vec<&str> = s.split('/').collect();
        !s.is_empty()
            && s.len() <= MAX_TOPIC_LEN
            && !s.contains('\0')
            && levels
                .iter()
                .enumerate()
                .all(|(i, l)| *l == "+" || (*l == "#" && i == levels.len() - 1) || !l.contains(['+', '#']))
    }

    #[test]
    fn valid_topics() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        let cases = [
            "a",
            "a/b",
            "/",
            "/a",
            "a/",
            "a//b",
            "//",
            "$SYS/uptime",
            "$",
            "sport/tennis/player1",
            " spaces are fine ",
            "ünïcödé/✓",
            &max,
        ];
        for case in cases {
            let t = Topic::new(case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
            assert_eq!(t.as_str(), case);
            assert_eq!(t.levels().collect::<Vec<_>>().join("/"), case);
        }
    }

    #[test]
    fn invalid_topics() {
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, TopicError)] = &[
            ("", TopicError::Empty),
            (&too_long, TopicError::TooLong { len: MAX_TOPIC_LEN + 1, max: MAX_TOPIC_LEN }),
            ("a\0b", TopicError::ContainsNul { topic: "a\0b".into() }),
            ("a/+\0", TopicError::ContainsNul { topic: "a/+\0".into() }),
            ("+", TopicError::WildcardInTopic { topic: "+".into(), wildcard: '+' }),
            ("a/#", TopicError::WildcardInTopic { topic: "a/#".into(), wildcard: '#' }),
            ("a#/b+", TopicError::WildcardInTopic { topic: "a#/b+".into(), wildcard: '#' }),
            ("sport/tennis+", TopicError::WildcardInTopic { topic: "sport/tennis+".into(), wildcard: '+' }),
        ];
        for (case, expected) in cases {
            assert_eq!(Topic::new(*case).as_ref(), Err(expected), "{case:?}");
            assert_eq!(case.parse::<Topic>().as_ref(), Err(expected), "{case:?}");
        }
    }

    #[test]
    fn valid_filters() {
        let cases = [
            ("#", true),
            ("+", true),
            ("a/#", true),
            ("+/+", true),
            ("/+", true),
            ("+/", true),
            ("a/+/b", true),
            ("+/#", true),
            ("a//#", true),
            ("/#", true),
            ("sport/tennis/+", true),
            ("$SYS/#", true),
            ("a", false),
            ("/", false),
            ("a//b", false),
            ("$SYS/uptime", false),
        ];
        for (case, wildcard) in cases {
            let f = TopicFilter::new(case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
            assert_eq!(f.as_str(), case);
            assert_eq!(f.is_wildcard(), wildcard, "{case:?}");
        }
    }

    #[test]
    fn invalid_filters() {
        let too_long = "+/".repeat(MAX_TOPIC_LEN / 2 + 1);
        let plus = |f: &str| TopicError::PlusNotWholeLevel { filter: f.into() };
        let hash = |f: &str| TopicError::HashNotWholeLevel { filter: f.into() };
        let last = |f: &str| TopicError::HashNotLast { filter: f.into() };
        let cases: &[(&str, TopicError)] = &[
            ("", TopicError::Empty),
            (&too_long, TopicError::TooLong { len: too_long.len(), max: MAX_TOPIC_LEN }),
            ("a/\0/#", TopicError::ContainsNul { topic: "a/\0/#".into() }),
            ("a+", plus("a+")),
            ("+a", plus("+a")),
            ("++", plus("++")),
            ("a/b+/c", plus("a/b+/c")),
            ("sport+", plus("sport+")),
            ("a#", hash("a#")),
            ("#a", hash("#a")),
            ("##", hash("##")),
            ("+#", hash("+#")),
            ("sport/tennis#", hash("sport/tennis#")),
            ("a/#/b", last("a/#/b")),
            ("#/", last("#/")),
            ("#/#", last("#/#")),
            ("sport/tennis/#/ranking", last("sport/tennis/#/ranking")),
            // The first offending level decides.
            ("a+/#/b", plus("a+/#/b")),
            ("#/a+", last("#/a+")),
        ];
        for (case, expected) in cases {
            assert_eq!(TopicFilter::new(*case).as_ref(), Err(expected), "{case:?}");
            assert_eq!(case.parse::<TopicFilter>().as_ref(), Err(expected), "{case:?}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            Topic::new("a/+").unwrap_err().to_string(),
            "topic `a/+` contains wildcard `+`; wildcards are only allowed in subscription patterns"
        );
        assert_eq!(
            TopicFilter::new("a/#/b").unwrap_err().to_string(),
            "topic filter `a/#/b` has levels after `#`; `#` must be the last level, as in `a/#`"
        );
        assert_eq!(
            Topic::new("a\0").unwrap_err().to_string(),
            "topic `a\\0` contains a NUL character (`\\0`); remove it"
        );
        let long = format!("{}+", "x".repeat(1000));
        let message = Topic::new(long).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains(&format!("`{}…`", "x".repeat(64))), "{message}");
        for error in [
            TopicError::Empty,
            TopicError::TooLong { len: 70_000, max: MAX_TOPIC_LEN },
            TopicFilter::new("a+").unwrap_err(),
            TopicFilter::new("a#").unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(!message.ends_with('.'), "{message}");
            assert!(message.starts_with(char::is_lowercase), "{message}");
        }
    }

    /// MQTT 3.1.1 §4.7.1 and §4.7.2, plus edge cases of empty levels.
    const MATCH_CASES: &[(&str, &str, bool)] = &[
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sports", false),
        ("#", "sport/tennis/player1", true),
        ("#", "/", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/tennis/+", "sport/tennis", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+", "finance", true),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/soccer", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("a/b", "a//b", false),
        ("a/", "a", false),
        ("a", "a/", false),
        ("/#", "/", true),
        ("/#", "a", false),
        ("#", "$SYS/monitor/Clients", false),
        ("#", "$SYS", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+/#", "$SYS", false),
        ("+", "$", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/Clients", "$SYS/monitor/Clients", true),
        ("a/+/#", "a/$SYS/x", true),
        ("+/$x", "a/$x", true),
    ];

    #[test]
    fn mqtt_spec_examples() {
        for &(f, t, expected) in MATCH_CASES {
            assert_eq!(filter(f).matches(&topic(t)), expected, "{f} vs {t}");
            assert_eq!(naive_match(f, t), expected, "naive: {f} vs {t}");
            let mut index = TopicIndex::new();
            index.insert(&filter(f), ());
            assert_eq!(index.any_match(&topic(t)), expected, "index: {f} vs {t}");
        }
    }

    #[test]
    fn index_with_all_spec_filters() {
        let mut index = TopicIndex::new();
        for &(f, _, _) in MATCH_CASES {
            index.insert(&filter(f), f);
            // Same filter under a second key, to exercise sets with several keys.
            index.insert(&filter(f), "~");
        }
        let topics: BTreeSet<&str> = MATCH_CASES.iter().map(|c| c.1).collect();
        for t in topics {
            let mut expected: Vec<&str> = MATCH_CASES.iter().map(|c| c.0).filter(|f| naive_match(f, t)).collect();
            if !expected.is_empty() {
                expected.push("~");
            }
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(index.matches(&topic(t)), expected, "{t}");
        }
    }

    #[test]
    fn from_topic_matches_only_itself() {
        let f = TopicFilter::from(topic("a/b"));
        assert!(f.matches(&topic("a/b")));
        assert!(!f.matches(&topic("a/b/c")));
        assert!(!f.is_wildcard());
    }

    #[test]
    fn insert_remove_prune() {
        let mut index = TopicIndex::new();
        assert!(index.is_empty());
        assert_eq!(index.node_count(), 1);

        assert!(index.insert(&filter("a/b/c"), 1));
        assert_eq!(index.node_count(), 4);
        assert!(!index.insert(&filter("a/b/c"), 1), "duplicate insert");
        assert_eq!((index.len(), index.node_count()), (1, 4));
        assert!(index.insert(&filter("a/b/c"), 2));
        assert!(index.insert(&filter("a/+/#"), 1));
        assert!(index.insert(&filter("a/b"), 3));
        assert!(index.insert(&filter("#"), 4));
        assert!(index.insert(&filter("+"), 5));
        assert_eq!(index.len(), 6);
        // root, a, a/b, a/b/c, a/+, +
        assert_eq!(index.node_count(), 6);

        assert_eq!(index.matches(&topic("a/b/c")), [1, 2, 4]);
        assert_eq!(index.matches(&topic("a/b")), [1, 3, 4]);
        assert_eq!(index.matches(&topic("a")), [4, 5]);
        assert_eq!(index.matches(&topic("$a")), Vec::<i32>::new());

        assert!(!index.remove(&filter("a/b/c"), &9), "absent key");
        assert!(!index.remove(&filter("a/b/c/d"), &1), "absent path");
        assert!(!index.remove(&filter("a/b/#"), &1), "absent filter on a live path");
        assert_eq!((index.len(), index.node_count()), (6, 6));

        assert!(index.remove(&filter("a/b/c"), &1));
        assert_eq!(index.node_count(), 6, "a/b/c still holds key 2");
        assert!(index.remove(&filter("a/b/c"), &2));
        assert_eq!(index.node_count(), 5, "a/b/c freed");
        assert!(!index.remove(&filter("a/b/c"), &2), "double remove");
        assert!(index.remove(&filter("a/b"), &3));
        assert_eq!(index.node_count(), 4, "a/b freed");
        assert!(index.remove(&filter("a/+/#"), &1));
        assert_eq!(index.node_count(), 2, "a and a/+ freed");
        assert!(index.remove(&filter("#"), &4));
        assert!(index.remove(&filter("+"), &5));
        assert_eq!((index.len(), index.node_count()), (0, 1));
        assert!(index.is_empty());
        assert!(!index.any_match(&topic("a/b/c")));
    }

    #[test]
    fn prune_keeps_shared_prefix() {
        let mut index = TopicIndex::new();
        index.insert(&filter("a/b/c/d"), 1);
        index.insert(&filter("a/x"), 2);
        assert_eq!(index.node_count(), 6);
        index.remove(&filter("a/b/c/d"), &1);
        assert_eq!(index.node_count(), 3, "only b, c and d freed");
        assert_eq!(index.matches(&topic("a/x")), [2]);
        index.remove(&filter("a/x"), &2);
        assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn for_each_match_reports_each_key_once_in_order() {
        let mut index = TopicIndex::new();
        for f in ["a/b", "a/+", "a/#", "#", "+/b", "+/+"] {
            index.insert(&filter(f), 7);
            index.insert(&filter(f), 3);
        }
        index.insert(&filter("a/c"), 1);
        let mut seen = Vec::new();
        index.for_each_match(&topic("a/b"), |k| seen.push(*k));
        assert_eq!(seen, [3, 7]);
        assert!(index.any_match(&topic("a/b")));
    }

    #[test]
    fn debug_lists_entries() {
        let mut index = TopicIndex::new();
        index.insert(&filter("a/+"), 2);
        index.insert(&filter("#"), 1);
        index.insert(&filter("/#"), 3);
        assert_eq!(format!("{index:?}"), r##"TopicIndex { len: 3, entries: {"#": {1}, "/#": {3}, "a/+": {2}} }"##);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        // 32 768 one-byte levels: the most a topic can have. Test threads have small stacks, so
        // any per-level recursion (matching, pruning, dropping) would abort here.
        let levels = MAX_TOPIC_LEN / 2 + 1;
        let deep = vec!["a"; levels].join("/");
        assert_eq!(deep.len(), MAX_TOPIC_LEN);
        let t = topic(&deep);
        let exact = filter(&deep);
        let plus = filter(&vec!["+"; levels].join("/"));
        let multi = filter(&format!("{}/#", vec!["a"; levels - 1].join("/")));

        assert!(exact.matches(&t) && plus.matches(&t) && multi.matches(&t));
        let mut index = TopicIndex::new();
        index.insert(&exact, 1);
        index.insert(&plus, 2);
        index.insert(&multi, 3);
        assert_eq!(index.node_count(), 2 * levels + 1);
        assert_eq!(index.matches(&t), [1, 2, 3]);
        assert!(format!("{index:?}").len() > 3 * MAX_TOPIC_LEN);

        assert!(index.remove(&plus, &2));
        assert_eq!(index.node_count(), levels + 1);
        assert!(index.remove(&exact, &1));
        assert_eq!(index.node_count(), levels);
        // Drop the remaining deep chain.
        drop(index);
    }

    #[test]
    fn serde_validates() {
        let t = topic("sensor/x");
        let mut bytes = Vec::new();
        ciborium::into_writer(&t, &mut bytes).unwrap();
        assert_eq!(ciborium::from_reader::<Topic, _>(&bytes[..]).unwrap(), t);

        let mut bad = Vec::new();
        ciborium::into_writer(&"sensor/+", &mut bad).unwrap();
        assert!(ciborium::from_reader::<Topic, _>(&bad[..]).is_err());
        assert_eq!(ciborium::from_reader::<TopicFilter, _>(&bad[..]).unwrap(), filter("sensor/+"));
    }

    fn topic_level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c", "", "$x"])
    }

    fn filter_level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c", "", "$x", "+", "+"])
    }

    fn arb_topic() -> impl Strategy<Value = Topic> {
        prop::collection::vec(topic_level(), 1..6)
            .prop_filter_map("empty topic", |levels| Topic::new(levels.join("/")).ok())
    }

    fn arb_filter() -> impl Strategy<Value = TopicFilter> {
        (prop::collection::vec(filter_level(), 0..6), any::<bool>()).prop_filter_map(
            "empty filter",
            |(mut levels, multi)| {
                if multi {
                    levels.push("#");
                }
                TopicFilter::new(levels.join("/")).ok()
            },
        )
    }

    /// Checks the index against the reference matcher applied to every entry of `model`.
    fn check_index(
        index: &TopicIndex<u8>,
        model: &BTreeSet<(TopicFilter, u8)>,
        topics: &[Topic],
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(index.len(), model.len());
        for t in topics {
            let expected: Vec<u8> = model
                .iter()
                .filter(|(f, _)| naive_match(f.as_str(), t.as_str()))
                .map(|(_, k)| *k)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            prop_assert_eq!(&index.matches(t), &expected, "topic {}", t);
            prop_assert_eq!(index.any_match(t), !expected.is_empty());
            let mut seen = Vec::new();
            index.for_each_match(t, |k| seen.push(*k));
            prop_assert_eq!(seen, expected);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn index_agrees_with_naive_matcher(
            entries in prop::collection::vec((arb_filter(), 0u8..6), 0..24),
            topics in prop::collection::vec(arb_topic(), 1..8),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let mut index = TopicIndex::new();
            let mut model = BTreeSet::new();
            for (f, k) in &entries {
                prop_assert_eq!(index.insert(f, *k), model.insert((f.clone(), *k)));
            }
            check_index(&index, &model, &topics)?;

            if !entries.is_empty() {
                for at in &removals {
                    let (f, k) = &entries[at.index(entries.len())];
                    prop_assert_eq!(index.remove(f, k), model.remove(&(f.clone(), *k)));
                }
            }
            check_index(&index, &model, &topics)?;
            // No leaked nodes: the same size as an index built from the survivors.
            let mut fresh = TopicIndex::new();
            for (f, k) in &model {
                fresh.insert(f, *k);
            }
            prop_assert_eq!(index.node_count(), fresh.node_count());

            for (f, k) in &entries {
                index.remove(f, k);
            }
            prop_assert!(index.is_empty());
            prop_assert_eq!(index.node_count(), 1);
        }

        #[test]
        fn filter_matches_agrees_with_naive_matcher(f in arb_filter(), t in arb_topic()) {
            prop_assert_eq!(f.matches(&t), naive_match(f.as_str(), t.as_str()));
        }

        #[test]
        fn display_from_str_round_trip(f in arb_filter(), t in arb_topic()) {
            prop_assert_eq!(f.to_string().parse::<TopicFilter>(), Ok(f.clone()));
            prop_assert_eq!(t.to_string().parse::<Topic>(), Ok(t.clone()));
            prop_assert_eq!(String::from(TopicFilter::from(t.clone())), t.to_string());
        }

        #[test]
        fn parsers_never_panic(s in any::<String>()) {
            check_parsers(&s)?;
        }

        #[test]
        fn parsers_agree_with_naive_rules(s in "[ab$+#/\\x00]{0,10}") {
            check_parsers(&s)?;
        }
    }

    fn check_parsers(s: &str) -> Result<(), TestCaseError> {
        let t = Topic::new(s);
        let f = TopicFilter::new(s);
        prop_assert_eq!(t.is_ok(), naive_valid_topic(s), "topic {:?}: {:?}", s, t);
        prop_assert_eq!(f.is_ok(), naive_valid_filter(s), "filter {:?}: {:?}", s, f);
        if let Ok(t) = t {
            prop_assert_eq!(t.to_string(), s);
            prop_assert_eq!(t.levels().count(), s.split('/').count());
        }
        if let Ok(f) = f {
            prop_assert_eq!(f.to_string(), s);
        }
        Ok(())
    }
}
