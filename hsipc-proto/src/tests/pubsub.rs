//! Publish/subscribe: matching, missed events, local delivery.

use super::*;

fn published(events: &[Event]) -> Vec<(String, Bytes, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Published { topic, body, missed, .. } => Some((topic.to_string(), body.clone(), *missed)),
            _ => None,
        })
        .collect()
}

#[test]
fn events_reach_exactly_the_matching_subscribers() {
    let mut bus = Bus::new(4);
    bus.ep(1).subscribe(TopicFilter::new("sensor/+").unwrap(), false).unwrap();
    bus.ep(2).subscribe(TopicFilter::new("sensor/#").unwrap(), false).unwrap();
    bus.ep(3).subscribe(TopicFilter::new("other/#").unwrap(), false).unwrap();
    bus.settle();
    for i in 0..4 {
        bus.events(i);
    }
    for t in ["sensor/temp", "sensor/room1/temp", "sensor", "other/x", "nothing"] {
        bus.with(0, |ep, now| ep.publish(now, &Topic::new(t).unwrap(), b(t), NoCredit::Refuse)).unwrap();
    }
    bus.settle();
    let names = |v: Vec<(String, Bytes, u64)>| v.into_iter().map(|(t, _, _)| t).collect::<Vec<_>>();
    assert_eq!(names(published(&bus.events(1))), vec!["sensor/temp"]);
    assert_eq!(names(published(&bus.events(2))), vec!["sensor/temp", "sensor/room1/temp", "sensor"]);
    assert_eq!(names(published(&bus.events(3))), vec!["other/x"]);
    // Frames went only to matching peers: nobody received an event it had to throw away.
    for i in 1..4 {
        assert_eq!(bus.ep(i).stats().unmatched_events, 0);
    }
    bus.assert_no_leaks();
}

#[test]
fn a_subscriber_learns_how_many_events_it_missed() {
    let mut bus = Bus::new(2);
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap(), false).unwrap();
    bus.settle();
    bus.set_plan(|f| {
        if (f.from, f.to) == (0, 1) && is(f.frame, FrameKind::Publish) && (f.frame.seq == 2 || f.frame.seq == 3) {
            Fault::Drop
        } else {
            Fault::Deliver
        }
    });
    for i in 0..5 {
        bus.with(0, |ep, now| ep.publish(now, &Topic::new("t/x").unwrap(), b(&i.to_string()), NoCredit::Refuse))
            .unwrap();
    }
    bus.settle();
    let got = published(&bus.events(1));
    assert_eq!(
        got.iter().map(|(_, body, m)| (body.clone(), *m)).collect::<Vec<_>>(),
        vec![(b("0"), 0), (b("3"), 2), (b("4"), 0)]
    );
    bus.assert_no_leaks();
}

#[test]
fn local_subscribers_see_local_publishes_and_unsubscribe_stops_delivery() {
    let mut bus = Bus::new(2);
    let s = bus.ep(0).subscribe(TopicFilter::new("a/+").unwrap(), false).unwrap();
    bus.settle();
    assert_eq!(
        bus.with(0, |ep, now| ep.publish(now, &Topic::new("a/b").unwrap(), b("x"), NoCredit::Refuse)).unwrap().peers,
        1
    );
    bus.settle();
    assert_eq!(published(&bus.events(0)).len(), 1);
    bus.ep(0).unsubscribe(s).unwrap();
    bus.settle();
    assert_eq!(
        bus.with(1, |ep, now| ep.publish(now, &Topic::new("a/b").unwrap(), b("x"), NoCredit::Refuse)).unwrap().peers,
        0
    );
    assert_eq!(bus.ep(0).table_sizes().subscriptions, 0);
    bus.assert_no_leaks();
}

/// A large event published to several peers goes out as one frame each that share a
/// [`FanOut`](crate::frame::FanOut) and differ only in their stamps; any of them, decoded with
/// another's stamp, is that other frame. A small event, or one to a single peer, shares nothing.
#[test]
fn the_frames_of_a_large_event_to_several_peers_share_their_fan_out() {
    use crate::frame::{FAN_OUT_MIN, Frame, WireFrame};
    let mut bus = Bus::new(4);
    for i in 1..4 {
        bus.ep(i).subscribe(TopicFilter::new("t/#").unwrap(), i == 2).unwrap();
    }
    bus.settle();
    let frames_of = |bus: &mut Bus, topic: &str, body: Bytes| -> Vec<WireFrame> {
        bus.with(0, |ep, now| ep.publish(now, &Topic::new(topic).unwrap(), body, NoCredit::Refuse)).unwrap();
        let mut frames = Vec::new();
        while let Some(out) = bus.ep(0).poll_output() {
            if let crate::Output::Transmit(t) = out {
                frames.push(t.frame);
            }
        }
        frames
    };
    let large = frames_of(&mut bus, "t/large", Bytes::from(vec![7u8; FAN_OUT_MIN]));
    assert_eq!(large.len(), 3);
    let made = large.iter().filter_map(|f| f.fan_out()?.get_or_make(|| Some(large.len()))).collect::<Vec<_>>();
    assert_eq!(made, vec![&3, &3, &3], "one fan-out, made once");
    let first = large[0].to_bytes();
    for frame in &large {
        assert!(large[0].same_head_but_stamp(frame.pieces().get()[0]));
        let stamp = frame.stamp().unwrap();
        let stamped = Frame::decode_shared_stamped(first.clone(), 1 << 20, stamp).unwrap();
        assert_eq!(stamped, Frame::decode(frame.to_bytes(), 1 << 20).unwrap());
    }
    // The reliable subscriber's frame is credited: the stamps differ in their flags.
    assert!(large.iter().any(|f| f.stamp() != large[0].stamp()));
    let small = frames_of(&mut bus, "t/small", Bytes::from(vec![7u8; FAN_OUT_MIN - 1]));
    assert!(small.len() == 3 && small.iter().all(|f| f.fan_out().is_none()));
}
