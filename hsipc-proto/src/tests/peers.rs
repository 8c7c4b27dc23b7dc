//! The peer directory: discovery, expiry, departures, restarts.

use super::*;

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

/// A peer the transport found breaking the protocol (a malformed message in its lane) is cut
/// off as a lost one is, but its calls fail as a violation, not as a death; it is known again
/// from its next announce.
#[test]
fn a_peer_that_broke_the_protocol_beneath_the_frames_is_blamed_and_cut_off() {
    let mut bus = calc_bus(2);
    bus.ep(0).serve("back").unwrap();
    bus.settle();
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.slow", b(""), CallMode::Unary, 60 * SECOND).unwrap();
    bus.ep(1).request(now, "back.m", b(""), CallMode::Unary, 60 * SECOND).unwrap();
    bus.settle();
    let served = requests(&mut bus, 0);
    assert_eq!(served.len(), 1, "peer 1's call is open at peer 0");
    let why = "its lane carried a message of an unknown kind";
    bus.ep(0).handle_input(now, crate::Input::PeerBroke { peer: peer(1), why }).unwrap();
    let ev = bus.events(0);
    assert_eq!(response(&ev, id), Some(Err(CallError::Protocol(why))));
    assert!(ev.contains(&Event::PeerLeft { peer: peer(1), reason: LeaveReason::Broke(why) }));
    assert!(
        ev.iter().any(|e| matches!(e, Event::IncomingCancelled { reason: CancelReason::Broken(CallError::Protocol(w)), .. } if *w == why)),
        "the call peer 1 had open here is dropped as broken: {ev:?}"
    );
    assert_eq!(bus.ep(0).stats().peers_broke, 1);
    assert!(!bus.ep(0).has_provider("calc"));
    // Its next announce makes it known again.
    bus.run_for(5 * SECOND);
    assert!(bus.ep(0).has_provider("calc"), "peer 1 is known again");
    // Nothing of peer 1's is left here (peer 1 itself was told nothing: its side is the
    // transport's to end).
    let left = bus.ep(0).table_sizes();
    assert_eq!((left.outgoing, left.incoming), (0, 0), "{left:?}");
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
    bus.ep(i).respond(inc, Ok(b("back").into())).unwrap();
    bus.settle();
    assert_eq!(response(&bus.events(0), id), Some(Ok(b("back"))));
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
    bus.with(0, |ep, now| ep.finish_discovery(now));
    assert!(!bus.ep(0).is_discovering());
    assert!(bus.events(0).contains(&Event::DiscoveryComplete));
    bus.assert_no_leaks();
}

#[test]
fn a_call_made_while_discovering_waits_for_the_provider_instead_of_failing() {
    let mut bus = calc_bus(2);
    let c = bus.add(Config::default());
    let joined = bus.now;
    // Before any answer has arrived the newcomer knows nobody, but it is still discovering:
    // the call is parked, not refused.
    let found = bus.with(c, |ep, now| ep.request(now, "calc.add", b("x"), CallMode::Unary, SECOND)).unwrap();
    let missing = bus.with(c, |ep, now| ep.request(now, "nothing.x", b(""), CallMode::Unary, SECOND)).unwrap();
    bus.settle();
    let (inc, ..) = requests(&mut bus, 1)[0].clone();
    bus.ep(1).respond(inc, Ok(b("y").into())).unwrap();
    bus.settle();
    let ev = bus.timed_events(c);
    let outcome = |want| {
        ev.iter().find_map(|(t, e)| match e {
            Event::Response { id, outcome } if *id == want => Some((*t, outcome.clone())),
            _ => None,
        })
    };
    assert_eq!(outcome(found).map(|(_, o)| o), Some(Ok(b("y"))));
    let (at, o) = outcome(missing).expect("the missing service's call ended");
    assert_eq!(o, Err(CallError::NoSuchService("nothing".into())));
    assert!(at - joined < Duration::from_millis(1), "failed when discovery ended, not at the deadline");
    bus.assert_no_leaks();
}

#[test]
fn a_parked_call_times_out_or_is_cancelled_cleanly() {
    let mut bus = Bus::new(1);
    // Alone and still discovering: both calls park.
    let timed =
        bus.with(0, |ep, now| ep.request(now, "a.b", b(""), CallMode::Unary, Duration::from_millis(100))).unwrap();
    let cancelled = bus.with(0, |ep, now| ep.request(now, "a.b", b(""), CallMode::ServerStream, SECOND)).unwrap();
    assert_eq!(bus.ep(0).table_sizes().outgoing, 2);
    bus.ep(0).cancel(cancelled).unwrap();
    bus.run_for(SECOND);
    let ev = bus.events(0);
    assert_eq!(response(&ev, timed), Some(Err(CallError::TimedOut)));
    assert_eq!(stream_end(&ev, cancelled), None, "a cancelled call has no event");
    // After discovery, a missing service fails at once again.
    assert_eq!(
        bus.with(0, |ep, now| ep.request(now, "a.b", b(""), CallMode::Unary, SECOND)),
        Err(CommandError::NoSuchService { service: "a".into() })
    );
    bus.assert_no_leaks();
}

/// A peer id stays with the process that announced it: an announce that moves it to another
/// process (a bus member claiming it) is refused, and the peer stays as it was.
#[test]
fn an_announce_that_moves_a_known_peer_to_another_process_is_refused() {
    let mut bus = Bus::new(2);
    bus.settle();
    assert_eq!(bus.ep(1).peer(peer(0)).map(|p| p.info.pid), Some(1000));
    let forged = crate::PeerInfo {
        name: "node0".into(),
        pid: 4242,
        services: vec!["stolen".into()],
        patterns: Vec::new(),
        reliable: Vec::new(),
        event_window: 1,
        event_window_bytes: 0,
        peers: 2,
    };
    let payload = crate::codec::encode(&forged).unwrap();
    let bytes = Frame::new(FrameKind::Announce, 0, 0, u64::MAX).with_payload(payload).encode(1 << 20).unwrap();
    let forge = |bus: &mut Bus| {
        let bytes = bytes.clone();
        bus.with(1, |ep, now| ep.handle_input(now, crate::Input::Frame { from: peer(0), bytes }))
    };
    let r = forge(&mut bus);
    assert!(matches!(r, Err(crate::FrameError::Violation { .. })), "{r:?}");
    assert_eq!(bus.ep(1).peer(peer(0)).map(|p| p.info.pid), Some(1000), "still the announcing process");
    assert!(!bus.ep(1).has_provider("stolen"));
    // Nor after the peer left (a goodbye, forged or not): its id stays with its process.
    let goodbye = Frame::new(FrameKind::Goodbye, 0, 0, 0).encode(1 << 20).unwrap();
    bus.with(1, |ep, now| ep.handle_input(now, crate::Input::Frame { from: peer(0), bytes: goodbye })).unwrap();
    assert!(bus.ep(1).peer(peer(0)).is_none());
    let r = forge(&mut bus);
    assert!(matches!(r, Err(crate::FrameError::Violation { .. })), "{r:?}");
    assert!(bus.ep(1).peer(peer(0)).is_none() && !bus.ep(1).has_provider("stolen"));
}
