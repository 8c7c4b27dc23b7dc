//! Real processes talking over the real ipmb bus, through the blocking hub.
//!
//! Each test runs on a bus of its own (so tests run in parallel) and starts its peers as child
//! processes (see `common`). No test asserts a tight duration. What must happen first is proven
//! by the order of events: a marker sent after whatever must not arrive (ipmb and hsipc keep
//! each sender's order), a handler or reader held until the parent releases it. The strongest
//! timing claim is "well before the deadline": half of the call timeout, peer timeout or other
//! limit that would have ended the wait had hsipc not noticed sooner ([`well_before`]). Measured
//! durations are printed for information.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Peer, command, env, env_or, kind, report, unique_bus};
use hsipc::Error;
use hsipc::blocking::{ProcessHub, StreamSink};

const LONG: Duration = Duration::from_secs(60);

/// The children's default call timeout (`HSIPC_TIMEOUT_S` overrides it).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A heartbeat so slow that its peer timeout (six heartbeats: 30 s) is far beyond any bound a
/// test asserts: a peer that disappears well before it was noticed through its goodbye or its
/// process id, not by its silence.
const SLOW_HEARTBEAT: (&str, &str) = ("HSIPC_HEARTBEAT_MS", "5000");
const SLOW_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound for something that must not wait out `deadline`: well before it, with room for a
/// loaded machine.
fn well_before(deadline: Duration) -> Duration {
    deadline / 2
}

// ---------------------------------------------------------------------------------------------
// Child roles

/// Entry point of child processes; does nothing in the parent.
#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    common::watch_parent(Duration::from_secs(120));
    match role.as_str() {
        "bystander" => bystander(),
        "server" => server(),
        "client" => client(&env("HSIPC_SCRIPT")),
        "subscriber" => subscriber(),
        "publisher" => publisher(),
        "exit_after_ready" => exit_after_ready(),
        "rogue" => rogue(),
        "stuck" => stuck(),
        "spawner" => spawner(),
        other => panic!("unknown role {other}"),
    }
}

fn hub() -> ProcessHub {
    let name = env("HSIPC_NAME");
    let mut b = ProcessHub::builder(&name)
        .default_timeout(Duration::from_secs(env_or("HSIPC_TIMEOUT_S", CALL_TIMEOUT.as_secs())));
    if let Ok(ms) = std::env::var("HSIPC_HEARTBEAT_MS") {
        let ms: u64 = ms.parse().unwrap();
        b = b.heartbeat(Duration::from_millis(ms), Duration::from_millis(ms * 6));
    }
    if let Ok(n) = std::env::var("HSIPC_MAX_MESSAGE") {
        b = b.max_message_len(n.parse().unwrap());
    }
    if std::env::var("HSIPC_LANES").is_ok_and(|v| v == "0") {
        b = b.direct_lanes(false);
    }
    if let Ok(s) = std::env::var("HSIPC_LANE_STALL_S") {
        let mut cfg = hsipc::transport::ipmb::IpmbConfig::new(env("HSIPC_BUS"));
        cfg.lane_stall_timeout = Duration::from_secs(s.parse().unwrap());
        b = b.transport(hsipc::transport::ipmb::IpmbBus::new(cfg).connector());
    }
    b.build().unwrap_or_else(|e| {
        report(format!("JOIN_FAILED {}", e));
        std::process::exit(0);
    })
}

/// Joins and idles until told to quit.
fn bystander() {
    let hub = hub();
    report("READY");
    wait_quit(&hub);
}

fn wait_quit(hub: &ProcessHub) {
    wait_quit_or(hub, |_| {});
}

/// Takes the parent's commands until `quit` (or `exit_now`); `other` gets every other one.
fn wait_quit_or(hub: &ProcessHub, mut other: impl FnMut(&str)) {
    while let Some(cmd) = command() {
        match cmd.as_str() {
            "quit" => break,
            "exit_now" => std::process::exit(0), // no goodbye: like a crash, but clean exit
            cmd => other(cmd),
        }
    }
    hub.close();
    report("BYE");
}

/// Serves the `calc` service. `calc.hold` is a slow handler that runs until `calc.release` is
/// called (or `LONG` has passed: then it fails), so a test can know it is still running.
fn server() {
    let hub = hub();
    let name = hub.name().to_string();
    // Calls of calc.add; of slow handlers (calc.slow, calc.hold); of slow handlers running now.
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let c = counts.clone();
    hub.serve("calc.add", move |(a, b): (i64, i64)| {
        c[0].fetch_add(1, Ordering::Relaxed);
        Ok::<_, String>(a + b)
    })
    .unwrap();
    hub.serve("calc.div", |(a, b): (i64, i64)| if b == 0 { Err("division by zero") } else { Ok(a / b) }).unwrap();
    hub.serve("calc.echo", |b: Bytes| Ok::<_, String>(b)).unwrap();
    let c = counts.clone();
    hub.serve("calc.slow", move |ms: u64| {
        c[1].fetch_add(1, Ordering::Relaxed);
        c[2].fetch_add(1, Ordering::Relaxed);
        report("SLOW_STARTED");
        std::thread::sleep(Duration::from_millis(ms));
        c[2].fetch_sub(1, Ordering::Relaxed);
        Ok::<_, String>(ms)
    })
    .unwrap();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (c, g) = (counts.clone(), gate.clone());
    hub.serve("calc.hold", move |()| {
        c[1].fetch_add(1, Ordering::Relaxed);
        c[2].fetch_add(1, Ordering::Relaxed);
        let (released, cv) = &*g;
        let released = *cv.wait_timeout_while(released.lock().unwrap(), LONG, |r| !*r).unwrap().0;
        c[2].fetch_sub(1, Ordering::Relaxed);
        if released { Ok(()) } else { Err("calc.hold was never released") }
    })
    .unwrap();
    hub.serve("calc.release", move |()| {
        let (released, cv) = &*gate;
        *released.lock().unwrap() = true;
        cv.notify_all();
        Ok::<_, String>(())
    })
    .unwrap();
    let c = counts.clone();
    hub.serve("calc.stats", move |()| {
        Ok::<_, String>((c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed), c[2].load(Ordering::Relaxed)))
    })
    .unwrap();
    hub.serve("calc.whoami", move |()| Ok::<_, String>(name.clone())).unwrap();
    let me = hub.clone();
    hub.serve("calc.bad_frames", move |()| Ok::<_, String>(me.stats().protocol.bad_frames)).unwrap();
    hub.serve_stream("calc.count", |(n, size): (u64, usize), sink: &StreamSink<(u64, Bytes)>| {
        let pad = Bytes::from(vec![7u8; size]);
        for i in 0..n {
            sink.send(&(i, pad.clone()))?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    report("READY");
    wait_quit(&hub);
}

/// Subscribes to `HSIPC_PATTERN` and reports every event. With `HSIPC_HOLD` set it is a reader
/// stuck on its first event: it reports `HELD` and goes on only when the parent says `release`.
fn subscriber() {
    let hub = hub();
    let sub = hub.subscribe::<String>(&env("HSIPC_PATTERN")).unwrap();
    let hold = std::env::var("HSIPC_HOLD").is_ok();
    let (release, released) = flume::bounded::<()>(1);
    if std::env::var("HSIPC_FAST_PATTERN").is_ok() {
        // A second, fast subscription in the same process, and a service to call meanwhile.
        let fast = hub.subscribe::<String>(&env("HSIPC_FAST_PATTERN")).unwrap();
        std::thread::spawn(move || {
            for ev in fast {
                report(format!("FAST {}", ev.unwrap().payload));
            }
        });
        hub.serve("sub.ping", |()| Ok::<_, String>("pong".to_string())).unwrap();
    }
    let reader = std::thread::spawn(move || {
        for (i, ev) in sub.enumerate() {
            let ev = ev.unwrap();
            if hold && i == 0 {
                report("HELD");
                let _ = released.recv_timeout(LONG); // (or the sender is gone: we are quitting)
            }
            report(format!("EV {} {} {}", ev.topic, ev.payload, ev.missed));
        }
    });
    report("READY");
    wait_quit_or(&hub, |cmd| {
        if cmd == "release" {
            let _ = release.try_send(());
        }
    });
    let _ = reader.join();
}

/// Publishes each `topic=payload` of `HSIPC_EVENTS` (comma separated) once `HSIPC_WAIT_SUBS`
/// subscribers are known, and reports `PUBLISHED peers=<the hubs it knew, sorted>`. Later
/// `publish <events>` commands publish more the same way.
fn publisher() {
    let hub = hub();
    report("READY");
    let want: usize = env_or("HSIPC_WAIT_SUBS", 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.peers().unwrap().iter().filter(|p| !p.patterns.is_empty()).count() < want {
        assert!(Instant::now() < deadline, "subscribers never appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    publish_all(&hub, &env("HSIPC_EVENTS"));
    wait_quit_or(&hub, |cmd| {
        if let Some(events) = cmd.strip_prefix("publish ") {
            publish_all(&hub, events);
        }
    });
}

fn publish_all(hub: &ProcessHub, events: &str) {
    for pair in events.split(',') {
        let (topic, payload) = pair.split_once('=').unwrap();
        hub.publish(topic, payload).unwrap();
    }
    report(format!("PUBLISHED peers={}", peer_names(hub)));
}

/// The names of the hubs `hub` knows (itself included), sorted, comma separated.
fn peer_names(hub: &ProcessHub) -> String {
    let mut names: Vec<String> = hub.peers().unwrap().into_iter().map(|p| p.name).collect();
    names.sort();
    names.join(",")
}

/// Creates a hub that serves and subscribes, reports READY, and returns from "main".
fn exit_after_ready() {
    let hub = hub();
    hub.serve("quick.x", |()| Ok::<_, String>(())).unwrap();
    let _sub = hub.subscribe::<u8>("a/#").unwrap();
    report("READY");
}

/// Joins the bus with raw ipmb, not as a hub, and sends every hub malformed or hostile
/// messages: bad envelopes, garbage frames, lying lengths, frames from a peer nobody knows.
fn rogue() {
    use hsipc::proto::frame::{Flags, Frame, FrameKind};
    let identifier = format!("hsipc.{}", env("HSIPC_BUS"));
    let options = ipmb::Options::new(identifier, ipmb::label!("hsipc", "rogue"), "");
    let (tx, mut rx) = ipmb::join::<ipmb::BytesMessage, ipmb::BytesMessage>(options, None).unwrap();
    // Keep reading what the bus sends us (our own multicasts, hubs' announces): an ipmb member
    // that stops reading stalls the whole bus, rogue or not.
    std::thread::spawn(move || {
        loop {
            let _ = rx.recv(Some(Duration::from_millis(100)));
        }
    });
    report("READY");
    // SAFETY: eventfd returns a new fd or -1 (checked).
    let carrier = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(carrier >= 0);
    let send = |data: Vec<u8>, region: Option<ipmb::MemoryRegion>| {
        let mut msg =
            ipmb::Message::new(ipmb::Selector::multicast("hsipc"), ipmb::BytesMessage { format: 0x4853, data });
        match region {
            Some(r) => msg.memory_regions.push(r),
            // SAFETY: dup of our eventfd; the message owns and closes it.
            None => msg.objects.push(unsafe { ipmb::Object::from_raw(libc::dup(carrier)) }),
        }
        tx.send(msg).unwrap();
    };
    let envelope = |from: u64, kind: u8, rest: &[u8]| {
        let mut d = from.to_le_bytes().to_vec();
        d.push(kind);
        d.extend_from_slice(rest);
        d
    };
    let frame = |f: Frame| f.encode(1 << 20).unwrap().to_vec();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    let fake = 0xBAD0_0000_0000_0001u64;
    for round in 0..200u64 {
        send(random(5), None); // shorter than the envelope
        send(envelope(fake, 0, &random(40)), None); // garbage frame
        send(envelope(fake, 9, &random(40)), None); // unknown envelope kind
        send(envelope(fake, 1, &u64::MAX.to_le_bytes()), None); // region of impossible size, no region
        let mut small = ipmb::MemoryRegion::new(16).unwrap();
        small.map(..).unwrap().fill(0xB5);
        send(envelope(fake, 1, &1000u64.to_le_bytes()), Some(small)); // region smaller than claimed
        let mut lying = frame(Frame::new(FrameKind::Publish, 0, 0, round).with_name("a/b"));
        lying[28] = 0xFF; // payload length that is not there
        send(envelope(fake, 0, &lying), None);
        let hostile = [
            Frame::new(FrameKind::Announce, Flags::PROBE, 0, round).with_payload(bytes::Bytes::from(random(64))),
            Frame::new(FrameKind::Request, 0, round, 1 << 40)
                .with_name("calc.add")
                .with_payload(bytes::Bytes::from(random(8))),
            Frame::new(FrameKind::Response, 0, round, 0).with_payload(bytes::Bytes::from(random(8))),
            Frame::new(FrameKind::StreamItem, Flags::TO_CALLER, round, 1),
            Frame::new(FrameKind::Credit, 0, round, u64::MAX),
            Frame::new(FrameKind::Publish, 0, 0, u64::MAX).with_name("bad/+/topic"),
            Frame::new(FrameKind::Goodbye, 0, 0, 0),
        ];
        for f in hostile {
            send(envelope(fake + round, 0, &frame(f)), None);
        }
        // Pretend to be a real peer too: announce under another hub's id (taken from nothing:
        // the rogue guesses) and say goodbye for it.
        send(envelope(round, 0, &frame(Frame::new(FrameKind::Goodbye, 0, 0, 0))), None);
    }
    report("SENT");
    while command().is_some_and(|c| c != "quit") {}
}

/// Joins with raw ipmb, announces itself as a hub subscribed to `#`, and never reads: once its
/// socket is full, ipmb's controller blocks forwarding to it and the whole bus stalls.
fn stuck() {
    use hsipc::proto::frame::{Frame, FrameKind};
    use hsipc::proto::{PeerId, PeerInfo, codec};
    let fake = PeerId(0xBAD);
    let identifier = format!("hsipc.{}", env("HSIPC_BUS"));
    let options = ipmb::Options::new(identifier, ipmb::label!("stuck", format!("p{fake}")), "");
    let (tx, _never_read) = ipmb::join::<ipmb::BytesMessage, ipmb::BytesMessage>(options, None).unwrap();
    let pid = std::process::id();
    let info = PeerInfo { name: "stuck".into(), pid, patterns: vec!["#".into()], peers: 1, ..PeerInfo::default() };
    let frame = Frame::new(FrameKind::Announce, 0, 0, 1).with_payload(codec::encode(&info).unwrap());
    let mut data = fake.0.to_le_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(&frame.encode(1 << 20).unwrap());
    // Heartbeat like a hub (until the stall blocks this thread's sends too).
    std::thread::spawn(move || {
        loop {
            let mut msg = ipmb::Message::new(
                ipmb::Selector::multicast("hsipc"),
                ipmb::BytesMessage { format: 0x4853, data: data.clone() },
            );
            // SAFETY: eventfd returns a new fd (checked); the message owns and closes it.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0);
            msg.objects.push(unsafe { ipmb::Object::from_raw(fd) });
            tx.send(msg).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    report("READY");
    while command().is_some_and(|c| c != "quit") {}
}

/// A hub that, once told, spawns a long-lived child process (which would inherit ipmb's
/// sockets if they were not close-on-exec) and reports the child's pid.
fn spawner() {
    let hub = hub();
    report("READY");
    let _ = command(); // everyone has joined
    hsipc::transport::ipmb::mark_bus_fds_close_on_exec();
    let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    report(format!("SPAWNED {}", child.id()));
    wait_quit(&hub);
    let _ = child.kill();
    let _ = child.wait();
}

/// Client scripts: one per test.
fn client(script: &str) {
    let hub = hub();
    report("READY");
    let result = match script {
        "calls" => script_calls(&hub),
        "payloads" => script_payloads(&hub),
        "concurrent" => script_concurrent(&hub),
        "slow_stream" => script_slow_stream(&hub),
        "killed_server" => script_killed_server(&hub),
        "errors" => script_errors(&hub),
        "client_first" => script_client_first(&hub),
        "call_at_once" => script_call_at_once(&hub),
        "idle" => script_idle(&hub),
        "slow_handler" => script_slow_handler(&hub),
        "failover" => script_failover(&hub),
        "watch_leave" => script_watch_leave(&hub),
        "isolated" => script_isolated(&hub),
        "ping" => script_ping(&hub),
        "bad_frames" => script_bad_frames(&hub),
        "stall" => script_stall(&hub),
        "survive_controller" => script_survive_controller(&hub),
        other => panic!("unknown script {other}"),
    };
    report(format!("RESULT {result}"));
    wait_quit(&hub);
}

fn script_calls(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let n: i64 = env_or("HSIPC_N", 10_000);
    let mut ok = 0;
    for i in 0..n {
        if hub.call::<_, i64>("calc.add", &(i, 2 * i)).unwrap() == 3 * i {
            ok += 1;
        }
    }
    format!("ok={ok}")
}

fn script_payloads(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let mut out = Vec::new();
    for size in [0usize, 64, 100 << 10, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let back: Bytes = hub.call("calc.echo", Bytes::from(data.clone())).unwrap();
        out.push(format!("{size}:{}", if back == data { "intact" } else { "corrupt" }));
    }
    let max: usize = env_or("HSIPC_MAX_MESSAGE", 32 << 20);
    let too_big = Bytes::from(vec![0u8; max + 1]);
    let e = hub.call::<_, Bytes>("calc.echo", &too_big).unwrap_err();
    out.push(format!("over:{}", kind(&e)));
    let after: i64 = hub.call("calc.add", (1, 1)).unwrap();
    out.push(format!("after:{after}"));
    out.join(" ")
}

fn script_concurrent(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let threads: Vec<_> = (0..8i64)
        .map(|t| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                (0..25i64).filter(|i| hub.call::<_, i64>("calc.add", &(t, *i)).unwrap() == t + i).count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    format!("ok={ok}")
}

fn script_slow_stream(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let n = 100_000u64;
    let mut expected = 0;
    for item in hub.call_stream::<_, (u64, Bytes)>("calc.count", &(n, 1024usize)).unwrap() {
        let (i, pad) = item.unwrap();
        assert_eq!((i, pad.len()), (expected, 1024));
        expected += 1;
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // a slow reader
        }
        if i == n / 2 {
            report("HALFWAY");
        }
    }
    format!("items={expected}")
}

/// The timeout of the call whose server is killed under it.
const KILLED_CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn script_killed_server(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    // Enough calls for the server's lane to this hub to get its ring: the slow call below is
    // then waited for by this thread reading that lane itself (see `caller_lane`), and the
    // server's death must still reach it at once.
    for i in 0..40i64 {
        assert_eq!(hub.call::<_, i64>("calc.add", (i, 1)).unwrap(), i + 1);
    }
    report("CALLING");
    // The handler would sleep for a minute: only the server's death can end this call before
    // its timeout.
    let (e, us) = timed(|| hub.call_timeout::<_, u64>("calc.slow", &60_000u64, KILLED_CALL_TIMEOUT).unwrap_err());
    eprintln!("killed_server: the call failed ({e}) after {us} µs");
    report(format!("FAILED {}", kind(&e)));
    hub.wait_for_service("calc", LONG).unwrap();
    let sum: i64 = hub.call("calc.add", (20, 22)).unwrap();
    format!("after_restart={sum}")
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, u128) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_micros())
}

/// The timeout of the call in `script_errors` that must time out.
const ERRORS_TIMEOUT: Duration = Duration::from_millis(300);

fn script_errors(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let (e1, t1) = timed(|| hub.call::<_, i64>("nosuch.method", &()).unwrap_err());
    let (e2, t2) = timed(|| hub.call::<_, i64>("calc.nope", &()).unwrap_err());
    let e3 = hub.call::<_, i64>("calc.div", &(1, 0)).unwrap_err();
    let msg = match &e3 {
        Error::Remote(r) => r.message.replace(' ', "_"),
        _ => String::new(),
    };
    // calc.hold never answers (nobody releases it): only the call's own deadline ends it.
    let (e4, t4) = timed(|| hub.call_timeout::<_, ()>("calc.hold", &(), ERRORS_TIMEOUT).unwrap_err());
    format!("{}:{t1} {}:{t2} {}:{msg} {}:{t4}", kind(&e1), kind(&e2), kind(&e3), kind(&e4))
}

fn script_client_first(hub: &ProcessHub) -> String {
    let (e, t) = timed(|| hub.call::<_, i64>("calc.add", &(1, 2)).unwrap_err());
    report(format!("EARLY {}:{t}", kind(&e)));
    hub.wait_for_service("calc", LONG).unwrap();
    report("SERVICE_UP");
    let sum: i64 = hub.call("calc.add", (1, 2)).unwrap();
    format!("sum={sum}")
}

/// Calls right after joining, without waiting for the service: discovery makes that work.
fn script_call_at_once(hub: &ProcessHub) -> String {
    let (sum, us) = timed(|| hub.call::<_, i64>("calc.add", &(1, 2)));
    match sum {
        Ok(sum) => format!("sum={sum} us={us}"),
        Err(e) => format!("sum={} us={us}", kind(&e)),
    }
}

fn script_idle(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let before: i64 = hub.call("calc.add", (1, 1)).unwrap();
    // Idle well past ipmb's receive timeout and the peer timeout (6 heartbeats).
    let idle = Duration::from_millis(env_or("HSIPC_IDLE_MS", 2000));
    std::thread::sleep(idle);
    let after: i64 = hub.call("calc.add", (2, 2)).unwrap();
    let peers = hub.peers().unwrap().len();
    format!("before={before} after={after} peers={peers}")
}

/// A slow handler (calc.hold) runs until this script releases it, after a fast call: the fast
/// call can only be answered (before its timeout) if it did not wait for the slow one.
fn script_slow_handler(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let h = hub.clone();
    let slow = std::thread::spawn(move || h.call::<_, ()>("calc.hold", &()));
    // Wait until the slow handler is running, then time a fast call.
    let deadline = Instant::now() + LONG;
    while hub.call::<_, (u64, u64, u64)>("calc.stats", &()).unwrap().2 == 0 {
        assert!(Instant::now() < deadline);
    }
    let (sum, fast_us) = timed(|| hub.call::<_, i64>("calc.add", &(5, 5)).unwrap());
    let still_running = hub.call::<_, (u64, u64, u64)>("calc.stats", &()).unwrap().2;
    hub.call::<_, ()>("calc.release", &()).unwrap();
    slow.join().unwrap().unwrap();
    for i in 0..20 {
        hub.call::<_, i64>("calc.add", &(i, i)).unwrap();
    }
    let (adds, slows, _) = hub.call::<_, (u64, u64, u64)>("calc.stats", &()).unwrap();
    format!("sum={sum} fast_us={fast_us} slow_running={still_running} adds={adds} slows={slows}")
}

fn script_failover(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let deadline = Instant::now() + LONG;
    while hub.peers().unwrap().iter().filter(|p| p.services.iter().any(|s| s == "calc")).count() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut names: Vec<String> = (0..4).map(|_| hub.call("calc.whoami", ()).unwrap()).collect();
    names.sort();
    names.dedup();
    report(format!("BOTH {}", names.join(",")));
    let _ = command(); // the parent killed one provider
    let t = Instant::now();
    while hub.peers().unwrap().iter().filter(|p| p.services.iter().any(|s| s == "calc")).count() > 1 {
        assert!(t.elapsed() < LONG, "the killed provider was never dropped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let gone_ms = t.elapsed().as_millis();
    let next: String = hub.call("calc.whoami", ()).unwrap();
    format!("next={next} gone_ms={gone_ms}")
}

fn script_watch_leave(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    report("WATCHING");
    let t = Instant::now();
    while hub.peers().unwrap().iter().any(|p| p.services.iter().any(|s| s == "calc")) {
        assert!(t.elapsed() < LONG, "service never disappeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    let gone_ms = t.elapsed().as_millis();
    let e = hub.call::<_, i64>("calc.add", &(1, 1)).unwrap_err();
    format!("gone_ms={gone_ms} then={}", kind(&e))
}

/// Calls in a loop; once told the controller was killed, requires calls to work again.
fn script_survive_controller(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    for i in 0..100 {
        assert_eq!(hub.call::<_, i64>("calc.add", &(i, 1)).unwrap(), i + 1);
    }
    report("CALLING");
    let _ = command(); // the controller is dead now
    let killed = Instant::now();
    let mut failures = 0;
    let recovered_ms = loop {
        match hub.call_timeout::<_, i64>("calc.add", &(1, 1), Duration::from_millis(500)) {
            Ok(2) => break killed.elapsed().as_millis(),
            Ok(other) => panic!("wrong answer {other}"),
            Err(e) => {
                failures += 1;
                eprintln!("call during the controller's replacement: {e}");
                assert!(killed.elapsed() < LONG, "never recovered");
            }
        }
    };
    let mut ok = 0;
    for i in 0..1000 {
        if hub.call::<_, i64>("calc.add", &(i, 1)).unwrap() == i + 1 {
            ok += 1;
        }
    }
    format!("recovered_ms={recovered_ms} failures={failures} ok_after={ok}")
}

/// Floods the stuck subscriber until the bus stalls, then calls: the call must return by its
/// deadline. After the parent kills the stuck member, calls must work again.
fn script_stall(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let deadline = Instant::now() + LONG;
    while !hub.peers().unwrap().iter().any(|p| p.name == "stuck") {
        assert!(Instant::now() < deadline, "the stuck member never appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    // 3 MB for a member that reads nothing: far more than the kernel buffers on the way hold.
    let event = Bytes::from(vec![0u8; 1024]);
    for _ in 0..3000 {
        // Once the bus is stalled, the publisher is held back (then refused at its timeout)
        // instead of having its events dropped: the bus is stalled by then.
        if hub.publish("x/y", &event).is_err() {
            break;
        }
    }
    let (r, us) = timed(|| hub.call_timeout::<_, i64>("calc.add", &(1, 1), Duration::from_millis(500)));
    report(format!("STALLED {}:{us}", r.map_or_else(|e| kind(&e), |_| "ok")));
    let _ = command(); // the stuck member was killed
    let killed = Instant::now();
    loop {
        if let Ok(2) = hub.call_timeout::<_, i64>("calc.add", &(1, 1), Duration::from_millis(500)) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "the bus never recovered");
    }
    format!("recovered_ms={}", killed.elapsed().as_millis())
}

fn script_bad_frames(hub: &ProcessHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    let bad: u64 = hub.call("calc.bad_frames", ()).unwrap();
    format!("bad={bad}")
}

fn script_ping(hub: &ProcessHub) -> String {
    hub.wait_for_service("sub", LONG).unwrap();
    let (reply, us) = timed(|| hub.call::<_, String>("sub.ping", &()).unwrap());
    format!("reply={reply} ping_us={us}")
}

/// Subscribes to everything on its bus; once told, reports the first event it got (which must be
/// the marker a publisher on its own bus sent after the other bus had published), what a call to
/// the other bus's service does, and which hubs it knows.
fn script_isolated(hub: &ProcessHub) -> String {
    let sub = hub.subscribe::<String>("#").unwrap();
    report("SUBSCRIBED");
    let _ = command(); // the other bus has published and served, and then our marker was sent
    let first =
        sub.recv_timeout(LONG).map_or_else(|e| kind(&e).to_string(), |ev| format!("{}={}", ev.topic, ev.payload));
    let call = hub.call::<_, i64>("calc.add", &(1, 1)).map_or_else(|e| kind(&e).to_string(), |sum| sum.to_string());
    format!("peers={} call={call} first={first}", peer_names(hub))
}

// ---------------------------------------------------------------------------------------------
// Tests

fn field<'a>(result: &'a str, key: &str) -> &'a str {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no `{key}` in `{result}`"))
}

#[test]
fn ten_thousand_calls_between_three_processes() {
    // A bystander joins first, so neither client nor server is the bus controller: every frame
    // between them is a client-to-client forward (the path where ipmb drops fd-less messages).
    let bus = unique_bus("calls");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "calls"), ("HSIPC_N", "10000")]);
    let r = client.expect("RESULT", Duration::from_secs(120));
    assert_eq!(field(&r, "ok"), "10000");
}

#[test]
fn payloads_of_every_size_round_trip_intact() {
    let bus = unique_bus("payloads");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "payloads")]);
    let r = client.expect("RESULT", Duration::from_secs(60));
    assert_eq!(r, "0:intact 64:intact 102400:intact 1048576:intact 16777216:intact over:too_large after:2");
}

#[test]
fn two_hundred_calls_from_eight_threads() {
    let bus = unique_bus("concurrent");
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "concurrent")]);
    assert_eq!(field(&client.expect("RESULT", LONG), "ok"), "200");
}

#[test]
fn a_slow_reader_keeps_both_processes_memory_bounded() {
    let bus = unique_bus("slowstream");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "slow_stream")]);
    let base = (server.rss_kib(), client.rss_kib());
    let mut peak = base;
    // 100 000 items of 1 KiB: about 100 MiB would pile up somewhere without flow control.
    let result = loop {
        if let Some(line) = client.try_line(Duration::from_millis(20)) {
            if let Some(r) = line.strip_prefix("RESULT") {
                break r.trim().to_string();
            }
        }
        peak = (peak.0.max(server.rss_kib()), peak.1.max(client.rss_kib()));
    };
    assert_eq!(field(&result, "items"), "100000");
    let growth = (peak.0.saturating_sub(base.0), peak.1.saturating_sub(base.1));
    eprintln!("rss growth during the stream (KiB): server {}, client {}", growth.0, growth.1);
    assert!(growth.0 < 32 * 1024 && growth.1 < 32 * 1024, "memory grew by {growth:?} KiB");
}

#[test]
fn wildcard_subscribers_in_other_processes_get_exactly_their_events() {
    let bus = unique_bus("pubsub");
    let mut plus = Peer::ready("subscriber", &bus, "plus", &[("HSIPC_PATTERN", "sensor/+")]);
    let mut hash = Peer::ready("subscriber", &bus, "hash", &[("HSIPC_PATTERN", "sensor/#")]);
    let events = "sensor/temp=a,sensor/room1/temp=b,sensor=c,other/x=d,sensor/hum=e,$SYS/x=f,sensor/end=end";
    let mut publisher = Peer::ready("publisher", &bus, "pub", &[("HSIPC_WAIT_SUBS", "2"), ("HSIPC_EVENTS", events)]);
    publisher.expect("PUBLISHED", LONG);
    // Every report up to the `sensor/end` marker: the events each subscriber must not get were
    // published before the marker, by the same publisher, so had they been delivered they
    // would be here, ahead of it.
    let collect = |p: &mut Peer| {
        let mut got = Vec::new();
        loop {
            let line = p.line(LONG);
            let event = line.strip_prefix("EV ").unwrap_or_else(|| panic!("{}: unexpected report `{line}`", p.name));
            let done = event.starts_with("sensor/end ");
            got.push(event.to_string());
            if done {
                break got;
            }
        }
    };
    assert_eq!(collect(&mut plus), ["sensor/temp a 0", "sensor/hum e 0", "sensor/end end 0"]);
    assert_eq!(
        collect(&mut hash),
        ["sensor/temp a 0", "sensor/room1/temp b 0", "sensor c 0", "sensor/hum e 0", "sensor/end end 0"]
    );
    // Nothing else arrives after the marker either: a second marker from the same publisher is
    // the very next report of each.
    publisher.send("publish sensor/fin=fin");
    publisher.expect("PUBLISHED", LONG);
    assert_eq!(plus.line(LONG), "EV sensor/fin fin 0");
    assert_eq!(hash.line(LONG), "EV sensor/fin fin 0");
}

#[test]
fn a_killed_server_fails_the_call_fast_and_a_restarted_one_is_reachable() {
    let bus = unique_bus("killed");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let mut server = Peer::ready("server", &bus, "server", &[]);
    // The client's peer timeout (30 s) is no shorter than the call's: only the server's process
    // id can tell it of the death in time.
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "killed_server"), SLOW_HEARTBEAT]);
    client.expect("CALLING", LONG);
    // Kill it while the handler is running (it would sleep for a minute).
    server.expect("SLOW_STARTED", LONG);
    let killed = Instant::now();
    server.kill();
    let failed = client.expect("FAILED", LONG);
    let after = killed.elapsed();
    eprintln!("the caller learned of the death {after:?} after the kill");
    // The call failed because its server died, not because it timed out...
    assert_eq!(failed, "peer_lost");
    // ...and the caller learned of it well before the call's 30 s deadline.
    assert!(after < well_before(KILLED_CALL_TIMEOUT), "the caller learned of the death after {after:?}");
    let _restarted = Peer::ready("server", &bus, "server", &[]);
    assert_eq!(field(&client.expect("RESULT", LONG), "after_restart"), "42");
}

#[test]
fn each_failure_has_its_own_error_and_missing_ones_fail_fast() {
    let bus = unique_bus("errors");
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "errors")]);
    let r = client.expect("RESULT", LONG);
    let parts: Vec<(&str, &str)> = r.split_whitespace().map(|p| p.split_once(':').unwrap()).collect();
    assert_eq!(parts[0].0, "no_such_service");
    assert_eq!(parts[1].0, "no_such_method");
    assert_eq!(parts[2], ("remote", "division_by_zero"));
    assert_eq!(parts[3].0, "timeout");
    eprintln!("{r}");
    // A missing service or method is an answer of its own (not the timeout), and comes well
    // before the call's 30 s timeout.
    for (what, us) in &parts[..2] {
        let us: u128 = us.parse().unwrap();
        assert!(us < well_before(CALL_TIMEOUT).as_micros(), "{what} took {us} µs");
    }
    // The call to a handler that never answers ends by its own 300 ms deadline: not before
    // it, and well before the hub's 30 s default timeout that it overrides.
    let timeout_us: u128 = parts[3].1.parse().unwrap();
    assert!(timeout_us >= ERRORS_TIMEOUT.as_micros(), "timed out early, after {timeout_us} µs");
    assert!(timeout_us < well_before(CALL_TIMEOUT).as_micros(), "timeout after {timeout_us} µs");
}

fn start_order(first: &str) {
    let bus = unique_bus(&format!("order-{first}"));
    let mut peers = Vec::new();
    let client_env = [("HSIPC_SCRIPT", "client_first")];
    match first {
        "client" => {
            let mut client = Peer::ready("client", &bus, "client", &client_env);
            let early = client.expect("EARLY", LONG);
            let (k, us) = early.split_once(':').unwrap();
            eprintln!("an early call failed after {us} µs");
            // Its own error, not the timeout, and well before the call's 30 s timeout.
            assert_eq!(k, "no_such_service");
            assert!(us.parse::<u128>().unwrap() < well_before(CALL_TIMEOUT).as_micros(), "an early call took {us} µs");
            let up = Instant::now();
            peers.push(Peer::ready("server", &bus, "server", &[]));
            client.expect("SERVICE_UP", LONG);
            let waited = up.elapsed();
            eprintln!("wait_for_service returned {waited:?} after the server was started");
            // The server's arrival ended the wait, well before its 60 s deadline.
            assert!(waited < well_before(LONG), "wait_for_service returned {waited:?} after the server started");
            assert_eq!(field(&client.expect("RESULT", LONG), "sum"), "3");
        }
        "server" | "bystander" => {
            peers.push(Peer::ready(first, &bus, first, &[]));
            if first == "bystander" {
                peers.push(Peer::ready("server", &bus, "server", &[]));
            }
            // A client that joins after the server can call at once: no wait_for_service.
            let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "call_at_once")]);
            assert_eq!(field(&client.expect("RESULT", LONG), "sum"), "3");
        }
        _ => unreachable!(),
    }
}

#[test]
fn start_order_client_first() {
    start_order("client");
}

#[test]
fn start_order_server_first() {
    start_order("server");
}

#[test]
fn start_order_bystander_first() {
    start_order("bystander");
}

#[test]
fn an_idle_hub_still_serves_and_calls() {
    let bus = unique_bus("idle");
    // Heartbeat every 100 ms, peer timeout 600 ms; ipmb's receive timeout is 100 ms. The
    // client idles 2 s, past all of them.
    let hb = [("HSIPC_HEARTBEAT_MS", "100")];
    let _server = Peer::ready("server", &bus, "server", &hb);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "idle"), hb[0]]);
    let r = client.expect("RESULT", LONG);
    assert_eq!((field(&r, "before"), field(&r, "after"), field(&r, "peers")), ("2", "4", "2"));
}

#[test]
fn a_slow_handler_does_not_delay_a_fast_call_and_handlers_run_once() {
    let bus = unique_bus("slowhandler");
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "slow_handler")]);
    let r = client.expect("RESULT", LONG);
    eprintln!("{r}");
    // The slow handler ran until the client released it after the fast call was answered: the
    // fast call did not wait for it.
    assert_eq!(field(&r, "sum"), "10");
    assert_eq!(field(&r, "slow_running"), "1", "the fast call finished while the slow handler ran");
    assert_eq!(field(&r, "adds"), "21");
    assert_eq!(field(&r, "slows"), "1");
}

#[test]
fn a_slow_subscriber_does_not_delay_replies_or_other_subscribers() {
    let bus = unique_bus("slowsub");
    // The slow reader is stuck on its first event until the parent releases it.
    let mut sub = Peer::ready(
        "subscriber",
        &bus,
        "sub",
        &[("HSIPC_PATTERN", "t/#"), ("HSIPC_HOLD", "1"), ("HSIPC_FAST_PATTERN", "t/+")],
    );
    let events: Vec<String> = (0..10).map(|i| format!("t/x={i}")).collect();
    let mut publisher =
        Peer::ready("publisher", &bus, "pub", &[("HSIPC_WAIT_SUBS", "1"), ("HSIPC_EVENTS", &events.join(","))]);
    publisher.expect("PUBLISHED", LONG);
    // The fast subscription sees all ten, in order, while the slow one holds its first.
    let mut fast = Vec::new();
    let mut held = false;
    while fast.len() < 10 || !held {
        let line = sub.line(LONG);
        if let Some(payload) = line.strip_prefix("FAST ") {
            fast.push(payload.to_string());
        } else if line == "HELD" {
            held = true;
        } else {
            panic!("unexpected report while the slow reader is held: `{line}`");
        }
    }
    assert_eq!(fast, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    // Replies from the same process are not delayed by the slow reader either: a call to that
    // process is answered (before its timeout) while the reader is still held.
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "ping")]);
    let r = client.expect("RESULT", LONG);
    eprintln!("{r}");
    assert_eq!(field(&r, "reply"), "pong");
    // Released, the slow reader gets every event, in order, nothing lost; and it reported
    // nothing else before (the loop above would have failed on an `EV`).
    sub.send("release");
    for i in 0..10 {
        assert_eq!(sub.line(LONG), format!("EV t/x {i} 0"));
    }
}

#[test]
fn when_one_of_two_providers_dies_the_next_call_reaches_the_other() {
    let bus = unique_bus("failover");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let mut p1 = Peer::ready("server", &bus, "p1", &[]);
    let _p2 = Peer::ready("server", &bus, "p2", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "failover"), SLOW_HEARTBEAT]);
    assert_eq!(client.expect("BOTH", LONG), "p1,p2");
    p1.kill();
    client.send("killed");
    let r = client.expect("RESULT", LONG);
    eprintln!("{r}");
    assert_eq!(field(&r, "next"), "p2");
    // Dropped through its process id, well before the client's 30 s peer timeout.
    let gone: u128 = field(&r, "gone_ms").parse().unwrap();
    assert!(gone < well_before(SLOW_PEER_TIMEOUT).as_millis(), "the dead provider was listed for {gone} ms");
}

fn service_disappears(how: &str) {
    let bus = unique_bus(&format!("leave-{how}"));
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let mut server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "watch_leave"), SLOW_HEARTBEAT]);
    client.expect("WATCHING", LONG);
    server.send(how);
    let r = client.expect("RESULT", LONG);
    eprintln!("{how}: {r}");
    // Gone through the goodbye (quit) or the process id (exit_now), well before the client's
    // 30 s peer timeout would have dropped a silent peer.
    let gone: u128 = field(&r, "gone_ms").parse().unwrap();
    assert!(
        gone < well_before(SLOW_PEER_TIMEOUT).as_millis(),
        "the service was still listed {gone} ms after the server left ({how})"
    );
    assert_eq!(field(&r, "then"), "no_such_service");
}

#[test]
fn a_closed_hub_disappears_well_before_the_peer_timeout() {
    service_disappears("quit");
}

#[test]
fn an_exited_process_disappears_well_before_the_peer_timeout() {
    service_disappears("exit_now");
}

#[test]
fn a_program_that_returns_from_main_exits_promptly() {
    let bus = unique_bus("exit");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    // A 10 s heartbeat and a 60 s call timeout: a hub whose exit waited for any timer of its
    // own (its next heartbeat, a timeout) would take at least 10 s.
    let heartbeat = Duration::from_secs(10);
    let ms = heartbeat.as_millis().to_string();
    let mut p =
        Peer::ready("exit_after_ready", &bus, "quick", &[("HSIPC_HEARTBEAT_MS", &ms), ("HSIPC_TIMEOUT_S", "60")]);
    let took = p.wait_exit(LONG).expect("the process never exited");
    eprintln!("exit took {took:?}");
    assert!(took < well_before(heartbeat), "exit took {took:?}");
}

#[test]
fn different_buses_never_see_each_other() {
    let bus_a = unique_bus("iso-a");
    let bus_b = unique_bus("iso-b");
    // On bus B, a client subscribed to everything (before anything is published on bus A).
    let mut other = Peer::ready("client", &bus_b, "client", &[("HSIPC_SCRIPT", "isolated")]);
    other.expect("SUBSCRIBED", LONG);
    // On bus A, a server, a subscriber to everything, and a publisher of `hello` then `end`.
    let _server = Peer::ready("server", &bus_a, "server", &[]);
    let mut watcher = Peer::ready("subscriber", &bus_a, "watcher", &[("HSIPC_PATTERN", "#")]);
    let mut publisher =
        Peer::ready("publisher", &bus_a, "pub", &[("HSIPC_WAIT_SUBS", "1"), ("HSIPC_EVENTS", "x/y=hello,x/end=end")]);
    let seen_on_a = publisher.expect("PUBLISHED", LONG);
    // `hello` really went out on bus A: its watcher got it, and the event published after it.
    assert_eq!(watcher.line(LONG), "EV x/y hello 0");
    assert_eq!(watcher.line(LONG), "EV x/end end 0");
    // Only then, a marker published on bus B. Order across buses can only be causal: had bus B
    // been bus A, `hello` (delivered before `end`, which was delivered before the marker was
    // even published) would be in the client's subscription ahead of the marker. So the
    // marker must be the first event the client got.
    let mut marker =
        Peer::ready("publisher", &bus_b, "marker", &[("HSIPC_WAIT_SUBS", "1"), ("HSIPC_EVENTS", "x/mark=mark")]);
    marker.expect("PUBLISHED", LONG);
    other.send("go");
    let r = other.expect("RESULT", LONG);
    eprintln!("bus B: {r}; bus A: {seen_on_a}");
    assert_eq!(field(&r, "first"), "x/mark=mark");
    assert_eq!(field(&r, "call"), "no_such_service");
    // Neither bus knows a hub of the other.
    for name in field(&r, "peers").split(',') {
        assert!(["client", "marker"].contains(&name), "bus B knows `{name}`: {r}");
    }
    for name in field(&seen_on_a, "peers").split(',') {
        assert!(["server", "watcher", "pub"].contains(&name), "bus A knows `{name}`: {seen_on_a}");
    }
}

#[test]
fn a_second_hub_with_a_taken_name_fails_clearly() {
    let bus = unique_bus("dupname");
    let _first = Peer::ready("bystander", &bus, "same", &[]);
    let mut second = Peer::spawn("bystander", &bus, "same", &[]);
    let line = second.line(LONG);
    assert!(line.starts_with("JOIN_FAILED") && line.contains("already on bus"), "{line}");
    // The same name on another bus is fine.
    let _elsewhere = Peer::ready("bystander", &unique_bus("dupname2"), "same", &[]);
}

/// Kills the bus controller (a child in `role`) while a client calls a server, and checks that
/// calls come back. `before_kill` runs first; what it returns lives until the end.
fn calls_recover_when_the_controller_dies<G>(role: &str, before_kill: impl FnOnce(&mut Peer) -> G) {
    let bus = unique_bus(role);
    let mut controller = Peer::ready(role, &bus, "controller", &[]);
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "survive_controller")]);
    client.expect("CALLING", LONG);
    let _keep = before_kill(&mut controller);
    controller.kill();
    client.send("killed");
    let r = client.expect("RESULT", LONG);
    eprintln!("{r}");
    assert_eq!(field(&r, "ok_after"), "1000");
    // Calls came back well before the client would have given up on them (`LONG`).
    let recovered: u128 = field(&r, "recovered_ms").parse().unwrap();
    assert!(recovered < well_before(LONG).as_millis(), "calls came back only after {recovered} ms");
}

#[test]
fn calls_survive_the_death_of_the_bus_controller() {
    // The bystander joined first, so it is ipmb's bus controller: every frame between client
    // and server passes through it. Killing it forces a survivor to take over the bus.
    calls_recover_when_the_controller_dies("bystander", |_| ());
}

#[test]
fn a_rogue_process_on_the_bus_cannot_crash_or_wedge_a_hub() {
    let bus = unique_bus("rogue");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let server = Peer::ready("server", &bus, "server", &[]);
    let _subscriber = Peer::ready("subscriber", &bus, "sub", &[("HSIPC_PATTERN", "#")]);
    let mut rogue = Peer::ready("rogue", &bus, "rogue", &[]);
    rogue.expect("SENT", LONG);
    // Every hub is still alive and serving: a fresh client gets answers.
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_SCRIPT", "calls"), ("HSIPC_N", "1000")]);
    assert_eq!(field(&client.expect("RESULT", LONG), "ok"), "1000");
    let mut check = Peer::ready("client", &bus, "checker", &[("HSIPC_SCRIPT", "bad_frames")]);
    let bad: u64 = field(&check.expect("RESULT", LONG), "bad").parse().unwrap();
    assert!(bad >= 200, "the server rejected only {bad} frames: the garbage did not reach it");
    assert!(server.rss_kib() < 256 * 1024, "the server's memory grew to {} KiB", server.rss_kib());
}

/// On lanes, a member that stops reading fills only its own lane: the frames for it wait in
/// that lane's own queue, and everyone else goes on at once, while it is alive and not yet cut
/// off (the lane stall timeout is an hour here: only a per-lane queue lets the call through).
#[test]
fn on_direct_lanes_a_member_that_stops_reading_holds_up_only_its_own_lane() {
    let bus = unique_bus("stall-lanes");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut stuck = Peer::ready("stuck", &bus, "stuck", &[]);
    let env = [("HSIPC_SCRIPT", "stall"), ("HSIPC_LANE_STALL_S", "3600")];
    let mut client = Peer::ready("client", &bus, "client", &env);
    let stalled = client.expect("STALLED", LONG);
    let (k, _) = stalled.split_once(':').unwrap();
    // The stuck member is still alive (it is killed only below): the call went through.
    assert_eq!(k, "ok", "a call was held by a member that stopped reading");
    stuck.kill();
    client.send("killed");
    client.expect("RESULT", LONG);
}

#[test]
fn a_stalled_bus_does_not_hold_a_caller_until_it_clears() {
    // ipmb has one routing thread: a member that stops reading blocks it, and with it every
    // send on the bus. hsipc cannot unblock ipmb, but its callers must still get their answer
    // (a timeout) while the bus is stalled, and everything must work again once the member is
    // gone.
    let bus = unique_bus("stall");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let _server = Peer::ready("server", &bus, "server", &[]);
    let mut stuck = Peer::ready("stuck", &bus, "stuck", &[]);
    // Without direct lanes, the client's events to the stuck member go through the bus and
    // stall it (with lanes they would stall only that member's lane: the next test).
    let mut client = Peer::ready(
        "client",
        &bus,
        "client",
        &[("HSIPC_SCRIPT", "stall"), ("HSIPC_LANES", "0"), ("HSIPC_TIMEOUT_S", "2")],
    );
    let stalled = client.expect("STALLED", LONG);
    let (k, us) = stalled.split_once(':').unwrap();
    eprintln!("a call with a 500 ms timeout returned after {us} µs on the stalled bus");
    // The call returned (with its timeout) while the stuck member was alive and the bus still
    // stalled: it is killed only now. And it was the call's own 500 ms deadline that ended it,
    // well before the hub's 30 s default timeout.
    assert_eq!(k, "timeout", "the call went through a stalled bus?");
    let us: u128 = us.parse().unwrap();
    assert!(us < well_before(CALL_TIMEOUT).as_micros(), "a call with a 500 ms timeout returned after {us} µs");
    stuck.kill();
    client.send("killed");
    let r = client.expect("RESULT", LONG);
    eprintln!("{r}");
}

#[test]
fn a_dead_controller_s_child_process_does_not_wedge_the_bus() {
    // ipmb-on-linux.md 2.l: the controller spawned a child and was killed; the child inherited
    // the controller's bus sockets (ipmb makes them without CLOEXEC) and kept the bus wedged
    // until it exited. hsipc marks them close-on-exec, so the bus recovers at once.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: kill only sends a signal to the pid the controller spawned (a sleep).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    calls_recover_when_the_controller_dies("spawner", |controller| {
        controller.send("spawn");
        Reap(controller.expect("SPAWNED", LONG).parse().unwrap())
    });
}
