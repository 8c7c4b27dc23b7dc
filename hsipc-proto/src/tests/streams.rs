//! Streams and sessions: credit, ordering, loss, cancellation, idle timeouts.

use super::*;

#[test]
fn a_stream_stops_at_the_credit_window_and_resumes_on_credit() {
    let mut bus = calc_bus(2);
    let window = bus.ep(0).config().stream_window as usize;
    let (id, inc) = open_stream(&mut bus, 10 * SECOND);
    let mut sent = 0;
    loop {
        match bus.ep(1).send_item(inc, b(&sent.to_string())) {
            Ok(()) => sent += 1,
            Err(CommandError::Blocked) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(sent, window, "the sender stops after exactly one window");
    bus.settle();
    let got = items(&bus.events(0), id);
    assert_eq!(got.len(), window);
    // The reader takes a quarter: not yet worth a credit frame.
    bus.with(0, |ep, now| ep.consumed(now, id, (window / 4) as u32)).unwrap();
    bus.settle();
    assert!(!bus.events(1).iter().any(|e| matches!(e, Event::Writable { .. })));
    // Half a window: credit flows and the server is told it may go on.
    bus.with(0, |ep, now| ep.consumed(now, id, (window / 4) as u32)).unwrap();
    bus.settle();
    assert!(bus.events(1).contains(&Event::Writable { call: CallRef::Incoming(inc) }));
    let mut more = 0;
    while bus.ep(1).send_item(inc, b("more")).is_ok() {
        more += 1;
    }
    assert_eq!(more, window / 2);
    bus.ep(1).finish(inc, Ok(())).unwrap();
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(items(&ev, id).len(), window / 2);
    assert_eq!(stream_end(&ev, id), Some(Ok(())));
    bus.assert_no_leaks();
}

#[test]
fn items_arrive_in_order_and_the_stream_idles_without_timing_out_while_the_reader_is_behind() {
    let mut bus = calc_bus(2);
    let (id, inc) = open_stream(&mut bus, SECOND);
    let mut received = Vec::new();
    let mut next = 0u32;
    let mut finished = false;
    for _round in 0..40 {
        while next < 1000 && bus.ep(1).send_item(inc, b(&next.to_string())).is_ok() {
            next += 1;
        }
        if next == 1000 && !finished {
            bus.ep(1).finish(inc, Ok(())).unwrap();
            finished = true;
        }
        bus.settle();
        // The reader is slow: far longer than the timeout between reads. The timer must be
        // paused because the sender has no credit left, so the stream does not time out.
        bus.run_for(5 * SECOND);
        let ev_end = bus.events(0);
        let got = items(&ev_end, id);
        if stream_end(&ev_end, id).is_none() {
            bus.with(0, |ep, now| ep.consumed(now, id, got.len() as u32)).unwrap();
        }
        received.extend(got);
        bus.settle();
        bus.events(1);
        if let Some(end) = stream_end(&ev_end, id) {
            assert_eq!(end, Ok(()));
            break;
        }
    }
    let want: Vec<Bytes> = (0..1000).map(|i| b(&i.to_string())).collect();
    assert_eq!(received, want);
    bus.assert_no_leaks();
}

#[test]
fn a_stream_times_out_when_the_sender_stalls_with_credit() {
    let mut bus = calc_bus(2);
    let (id, inc) = open_stream(&mut bus, SECOND);
    bus.ep(1).send_item(inc, b("one")).unwrap();
    bus.run_for(3 * SECOND);
    let ev = bus.events(0);
    assert_eq!(items(&ev, id).len(), 1);
    assert_eq!(stream_end(&ev, id), Some(Err(CallError::TimedOut)));
    // The server was told (Cancel) and freed the call.
    assert!(
        bus.events(1)
            .iter()
            .any(|e| matches!(e, Event::IncomingCancelled { reason: CancelReason::CallerCancelled, .. }))
    );
    assert_eq!(bus.ep(1).send_item(inc, b("x")), Err(CommandError::UnknownCall));
    bus.assert_no_leaks();
}

#[test]
fn a_cancel_mid_stream_frees_state_on_both_sides() {
    let mut bus = calc_bus(2);
    let (id, inc) = open_stream(&mut bus, 10 * SECOND);
    for _ in 0..10 {
        bus.ep(1).send_item(inc, b("x")).unwrap();
    }
    bus.settle();
    bus.ep(0).cancel(id).unwrap();
    bus.settle();
    let ev = bus.events(1);
    assert!(ev.contains(&Event::IncomingCancelled { id: inc, reason: CancelReason::CallerCancelled }));
    assert_eq!(bus.ep(1).send_item(inc, b("x")), Err(CommandError::UnknownCall));
    assert_eq!(bus.ep(0).cancel(id), Err(CommandError::UnknownCall));
    bus.assert_no_leaks();
}

#[test]
fn a_dropped_stream_item_is_reported() {
    let mut bus = calc_bus(2);
    bus.set_plan(|f| if is(f.frame, FrameKind::StreamItem) && f.frame.seq == 5 { Fault::Drop } else { Fault::Deliver });
    let (id, inc) = open_stream(&mut bus, 10 * SECOND);
    for _ in 0..10 {
        bus.ep(1).send_item(inc, b("x")).unwrap();
    }
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(items(&ev, id).len(), 4);
    assert_eq!(stream_end(&ev, id), Some(Err(CallError::ItemLost { expected: 5, got: 6 })));
    assert!(bus.events(1).iter().any(|e| matches!(e, Event::IncomingCancelled { .. })));
    bus.assert_no_leaks();
}

#[test]
fn a_lost_last_item_is_reported_at_the_end() {
    let mut bus = calc_bus(2);
    bus.set_plan(|f| if is(f.frame, FrameKind::StreamItem) && f.frame.seq == 3 { Fault::Drop } else { Fault::Deliver });
    let (id, inc) = open_stream(&mut bus, 10 * SECOND);
    for _ in 0..3 {
        bus.ep(1).send_item(inc, b("x")).unwrap();
    }
    bus.ep(1).finish(inc, Ok(())).unwrap();
    bus.settle();
    assert_eq!(stream_end(&bus.events(0), id), Some(Err(CallError::ItemLost { expected: 3, got: 3 })));
    bus.assert_no_leaks();
}

#[test]
fn reordered_stream_items_are_an_error_never_silently_misordered() {
    let mut bus = calc_bus(2);
    bus.set_plan(|f| {
        if is(f.frame, FrameKind::StreamItem) && f.frame.seq == 2 {
            Fault::Delay(Duration::from_millis(10))
        } else {
            Fault::Deliver
        }
    });
    let (id, inc) = open_stream(&mut bus, 10 * SECOND);
    for _ in 0..4 {
        bus.ep(1).send_item(inc, b("x")).unwrap();
    }
    bus.run_for(SECOND);
    let ev = bus.events(0);
    assert_eq!(items(&ev, id).len(), 1);
    assert_eq!(stream_end(&ev, id), Some(Err(CallError::ItemLost { expected: 2, got: 3 })));
    bus.assert_no_leaks();
}

#[test]
fn a_server_error_ends_the_stream_with_that_error() {
    let mut bus = calc_bus(2);
    let (id, inc) = open_stream(&mut bus, 10 * SECOND);
    bus.ep(1).send_item(inc, b("1")).unwrap();
    bus.ep(1).finish(inc, Err(RemoteError::handler("disk on fire"))).unwrap();
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(items(&ev, id), vec![b("1")]);
    assert_eq!(stream_end(&ev, id), Some(Err(CallError::Remote(RemoteError::handler("disk on fire")))));
    bus.assert_no_leaks();
}

#[test]
fn a_session_carries_items_and_credit_both_ways() {
    let mut bus = calc_bus(2);
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.chat", b("hello"), CallMode::Session, 10 * SECOND).unwrap();
    // Before the server's credit arrives the caller may not send.
    assert_eq!(bus.ep(0).send_item(id, b("early")), Err(CommandError::Blocked));
    bus.settle();
    let (inc, _, body, mode) = requests(&mut bus, 1)[0].clone();
    assert_eq!((mode, body), (CallMode::Session, b("hello")));
    assert!(bus.events(0).contains(&Event::Writable { call: CallRef::Outgoing(id) }));
    for i in 0..3 {
        bus.ep(0).send_item(id, b(&format!("c{i}"))).unwrap();
        bus.ep(1).send_item(inc, b(&format!("s{i}"))).unwrap();
    }
    bus.ep(0).finish(id, Ok(())).unwrap();
    bus.settle();
    let server_side: Vec<Event> = bus.events(1);
    let got: Vec<Bytes> = server_side
        .iter()
        .filter_map(|e| match e {
            Event::Item { call: CallRef::Incoming(i), body } if *i == inc => Some(body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![b("c0"), b("c1"), b("c2")]);
    assert!(server_side.contains(&Event::InputFinished { id: inc }));
    bus.with(1, |ep, now| ep.consumed(now, inc, 3)).unwrap();
    assert_eq!(bus.ep(0).send_item(id, b("after finish")), Err(CommandError::StreamFinished));
    bus.ep(1).finish(inc, Ok(())).unwrap();
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(items(&ev, id), vec![b("s0"), b("s1"), b("s2")]);
    assert_eq!(stream_end(&ev, id), Some(Ok(())));
    bus.assert_no_leaks();
}
