//! Limits and hostile input: bounded tables, bad frames, degenerate settings.

use super::*;

#[test]
fn limits_give_clear_errors_not_growth() {
    let config = Config { max_outgoing_calls: 3, max_incoming_calls: 2, max_frame_len: 1024, ..Config::default() };
    let mut bus = Bus::with_config(2, config);
    bus.ep(1).serve("calc").unwrap();
    bus.settle();
    let now = bus.now;
    let ids: Vec<RequestId> =
        (0..3).map(|_| bus.ep(0).request(now, "calc.x", b(""), CallMode::Unary, SECOND).unwrap()).collect();
    assert_eq!(
        bus.ep(0).request(now, "calc.x", b(""), CallMode::Unary, SECOND),
        Err(CommandError::TooManyCalls { limit: 3 })
    );
    bus.settle();
    // The server accepted two and refused the third as busy.
    assert_eq!(requests(&mut bus, 1).len(), 2);
    let ev = bus.events(0);
    assert!(matches!(response(&ev, ids[2]), Some(Err(CallError::Remote(RemoteError { code: ErrorCode::BUSY, .. })))));
    let big = Bytes::from(vec![0u8; 2000]);
    assert!(matches!(
        bus.with(0, |ep, now| ep.publish(now, &Topic::new("a").unwrap(), big.clone(), NoCredit::Refuse)),
        Err(CommandError::PayloadTooLarge { max: 1024, .. })
    ));
    bus.run_for(2 * SECOND);
    assert!(matches!(
        bus.with(0, |ep, now| ep.request(now, "calc.x", big, CallMode::Unary, SECOND)),
        Err(CommandError::PayloadTooLarge { .. })
    ));
    bus.assert_no_leaks();
}

#[test]
fn a_full_output_queue_refuses_commands_and_drops_peer_frames() {
    let config = Config { max_queued_outputs: 4, ..Config::default() };
    let mut bus = Bus::with_config(2, config);
    bus.ep(1).subscribe(TopicFilter::new("#").unwrap(), false).unwrap();
    bus.settle();
    let topic = Topic::new("x").unwrap();
    let mut ok = 0;
    let err = loop {
        match bus.with(0, |ep, now| ep.publish(now, &topic, b("e"), NoCredit::Refuse)) {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, CommandError::OutputFull { limit: 4 });
    assert_eq!(ok, 4);
    bus.settle();
    bus.assert_no_leaks();
}

#[test]
fn bad_frames_from_a_peer_are_counted_and_change_nothing() {
    let mut bus = calc_bus(2);
    let before = bus.ep(1).table_sizes();
    bus.inject(0, 1, Bytes::from_static(b"garbage"));
    let mut f = Frame::new(FrameKind::Publish, 0, 0, 1).with_name("bad/+").encode(1 << 20).unwrap().to_vec();
    bus.inject(0, 1, Bytes::from(f.clone()));
    f[2] = 200;
    bus.inject(0, 1, Bytes::from(f));
    let over_credit = Frame::new(FrameKind::StreamItem, crate::frame::Flags::TO_CALLER, 99, 1).encode(1 << 20).unwrap();
    bus.inject(0, 1, over_credit);
    bus.settle();
    assert_eq!(bus.rejected.len(), 3, "{:?}", bus.rejected);
    assert_eq!(bus.ep(1).stats().bad_frames, 3);
    assert_eq!(bus.ep(1).stats().late_or_unknown, 1, "an item for an unknown call is dropped as late");
    assert_eq!(bus.ep(1).table_sizes(), before);
    bus.assert_no_leaks();
}

#[test]
fn degenerate_settings_are_raised_to_working_ones() {
    let config = Config {
        heartbeat_interval: Duration::ZERO,
        peer_timeout: Duration::ZERO,
        stream_window: 0,
        max_queued_outputs: 0,
        ..Config::default()
    };
    let mut bus = Bus::with_config(2, config);
    bus.ep(1).serve("calc").unwrap();
    // A zero heartbeat would re-arm itself as already due and spin forever.
    bus.run_for(Duration::from_millis(20));
    assert!(bus.ep(0).has_provider("calc"), "peers do not expire each other");
    let (id, inc) = open_stream(&mut bus, SECOND);
    bus.ep(1).send_item(inc, b("x")).unwrap();
    bus.settle();
    assert_eq!(items(&bus.events(0), id).len(), 1, "a window of 0 is raised to 1");
    bus.ep(0).cancel(id).unwrap();
    bus.assert_no_leaks();
}

#[test]
fn events_from_made_up_peers_do_not_grow_the_tables_without_bound() {
    use crate::endpoint::MAX_UNKNOWN_PUBLISHERS;
    use crate::{Input, PeerId};
    let mut bus = Bus::new(2);
    bus.ep(1).subscribe(TopicFilter::new("#").unwrap(), false).unwrap();
    bus.settle();
    // A bus member making up peer ids: each event claims another publisher no peer announced.
    let extra = 100;
    for i in 0..MAX_UNKNOWN_PUBLISHERS + extra {
        let bytes = Frame::new(FrameKind::Publish, 0, 0, 1).with_name("t").encode(1 << 20).unwrap();
        let from = PeerId(1_000_000 + i as u64);
        bus.with(1, |ep, now| ep.handle_input(now, Input::Frame { from, bytes })).unwrap();
        if i % 64 == 0 {
            bus.settle();
        }
    }
    bus.settle();
    let sizes = bus.ep(1).table_sizes();
    assert!(sizes.publishers <= MAX_UNKNOWN_PUBLISHERS + 2, "{sizes:?}");
    assert!(bus.ep(1).stats().late_or_unknown >= extra as u64 - 2, "the rest are counted");
    // A peer that announced itself is heard as before.
    bus.with(0, |ep, now| ep.publish(now, &Topic::new("t").unwrap(), b("e"), NoCredit::Refuse)).unwrap();
    bus.settle();
    let heard = bus.events(1).iter().any(|e| matches!(e, Event::Published { from, .. } if *from == peer(0)));
    assert!(heard, "the announced publisher's event arrives");
    bus.assert_no_leaks();
}

#[test]
fn one_caller_cannot_take_the_whole_incoming_table() {
    let config = Config { max_incoming_calls: 8, ..Config::default() };
    let mut bus = Bus::with_config(3, config);
    bus.ep(2).serve("calc").unwrap();
    bus.settle();
    let now = bus.now;
    // Caller 0 keeps streams open (it never cancels them): three quarters of the table at most.
    let greedy: Vec<RequestId> =
        (0..8).map(|_| bus.ep(0).request(now, "calc.s", b(""), CallMode::ServerStream, SECOND).unwrap()).collect();
    bus.settle();
    assert_eq!(requests(&mut bus, 2).len(), 6);
    let ev = bus.events(0);
    for id in &greedy[6..] {
        assert!(
            matches!(stream_end(&ev, *id), Some(Err(CallError::Remote(RemoteError { code: ErrorCode::BUSY, .. })))),
            "refused as busy"
        );
    }
    assert!(greedy[..6].iter().all(|id| stream_end(&ev, *id).is_none()), "the first six are served");
    // Another caller is served meanwhile.
    let other = bus.ep(1).request(now, "calc.s", b(""), CallMode::ServerStream, SECOND).unwrap();
    bus.settle();
    assert_eq!(requests(&mut bus, 2).len(), 1);
    assert!(stream_end(&bus.events(1), other).is_none(), "not refused");
}
