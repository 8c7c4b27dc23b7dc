//! Topic matching: publishing to an endpoint with 10 000 local subscriptions (matched through
//! its subscription trie) against a linear scan of the same filters, and topic parsing.
//!
//! Run with `cargo bench --bench topic_match`.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_main};
use proto::topic::{Topic, TopicFilter};
use proto::{Config, Endpoint, Event, Output, PeerId};

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

/// An endpoint alone on its bus, subscribed to every filter, with its outputs drained.
fn endpoint(filters: &[TopicFilter]) -> Endpoint {
    let mut ep = Endpoint::new(Config::default(), PeerId(1), "topic-bench", std::process::id(), Instant::now());
    for filter in filters {
        ep.subscribe(filter.clone(), false).expect("subscribing succeeds");
        // Each new pattern queues an announce; drop them so they do not pile up.
        while ep.poll_output().is_some() {}
    }
    ep
}

/// Publishes `body` to `topic` and drains the outputs; returns how many local subscriptions the
/// event was delivered to.
fn publish(ep: &mut Endpoint, topic: &Topic, body: &Bytes) -> usize {
    ep.publish(Instant::now(), topic, body.clone(), proto::NoCredit::Refuse).expect("publishing succeeds");
    let mut delivered = 0;
    while let Some(out) = ep.poll_output() {
        if let Output::Event(Event::Published { subscriptions, .. }) = out {
            delivered += subscriptions.len();
        }
    }
    delivered
}

fn bench_match(c: &mut Criterion) {
    let filters = filters();
    let topic = Topic::new("sensor/room42/temp").expect("benchmark topic is valid");
    let body = Bytes::from_static(b"21.5");
    // 1 literal + 2 `sensor/room42/+` + 1 `+/room42/temp` + 100 `sensor/#`.
    assert_eq!(filters.iter().filter(|f| f.matches(&topic)).count(), 104);

    // The endpoint looks the topic up in its directory and in its subscription trie, then queues
    // one event naming the 104 matching subscriptions. Subscribing 10 000 times takes a while
    // (each new pattern is re-announced), so the endpoint is only built if this benchmark runs.
    let mut ep = None;
    c.bench_function("topic/publish_10k", |b| {
        let ep = ep.get_or_insert_with(|| {
            let mut ep = endpoint(&filters);
            assert_eq!(publish(&mut ep, &topic, &body), 104);
            ep
        });
        b.iter(|| publish(ep, black_box(&topic), &body))
    });
    // The linear scan the trie avoids, for comparison.
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
