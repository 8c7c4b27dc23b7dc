//! Cross-process benches: hsipc and raw ipmb side by side, measured the same way.
//!
//! Run with `cargo bench --bench ipc`.
//!
//! - `roundtrip_64B/{raw_ipmb,blocking,tokio,smol}`: the bench process sends 64 bytes to an echo
//!   process and waits for them to come back. For each hub, both ends use that hub (the echo
//!   server serves with an async handler on tokio and smol, a worker thread on blocking).
//! - `publish_64B/{raw_ipmb,blocking,tokio,smol}`: the bench process publishes batches of
//!   [`BATCH`] 64-byte events to a subscriber process of the same kind; a batch counts once the
//!   subscriber has reported receiving all of it, so the time covers delivery, not only
//!   queueing.
//!
//! Topology, the same for both: a bystander process joins the bus first and so becomes ipmb's
//! bus controller; the echo server (or subscriber) joins next, and the bench process last. Both
//! ends of the measured traffic are therefore ipmb clients and every message passes through
//! the controller, the path hsipc's own tests take. Between two clients ipmb 0.8.5 drops
//! messages that carry no fd, so every raw message carries a duplicate of an eventfd, exactly as
//! hsipc's ipmb transport does.
//!
//! The child processes are this binary run again with `HSIPC_BENCH_ROLE` set. They report on
//! stdout (lines starting `@@`), exit when their stdin closes or their parent dies, and are
//! killed and reaped when their benchmark ends. Every child is spawned before the bench process
//! joins a bus (ipmb's fds are not close-on-exec), and the bench process marks its own fds
//! close-on-exec before each spawn as well.

#![allow(missing_docs)]

#[path = "support/child_proc.rs"]
mod child_proc;
#[path = "support/hub_client.rs"]
mod hub_client;
#[path = "support/raw_ipmb.rs"]
mod raw_ipmb;

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use child_proc::{Proc, ROLE_ENV, mark_all_cloexec};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use futures_lite::StreamExt;
use hsipc::SyncProcessHub;
use hub_client::Client;
use raw_ipmb::{new_eventfd, raw_join, raw_send};

/// The hubs measured.
const KINDS: [&str; 3] = ["blocking", "tokio", "smol"];

/// Payload size of every measured message.
const PAYLOAD: usize = 64;
/// Events per publish batch (one criterion iteration). Below hsipc's default subscription
/// queue (1024 events), so a batch that waits for its own delivery before the next one starts
/// never overflows it.
const BATCH: u64 = 1000;
/// How long any single wait in the parent may take before the bench gives up.
const WAIT: Duration = Duration::from_secs(20);

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child::run(&role);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    roundtrip(&mut c);
    publish(&mut c);
    c.final_summary();
}

/// A bus name no other run uses.
fn unique_bus(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("bench-{what}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

fn roundtrip(c: &mut Criterion) {
    let mut g = c.benchmark_group("roundtrip_64B");
    g.throughput(Throughput::Elements(1));

    let mut raw: Option<RawPair> = None;
    g.bench_function("raw_ipmb", |b| {
        let raw = raw.get_or_insert_with(|| RawPair::start("rt-raw", "raw_echo"));
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                raw.send("b", vec![0x5A; PAYLOAD]);
                let reply = raw.recv();
                assert_eq!(reply.len(), PAYLOAD, "raw echo returned a wrong payload");
                black_box(reply);
            }
            start.elapsed()
        })
    });
    drop(raw);

    let payload = Bytes::from(vec![0x5Au8; PAYLOAD]);
    for kind in KINDS {
        let mut hs: Option<HsipcPair> = None;
        g.bench_function(kind, |b| {
            let hs = hs.get_or_insert_with(|| {
                let pair = HsipcPair::start("rt-hs", "hsipc_echo", kind);
                pair.hub.wait_for_service("bench", WAIT).expect("the echo server is not seen on the bus");
                pair
            });
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let reply = hs.hub.echo(&payload);
                    assert_eq!(reply.len(), PAYLOAD, "hsipc echo returned a wrong payload");
                    black_box(reply);
                }
                start.elapsed()
            })
        });
        drop(hs);
    }
    g.finish();
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_64B");
    // One iteration is a whole batch (several ms): the same number of iterations per sample.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(BATCH));
    bench_batches(&mut g, "raw_ipmb", RawPub::start);
    for kind in KINDS {
        bench_batches(&mut g, kind, || HsipcPub(HsipcPair::start("pub-hs", "hsipc_sub", kind)));
    }
    g.finish();
}

/// What the subscriber reported over a whole benchmark.
#[derive(Default)]
struct Tally {
    batches: u64,
    received: u64,
    /// hsipc only: the sum of `Event::missed`.
    missed: u64,
}

/// A publisher in this process and a subscriber process that reports each batch's arrival.
trait Publisher {
    /// Publishes `n` events of `batch`; the last one is the batch's marker.
    fn publish(&mut self, batch: u64, n: u64);
    fn subscriber(&mut self) -> &mut Proc;
}

struct RawPub(RawPair);

impl RawPub {
    fn start() -> Self {
        RawPub(RawPair::start("pub-raw", "raw_sub"))
    }
}

impl Publisher for RawPub {
    fn publish(&mut self, batch: u64, n: u64) {
        for i in 1..=n {
            self.0.send("sub", event_bytes(batch, i == n).to_vec());
        }
    }
    fn subscriber(&mut self) -> &mut Proc {
        &mut self.0.peer
    }
}

struct HsipcPub(HsipcPair);

impl Publisher for HsipcPub {
    fn publish(&mut self, batch: u64, n: u64) {
        let normal = event_bytes(batch, false);
        for _ in 1..n {
            self.0.hub.publish(&normal);
        }
        self.0.hub.publish(&event_bytes(batch, true));
    }
    fn subscriber(&mut self) -> &mut Proc {
        &mut self.0.peer
    }
}

/// Publishes one batch per iteration and waits for the subscriber's report of that batch.
fn bench_batches<P: Publisher>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, start: impl Fn() -> P) {
    let mut state: Option<P> = None;
    let mut tally = Tally::default();
    let mut next_batch = 1u64;
    g.bench_function(name, |b| {
        let p = state.get_or_insert_with(|| {
            let mut p = start();
            // The publisher may not see the subscriber at once (hsipc learns of it from the
            // subscriber's announce): send one-event batches until one arrives. The subscriber
            // restarts its count at every marker, so a lost one does no harm.
            let mut ok = false;
            for _ in 0..100 {
                let batch = next_batch;
                next_batch += 1;
                p.publish(batch, 1);
                if await_batch(p.subscriber(), batch, Duration::from_millis(200)).is_some() {
                    ok = true;
                    break;
                }
            }
            assert!(ok, "{name}: the subscriber never received an event");
            p
        });
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let batch = next_batch;
                next_batch += 1;
                let start = Instant::now();
                p.publish(batch, BATCH);
                let got = await_batch(p.subscriber(), batch, WAIT);
                elapsed += start.elapsed();
                let (count, missed) = got.unwrap_or_else(|| panic!("{name}: batch {batch} never completed"));
                tally.batches += 1;
                tally.received += count;
                tally.missed += missed;
            }
            elapsed
        })
    });
    drop(state);
    let expected = tally.batches * BATCH;
    println!(
        "publish_64B/{name}: {} batches of {BATCH}: {} of {expected} events delivered \
         ({} dropped), {} reported missed by the subscriber",
        tally.batches,
        tally.received,
        expected.saturating_sub(tally.received),
        tally.missed
    );
}

/// Waits for the subscriber's report of `batch`: (events counted, events reported missed).
fn await_batch(sub: &mut Proc, batch: u64, timeout: Duration) -> Option<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let line = sub.line_until(deadline)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("GOT") {
            continue;
        }
        let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
        if let [b, count, missed] = nums[..] {
            if b == batch {
                return Some((count, missed));
            }
        }
    }
}

/// A 64-byte event of `batch`: byte 0 is 1 on the batch's last event, bytes 1..9 the batch.
fn event_bytes(batch: u64, last: bool) -> Bytes {
    let mut v = vec![0u8; PAYLOAD];
    v[0] = u8::from(last);
    v[1..9].copy_from_slice(&batch.to_le_bytes());
    Bytes::from(v)
}

/// Reads a marker event: `Some(batch)` if it is the last of its batch.
fn marker_of(data: &[u8]) -> Option<u64> {
    if data.len() >= 9 && data[0] == 1 { Some(u64::from_le_bytes(data[1..9].try_into().ok()?)) } else { None }
}

// ---------------------------------------------------------------------------------------------
// Fixtures in the bench process

/// Raw ipmb: bystander (controller) + one peer process, and this process joined as `"a"`.
/// Fields drop in order: our endpoint first, then the peer, then the bystander.
struct RawPair {
    tx: ipmb::EndpointSender<ipmb::BytesMessage>,
    rx: ipmb::EndpointReceiver<ipmb::BytesMessage>,
    carrier: OwnedFd,
    peer: Proc,
    _bystander: Proc,
}

impl RawPair {
    fn start(what: &str, role: &str) -> RawPair {
        let bus = unique_bus(what);
        let bystander = Proc::ready("raw_bystander", &bus);
        let peer = Proc::ready(role, &bus);
        let (tx, rx) = raw_join(&bus, "a");
        RawPair { tx, rx, carrier: new_eventfd(), peer, _bystander: bystander }
    }

    fn send(&mut self, to: &str, data: Vec<u8>) {
        raw_send(&self.tx, &self.carrier, to, data);
    }

    fn recv(&mut self) -> Vec<u8> {
        match self.rx.recv(Some(WAIT)) {
            Ok(msg) => msg.payload.data,
            Err(e) => panic!("raw recv: {e}"),
        }
    }
}

/// hsipc: bystander hub (controller) + one peer process of hub kind `kind`, and this process's
/// hub `"bench"` of the same kind.
struct HsipcPair {
    hub: Client,
    peer: Proc,
    _bystander: Proc,
}

impl HsipcPair {
    fn start(what: &str, role: &str, kind: &str) -> HsipcPair {
        let bus = unique_bus(what);
        let bystander = Proc::ready_as("hsipc_bystander", &bus, "blocking");
        let peer = Proc::ready_as(role, &bus, kind);
        mark_all_cloexec();
        HsipcPair { hub: Client::join(kind, &bus, None), peer, _bystander: bystander }
    }
}

impl Proc {
    /// Spawns `role` on `bus` and waits for its `READY` report.
    fn ready(role: &str, bus: &str) -> Proc {
        Self::ready_as(role, bus, "blocking")
    }

    /// Spawns `role` on `bus` using hub kind `kind`, and waits for its `READY` report.
    fn ready_as(role: &str, bus: &str, kind: &str) -> Proc {
        let exe = std::env::current_exe().expect("bench binary path");
        let mut p = Proc::start(Command::new(exe), role, bus, kind, None, None);
        p.wait_ready(WAIT);
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Children

mod child {
    use super::child_proc::{bus, kind, report, watch_parent};
    use super::*;

    pub(super) fn run(role: &str) {
        watch_parent();
        match role {
            "raw_bystander" => raw_bystander(),
            "raw_echo" => raw_echo(),
            "raw_sub" => raw_sub(),
            "hsipc_bystander" => hsipc_bystander(),
            "hsipc_echo" => hsipc_echo(),
            "hsipc_sub" => hsipc_sub(),
            other => panic!("unknown bench role {other}"),
        }
    }

    fn raw_bystander() {
        let (_tx, mut rx) = raw_join(&bus(), "bystander");
        report("READY");
        loop {
            let _ = rx.recv(None);
        }
    }

    fn raw_echo() {
        let (tx, mut rx) = raw_join(&bus(), "b");
        let carrier = new_eventfd();
        report("READY");
        loop {
            match rx.recv(None) {
                Ok(msg) => raw_send(&tx, &carrier, "a", msg.payload.data),
                Err(e) => eprintln!("raw_echo: recv: {e}"),
            }
        }
    }

    fn raw_sub() {
        let (_tx, mut rx) = raw_join(&bus(), "sub");
        report("READY");
        let mut count = 0u64;
        loop {
            match rx.recv(None) {
                Ok(msg) => {
                    count += 1;
                    if let Some(batch) = marker_of(&msg.payload.data) {
                        report(&format!("GOT {batch} {count} 0"));
                        count = 0;
                    }
                }
                Err(e) => eprintln!("raw_sub: recv: {e}"),
            }
        }
    }

    fn hub(name: &str) -> SyncProcessHub {
        SyncProcessHub::builder(name).bus(bus()).build().unwrap_or_else(|e| panic!("{name} hub joins: {e}"))
    }

    fn park() -> ! {
        loop {
            std::thread::park();
        }
    }

    fn hsipc_bystander() {
        let _hub = hub("bystander");
        report("READY");
        park();
    }

    fn hsipc_echo() {
        match kind().as_str() {
            "blocking" => {
                let hub = hub("server");
                hub.serve("bench.echo", |b: Bytes| Ok::<Bytes, String>(b)).expect("serve bench.echo");
                report("READY");
                park();
            }
            "tokio" => tokio::runtime::Runtime::new().expect("tokio runtime").block_on(async {
                let hub = hsipc::tokio::ProcessHub::builder("server").bus(bus()).build().expect("server hub joins");
                hub.serve("bench.echo", |b: Bytes| async move { Ok::<Bytes, String>(b) }).await.expect("serve");
                report("READY");
                std::future::pending::<()>().await;
            }),
            _ => smol::block_on(async {
                let hub = hsipc::smol::ProcessHub::builder("server").bus(bus()).build().expect("server hub joins");
                hub.serve("bench.echo", |b: Bytes| async move { Ok::<Bytes, String>(b) }).await.expect("serve");
                report("READY");
                std::future::pending::<()>().await;
            }),
        }
    }

    /// Counts events and reports each batch's marker.
    #[derive(Default)]
    struct Counter {
        count: u64,
        missed: u64,
    }

    impl Counter {
        fn take(&mut self, event: hsipc::Result<hsipc::Event<Bytes>>) {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("hsipc_sub: {e}");
                    return;
                }
            };
            self.count += 1;
            self.missed += event.missed;
            if let Some(batch) = marker_of(&event.payload) {
                report(&format!("GOT {batch} {} {}", self.count, self.missed));
                *self = Counter::default();
            }
        }
    }

    fn hsipc_sub() {
        let mut counter = Counter::default();
        match kind().as_str() {
            "blocking" => {
                let hub = hub("sub");
                let events = hub.subscribe::<Bytes>("bench/#").expect("subscribe");
                report("READY");
                events.for_each(|e| counter.take(e));
            }
            "tokio" => tokio::runtime::Runtime::new().expect("tokio runtime").block_on(async {
                let hub = hsipc::tokio::ProcessHub::builder("sub").bus(bus()).build().expect("sub hub joins");
                let mut events = hub.subscribe::<Bytes>("bench/#").await.expect("subscribe");
                report("READY");
                while let Some(e) = events.next().await {
                    counter.take(e);
                }
            }),
            _ => smol::block_on(async {
                let hub = hsipc::smol::ProcessHub::builder("sub").bus(bus()).build().expect("sub hub joins");
                let mut events = hub.subscribe::<Bytes>("bench/#").await.expect("subscribe");
                report("READY");
                while let Some(e) = events.next().await {
                    counter.take(e);
                }
            }),
        }
    }
}
