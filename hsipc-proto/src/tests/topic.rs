//! Topics and filters: validation, MQTT matching, and the subscription index against a naive
//! reference matcher.

use std::collections::BTreeSet;

use proptest::prelude::*;

use crate::topic::{MAX_TOPIC_LEN, Topic, TopicError, TopicFilter, TopicIndex};

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

/// The error a topic's checks report, in their documented order: empty, too long, a NUL
/// anywhere, then the first wildcard.
fn naive_topic_error(s: &str) -> Option<TopicError> {
    if s.is_empty() {
        Some(TopicError::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Some(TopicError::TooLong { len: s.len(), max: MAX_TOPIC_LEN })
    } else if s.contains('\0') {
        Some(TopicError::ContainsNul { topic: s.into() })
    } else {
        let wildcard = s.chars().find(|c| matches!(c, '+' | '#'))?;
        Some(TopicError::WildcardInTopic { topic: s.into(), wildcard })
    }
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
    assert_eq!(Topic::new("a\0").unwrap_err().to_string(), "topic `a\\0` contains a NUL character (`\\0`); remove it");
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
        assert_eq!(index.matches(&topic(t)).to_vec(), expected, "{t}");
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

    assert_eq!(index.matches(&topic("a/b/c")).to_vec(), [1, 2, 4]);
    assert_eq!(index.matches(&topic("a/b")).to_vec(), [1, 3, 4]);
    assert_eq!(index.matches(&topic("a")).to_vec(), [4, 5]);
    assert_eq!(index.matches(&topic("$a")).to_vec(), Vec::<i32>::new());

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
    assert_eq!(index.matches(&topic("a/x")).to_vec(), [2]);
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
    assert_eq!(index.matches(&t).to_vec(), [1, 2, 3]);
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

/// The example in [`TopicIndex`]'s docs, which cannot run as a doctest: the index is crate-private.
#[test]
fn index_doc_example() -> Result<(), TopicError> {
    let mut index = TopicIndex::new();
    index.insert(&TopicFilter::new("sensor/+/temp")?, "thermostat");
    index.insert(&TopicFilter::new("sensor/#")?, "logger");
    index.insert(&TopicFilter::new("sensor/kitchen/#")?, "logger");

    let topic = Topic::new("sensor/kitchen/temp")?;
    assert_eq!(index.matches(&topic).to_vec(), ["logger", "thermostat"]);
    assert!(!index.any_match(&Topic::new("door/front")?));

    assert!(index.remove(&TopicFilter::new("sensor/#")?, &"logger"));
    assert_eq!(index.len(), 2);
    Ok(())
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
    index: &mut TopicIndex<u8>,
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
        prop_assert_eq!(&index.matches(t).to_vec(), &expected, "topic {}", t);
        // Twice: the second from the cache, unless the index changed (then never stale).
        prop_assert_eq!(&index.matches_cached(t).to_vec(), &expected, "topic {} (cached)", t);
        prop_assert_eq!(&index.matches_cached(t).to_vec(), &expected, "topic {} (cached)", t);
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
        check_index(&mut index, &model, &topics)?;

        if !entries.is_empty() {
            for at in &removals {
                let (f, k) = &entries[at.index(entries.len())];
                prop_assert_eq!(index.remove(f, k), model.remove(&(f.clone(), *k)));
            }
        }
        check_index(&mut index, &model, &topics)?;
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
    let naive_error = naive_topic_error(s);
    prop_assert_eq!(t.as_ref().err(), naive_error.as_ref(), "topic {:?}", s);
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
