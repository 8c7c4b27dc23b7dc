//! Reliable subscriptions: event credit holds a publisher back, a cut-off subscriber is told,
//! nothing is lost silently.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::{Input, PeerId};

const WINDOW: u32 = 4;

fn small_window() -> Config {
    Config { event_window: WINDOW, ..Config::default() }
}

/// What one subscriber has received and not yet taken, and what it has taken.
#[derive(Default)]
struct Reader {
    queued: VecDeque<(PeerId, u64, bool, u64)>,
    taken: Vec<u64>,
    lost: u64,
}

impl Reader {
    /// Collects node `i`'s events.
    fn collect(&mut self, bus: &mut Bus, i: usize) {
        for e in bus.events(i) {
            match e {
                Event::Published { from, body, missed, credited, .. } => {
                    self.lost += missed;
                    let n = std::str::from_utf8(&body).unwrap().parse().unwrap();
                    self.queued.push_back((from, n, credited, body.len() as u64));
                }
                Event::EventsLost { missed, .. } => self.lost += missed,
                _ => {}
            }
        }
    }

    /// Takes up to `n` events, returning their credit.
    fn take(&mut self, bus: &mut Bus, i: usize, n: usize) {
        for _ in 0..n {
            let Some((from, body, credited, size)) = self.queued.pop_front() else { break };
            self.taken.push(body);
            if credited {
                bus.with(i, |ep, now| ep.events_taken(now, from, 1, size));
            }
        }
    }
}

fn publish(bus: &mut Bus, n: u64, mode: NoCredit) -> Result<crate::Published, CommandError> {
    bus.with(0, |ep, now| ep.publish(now, &Topic::new("t/x").unwrap(), b(&n.to_string()), mode))
}

/// Cuts off whoever has given no credit back since now.
fn cut_off(bus: &Bus) -> NoCredit {
    NoCredit::CutOff { silent_since: bus.now }
}

fn refused(subscribers: usize) -> Result<crate::Published, CommandError> {
    Err(CommandError::NoEventCredit { subscribers, recheck_at: None })
}

#[test]
fn a_reliable_subscriber_holds_its_publisher_back_and_loses_nothing() {
    let mut bus = Bus::with_config(2, small_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    let mut reader = Reader::default();
    let mut next = 0;
    for _ in 0..WINDOW {
        publish(&mut bus, next, NoCredit::Refuse).unwrap();
        next += 1;
    }
    bus.settle();
    assert_eq!(publish(&mut bus, next, NoCredit::Refuse), refused(1));
    reader.collect(&mut bus, 1);
    reader.take(&mut bus, 1, 1);
    bus.settle();
    // The credit came back, and the publisher was told.
    assert!(bus.events(0).iter().any(|e| matches!(e, Event::EventCredit { peer } if *peer == super::peer(1))));
    while next < 100 {
        match publish(&mut bus, next, NoCredit::Refuse) {
            Ok(p) => {
                assert_eq!((p.peers, p.cut_off.len()), (1, 0));
                next += 1;
            }
            Err(CommandError::NoEventCredit { .. }) => {
                bus.settle();
                reader.collect(&mut bus, 1);
                reader.take(&mut bus, 1, 3);
                bus.settle();
            }
            Err(e) => panic!("{e}"),
        }
    }
    bus.settle();
    reader.collect(&mut bus, 1);
    reader.take(&mut bus, 1, usize::MAX);
    assert_eq!(reader.taken, (0..100).collect::<Vec<_>>());
    assert_eq!(reader.lost, 0);
    assert!(bus.rejected.is_empty());
    bus.assert_no_leaks();
}

#[test]
fn a_stuck_subscriber_is_cut_off_told_at_once_and_does_not_hold_the_others() {
    let mut bus = Bus::with_config(3, small_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.ep(2).subscribe(TopicFilter::new("t/x").unwrap(), true).unwrap();
    bus.settle();
    let (mut stuck, mut reading) = (Reader::default(), Reader::default());
    for n in 0..u64::from(WINDOW) {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
    }
    bus.settle();
    reading.collect(&mut bus, 2);
    reading.take(&mut bus, 2, usize::MAX);
    bus.settle();
    // Node 1 reads nothing: the publisher is refused until it cuts node 1 off (at its timeout).
    assert_eq!(publish(&mut bus, 4, NoCredit::Refuse), refused(1));
    let mode = cut_off(&bus);
    let p = publish(&mut bus, 4, mode).unwrap();
    assert_eq!((p.peers, p.cut_off), (1, vec![super::peer(1)]));
    bus.settle();
    stuck.collect(&mut bus, 1);
    assert_eq!(stuck.lost, 1, "the cut-off subscriber is told when it happens");
    // From now on node 1 is not waited for; its events without credit are dropped and counted.
    for n in 5..20 {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
        bus.settle();
        reading.collect(&mut bus, 2);
        reading.take(&mut bus, 2, usize::MAX);
    }
    bus.settle();
    assert_eq!(reading.taken, (0..20).collect::<Vec<_>>());
    assert_eq!(bus.ep(0).stats().subscribers_cut_off, 1);
    assert_eq!(bus.ep(0).stats().events_cut_off, 16);
    // Node 1 catches up: the rest of its loss is reported, and it is reliable again.
    stuck.collect(&mut bus, 1);
    stuck.take(&mut bus, 1, usize::MAX);
    bus.settle();
    stuck.collect(&mut bus, 1);
    assert_eq!(stuck.taken, (0..4).collect::<Vec<_>>());
    assert_eq!(stuck.lost, 16);
    for n in 20..20 + u64::from(WINDOW) {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
    }
    bus.settle();
    reading.collect(&mut bus, 2);
    reading.take(&mut bus, 2, usize::MAX);
    bus.settle();
    assert_eq!(publish(&mut bus, 99, NoCredit::Refuse), refused(1));
    stuck.collect(&mut bus, 1);
    stuck.take(&mut bus, 1, usize::MAX);
    assert_eq!(stuck.taken[4..], (20..24).collect::<Vec<_>>());
    assert!(bus.rejected.is_empty());
    bus.assert_no_leaks();
}

#[test]
fn local_reliable_subscriptions_take_credit_too() {
    let mut bus = Bus::with_config(1, small_window());
    bus.ep(0).subscribe(TopicFilter::new("t/x").unwrap(), true).unwrap();
    bus.settle();
    for n in 0..u64::from(WINDOW) {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
    }
    assert_eq!(publish(&mut bus, 4, NoCredit::Refuse), refused(1));
    let mut reader = Reader::default();
    reader.collect(&mut bus, 0);
    reader.take(&mut bus, 0, 2);
    publish(&mut bus, 4, NoCredit::Refuse).unwrap();
    bus.run_for(SECOND);
    bus.assert_no_leaks();
}

#[test]
fn a_departed_subscriber_frees_its_publisher_at_once() {
    let mut bus = Bus::with_config(2, small_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    for n in 0..u64::from(WINDOW) {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
    }
    assert!(publish(&mut bus, 4, NoCredit::Refuse).is_err());
    let now = bus.now;
    bus.ep(0).handle_input(now, Input::PeerLost(super::peer(1))).unwrap();
    assert_eq!(publish(&mut bus, 4, NoCredit::Refuse).unwrap().peers, 0);
}

#[test]
fn an_event_beyond_the_credit_is_delivered_and_counted() {
    let mut bus = Bus::with_config(2, small_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    bus.events(1);
    for seq in 1..=u64::from(WINDOW) + 1 {
        let frame = Frame::new(FrameKind::Publish, crate::frame::Flags::CREDITED, 0, seq).with_name("t/x");
        bus.inject(0, 1, frame.encode(1 << 20).unwrap());
    }
    bus.settle();
    let got = bus.events(1).iter().filter(|e| matches!(e, Event::Published { .. })).count();
    assert_eq!(got, WINDOW as usize + 1, "nothing is lost for a publisher's mistake");
    assert_eq!(bus.ep(1).stats().credit_overruns, 1);
    assert!(bus.rejected.is_empty());
}

/// A subscriber that reads slowly gives credit back now and then (`flush_event_credit`), so a
/// publisher at its timeout waits for it instead of cutting it off; one silent for that long
/// is cut off.
#[test]
fn only_a_subscriber_silent_for_the_whole_timeout_is_cut_off() {
    let mut bus = Bus::with_config(2, small_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    for n in 0..u64::from(WINDOW) {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
    }
    bus.settle();
    let since = bus.now;
    bus.run_for(SECOND);
    // It takes one event (less than a credit batch) and flushes: one credit back, now.
    let mut reader = Reader::default();
    reader.collect(&mut bus, 1);
    reader.take(&mut bus, 1, 1);
    bus.ep(1).flush_event_credit();
    bus.settle();
    // Another thread spent that credit meanwhile.
    publish(&mut bus, 4, NoCredit::Refuse).unwrap();
    // At the timeout (started at `since`), the subscriber has no credit but gave some back
    // since: it is still reading, and is not cut off; the error says when to look again.
    let now = bus.now;
    match publish(&mut bus, 5, NoCredit::CutOff { silent_since: since }) {
        Err(CommandError::NoEventCredit { subscribers: 1, recheck_at: Some(at) }) => assert!(at > now),
        other => panic!("{other:?}"),
    }
    // Silent since then: cut off.
    let later = bus.now;
    bus.run_for(SECOND);
    let p = publish(&mut bus, 5, NoCredit::CutOff { silent_since: later }).unwrap();
    assert_eq!(p.cut_off, vec![super::peer(1)]);
}

#[test]
fn an_event_nobody_takes_any_more_returns_its_credit() {
    let mut bus = Bus::with_config(2, small_window());
    let s = bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    // Unsubscribed while the events are on their way: they match nothing and their credit
    // goes straight back.
    for n in 0..u64::from(WINDOW) {
        publish(&mut bus, n, NoCredit::Refuse).unwrap();
    }
    bus.ep(1).unsubscribe(s).unwrap();
    bus.settle();
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    publish(&mut bus, 9, NoCredit::Refuse).unwrap();
    bus.assert_no_leaks();
}

#[derive(Clone, Debug)]
enum Op {
    Publish,
    PublishOrCutOff,
    Take(usize, usize),
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        1 => Just(Op::PublishOrCutOff),
        3 => (1..3usize, 0..6usize).prop_map(|(who, n)| Op::Take(who, n)),
        2 => Just(Op::Settle),
    ]
}

/// Three endpoints: 0 publishes, 1 and 2 subscribe reliably to what it publishes.
fn two_reliable_subscribers(config: Config) -> (Bus, [Reader; 3]) {
    let mut bus = Bus::with_config(3, config);
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.ep(2).subscribe(TopicFilter::new("t/+").unwrap(), true).unwrap();
    bus.settle();
    (bus, [Reader::default(), Reader::default(), Reader::default()])
}

/// The subscribers take everything there is, a few rounds, as credit comes back.
fn take_all(bus: &mut Bus, readers: &mut [Reader; 3]) {
    bus.settle();
    for _ in 0..3 {
        for (who, reader) in readers.iter_mut().enumerate().skip(1) {
            reader.collect(bus, who);
            reader.take(bus, who, usize::MAX);
        }
        bus.settle();
    }
}

proptest! {
    /// Whatever the interleaving: each reliable subscriber receives the events in order, never
    /// beyond its window, and every event published is either received or reported lost; with
    /// no cut-off, nothing is lost at all.
    #[test]
    fn every_event_is_received_or_reported(ops in proptest::collection::vec(op(), 1..200)) {
        let (mut bus, mut readers) = two_reliable_subscribers(small_window());
        let (mut published, mut cut_offs) = (0u64, 0);
        for op in ops {
            match op {
                Op::Publish | Op::PublishOrCutOff => {
                    let mode = if matches!(op, Op::Publish) { NoCredit::Refuse } else { cut_off(&bus) };
                    match publish(&mut bus, published, mode) {
                        Ok(p) => {
                            published += 1;
                            cut_offs += p.cut_off.len();
                        }
                        Err(CommandError::NoEventCredit { .. }) => {}
                        Err(e) => prop_assert!(false, "{}", e),
                    }
                }
                Op::Take(who, n) => {
                    readers[who].collect(&mut bus, who);
                    readers[who].take(&mut bus, who, n);
                }
                Op::Settle => bus.settle(),
            }
        }
        take_all(&mut bus, &mut readers);
        prop_assert!(bus.rejected.is_empty(), "{:?}", bus.rejected);
        for reader in &readers[1..] {
            prop_assert!(reader.taken.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}", reader.taken);
            prop_assert_eq!(reader.taken.len() as u64 + reader.lost, published);
            if cut_offs == 0 {
                prop_assert_eq!(reader.lost, 0);
            }
        }
    }
}

/// A byte window of 1000 and room for many events by count.
const WINDOW_BYTES: u64 = 1000;

fn byte_window() -> Config {
    Config { event_window: 100, event_window_bytes: WINDOW_BYTES, ..Config::default() }
}

/// Publishes event `n` with a payload of `size` bytes (`n`, zero-padded).
fn publish_sized(bus: &mut Bus, n: u64, size: usize, mode: NoCredit) -> Result<crate::Published, CommandError> {
    let body = format!("{n:0>size$}");
    bus.with(0, |ep, now| ep.publish(now, &Topic::new("t/x").unwrap(), b(&body), mode))
}

impl Reader {
    /// Payload bytes received and not yet taken.
    fn queued_bytes(&self) -> u64 {
        self.queued.iter().map(|q| q.3).sum()
    }
}

#[test]
fn the_byte_window_holds_a_publisher_back_by_the_size_of_its_events() {
    let mut bus = Bus::with_config(2, byte_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    let mut reader = Reader::default();
    // Three of 300 bytes fit in 1000; the fourth does not, though the count window has room.
    for n in 0..3 {
        publish_sized(&mut bus, n, 300, NoCredit::Refuse).unwrap();
    }
    assert_eq!(publish_sized(&mut bus, 3, 300, NoCredit::Refuse), refused(1));
    // A smaller one still fits.
    publish_sized(&mut bus, 3, 100, NoCredit::Refuse).unwrap();
    bus.settle();
    reader.collect(&mut bus, 1);
    assert_eq!(reader.queued_bytes(), 1000);
    // Taking one event returns its bytes (300 is over a quarter of the window): room again.
    reader.take(&mut bus, 1, 1);
    bus.settle();
    publish_sized(&mut bus, 4, 300, NoCredit::Refuse).unwrap();
    assert_eq!(publish_sized(&mut bus, 5, 300, NoCredit::Refuse), refused(1));
    bus.settle();
    reader.collect(&mut bus, 1);
    reader.take(&mut bus, 1, usize::MAX);
    assert_eq!(reader.taken, [0, 1, 2, 3, 4]);
    assert_eq!(reader.lost, 0);
    bus.assert_no_leaks();
}

#[test]
fn an_event_larger_than_the_byte_window_goes_once_nothing_is_outstanding() {
    let mut bus = Bus::with_config(2, byte_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    let mut reader = Reader::default();
    publish_sized(&mut bus, 0, 2500, NoCredit::Refuse).unwrap();
    assert_eq!(publish_sized(&mut bus, 1, 2500, NoCredit::Refuse), refused(1));
    assert_eq!(publish_sized(&mut bus, 1, 10, NoCredit::Refuse), refused(1));
    bus.settle();
    reader.collect(&mut bus, 1);
    reader.take(&mut bus, 1, 1);
    bus.settle();
    // Its credit back (the account full again, not more): the next large one goes.
    publish_sized(&mut bus, 1, 2500, NoCredit::Refuse).unwrap();
    assert_eq!(publish_sized(&mut bus, 2, 10, NoCredit::Refuse), refused(1));
    bus.settle();
    reader.collect(&mut bus, 1);
    reader.take(&mut bus, 1, usize::MAX);
    assert_eq!(reader.taken, [0, 1]);
    bus.assert_no_leaks();
}

/// Bytes that never come back (a subscriber that returned an event's count without them) are
/// made good once nothing is outstanding by count: the publisher is not held back for good.
#[test]
fn lost_bytes_are_made_good_once_nothing_is_outstanding() {
    let mut bus = Bus::with_config(2, byte_window());
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    for n in 0..3 {
        publish_sized(&mut bus, n, 300, NoCredit::Refuse).unwrap();
    }
    bus.settle();
    let _ = bus.events(1);
    let publisher = super::peer(0);
    for _ in 0..3 {
        bus.with(1, |ep, now| ep.events_taken(now, publisher, 1, 0));
    }
    bus.ep(1).flush_event_credit();
    bus.settle();
    for n in 3..6 {
        publish_sized(&mut bus, n, 300, NoCredit::Refuse).unwrap();
    }
    bus.assert_no_leaks();
}

#[test]
fn a_subscriber_without_a_byte_window_is_held_by_the_count_only() {
    let mut config = byte_window();
    config.event_window_bytes = 0;
    config.event_window = 4;
    let mut bus = Bus::with_config(2, config);
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), true).unwrap();
    bus.settle();
    for n in 0..4 {
        publish_sized(&mut bus, n, 5000, NoCredit::Refuse).unwrap();
    }
    assert_eq!(publish_sized(&mut bus, 4, 1, NoCredit::Refuse), refused(1));
    bus.assert_no_leaks();
}

proptest! {
    /// Events of any size, taken at any pace: each reliable subscriber receives every event in
    /// order, and never holds more than its byte window of them untaken (or one larger event
    /// alone).
    #[test]
    fn the_byte_window_bounds_what_a_subscriber_holds(
        ops in proptest::collection::vec((op(), 1..1500usize), 1..200)
    ) {
        let (mut bus, mut readers) = two_reliable_subscribers(byte_window());
        let mut published = 0u64;
        for (op, size) in ops {
            match op {
                Op::Publish | Op::PublishOrCutOff => match publish_sized(&mut bus, published, size, NoCredit::Refuse) {
                    Ok(_) => published += 1,
                    Err(CommandError::NoEventCredit { .. }) => {}
                    Err(e) => prop_assert!(false, "{}", e),
                },
                Op::Take(who, n) => {
                    readers[who].collect(&mut bus, who);
                    let held = readers[who].queued_bytes();
                    prop_assert!(held <= WINDOW_BYTES || readers[who].queued.len() == 1, "{} bytes held", held);
                    readers[who].take(&mut bus, who, n);
                }
                Op::Settle => bus.settle(),
            }
        }
        take_all(&mut bus, &mut readers);
        prop_assert!(bus.rejected.is_empty(), "{:?}", bus.rejected);
        for reader in &readers[1..] {
            prop_assert_eq!(&reader.taken, &(0..published).collect::<Vec<_>>());
            prop_assert_eq!(reader.lost, 0);
        }
    }
}

/// A peer from before the byte window announces neither it nor (older still) the event window:
/// its announce decodes, and bounds nothing by bytes.
#[test]
fn an_announce_without_a_byte_window_bounds_nothing_by_bytes() {
    #[derive(serde::Serialize)]
    struct OldPeerInfo {
        name: String,
        pid: u32,
        services: Vec<String>,
        patterns: Vec<String>,
        reliable: Vec<String>,
        event_window: u32,
    }
    let old = OldPeerInfo {
        name: "old".into(),
        pid: 1,
        services: vec![],
        patterns: vec!["t/#".into()],
        reliable: vec!["t/#".into()],
        event_window: 4,
    };
    let info: crate::PeerInfo = crate::codec::decode(&crate::codec::encode(&old).unwrap()).unwrap();
    assert_eq!((info.event_window, info.event_window_bytes, info.peers), (4, 0, 0));
}
