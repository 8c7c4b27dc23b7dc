//! The conformance suite: every behaviour is written once, as an async function generic over a
//! [`Kit`], and run against the three hubs (blocking, tokio, smol) over both transports
//! (in-memory and a real ipmb bus inside this process).
//!
//! A [`Kit`] gives one hub the same async-looking surface: the async hubs forward to their own
//! methods; the blocking hub runs its blocking call inline (its test body is driven by
//! `futures_lite::future::block_on`, so blocking there is allowed). What really differs between
//! the hubs — how a handler that waits is written, and how it learns that its call is gone —
//! lives in the kit, not in the tests.
//!
//! Rules every test keeps: no tight timing asserts ("well before the deadline" is the strongest
//! claim), absence is proven by a marker sent after, and each test ends with a leak check: every
//! hub of the test must become idle (`census().is_idle()`) within 10 s.

#![cfg(all(feature = "blocking", feature = "tokio", feature = "smol"))]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hsipc::proto::ErrorCode;
use hsipc::transport::MemBus;
use hsipc::transport::hub::{AsyncHub, HubBuilder, RuntimeKind};
use hsipc::{CallContext, Census, Error, Event, PeerId, PeerSummary, Qos, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The default call timeout (and stream stall timeout) of every hub built here.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on every wait of a test for something that must happen.
const LONG: Duration = Duration::from_secs(10);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// ---------------------------------------------------------------------------------------------
// Buses and hub settings

/// Which transport a test runs over.
#[derive(Clone, Copy, Debug)]
enum Net {
    Mem,
    Ipmb,
}

/// One test's bus: the hubs built on it see each other and nobody else.
enum Bus {
    Mem(MemBus),
    Ipmb(String),
}

impl Bus {
    fn new(net: Net) -> Bus {
        match net {
            Net::Mem => Bus::Mem(MemBus::new()),
            Net::Ipmb => {
                static N: AtomicU32 = AtomicU32::new(0);
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
                let n = N.fetch_add(1, Ordering::Relaxed);
                Bus::Ipmb(format!("conformance-{}-{nanos}-{n}", std::process::id()))
            }
        }
    }
}

/// The settings a test may change; everything else is the default.
#[derive(Clone, Default)]
struct Cfg {
    window: Option<u32>,
    qos: Option<Qos>,
    event_window: Option<u32>,
    publish_timeout: Option<Duration>,
    max_pending: Option<usize>,
    max_message_len: Option<usize>,
}

impl Cfg {
    /// Applies the settings to any kind of hub's builder (all three are `HubBuilder<K>`).
    fn apply<K: RuntimeKind>(&self, b: HubBuilder<K>, bus: &Bus) -> HubBuilder<K> {
        let mut b = b.default_timeout(TIMEOUT).stream_stall_timeout(TIMEOUT);
        b = match bus {
            Bus::Mem(m) => b.transport(m.connector()),
            Bus::Ipmb(name) => b.bus(name),
        };
        if let Some(n) = self.window {
            b = b.stream_window(n);
        }
        if let Some(q) = self.qos {
            b = b.subscription_qos(q);
        }
        if let Some(n) = self.event_window {
            b = b.event_window(n);
        }
        if let Some(t) = self.publish_timeout {
            b = b.publish_timeout(t);
        }
        if let Some(n) = self.max_pending {
            b = b.max_pending_calls(n);
        }
        if let Some(n) = self.max_message_len {
            b = b.max_message_len(n);
        }
        b
    }
}

// ---------------------------------------------------------------------------------------------
// Probes: what the test learns from inside a handler

/// Runs its closure when dropped, unless disarmed: how an async handler reports being dropped.
struct OnDrop(Option<Box<dyn FnOnce() + Send>>);

impl OnDrop {
    fn new(f: impl FnOnce() + Send + 'static) -> Self {
        OnDrop(Some(Box::new(f)))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The handler side of a call that is held until the test releases it (request `()`, answer
/// `1u32`). It says when it started, and whether its call was cancelled while it was held.
#[derive(Clone)]
struct Hold {
    started: flume::Sender<()>,
    cancelled: flume::Sender<()>,
    release: flume::Receiver<()>,
}

/// The test side of a [`Hold`].
struct HoldProbe {
    started: flume::Receiver<()>,
    cancelled: flume::Receiver<()>,
    release: flume::Sender<()>,
}

fn hold() -> (Hold, HoldProbe) {
    let (started, started_rx) = flume::unbounded();
    let (cancelled, cancelled_rx) = flume::unbounded();
    let (release_tx, release) = flume::unbounded();
    (
        Hold { started, cancelled, release },
        HoldProbe { started: started_rx, cancelled: cancelled_rx, release: release_tx },
    )
}

impl HoldProbe {
    async fn started(&self) {
        within("the held handler starts", self.started.recv_async()).await.unwrap();
    }

    async fn cancelled(&self) {
        within("the held handler learns that its call is gone", self.cancelled.recv_async()).await.unwrap();
    }

    /// Lets every held handler go.
    fn release_all(&self) {
        for _ in 0..16 {
            let _ = self.release.send(());
        }
    }
}

/// How a streaming handler's run ended.
#[derive(Debug)]
enum Outcome {
    /// It sent what it was asked to (or failed on purpose) and returned.
    Ended,
    /// A send failed, and it returned that error.
    SendFailed(Error),
    /// The hub dropped its future (async hubs, when the call is gone).
    Dropped,
}

/// A streaming handler's script: the request is `n: u32`, the items `0..n`; if `fail_after` is
/// `Some(k)`, it returns `Err("boom at k")` instead of sending item `k`.
#[derive(Clone)]
struct Plan {
    fail_after: Option<u32>,
    sent: Arc<AtomicUsize>,
    outcome: flume::Sender<Outcome>,
}

impl Plan {
    fn new(fail_after: Option<u32>) -> (Plan, flume::Receiver<Outcome>) {
        let (outcome, rx) = flume::unbounded();
        (Plan { fail_after, sent: Arc::default(), outcome }, rx)
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// The handler's verdict before item `i`: `Some(Err)` to fail on purpose.
    fn before(&self, i: u32) -> Option<std::result::Result<(), String>> {
        (self.fail_after == Some(i)).then(|| {
            let _ = self.outcome.send(Outcome::Ended);
            Err(format!("boom at {i}"))
        })
    }

    /// Accounts for one send's result; `Some` ends the handler.
    fn after(&self, r: Result<()>) -> Option<std::result::Result<(), String>> {
        match r {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::SeqCst);
                None
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = self.outcome.send(Outcome::SendFailed(e));
                Some(Err(msg))
            }
        }
    }

    fn done(&self) -> std::result::Result<(), String> {
        let _ = self.outcome.send(Outcome::Ended);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Kits: one hub kind's surface, async-shaped

/// The surface of one kind of hub, as the tests use it.
trait Kit: Sized + 'static {
    type Hub: Clone + Send + Sync + 'static;
    type Items<T: DeserializeOwned + 'static>;
    type Sub<T: DeserializeOwned + 'static>;
    /// Whether a handler whose call is gone is dropped by the hub (async hubs) rather than told
    /// through its context (the blocking hub).
    const DROPS_CANCELLED_HANDLERS: bool;

    /// Runs a test body on this kind's executor.
    fn run(body: impl Future<Output = ()>);
    fn build(name: &str, bus: &Bus, cfg: &Cfg) -> Self::Hub;
    fn id(hub: &Self::Hub) -> PeerId;
    fn census(hub: &Self::Hub) -> Census;
    fn peers(hub: &Self::Hub) -> Result<Vec<PeerSummary>>;
    async fn close(hub: &Self::Hub);

    /// Serves `method` with a plain function (run inside the hub's handler, async or not).
    async fn serve<Req, Resp, F>(hub: &Self::Hub, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> std::result::Result<Resp, String> + Send + Sync + 'static;
    /// Serves `method` with a plain function run inline, on the thread that read the request.
    async fn serve_inline<Req, Resp, F>(hub: &Self::Hub, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> std::result::Result<Resp, String> + Send + Sync + 'static;
    /// Serves `method` with a handler that is held until released (see [`Hold`]).
    async fn serve_hold(hub: &Self::Hub, method: &str, hold: Hold) -> Result<()>;
    /// Serves a streaming `method` following `plan`.
    async fn serve_plan(hub: &Self::Hub, method: &str, plan: Plan) -> Result<()>;
    /// Serves `method` (`i64 -> i64`) by calling `target` on the same hub and adding one.
    async fn serve_relay(hub: &Self::Hub, method: &str, target: &'static str) -> Result<()>;
    async fn unserve(hub: &Self::Hub, method: &str) -> Result<()>;

    async fn call_timeout<Req: Serialize, Resp: DeserializeOwned>(
        hub: &Self::Hub,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<Resp>;
    async fn call<Req: Serialize, Resp: DeserializeOwned>(hub: &Self::Hub, method: &str, req: Req) -> Result<Resp>;
    /// Starts a call and returns its outcome to await later. The call is on its way when this
    /// returns (blocking: on a thread of its own).
    fn start_call<Req, Resp>(hub: &Self::Hub, method: &str, req: Req, timeout: Duration) -> BoxFut<Result<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static;
    async fn call_stream<Req: Serialize, Item: DeserializeOwned + 'static>(
        hub: &Self::Hub,
        method: &str,
        req: Req,
    ) -> Result<Self::Items<Item>>;
    async fn next_item<Item: DeserializeOwned + 'static>(items: &mut Self::Items<Item>) -> Option<Result<Item>>;

    async fn publish<T: Serialize>(hub: &Self::Hub, topic: &str, event: T) -> Result<()>;
    async fn subscribe<T: DeserializeOwned + 'static>(hub: &Self::Hub, pattern: &str) -> Result<Self::Sub<T>>;
    /// The next event, waiting at most [`LONG`].
    async fn next_event<T: DeserializeOwned + 'static>(sub: &mut Self::Sub<T>) -> Result<Event<T>>;

    async fn wait_for_service(hub: &Self::Hub, service: &str, timeout: Duration) -> Result<()>;
    /// Starts waiting for `service`; the outcome to await later.
    async fn start_wait_for_service(hub: &Self::Hub, service: &str, timeout: Duration) -> BoxFut<Result<()>>;
}

/// The blocking hub. Its "async" methods block inline.
struct Blocking;

impl Kit for Blocking {
    type Hub = hsipc::blocking::ProcessHub;
    type Items<T: DeserializeOwned + 'static> = hsipc::blocking::ResponseStream<T>;
    type Sub<T: DeserializeOwned + 'static> = hsipc::blocking::Subscription<T>;
    const DROPS_CANCELLED_HANDLERS: bool = false;

    fn run(body: impl Future<Output = ()>) {
        futures_lite::future::block_on(body);
    }

    fn build(name: &str, bus: &Bus, cfg: &Cfg) -> Self::Hub {
        cfg.apply(hsipc::blocking::ProcessHub::builder(name), bus).build().unwrap()
    }

    fn id(hub: &Self::Hub) -> PeerId {
        hub.id()
    }

    fn census(hub: &Self::Hub) -> Census {
        hub.census()
    }

    fn peers(hub: &Self::Hub) -> Result<Vec<PeerSummary>> {
        hub.peers()
    }

    async fn close(hub: &Self::Hub) {
        hub.close();
    }

    async fn serve<Req, Resp, F>(hub: &Self::Hub, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> std::result::Result<Resp, String> + Send + Sync + 'static,
    {
        hub.serve(method, f)
    }

    async fn serve_inline<Req, Resp, F>(hub: &Self::Hub, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> std::result::Result<Resp, String> + Send + Sync + 'static,
    {
        hub.serve_inline(method, f)
    }

    async fn serve_hold(hub: &Self::Hub, method: &str, hold: Hold) -> Result<()> {
        // A blocking handler is never interrupted: it looks at its context between steps.
        hub.serve_with_context(method, move |(): (), ctx: &CallContext| {
            let _ = hold.started.send(());
            let until = Instant::now() + LONG;
            while Instant::now() < until {
                if ctx.wait_cancelled(Duration::from_millis(5)) {
                    let _ = hold.cancelled.send(());
                    let _ = hold.release.recv_timeout(LONG);
                    return Err("cancelled".to_string());
                }
                if hold.release.try_recv().is_ok() {
                    return Ok(1u32);
                }
            }
            Err("never released".to_string())
        })
    }

    async fn serve_plan(hub: &Self::Hub, method: &str, plan: Plan) -> Result<()> {
        hub.serve_stream(method, move |n: u32, sink: &hsipc::blocking::StreamSink<u32>| {
            for i in 0..n {
                if let Some(end) = plan.before(i).or_else(|| plan.after(sink.send(&i))) {
                    return end;
                }
            }
            plan.done()
        })
    }

    async fn serve_relay(hub: &Self::Hub, method: &str, target: &'static str) -> Result<()> {
        let me = hub.clone();
        hub.serve(method, move |x: i64| me.call::<_, i64>(target, x).map(|y| y + 1).map_err(|e| e.to_string()))
    }

    async fn unserve(hub: &Self::Hub, method: &str) -> Result<()> {
        hub.unserve(method)
    }

    async fn call_timeout<Req: Serialize, Resp: DeserializeOwned>(
        hub: &Self::Hub,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<Resp> {
        hub.call_timeout(method, req, timeout)
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(hub: &Self::Hub, method: &str, req: Req) -> Result<Resp> {
        hub.call(method, req)
    }

    fn start_call<Req, Resp>(hub: &Self::Hub, method: &str, req: Req, timeout: Duration) -> BoxFut<Result<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (hub, method) = (hub.clone(), method.to_string());
        let caller = std::thread::spawn(move || hub.call_timeout(&method, req, timeout));
        Box::pin(async move { caller.join().expect("the calling thread panicked") })
    }

    async fn call_stream<Req: Serialize, Item: DeserializeOwned + 'static>(
        hub: &Self::Hub,
        method: &str,
        req: Req,
    ) -> Result<Self::Items<Item>> {
        hub.call_stream(method, req)
    }

    async fn next_item<Item: DeserializeOwned + 'static>(items: &mut Self::Items<Item>) -> Option<Result<Item>> {
        items.next()
    }

    async fn publish<T: Serialize>(hub: &Self::Hub, topic: &str, event: T) -> Result<()> {
        hub.publish(topic, event)
    }

    async fn subscribe<T: DeserializeOwned + 'static>(hub: &Self::Hub, pattern: &str) -> Result<Self::Sub<T>> {
        hub.subscribe(pattern)
    }

    async fn next_event<T: DeserializeOwned + 'static>(sub: &mut Self::Sub<T>) -> Result<Event<T>> {
        sub.recv_timeout(LONG)
    }

    async fn wait_for_service(hub: &Self::Hub, service: &str, timeout: Duration) -> Result<()> {
        hub.wait_for_service(service, timeout)
    }

    async fn start_wait_for_service(hub: &Self::Hub, service: &str, timeout: Duration) -> BoxFut<Result<()>> {
        let (hub, service) = (hub.clone(), service.to_string());
        let waiter = std::thread::spawn(move || hub.wait_for_service(&service, timeout));
        Box::pin(async move { waiter.join().expect("the waiting thread panicked") })
    }
}

/// How an async hub's test body is run, and which kind of hub it builds.
trait Exec: 'static {
    type Kind: RuntimeKind<Hub = AsyncHub<Self::Kind>>;
    fn run(body: impl Future<Output = ()>);
}

/// The kind of hub an `AsyncHub<K>` is (names the adapters' marker types through the facade).
trait KindOf {
    type Kind;
}

impl<K> KindOf for AsyncHub<K> {
    type Kind = K;
}

/// tokio, multi-thread runtime.
struct TokioMt;
/// tokio, current-thread runtime: handlers run only while the test body awaits.
struct TokioCt;
/// smol: handlers on smol's global executor.
struct Smol;

impl Exec for TokioMt {
    type Kind = <hsipc::tokio::ProcessHub as KindOf>::Kind;

    fn run(body: impl Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(body);
    }
}

impl Exec for TokioCt {
    type Kind = <hsipc::tokio::ProcessHub as KindOf>::Kind;

    fn run(body: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(body);
    }
}

impl Exec for Smol {
    type Kind = <hsipc::smol::ProcessHub as KindOf>::Kind;

    fn run(body: impl Future<Output = ()>) {
        smol::block_on(body);
    }
}

/// An async hub (tokio or smol): the same code for both, as the hub itself is.
struct Async<E>(std::marker::PhantomData<E>);

impl<E: Exec> Kit for Async<E> {
    type Hub = AsyncHub<E::Kind>;
    type Items<T: DeserializeOwned + 'static> = hsipc::ResponseStream<T>;
    type Sub<T: DeserializeOwned + 'static> = hsipc::Subscription<T>;
    const DROPS_CANCELLED_HANDLERS: bool = true;

    fn run(body: impl Future<Output = ()>) {
        E::run(body);
    }

    fn build(name: &str, bus: &Bus, cfg: &Cfg) -> Self::Hub {
        cfg.apply(HubBuilder::<E::Kind>::new(name), bus).build().unwrap()
    }

    fn id(hub: &Self::Hub) -> PeerId {
        hub.id()
    }

    fn census(hub: &Self::Hub) -> Census {
        hub.census()
    }

    fn peers(hub: &Self::Hub) -> Result<Vec<PeerSummary>> {
        hub.peers()
    }

    async fn close(hub: &Self::Hub) {
        hub.close().await;
    }

    async fn serve<Req, Resp, F>(hub: &Self::Hub, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> std::result::Result<Resp, String> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        hub.serve(method, move |req: Req| {
            let f = f.clone();
            async move { f(req) }
        })
        .await
    }

    async fn serve_inline<Req, Resp, F>(hub: &Self::Hub, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> std::result::Result<Resp, String> + Send + Sync + 'static,
    {
        hub.serve_inline(method, f).await
    }

    async fn serve_hold(hub: &Self::Hub, method: &str, hold: Hold) -> Result<()> {
        // An async handler is dropped when its call is gone: a guard reports it.
        hub.serve(method, move |(): ()| {
            let hold = hold.clone();
            async move {
                let _ = hold.started.send(());
                let cancelled = hold.cancelled.clone();
                let guard = OnDrop::new(move || {
                    let _ = cancelled.send(());
                });
                let _ = hold.release.recv_async().await;
                guard.disarm();
                Ok::<_, String>(1u32)
            }
        })
        .await
    }

    async fn serve_plan(hub: &Self::Hub, method: &str, plan: Plan) -> Result<()> {
        hub.serve_stream(method, move |n: u32, sink: hsipc::transport::hub::StreamSink<u32>| {
            let plan = plan.clone();
            async move {
                let dropped = plan.outcome.clone();
                let guard = OnDrop::new(move || {
                    let _ = dropped.send(Outcome::Dropped);
                });
                for i in 0..n {
                    let end = match plan.before(i) {
                        Some(end) => Some(end),
                        None => plan.after(sink.send(&i).await),
                    };
                    if let Some(end) = end {
                        guard.disarm();
                        return end;
                    }
                }
                guard.disarm();
                plan.done()
            }
        })
        .await
    }

    async fn serve_relay(hub: &Self::Hub, method: &str, target: &'static str) -> Result<()> {
        let me = hub.clone();
        hub.serve(method, move |x: i64| {
            let me = me.clone();
            async move { me.call::<_, i64>(target, x).await.map(|y| y + 1).map_err(|e| e.to_string()) }
        })
        .await
    }

    async fn unserve(hub: &Self::Hub, method: &str) -> Result<()> {
        hub.unserve(method).await
    }

    async fn call_timeout<Req: Serialize, Resp: DeserializeOwned>(
        hub: &Self::Hub,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<Resp> {
        hub.call_timeout(method, req, timeout).await
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(hub: &Self::Hub, method: &str, req: Req) -> Result<Resp> {
        hub.call(method, req).await
    }

    fn start_call<Req, Resp>(hub: &Self::Hub, method: &str, req: Req, timeout: Duration) -> BoxFut<Result<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        // The call starts when the future is made; dropping it cancels the call.
        Box::pin(hub.call_timeout(method, req, timeout))
    }

    async fn call_stream<Req: Serialize, Item: DeserializeOwned + 'static>(
        hub: &Self::Hub,
        method: &str,
        req: Req,
    ) -> Result<Self::Items<Item>> {
        hub.call_stream(method, req).await
    }

    async fn next_item<Item: DeserializeOwned + 'static>(items: &mut Self::Items<Item>) -> Option<Result<Item>> {
        items.next().await
    }

    async fn publish<T: Serialize>(hub: &Self::Hub, topic: &str, event: T) -> Result<()> {
        hub.publish(topic, event).await
    }

    async fn subscribe<T: DeserializeOwned + 'static>(hub: &Self::Hub, pattern: &str) -> Result<Self::Sub<T>> {
        hub.subscribe(pattern).await
    }

    async fn next_event<T: DeserializeOwned + 'static>(sub: &mut Self::Sub<T>) -> Result<Event<T>> {
        match deadline(LONG, sub.next()).await {
            None => Err(Error::Timeout),
            Some(None) => Err(Error::Closed),
            Some(Some(ev)) => ev,
        }
    }

    async fn wait_for_service(hub: &Self::Hub, service: &str, timeout: Duration) -> Result<()> {
        hub.wait_for_service(service, timeout).await
    }

    async fn start_wait_for_service(hub: &Self::Hub, service: &str, timeout: Duration) -> BoxFut<Result<()>> {
        let (hub, service) = (hub.clone(), service.to_string());
        let mut wait: BoxFut<Result<()>> = Box::pin(async move { hub.wait_for_service(&service, timeout).await });
        // One poll registers the wait.
        match futures_lite::future::poll_once(&mut wait).await {
            Some(done) => Box::pin(std::future::ready(done)),
            None => wait,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn sleep(d: Duration) {
    smol::Timer::after(d).await;
}

/// `fut`'s output, or `None` after `limit`.
async fn deadline<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// `fut`'s output; panics naming `what` if it takes more than [`LONG`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    deadline(LONG, fut).await.unwrap_or_else(|| panic!("{what}: not within {LONG:?}"))
}

/// Polls `cond` until it holds; panics naming `what` after [`LONG`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within {LONG:?}");
        sleep(Duration::from_millis(1)).await;
    }
}

/// The leak check: every hub becomes idle (no call, stream, served call, subscription, waiter
/// or protocol timer left).
async fn settle<K: Kit>(hubs: &[&K::Hub]) {
    for hub in hubs {
        let until = Instant::now() + LONG;
        while !K::census(hub).is_idle() {
            assert!(Instant::now() < until, "not idle within {LONG:?}: {:?}", K::census(hub));
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Waits until `hub` knows that some peer subscribes to each of `patterns`.
async fn until_subscribed<K: Kit>(hub: &K::Hub, patterns: &[&str]) {
    eventually("the publisher learns the patterns", || {
        let peers = K::peers(hub).unwrap();
        patterns.iter().all(|p| peers.iter().any(|s| s.patterns.iter().any(|q| q == p)))
    })
    .await;
}

/// Whether `hub`'s directory lists a peer named `name`.
fn knows<K: Kit>(hub: &K::Hub, name: &str) -> bool {
    K::peers(hub).unwrap().iter().any(|p| p.name == name)
}

/// A server serving `calc.*`, and a client that knows it.
async fn calc<K: Kit>(bus: &Bus, server_cfg: &Cfg) -> (K::Hub, K::Hub) {
    let server = K::build("server", bus, server_cfg);
    let client = K::build("client", bus, &Cfg::default());
    K::serve(&server, "calc.add", |(a, b): (i64, i64)| Ok(a + b)).await.unwrap();
    K::serve(&server, "calc.unit", |(): ()| Ok("unit".to_string())).await.unwrap();
    K::serve(&server, "calc.echo", |s: String| Ok(s)).await.unwrap();
    K::serve(&server, "calc.div", |(a, b): (i64, i64)| if b == 0 { Err("division by zero".into()) } else { Ok(a / b) })
        .await
        .unwrap();
    K::serve(&server, "calc.panic", |(): ()| -> std::result::Result<u32, String> { panic!("on purpose") })
        .await
        .unwrap();
    K::wait_for_service(&client, "calc", LONG).await.unwrap();
    (server, client)
}

fn remote(r: Result<impl std::fmt::Debug>) -> hsipc::RemoteError {
    match r {
        Err(Error::Remote(e)) => e,
        other => panic!("expected Error::Remote, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Unary calls

async fn unary_round_trip<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    assert_eq!(K::call::<_, i64>(&client, "calc.add", (2i64, 3i64)).await.unwrap(), 5);
    assert_eq!(K::call::<_, i64>(&client, "calc.add", &(40i64, 2i64)).await.unwrap(), 42);
    assert_eq!(K::call::<_, String>(&client, "calc.unit", ()).await.unwrap(), "unit");
    let text = "x".repeat(10_000);
    assert_eq!(K::call::<_, String>(&client, "calc.echo", &text).await.unwrap(), text);
    // A hub calls its own services too.
    assert_eq!(K::call::<_, i64>(&server, "calc.add", (1i64, 1i64)).await.unwrap(), 2);
    settle::<K>(&[&server, &client]).await;
}

// 2. Errors

async fn missing_service_and_method<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    // Each is an answer of its own, well before the call's timeout.
    let t = Instant::now();
    match K::call::<_, u32>(&client, "nobody.ping", ()).await {
        Err(Error::NoSuchService { service }) => assert_eq!(service, "nobody"),
        other => panic!("{other:?}"),
    }
    match K::call::<_, u32>(&client, "calc.nope", ()).await {
        Err(Error::NoSuchMethod { method }) => assert_eq!(method, "calc.nope"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < TIMEOUT / 2, "took {:?}", t.elapsed());
    settle::<K>(&[&server, &client]).await;
}

async fn handler_error_and_panic<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    let e = remote(K::call::<_, i64>(&client, "calc.div", (1i64, 0i64)).await);
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::HANDLER, "division by zero"));
    let e = remote(K::call::<_, u32>(&client, "calc.panic", ()).await);
    assert!(e.message.contains("panicked"), "{e:?}");
    // The hub serves on after a panic.
    assert_eq!(K::call::<_, i64>(&client, "calc.div", (9i64, 3i64)).await.unwrap(), 3);
    settle::<K>(&[&server, &client]).await;
}

async fn undecodable_request_is_a_bad_request<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    let e = remote(K::call::<_, i64>(&client, "calc.add", "not a pair").await);
    assert_eq!(e.code, ErrorCode::BAD_REQUEST, "{e:?}");
    settle::<K>(&[&server, &client]).await;
}

async fn payload_too_large<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    let small = K::build("small", &bus, &Cfg { max_message_len: Some(4096), ..Cfg::default() });
    K::wait_for_service(&small, "calc", LONG).await.unwrap();
    let big = "x".repeat(16 * 1024);
    for r in
        [K::call::<_, String>(&small, "calc.echo", &big).await.map(drop), K::publish(&small, "news/big", &big).await]
    {
        match r {
            Err(Error::PayloadTooLarge { len, max }) => assert!(len > max && max <= 4096, "{len} {max}"),
            other => panic!("{other:?}"),
        }
    }
    // Small ones still go.
    assert_eq!(K::call::<_, String>(&small, "calc.echo", "hi").await.unwrap(), "hi");
    settle::<K>(&[&server, &client, &small]).await;
}

async fn invalid_topics_and_names<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let hub = K::build("hub", &bus, &Cfg::default());
    for topic in ["sensor/+", "sensor/#", "", "a//b\0"] {
        let r = K::publish(&hub, topic, 1u32).await;
        assert!(matches!(r, Err(Error::InvalidTopic(_))), "publish {topic:?}: {r:?}");
    }
    for pattern in ["a/#/b", "a/b#", "a+/b", ""] {
        let r = K::subscribe::<u32>(&hub, pattern).await;
        assert!(matches!(r, Err(Error::InvalidTopic(_))), "subscribe {pattern:?}: {:?}", r.map(drop));
    }
    for method in ["nodot", ".method", "service.", ""] {
        let r = K::serve(&hub, method, |(): ()| Ok(0u32)).await;
        assert!(matches!(r, Err(Error::InvalidName { .. })), "serve {method:?}: {r:?}");
    }
    settle::<K>(&[&hub]).await;
}

async fn closed_hub_refuses_everything<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    K::close(&client).await;
    assert!(matches!(K::call::<_, i64>(&client, "calc.add", (1i64, 2i64)).await, Err(Error::Closed)));
    assert!(matches!(K::call_stream::<_, u32>(&client, "calc.count", 1u32).await.map(drop), Err(Error::Closed)));
    assert!(matches!(K::publish(&client, "news/x", 1u32).await, Err(Error::Closed)));
    assert!(matches!(K::subscribe::<u32>(&client, "news/#").await.map(drop), Err(Error::Closed)));
    assert!(matches!(K::serve(&client, "late.x", |(): ()| Ok(0u32)).await, Err(Error::Closed)));
    assert!(matches!(K::wait_for_service(&client, "calc", LONG).await, Err(Error::Closed)));
    // Closing twice is fine.
    K::close(&client).await;
    settle::<K>(&[&server, &client]).await;
}

/// A caller that keeps calls open takes three quarters of the server's places at most: the
/// others still get one.
async fn one_caller_leaves_the_others_a_share<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg { max_pending: Some(4), ..Cfg::default() });
    let greedy = K::build("greedy", &bus, &Cfg::default());
    let other = K::build("other", &bus, &Cfg::default());
    let (hold, probe) = hold();
    K::serve_hold(&server, "hold.wait", hold).await.unwrap();
    K::wait_for_service(&greedy, "hold", LONG).await.unwrap();
    K::wait_for_service(&other, "hold", LONG).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(K::start_call::<_, u32>(&greedy, "hold.wait", (), TIMEOUT));
        probe.started().await;
    }
    match K::call::<_, u32>(&greedy, "hold.wait", ()).await {
        Err(Error::ServerBusy(why)) => assert!(why.contains("one caller"), "{why}"),
        r => panic!("{r:?}"),
    }
    let theirs = K::start_call::<_, u32>(&other, "hold.wait", (), TIMEOUT);
    probe.started().await;
    probe.release_all();
    for call in held {
        assert_eq!(call.await.unwrap(), 1);
    }
    assert_eq!(theirs.await.unwrap(), 1);
    settle::<K>(&[&server, &greedy, &other]).await;
}

async fn server_busy<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg { max_pending: Some(1), ..Cfg::default() });
    let client = K::build("client", &bus, &Cfg::default());
    let (hold, probe) = hold();
    K::serve_hold(&server, "hold.wait", hold).await.unwrap();
    K::wait_for_service(&client, "hold", LONG).await.unwrap();
    let first = K::start_call::<_, u32>(&client, "hold.wait", (), TIMEOUT);
    probe.started().await;
    match K::call::<_, u32>(&client, "hold.wait", ()).await {
        Err(Error::ServerBusy(why)) => assert!(!why.is_empty()),
        other => panic!("{other:?}"),
    }
    probe.release_all();
    assert_eq!(first.await.unwrap(), 1);
    // The place is free again.
    let again = K::start_call::<_, u32>(&client, "hold.wait", (), TIMEOUT);
    probe.started().await;
    probe.release_all();
    assert_eq!(again.await.unwrap(), 1);
    settle::<K>(&[&server, &client]).await;
}

// 3. Timeout

async fn timeout_cancels_the_handler<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    let (hold, probe) = hold();
    K::serve_hold(&server, "hold.wait", hold).await.unwrap();
    K::wait_for_service(&client, "hold", LONG).await.unwrap();
    let r = K::call_timeout::<_, u32>(&client, "hold.wait", (), Duration::from_millis(50)).await;
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    probe.started().await;
    // Blocking: its context says so; async: its future is dropped.
    probe.cancelled().await;
    probe.release_all();
    settle::<K>(&[&server, &client]).await;
}

// 4. Cancellation

/// (a) Async hubs: dropping a call future in flight cancels the handler at the server.
async fn dropping_a_call_cancels_the_handler<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    let (hold, probe) = hold();
    K::serve_hold(&server, "hold.wait", hold).await.unwrap();
    K::wait_for_service(&client, "hold", LONG).await.unwrap();
    let mut call = K::start_call::<_, u32>(&client, "hold.wait", (), TIMEOUT);
    assert!(futures_lite::future::poll_once(&mut call).await.is_none());
    probe.started().await;
    drop(call);
    probe.cancelled().await;
    probe.release_all();
    settle::<K>(&[&server, &client]).await;
}

/// (b) Dropping a response stream mid-way cancels it at the server.
async fn dropping_a_stream_cancels_the_server<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    let (plan, outcome) = Plan::new(None);
    K::serve_plan(&server, "feed.count", plan).await.unwrap();
    K::wait_for_service(&client, "feed", LONG).await.unwrap();
    let mut items = K::call_stream::<_, u32>(&client, "feed.count", u32::MAX).await.unwrap();
    for i in 0..3 {
        assert_eq!(K::next_item(&mut items).await.unwrap().unwrap(), i);
    }
    drop(items);
    match within("the server learns the stream is gone", outcome.recv_async()).await.unwrap() {
        Outcome::SendFailed(Error::Cancelled) => {}
        Outcome::Dropped if K::DROPS_CANCELLED_HANDLERS => {}
        other => panic!("{other:?}"),
    }
    settle::<K>(&[&server, &client]).await;
}

/// (c) A streaming handler failing mid-way: the reader gets the items, then the error.
async fn stream_error_reaches_the_reader<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    let (plan, outcome) = Plan::new(Some(5));
    K::serve_plan(&server, "feed.count", plan).await.unwrap();
    K::wait_for_service(&client, "feed", LONG).await.unwrap();
    let mut items = K::call_stream::<_, u32>(&client, "feed.count", 100u32).await.unwrap();
    for i in 0..5 {
        assert_eq!(K::next_item(&mut items).await.unwrap().unwrap(), i);
    }
    let e = remote(K::next_item(&mut items).await.unwrap());
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::HANDLER, "boom at 5"));
    assert!(K::next_item(&mut items).await.is_none());
    assert!(matches!(outcome.recv_async().await, Ok(Outcome::Ended)));
    drop(items);
    settle::<K>(&[&server, &client]).await;
}

/// Async hubs: a handler closure that panics before it even returns its future is answered
/// like any other panic.
async fn panic_before_the_future<E: Exec>(net: Net) {
    type K<E> = Async<E>;
    let bus = Bus::new(net);
    let server = K::<E>::build("server", &bus, &Cfg::default());
    let client = K::<E>::build("client", &bus, &Cfg::default());
    let eager = |(): ()| -> std::future::Ready<std::result::Result<u32, String>> { panic!("before the future") };
    server.serve("eager.panic", eager).await.unwrap();
    K::<E>::wait_for_service(&client, "eager", LONG).await.unwrap();
    let e = remote(client.call::<_, u32>("eager.panic", ()).await);
    assert!(e.message.contains("panicked"), "{e:?}");
    settle::<K<E>>(&[&server, &client]).await;
}

// 5. Streams with a slow reader

async fn slow_reader_is_paced_by_credit<K: Kit>(net: Net) {
    const WINDOW: u32 = 8;
    const N: u32 = 1000;
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let reader = K::build("reader", &bus, &Cfg { window: Some(WINDOW), ..Cfg::default() });
    let (plan, outcome) = Plan::new(None);
    K::serve_plan(&server, "feed.count", plan.clone()).await.unwrap();
    K::wait_for_service(&reader, "feed", LONG).await.unwrap();
    let mut items = K::call_stream::<_, u32>(&reader, "feed.count", N).await.unwrap();
    // Before the reader takes anything the server spends the window and then waits.
    eventually("the server waits for credit", || K::census(&server).blocked_items == 1).await;
    assert!(plan.sent() <= WINDOW as usize, "{} items sent before the reader took one", plan.sent());
    for i in 0..N {
        if i % 100 == 0 {
            sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(K::next_item(&mut items).await.unwrap().unwrap(), i);
    }
    assert!(K::next_item(&mut items).await.is_none());
    assert!(matches!(within("the handler ends", outcome.recv_async()).await, Ok(Outcome::Ended)));
    assert_eq!(plan.sent(), N as usize);
    drop(items);
    settle::<K>(&[&server, &reader]).await;
}

// 6. Publish/subscribe

async fn wildcards<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let publisher = K::build("publisher", &bus, &Cfg::default());
    let subscriber = K::build("subscriber", &bus, &Cfg::default());
    let mut plus = K::subscribe::<u32>(&subscriber, "sensor/+").await.unwrap();
    let mut hash = K::subscribe::<u32>(&subscriber, "sensor/#").await.unwrap();
    let mut all = K::subscribe::<u32>(&subscriber, "#").await.unwrap();
    let mut sys = K::subscribe::<u32>(&subscriber, "$SYS/+").await.unwrap();
    until_subscribed::<K>(&publisher, &["sensor/+", "sensor/#", "#", "$SYS/+"]).await;
    let published = ["sensor/temp", "sensor/room/temp", "sensor", "$SYS/x", "other", "$SYS/end", "sensor/end"];
    for (i, topic) in published.iter().enumerate() {
        K::publish(&publisher, topic, i as u32).await.unwrap();
    }
    // Each list ends with the last event its pattern matches: anything it must not get was
    // published before that one, by the same publisher, so it would have come first.
    let expect: [(&mut K::Sub<u32>, &[&str]); 4] = [
        (&mut plus, &["sensor/temp", "sensor/end"]),
        (&mut hash, &["sensor/temp", "sensor/room/temp", "sensor", "sensor/end"]),
        (&mut all, &["sensor/temp", "sensor/room/temp", "sensor", "other", "sensor/end"]),
        (&mut sys, &["$SYS/x", "$SYS/end"]),
    ];
    let from = K::id(&publisher);
    for (sub, topics) in expect {
        for topic in topics {
            let ev = K::next_event(sub).await.unwrap();
            let index = published.iter().position(|p| p == topic).unwrap() as u32;
            assert_eq!((ev.topic.as_str(), ev.payload, ev.from, ev.missed), (*topic, index, from, 0));
        }
    }
    drop((plus, hash, all, sys));
    settle::<K>(&[&publisher, &subscriber]).await;
}

/// 20 events into a queue of 4, nothing read; then the queue is read. Every event is either
/// received or counted (in some `missed`, or, for a tail dropped by `DropNewest`, in the
/// `EventsDropped` read once the queue is empty).
async fn overflow<K: Kit>(net: Net, qos: Qos) {
    let bus = Bus::new(net);
    let publisher = K::build("publisher", &bus, &Cfg::default());
    let cfg = Cfg { qos: Some(qos), ..Cfg::default() };
    let subscriber = K::build("subscriber", &bus, &cfg);
    let mut data = K::subscribe::<u32>(&subscriber, "data/+").await.unwrap();
    let mut sync = K::subscribe::<u32>(&subscriber, "sync").await.unwrap();
    until_subscribed::<K>(&publisher, &["data/+", "sync"]).await;
    for i in 0..20u32 {
        K::publish(&publisher, &format!("data/{i}"), i).await.unwrap();
    }
    // Events reach a hub's subscriptions in order: once `sync` has its event, all 20 have met
    // the data queue.
    K::publish(&publisher, "sync", 0u32).await.unwrap();
    K::next_event(&mut sync).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let ev = K::next_event(&mut data).await.unwrap();
        got.push((ev.payload, ev.missed));
    }
    if matches!(qos, Qos::DropNewest(_)) {
        // The queue is empty now: the lost end of the burst is told at once, before any later
        // event (the marker below is published only after).
        match K::next_event(&mut data).await {
            Err(Error::EventsDropped { missed }) => got.push((u32::MAX, missed)),
            other => panic!("the lost tail was not told: {other:?}"),
        }
    }
    K::publish(&publisher, "data/end", 99u32).await.unwrap();
    let ev = K::next_event(&mut data).await.unwrap();
    got.push((ev.payload, ev.missed));
    let expected: &[(u32, u64)] = match qos {
        Qos::DropNewest(_) => &[(0, 0), (1, 0), (2, 0), (3, 0), (u32::MAX, 16), (99, 0)],
        _ => &[(16, 16), (17, 0), (18, 0), (19, 0), (99, 0)],
    };
    assert_eq!(got, expected);
    let received = got.iter().filter(|(p, _)| *p != u32::MAX).count() as u64;
    assert_eq!(received + got.iter().map(|(_, missed)| missed).sum::<u64>(), 20 + 1);
    drop((data, sync));
    settle::<K>(&[&publisher, &subscriber]).await;
}

/// A handler run inline answers like any other: many calls in order, an error, a panic (the
/// hub lives on), and a call from its own hub.
async fn inline_handler<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    K::serve_inline(&server, "fast.add", |(a, b): (i64, i64)| Ok(a + b)).await.unwrap();
    K::serve_inline(&server, "fast.fail", |(): ()| -> std::result::Result<(), String> { Err("no".into()) })
        .await
        .unwrap();
    K::serve_inline(&server, "fast.panic", |(): ()| -> std::result::Result<(), String> { panic!("on purpose") })
        .await
        .unwrap();
    K::wait_for_service(&client, "fast", LONG).await.unwrap();
    for i in 0..200i64 {
        assert_eq!(K::call::<_, i64>(&client, "fast.add", (i, 1)).await.unwrap(), i + 1);
    }
    assert_eq!(remote(K::call::<_, ()>(&client, "fast.fail", ()).await).message, "no");
    assert!(remote(K::call::<_, ()>(&client, "fast.panic", ()).await).message.contains("panicked"));
    assert_eq!(K::call::<_, i64>(&client, "fast.add", (2, 2)).await.unwrap(), 4);
    assert_eq!(K::call::<_, i64>(&server, "fast.add", (3, 3)).await.unwrap(), 6);
    settle::<K>(&[&server, &client]).await;
}

/// Publishes `count` events on `topic` from a thread of its own (a publisher held back by a
/// subscriber must not hold the test's reader back too).
fn publish_from_a_thread<K: Kit>(hub: &K::Hub, topic: &'static str, count: u32) -> std::thread::JoinHandle<()> {
    let hub = hub.clone();
    std::thread::spawn(move || {
        K::run(async move {
            for i in 0..count {
                K::publish(&hub, topic, i).await.unwrap();
            }
        })
    })
}

/// Byte slices of 16 KiB and more are lent to their frames rather than copied (see
/// `codec::with_body`): frames around the lending threshold arrive whole, and events arrive as
/// they were published though the sender overwrites its buffer the moment each publish
/// returns. (Whether a frame is still queued then depends on timing here, and seldom is:
/// `edge_cases::a_lent_payload_kept_past_its_call_arrives_as_it_was_sent` keeps one for sure.)
async fn lent_bytes_arrive_as_they_were_sent<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    K::serve(&server, "bytes.echo", |v: Vec<u8>| Ok(v)).await.unwrap();
    let mut events = K::subscribe::<Vec<u8>>(&server, "bytes/#").await.unwrap();
    K::wait_for_service(&client, "bytes", LONG).await.unwrap();
    until_subscribed::<K>(&client, &["bytes/#"]).await;
    let sizes = [16 * 1024 - 1, 16 * 1024, 300_000, 1 << 20];
    for (i, len) in sizes.into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (j % 251) as u8 ^ i as u8).collect();
        assert_eq!(K::call::<_, Vec<u8>>(&client, "bytes.echo", &data[..]).await.unwrap(), data, "{len} bytes");
        // A hub's own service and its own subscription take the frame in process.
        assert_eq!(K::call::<_, Vec<u8>>(&server, "bytes.echo", &data[..]).await.unwrap(), data, "{len} B, own");
        K::publish(&server, "bytes/own", &data[..]).await.unwrap();
        assert_eq!(K::next_event(&mut events).await.unwrap().payload, data, "{len} B event, own");
    }
    let (client_thread, rounds) = (client.clone(), 24u8);
    let publisher = std::thread::spawn(move || {
        K::run(async move {
            let mut data = vec![0u8; 1 << 20];
            for round in 0..rounds {
                data.fill(round);
                K::publish(&client_thread, "bytes/x", &data[..]).await.unwrap();
                data.fill(0xff);
            }
        })
    });
    for round in 0..rounds {
        let ev = K::next_event(&mut events).await.unwrap();
        assert_eq!(ev.payload.len(), 1 << 20);
        assert!(ev.payload.iter().all(|b| *b == round), "event {round} was changed after it was sent");
    }
    publisher.join().unwrap();
    drop(events);
    settle::<K>(&[&server, &client]).await;
}

/// A reliable subscriber with a window of 8 reads 300 events published without pause: all
/// arrive, in order, none missed (the publisher was held back by the subscriber's credit).
async fn reliable_subscription_loses_nothing<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let publisher = K::build("publisher", &bus, &Cfg::default());
    let subscriber = K::build("subscriber", &bus, &Cfg { event_window: Some(8), ..Cfg::default() });
    let mut events = K::subscribe::<u32>(&subscriber, "r/#").await.unwrap();
    until_subscribed::<K>(&publisher, &["r/#"]).await;
    let thread = publish_from_a_thread::<K>(&publisher, "r/x", 300);
    for i in 0..300 {
        let ev = K::next_event(&mut events).await.unwrap();
        assert_eq!((ev.payload, ev.missed), (i, 0));
    }
    thread.join().unwrap();
    drop(events);
    settle::<K>(&[&publisher, &subscriber]).await;
}

/// A reliable subscriber that reads nothing is cut off at the publisher's timeout: another
/// subscriber gets every event meanwhile, and the stuck one, once it reads, finds its window,
/// then the cut-off, then the rest of its loss, all told as `EventsLost`.
async fn stuck_reliable_subscriber_is_cut_off<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let cfg = Cfg { publish_timeout: Some(Duration::from_millis(200)), ..Cfg::default() };
    let publisher = K::build("publisher", &bus, &cfg);
    let small = Cfg { event_window: Some(4), ..Cfg::default() };
    let stuck_hub = K::build("stuck", &bus, &small);
    let reader_hub = K::build("reader", &bus, &small);
    let mut stuck = K::subscribe::<u32>(&stuck_hub, "c/#").await.unwrap();
    let mut reader = K::subscribe::<u32>(&reader_hub, "c/+").await.unwrap();
    until_subscribed::<K>(&publisher, &["c/#", "c/+"]).await;
    let thread = publish_from_a_thread::<K>(&publisher, "c/x", 40);
    for i in 0..40 {
        let ev = K::next_event(&mut reader).await.unwrap();
        assert_eq!((ev.payload, ev.missed), (i, 0));
    }
    thread.join().unwrap();
    let mut seen = Vec::new();
    let mut accounted = 0;
    while accounted < 40 {
        match K::next_event(&mut stuck).await {
            Ok(ev) => {
                seen.push(format!("{}", ev.payload));
                accounted += 1 + ev.missed;
            }
            Err(Error::EventsLost { publisher, missed }) => {
                assert_eq!(publisher, "publisher");
                seen.push(format!("lost {missed}"));
                accounted += missed;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seen, ["0", "1", "2", "3", "lost 1", "lost 35"]);
    drop((stuck, reader));
    settle::<K>(&[&publisher, &stuck_hub, &reader_hub]).await;
}

async fn overflow_drop_newest<K: Kit>(net: Net) {
    overflow::<K>(net, Qos::DropNewest(4)).await;
}

async fn overflow_drop_oldest<K: Kit>(net: Net) {
    overflow::<K>(net, Qos::KeepLast(4)).await;
}

// 7. Peer death and close

/// A server that goes away (dropped, or closed) while serving: its caller gets `PeerLost` at
/// once, and the server leaves the caller's directory.
async fn server_gone_mid_call<K: Kit>(net: Net, close: bool) {
    let bus = Bus::new(net);
    let client = K::build("client", &bus, &Cfg::default());
    let server = K::build("server", &bus, &Cfg::default());
    let (hold, probe) = hold();
    K::serve_hold(&server, "hold.wait", hold).await.unwrap();
    K::wait_for_service(&client, "hold", LONG).await.unwrap();
    let t = Instant::now();
    let call = K::start_call::<_, u32>(&client, "hold.wait", (), TIMEOUT);
    probe.started().await;
    let server = if close {
        K::close(&server).await;
        Some(server)
    } else {
        drop(server);
        None
    };
    let r = call.await;
    assert!(matches!(r, Err(Error::PeerLost)), "{r:?}");
    assert!(t.elapsed() < TIMEOUT / 2, "took {:?}", t.elapsed());
    // The served call's handler is told too.
    probe.cancelled().await;
    eventually("the server leaves the directory", || !knows::<K>(&client, "server")).await;
    assert!(matches!(K::call::<_, u32>(&client, "hold.wait", ()).await, Err(Error::NoSuchService { .. })));
    probe.release_all();
    match &server {
        Some(server) => settle::<K>(&[&client, server]).await,
        None => settle::<K>(&[&client]).await,
    }
}

async fn dropped_server_fails_calls_with_peer_lost<K: Kit>(net: Net) {
    server_gone_mid_call::<K>(net, false).await;
}

async fn closed_server_fails_calls_with_peer_lost<K: Kit>(net: Net) {
    server_gone_mid_call::<K>(net, true).await;
}

/// `close()` fails the hub's own pending calls with `Closed`, and the hub leaves the others'
/// directories.
async fn close_fails_own_pending_calls<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    let (hold, probe) = hold();
    K::serve_hold(&server, "hold.wait", hold).await.unwrap();
    K::serve(&client, "client.ping", |(): ()| Ok(0u32)).await.unwrap();
    K::wait_for_service(&client, "hold", LONG).await.unwrap();
    K::wait_for_service(&server, "client", LONG).await.unwrap();
    let t = Instant::now();
    let call = K::start_call::<_, u32>(&client, "hold.wait", (), TIMEOUT);
    probe.started().await;
    K::close(&client).await;
    let r = call.await;
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    assert!(t.elapsed() < TIMEOUT / 2, "took {:?}", t.elapsed());
    // The server's handler learns its caller is gone.
    probe.cancelled().await;
    eventually("the closed hub leaves the directory", || !knows::<K>(&server, "client")).await;
    assert!(matches!(K::call::<_, u32>(&server, "client.ping", ()).await, Err(Error::NoSuchService { .. })));
    probe.release_all();
    settle::<K>(&[&server, &client]).await;
}

async fn unserve_withdraws_the_service<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let (server, client) = calc::<K>(&bus, &Cfg::default()).await;
    K::unserve(&server, "calc.add").await.unwrap();
    assert!(matches!(K::call::<_, i64>(&client, "calc.add", (1i64, 1i64)).await, Err(Error::NoSuchMethod { .. })));
    for method in ["calc.unit", "calc.echo", "calc.div", "calc.panic"] {
        K::unserve(&server, method).await.unwrap();
    }
    let served = |hub: &K::Hub| K::peers(hub).unwrap().iter().any(|p| p.services.iter().any(|s| s == "calc"));
    eventually("the service is withdrawn", || !served(&client)).await;
    assert!(matches!(K::call::<_, i64>(&client, "calc.add", (1i64, 1i64)).await, Err(Error::NoSuchService { .. })));
    settle::<K>(&[&server, &client]).await;
}

// 8. Handlers calling their own hub

async fn handler_calling_its_own_hub<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    K::serve(&server, "inner.double", |x: i64| Ok(x * 2)).await.unwrap();
    K::serve_relay(&server, "outer.relay", "inner.double").await.unwrap();
    K::wait_for_service(&client, "outer", LONG).await.unwrap();
    for x in 0..20i64 {
        assert_eq!(K::call::<_, i64>(&client, "outer.relay", x).await.unwrap(), 2 * x + 1);
    }
    // From the hub itself: the handler's call loops back into the same hub again.
    assert_eq!(K::call::<_, i64>(&server, "outer.relay", 5i64).await.unwrap(), 11);
    settle::<K>(&[&server, &client]).await;
    // The relay handler holds the hub; close it to end the engine.
    K::close(&server).await;
}

// 9. wait_for_service

async fn wait_for_service_wakes_when_served<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let server = K::build("server", &bus, &Cfg::default());
    let client = K::build("client", &bus, &Cfg::default());
    let t = Instant::now();
    let waiting = K::start_wait_for_service(&client, "late", LONG).await;
    eventually("the wait is registered", || K::census(&client).watchers == 1).await;
    K::serve(&server, "late.ping", |(): ()| Ok("pong".to_string())).await.unwrap();
    within("the wait ends", waiting).await.unwrap();
    assert!(t.elapsed() < LONG / 2, "took {:?}", t.elapsed());
    // Once served, at once.
    K::wait_for_service(&client, "late", LONG).await.unwrap();
    assert_eq!(K::call::<_, String>(&client, "late.ping", ()).await.unwrap(), "pong");
    settle::<K>(&[&server, &client]).await;
}

async fn wait_for_service_times_out<K: Kit>(net: Net) {
    let bus = Bus::new(net);
    let hub = K::build("hub", &bus, &Cfg::default());
    let r = K::wait_for_service(&hub, "nobody", Duration::from_millis(50)).await;
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    settle::<K>(&[&hub]).await;
}

// ---------------------------------------------------------------------------------------------
// The matrix: one test per (behaviour, hub, transport)

macro_rules! tests {
    ($kit:ty, $net:expr; $($test:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            <$kit as Kit>::run(super::$test::<$kit>($net));
        }
    )*};
}

/// Every behaviour every hub has.
macro_rules! suite {
    ($kit:ty, $net:expr) => {
        tests!($kit, $net;
            unary_round_trip,
            missing_service_and_method,
            handler_error_and_panic,
            undecodable_request_is_a_bad_request,
            payload_too_large,
            invalid_topics_and_names,
            closed_hub_refuses_everything,
            server_busy,
            one_caller_leaves_the_others_a_share,
            timeout_cancels_the_handler,
            dropping_a_stream_cancels_the_server,
            stream_error_reaches_the_reader,
            slow_reader_is_paced_by_credit,
            wildcards,
            overflow_drop_newest,
            overflow_drop_oldest,
            reliable_subscription_loses_nothing,
            lent_bytes_arrive_as_they_were_sent,
            inline_handler,
            stuck_reliable_subscriber_is_cut_off,
            dropped_server_fails_calls_with_peer_lost,
            closed_server_fails_calls_with_peer_lost,
            close_fails_own_pending_calls,
            unserve_withdraws_the_service,
            handler_calling_its_own_hub,
            wait_for_service_wakes_when_served,
            wait_for_service_times_out,
        );
    };
}

/// The async hubs: every behaviour, plus a call future to drop and a handler closure that
/// panics before its future exists.
macro_rules! async_suite {
    ($exec:ty, $net:expr) => {
        suite!(Async<$exec>, $net);
        tests!(Async<$exec>, $net; dropping_a_call_cancels_the_handler);

        #[test]
        fn panic_before_the_future() {
            <$exec as Exec>::run(super::panic_before_the_future::<$exec>($net));
        }
    };
}

mod blocking_mem {
    use super::*;
    suite!(Blocking, Net::Mem);
}

mod blocking_ipmb {
    use super::*;
    suite!(Blocking, Net::Ipmb);
}

mod tokio_mem {
    use super::*;
    async_suite!(TokioMt, Net::Mem);
}

mod tokio_current_thread_mem {
    use super::*;
    async_suite!(TokioCt, Net::Mem);
}

mod tokio_ipmb {
    use super::*;
    async_suite!(TokioMt, Net::Ipmb);
}

mod smol_mem {
    use super::*;
    async_suite!(Smol, Net::Mem);
}

mod smol_ipmb {
    use super::*;
    async_suite!(Smol, Net::Ipmb);
}
