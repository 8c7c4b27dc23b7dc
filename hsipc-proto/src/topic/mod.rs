//! Topics and topic filters, with MQTT's rules.
//!
//! - A [`Topic`] is what an event is published to: `/`-separated levels and no wildcards
//!   (`sensor/kitchen/temp`).
//! - A [`TopicFilter`] is what a subscriber asks for: a topic in which a level may be `+` (exactly
//!   one level) and the last level may be `#` (the parent level and any number of levels below
//!   it). `sensor/+/temp` and `sensor/#` are filters.
//!
//! An [`Endpoint`](crate::Endpoint) keeps subscriptions in a trie of levels and answers "who wants
//! this topic" by walking it, so the cost depends on the topic and on the matching filters, not
//! on how many subscriptions exist.
//!
//! Both types are validated once, when they are built ("parse, don't validate"); afterwards
//! matching cannot fail. The rules are those of MQTT 3.1.1 §4.7:
//!
//! - a topic or filter is 1 to [`MAX_TOPIC_LEN`] bytes of UTF-8 without NUL;
//! - empty levels are allowed and significant: `a//b`, `/a` and `a/` are three different topics;
//! - a topic whose first level starts with `$` (such as `$SYS/uptime`) is not matched by a filter
//!   whose first level is `+` or `#`, so `#` does not see the bus's own bookkeeping; subscribe to
//!   `$SYS/#` for that.

mod index;

use smol_str::SmolStr;
use std::fmt::{self, Write as _};
use std::iter::FusedIterator;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub(crate) use self::index::TopicIndex;

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
pub struct Topic(SmolStr);

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

impl Topic {
    /// Validates `topic` as a topic to publish to.
    ///
    /// # Errors
    ///
    /// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::ContainsNul`], or
    /// [`TopicError::WildcardInTopic`] if it contains `+` or `#`.
    pub fn new(topic: impl AsRef<str>) -> Result<Self, TopicError> {
        let topic = topic.as_ref();
        match check_topic(topic) {
            // A topic of up to 23 bytes is held inline: making, cloning and dropping one
            // allocates nothing (it happens for every event, on both sides).
            Ok(()) => Ok(Self(SmolStr::new(topic))),
            Err(defect) => Err(defect.into_error(topic.to_string())),
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
        topic.0.into()
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
        Self(topic.0.into())
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

/// [`check_common`] and no wildcard, in one pass over the bytes (every event's topic is checked
/// on both sides); the defect reported is the one [`check_common`] then a search for the first
/// wildcard would find.
fn check_topic(topic: &str) -> Result<(), Defect> {
    if topic.is_empty() {
        return Err(Defect::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Defect::TooLong(topic.len()));
    }
    // All three are ASCII, so a byte that is one of them is that character.
    match topic.bytes().position(|b| matches!(b, 0 | b'+' | b'#')) {
        None => Ok(()),
        Some(_) if topic.contains('\0') => Err(Defect::ContainsNul),
        Some(at) => Err(Defect::Wildcard(char::from(topic.as_bytes()[at]))),
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
