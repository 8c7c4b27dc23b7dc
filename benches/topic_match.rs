//! Topic matching: the subscription index against one published topic, and topic parsing.
//!
//! Run with `cargo bench --bench topic_match`.

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use proto::topic::{Topic, TopicFilter, TopicIndex};

const ROOMS: u32 = 300;
const KINDS: [&str; 30] = [
    "temp", "humidity", "co2", "pressure", "light", "noise", "motion", "door", "window", "smoke", "k10", "k11", "k12",
    "k13", "k14", "k15", "k16", "k17", "k18", "k19", "k20", "k21", "k22", "k23", "k24", "k25", "k26", "k27", "k28",
    "k29",
];

/// 10 000 subscriptions: 9 000 literal `sensor/{room}/{kind}`, 600 `sensor/{room}/+` (two
/// subscribers per room), 300 `+/{room}/temp` and 100 `sensor/#`.
fn filters() -> Vec<TopicFilter> {
    let mut filters = Vec::with_capacity(10_000);
    for room in 0..ROOMS {
        for kind in KINDS {
            filters.push(format!("sensor/room{room}/{kind}"));
        }
    }
    for room in 0..2 * ROOMS {
        filters.push(format!("sensor/room{}/+", room % ROOMS));
    }
    for room in 0..ROOMS {
        filters.push(format!("+/room{room}/temp"));
    }
    filters.extend((0..100).map(|_| "sensor/#".to_owned()));
    assert_eq!(filters.len(), 10_000);
    filters.into_iter().map(|f| TopicFilter::new(f).expect("benchmark filters are valid")).collect()
}

fn index(filters: &[TopicFilter]) -> TopicIndex<u32> {
    let mut index = TopicIndex::new();
    for (key, filter) in (0..).zip(filters) {
        index.insert(filter, key);
    }
    index
}

fn bench_match(c: &mut Criterion) {
    let filters = filters();
    let index = index(&filters);
    let topic = Topic::new("sensor/room42/temp").expect("benchmark topic is valid");
    // 1 literal + 2 `sensor/room42/+` + 1 `+/room42/temp` + 100 `sensor/#`.
    assert_eq!(index.matches(&topic).len(), 104);

    c.bench_function("topic/match_10k", |b| b.iter(|| index.matches(black_box(&topic))));
    c.bench_function("topic/for_each_match_10k", |b| {
        b.iter(|| {
            let mut count = 0_u32;
            index.for_each_match(black_box(&topic), |_| count += 1);
            count
        })
    });
    c.bench_function("topic/any_match_10k", |b| b.iter(|| index.any_match(black_box(&topic))));
    // The linear scan the index avoids, for comparison.
    c.bench_function("topic/scan_10k", |b| {
        b.iter(|| {
            let topic = black_box(&topic);
            filters.iter().filter(|f| f.matches(topic)).count()
        })
    });
}

fn bench_parse(c: &mut Criterion) {
    c.bench_function("topic/parse", |b| b.iter(|| Topic::new(black_box("sensor/room42/temp"))));
    c.bench_function("topic/parse_filter", |b| b.iter(|| TopicFilter::new(black_box("sensor/+/temp/#"))));
}

// `criterion_group!` generates an undocumented `pub fn`; a private module keeps it internal.
mod group {
    use std::time::Duration;

    use criterion::{Criterion, criterion_group};

    use super::{bench_match, bench_parse};

    criterion_group! {
        name = benches;
        config = Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        targets = bench_match, bench_parse
    }
}
criterion_main!(group::benches);
