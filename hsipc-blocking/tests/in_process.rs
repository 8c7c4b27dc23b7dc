//! The blocking hub over the in-memory transport: every feature in one process, fast.
//!
//! No test asserts a tight duration: an event that must not arrive is shown absent by a marker
//! sent after it (frames between two hubs keep their order), and the only timing claim is
//! "well before the deadline" (half the timeout that would otherwise have ended the wait).

use std::time::{Duration, Instant};

use hsipc_blocking::{Error, ProcessHub, Qos, Subscription};
use hsipc_transport::MemBus;

/// The call timeout of every hub `hub` makes.
const TIMEOUT: Duration = Duration::from_secs(5);

fn hub(bus: &MemBus, name: &str) -> ProcessHub {
    ProcessHub::builder(name).transport(bus.connector()).default_timeout(TIMEOUT).build().unwrap()
}

#[test]
fn calls_streams_and_errors() {
    let bus = MemBus::new();
    let server = hub(&bus, "server");
    let client = hub(&bus, "client");
    server.serve("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b)).unwrap();
    server.serve("calc.div", |(a, b): (i64, i64)| if b == 0 { Err("division by zero") } else { Ok(a / b) }).unwrap();
    server
        .serve_stream("calc.count", |n: u32, sink: &hsipc_blocking::StreamSink<u32>| {
            for i in 0..n {
                sink.send(&i)?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
    client.wait_for_service("calc", Duration::from_secs(5)).unwrap();
    assert_eq!(client.call::<_, i64>("calc.add", &(2, 3)).unwrap(), 5);
    match client.call::<_, i64>("calc.div", &(1, 0)) {
        Err(Error::Remote(e)) => assert_eq!(e.message, "division by zero"),
        other => panic!("{other:?}"),
    }
    // A missing method or service is an answer of its own, not the timeout, and comes well
    // before the call's timeout.
    let t = Instant::now();
    assert!(matches!(client.call::<_, i64>("calc.nope", &()), Err(Error::NoSuchMethod { .. })));
    assert!(t.elapsed() < TIMEOUT / 2, "NoSuchMethod after {:?}", t.elapsed());
    let t = Instant::now();
    assert!(matches!(client.call::<_, i64>("other.x", &()), Err(Error::NoSuchService { .. })));
    assert!(t.elapsed() < TIMEOUT / 2, "NoSuchService after {:?}", t.elapsed());
    let items: Vec<u32> = client.call_stream("calc.count", 1000u32).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(items, (0..1000).collect::<Vec<_>>());
    // A call to our own service loops back.
    assert_eq!(server.call::<_, i64>("calc.add", &(1, 1)).unwrap(), 2);
}

#[test]
fn publish_subscribe_with_wildcards() {
    let bus = MemBus::new();
    let publisher = hub(&bus, "pub");
    let plus = hub(&bus, "plus");
    let hash = hub(&bus, "hash");
    let s1 = plus.subscribe::<f64>("sensor/+").unwrap();
    let s2 = hash.subscribe::<f64>("sensor/#").unwrap();
    // Wait until the publisher knows both patterns.
    let deadline = Instant::now() + Duration::from_secs(5);
    while publisher.peers().unwrap().iter().filter(|p| !p.patterns.is_empty()).count() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    publisher.publish("sensor/temp", 1.5).unwrap();
    publisher.publish("sensor/room/temp", 2.5).unwrap();
    publisher.publish("sensor", 3.5).unwrap();
    publisher.publish("done", 0.0).unwrap();
    // A marker last: what a subscription must not get was published before it, by the same
    // publisher, so had it been delivered it would come ahead of the marker.
    publisher.publish("sensor/end", 9.5).unwrap();
    let topics = |s: &Subscription<f64>, n| -> Vec<String> {
        (0..n).map(|_| s.recv_timeout(Duration::from_secs(5)).unwrap().topic).collect()
    };
    assert_eq!(topics(&s1, 2), ["sensor/temp", "sensor/end"]);
    assert_eq!(topics(&s2, 4), ["sensor/temp", "sensor/room/temp", "sensor", "sensor/end"]);
    // And nothing after the marker (it was the last event published).
    assert!(s1.try_recv().is_none());
    assert!(s2.try_recv().is_none());
}

#[test]
fn duplicate_names_fail_and_close_removes_services() {
    let bus = MemBus::new();
    let a = hub(&bus, "a");
    assert!(ProcessHub::builder("a").transport(bus.connector()).build().is_err());
    // b would drop a silent peer only after 60 s: a service gone well before that was withdrawn
    // by the goodbye of close (in one process there is no process id to watch).
    let peer_timeout = Duration::from_secs(60);
    let b = ProcessHub::builder("b")
        .transport(bus.connector())
        .default_timeout(TIMEOUT)
        .heartbeat(Duration::from_secs(10), peer_timeout)
        .build()
        .unwrap();
    a.serve("svc.m", |x: u8| Ok::<_, String>(x)).unwrap();
    b.wait_for_service("svc", Duration::from_secs(5)).unwrap();
    a.close();
    let closed = Instant::now();
    loop {
        if !b.peers().unwrap().iter().any(|p| p.services.contains(&"svc".to_string())) {
            break;
        }
        assert!(closed.elapsed() < peer_timeout / 2, "service still listed after close");
        std::thread::yield_now();
    }
    assert!(matches!(a.call::<_, u8>("svc.m", &1u8), Err(Error::Closed)));
}

#[test]
fn a_panicking_handler_answers_with_an_error_and_the_hub_keeps_serving() {
    let bus = MemBus::new();
    let server = hub(&bus, "server");
    let client = hub(&bus, "client");
    server.serve("svc.boom", |_: ()| -> Result<u8, String> { panic!("kaboom") }).unwrap();
    server.serve("svc.ok", |x: u8| Ok::<_, String>(x)).unwrap();
    client.wait_for_service("svc", Duration::from_secs(5)).unwrap();
    match client.call::<_, u8>("svc.boom", &()) {
        Err(Error::Remote(e)) => assert!(e.message.contains("panicked"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.call::<_, u8>("svc.ok", &7u8).unwrap(), 7);
}

#[test]
fn dropping_a_response_stream_cancels_it_at_the_server() {
    let bus = MemBus::new();
    let server = hub(&bus, "server");
    let client = hub(&bus, "client");
    let (ended_tx, ended) = flume::bounded(1);
    server
        .serve_stream("svc.forever", move |(): (), sink: &hsipc_blocking::StreamSink<u64>| {
            let mut i = 0u64;
            let outcome = loop {
                if let Err(e) = sink.send(&i) {
                    break e;
                }
                i += 1;
            };
            let _ = ended_tx.send(format!("{outcome:?}"));
            Err::<(), _>(outcome)
        })
        .unwrap();
    client.wait_for_service("svc", Duration::from_secs(5)).unwrap();
    let mut stream = client.call_stream::<_, u64>("svc.forever", &()).unwrap();
    for want in 0..10 {
        assert_eq!(stream.next().unwrap().unwrap(), want);
    }
    drop(stream);
    let outcome = ended.recv_timeout(Duration::from_secs(5)).expect("the handler stopped");
    assert_eq!(outcome, "Cancelled");
}

#[test]
fn dropping_a_subscription_unsubscribes_everywhere() {
    let bus = MemBus::new();
    let watcher = hub(&bus, "watcher");
    let subscriber = hub(&bus, "sub");
    let has_pattern = || watcher.peers().unwrap().iter().any(|p| p.patterns.contains(&"a/#".to_string()));
    let sub = subscriber.subscribe::<u8>("a/#").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has_pattern() {
        assert!(Instant::now() < deadline, "the pattern never appeared");
        std::thread::yield_now();
    }
    drop(sub);
    while has_pattern() {
        assert!(Instant::now() < deadline, "the pattern never went away");
        std::thread::yield_now();
    }
}

/// A publisher and a subscriber whose subscription to `t` holds four events, after ten were
/// published into it; the handles must stay alive for the subscription to.
fn overflowed(bus: &MemBus, qos: Qos) -> (ProcessHub, ProcessHub, Subscription<u32>) {
    let publisher = hub(bus, "pub");
    let subscriber = ProcessHub::builder("sub").transport(bus.connector()).subscription_qos(qos).build().unwrap();
    let sub = subscriber.subscribe::<u32>("t").unwrap();
    subscriber.serve("sub.sync", |()| Ok::<_, String>(())).unwrap();
    // The announce of the service comes after (and also carries) the subscription's pattern.
    publisher.wait_for_service("sub", Duration::from_secs(5)).unwrap();
    for i in 0..10u32 {
        publisher.publish("t", i).unwrap();
    }
    // Frames between two hubs stay in order, so once this call is answered all ten events
    // have reached the subscription.
    publisher.call::<_, ()>("sub.sync", &()).unwrap();
    (publisher, subscriber, sub)
}

fn take4(sub: &Subscription<u32>) -> Vec<(u32, u64)> {
    (0..4).map(|_| sub.recv_timeout(Duration::from_secs(5)).map(|e| (e.payload, e.missed)).unwrap()).collect()
}

#[test]
fn a_full_drop_newest_subscription_reports_the_dropped_tail_when_emptied() {
    let bus = MemBus::new();
    let (publisher, _subscriber, sub) = overflowed(&bus, Qos::DropNewest(4));
    // The first four fit; the other six were dropped.
    assert_eq!(take4(&sub), [(0, 0), (1, 0), (2, 0), (3, 0)]);
    // All ten had arrived before `overflowed` returned (its call was answered after them), so
    // the queue is empty now: the lost end of the burst is told at once, and only once.
    assert!(matches!(sub.try_recv(), Some(Err(Error::EventsDropped { missed: 6 }))));
    assert!(sub.try_recv().is_none());
    publisher.publish("t", 99u32).unwrap();
    let next = sub.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((next.payload, next.missed), (99, 0));
}

#[test]
fn a_full_drop_oldest_subscription_keeps_the_latest_events() {
    let bus = MemBus::new();
    let (_publisher, _subscriber, sub) = overflowed(&bus, Qos::KeepLast(4));
    // The newest four are kept; the first of them says six were lost before it.
    assert_eq!(take4(&sub), [(6, 6), (7, 0), (8, 0), (9, 0)]);
}

#[test]
fn unserving_the_last_method_withdraws_the_service() {
    let bus = MemBus::new();
    let server = hub(&bus, "server");
    let client = hub(&bus, "client");
    server.serve("svc.a", |x: u8| Ok::<_, String>(x)).unwrap();
    server.serve("svc.b", |x: u8| Ok::<_, String>(x)).unwrap();
    client.wait_for_service("svc", Duration::from_secs(5)).unwrap();
    server.unserve("svc.a").unwrap();
    assert!(matches!(client.call::<_, u8>("svc.a", &1u8), Err(Error::NoSuchMethod { .. })));
    assert_eq!(client.call::<_, u8>("svc.b", &2u8).unwrap(), 2);
    server.unserve("svc.b").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.peers().unwrap().iter().any(|p| p.services.contains(&"svc".to_string())) {
        assert!(Instant::now() < deadline, "the service was never withdrawn");
        std::thread::yield_now();
    }
    assert!(matches!(client.call::<_, u8>("svc.b", &2u8), Err(Error::NoSuchService { .. })));
}
