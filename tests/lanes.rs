//! Direct lanes between hubs in different processes: traffic moves off ipmb's controller onto a
//! socket pair per pair of hubs, keeps its order across the switch, and outlives the controller.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Peer, command, env, kind, report, unique_bus};
use hsipc::blocking::ProcessHub;

const LONG: Duration = Duration::from_secs(60);
/// The user a child switches to, to be another user's process.
const NOBODY: libc::uid_t = 65534;

#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    common::watch_parent(Duration::from_secs(120));
    match role.as_str() {
        "burst_subscriber" => return burst_subscriber(),
        "burst_publisher" => return burst_publisher(),
        "switching_subscriber" => return switching_subscriber(),
        "cold_subscriber" => return cold_subscriber(),
        "cold_publisher" => return cold_publisher(),
        "switching_publisher" => return switching_publisher(),
        #[cfg(all(feature = "tokio", feature = "smol"))]
        "async_pair" => return async_pair(),
        "held_reader" => return held_reader(),
        "fan_subscriber" => return fan_subscriber(),
        "caller_reads" => return lane_wakeups(false),
        "worker_reads" => return lane_wakeups(true),
        "caller_first" => return caller_first(),
        "two_clients" => return two_clients(),
        "idle_events" => return idle_events(),
        "inline_off_the_caller" => return inline_off_the_caller(),
        _ => {}
    }
    let role = match role.as_str() {
        "other_user_server" => {
            // SAFETY: setuid changes this process's user; nothing else runs yet.
            assert_eq!(unsafe { libc::setuid(NOBODY) }, 0, "setuid: {}", std::io::Error::last_os_error());
            "server".to_string()
        }
        _ => role,
    };
    let mut builder = ProcessHub::builder(&env("HSIPC_NAME"));
    let idle = std::env::var("HSIPC_LANE_IDLE_MS").ok();
    let stall = std::env::var("HSIPC_LANE_STALL_MS").ok();
    let no_pools = std::env::var("HSIPC_NO_LANE_POOLS").is_ok();
    let max_in = std::env::var("HSIPC_MAX_IN_LANES").ok();
    let max_out = std::env::var("HSIPC_MAX_OUT_LANES").ok();
    if idle.is_some() || stall.is_some() || no_pools || max_in.is_some() || max_out.is_some() {
        let mut cfg = hsipc::transport::ipmb::IpmbConfig::new(env("HSIPC_BUS"));
        cfg.lane_pools = !no_pools;
        if let Some(n) = max_in {
            cfg.max_incoming_lanes = n.parse().unwrap();
        }
        if let Some(n) = max_out {
            cfg.max_lanes = n.parse().unwrap();
        }
        if let Some(ms) = idle {
            cfg.lane_idle_timeout = Duration::from_millis(ms.parse().unwrap());
        }
        if let Some(ms) = stall {
            cfg.lane_stall_timeout = Duration::from_millis(ms.parse().unwrap());
        }
        builder = builder.transport(hsipc::transport::ipmb::IpmbBus::new(cfg).connector());
    }
    if let Ok(ms) = std::env::var("HSIPC_HEARTBEAT_MS") {
        let ms: u64 = ms.parse().unwrap();
        builder = builder.heartbeat(Duration::from_millis(ms), Duration::from_millis(ms * 6));
    }
    let hub = builder.build().unwrap();
    match role.as_str() {
        "bystander" => {}
        "server" => {
            hub.serve("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b)).unwrap();
            hub.serve("calc.sleep", |ms: u64| {
                report("SLEEPING");
                std::thread::sleep(Duration::from_millis(ms));
                Ok::<_, String>(ms)
            })
            .unwrap();
            if let Ok(svc) = std::env::var("HSIPC_SVC") {
                hub.serve(&format!("{svc}.add"), |(a, b): (i64, i64)| Ok::<_, String>(a + b)).unwrap();
            }
            hub.serve("calc.echo", |v: Vec<u8>| Ok::<_, String>(v)).unwrap();
            hub.serve("calc.echo_bytes", |v: bytes::Bytes| Ok::<_, String>(v)).unwrap();
            // Where a large request was read: in the client's pool, a sealed memfd, or memory.
            hub.serve("calc.where", |v: bytes::Bytes| {
                let place = if mapped_in(&v, "memfd:hsipc-pool") {
                    "pool"
                } else if mapped_in(&v, "memfd:hsipc-frame") {
                    "sealed"
                } else {
                    "heap"
                };
                Ok::<_, String>(place.to_string())
            })
            .unwrap();
        }
        "client" | "caller" => {}
        other => panic!("unknown role {other}"),
    }
    report("READY");
    if role == "client" {
        client(&hub);
    }
    while let Some(cmd) = command() {
        match cmd.as_str() {
            "lanes" => report(format!("LANES {}", lane_threads())),
            "lane_ids" => report(format!("LANE_IDS {}", lane_thread_ids().join(","))),
            "where" => {
                let big = bytes::Bytes::from(vec![5u8; 1 << 20]);
                report(format!("WHERE {}", hub.call::<_, String>("calc.where", big).unwrap()));
            }
            "again" => again(&hub),
            cmd if cmd.starts_with("add ") => add(&hub, &cmd[4..]),
            "sleep" => {
                let r = hub.call_timeout::<_, u64>("calc.sleep", 120_000u64, Duration::from_secs(120));
                report(format!("SLEPT {}", r.map_or_else(|e| kind(&e).to_string(), |v| v.to_string())));
            }
            "sever" => {
                sever();
                report("SEVERED");
            }
            "flood" => flood(&hub),
            "recover" => recover(&hub),
            "quit" => break,
            other => panic!("unknown command {other}"),
        }
    }
    hub.close();
}

/// Shuts down both directions of every socket of this process (its lanes and its bus
/// connections) without closing any fd or exiting: its peers see the ends of its lanes while
/// its process lives on (no pidfd fires) and sends nothing more (no goodbye, no heartbeat).
fn sever() {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if fd > 2 && is_socket {
            // SAFETY: shutdown takes any fd; on a socket it ends both directions, nothing more.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// Threads that read a lane in this process.
fn lane_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("hsipc-lane"))
        .count()
}

fn client(hub: &ProcessHub) {
    hub.wait_for_service("calc", LONG).unwrap();
    // Interleave small calls and ones large enough to cross lane chunks and ipmb's limit: the
    // replies must match their calls one for one (order and integrity across the switch).
    for i in 0..200i64 {
        assert_eq!(hub.call::<_, i64>("calc.add", (i, 1)).unwrap(), i + 1);
        if i % 50 == 0 {
            let big: Vec<u8> = (0..300_000).map(|j| (j as i64 + i) as u8).collect();
            assert_eq!(hub.call::<_, Vec<u8>>("calc.echo", &big).unwrap(), big);
        }
    }
    // A 1 MiB `Bytes` reply is read where the server wrote it, in the lane's pool, not copied;
    // a 20 MiB one (too large for the pool) arrives sealed in a memfd of its own, mapped as long
    // as the payload lives.
    let data = |len: u32| bytes::Bytes::from((0..len).map(|j| (j % 251) as u8).collect::<Vec<u8>>());
    let (mid, big) = (data(1 << 20), data(20 << 20));
    let back: bytes::Bytes = hub.call("calc.echo_bytes", mid.clone()).unwrap();
    assert!(back == mid, "a pooled reply came back changed");
    let mut pooled = mapped_in(&back, "memfd:hsipc-pool");
    drop(back);
    // Far more than the 64 MiB pool holds: every one is pooled, so the runs the client let go
    // of went back to the server (through the pool's board).
    for _ in 0..100 {
        let back: bytes::Bytes = hub.call("calc.echo_bytes", mid.clone()).unwrap();
        pooled &= back == mid && mapped_in(&back, "memfd:hsipc-pool");
    }
    let back: bytes::Bytes = hub.call("calc.echo_bytes", big.clone()).unwrap();
    assert!(back == big, "a sealed reply came back changed");
    let sealed = mapped_in(&back, "memfd:hsipc-frame");
    drop(back);
    let after = maps().iter().filter(|(_, _, name)| name.contains("memfd:hsipc-frame")).count();
    report(format!("CALLED pooled={pooled} sealed={sealed} sealed_after={after}"));
}

/// This process's file mappings: (start, end, name).
fn maps() -> Vec<(usize, usize, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let name = rest.split_whitespace().nth(4).unwrap_or("").to_string();
            Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?, name))
        })
        .collect()
}

/// Whether `payload` lies in a mapping whose name contains `name`.
fn mapped_in(payload: &[u8], name: &str) -> bool {
    let p = payload.as_ptr() as usize;
    maps().iter().any(|(a, b, n)| n.contains(name) && *a <= p && p + payload.len() <= *b)
}

/// A tokio hub and a smol hub in one process call each other with large requests (which
/// come through a lane's pool once the lane is up, proving that lanes carry them), the tokio
/// hub sends the smol hub a burst of events (far more than a reactor waker reads at once), and
/// then both close; all of it twice. Reports whether everything arrived, how many threads read
/// lanes (none: both runtimes read lanes on their reactors), and whether every lane's pool was
/// unmapped after the close (a lane reader left behind would keep its pool and ring mapped).
#[cfg(all(feature = "tokio", feature = "smol"))]
fn async_pair() {
    use futures_lite::StreamExt;
    let bus = env("HSIPC_BUS");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    for round in 0..2 {
        let t = hsipc::ProcessHub::builder(&format!("t{round}")).bus(&bus).build().unwrap();
        let s = hsipc::smol::ProcessHub::builder(&format!("s{round}")).bus(&bus).build().unwrap();
        let pooled = |v: bytes::Bytes| async move { Ok::<_, String>(mapped_in(&v, "memfd:hsipc-pool")) };
        rt.block_on(t.serve(&format!("t{round}.pooled"), pooled)).unwrap();
        smol::block_on(s.serve(&format!("s{round}.pooled"), pooled)).unwrap();
        rt.block_on(t.wait_for_service(&format!("s{round}"), LONG)).unwrap();
        smol::block_on(s.wait_for_service(&format!("t{round}"), LONG)).unwrap();
        let big = bytes::Bytes::from(vec![3u8; 1 << 20]);
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(rt.block_on(t.call::<_, bool>(&format!("s{round}.pooled"), &big)).unwrap());
            seen.push(smol::block_on(s.call::<_, bool>(&format!("t{round}.pooled"), &big)).unwrap());
        }
        // The first calls may go through the bus while a lane is set up; the later ones cannot.
        report(format!("POOLED {} {seen:?}", seen[20..].iter().all(|&p| p)));
        let mut events = smol::block_on(s.subscribe::<u32>("burst/#")).unwrap();
        let n = 3000u32;
        let reader = smol::spawn(async move {
            let mut next = 0u32;
            while next < n {
                match events.next().await {
                    Some(Ok(e)) if e.payload == next => next += 1,
                    other => return format!("event {next}: {:?}", other.map(|r| r.map(|e| e.payload))),
                }
            }
            "ok".to_string()
        });
        rt.block_on(async {
            t.wait_for_subscriber("burst/x", LONG).await.unwrap();
            for i in 0..n {
                t.publish("burst/x", i).await.unwrap();
            }
        });
        report(format!("BURST {}", smol::block_on(reader)));
        report(format!("LANES {}", lane_threads()));
        smol::block_on(s.close());
        rt.block_on(t.close());
        // Lane readers end as they see their lanes shut, right after the close: wait for that.
        let deadline = std::time::Instant::now() + LONG;
        while pools_mapped() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        report(format!("MAPPED {}", pools_mapped()));
    }
}

/// Lane pools and rings (data, board or control page) mapped in this process.
#[cfg(all(feature = "tokio", feature = "smol"))]
fn pools_mapped() -> usize {
    maps().iter().filter(|(_, _, name)| name.contains("memfd:hsipc-pool") || name.contains("memfd:hsipc-ring")).count()
}

#[test]
#[cfg(all(feature = "tokio", feature = "smol"))]
fn tokio_and_smol_hubs_read_their_lanes_on_their_reactors() {
    let bus = unique_bus("lanes-reactors");
    let mut pair = Peer::spawn("async_pair", &bus, "pair", &[]);
    for _ in 0..2 {
        let pooled = pair.expect("POOLED", LONG);
        assert!(pooled.starts_with("true"), "large requests did not come through a lane: {pooled}");
        assert_eq!(pair.expect("BURST", LONG), "ok", "the burst of events came in order and whole");
        assert_eq!(pair.expect("LANES", LONG), "0", "lanes read on threads");
        assert_eq!(pair.expect("MAPPED", LONG), "0", "a lane's pool or ring is still mapped after the close");
    }
}

/// A hub whose lane reader is held up (in an inline handler that waits) while another hub
/// writes far more small frames than the lane's ring holds, with a few large ones among them:
/// the ring fills, the writer queues the rest without blocking, and once the reader goes on,
/// the reader's word that it made room lets the writer write the rest. Reports what the
/// subscriber got, in order.
fn held_reader() {
    let bus = env("HSIPC_BUS");
    let server = ProcessHub::builder("held").bus(&bus).build().unwrap();
    let client = ProcessHub::builder("writer").bus(&bus).build().unwrap();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started_tx, released) = (std::sync::Mutex::new(started_tx), std::sync::Mutex::new(released));
    server
        .serve_inline("held.hold", move |_: ()| {
            started_tx.lock().unwrap().send(()).unwrap();
            released.lock().unwrap().recv_timeout(LONG).map_err(|e| e.to_string())
        })
        .unwrap();
    let events = server.subscribe_with::<(u32, bytes::Bytes)>("fill/#", hsipc::Qos::KeepLast(10_000)).unwrap();
    client.wait_for_service("held", LONG).unwrap();
    client.wait_for_subscriber("fill/x", LONG).unwrap();
    // Lanes up both ways (the server's answer comes back on a lane of its own).
    for _ in 0..3 {
        client.publish("fill/x", (u32::MAX, bytes::Bytes::new())).unwrap();
    }
    let holder = {
        let client = client.clone();
        std::thread::spawn(move || client.call::<_, ()>("held.hold", ()))
    };
    started.recv_timeout(LONG).unwrap();
    // 200 B events: 2000 of them are three times what a ring holds; every 100th is 20 KiB
    // (pooled, through the socket, marked in the ring).
    let n = 2000u32;
    for i in 0..n {
        let len = if i % 100 == 99 { 20_000 } else { 200 };
        client.publish("fill/x", (i, bytes::Bytes::from(vec![i as u8; len]))).unwrap();
    }
    release.send(()).unwrap();
    holder.join().unwrap().unwrap();
    let mut next = 0u32;
    let mut seen = String::from("ok");
    while next < n {
        match events.recv_timeout(LONG) {
            Ok(e) if e.payload.0 == u32::MAX => {}
            Ok(e) if e.payload.0 == next && e.payload.1.len() == if next % 100 == 99 { 20_000 } else { 200 } => {
                next += 1
            }
            other => {
                seen = format!("event {next}: {:?}", other.map(|e| (e.payload.0, e.payload.1.len(), e.missed)));
                break;
            }
        }
    }
    report(format!("HELD {seen}"));
    client.close();
    server.close();
}

#[test]
fn a_ring_filled_while_its_reader_is_held_up_delivers_everything_in_order_once_it_reads() {
    let bus = unique_bus("lanes-held");
    let mut peer = Peer::spawn("held_reader", &bus, "held", &[]);
    assert_eq!(peer.expect("HELD", LONG), "ok");
}

/// Calls with payloads far larger than a lane holds, from several threads at once (against a
/// server that reads nothing); reports how each ended.
fn flood(hub: &ProcessHub) {
    let big = bytes::Bytes::from(vec![1u8; 300_000]);
    let results: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let big = big.clone();
                s.spawn(move || match hub.call_timeout::<_, bytes::Bytes>("calc.echo", big, LONG) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => kind(&e).to_string(),
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    report(format!("FLOODED {}", results.join(",")));
}

/// Calls until one is answered (the server is reachable again), at most `LONG`.
fn recover(hub: &ProcessHub) {
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        if let Ok(4) = hub.call_timeout::<_, i64>("calc.add", (2, 2), Duration::from_millis(500)) {
            report("RECOVERED yes");
            return;
        }
    }
    report("RECOVERED no");
}

/// After the controller is killed: the lane carries on at once.
fn again(hub: &ProcessHub) {
    let results: Vec<String> = (0..20)
        .map(|i| match hub.call_timeout::<_, i64>("calc.add", (i, i), Duration::from_secs(5)) {
            Ok(v) if v == 2 * i => "ok".to_string(),
            Ok(v) => format!("wrong:{v}"),
            Err(e) => kind(&e).to_string(),
        })
        .collect();
    report(format!("AGAIN {}", results.join(",")));
}

/// Calls `svc.add` a few times; reports how they went.
fn add(hub: &ProcessHub, svc: &str) {
    hub.wait_for_service(svc, LONG).unwrap();
    let results: Vec<String> = (0..20)
        .map(|i| match hub.call_timeout::<_, i64>(&format!("{svc}.add"), (i, i), Duration::from_secs(5)) {
            Ok(v) if v == 2 * i => "ok".to_string(),
            Ok(v) => format!("wrong:{v}"),
            Err(e) => kind(&e).to_string(),
        })
        .collect();
    report(format!("ADDED {}", results.join(",")));
}

#[test]
fn calls_move_to_a_lane_keep_their_order_and_outlive_the_bus_controller() {
    let bus = unique_bus("lanes");
    // The bystander joins first, so it is ipmb's bus controller; the others are clients of it.
    let mut controller = Peer::ready("bystander", &bus, "controller", &[]);
    let mut server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[]);
    // Large replies were read from shared memory, not copied; a sealed one was unmapped once
    // the client let go of it. A large request, too, is read from the client's pool.
    assert_eq!(client.expect("CALLED", LONG), "pooled=true sealed=true sealed_after=0");
    client.send("where");
    assert_eq!(client.expect("WHERE", LONG), "pool");
    // The server read the client's requests from a lane, and the client the server's replies.
    server.send("lanes");
    assert_ne!(server.expect("LANES", LONG), "0", "the server reads no lane");
    client.send("lanes");
    assert_ne!(client.expect("LANES", LONG), "0", "the client reads no lane");
    let lane_ids = |peer: &mut Peer| -> BTreeSet<String> {
        peer.send("lane_ids");
        peer.expect("LANE_IDS", LONG).split(',').filter(|id| !id.is_empty()).map(str::to_string).collect()
    };
    let (server_lanes, client_lanes) = (lane_ids(&mut server), lane_ids(&mut client));
    // Without its controller, ipmb cannot route a message; the lanes do not need it.
    controller.kill();
    client.send("again");
    let again = client.expect("AGAIN", LONG);
    assert!(again.split(',').all(|r| r == "ok"), "calls after the controller died: {again}");
    // They went through the lanes open before (a call to a peer with a lane goes through it),
    // not through a bus that ipmb rebuilt around another controller and new lanes made over it:
    // each side still reads a lane, and only lanes it read before.
    for (side, before, now) in
        [("server", server_lanes, lane_ids(&mut server)), ("client", client_lanes, lane_ids(&mut client))]
    {
        assert!(!now.is_empty(), "the {side}'s lanes closed with the controller");
        assert!(now.is_subset(&before), "the {side} reads new lanes {now:?}, not its lanes of before {before:?}");
    }
    server.send("quit");
    client.send("quit");
}

/// A hub that reads its most lanes declines another: the peer that offered it closes it and
/// goes on through the bus, losing nothing and taking nobody for gone.
#[test]
fn a_lane_beyond_the_most_is_declined_and_its_peer_goes_through_the_bus() {
    let bus = unique_bus("declined");
    let mut server = Peer::ready("server", &bus, "server", &[("HSIPC_MAX_IN_LANES", "1")]);
    let mut first = Peer::ready("client", &bus, "first", &[]);
    first.expect("CALLED", LONG);
    // The server reads the first client's lane; the second's is declined.
    let mut second = Peer::ready("caller", &bus, "second", &[]);
    for _ in 0..3 {
        second.send("again");
        let again = second.expect("AGAIN", LONG);
        assert!(again.split(',').all(|r| r == "ok"), "calls through a declined lane, then the bus: {again}");
    }
    assert_eq!(until_lanes(&mut server, |n| n == "1"), "1", "the declined lane was not closed");
    first.send("again");
    let again = first.expect("AGAIN", LONG);
    assert!(again.split(',').all(|r| r == "ok"), "the first client's calls: {again}");
    server.send("quit");
    first.send("quit");
    second.send("quit");
}

/// A hub that has opened its most lanes reaches further peers through the bus: its calls to
/// them go on, and no more of them read a lane from it. (Hubs open lanes to each other as they
/// meet: the two servers read one from each other, and one of them reads the caller's.)
#[test]
fn a_hub_at_its_most_lanes_reaches_further_peers_through_the_bus() {
    let bus = unique_bus("most-out");
    let mut first = Peer::ready("server", &bus, "first", &[("HSIPC_SVC", "first")]);
    let mut second = Peer::ready("server", &bus, "second", &[("HSIPC_SVC", "second")]);
    let mut caller = Peer::ready("caller", &bus, "caller", &[("HSIPC_MAX_OUT_LANES", "1")]);
    let calls = |caller: &mut Peer| {
        for svc in ["first", "second", "first", "second"] {
            caller.send(&format!("add {svc}"));
            let added = caller.expect("ADDED", LONG);
            assert!(added.split(',').all(|r| r == "ok"), "calls to {svc}: {added}");
        }
    };
    // Lanes the two servers read: one from each other, and the caller's one.
    let read_by_servers = |first: &mut Peer, second: &mut Peer| {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let n: Vec<usize> = [&mut *first, &mut *second]
                .into_iter()
                .map(|p| {
                    p.send("lanes");
                    p.expect("LANES", LONG).parse().unwrap()
                })
                .collect();
            if n.iter().sum::<usize>() >= 3 || std::time::Instant::now() >= deadline {
                return n;
            }
        }
    };
    calls(&mut caller);
    let n = read_by_servers(&mut first, &mut second);
    assert_eq!(n.iter().sum::<usize>(), 3, "lanes read by the servers: {n:?}");
    // A lane beyond its most would have been offered with the first call to its server.
    calls(&mut caller);
    let n = read_by_servers(&mut first, &mut second);
    assert_eq!(n.iter().sum::<usize>(), 3, "lanes read by the servers after more calls: {n:?}");
    first.send("quit");
    second.send("quit");
    caller.send("quit");
}

/// The end of a peer's lane is taken for its death at once: a call in flight to a server whose
/// lanes end while its process lives on (so its process id says nothing) fails with `PeerLost`
/// well before the caller's next heartbeat (20 s apart; writing it into the lane would find the
/// end too), its peer timeout (six heartbeats), its lanes' stall timeout (60 s) or the call's
/// (120 s).
#[test]
fn the_end_of_a_peers_lane_is_its_death_seen_at_once() {
    let bus = unique_bus("lane-end");
    let slow_heartbeat = ("HSIPC_HEARTBEAT_MS", "20000");
    let _controller = Peer::ready("bystander", &bus, "controller", &[slow_heartbeat]);
    let mut server = Peer::ready("server", &bus, "server", &[slow_heartbeat]);
    // A lane that stays full is cut off after its stall timeout: far beyond the bound here.
    let mut caller = Peer::ready("caller", &bus, "caller", &[slow_heartbeat, ("HSIPC_LANE_STALL_MS", "60000")]);
    caller.send("again"); // the lanes both ways are open
    let again = caller.expect("AGAIN", LONG);
    assert!(again.split(',').all(|r| r == "ok"), "calls before: {again}");
    caller.send("sleep");
    server.expect("SLEEPING", LONG);
    let severed = std::time::Instant::now();
    server.send("sever");
    server.expect("SEVERED", LONG);
    let slept = caller.expect("SLEPT", LONG);
    let after = severed.elapsed();
    eprintln!("the caller took the server for gone {after:?} after its lanes ended");
    assert_eq!(slept, "peer_lost");
    assert!(after < Duration::from_secs(10), "the caller learned of the end after {after:?}");
    caller.send("quit");
}

/// Order is kept across every switch of lanes: a publisher whose lane closes in each pause of
/// its bursts (and a new one opens with the next) delivers every event, in order.
#[test]
fn events_keep_their_order_across_switches_to_new_lanes() {
    let bus = unique_bus("switching");
    let mut subscriber = Peer::ready("switching_subscriber", &bus, "subscriber", &[]);
    let _publisher = Peer::ready("switching_publisher", &bus, "publisher", &[]);
    let got = subscriber.expect("GOT", LONG);
    eprintln!("{got}");
    let (head, lanes) = got.rsplit_once(" lanes=").unwrap();
    assert_eq!(head, format!("{SWITCHED_EVENTS} missed=0 in_order=true"));
    assert!(lanes.parse::<usize>().unwrap() > 1, "the events never switched lanes: {got}");
}

/// A lane kept busy from its first frame, both processes on one CPU, with frames waiting behind
/// its full socket: it has its ring halfway through the burst, and every event arrives, in
/// order, across the switch from the socket to the ring. (A ring's hand-over behind frames that
/// wait, which a steady burst needs, is pinned by the unit test
/// `a_ring_is_handed_over_behind_frames_that_wait`; such a lane used to wait for a moment with
/// nothing waiting, and could go most of a burst through the socket, about half as fast.)
#[test]
fn a_lane_busy_from_its_start_gets_its_ring_in_order() {
    let bus = unique_bus("cold-ring");
    let mut sub = Peer::ready("cold_subscriber", &bus, "sub", &[]);
    let mut publisher = Peer::ready("cold_publisher", &bus, "pub", &[]);
    publisher.expect("PUBLISHED", LONG);
    assert_eq!(sub.expect("GOT", LONG), format!("{COLD_EVENTS} missed=0 in_order=true ring=true"));
}

/// A hub that refuses shared pools gets large frames in memfds sealed against writes.
#[test]
fn a_hub_that_refuses_shared_pools_gets_large_frames_sealed() {
    let bus = unique_bus("no-pools");
    let mut server = Peer::ready("server", &bus, "server", &[("HSIPC_NO_LANE_POOLS", "1")]);
    let mut client = Peer::ready("client", &bus, "client", &[]);
    client.expect("CALLED", LONG);
    client.send("where");
    assert_eq!(client.expect("WHERE", LONG), "sealed");
    server.send("quit");
    client.send("quit");
}

/// A member that stops reading long enough is cut off (its lane stalled); once it reads again
/// it is reached afresh (a new lane), not left unreachable for the rest of its life.
#[test]
fn a_member_cut_off_for_a_stall_is_reached_again_once_it_reads() {
    let bus = unique_bus("stall-recover");
    let mut server = Peer::ready("server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[("HSIPC_LANE_STALL_MS", "500")]);
    client.expect("CALLED", LONG);
    // SAFETY: stops and resumes a child process of ours.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGSTOP) }, 0);
    // A stop is not instant for a process with threads on other CPUs: flood only once the
    // kernel says every thread of the server has stopped.
    let deadline = std::time::Instant::now() + LONG;
    while !all_threads_stopped(server.pid()) {
        assert!(std::time::Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    client.send("flood");
    let flooded = client.expect("FLOODED", LONG);
    assert!(flooded.split(',').all(|r| r == "peer_lost"), "calls to a stalled member: {flooded}");
    // SAFETY: as above.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGCONT) };
    client.send("recover");
    assert_eq!(client.expect("RECOVERED", LONG), "yes");
    server.send("quit");
    client.send("quit");
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let stats: Vec<String> = tasks.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok()).collect();
    // The state follows the command name, which is in parentheses and may hold spaces.
    let stopped =
        |stat: &String| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("T");
    !stats.is_empty() && stats.iter().all(stopped)
}

/// Asks `peer` how many lanes it reads until it says `want` (or `LONG` passes).
fn until_lanes(peer: &mut Peer, want: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        peer.send("lanes");
        let n = peer.expect("LANES", LONG);
        if want(&n) || std::time::Instant::now() >= deadline {
            return n;
        }
    }
}

/// A lane nobody uses (heartbeats aside) is closed, without either side taking the other for
/// gone; traffic then goes on, through the bus and then a new lane, in order.
#[test]
fn an_idle_lane_is_closed_and_its_peer_is_not_lost() {
    let bus = unique_bus("idle-lane");
    let env = [("HSIPC_LANE_IDLE_MS", "300")];
    let mut server = Peer::ready("server", &bus, "server", &env);
    let mut client = Peer::ready("client", &bus, "client", &env);
    client.expect("CALLED", LONG);
    // Idle now: both lanes close (each side reads none).
    assert_eq!(until_lanes(&mut server, |n| n == "0"), "0", "the client's idle lane stayed open");
    assert_eq!(until_lanes(&mut client, |n| n == "0"), "0", "the server's idle lane stayed open");
    // Busy again: every call answered, none taken for a departed peer, and a new lane.
    client.send("again");
    let again = client.expect("AGAIN", LONG);
    assert!(again.split(',').all(|r| r == "ok"), "calls after the lanes closed: {again}");
    assert_ne!(until_lanes(&mut server, |n| n != "0"), "0", "no new lane once busy again");
    server.send("quit");
    client.send("quit");
}

/// A process of another user is served through the bus: no lane is made to it, and none from
/// it is accepted (each side checks the other's user). Needs root, to start that process.
#[test]
fn a_process_of_another_user_gets_no_lane_and_is_reached_through_the_bus() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can start a child process as another user");
        return;
    }
    let bus = unique_bus("other-user");
    let mut server = Peer::ready("other_user_server", &bus, "server", &[]);
    let mut client = Peer::ready("client", &bus, "client", &[]);
    // Every call answered, in order and intact (large ones too), through the bus.
    client.expect("CALLED", LONG);
    server.send("lanes");
    assert_eq!(server.expect("LANES", LONG), "0", "the other user's process reads a lane");
    client.send("lanes");
    assert_eq!(client.expect("LANES", LONG), "0", "this user's process reads a lane from another user");
    server.send("quit");
    client.send("quit");
}

/// A publisher that never pauses is held back by its send backlog instead of losing events:
/// a burst crosses processes complete (the subscriber's own queue is large enough here;
/// choosing what a slow subscriber loses is its subscription's policy).
#[test]
fn a_publisher_that_never_pauses_loses_nothing_on_its_side() {
    let bus = unique_bus("burst");
    let mut sub = Peer::ready("burst_subscriber", &bus, "sub", &[]);
    let mut publisher = Peer::ready("burst_publisher", &bus, "pub", &[]);
    publisher.expect("PUBLISHED", LONG);
    let got = sub.expect("GOT", LONG);
    assert_eq!(got, "20000 missed=0 in_order=true");
}

fn burst_subscriber() {
    let hub = ProcessHub::builder(&env("HSIPC_NAME")).build().unwrap();
    let events = hub.subscribe::<u32>("burst/#").unwrap();
    report("READY");
    let (mut count, mut missed, mut in_order) = (0u32, 0u64, true);
    for event in events {
        let event = event.unwrap();
        missed += event.missed;
        in_order &= event.payload == count;
        count += 1;
        if event.payload == 19_999 {
            break;
        }
    }
    report(format!("GOT {count} missed={missed} in_order={in_order}"));
    while command().is_some() {}
}

fn burst_publisher() {
    let hub = ProcessHub::builder(&env("HSIPC_NAME")).build().unwrap();
    // Publish only once the subscriber's pattern has reached this hub.
    hub.wait_for_subscriber("burst/n", LONG).unwrap();
    report("READY");
    for i in 0..20_000u32 {
        hub.publish("burst/n", i).unwrap();
    }
    report("PUBLISHED");
    while command().is_some() {}
}

/// Pins this process to the first CPU it may run on (both of a test's processes then share it,
/// as on a busy machine).
fn on_one_cpu() {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity and sched_setaffinity only
    // read and write it and this process's affinity, and CPU_ISSET/CPU_SET stay within it.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
        let first = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &allowed)).unwrap();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
    }
}

/// Events of 4 KiB a cold publisher sends.
const COLD_EVENTS: u32 = 40_000;

/// Reads a cold publisher's events: whether they came complete and in order, and whether the
/// lane they came through had its ring halfway through (this process maps a ring read-only).
fn cold_subscriber() {
    on_one_cpu();
    let hub = ProcessHub::builder(&env("HSIPC_NAME")).build().unwrap();
    let events = hub.subscribe::<(u32, bytes::Bytes)>("cold/#").unwrap();
    report("READY");
    let has_ring = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| l.contains(" r--s ") && l.contains("memfd:hsipc-ring "))
    };
    let (mut count, mut missed, mut in_order, mut ring) = (0u32, 0u64, true, false);
    for event in events {
        let event = event.unwrap();
        missed += event.missed;
        in_order &= event.payload.0 == count && event.payload.1.len() == 4096;
        count += 1;
        if count == COLD_EVENTS / 2 {
            ring = has_ring(); // halfway through the burst
        }
        if event.payload.0 == COLD_EVENTS - 1 {
            break;
        }
    }
    report(format!("GOT {count} missed={missed} in_order={in_order} ring={ring}"));
    while command().is_some() {}
}

/// Publishes 4 KiB events as fast as it can from the moment its subscriber is known: more
/// wait in the lane than its socket holds, from its first frames on, while the subscriber's
/// reader has not yet said that it takes a ring.
fn cold_publisher() {
    on_one_cpu();
    let hub = ProcessHub::builder(&env("HSIPC_NAME")).build().unwrap();
    hub.wait_for_subscriber("cold/n", LONG).unwrap();
    report("READY");
    let pad = bytes::Bytes::from(vec![7u8; 4096]);
    for i in 0..COLD_EVENTS {
        hub.publish("cold/n", (i, pad.clone())).unwrap();
    }
    report("PUBLISHED");
    while command().is_some() {}
}

/// Events a switching publisher sends.
const SWITCHED_EVENTS: u32 = 20_000;

/// Reads the switching publisher's events: whether they came complete and in order, and how
/// many lanes carried them (each lane from a blocking hub has a reading thread of its own).
fn switching_subscriber() {
    let hub = ProcessHub::builder(&env("HSIPC_NAME")).build().unwrap();
    let events = hub.subscribe::<u32>("switch/#").unwrap();
    report("READY");
    let mut lanes = std::collections::HashSet::new();
    let (mut count, mut missed, mut in_order) = (0u32, 0u64, true);
    for event in events {
        let event = event.unwrap();
        missed += event.missed;
        in_order &= event.payload == count;
        count += 1;
        if count % 100 == 0 {
            lanes.extend(lane_thread_ids());
        }
        if event.payload == SWITCHED_EVENTS - 1 {
            break;
        }
    }
    report(format!("GOT {count} missed={missed} in_order={in_order} lanes={}", lanes.len()));
    while command().is_some() {}
}

/// The ids of the threads reading a lane in this process.
fn lane_thread_ids() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            name.starts_with("hsipc-lane").then(|| t.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Publishes numbered events in bursts with pauses longer than its lanes' idle timeout: each
/// pause closes the lane (its last events may still be in it), and the next burst goes through
/// a new lane, offered over the bus after the old one's closing notice: the subscriber must read
/// the old lane to its end before it takes anything from the new one.
fn switching_publisher() {
    let mut cfg = hsipc::transport::ipmb::IpmbConfig::new(env("HSIPC_BUS"));
    cfg.lane_idle_timeout = Duration::from_millis(2);
    // The writer closes idle lanes when it wakes, as for a heartbeat: every 10 ms here.
    let hub = ProcessHub::builder(&env("HSIPC_NAME"))
        .transport(hsipc::transport::ipmb::IpmbBus::new(cfg).connector())
        .heartbeat(Duration::from_millis(10), Duration::from_secs(10))
        .build()
        .unwrap();
    hub.wait_for_subscriber("switch/n", LONG).unwrap();
    report("READY");
    for i in 0..SWITCHED_EVENTS {
        hub.publish("switch/n", i).unwrap();
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(40)); // idle: the lane closes
        }
    }
    report("PUBLISHED");
    while command().is_some() {}
}

/// Two hubs whose lane threads can be told apart: a lane thread is named after its writer's id,
/// cut to Linux's 15 characters (see [`lane_thread_of`]), so the two ids must differ there.
fn told_apart(make: impl Fn() -> (ProcessHub, ProcessHub)) -> (ProcessHub, ProcessHub) {
    loop {
        let (a, b) = make();
        if lane_thread_of(&a) != lane_thread_of(&b) {
            return (a, b);
        }
    }
}

/// The name (as `/proc` shows it) of the threads that read lanes written by `writer`.
fn lane_thread_of(writer: &ProcessHub) -> String {
    format!("hsipc-lane-{}", &writer.id().to_string()[..4])
}

/// The voluntary context switches of this process's threads whose name starts with `comm`.
fn wakeups_of(comm: &str) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let path = t.ok()?.path();
            std::fs::read_to_string(path.join("comm")).ok()?.trim().starts_with(comm).then_some(path)
        })
        .filter_map(|path| {
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Two hubs in this child: counts how often one lane thread is woken during 300 calls, once
/// the lane has its ring. With `worker` false the handler is inline and the thread counted is
/// the client's reader of the server's lane (woken by replies unless the caller reads them);
/// with `worker` true the handler runs on a worker and the thread counted is the server's
/// reader of the client's lane (woken by requests unless an idle worker reads them).
fn lane_wakeups(worker: bool) {
    let bus = env("HSIPC_BUS");
    let (server, client) = told_apart(|| {
        (
            ProcessHub::builder("server").bus(&bus).build().unwrap(),
            ProcessHub::builder("client").bus(&bus).build().unwrap(),
        )
    });
    if worker {
        server.serve("calc.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    } else {
        server.serve_inline("calc.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    }
    client.wait_for_service("calc", LONG).unwrap();
    // Enough for the lane to get its ring.
    for i in 0..100u64 {
        assert_eq!(client.call::<_, u64>("calc.echo", i).unwrap(), i);
    }
    let reader = lane_thread_of(if worker { &client } else { &server });
    let before = wakeups_of(&reader);
    for i in 0..300u64 {
        assert_eq!(client.call::<_, u64>("calc.echo", i).unwrap(), i);
    }
    report(format!("WOKEN {}", wakeups_of(&reader).saturating_sub(before)));
    client.close();
    server.close();
}

/// Runs `role` in a child on a bus of its own and returns what it reports after `WOKEN`.
fn woken_in_child(role: &str, bus: &str) -> String {
    let mut peer = Peer::spawn(role, &unique_bus(bus), "pair", &[]);
    peer.expect("WOKEN", LONG)
}

/// A blocking caller reads its reply from the lane itself: the lane's reader thread is not
/// woken once per call (which would cost the round trip two context switches).
#[test]
fn a_blocking_caller_reads_its_reply_from_the_lane_itself() {
    let woken: u64 = woken_in_child("caller_reads", "caller-reads").parse().unwrap();
    eprintln!("the client's lane thread was woken {woken} times in 300 calls");
    assert!(woken < 75, "the lane's thread was woken {woken} times for 300 replies");
}

/// Hub A calls B, whose handler calls an inline method of A back while A's caller waits (and
/// reads B's lane itself): reports, over 20 calls, how often that inline handler ran on A's
/// calling thread, and how often A's thread for B's lane was woken meanwhile (rarely, if A's
/// caller read the lane). A has one worker, which B's calls back must not need.
fn inline_off_the_caller() {
    let bus = env("HSIPC_BUS");
    let (a, b) = told_apart(|| {
        (
            ProcessHub::builder("a").bus(&bus).workers(1).build().unwrap(),
            ProcessHub::builder("b").bus(&bus).build().unwrap(),
        )
    });
    a.serve_inline("a.where", |(): ()| Ok::<_, String>(format!("{:?}", std::thread::current().id()))).unwrap();
    let back = b.clone();
    b.serve("b.ask", move |(): ()| back.call::<_, String>("a.where", ()).map_err(|e| e.to_string())).unwrap();
    a.wait_for_service("b", LONG).unwrap();
    b.wait_for_service("a", LONG).unwrap();
    // Enough traffic both ways for both lanes to get their rings.
    for _ in 0..40 {
        a.call::<_, String>("b.ask", ()).unwrap();
    }
    let reader = lane_thread_of(&b);
    let before = wakeups_of(&reader);
    // From a worker of A's too (its only one): the call back to A must not wait for it.
    a.serve("a.outer", {
        let a = a.clone();
        move |(): ()| a.call::<_, String>("b.ask", ()).map_err(|e| e.to_string())
    })
    .unwrap();
    let me = format!("{:?}", std::thread::current().id());
    let on_caller = (0..20).filter(|_| a.call::<_, String>("b.ask", ()).unwrap() == me).count();
    let woken = wakeups_of(&reader).saturating_sub(before);
    for _ in 0..20 {
        a.call::<_, String>("a.outer", ()).unwrap();
    }
    report(format!("ON_CALLER {on_caller} {woken}"));
    b.close();
    a.close();
}

/// An inline handler never runs on an application's thread that reads a lane for its own call
/// (it could wait there for a lock that thread holds): its request goes to a worker.
#[test]
fn an_inline_handler_does_not_run_on_a_caller_reading_a_lane() {
    let bus = unique_bus("inline-off-caller");
    let mut peer = Peer::spawn("inline_off_the_caller", &bus, "pair", &[]);
    let line = peer.expect("ON_CALLER", LONG);
    let (on_caller, woken) = line.split_once(' ').unwrap();
    assert_eq!(on_caller, "0", "the inline handler ran on the caller's thread");
    // The caller read the lane (else this would not test anything): A's thread for it slept.
    assert!(woken.parse::<u32>().unwrap() < 10, "A's lane thread was woken {woken} times in 20 calls");
}

/// An idle worker reads the lane requests come through: a request for a worker's handler
/// wakes that worker, not the lane's thread first (which would cost the round trip two
/// context switches more).
#[test]
fn an_idle_worker_reads_requests_from_the_lane_itself() {
    let woken: u64 = woken_in_child("worker_reads", "worker-reads").parse().unwrap();
    eprintln!("the server's lane thread was woken {woken} times in 300 calls");
    assert!(woken < 75, "the lane's thread was woken {woken} times for 300 requests");
}

/// Three hubs in this child: a server and two clients, which call a handler on the server's
/// workers in turn. Reported: how often the server's threads for the two clients' lanes were
/// woken by 300 calls from each (rarely if idle workers read both lanes).
fn two_clients() {
    let bus = env("HSIPC_BUS");
    let (server, first, second) = loop {
        let (server, first) = told_apart(|| {
            (
                ProcessHub::builder("server").bus(&bus).build().unwrap(),
                ProcessHub::builder("first").bus(&bus).build().unwrap(),
            )
        });
        let second = ProcessHub::builder("second").bus(&bus).build().unwrap();
        let names = [&server, &first, &second].map(lane_thread_of);
        if names[2] != names[0] && names[2] != names[1] {
            break (server, first, second);
        }
    };
    server.serve("calc.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    first.wait_for_service("calc", LONG).unwrap();
    second.wait_for_service("calc", LONG).unwrap();
    // Enough for both lanes to get their rings.
    for i in 0..100u64 {
        assert_eq!(first.call::<_, u64>("calc.echo", i).unwrap(), i);
        assert_eq!(second.call::<_, u64>("calc.echo", i).unwrap(), i);
    }
    let readers = [lane_thread_of(&first), lane_thread_of(&second)];
    let before: u64 = readers.iter().map(|r| wakeups_of(r)).sum();
    for i in 0..300u64 {
        assert_eq!(first.call::<_, u64>("calc.echo", i).unwrap(), i);
        assert_eq!(second.call::<_, u64>("calc.echo", i).unwrap(), i);
    }
    let after: u64 = readers.iter().map(|r| wakeups_of(r)).sum();
    report(format!("WOKEN {}", after.saturating_sub(before)));
    first.close();
    second.close();
    server.close();
}

/// With several clients, idle workers read the lanes of each (one worker a lane): requests
/// from clients that call in turn wake the workers that read their lanes, not the lanes'
/// threads and then a worker each.
#[test]
fn idle_workers_read_the_lanes_of_several_clients() {
    let woken: u64 = woken_in_child("two_clients", "two-clients").parse().unwrap();
    eprintln!("the server's lane threads were woken {woken} times in 600 calls from two clients");
    assert!(woken < 150, "the lanes' threads were woken {woken} times for 600 requests");
}

/// A worker that read a request from the lane gives the lane back before it runs the handler:
/// a request that comes while the handler runs is served by another worker. Here the first
/// handler waits until the second has run; were the second request left unread, the first
/// would give up after a minute and the call would fail.
#[test]
fn a_request_that_comes_while_the_reading_worker_runs_a_handler_is_served() {
    let bus = unique_bus("busy-worker");
    let server = ProcessHub::builder("server").bus(&bus).workers(2).build().unwrap();
    let client = ProcessHub::builder("client").bus(&bus).build().unwrap();
    let (opened, gate) = std::sync::mpsc::sync_channel::<()>(1);
    let gate = std::sync::Mutex::new(gate);
    server
        .serve("gate.wait", move |(): ()| {
            let gate = gate.lock().unwrap();
            gate.recv_timeout(LONG).map_err(|_| "the gate was never opened".to_string())
        })
        .unwrap();
    server.serve("gate.open", move |(): ()| opened.send(()).map_err(|e| e.to_string())).unwrap();
    server.serve("gate.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    client.wait_for_service("gate", LONG).unwrap();
    // Warm: the lane gets its ring, and a worker reads it while idle.
    for i in 0..100u64 {
        assert_eq!(client.call::<_, u64>("gate.echo", i).unwrap(), i);
    }
    for _ in 0..20 {
        let waiting = std::thread::spawn({
            let client = client.clone();
            move || client.call::<_, ()>("gate.wait", ())
        });
        client.call::<_, ()>("gate.open", ()).unwrap();
        waiting.join().unwrap().unwrap();
    }
    client.close();
    server.close();
}

/// Two hubs in this child: B calls A's handler on a worker until A's idle worker reads B's lane
/// (reported: how often A's thread for that lane was woken by 100 more calls, rarely if the
/// worker reads it); then A's application calls B 300 times (reported: how often A's workers
/// were woken meanwhile, rarely if the caller took the lane over and read its replies itself).
fn caller_first() {
    let bus = env("HSIPC_BUS");
    let (a, b) = told_apart(|| {
        (ProcessHub::builder("a").bus(&bus).build().unwrap(), ProcessHub::builder("b").bus(&bus).build().unwrap())
    });
    a.serve("a.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    b.serve_inline("b.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    a.wait_for_service("b", LONG).unwrap();
    b.wait_for_service("a", LONG).unwrap();
    for i in 0..100u64 {
        assert_eq!(b.call::<_, u64>("a.echo", i).unwrap(), i);
    }
    let lane_thread = lane_thread_of(&b);
    let before = wakeups_of(&lane_thread);
    for i in 0..100u64 {
        assert_eq!(b.call::<_, u64>("a.echo", i).unwrap(), i);
    }
    let lane_woken = wakeups_of(&lane_thread).saturating_sub(before);
    let before = wakeups_of("hsipc-worker");
    for i in 0..300u64 {
        assert_eq!(a.call::<_, u64>("b.echo", i).unwrap(), i);
    }
    let workers_woken = wakeups_of("hsipc-worker").saturating_sub(before);
    report(format!("WOKEN {lane_woken} {workers_woken}"));
    b.close();
    a.close();
}

/// A caller comes before an idle worker: on a hub whose idle worker reads a peer's lane, the
/// application's calls to that peer take the lane over and read their replies themselves
/// (else each reply would wake the worker, which would wake the caller).
#[test]
fn a_caller_takes_the_lane_over_from_an_idle_worker() {
    let line = woken_in_child("caller_first", "caller-first");
    let (lane, workers) = line.split_once(' ').unwrap();
    let (lane, workers): (u64, u64) = (lane.parse().unwrap(), workers.parse().unwrap());
    eprintln!("A's lane thread woken {lane} times in 100 calls from B; A's workers {workers} times in 300 calls to B");
    // The worker read B's lane (else this would not test anything).
    assert!(lane < 25, "A's lane thread was woken {lane} times for 100 requests");
    assert!(workers < 30, "A's workers were woken {workers} times for 300 replies to A's own calls");
}

/// A job queued while the worker that reads the lane is busy (here, with an inline handler it
/// read, which waits for that very job) goes to another worker at once.
#[test]
fn a_job_does_not_wait_for_a_busy_reading_worker() {
    let bus = unique_bus("busy-reader");
    let server = ProcessHub::builder("server").bus(&bus).workers(4).build().unwrap();
    let first = ProcessHub::builder("first").bus(&bus).build().unwrap();
    let second = ProcessHub::builder("second").bus(&bus).build().unwrap();
    let (signal, signalled) = std::sync::mpsc::sync_channel::<()>(1);
    let signalled = std::sync::Mutex::new(signalled);
    server.serve("s.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    server.serve("s.signal", move |(): ()| signal.send(()).map_err(|e| e.to_string())).unwrap();
    // Against the rules for inline handlers (it waits), to hold the reading worker up.
    server
        .serve_inline("s.wait", move |(): ()| Ok::<_, String>(signalled.lock().unwrap().recv_timeout(LONG).is_ok()))
        .unwrap();
    first.wait_for_service("s", LONG).unwrap();
    second.wait_for_service("s", LONG).unwrap();
    for i in 0..50u64 {
        assert_eq!(second.call::<_, u64>("s.echo", i).unwrap(), i);
    }
    // `first` last: the server's idle worker reads its lane, and runs `s.wait` when it comes.
    for i in 0..50u64 {
        assert_eq!(first.call::<_, u64>("s.echo", i).unwrap(), i);
    }
    let waiting = std::thread::spawn(move || first.call::<_, bool>("s.wait", ()));
    // Whether `s.wait` came before or after it, `s.signal` is served by another worker.
    second.call::<_, ()>("s.signal", ()).unwrap();
    assert!(waiting.join().unwrap().unwrap(), "s.wait was never signalled");
    second.close();
    server.close();
}

/// Calls both ways at once between two hubs whose idle workers read each other's lanes, with
/// callers taking lanes over from those workers and handlers calling back: every call is
/// answered (no hand-over between a caller and a worker deadlocks or loses a reply).
#[test]
fn calls_both_ways_while_idle_workers_and_callers_share_the_lanes() {
    let bus = unique_bus("both-ways");
    let a = ProcessHub::builder("a").bus(&bus).workers(2).build().unwrap();
    let b = ProcessHub::builder("b").bus(&bus).workers(2).build().unwrap();
    a.serve("a.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    b.serve("b.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    // A handler of A's that calls B back from a worker.
    let back = a.clone();
    a.serve("a.via_b", move |x: u64| back.call::<_, u64>("b.echo", x).map_err(|e| e.to_string())).unwrap();
    a.wait_for_service("b", LONG).unwrap();
    b.wait_for_service("a", LONG).unwrap();
    let runs: Vec<_> = [(a.clone(), "b.echo"), (b.clone(), "a.echo"), (b.clone(), "a.via_b"), (a.clone(), "b.echo")]
        .into_iter()
        .map(|(hub, method)| {
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    assert_eq!(hub.call::<_, u64>(method, i).unwrap(), i, "{method}");
                }
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    a.close();
    b.close();
}

/// Two hubs in this child: the server's idle worker reads the client's lane (after calls to a
/// handler on a worker); then the client publishes 1500 events one at a time, each woken for
/// separately. Reported: how often the server's thread for that lane was woken meanwhile.
fn idle_events() {
    let bus = env("HSIPC_BUS");
    let (server, client) = told_apart(|| {
        (
            ProcessHub::builder("server").bus(&bus).build().unwrap(),
            ProcessHub::builder("client").bus(&bus).build().unwrap(),
        )
    });
    server.serve("calc.echo", |x: u64| Ok::<_, String>(x)).unwrap();
    let events = server.subscribe::<u64>("t/#").unwrap();
    client.wait_for_service("calc", LONG).unwrap();
    client.wait_for_subscriber("t/x", LONG).unwrap();
    for i in 0..100u64 {
        assert_eq!(client.call::<_, u64>("calc.echo", i).unwrap(), i);
    }
    let reader = lane_thread_of(&client);
    let before = wakeups_of(&reader);
    for i in 0..1500u64 {
        client.publish("t/x", i).unwrap();
        assert_eq!(events.recv_timeout(LONG).unwrap().payload, i);
    }
    report(format!("WOKEN {}", wakeups_of(&reader).saturating_sub(before)));
    client.close();
    server.close();
}

/// An idle worker reading a lane is woken by whatever comes (events here, one at a time), and
/// keeps reading: only wake-ups that bring nothing count against the writer (more than 1024
/// of them in a row and the worker leaves the lane to its thread).
#[test]
fn an_idle_worker_keeps_reading_a_lane_that_brings_events() {
    let woken: u64 = woken_in_child("idle_events", "idle-events").parse().unwrap();
    eprintln!("the server's lane thread was woken {woken} times for 1500 events");
    assert!(woken < 300, "the lane's thread was woken {woken} times for 1500 events");
}

/// Large events to three subscribers in three processes: each reads every one intact, in
/// order and with nothing missed, and (once its lanes are up) reads it where the publisher
/// wrote it once for all three: in the publisher's fan-out pool.
#[test]
fn a_large_event_to_three_subscribers_is_read_by_each_from_one_copy() {
    let bus = unique_bus("fan-out");
    // One subscriber of each hub kind, where the async ones are built.
    let kinds =
        if cfg!(all(feature = "tokio", feature = "smol")) { ["blocking", "tokio", "smol"] } else { ["blocking"; 3] };
    let mut subs: Vec<Peer> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| Peer::ready("fan_subscriber", &bus, &format!("sub{i}"), &[("HSIPC_KIND", kind)]))
        .collect();
    let hub = ProcessHub::builder("publisher").bus(&bus).build().unwrap();
    // Small events until each subscriber has heard one: all three are known here.
    let deadline = std::time::Instant::now() + LONG;
    let mut heard = [false; 3];
    while !heard.iter().all(|h| *h) {
        assert!(std::time::Instant::now() < deadline, "not every subscriber heard the publisher");
        hub.publish("fan/hello", bytes::Bytes::from_static(b"hi")).unwrap();
        for (sub, heard) in subs.iter_mut().zip(&mut heard) {
            *heard = *heard || sub.try_line(Duration::from_millis(20)).is_some_and(|l| l.starts_with("HEARD"));
        }
    }
    // In rounds (a subscriber that holds more than the fan-out pool at once gets further events
    // through its lane's own pool).
    for i in 0..FAN_EVENTS {
        let mut payload = vec![i as u8; 1 << 20];
        payload[..8].copy_from_slice(&i.to_le_bytes());
        hub.publish("fan/big", bytes::Bytes::from(payload)).unwrap();
        if (i + 1) % FAN_ROUND == 0 && i + 1 < FAN_EVENTS {
            for sub in &mut subs {
                assert_eq!(sub.expect("AT", LONG), (i + 1).to_string());
            }
        }
    }
    for sub in &mut subs {
        let got = sub.expect("GOT", LONG);
        eprintln!("a subscriber: {got}");
        let (all, fanned) = got.split_once(" fanned=").unwrap();
        assert_eq!(all, format!("{FAN_EVENTS} missed=0 intact=true"));
        // The first large events on a lane may go through its own pool, or in chunks, if they
        // come before its reader has said what it takes.
        let fanned: u64 = fanned.parse().unwrap();
        assert!(fanned >= FAN_EVENTS - 4, "only {fanned} of {FAN_EVENTS} events came from the fan-out pool");
    }
    // The publisher, quiet now, gives its pool up, and each subscriber (holding no event, with
    // nothing to read) lets go of it.
    for sub in &mut subs {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            sub.send("fan_pool");
            if sub.expect("FAN_POOL", LONG) == "0" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a subscriber still maps the given-up fan-out pool");
            std::thread::sleep(Duration::from_millis(100)); // polling a state, not hiding a race
        }
        sub.send("quit");
    }
    hub.close();
}

const FAN_EVENTS: u64 = 40;
const FAN_ROUND: u64 = 8;

/// What a fan-out subscriber has taken.
#[derive(Default)]
struct FanCount {
    count: u64,
    missed: u64,
    intact: bool,
    fanned: u64,
    heard: bool,
}

impl FanCount {
    /// Takes one event; whether all the large ones have come.
    fn take(&mut self, event: hsipc::Event<bytes::Bytes>) -> bool {
        if event.topic == "fan/hello" {
            if !self.heard {
                report("HEARD");
                self.heard = true;
            }
            return false;
        }
        self.missed += event.missed;
        let (body, count) = (&event.payload, self.count);
        self.intact &=
            body.len() == 1 << 20 && body[..8] == count.to_le_bytes() && body[8..].iter().all(|b| *b == count as u8);
        self.fanned += u64::from(mapped_in(body, "memfd:hsipc-fan-pool"));
        self.count += 1;
        if self.count % FAN_ROUND == 0 && self.count < FAN_EVENTS {
            report(format!("AT {}", self.count));
        }
        self.count == FAN_EVENTS
    }
}

/// A subscriber of the hub kind `HSIPC_KIND` (blocking, or with the async features tokio and
/// smol): the lanes of each kind are read differently (a thread, tokio's reactor, async-io's).
fn fan_subscriber() {
    let mut seen = FanCount { intact: true, ..FanCount::default() };
    let kind = std::env::var("HSIPC_KIND").unwrap_or_default();
    let name = env("HSIPC_NAME");
    match kind.as_str() {
        #[cfg(all(feature = "tokio", feature = "smol"))]
        "tokio" => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let hub = rt.block_on(async { hsipc::ProcessHub::builder(&name).build() }).unwrap();
            let mut events = rt.block_on(hub.subscribe::<bytes::Bytes>("fan/#")).unwrap();
            report("READY");
            rt.block_on(take_all(&mut events, &mut seen));
            fan_report(&seen);
            drop(events);
            rt.block_on(hub.close());
        }
        #[cfg(all(feature = "tokio", feature = "smol"))]
        "smol" => {
            let hub = hsipc::smol::ProcessHub::builder(&name).build().unwrap();
            let mut events = smol::block_on(hub.subscribe::<bytes::Bytes>("fan/#")).unwrap();
            report("READY");
            smol::block_on(take_all(&mut events, &mut seen));
            fan_report(&seen);
            drop(events);
            smol::block_on(hub.close());
        }
        _ => {
            let hub = ProcessHub::builder(&name).build().unwrap();
            let events = hub.subscribe::<bytes::Bytes>("fan/#").unwrap();
            report("READY");
            for event in events {
                if seen.take(event.unwrap()) {
                    break;
                }
            }
            fan_report(&seen);
            hub.close();
        }
    }
}

/// Takes an async subscription's events until all the large ones have come.
#[cfg(all(feature = "tokio", feature = "smol"))]
async fn take_all(
    events: &mut (impl futures_lite::Stream<Item = hsipc::Result<hsipc::Event<bytes::Bytes>>> + Unpin),
    seen: &mut FanCount,
) {
    use futures_lite::StreamExt;
    while let Some(event) = events.next().await {
        if seen.take(event.unwrap()) {
            break;
        }
    }
}

/// Reports what a fan-out subscriber took, then answers the parent until it says quit.
fn fan_report(seen: &FanCount) {
    let FanCount { count, missed, intact, fanned, .. } = seen;
    report(format!("GOT {count} missed={missed} intact={intact} fanned={fanned}"));
    while let Some(cmd) = command() {
        match cmd.as_str() {
            "fan_pool" => {
                report(format!("FAN_POOL {}", maps().iter().filter(|m| m.2.contains("hsipc-fan-pool")).count()))
            }
            _ => break,
        }
    }
}
