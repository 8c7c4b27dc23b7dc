//! `#[hsipc::service]` end to end: one trait, served on every hub, called through the async and
//! the blocking client, with async and plain methods, typed application errors, streams,
//! timeouts, several implementations side by side, and cancellation.
//!
//! Hubs talk over the in-memory transport here (`tests/runtimes.rs` and the examples' tests
//! cross real processes); every test ends with a leak check on both hubs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hsipc::transport::MemBus;
use hsipc::{ClientError, Error, StreamSink};
use serde::{Deserialize, Serialize};

/// The service's own error: travels typed.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CalcError {
    DivisionByZero,
    TooLarge { limit: u32 },
}

/// A calculator: async and plain methods, zero to three arguments, typed errors and hsipc's
/// own, a renamed method, and streams of both kinds.
#[hsipc::service(name = "calc")]
pub trait Calculator {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    /// Divides, refusing zero: a plain method.
    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    /// No argument at all.
    async fn name(&self) -> hsipc::Result<String>;
    /// Three arguments, plain, hsipc's error type.
    fn clamp(&self, v: i64, lo: i64, hi: i64) -> hsipc::Result<i64>;
    /// Served as `calc.mul`.
    #[hsipc(name = "mul")]
    async fn multiply(&self, a: i64, b: i64) -> hsipc::Result<i64>;
    /// Served inline, on the thread that reads the request.
    #[hsipc(inline)]
    fn negate(&self, v: i64) -> Result<i64, CalcError>;
    /// Waits until its call is cancelled (by the caller's timeout or drop); counts the drops.
    async fn hang(&self) -> hsipc::Result<()>;
    /// `n` items, then ends; over `limit` it fails after `limit` items, with a typed error.
    #[hsipc(stream)]
    async fn count(&self, n: u32, limit: u32, sink: StreamSink<u32>) -> Result<(), CalcError>;
    /// The same from a plain method.
    #[hsipc(stream)]
    fn count_plain(&self, n: u32, sink: StreamSink<u32>) -> hsipc::Result<()>;
}

struct Basic {
    label: &'static str,
    hang_started: Arc<AtomicU32>,
    hang_dropped: Arc<AtomicU32>,
    sent_before_cancel: Arc<AtomicU32>,
}

impl Basic {
    fn new(label: &'static str) -> Self {
        Basic { label, hang_started: Arc::default(), hang_dropped: Arc::default(), sent_before_cancel: Arc::default() }
    }
}

struct CountOnDrop(Arc<AtomicU32>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Calculator for Basic {
    async fn add(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        Ok(a + b)
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        if b == 0 { Err(CalcError::DivisionByZero) } else { Ok(a / b) }
    }

    async fn name(&self) -> hsipc::Result<String> {
        Ok(self.label.to_string())
    }

    fn clamp(&self, v: i64, lo: i64, hi: i64) -> hsipc::Result<i64> {
        Ok(v.clamp(lo, hi))
    }

    async fn multiply(&self, a: i64, b: i64) -> hsipc::Result<i64> {
        Ok(a * b)
    }

    fn negate(&self, v: i64) -> Result<i64, CalcError> {
        if v == i64::MIN { Err(CalcError::DivisionByZero) } else { Ok(-v) }
    }

    async fn hang(&self) -> hsipc::Result<()> {
        self.hang_started.fetch_add(1, Ordering::SeqCst);
        let _guard = CountOnDrop(self.hang_dropped.clone());
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn count(&self, n: u32, limit: u32, sink: StreamSink<u32>) -> Result<(), CalcError> {
        for i in 0..n {
            if i == limit {
                return Err(CalcError::TooLarge { limit });
            }
            if sink.send(&i).await.is_err() {
                self.sent_before_cancel.store(i, Ordering::SeqCst);
                return Ok(()); // the caller is gone
            }
        }
        Ok(())
    }

    fn count_plain(&self, n: u32, sink: StreamSink<u32>) -> hsipc::Result<()> {
        for i in 0..n {
            sink.send_blocking(&i)?;
        }
        Ok(())
    }
}

/// A second implementation of the same trait, served beside the first under another name.
struct Doubling;

impl Calculator for Doubling {
    async fn add(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        Ok(2 * (a + b))
    }
    fn div(&self, _: i64, _: i64) -> Result<i64, CalcError> {
        Err(CalcError::TooLarge { limit: 0 })
    }
    async fn name(&self) -> hsipc::Result<String> {
        Ok("doubling".into())
    }
    fn clamp(&self, v: i64, _: i64, _: i64) -> hsipc::Result<i64> {
        Ok(v)
    }
    async fn multiply(&self, a: i64, b: i64) -> hsipc::Result<i64> {
        Ok(2 * a * b)
    }
    fn negate(&self, v: i64) -> Result<i64, CalcError> {
        Ok(-2 * v)
    }
    async fn hang(&self) -> hsipc::Result<()> {
        Ok(())
    }
    async fn count(&self, _: u32, _: u32, _: StreamSink<u32>) -> Result<(), CalcError> {
        Ok(())
    }
    fn count_plain(&self, _: u32, _: StreamSink<u32>) -> hsipc::Result<()> {
        Ok(())
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// Polls until both hubs have nothing open (calls, streams, served calls, timers).
fn assert_idle(census: impl Fn() -> (hsipc::Census, hsipc::Census)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = census();
        if a.is_idle() && b.is_idle() {
            return;
        }
        assert!(Instant::now() < deadline, "still open: {a:?} {b:?}");
        std::thread::yield_now();
    }
}

/// What the tests watch on the server side.
#[derive(Clone)]
struct Probes {
    hang_started: Arc<AtomicU32>,
    hang_dropped: Arc<AtomicU32>,
    sent_before_cancel: Arc<AtomicU32>,
}

/// Serves `Basic` as `calc` and `Doubling` as `calc2` on `server`; returns the probes.
fn services() -> (CalculatorService<Basic>, CalculatorService<Doubling>, Probes) {
    let basic = Basic::new("basic");
    let probes = Probes {
        hang_started: basic.hang_started.clone(),
        hang_dropped: basic.hang_dropped.clone(),
        sent_before_cancel: basic.sent_before_cancel.clone(),
    };
    (CalculatorService::new(basic), CalculatorService::with_name(Doubling, "calc2"), probes)
}

/// Everything a client can do, through the async client (on any hub).
async fn exercise_async<H: hsipc::__private::HasCore>(hub: H, probes: &Probes) {
    let client = CalculatorClient::new(hub.clone());
    let other = CalculatorClient::with_name(hub.clone(), "calc2");
    // A service becomes visible once its announce has reached the caller.
    let core = hub.core();
    core.watch_service("calc", WAIT).unwrap().await.unwrap();
    core.watch_service("calc2", WAIT).unwrap().await.unwrap();
    assert_eq!(client.service_name(), "calc");
    assert_eq!(client.add(2, 3).await.unwrap(), 5);
    assert_eq!(client.div(7, 2).await.unwrap(), 3);
    assert!(matches!(client.div(1, 0).await, Err(ClientError::Service(CalcError::DivisionByZero))));
    assert_eq!(client.name().await.unwrap(), "basic");
    assert_eq!(client.clamp(15, 0, 10).await.unwrap(), 10);
    assert_eq!(client.multiply(6, 7).await.unwrap(), 42);
    assert_eq!(client.negate(5).await.unwrap(), -5);
    assert!(matches!(client.negate(i64::MIN).await, Err(ClientError::Service(CalcError::DivisionByZero))));
    // Two implementations of one trait, side by side.
    assert_eq!(other.add(2, 3).await.unwrap(), 10);
    assert_eq!(other.name().await.unwrap(), "doubling");
    // A per-call timeout overrides the client's; the server's handler, if it had started,
    // is dropped.
    let all_dropped = || probes.hang_dropped.load(Ordering::SeqCst) == probes.hang_started.load(Ordering::SeqCst);
    assert!(matches!(client.timeout(Duration::from_millis(50)).hang().await, Err(Error::Timeout)));
    wait_until_async(all_dropped).await;
    // A per-client timeout too.
    let impatient = client.clone().with_timeout(Duration::from_millis(50));
    assert!(matches!(impatient.hang().await, Err(Error::Timeout)));
    wait_until_async(all_dropped).await;
    // Dropping a call future cancels the handler: once it has started, drop the call.
    let before = probes.hang_started.load(Ordering::SeqCst);
    let call = client.hang();
    wait_until_async(|| probes.hang_started.load(Ordering::SeqCst) > before).await;
    drop(call);
    wait_until_async(all_dropped).await;
    // Streams: all items; a typed error after `limit` items; plain-method streams.
    let items: Vec<u32> = client.count(100, 1000).unwrap().map(|r| r.unwrap()).collect().await;
    assert_eq!(items, (0..100).collect::<Vec<_>>());
    let mut failing = client.count(10, 3).unwrap();
    let mut got = Vec::new();
    while let Some(item) = failing.next().await {
        got.push(item);
    }
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[..3].iter().all(Result::is_ok));
    assert!(matches!(got[3], Err(ClientError::Service(CalcError::TooLarge { limit: 3 }))));
    let plain: Vec<u32> = client.count_plain(50).unwrap().map(|r| r.unwrap()).collect().await;
    assert_eq!(plain.len(), 50);
    // Dropping a stream early makes the server's next send fail.
    let mut early = client.count(1_000_000, u32::MAX).unwrap();
    assert_eq!(early.next().await.unwrap().unwrap(), 0);
    drop(early);
    wait_until_async(|| probes.sent_before_cancel.load(Ordering::SeqCst) > 0).await;
    // A service nobody serves: hsipc's own error, typed apart from the service's.
    let missing = CalculatorClient::with_name(hub, "nobody");
    assert!(matches!(missing.add(1, 1).await, Err(ClientError::Hsipc(Error::NoSuchService { .. }))));
}

/// The same through the blocking client.
fn exercise_blocking<H: hsipc::__private::HasCore>(hub: H) {
    hub.core().watch_service("calc", WAIT).unwrap().wait().unwrap();
    hub.core().watch_service("calc2", WAIT).unwrap().wait().unwrap();
    let client = CalculatorBlockingClient::new(hub.clone());
    let other = CalculatorBlockingClient::with_name(hub, "calc2");
    assert_eq!(client.add(2, 3).unwrap(), 5);
    assert_eq!(client.div(7, 2).unwrap(), 3);
    assert!(matches!(client.div(1, 0), Err(ClientError::Service(CalcError::DivisionByZero))));
    assert_eq!(client.name().unwrap(), "basic");
    assert_eq!(client.clamp(-5, 0, 10).unwrap(), 0);
    assert_eq!(client.multiply(6, 7).unwrap(), 42);
    assert_eq!(client.negate(5).unwrap(), -5);
    assert_eq!(other.add(2, 3).unwrap(), 10);
    assert!(matches!(other.div(1, 1), Err(ClientError::Service(CalcError::TooLarge { limit: 0 }))));
    assert!(matches!(client.timeout(Duration::from_millis(50)).hang(), Err(Error::Timeout)));
    let items: Vec<u32> = client.count(100, 1000).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(items, (0..100).collect::<Vec<_>>());
    let got: Vec<_> = client.count(10, 3).unwrap().collect();
    assert_eq!(got.len(), 4);
    assert!(matches!(got.last(), Some(Err(ClientError::Service(CalcError::TooLarge { limit: 3 })))));
    assert_eq!(client.count_plain(50).unwrap().count(), 50);
}

/// Waits for `cond` from async code, letting the runtime run meanwhile (on a current-thread
/// runtime the server's handlers run on this very thread).
#[track_caller]
fn wait_until_async(cond: impl Fn() -> bool) -> impl std::future::Future<Output = ()> {
    let at = std::panic::Location::caller();
    async move { wait_for(cond, at).await }
}

async fn wait_for(cond: impl Fn() -> bool, at: &std::panic::Location<'_>) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition at {at} not met well before the deadline");
        futures_lite::future::yield_now().await;
    }
}

#[test]
fn on_the_tokio_hub_both_clients_reach_async_and_plain_methods() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = MemBus::new();
        let server = hsipc::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let caller = hsipc::ProcessHub::builder("caller").transport(bus.connector()).build().unwrap();
        let (basic, doubling, probes) = services();
        server.register_service(basic).await.unwrap();
        server.register_service(doubling).await.unwrap();
        exercise_async(caller.clone(), &probes).await;
        let blocking_caller = caller.clone();
        tokio::task::spawn_blocking(move || exercise_blocking(blocking_caller)).await.unwrap();
        assert_idle(|| (server.census(), caller.census()));
    });
}

#[test]
fn on_a_current_thread_tokio_runtime_too() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let bus = MemBus::new();
        let server = hsipc::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let (basic, doubling, probes) = services();
        server.register_service(basic).await.unwrap();
        server.register_service(doubling).await.unwrap();
        // The client is the serving hub itself: its handlers run on this very thread.
        exercise_async(server.clone(), &probes).await;
        assert_idle(|| (server.census(), server.census()));
    });
}

#[test]
fn on_the_smol_hub_both_clients_reach_async_and_plain_methods() {
    smol::block_on(async {
        let bus = MemBus::new();
        let server = hsipc::smol::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let caller = hsipc::smol::ProcessHub::builder("caller").transport(bus.connector()).build().unwrap();
        let (basic, doubling, probes) = services();
        server.register_service(basic).await.unwrap();
        server.register_service(doubling).await.unwrap();
        exercise_async(caller.clone(), &probes).await;
        let blocking_caller = caller.clone();
        smol::unblock(move || exercise_blocking(blocking_caller)).await;
        assert_idle(|| (server.census(), caller.census()));
    });
}

#[test]
fn on_the_blocking_hub_both_clients_reach_async_and_plain_methods() {
    let bus = MemBus::new();
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let caller = hsipc::SyncProcessHub::builder("caller").transport(bus.connector()).build().unwrap();
    let (basic, doubling, probes) = services();
    server.register_service(basic).unwrap();
    server.register_service(doubling).unwrap();
    exercise_blocking(caller.clone());
    // The async client needs no runtime of its own: its futures complete on the hub's threads.
    futures_lite::future::block_on(exercise_async(caller.clone(), &probes));
    assert_idle(|| (server.census(), caller.census()));
}

#[test]
fn hubs_of_different_kinds_serve_each_other() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = MemBus::new();
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let (basic, doubling, probes) = services();
    server.register_service(basic).unwrap();
    server.register_service(doubling).unwrap();
    rt.block_on(async {
        let caller = hsipc::ProcessHub::builder("tokio-caller").transport(bus.connector()).build().unwrap();
        exercise_async(caller.clone(), &probes).await;
        assert_idle(|| (server.census(), caller.census()));
    });
}

#[test]
fn generated_futures_are_send_and_static() {
    fn send_static<T: Send + 'static>(_: &T) {}
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let hub = hsipc::ProcessHub::builder("lonely").transport(MemBus::new().connector()).build().unwrap();
    let client = CalculatorClient::new(hub);
    let call = client.add(1, 2);
    send_static(&call);
    send_static(&client.name());
    drop(call);
}
