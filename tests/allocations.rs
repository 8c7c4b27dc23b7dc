//! What a call and an event cost in heap allocations: a counting allocator around 64 B calls
//! and events between two hubs (both sides in this process, over the real bus and its direct
//! lane).
//!
//! This pins today's cost so that it cannot grow unnoticed; the count is printed for the
//! performance notes. (Issue 8's goal is two allocations per call on each side.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hsipc::SyncProcessHub;

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

/// Allocations per 64 B call, both sides together, that this test lets pass: today's count
/// (4.0-4.1) with some room for noise (a heartbeat or an announce landing in the measured window).
///
/// Two on each side, issue 8's goal. The caller allocates the call's oneshot reply channel and
/// the `Bytes` it gets back (a small payload is copied out of the received frame so as not to
/// pin the lane reader's arena). The server allocates the handler's `CallContext` and the
/// request's `Bytes`; the job is queued to a worker by value. Frame heads come from an arena,
/// method names up to 23 bytes are held inline, and waiting allocates nothing.
const MOST_PER_CALL: f64 = 4.5;

#[test]
fn a_64_byte_call_costs_a_bounded_number_of_allocations() {
    let (_alone, server, client) = two_hubs("call", "server", "client");
    server.serve("bench.echo", |b: Bytes| Ok::<_, String>(b)).unwrap();
    client.wait_for_service("bench", Duration::from_secs(10)).unwrap();
    let payload = Bytes::from(vec![7u8; 64]);
    // Warm up: the lane is opened, tables and buffers reach their size.
    for _ in 0..200 {
        let _: Bytes = client.call("bench.echo", &payload).unwrap();
    }
    let calls = 2000u64;
    let per_call = allocations_per(calls, || {
        for _ in 0..calls {
            let back: Bytes = client.call("bench.echo", &payload).unwrap();
            assert_eq!(back.len(), 64);
        }
    });
    eprintln!("allocations per 64 B call, both sides together: {per_call:.1}");
    assert!(per_call <= MOST_PER_CALL, "a 64 B call now costs {per_call:.1} allocations");
    client.close();
    server.close();
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
