//! Reliable subscriptions across processes: a burst reaches every reliable subscriber complete
//! and in order; a subscriber that stops reading is cut off (and told) while the others keep
//! receiving; a subscriber that dies frees its publisher at once.

mod common;

use std::time::{Duration, Instant};

use common::{Peer, command, env, env_or, report, unique_bus};
use hsipc::Error;
use hsipc::blocking::ProcessHub;

const LONG: Duration = Duration::from_secs(60);
const BURST: u32 = 20_000;

#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    common::watch_parent(Duration::from_secs(120));
    let mut builder = ProcessHub::builder(&env("HSIPC_NAME")).event_window(env_or("HSIPC_WINDOW", 256));
    if let Ok(bytes) = std::env::var("HSIPC_WINDOW_BYTES") {
        builder = builder.event_window_bytes(bytes.parse().unwrap());
    }
    if let Ok(ms) = std::env::var("HSIPC_PUBLISH_TIMEOUT_MS") {
        builder = builder.publish_timeout(Duration::from_millis(ms.parse().unwrap()));
    }
    let hub = builder.build().unwrap();
    match role.as_str() {
        "reader" => reader(&hub),
        "stuck" => stuck(&hub),
        "publisher" => publisher(&hub),
        other => panic!("unknown role {other}"),
    }
}

/// Reads every event as fast as it can, until it has `HSIPC_COUNT`.
fn reader(hub: &ProcessHub) {
    let events = hub.subscribe::<u32>("burst/#").unwrap();
    report("READY");
    let want: u32 = env_or("HSIPC_COUNT", BURST);
    let (mut count, mut missed, mut in_order) = (0u32, 0u64, true);
    while count < want {
        let event = events.recv_timeout(LONG).unwrap();
        missed += event.missed;
        in_order &= event.payload == count;
        count += 1;
    }
    report(format!("GOT {count} missed={missed} in_order={in_order}"));
    while command().is_some() {}
}

/// Subscribes and reads nothing until told to; then accounts for every event: taken, or
/// reported lost.
fn stuck(hub: &ProcessHub) {
    let events = hub.subscribe::<u32>("burst/#").unwrap();
    report("READY");
    assert_eq!(command().as_deref(), Some("read"));
    let want: u64 = env_or("HSIPC_COUNT", u64::from(BURST));
    let (mut taken, mut lost, mut trace) = (0u64, 0u64, Vec::new());
    while taken + lost < want {
        match events.recv_timeout(LONG) {
            Ok(event) => {
                assert_eq!(event.missed, 0, "a loss is reported when it happens, not with a later event");
                taken += 1;
                if trace.last().is_none_or(|t: &String| t.starts_with("lost")) {
                    trace.push(format!("from {}", event.payload));
                }
            }
            Err(Error::EventsLost { publisher, missed }) => {
                assert_eq!(publisher, "pub");
                lost += missed;
                trace.push(format!("lost {missed}"));
            }
            Err(e) => panic!("{e}"),
        }
    }
    report(format!("ACCOUNTED taken={taken} lost={lost} trace={}", trace.join(",")));
    while command().is_some() {}
}

/// Waits for `HSIPC_SUBSCRIBERS` subscribers, publishes `HSIPC_COUNT` events without pausing.
fn publisher(hub: &ProcessHub) {
    let subscribers: usize = env_or("HSIPC_SUBSCRIBERS", 1);
    let deadline = Instant::now() + LONG;
    while hub.peers().unwrap().iter().filter(|p| p.patterns.iter().any(|p| p == "burst/#")).count() < subscribers {
        assert!(Instant::now() < deadline, "the subscribers did not show up");
        std::thread::yield_now();
    }
    report("READY");
    assert_eq!(command().as_deref(), Some("go"));
    for i in 0..env_or("HSIPC_COUNT", BURST) {
        hub.publish("burst/n", i).unwrap();
    }
    let stats = hub.stats().protocol;
    report(format!("PUBLISHED cut_off={} dropped={}", stats.subscribers_cut_off, stats.events_cut_off));
    while command().is_some() {}
}

#[test]
fn a_burst_reaches_three_reliable_subscribers_complete_and_in_order() {
    let bus = unique_bus("reliable-burst");
    let mut readers: Vec<Peer> = (0..3).map(|i| Peer::ready("reader", &bus, &format!("sub{i}"), &[])).collect();
    let mut publisher = Peer::ready("publisher", &bus, "pub", &[("HSIPC_SUBSCRIBERS", "3")]);
    publisher.send("go");
    for r in &mut readers {
        assert_eq!(r.expect("GOT", LONG), "20000 missed=0 in_order=true");
    }
    assert_eq!(publisher.expect("PUBLISHED", LONG), "cut_off=0 dropped=0");
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_off_and_the_others_keep_receiving() {
    let bus = unique_bus("reliable-stuck");
    let env = [("HSIPC_COUNT", "2000"), ("HSIPC_WINDOW", "64")];
    let mut stuck = Peer::ready("stuck", &bus, "stuck", &env);
    let mut reader = Peer::ready("reader", &bus, "reader", &env);
    let publisher_env = [("HSIPC_COUNT", "2000"), ("HSIPC_SUBSCRIBERS", "2"), ("HSIPC_PUBLISH_TIMEOUT_MS", "300")];
    let mut publisher = Peer::ready("publisher", &bus, "pub", &publisher_env);
    publisher.send("go");
    // The reader gets everything although the stuck one takes nothing: the publisher waited
    // for it once, for its publish timeout, then cut it off.
    assert_eq!(reader.expect("GOT", LONG), "2000 missed=0 in_order=true");
    assert_eq!(publisher.expect("PUBLISHED", LONG), "cut_off=1 dropped=1936");
    // The stuck subscriber finds its first window, then the cut-off, told when it happened;
    // once it has caught up, the rest of its loss.
    stuck.send("read");
    assert_eq!(stuck.expect("ACCOUNTED", LONG), "taken=64 lost=1936 trace=from 0,lost 1,lost 1935");
}

#[test]
fn a_subscriber_that_dies_frees_its_publisher_at_once() {
    let bus = unique_bus("reliable-dies");
    let mut stuck = Peer::ready("stuck", &bus, "stuck", &[("HSIPC_WINDOW", "16")]);
    // A publish timeout far beyond the test's patience: only the subscriber's death can let the
    // publisher go on.
    let env = [("HSIPC_COUNT", "100"), ("HSIPC_PUBLISH_TIMEOUT_MS", "3600000")];
    let mut publisher = Peer::ready("publisher", &bus, "pub", &env);
    publisher.send("go");
    stuck.kill();
    assert_eq!(publisher.expect("PUBLISHED", LONG), "cut_off=0 dropped=0");
}

/// A subscriber's window in bytes holds its publisher back whatever the count: one granting 1024
/// events but 64 bytes of payloads, and taking none, gets as many events as fit in 64 bytes
/// before its publisher cuts it off.
#[test]
fn a_subscriber_s_byte_window_holds_its_publisher_back() {
    // The events that fit in 64 bytes (a `u32` is 1 to 5 bytes of CBOR).
    let mut fit = 0u32;
    let mut bytes = 0;
    loop {
        bytes += hsipc::proto::codec::encode(&fit).unwrap().len();
        if bytes > 64 {
            break;
        }
        fit += 1;
    }
    let bus = unique_bus("reliable-bytes");
    let env = [("HSIPC_COUNT", "200"), ("HSIPC_WINDOW", "1024"), ("HSIPC_WINDOW_BYTES", "64")];
    let mut stuck = Peer::ready("stuck", &bus, "stuck", &env);
    let publisher_env = [("HSIPC_COUNT", "200"), ("HSIPC_PUBLISH_TIMEOUT_MS", "300")];
    let mut publisher = Peer::ready("publisher", &bus, "pub", &publisher_env);
    publisher.send("go");
    let dropped = 200 - fit;
    assert_eq!(publisher.expect("PUBLISHED", LONG), format!("cut_off=1 dropped={dropped}"));
    stuck.send("read");
    let rest = dropped - 1;
    assert_eq!(stuck.expect("ACCOUNTED", LONG), format!("taken={fit} lost={dropped} trace=from 0,lost 1,lost {rest}"));
}
