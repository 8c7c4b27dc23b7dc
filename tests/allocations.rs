//! What a call and an event cost in heap allocations: a counting allocator around 64 B calls
//! and events between two hubs over the real bus and their direct lane. A call's client and
//! server run in processes of their own (this binary, re-run as a child), so that each side's
//! count is its own; the event's two sides share this process.
//!
//! This pins issue 8's goal of two allocations per call on each side where a hub meets it (the
//! blocking and tokio hubs), and today's cost where it does not (smol, whose reactor allocates),
//! so that neither can grow unnoticed; the counts are printed for the performance notes.

#![cfg(all(feature = "blocking", feature = "tokio", feature = "smol"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Peer, QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT};
use hsipc::SyncProcessHub;

/// The bound on every wait for a child.
const LONG: Duration = Duration::from_secs(60);

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Held by each test for its whole run: the counter is the process's, and `cargo test` runs
/// the tests of a file on threads of one process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Two blocking hubs named `a` and `b` on a bus of this test's own, and this test's turn to
/// count (held while the guard lives).
fn two_hubs(tag: &str, a: &str, b: &str) -> (std::sync::MutexGuard<'static, ()>, SyncProcessHub, SyncProcessHub) {
    let alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bus = format!("t-alloc-{tag}-{}", std::process::id());
    let a = SyncProcessHub::builder(a).bus(&bus).build().unwrap();
    let b = SyncProcessHub::builder(b).bus(&bus).build().unwrap();
    (alone, a, b)
}

/// The allocations `n` operations made, per operation, all of them made by `run`.
fn allocations_per(n: u64, run: impl FnOnce()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run();
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// Allocations per 64 B call that this test lets pass, caller and server, for each kind of
/// server: issue 8's goal of two on each side where the hub meets it, with room for a busy
/// machine (2.01-2.02 and 1.02 on a quiet one; up to 2.08 and 1.05 under `cargo test`, which
/// runs these five at once, beside two busy loops: a few calls in a hundred then allocate once
/// more, not found yet), one heartbeat in the counted calls and, in the server, the test's own
/// two reports; today's counts where it does not (smol).
///
/// The caller allocates the call's oneshot reply channel and the `Bytes` it gets back (a small
/// payload is copied out of the received frame so as not to pin the lane reader's arena). The
/// server allocates the request's `Bytes`; the handler's context is one an earlier call left
/// (the engine keeps those nobody holds any more); a blocking job is queued to a worker by value,
/// an inline handler runs where the request was read. An async handler's task costs one more:
/// the runtime's task, which holds the handler's future (spawned with its own type, not
/// boxed). Frame heads come from an arena, method names up to
/// 23 bytes are held inline, and waiting allocates nothing. On smol, async-io's reactor
/// allocates a list of the wakers it calls on each turn that wakes anything (about one a call on
/// each side; not hsipc's, and its count varies with how the turns fall).
fn most_per_call(kind: &str) -> (f64, f64) {
    match kind {
        "blocking" | "tokio+inline" => (2.15, 1.15),
        "tokio" => (2.15, 2.15),
        "smol" => (3.75, 3.75),
        "smol+inline" => (3.75, 3.0),
        other => panic!("no bound for {other}"),
    }
}

/// How many calls are counted.
const CALLS: u64 = 2000;

/// Runs a 64 B echo server of `kind` in this child process and reports its allocation count
/// whenever the parent asks.
fn echo_server(kind: &str) {
    let bus = common::env("HSIPC_BUS");
    let counted = || {
        while let Some(line) = common::command() {
            match line.as_str() {
                "count" => common::report(format!("COUNT {}", ALLOCATIONS.load(Ordering::Relaxed))),
                _ => return,
            }
        }
    };
    match kind {
        "blocking" => {
            let hub = SyncProcessHub::builder("server")
                .bus(&bus)
                .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                .build()
                .unwrap();
            hub.serve("bench.echo", |b: Bytes| Ok::<_, String>(b)).unwrap();
            common::report("READY");
            counted();
            hub.close();
        }
        "tokio" | "tokio+inline" => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let hub = rt.block_on(async {
                let hub = hsipc::ProcessHub::builder("server")
                    .bus(&bus)
                    .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                    .build()
                    .unwrap();
                serve_echo(&hub, kind.ends_with("+inline")).await;
                hub
            });
            common::report("READY");
            counted();
            rt.block_on(hub.close());
        }
        "smol" | "smol+inline" => {
            let hub = smol::block_on(async {
                let hub = hsipc::smol::ProcessHub::builder("server")
                    .bus(&bus)
                    .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                    .build()
                    .unwrap();
                serve_echo(&hub, kind.ends_with("+inline")).await;
                hub
            });
            common::report("READY");
            counted();
            smol::block_on(hub.close());
        }
        other => panic!("unknown hub kind {other}"),
    }
}

/// Serves the 64 B echo on an async hub of either runtime: in a task per call, or `inline`.
async fn serve_echo<K: hsipc::transport::hub::RuntimeKind>(hub: &hsipc::transport::hub::AsyncHub<K>, inline: bool) {
    if inline {
        hub.serve_inline("bench.echo", |b: Bytes| Ok::<_, String>(b)).await.unwrap();
    } else {
        hub.serve("bench.echo", |b: Bytes| async move { Ok::<_, String>(b) }).await.unwrap();
    }
}

/// Calls the echo server from a client of `kind` in this child process: warms up, waits for
/// the parent's `go`, makes [`CALLS`] calls and reports its own allocations per call.
fn echo_client(kind: &str) {
    let bus = common::env("HSIPC_BUS");
    let payload = Bytes::from(vec![7u8; 64]);
    let go = || {
        common::report("WARM");
        assert_eq!(common::command().as_deref(), Some("go"));
        ALLOCATIONS.load(Ordering::Relaxed)
    };
    let done = |before: u64| {
        let per_call = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / CALLS as f64;
        common::report(format!("PER_CALL {per_call}"));
    };
    match kind {
        "blocking" => {
            let hub = SyncProcessHub::builder("client")
                .bus(&bus)
                .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                .build()
                .unwrap();
            hub.wait_for_service("bench", Duration::from_secs(10)).unwrap();
            let call = || {
                let back: Bytes = hub.call("bench.echo", &payload).unwrap();
                assert_eq!(back.len(), 64);
            };
            (0..200).for_each(|_| call()); // the lane is opened, tables and buffers reach their size
            let before = go();
            (0..CALLS).for_each(|_| call());
            done(before);
            hub.close();
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let hub = hsipc::ProcessHub::builder("client")
                    .bus(&bus)
                    .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                    .build()
                    .unwrap();
                async_calls(&hub, &payload, go, done).await;
                hub.close().await;
            });
        }
        "smol" => smol::block_on(async {
            let hub = hsipc::smol::ProcessHub::builder("client")
                .bus(&bus)
                .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                .build()
                .unwrap();
            async_calls(&hub, &payload, go, done).await;
            hub.close().await;
        }),
        other => panic!("unknown hub kind {other}"),
    }
}

/// An async client's calls, on either runtime: warm-up, then [`CALLS`] counted ones between
/// `go` and `done`.
async fn async_calls<K: hsipc::transport::hub::RuntimeKind>(
    hub: &hsipc::transport::hub::AsyncHub<K>,
    payload: &Bytes,
    go: impl Fn() -> u64,
    done: impl Fn(u64),
) {
    hub.wait_for_service("bench", Duration::from_secs(10)).await.unwrap();
    for _ in 0..200 {
        let _: Bytes = hub.call("bench.echo", payload).await.unwrap();
    }
    let before = go();
    for _ in 0..CALLS {
        let back: Bytes = hub.call("bench.echo", payload).await.unwrap();
        assert_eq!(back.len(), 64);
    }
    done(before);
}

/// Entry point of child processes; does nothing in the parent.
#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    common::watch_parent(Duration::from_secs(120));
    match role.split_once(':') {
        Some(("server", kind)) => echo_server(kind),
        Some(("client", kind)) => echo_client(kind),
        _ => panic!("unknown role {role}"),
    }
}

/// A 64 B call between a client and a server of `kind`, each in a process of its own: the
/// allocations each side makes per call.
fn per_side(kind: &str) {
    let bus = common::unique_bus(&format!("alloc-{}", kind.replace('+', "-")));
    let mut server = Peer::ready(&format!("server:{kind}"), &bus, "server", &[]);
    let client_kind = kind.split('+').next().unwrap_or(kind);
    let mut client = Peer::spawn(&format!("client:{client_kind}"), &bus, "client", &[]);
    client.expect("WARM", LONG);
    let count = |server: &mut Peer| -> u64 {
        server.send("count");
        server.expect("COUNT ", LONG).parse().unwrap()
    };
    let before = count(&mut server);
    client.send("go");
    let caller: f64 = client.expect("PER_CALL ", LONG).parse().unwrap();
    let served = (count(&mut server) - before) as f64 / CALLS as f64;
    eprintln!("{kind}: allocations per 64 B call, caller {caller:.2}, server {served:.2}");
    let (most_caller, most_served) = most_per_call(kind);
    assert!(caller <= most_caller, "a {kind} caller now allocates {caller:.2} times a call");
    assert!(served <= most_served, "a {kind} server now allocates {served:.2} times a call");
}

#[test]
fn allocations_per_64_byte_call_on_each_side_blocking() {
    per_side("blocking");
}

#[test]
fn allocations_per_64_byte_call_on_each_side_tokio() {
    per_side("tokio");
}

#[test]
fn allocations_per_64_byte_call_on_each_side_smol() {
    per_side("smol");
}

#[test]
fn allocations_per_64_byte_call_on_each_side_tokio_inline() {
    per_side("tokio+inline");
}

#[test]
fn allocations_per_64_byte_call_on_each_side_smol_inline() {
    per_side("smol+inline");
}

/// Allocations per 64 B event, publisher and subscriber together, that this test lets pass:
/// today's count (2.06-2.08) with some room for noise.
///
/// The publisher allocates nothing per event (the frame head comes from an arena, the body is
/// the application's `Bytes`, shared). The subscriber allocates the event's topic `String` and
/// its payload's `Bytes` (copied out of the lane reader's arena, as a call's is); the local
/// subscriptions an event matches are held inline, and the subscription's queue is preallocated.
const MOST_PER_EVENT: f64 = 2.5;

#[test]
fn a_64_byte_event_costs_a_bounded_number_of_allocations() {
    let (_alone, publisher, subscriber) = two_hubs("ev", "publisher", "subscriber");
    let events = subscriber.subscribe::<Bytes>("ev/#").unwrap();
    publisher.wait_for_subscriber("ev/x", Duration::from_secs(10)).unwrap();
    let payload = Bytes::from(vec![7u8; 64]);
    // Publishes `n` events from a thread while this one reads them (a reliable subscriber that
    // stopped reading would hold the publisher back, and be cut off at its timeout).
    let run = |n: u64| {
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..n {
                    publisher.publish("ev/x", &payload).unwrap();
                }
            });
            for i in 0..n {
                let ev = events.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|e| panic!("event {i}: {e}"));
                assert_eq!(ev.payload.len(), 64);
            }
        })
    };
    // Warm up: the lane and its ring are opened, tables and queues reach their size.
    run(2000);
    let n = 20_000u64;
    let per_event = allocations_per(n, || run(n));
    eprintln!("allocations per 64 B event, both sides together: {per_event:.2}");
    assert!(per_event <= MOST_PER_EVENT, "a 64 B event now costs {per_event:.2} allocations");
    drop(events);
    publisher.close();
    subscriber.close();
}
