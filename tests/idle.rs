//! An idle hub costs nothing beyond its heartbeat: with the heartbeat set far apart, two idle
//! hubs of each kind (on one real ipmb bus, a direct lane open between them) let their threads
//! sleep. Proven by counting the times this process's threads went to sleep (voluntary context
//! switches, from `/proc/self/task/*/status`) while the hubs sat idle: each one is a wake-up.
//! A reader polling the bus every 100 ms (as the ipmb reader did before) makes ten a second per
//! hub; the limit here allows under three.
//!
//! The window is measured, not assumed: the allowance scales with the wall time that actually
//! passed, so a slow machine cannot fail the test by sleeping long.

#![cfg(all(feature = "blocking", feature = "tokio", feature = "smol"))]

mod common;

use std::time::{Duration, Instant};

use common::{QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT};

/// How long the hubs are watched.
const WINDOW: Duration = Duration::from_secs(3);
/// Wake-ups allowed per second of the window, per hub (the bus reader's fallback wait for a
/// goodbye that cannot come is one a second), and a few for the odd timer of a runtime.
const WAKES_PER_SECOND_PER_HUB: f64 = 2.5;
const SLACK: u64 = 6;

/// Held by each test for its whole run: the threads counted are the process's, and `cargo test`
/// runs the tests of a file on threads of one process (nextest runs each in its own).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The id of the calling thread.
fn own_tid() -> String {
    // SAFETY: gettid takes no arguments and cannot fail.
    (unsafe { libc::syscall(libc::SYS_gettid) }).to_string()
}

/// Voluntary context switches of every thread of this process but the caller, by thread.
fn sleeps() -> Vec<(String, String, u64)> {
    let me = own_tid();
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = entry.expect("task entry").path();
        let tid = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if tid == me {
            continue;
        }
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        all.push((tid, comm, n));
    }
    all
}

/// Watches the process for [`WINDOW`] and checks that its threads woke no more than two idle
/// hubs may.
fn assert_idle(kind: &str) {
    let (before, start) = (sleeps(), Instant::now());
    std::thread::sleep(WINDOW);
    let (after, elapsed) = (sleeps(), start.elapsed());
    let mut woke = Vec::new();
    let mut total = 0;
    for (tid, comm, n) in &after {
        let was = before.iter().find(|(t, ..)| t == tid).map_or(0, |(.., n)| *n);
        if n > &was {
            total += n - was;
            woke.push(format!("{comm} ({tid}): {}", n - was));
        }
    }
    let allowed = (2.0 * WAKES_PER_SECOND_PER_HUB * elapsed.as_secs_f64()) as u64 + SLACK;
    assert!(total <= allowed, "two idle {kind} hubs woke {total} times in {elapsed:?} (allowed {allowed}): {woke:?}");
}

#[test]
fn two_idle_blocking_hubs_sleep() {
    let _alone = alone();
    let bus = common::unique_bus("idle-blocking");
    let build = |name: &str| {
        hsipc::blocking::ProcessHub::builder(name)
            .bus(&bus)
            .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
            .build()
            .expect("hub")
    };
    let (a, b) = (build("idle-a"), build("idle-b"));
    b.serve("idle.ping", |()| Ok::<_, String>(())).expect("serve");
    a.wait_for_service("idle", Duration::from_secs(10)).expect("service");
    a.call::<_, ()>("idle.ping", &()).expect("call"); // opens the lanes
    assert_idle("blocking");
    a.close();
    b.close();
}

#[test]
fn two_idle_tokio_hubs_sleep() {
    let _alone = alone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let bus = common::unique_bus("idle-tokio");
    let (a, b) = rt.block_on(async {
        let build = |name: &str| {
            hsipc::ProcessHub::builder(name)
                .bus(&bus)
                .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                .build()
                .expect("hub")
        };
        let (a, b) = (build("idle-a"), build("idle-b"));
        b.serve("idle.ping", |()| async { Ok::<_, String>(()) }).await.expect("serve");
        a.wait_for_service("idle", Duration::from_secs(10)).await.expect("service");
        a.call::<_, ()>("idle.ping", &()).await.expect("call");
        (a, b)
    });
    assert_idle("tokio");
    rt.block_on(async {
        a.close().await;
        b.close().await;
    });
}

#[test]
fn two_idle_smol_hubs_sleep() {
    let _alone = alone();
    let bus = common::unique_bus("idle-smol");
    let (a, b) = smol::block_on(async {
        let build = |name: &str| {
            hsipc::smol::ProcessHub::builder(name)
                .bus(&bus)
                .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
                .build()
                .expect("hub")
        };
        let (a, b) = (build("idle-a"), build("idle-b"));
        b.serve("idle.ping", |()| async { Ok::<_, String>(()) }).await.expect("serve");
        a.wait_for_service("idle", Duration::from_secs(10)).await.expect("service");
        a.call::<_, ()>("idle.ping", &()).await.expect("call");
        (a, b)
    });
    assert_idle("smol");
    smol::block_on(async {
        a.close().await;
        b.close().await;
    });
}

/// A hub's close does not wait out its bus reader's one-second fallback: its goodbye comes back
/// to its reader, which then looks for the close's stop often. So `close` returns well before
/// that second, the hub has left the bus and its name is free, even on a bus where nothing else
/// would wake the reader (no peer, heartbeats far apart).
#[test]
fn a_closed_hub_has_left_its_quiet_bus_when_close_returns() {
    let _alone = alone();
    let bus = common::unique_bus("idle-close");
    for round in 0..10 {
        let hub = hsipc::blocking::ProcessHub::builder("alone")
            .bus(&bus)
            .heartbeat(QUIET_HEARTBEAT, QUIET_PEER_TIMEOUT)
            .build()
            .unwrap_or_else(|e| panic!("round {round}: the name was still taken: {e}"));
        let start = Instant::now();
        hub.close();
        let took = start.elapsed();
        eprintln!("round {round}: close took {took:?}");
        // Well before the reader's fallback (1 s), which a close used to wait out about one
        // time in ten when its reader took the goodbye before the stop flag was set.
        assert!(took < Duration::from_millis(500), "round {round}: close took {took:?}");
    }
}
