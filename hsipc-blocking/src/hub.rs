//! `ProcessHub`: one process's membership of a bus, for blocking code.

use std::sync::Arc;
use std::time::Duration;

use hsipc_transport::hub::{BoxingSpawner, HasCore, HubCore, Runtime, RuntimeKind, Service, Settings};
use hsipc_transport::proto::PeerId;
use hsipc_transport::{CallContext, Census, PeerSummary, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::iter::{ResponseStream, ServerSession, Session, StreamSink, Subscription};
use crate::pool::Pool;

/// The name the earlier hsipc used for the blocking hub.
pub type SyncProcessHub = ProcessHub;

/// Configures and creates a [`ProcessHub`]: `ProcessHub::builder(name)...build()`.
pub type HubBuilder = hsipc_transport::hub::HubBuilder<Threads>;

/// The blocking hub's kind: handlers run on a pool of worker threads.
#[derive(Debug)]
pub struct Threads;

impl RuntimeKind for Threads {
    type Hub = ProcessHub;
    type Spawner = BoxingSpawner;

    fn runtime(settings: &Settings) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(Pool::new(settings.workers)))
    }

    fn spawner(runtime: &Arc<dyn Runtime>) -> BoxingSpawner {
        BoxingSpawner(runtime.clone())
    }
}

/// A hub on a bus: serves, calls, publishes and subscribes, blocking the calling thread.
/// Cheap to clone (clones share one membership); the hub says goodbye when
/// [`close`](Self::close)d or when the last clone drops. (A handler that captures a clone of
/// its own hub keeps the hub alive: close such a hub explicitly.)
///
/// Every wait has a deadline, and the hub's own threads (not the caller's runtime, if any)
/// complete it, so the hub also works when called from inside an async runtime; there, prefer
/// the runtime's own hub, or `spawn_blocking`, to keep executor threads free.
#[derive(Clone, Debug)]
pub struct ProcessHub {
    core: HubCore,
}

impl HasCore for ProcessHub {
    type Spawner = BoxingSpawner;

    fn core(&self) -> &HubCore {
        &self.core
    }

    /// Async methods of a service run on the worker threads, each driven to completion there.
    fn spawner(&self) -> BoxingSpawner {
        BoxingSpawner(self.core.runtime().clone())
    }
}

impl From<HubCore> for ProcessHub {
    fn from(core: HubCore) -> Self {
        ProcessHub { core }
    }
}

impl ProcessHub {
    /// Joins the default bus (`HSIPC_BUS`, else `"hsipc"`) as `name`, which must be unique on
    /// the bus.
    pub fn new(name: &str) -> Result<ProcessHub> {
        Self::builder(name).build()
    }

    /// A builder for a hub named `name`.
    pub fn builder(name: &str) -> HubBuilder {
        HubBuilder::new(name)
    }

    /// This hub's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// This hub's peer id.
    pub fn id(&self) -> PeerId {
        self.core.id()
    }

    /// Serves `method` (`"service.method"`): calls to it run `handler` on a worker thread. An
    /// `Err` from the handler reaches the caller as [`Error::Remote`](crate::Error::Remote)
    /// with its message.
    ///
    /// The service becomes visible to the bus with its first method: register all of a
    /// service's methods before telling clients it is up, or an early call to a later one gets
    /// [`Error::NoSuchMethod`](crate::Error::NoSuchMethod).
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// hub.serve("calc.div", |(a, b): (i64, i64)| {
    ///     if b == 0 { Err("division by zero") } else { Ok(a / b) }
    /// })?;
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn serve<Req, Resp, E, F>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(Req) -> std::result::Result<Resp, E> + Send + Sync + 'static,
    {
        self.core.serve_blocking(method, move |req, _: &CallContext| handler(req))
    }

    /// A handler declared cheap: it runs right on the thread that read the request (no hand-over
    /// to a worker, which pays off when many calls come at once) and its answer is written from
    /// there. For handlers that return at once: no I/O, no waiting, no lock held for long, no
    /// call to another hub. While it runs, nothing else from the calling hub is read, so a slow one
    /// delays every frame that hub sends here (and a blocking one can stall them for good).
    /// The reading thread may be one of this hub's callers waiting for a reply from that hub
    /// (it reads the lane itself): then the handler runs on a thread this hub keeps for that
    /// (not a worker, which may all be busy), so it never runs on an application's thread in
    /// the middle of its call. It may also be an idle worker (one waits for jobs by reading
    /// the lane requests come through): the handler then runs on it, as on the lane's thread,
    /// and other jobs go to the other workers meanwhile.
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// hub.serve_inline("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b))?;
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn serve_inline<Req, Resp, E, F>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(Req) -> std::result::Result<Resp, E> + Send + Sync + 'static,
    {
        self.core.serve_inline(method, move |req, _: &CallContext| handler(req))
    }

    /// Like [`serve`](Self::serve), with the call's [`CallContext`]: who called, the deadline,
    /// and whether the call is still wanted (look at it between steps of long work).
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// hub.serve_with_context("jobs.crunch", |rounds: u32, ctx: &hsipc_blocking::CallContext| {
    ///     for _ in 0..rounds {
    ///         if ctx.is_cancelled() {
    ///             return Err("the caller is gone");
    ///         }
    ///         // ... one step of work ...
    ///     }
    ///     Ok(rounds)
    /// })?;
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn serve_with_context<Req, Resp, E, F>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(Req, &CallContext) -> std::result::Result<Resp, E> + Send + Sync + 'static,
    {
        self.core.serve_blocking(method, handler)
    }

    /// Serves a streaming `method`: `handler` sends items through the [`StreamSink`] (each send
    /// waits for the reader's credit, so a slow reader slows the handler, never bloats memory)
    /// and returns when the stream is complete.
    pub fn serve_stream<Req, Item, E, F>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Item: Serialize + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(Req, &StreamSink<Item>) -> std::result::Result<(), E> + Send + Sync + 'static,
    {
        self.core.serve_blocking_stream(method, move |req, sink| handler(req, &StreamSink::new(sink)))
    }

    /// Serves every method of a `#[hsipc::service]` service (`CalculatorService::new(imp)`),
    /// under its service name. Plain methods run on the worker threads, and so do async ones
    /// (each driven to completion on its worker).
    pub fn register_service<S: Service>(&self, service: S) -> Result<()> {
        service.register(self)
    }

    /// Serves a session `method`: a full-duplex, ordered channel with each client that opens
    /// one. `handler` gets the client's first message and its [`ServerSession`] (send, receive,
    /// iterate), runs on a worker thread for as long as the session lasts, and ends the session
    /// by returning. Each open session holds one of the hub's `workers` (8 by default): raise
    /// it for many concurrent sessions, or serve them from an async hub.
    pub fn serve_session<Req, In, Out, E, F>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(Req, &mut ServerSession<In, Out>) -> std::result::Result<(), E> + Send + Sync + 'static,
    {
        self.core
            .serve_blocking_session(method, move |req, sink, input| handler(req, &mut ServerSession::new(sink, input)))
    }

    /// Opens a session on `method` with a first message. Each message from the server may take
    /// at most the default timeout while this end waits; dropping the session closes it.
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// let mut chat = hub.open_session::<_, String, String>("chat.join", "ann")?;
    /// chat.send(&"hello".to_string())?;
    /// chat.close_send(); // no more from us; keep reading
    /// for line in chat {
    ///     println!("{}", line?);
    /// }
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn open_session<Req: Serialize, Out: Serialize, In: DeserializeOwned>(
        &self,
        method: &str,
        first: Req,
    ) -> Result<Session<Out, In>> {
        let (sender, input) = self.core.open_session(method, first, self.core.default_timeout())?;
        Ok(Session::new(sender, input))
    }

    /// Stops serving `method`. When no method of its service is left, the service is withdrawn
    /// from the bus; calls to it already running finish normally.
    pub fn unserve(&self, method: &str) -> Result<()> {
        self.core.unserve(method)
    }

    /// Calls `method` with the default timeout and decodes the response. The request may be a
    /// value or a reference.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(&self, method: &str, req: Req) -> Result<Resp> {
        self.call_timeout(method, req, self.core.default_timeout())
    }

    /// Calls `method`, failing with [`Error::Timeout`](crate::Error::Timeout) if no answer
    /// arrives within `timeout`.
    pub fn call_timeout<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<Resp> {
        hsipc_transport::hub::decode(self.core.call_wait(method, req, timeout))
    }

    /// Calls a streaming `method`. The stream is an iterator of items; each waits at most the
    /// default timeout while the server has credit to send. Dropping it cancels the stream at
    /// the server.
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// for line in hub.call_stream::<_, String>("logs.tail", 100u32)? {
    ///     println!("{}", line?); // a lost item or a server error ends the loop with an error
    /// }
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn call_stream<Req: Serialize, Item: DeserializeOwned>(
        &self,
        method: &str,
        req: Req,
    ) -> Result<ResponseStream<Item>> {
        self.call_stream_timeout(method, req, self.core.default_timeout())
    }

    /// Calls a streaming `method`; each item may take at most `timeout` to arrive while the
    /// server has credit to send it (the wait is paused while this reader is behind).
    pub fn call_stream_timeout<Req: Serialize, Item: DeserializeOwned>(
        &self,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<ResponseStream<Item>> {
        Ok(ResponseStream::new(self.core.start_stream(method, req, timeout)?))
    }

    /// Publishes `event` (a value or a reference) on `topic` to every subscriber whose pattern
    /// matches, in other processes and in this one. Returns once the event is queued; while a
    /// reliable subscriber has no credit left, or the bus does not keep up, it blocks instead of
    /// losing events: at most the hub's `publish_timeout` (10 s), after which a subscriber that
    /// gave no credit back for that long is cut off (and told), and a send queue still full
    /// fails the publish with `Error::LocalLimit`. Events published before a subscriber's
    /// pattern has reached this hub are not delivered to it. Publishing from the thread that
    /// reads this hub's own reliable subscription blocks once its window is full: read it on
    /// another thread.
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// #[derive(serde::Serialize)]
    /// struct Reading { celsius: f64 }
    /// hub.publish("sensor/kitchen/temperature", Reading { celsius: 21.5 })?;
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn publish<T: Serialize>(&self, topic: &str, event: T) -> Result<()> {
        self.core.publish_blocking(topic, event)
    }

    /// Subscribes to `pattern` (MQTT rules: `+` one level, `#` the rest). Dropping the
    /// subscription unsubscribes.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// let temperatures = hub.subscribe::<f64>("sensor/+/temperature")?;
    /// match temperatures.recv_timeout(Duration::from_secs(1)) {
    ///     Ok(ev) => println!("{} = {} ({} missed before)", ev.topic, ev.payload, ev.missed),
    ///     Err(hsipc_blocking::Error::Timeout) => println!("nothing for a second"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn subscribe<T: DeserializeOwned>(&self, pattern: &str) -> Result<Subscription<T>> {
        Ok(Subscription::new(self.core.subscribe(pattern)?))
    }

    /// Subscribes to `pattern` with a delivery of its own: [`Qos::Reliable`](crate::Qos)
    /// (every event; publishers wait for this subscriber), `Qos::KeepLast(n)` (the latest `n`)
    /// or `Qos::DropNewest(n)` (the earliest `n`, then a gap). What a lossy queue drops is
    /// counted in the next event's `missed` and in [`stats`](Self::stats); what a publisher
    /// drops for a cut-off reliable one is read as `Error::EventsLost` and counted in the
    /// publisher's stats.
    pub fn subscribe_with<T: DeserializeOwned>(&self, pattern: &str, qos: crate::Qos) -> Result<Subscription<T>> {
        Ok(Subscription::new(self.core.subscribe_with(pattern, qos)?))
    }

    /// Who is on the bus (this hub included) and what each serves.
    pub fn peers(&self) -> Result<Vec<PeerSummary>> {
        self.core.peers()
    }

    /// Counters of what this hub's protocol saw and dropped: frames in and out, malformed
    /// frames from peers, late or unknown responses, duplicates, events nobody matched.
    pub fn stats(&self) -> hsipc_transport::Stats {
        self.core.stats()
    }

    /// What is open in this hub (calls, streams, subscriptions, timers), for leak checks.
    pub fn census(&self) -> Census {
        self.core.census()
    }

    /// Waits until some peer serves `service`; returns at once if one does already.
    pub fn wait_for_service(&self, service: &str, timeout: Duration) -> Result<()> {
        self.core.watch_service(service, timeout)?.wait()
    }

    /// Waits until some peer (this hub included) subscribes to a pattern matching `topic`, so
    /// that events published right after start-up are not lost to a subscription still on its
    /// way; returns at once if one does already.
    pub fn wait_for_subscriber(&self, topic: &str, timeout: Duration) -> Result<()> {
        self.core.watch_subscriber(topic, timeout)?.wait()
    }

    /// Says goodbye and leaves the bus, waiting (about a second at most) until the goodbye is
    /// sent. Pending calls fail with [`Error::Closed`](crate::Error::Closed); later calls on
    /// any clone of this hub fail the same way.
    pub fn close(&self) {
        let _ = self.core.close().wait();
    }
}
