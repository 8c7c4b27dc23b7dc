//! Unary calls: answers, errors, deadlines, duplicates, routing.

use super::*;

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
    bus.ep(1).respond(inc, Ok(b("3").into())).unwrap();
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
    bus.ep(1).respond(inc, Ok(b("late").into())).unwrap();
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
    bus.ep(1).respond(reqs[0].0, Ok(b("x").into())).unwrap();
    bus.settle();
    let ev = bus.events(0);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Response { .. })).count(), 1);
    assert_eq!(response(&ev, id), Some(Ok(b("x"))));
    assert_eq!(bus.ep(1).stats().duplicates, 1);
    assert_eq!(bus.ep(0).stats().late_or_unknown, 1);
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
    bus.ep(1).respond(inc, Ok(b("ok").into())).unwrap();
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
                CallMode::Unary => bus.ep(1).respond(inc, Ok(b("r").into())),
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
