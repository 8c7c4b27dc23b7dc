//! Deterministic scenarios: endpoints on a virtual bus with a fake clock and fault injection.
//! Each reads as a script and ends with a leak check.

mod util;

use std::time::Duration;

use bytes::Bytes;

use self::util::{Bus, Fault, is, peer};
use crate::frame::{Frame, FrameKind};
use crate::{
    CallError, CallMode, CallRef, CancelReason, CommandError, Config, ErrorCode, Event, IncomingId, LeaveReason,
    RemoteError, RequestId, Topic, TopicFilter,
};

const SECOND: Duration = Duration::from_secs(1);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A bus of `n` nodes where node 1 serves `calc`, everyone discovered everyone.
fn calc_bus(n: usize) -> Bus {
    let mut bus = Bus::new(n);
    bus.ep(1).serve("calc").unwrap();
    bus.settle();
    for i in 0..n {
        bus.events(i);
    }
    bus
}

fn requests(bus: &mut Bus, i: usize) -> Vec<(IncomingId, String, Bytes, CallMode)> {
    bus.events(i)
        .into_iter()
        .filter_map(|e| match e {
            Event::RequestReceived { id, method, body, mode, .. } => Some((id, method, body, mode)),
            _ => None,
        })
        .collect()
}

fn response(events: &[Event], want: RequestId) -> Option<Result<Bytes, CallError>> {
    events.iter().find_map(|e| match e {
        Event::Response { id, outcome } if *id == want => Some(outcome.clone()),
        _ => None,
    })
}

fn items(events: &[Event], want: RequestId) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Item { call: CallRef::Outgoing(id), body } if *id == want => Some(body.clone()),
            _ => None,
        })
        .collect()
}

fn stream_end(events: &[Event], want: RequestId) -> Option<Result<(), CallError>> {
    events.iter().find_map(|e| match e {
        Event::StreamEnded { id, outcome } if *id == want => Some(outcome.clone()),
        _ => None,
    })
}

#[test]
fn peers_discover_each_other_whatever_the_join_order() {
    let mut bus = Bus::new(1);
    bus.ep(0).serve("a").unwrap();
    bus.settle();
    bus.add(Config::default());
    bus.settle();
    bus.add(Config::default());
    bus.ep(2).serve("c").unwrap();
    bus.settle();
    for i in 0..3 {
        let n = bus.ep(i).peers().count();
        assert_eq!(n, 3, "node {i} knows {n} peers");
        assert!(bus.ep(i).has_provider("a") && bus.ep(i).has_provider("c"));
    }
    let joined = bus.events(0).iter().filter(|e| matches!(e, Event::PeerJoined { .. })).count();
    assert_eq!(joined, 2);
    bus.assert_no_leaks();
}

#[test]
fn unary_call_round_trip() {
    let mut bus = calc_bus(2);
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.add", b("1+2"), CallMode::Unary, SECOND).unwrap();
    bus.settle();
    let reqs = requests(&mut bus, 1);
    assert_eq!(reqs.len(), 1);
    let (inc, method, body, mode) = reqs[0].clone();
    assert_eq!((method.as_str(), body, mode), ("calc.add", b("1+2"), CallMode::Unary));
    bus.ep(1).respond(inc, Ok(b("3"))).unwrap();
    bus.settle();
    assert_eq!(response(&bus.events(0), id), Some(Ok(b("3"))));
    bus.assert_no_leaks();
}

#[test]
fn the_deadline_travels_with_the_request() {
    let mut bus = calc_bus(2);
    // The caller's cancel is lost, so the server must notice the deadline by itself.
    bus.set_plan(|f| if is(f.frame, FrameKind::Cancel) { Fault::Drop } else { Fault::Deliver });
    let now = bus.now;
    bus.ep(0).request(now, "calc.add", b(""), CallMode::Unary, Duration::from_millis(1500)).unwrap();
    bus.settle();
    let deadline = bus.events(1).into_iter().find_map(|e| match e {
        Event::RequestReceived { deadline, .. } => Some(deadline),
        _ => None,
    });
    let d = deadline.expect("request arrived") - now;
    assert!(d >= Duration::from_millis(1500) && d <= Duration::from_millis(1501), "{d:?}");
    bus.run_for(2 * SECOND);
    let ev = bus.events(1);
    assert!(ev.iter().any(|e| matches!(e, Event::IncomingCancelled { reason: CancelReason::DeadlineExpired, .. })));
    bus.assert_no_leaks();
}

#[test]
fn handler_error_no_such_method_and_no_such_service_are_distinct() {
    let mut bus = calc_bus(2);
    let now = bus.now;
    assert_eq!(
        bus.ep(0).request(now, "nothing.here", b(""), CallMode::Unary, SECOND),
        Err(CommandError::NoSuchService { service: "nothing".into() })
    );
    let e1 = bus.ep(0).request(now, "calc.div", b(""), CallMode::Unary, SECOND).unwrap();
    let e2 = bus.ep(0).request(now, "calc.nope", b(""), CallMode::Unary, SECOND).unwrap();
    bus.settle();
    let reqs = requests(&mut bus, 1);
    bus.ep(1).respond(reqs[0].0, Err(RemoteError::handler("division by zero"))).unwrap();
    bus.ep(1).respond(reqs[1].0, Err(RemoteError::new(ErrorCode::NO_SUCH_METHOD, "no method nope"))).unwrap();
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(response(&ev, e1), Some(Err(CallError::Remote(RemoteError::handler("division by zero")))));
    assert_eq!(response(&ev, e2), Some(Err(CallError::NoSuchMethod("calc.nope".into()))));
    // A request to a peer that stopped serving the service (its announce not yet seen).
    let e3 = bus.ep(0).request_to(now, peer(1), "other.x", b(""), CallMode::Unary, SECOND).unwrap();
    bus.settle();
    assert_eq!(response(&bus.events(0), e3), Some(Err(CallError::NoSuchService("other".into()))));
    bus.assert_no_leaks();
}

#[test]
fn a_call_times_out_and_its_late_response_is_dropped() {
    let mut bus = calc_bus(2);
    bus.set_plan(
        |f| {
            if is(f.frame, FrameKind::Response) { Fault::Delay(Duration::from_secs(5)) } else { Fault::Deliver }
        },
    );
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.add", b(""), CallMode::Unary, SECOND).unwrap();
    bus.settle();
    let (inc, ..) = requests(&mut bus, 1)[0].clone();
    bus.ep(1).respond(inc, Ok(b("late"))).unwrap();
    bus.run_for(2 * SECOND);
    let ev = bus.timed_events(0);
    let (at, outcome) = ev
        .iter()
        .find_map(|(t, e)| match e {
            Event::Response { id: i, outcome } if *i == id => Some((*t, outcome.clone())),
            _ => None,
        })
        .expect("timeout event");
    assert_eq!(outcome, Err(CallError::TimedOut));
    assert_eq!(at - now, SECOND, "times out exactly at the deadline (virtual clock)");
    bus.run_for(5 * SECOND);
    assert!(response(&bus.events(0), id).is_none(), "the late response is not delivered");
    assert_eq!(bus.ep(0).stats().late_or_unknown, 1);
    bus.assert_no_leaks();
}

#[test]
fn duplicated_requests_and_responses_are_dropped() {
    let mut bus = calc_bus(2);
    bus.set_plan(|f| match f.frame.kind {
        FrameKind::Request | FrameKind::Response => Fault::Duplicate,
        _ => Fault::Deliver,
    });
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.add", b(""), CallMode::Unary, SECOND).unwrap();
    bus.settle();
    let reqs = requests(&mut bus, 1);
    assert_eq!(reqs.len(), 1, "the handler runs once");
    bus.ep(1).respond(reqs[0].0, Ok(b("x"))).unwrap();
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Response { .. })).count(), 1);
    assert_eq!(response(&ev, id), Some(Ok(b("x"))));
    assert_eq!(bus.ep(1).stats().duplicates, 1);
    assert_eq!(bus.ep(0).stats().late_or_unknown, 1);
    bus.assert_no_leaks();
}

/// Opens a server stream from node 0 to node 1; returns (client id, server id).
fn open_stream(bus: &mut Bus, timeout: Duration) -> (RequestId, IncomingId) {
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.count", b(""), CallMode::ServerStream, timeout).unwrap();
    bus.settle();
    let (inc, _, _, mode) = requests(bus, 1)[0].clone();
    assert_eq!(mode, CallMode::ServerStream);
    (id, inc)
}

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

#[test]
fn peer_expiry_fails_pending_calls_and_streams() {
    let mut bus = calc_bus(3);
    let now = bus.now;
    let unary = bus.ep(0).request(now, "calc.slow", b(""), CallMode::Unary, 60 * SECOND).unwrap();
    let stream = bus.ep(0).request(now, "calc.count", b(""), CallMode::ServerStream, 60 * SECOND).unwrap();
    bus.settle();
    let served = requests(&mut bus, 1);
    assert_eq!(served.len(), 2);
    bus.ep(1).send_item(served[1].0, b("x")).unwrap();
    bus.settle();
    bus.kill(1); // no goodbye: the process just vanished
    let killed_at = bus.now;
    bus.run_for(5 * SECOND);
    let ev = bus.timed_events(0);
    let find = |want: &dyn Fn(&Event) -> bool| ev.iter().find(|(_, e)| want(e)).map(|(t, _)| *t);
    let t1 = find(&|e| matches!(e, Event::Response { id, outcome: Err(CallError::PeerLost) } if *id == unary));
    let t2 = find(&|e| matches!(e, Event::StreamEnded { id, outcome: Err(CallError::PeerLost) } if *id == stream));
    let t3 = find(&|e| matches!(e, Event::PeerLeft { reason: LeaveReason::Expired, .. }));
    let timeout = Config::default().peer_timeout;
    let heartbeat = Config::default().heartbeat_interval;
    for t in [t1, t2, t3] {
        let after = t.expect("failed with PeerLost") - killed_at;
        assert!(after <= timeout + heartbeat, "expired {after:?} after the kill");
    }
    // Node 2 (a bystander) also forgets it; nobody serves calc any more.
    assert!(!bus.ep(2).has_provider("calc"));
    assert_eq!(
        bus.with(0, |ep, now| ep.request(now, "calc.add", b(""), CallMode::Unary, SECOND)),
        Err(CommandError::NoSuchService { service: "calc".into() })
    );
    bus.assert_no_leaks();
}

#[test]
fn a_transport_reported_loss_fails_calls_at_once() {
    let mut bus = calc_bus(2);
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.slow", b(""), CallMode::Unary, 60 * SECOND).unwrap();
    bus.settle();
    bus.kill(1);
    bus.ep(0).handle_input(now, crate::Input::PeerLost(peer(1))).unwrap();
    let ev = bus.events(0);
    assert_eq!(response(&ev, id), Some(Err(CallError::PeerLost)));
    assert!(ev.contains(&Event::PeerLeft { peer: peer(1), reason: LeaveReason::Lost }));
    bus.assert_no_leaks();
}

#[test]
fn close_says_goodbye_and_fails_everything_open() {
    let mut bus = calc_bus(2);
    let now = bus.now;
    let mine = bus.ep(0).request(now, "calc.slow", b(""), CallMode::Unary, 60 * SECOND).unwrap();
    let theirs = bus.ep(1).request(now, "calc.self", b(""), CallMode::Unary, 60 * SECOND).unwrap();
    bus.settle();
    bus.ep(1).close();
    bus.settle();
    let ev0 = bus.events(0);
    assert_eq!(response(&ev0, mine), Some(Err(CallError::PeerLost)));
    assert!(ev0.contains(&Event::PeerLeft { peer: peer(1), reason: LeaveReason::Goodbye }));
    let ev1 = bus.events(1);
    assert_eq!(response(&ev1, theirs), Some(Err(CallError::Closed)));
    assert_eq!(bus.ep(1).poll_timeout(), None);
    assert_eq!(bus.ep(1).serve("x"), Err(CommandError::Closed));
    assert!(!bus.ep(0).has_provider("calc"));
    bus.assert_no_leaks();
}

#[test]
fn calls_to_a_service_served_locally_loop_back() {
    let mut bus = calc_bus(2);
    let now = bus.now;
    let id = bus.ep(1).request(now, "calc.add", b("local"), CallMode::Unary, SECOND).unwrap();
    bus.settle();
    let (inc, _, body, _) = requests(&mut bus, 1)[0].clone();
    assert_eq!(body, b("local"));
    bus.ep(1).respond(inc, Ok(b("ok"))).unwrap();
    bus.settle();
    assert_eq!(response(&bus.events(1), id), Some(Ok(b("ok"))));
    bus.assert_no_leaks();
}

#[test]
fn calls_round_robin_over_providers() {
    let mut bus = Bus::new(3);
    bus.ep(1).serve("calc").unwrap();
    bus.ep(2).serve("calc").unwrap();
    bus.settle();
    let now = bus.now;
    for _ in 0..10 {
        bus.ep(0).request(now, "calc.add", b(""), CallMode::Unary, SECOND).unwrap();
    }
    bus.settle();
    assert_eq!(requests(&mut bus, 1).len(), 5);
    assert_eq!(requests(&mut bus, 2).len(), 5);
    bus.run_for(2 * SECOND);
    bus.assert_no_leaks();
}

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
    bus.ep(1).subscribe(TopicFilter::new("sensor/+").unwrap()).unwrap();
    bus.ep(2).subscribe(TopicFilter::new("sensor/#").unwrap()).unwrap();
    bus.ep(3).subscribe(TopicFilter::new("other/#").unwrap()).unwrap();
    bus.settle();
    for i in 0..4 {
        bus.events(i);
    }
    for t in ["sensor/temp", "sensor/room1/temp", "sensor", "other/x", "nothing"] {
        bus.ep(0).publish(&Topic::new(t).unwrap(), b(t)).unwrap();
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
    bus.ep(1).subscribe(TopicFilter::new("t/#").unwrap()).unwrap();
    bus.settle();
    bus.set_plan(|f| {
        if (f.from, f.to) == (0, 1) && is(f.frame, FrameKind::Publish) && (f.frame.seq == 2 || f.frame.seq == 3) {
            Fault::Drop
        } else {
            Fault::Deliver
        }
    });
    for i in 0..5 {
        bus.ep(0).publish(&Topic::new("t/x").unwrap(), b(&i.to_string())).unwrap();
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
    let s = bus.ep(0).subscribe(TopicFilter::new("a/+").unwrap()).unwrap();
    bus.settle();
    assert_eq!(bus.ep(0).publish(&Topic::new("a/b").unwrap(), b("x")).unwrap(), 1);
    bus.settle();
    assert_eq!(published(&bus.events(0)).len(), 1);
    bus.ep(0).unsubscribe(s).unwrap();
    bus.settle();
    assert_eq!(bus.ep(1).publish(&Topic::new("a/b").unwrap(), b("x")).unwrap(), 0);
    assert_eq!(bus.ep(0).table_sizes().subscriptions, 0);
    bus.assert_no_leaks();
}

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
        bus.ep(0).publish(&Topic::new("a").unwrap(), big.clone()),
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
    bus.ep(1).subscribe(TopicFilter::new("#").unwrap()).unwrap();
    bus.settle();
    let topic = Topic::new("x").unwrap();
    let mut ok = 0;
    let err = loop {
        match bus.ep(0).publish(&topic, b("e")) {
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
fn a_restarted_server_is_reachable_again() {
    let mut bus = calc_bus(2);
    bus.kill(1);
    bus.run_for(5 * SECOND);
    let now = bus.now;
    assert!(bus.ep(0).request(now, "calc.add", b(""), CallMode::Unary, SECOND).is_err());
    let i = bus.add(Config::default());
    bus.ep(i).serve("calc").unwrap();
    bus.settle();
    let id = bus.with(0, |ep, now| ep.request(now, "calc.add", b(""), CallMode::Unary, SECOND)).unwrap();
    bus.settle();
    let (inc, ..) = requests(&mut bus, i)[0].clone();
    bus.ep(i).respond(inc, Ok(b("back"))).unwrap();
    bus.settle();
    assert_eq!(response(&bus.events(0), id), Some(Ok(b("back"))));
    bus.assert_no_leaks();
}

#[test]
fn random_faults_never_leave_a_call_without_an_outcome() {
    // A seeded storm of drops, duplicates and delays over many calls and streams: every call
    // still ends exactly once, and no state leaks.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut bus = calc_bus(3);
    bus.set_plan(move |f| {
        if matches!(f.frame.kind, FrameKind::Announce | FrameKind::Goodbye) {
            return Fault::Deliver;
        }
        match rand() % 20 {
            0 => Fault::Drop,
            1 => Fault::Duplicate,
            2 => Fault::Delay(Duration::from_millis(rand() % 3000)),
            _ => Fault::Deliver,
        }
    });
    let now = bus.now;
    let mut calls = Vec::new();
    for i in 0..200 {
        let mode = if i % 4 == 0 { CallMode::ServerStream } else { CallMode::Unary };
        let from = if i % 2 == 0 { 0 } else { 2 };
        calls.push((from, bus.ep(from).request(now, "calc.op", b(""), mode, SECOND).unwrap()));
    }
    for _ in 0..50 {
        bus.run_for(Duration::from_millis(100));
        for (inc, _, _, mode) in requests(&mut bus, 1) {
            let _ = match mode {
                CallMode::Unary => bus.ep(1).respond(inc, Ok(b("r"))),
                _ => bus.ep(1).send_item(inc, b("i")).and_then(|()| bus.ep(1).finish(inc, Ok(()))),
            };
        }
    }
    bus.run_for(10 * SECOND);
    let mut ends = std::collections::HashMap::new();
    for node in [0, 2] {
        for e in bus.events(node) {
            match e {
                Event::Response { id, .. } | Event::StreamEnded { id, .. } => *ends.entry((node, id)).or_insert(0) += 1,
                _ => {}
            }
        }
    }
    for c in &calls {
        assert_eq!(ends.get(c), Some(&1), "call {c:?} must end exactly once");
    }
    bus.assert_no_leaks();
}

#[test]
fn a_newcomer_finishes_discovery_as_soon_as_every_peer_has_answered() {
    let mut bus = Bus::new(2);
    bus.ep(0).serve("a").unwrap();
    bus.settle();
    assert!(!bus.ep(0).is_discovering() && !bus.ep(1).is_discovering());
    let joined_at = bus.now;
    let c = bus.add(Config::default());
    assert!(bus.ep(c).is_discovering());
    bus.settle();
    let ev = bus.timed_events(c);
    let (at, _) = ev.iter().find(|(_, e)| *e == Event::DiscoveryComplete).expect("discovery completes");
    assert!(*at - joined_at < Duration::from_millis(1), "completed by the answers, not the window");
    assert!(!bus.ep(c).is_discovering());
    assert!(bus.ep(c).has_provider("a"));
    bus.assert_no_leaks();
}

#[test]
fn a_lone_endpoint_finishes_discovery_after_the_window_or_when_told() {
    let mut bus = Bus::new(1);
    let start = bus.now;
    bus.run_for(SECOND);
    let ev = bus.timed_events(0);
    let (at, _) = ev.iter().find(|(_, e)| *e == Event::DiscoveryComplete).expect("discovery completes");
    assert_eq!(*at - start, Config::default().discovery_window);
    let mut bus = Bus::new(1);
    bus.ep(0).finish_discovery();
    assert!(!bus.ep(0).is_discovering());
    assert!(bus.events(0).contains(&Event::DiscoveryComplete));
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
