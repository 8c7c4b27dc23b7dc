//! `HubCore`: one membership of a bus, with everything every kind of hub does the same way.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::{CallMode, PeerId, Topic, TopicFilter, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::builder::Settings;
use super::handler::{self, Handler};
use super::registry::Registry;
use super::runtime::Spawner;
use crate::engine::{
    CallContext, Census, Engine, EventReceiver, Handle, ItemReceiver, ItemSink, PeerSummary, PendingCall, Publish, Qos,
    SessionSender, Waiter,
};
use crate::error::Result;

/// What every kind of hub is made of: the running engine, the handler registry and the
/// settings. Cheap to clone; the engine stops (without waiting) when the last clone drops.
///
/// The hubs users touch (`hsipc_blocking::ProcessHub`, [`AsyncHub`](super::AsyncHub)) wrap
/// it and add only how their caller waits.
#[derive(Clone, Debug)]
pub struct HubCore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    registry: Arc<Registry>,
    default_timeout: Duration,
    subscription_qos: Qos,
    publish_timeout: Duration,
}

impl HubCore {
    /// The runtime this hub's handlers run on.
    pub fn runtime(&self) -> &Arc<dyn super::runtime::Runtime> {
        self.inner.registry.runtime()
    }

    pub(crate) fn new(engine: Engine, registry: Arc<Registry>, settings: &Settings) -> Self {
        HubCore {
            inner: Arc::new(Inner {
                engine,
                registry,
                default_timeout: settings.default_timeout,
                subscription_qos: settings.subscription_qos,
                publish_timeout: settings.publish_timeout,
            }),
        }
    }

    fn handle(&self) -> &Handle {
        self.inner.engine.handle()
    }

    /// This hub's name.
    pub fn name(&self) -> &str {
        self.handle().name()
    }

    /// This hub's peer id.
    pub fn id(&self) -> PeerId {
        self.handle().local()
    }

    /// Timeout of calls made without one.
    pub fn default_timeout(&self) -> Duration {
        self.inner.default_timeout
    }

    /// How long a serving stream's send waits for credit.
    fn stall_timeout(&self) -> Duration {
        self.inner.registry.stall
    }

    /// Registers `handler` for `method` (`service.method`) and announces the service.
    fn register(&self, method: &str, handler: Handler, mode: CallMode) -> Result<()> {
        let service = self.inner.registry.insert(method, handler, mode)?;
        self.handle().serve(service)
    }

    /// Serves `method` with a blocking handler, run on a worker thread.
    pub fn serve_blocking<Req, Resp, E, F>(&self, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req, &CallContext) -> std::result::Result<Resp, E> + Send + Sync + 'static,
    {
        self.register(method, Handler::Blocking(handler::unary_fn(f)), CallMode::Unary)
    }

    /// Serves `method` with a plain function run inline, on the thread that read the request
    /// (see the adapters' `serve_inline`).
    pub fn serve_inline<Req, Resp, E, F>(&self, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req, &CallContext) -> std::result::Result<Resp, E> + Send + Sync + 'static,
    {
        self.register(method, Handler::Inline(handler::unary_fn(f)), CallMode::Unary)
    }

    /// Serves a streaming `method` with a blocking handler, run on a worker thread.
    pub fn serve_blocking_stream<Req, E, F>(&self, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        E: Display + 'static,
        F: Fn(Req, ItemSink) -> std::result::Result<(), E> + Send + Sync + 'static,
    {
        self.register(method, handler::blocking_stream(f, self.stall_timeout()), CallMode::ServerStream)
    }

    /// Serves `method` with an async handler, spawned as a task (on the blocking hub, driven
    /// on a worker thread).
    pub fn serve_async<S, Req, Resp, E, F, Fut>(&self, method: &str, spawner: S, f: F) -> Result<()>
    where
        S: Spawner,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Resp, E>> + Send + 'static,
    {
        self.register(method, handler::async_unary(spawner, f), CallMode::Unary)
    }

    /// Serves a streaming `method` with an async handler.
    pub fn serve_async_stream<S, Req, E, F, Fut>(&self, method: &str, spawner: S, f: F) -> Result<()>
    where
        S: Spawner,
        Req: DeserializeOwned + Send + 'static,
        E: Display + 'static,
        F: Fn(Req, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    {
        self.register(method, handler::async_stream(spawner, f, self.stall_timeout()), CallMode::ServerStream)
    }

    /// Serves a session `method` with a blocking handler: it gets the first message, its sink
    /// (messages to the client) and the reader of the client's messages.
    pub fn serve_blocking_session<Req, E, F>(&self, method: &str, f: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        E: Display + 'static,
        F: Fn(Req, ItemSink, ItemReceiver) -> std::result::Result<(), E> + Send + Sync + 'static,
    {
        self.register(method, handler::blocking_session(f, self.stall_timeout()), CallMode::Session)
    }

    /// Serves a session `method` with an async handler.
    pub fn serve_async_session<S, Req, E, F, Fut>(&self, method: &str, spawner: S, f: F) -> Result<()>
    where
        S: Spawner,
        Req: DeserializeOwned + Send + 'static,
        E: Display + 'static,
        F: Fn(Req, ItemSink, ItemReceiver) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    {
        self.register(method, handler::async_session(spawner, f, self.stall_timeout()), CallMode::Session)
    }

    /// Opens a session on `method` with the encoded first message: the sending half, and the
    /// reader of the server's messages (each may take at most `timeout` while the reader waits).
    /// Like every request here, `first` is taken by value so that a `Vec<u8>` or `Bytes` is
    /// moved into the frame, not copied (a reference works too, and is encoded; a borrowed byte
    /// slice of 16 KiB or more is lent to the frame while this runs, see `codec::with_body`).
    pub fn open_session<Req: Serialize>(
        &self,
        method: &str,
        first: Req,
        timeout: Duration,
    ) -> Result<(SessionSender, ItemReceiver)> {
        codec::with_body(first, |body| self.handle().open_session(method, body, timeout, self.stall_timeout()))?
    }

    /// Stops serving `method`; withdraws its service from the bus with its last method.
    pub fn unserve(&self, method: &str) -> Result<()> {
        match self.inner.registry.remove(method)? {
            Some(service) => self.handle().unserve(service),
            None => Ok(()),
        }
    }

    /// Starts a unary call with an encoded request.
    pub fn start_call<Req: Serialize>(&self, method: &str, req: Req, timeout: Duration) -> Result<PendingCall> {
        codec::with_body(req, |body| self.handle().call(method, body, timeout))?
    }

    /// Makes a unary call and waits for its answer on this thread (see [`Handle::call_wait`]).
    pub fn call_wait<Req: Serialize>(&self, method: &str, req: Req, timeout: Duration) -> Result<bytes::Bytes> {
        codec::with_body(req, |body| self.handle().call_wait(method, body, timeout))?
    }

    /// Starts a server-streaming call with an encoded request.
    pub fn start_stream<Req: Serialize>(&self, method: &str, req: Req, timeout: Duration) -> Result<ItemReceiver> {
        codec::with_body(req, |body| self.handle().call_stream(method, body, timeout))?
    }

    /// Publishes `event` on `topic`, blocking while the send backlog is long or a reliable
    /// subscriber has no credit (at most the publish timeout; see [`Handle::publish`]).
    pub fn publish_blocking<T: Serialize>(&self, topic: &str, event: T) -> Result<()> {
        let topic = Topic::new(topic)?;
        codec::with_body(event, |body| {
            let (started, deadline) = self.publish_clock();
            let mut now = started;
            loop {
                match self.handle().publish(&topic, body.clone(), now, started, deadline)? {
                    Publish::Queued(_) => return Ok(()),
                    Publish::Wait(room) => room.wait()?,
                }
                now = Instant::now();
            }
        })?
    }

    /// Publishes `event` on `topic`, waiting (without blocking a thread) while the send backlog
    /// is long or a reliable subscriber has no credit (at most the publish timeout). The event
    /// is encoded at once.
    pub fn publish_async<T: Serialize>(&self, topic: &str, event: T) -> impl Future<Output = Result<()>> + Send {
        let prepared = self.prepare_publish(topic, event);
        let core = self.clone();
        async move {
            let (topic, body, started, deadline) = prepared?;
            loop {
                // Read afresh: the future may be polled long after it was made.
                match core.handle().publish(&topic, body.clone(), Instant::now(), started, deadline)? {
                    Publish::Queued(_) => return Ok(()),
                    Publish::Wait(room) => room.await?,
                }
            }
        }
    }

    fn prepare_publish<T: Serialize>(
        &self,
        topic: &str,
        event: T,
    ) -> Result<(Topic, proto::frame::Body, Instant, Instant)> {
        let (topic, body) = (Topic::new(topic)?, codec::into_body(event)?);
        let (started, deadline) = self.publish_clock();
        Ok((topic, body, started, deadline))
    }

    /// A publish's start and deadline, read once its event is encoded: the first attempt
    /// publishes at the start.
    fn publish_clock(&self) -> (Instant, Instant) {
        let started = Instant::now();
        (started, crate::engine::deadline_after(started, self.inner.publish_timeout))
    }

    /// Subscribes to `pattern` with the hub's delivery (reliable unless the builder said
    /// otherwise).
    pub fn subscribe(&self, pattern: &str) -> Result<EventReceiver> {
        self.subscribe_with(pattern, self.inner.subscription_qos)
    }

    /// Subscribes to `pattern` with a delivery of its own.
    pub fn subscribe_with(&self, pattern: &str, qos: Qos) -> Result<EventReceiver> {
        self.handle().subscribe(TopicFilter::new(pattern)?, qos)
    }

    /// Completes once some peer serves `service`.
    pub fn watch_service(&self, service: &str, timeout: Duration) -> Result<Waiter<()>> {
        self.handle().watch_service(service, timeout)
    }

    /// Completes once some peer subscribes to a pattern matching `topic`.
    pub fn watch_subscriber(&self, topic: &str, timeout: Duration) -> Result<Waiter<()>> {
        self.handle().watch_subscriber(&Topic::new(topic)?, timeout)
    }

    /// Who is on the bus (this hub included) and what each serves.
    pub fn peers(&self) -> Result<Vec<PeerSummary>> {
        self.handle().peers()
    }

    /// Counters of what this hub's protocol saw and dropped.
    pub fn stats(&self) -> crate::Stats {
        self.handle().stats()
    }

    /// What is open in this hub, for leak checks.
    pub fn census(&self) -> Census {
        self.handle().census()
    }

    /// Starts the goodbye (never waits); the waiter completes once the hub has left the bus.
    ///
    /// Also forgets every handler: a handler that captured a clone of its own hub keeps the
    /// hub alive until then, so a hub whose handlers call it back must be closed explicitly.
    pub fn close(&self) -> Waiter<()> {
        self.inner.engine.shutdown();
        self.inner.registry.clear();
        self.inner.engine.stopped()
    }
}
