//! `ProcessHub`: one process's membership of a bus, and everything it does there.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hsipc_transport::proto::{PeerId, Topic, TopicFilter, codec};
use hsipc_transport::{
    Connect, Engine, EngineConfig, Error, Handle, IpmbBus, IpmbConfig, Overflow, PeerSummary, Result,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::serve::{Handlers, Pool, StreamSink, stream_handler, unary_handler};
use crate::stream::ResponseStream;
use crate::subscription::Subscription;

/// The name the earlier hsipc used for the blocking hub.
pub type SyncProcessHub = ProcessHub;

/// A hub on a bus: serves, calls, publishes and subscribes. Cheap to clone (clones share one
/// membership); the hub says goodbye when [`close`](Self::close)d or when the last clone drops.
#[derive(Clone, Debug)]
pub struct ProcessHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Mutex<Option<Engine>>,
    handle: Handle,
    handlers: Handlers,
    default_timeout: Duration,
    subscription_capacity: usize,
    subscription_overflow: Overflow,
    stream_stall_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let engine = self.engine.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut engine) = engine {
            engine.shutdown(Duration::from_secs(1));
        }
    }
}

/// Configures and creates a [`ProcessHub`].
#[derive(Debug)]
#[must_use]
pub struct HubBuilder {
    name: String,
    bus: Option<String>,
    engine: EngineConfig,
    max_message_len: usize,
    default_timeout: Duration,
    workers: usize,
    handler_queue: usize,
    subscription_overflow: Overflow,
    stream_stall_timeout: Duration,
    transport: Option<Box<dyn Connect>>,
}

impl HubBuilder {
    fn new(name: &str) -> Self {
        HubBuilder {
            name: name.to_string(),
            bus: None,
            engine: EngineConfig::default(),
            max_message_len: 32 << 20,
            default_timeout: Duration::from_secs(30),
            workers: 8,
            handler_queue: 1024,
            stream_stall_timeout: Duration::from_secs(60),
            subscription_overflow: Overflow::default(),
            transport: None,
        }
    }

    /// The bus to join. Default: the `HSIPC_BUS` environment variable, else `"hsipc"`.
    pub fn bus(mut self, bus: impl Into<String>) -> Self {
        self.bus = Some(bus.into());
        self
    }

    /// Timeout of [`ProcessHub::call`] and of each item of [`ProcessHub::call_stream`].
    /// Default 30 s.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Worker threads that run handlers. Default 8.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Calls queued for the workers before more are refused as busy. Default 1024.
    pub fn handler_queue(mut self, n: usize) -> Self {
        self.handler_queue = n.max(1);
        self
    }

    /// How often the hub announces itself, and after how long a silent peer is considered
    /// dead. Defaults 250 ms and 3 s. (A peer whose process exits is noticed sooner, through
    /// its process id.)
    pub fn heartbeat(mut self, interval: Duration, peer_timeout: Duration) -> Self {
        self.engine.proto.heartbeat_interval = interval;
        self.engine.proto.peer_timeout = peer_timeout;
        self
    }

    /// Largest message sent or accepted (payload plus a small header). Default 32 MiB.
    pub fn max_message_len(mut self, n: usize) -> Self {
        self.max_message_len = n;
        self
    }

    /// Events queued per subscription before its overflow policy drops one (see
    /// [`subscription_overflow`](Self::subscription_overflow)). Default 1024.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.engine.subscription_capacity = n.max(1);
        self
    }

    /// What a full subscription queue drops: the oldest event (the default: a slow subscriber
    /// keeps seeing the latest) or the newest. Either way the subscriber learns how many it
    /// missed.
    pub fn subscription_overflow(mut self, overflow: Overflow) -> Self {
        self.subscription_overflow = overflow;
        self
    }

    /// Stream items in flight per stream this hub reads (the credit window). Default 64.
    pub fn stream_window(mut self, n: u32) -> Self {
        self.engine.proto.stream_window = n.max(1);
        self
    }

    /// How long a serving stream's `send` waits for the reader's credit. Default 60 s.
    pub fn stream_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stream_stall_timeout = timeout;
        self
    }

    /// Uses another transport instead of the ipmb bus (e.g. `MemBus` for tests).
    pub fn transport(mut self, connect: Box<dyn Connect>) -> Self {
        self.transport = Some(connect);
        self
    }

    /// Joins the bus.
    pub fn build(self) -> Result<ProcessHub> {
        let bus = self.bus.or_else(|| std::env::var("HSIPC_BUS").ok()).unwrap_or_else(|| "hsipc".to_string());
        let mut engine_config = self.engine;
        engine_config.proto.max_frame_len = self.max_message_len;
        let connect = match self.transport {
            Some(c) => c,
            None => {
                let mut cfg = IpmbConfig::new(bus);
                cfg.max_message_len = self.max_message_len;
                IpmbBus::new(cfg).connector()
            }
        };
        let handlers = Handlers::default();
        let pool = Pool::new(self.workers, self.handler_queue, handlers.clone());
        let engine = Engine::start(engine_config.clone(), connect, new_peer_id(), &self.name, Box::new(pool))?;
        let handle = engine.handle().clone();
        Ok(ProcessHub {
            inner: Arc::new(Inner {
                engine: Mutex::new(Some(engine)),
                handle,
                handlers,
                default_timeout: self.default_timeout,
                subscription_capacity: engine_config.subscription_capacity,
                subscription_overflow: self.subscription_overflow,
                stream_stall_timeout: self.stream_stall_timeout,
            }),
        })
    }
}

/// A peer id no other hub will have: random, mixed with the process id and the time.
fn new_peer_id() -> PeerId {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    PeerId(h.finish())
}

/// How much longer than the engine's own deadline a caller waits before giving up on it: the
/// engine times calls out itself, so this only matters when its writer is stuck in a stalled
/// bus (then the caller still returns, this much after its deadline).
const GRACE: Duration = Duration::from_millis(100);

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
        self.inner.handle.name()
    }

    /// This hub's peer id.
    pub fn id(&self) -> PeerId {
        self.inner.handle.local()
    }

    /// Serves `method` (`"service.method"`): calls to it run `handler` on a worker thread. An
    /// `Err` from the handler reaches the caller as [`Error::Remote`] with its message.
    ///
    /// The service becomes visible to the bus with its first method: register all of a
    /// service's methods before telling clients it is up, or an early call to a later one gets
    /// [`Error::NoSuchMethod`].
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
        self.register(method, unary_handler(handler))
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
        self.register(method, stream_handler(handler, self.inner.stream_stall_timeout))
    }

    /// Stops serving `method`. When no method of its service is left, the service is withdrawn
    /// from the bus; calls to it already running finish normally.
    pub fn unserve(&self, method: &str) -> Result<()> {
        let Some((service, _)) = method.rsplit_once('.') else {
            return Err(Error::InvalidName { name: method.into(), reason: "a method is named `service.method`" });
        };
        if self.inner.handlers.remove(method) && !self.inner.handlers.serves(service) {
            self.inner.handle.unserve(service)?;
        }
        Ok(())
    }

    fn register(&self, method: &str, handler: crate::serve::Handler) -> Result<()> {
        let service = match method.rsplit_once('.') {
            Some((s, m)) if !s.is_empty() && !m.is_empty() => s,
            _ => {
                return Err(Error::InvalidName { name: method.into(), reason: "a method is named `service.method`" });
            }
        };
        self.inner.handlers.insert(method, handler);
        self.inner.handle.serve(service)
    }

    /// Calls `method` with the default timeout and decodes the response.
    pub fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(&self, method: &str, req: &Req) -> Result<Resp> {
        self.call_timeout(method, req, self.inner.default_timeout)
    }

    /// Calls `method`, failing with [`Error::Timeout`] if no answer arrives within `timeout`.
    pub fn call_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp> {
        let deadline = Instant::now() + timeout + GRACE;
        let body = codec::encode(req)?;
        let done = self.inner.handle.call(method, body, timeout)?;
        let bytes = wait(&done, deadline)??;
        Ok(codec::decode(&bytes)?)
    }

    /// Calls a streaming `method`. The stream is an iterator of items; each waits at most the
    /// default timeout while the server has credit to send. Dropping it cancels the stream at
    /// the server.
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// for line in hub.call_stream::<_, String>("logs.tail", &100u32)? {
    ///     println!("{}", line?); // a lost item or a server error ends the loop with an error
    /// }
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn call_stream<Req: Serialize + ?Sized, Item: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<ResponseStream<Item>> {
        self.call_stream_timeout(method, req, self.inner.default_timeout)
    }

    /// Calls a streaming `method`; each item may take at most `timeout` to arrive while the
    /// server has credit to send it (the wait is paused while this reader is behind).
    pub fn call_stream_timeout<Req: Serialize + ?Sized, Item: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<ResponseStream<Item>> {
        let body = codec::encode(req)?;
        let items = self.inner.handle.call_stream(method, body, timeout)?;
        Ok(ResponseStream::new(items, timeout + GRACE))
    }

    /// Publishes `event` on `topic` to every subscriber whose pattern matches, in other
    /// processes and in this one. Returns once the event is queued; events published before a
    /// subscriber's pattern has reached this hub are not delivered to it.
    ///
    /// ```no_run
    /// # let hub = hsipc_blocking::ProcessHub::new("doc").unwrap();
    /// #[derive(serde::Serialize)]
    /// struct Reading { celsius: f64 }
    /// hub.publish("sensor/kitchen/temperature", &Reading { celsius: 21.5 })?;
    /// # Ok::<(), hsipc_blocking::Error>(())
    /// ```
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, event: &T) -> Result<()> {
        let topic = Topic::new(topic)?;
        let body = codec::encode(event)?;
        self.inner.handle.publish(&topic, body)?;
        Ok(())
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
        let filter = TopicFilter::new(pattern)?;
        let events =
            self.inner.handle.subscribe(filter, self.inner.subscription_capacity, self.inner.subscription_overflow)?;
        Ok(Subscription::new(events))
    }

    /// Who is on the bus (this hub included) and what each serves.
    pub fn peers(&self) -> Result<Vec<PeerSummary>> {
        self.inner.handle.peers()
    }

    /// Counters of what this hub's protocol saw and dropped: frames in and out, malformed
    /// frames from peers, late or unknown responses, duplicates, events nobody matched.
    pub fn stats(&self) -> hsipc_transport::proto::Stats {
        self.inner.handle.stats()
    }

    /// Waits until some peer serves `service`; returns at once if one does already.
    pub fn wait_for_service(&self, service: &str, timeout: Duration) -> Result<()> {
        let done = self.inner.handle.watch_service(service)?;
        wait(&done, Instant::now() + timeout)
    }

    /// Says goodbye and leaves the bus. Pending calls fail with [`Error::Closed`]; later calls
    /// on any clone of this hub fail the same way.
    pub fn close(&self) {
        let engine = self.inner.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut engine) = engine {
            engine.shutdown(Duration::from_secs(1));
        }
    }
}

/// Waits for one value with a deadline.
pub(crate) fn wait<T>(rx: &flume::Receiver<T>, deadline: Instant) -> Result<T> {
    match rx.recv_deadline(deadline) {
        Ok(v) => Ok(v),
        Err(flume::RecvTimeoutError::Timeout) => Err(Error::Timeout),
        Err(flume::RecvTimeoutError::Disconnected) => Err(Error::Closed),
    }
}
