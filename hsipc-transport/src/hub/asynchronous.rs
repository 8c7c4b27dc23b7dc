//! The async surface, written once for every executor: tokio's and smol's `ProcessHub` are
//! this type with their own [`RuntimeKind`].

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use proto::{PeerId, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::builder::HubBuilder;
use super::core::HubCore;
use super::runtime::RuntimeKind;
use super::service::Service;
use super::typed::{Event, decode};
use crate::engine::{CallContext, Census, EventReceiver, ItemReceiver, ItemSink, PeerSummary, PendingCall};
use crate::error::{Error, Result};

/// A hub for async code: serves, calls, publishes and subscribes. `K` is the executor
/// (`hsipc_tokio::Tokio`, `hsipc_smol::Smol`); use it through those crates' `ProcessHub`.
///
/// Cheap to clone (clones share one membership), `Send + Sync`, and every future it returns
/// is `Send`. The hub says goodbye when [`close`](Self::close)d or when the last clone drops;
/// dropping never blocks the executor. (A handler that captures a clone of its own hub keeps
/// the hub alive: close such a hub explicitly.)
///
/// Waiting never needs a timer from the executor: the hub's engine ends every call, stream and
/// wait by its deadline itself, so a call's `.await` is one channel receive.
pub struct AsyncHub<K> {
    pub(crate) core: HubCore,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for AsyncHub<K> {
    fn clone(&self) -> Self {
        AsyncHub { core: self.core.clone(), _kind: PhantomData }
    }
}

impl<K> std::fmt::Debug for AsyncHub<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncHub").field("name", &self.core.name()).finish()
    }
}

impl<K> From<HubCore> for AsyncHub<K> {
    fn from(core: HubCore) -> Self {
        AsyncHub { core, _kind: PhantomData }
    }
}

impl<K: RuntimeKind<Hub = AsyncHub<K>>> AsyncHub<K> {
    /// Joins the default bus (`HSIPC_BUS`, else `"hsipc"`) as `name`, which must be unique on
    /// the bus. Joining runs on a thread of its own: the executor is never blocked by it.
    pub async fn new(name: &str) -> Result<Self> {
        Self::builder(name).build_async().await
    }

    /// A builder for a hub named `name`.
    pub fn builder(name: &str) -> HubBuilder<K> {
        HubBuilder::new(name)
    }
}

impl<K> AsyncHub<K> {
    /// This hub's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// This hub's peer id.
    pub fn id(&self) -> PeerId {
        self.core.id()
    }

    /// A handler declared cheap: it runs right on the thread that read the request (no task to
    /// spawn and wake) and its answer is written from there. For handlers that return at once:
    /// no I/O, no waiting, no lock held for long, no call to another hub. While it runs,
    /// nothing else from the calling hub is read, so a slow one delays every frame that hub
    /// sends here (and a blocking one can stall them for good).
    /// A plain function, not a future: it runs on the thread that read the request (for a call
    /// from this hub itself, the caller's thread). On the smol hub that is inside async-io's
    /// reactor (which reads the lanes), so there it must above all never wait for anything the
    /// reactor delivers (no `block_on`): the whole process's I/O would wait with it.
    ///
    /// ```no_run
    /// # async fn f<K: hsipc_transport::hub::RuntimeKind>(hub: hsipc_transport::hub::AsyncHub<K>) -> hsipc_transport::Result<()> {
    /// hub.serve_inline("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_inline<Req, Resp, E, F>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(Req) -> std::result::Result<Resp, E> + Send + Sync + 'static,
    {
        self.core.serve_inline(method, move |req, _: &crate::CallContext| handler(req))
    }

    /// Opens a session on `method` with a first message: send with `send(&msg).await`, read the
    /// server's messages as a [`Stream`] (its end is `None`, not an error). Each message may
    /// take at most the default timeout to come while this end waits. Dropping the session
    /// closes it.
    pub fn open_session<Req: Serialize, Out: Serialize, In: DeserializeOwned>(
        &self,
        method: &str,
        first: Req,
    ) -> impl Future<Output = Result<Session<Out, In>>> + Send {
        let opened = self.core.open_session(method, first, self.core.default_timeout());
        std::future::ready(opened.map(|(sender, input)| Session { sender, input, _types: PhantomData }))
    }

    /// Stops serving `method`. When no method of its service is left, the service is withdrawn
    /// from the bus; calls already running finish normally.
    pub async fn unserve(&self, method: &str) -> Result<()> {
        self.core.unserve(method)
    }

    /// Calls `method` with the default timeout. The request may be a value or a reference.
    /// Dropping the future before it completes cancels the call at the server.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(&self, method: &str, req: Req) -> CallFuture<Resp> {
        self.call_timeout(method, req, self.core.default_timeout())
    }

    /// Calls `method`, failing with [`Error::Timeout`] if no answer arrives within `timeout`.
    pub fn call_timeout<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> CallFuture<Resp> {
        CallFuture::new(self.core.start_call(method, req, timeout))
    }

    /// Calls a streaming `method`: its items as a [`Stream`], each waiting at most the default
    /// timeout while the server has credit to send. Dropping the stream cancels it at the
    /// server.
    pub fn call_stream<Req: Serialize, Item: DeserializeOwned>(
        &self,
        method: &str,
        req: Req,
    ) -> impl Future<Output = Result<ResponseStream<Item>>> + Send {
        self.call_stream_timeout(method, req, self.core.default_timeout())
    }

    /// Calls a streaming `method`; each item may take at most `timeout` while the server has
    /// credit to send it.
    pub fn call_stream_timeout<Req: Serialize, Item: DeserializeOwned>(
        &self,
        method: &str,
        req: Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<ResponseStream<Item>>> + Send {
        let started = self.core.start_stream(method, req, timeout).map(ResponseStream::new);
        std::future::ready(started)
    }

    /// Publishes `event` (a value or a reference) on `topic` to every subscriber whose pattern
    /// matches, in other processes and in this one.
    ///
    /// While a reliable subscriber has no credit left, or the bus does not keep up, the publisher
    /// waits (without blocking a thread) instead of losing events: at most the hub's
    /// `publish_timeout` (10 s), after which a subscriber that gave no credit back for that long
    /// is cut off (and told), and a send queue still full fails with `Error::LocalLimit`.
    pub fn publish<T: Serialize>(&self, topic: &str, event: T) -> impl Future<Output = Result<()>> + Send {
        self.core.publish_async(topic, event)
    }

    /// Subscribes to `pattern` (MQTT rules: `+` one level, `#` the rest): the events as a
    /// [`Stream`]. Dropping it unsubscribes.
    pub async fn subscribe<T: DeserializeOwned>(&self, pattern: &str) -> Result<Subscription<T>> {
        Ok(Subscription::new(self.core.subscribe(pattern)?))
    }

    /// Subscribes to `pattern` with a delivery of its own: [`Qos::Reliable`](crate::Qos)
    /// (every event; publishers wait for this subscriber), `Qos::KeepLast(n)` (a sensor-style
    /// reader that wants the latest `n` values) or `Qos::DropNewest(n)` (the earliest `n`, then a
    /// gap). What a lossy queue drops is counted in the next event's `missed` and in
    /// [`stats`](Self::stats); what a publisher drops for a cut-off reliable one is read as
    /// `Error::EventsLost` and counted in the publisher's stats.
    pub async fn subscribe_with<T: DeserializeOwned>(&self, pattern: &str, qos: crate::Qos) -> Result<Subscription<T>> {
        Ok(Subscription::new(self.core.subscribe_with(pattern, qos)?))
    }

    /// Who is on the bus (this hub included) and what each serves.
    pub fn peers(&self) -> Result<Vec<PeerSummary>> {
        self.core.peers()
    }

    /// Counters of what this hub's protocol saw and dropped.
    pub fn stats(&self) -> crate::Stats {
        self.core.stats()
    }

    /// What is open in this hub (calls, streams, subscriptions, timers), for leak checks.
    pub fn census(&self) -> Census {
        self.core.census()
    }

    /// Waits until some peer serves `service`; completes at once if one does already.
    pub async fn wait_for_service(&self, service: &str, timeout: Duration) -> Result<()> {
        self.core.watch_service(service, timeout)?.await
    }

    /// Waits until some peer (this hub included) subscribes to a pattern matching `topic`, so
    /// that events published right after start-up are not lost to a subscription still on its
    /// way; completes at once if one does already.
    pub async fn wait_for_subscriber(&self, topic: &str, timeout: Duration) -> Result<()> {
        self.core.watch_subscriber(topic, timeout)?.await
    }

    /// Says goodbye and leaves the bus. Pending calls fail with [`Error::Closed`]; later calls
    /// on any clone of this hub fail the same way.
    pub async fn close(&self) {
        let _ = self.core.close().await;
    }
}

/// Serving with async handlers: each call's task is spawned with its future's own type, on the
/// runtime of the hub's kind.
impl<K: RuntimeKind> AsyncHub<K> {
    /// How this hub spawns its async handlers.
    fn task_spawner(&self) -> K::Spawner {
        K::spawner(self.core.runtime())
    }

    /// Serves `method` (`"service.method"`): each call runs `handler`'s future as a task. An
    /// `Err` reaches the caller as [`Error::Remote`] with its message. The future is dropped
    /// when the caller cancels, dies or its deadline passes.
    ///
    /// The service becomes visible to the bus with its first method: register all of a
    /// service's methods before telling clients it is up.
    pub async fn serve<Req, Resp, E, F, Fut>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Resp, E>> + Send + 'static,
    {
        self.core.serve_async(method, self.task_spawner(), move |req, _ctx| handler(req))
    }

    /// Like [`serve`](Self::serve), with the call's [`CallContext`] (caller, deadline,
    /// cancellation) given to the handler.
    pub async fn serve_with_context<Req, Resp, E, F, Fut>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Resp, E>> + Send + 'static,
    {
        self.core.serve_async(method, self.task_spawner(), handler)
    }

    /// Serves a streaming `method`: the handler sends items through its [`StreamSink`], whose
    /// `send().await` waits for the reader's credit (a slow reader slows the handler, never
    /// bloats memory), and returns when the stream is complete.
    pub async fn serve_stream<Req, Item, E, F, Fut>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Item: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req, StreamSink<Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    {
        self.core.serve_async_stream(method, self.task_spawner(), move |req, sink| handler(req, StreamSink::new(sink)))
    }

    /// Serves every method of a `#[hsipc::service]` service (`CalculatorService::new(imp)`),
    /// under its service name. Async methods run as tasks, plain ones on the runtime's
    /// blocking pool.
    pub async fn register_service<S: Service>(&self, service: S) -> Result<()> {
        service.register(self)
    }

    /// Serves a session `method`: a full-duplex, ordered channel with each client that opens
    /// one. The handler gets the client's first message and its [`ServerSession`], sends with
    /// `send(&msg).await` and reads the client's messages as a [`Stream`] (which ends when the
    /// client closes its half or drops its session); returning ends the session.
    pub async fn serve_session<Req, In, Out, E, F, Fut>(&self, method: &str, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        E: Display + 'static,
        F: Fn(Req, ServerSession<In, Out>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    {
        self.core.serve_async_session(method, self.task_spawner(), move |req, sink, input| {
            handler(req, ServerSession { sink: StreamSink::new(sink), input, _in: PhantomData })
        })
    }
}

/// The response of a call from an [`AsyncHub`]. Dropping it before it completes cancels the
/// call at the server.
#[must_use = "a call future does nothing useful unless awaited; dropping it cancels the call"]
#[derive(Debug)]
pub struct CallFuture<T> {
    state: CallState,
    _resp: PhantomData<fn() -> T>,
}

#[derive(Debug)]
enum CallState {
    Failed(Option<Error>),
    Started(PendingCall),
}

impl<T> CallFuture<T> {
    fn new(started: Result<PendingCall>) -> Self {
        let state = match started {
            Ok(call) => CallState::Started(call),
            Err(e) => CallState::Failed(Some(e)),
        };
        CallFuture { state, _resp: PhantomData }
    }
}

impl<T: DeserializeOwned> Future for CallFuture<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        match &mut self.get_mut().state {
            CallState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Closed))),
            CallState::Started(call) => Pin::new(call).poll(cx).map(decode),
        }
    }
}

/// The items of a streaming call, as a [`Stream`]. The server runs ahead of this reader by at
/// most the credit window. Dropping it before its end cancels it at the server.
#[derive(Debug)]
pub struct ResponseStream<T> {
    items: ItemReceiver,
    _item: PhantomData<fn() -> T>,
}

impl<T> ResponseStream<T> {
    fn new(items: ItemReceiver) -> Self {
        ResponseStream { items, _item: PhantomData }
    }

    /// Stops the stream now (the server's next send fails with [`Error::Cancelled`]).
    pub fn cancel(mut self) {
        self.items.cancel();
    }
}

impl<T: DeserializeOwned> Stream for ResponseStream<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        Pin::new(&mut self.get_mut().items).poll_next(cx).map(|item| item.map(decode))
    }
}

/// Events matching a pattern, as a [`Stream`] that ends when the hub closes. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct Subscription<T> {
    events: EventReceiver,
    _event: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    fn new(events: EventReceiver) -> Self {
        Subscription { events, _event: PhantomData }
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<Event<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Event<T>>>> {
        Pin::new(&mut self.get_mut().events).poll_next(cx).map(|d| d.map(|d| d.and_then(Event::decode)))
    }
}

/// Where a streaming handler sends its items: `send(&item).await` from async code,
/// [`send_blocking`](Self::send_blocking) from a thread. Each send waits while the reader has
/// granted no credit, so a slow reader slows the handler instead of filling memory.
pub struct StreamSink<Item> {
    sink: ItemSink,
    encode: fn(&Item) -> Result<proto::frame::Body>,
}

impl<Item> std::fmt::Debug for StreamSink<Item> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink").field("sink", &self.sink).finish_non_exhaustive()
    }
}

impl<Item> StreamSink<Item> {
    fn new(sink: ItemSink) -> Self
    where
        Item: Serialize,
    {
        StreamSink { sink, encode: |item| Ok(codec::encode_body(item)?) }
    }
}

impl<Item> StreamSink<Item> {
    /// A sink whose items go on the wire as `encode` makes them (a `#[service]` method's items
    /// carry its error type's framing).
    pub(crate) fn with_encoder(sink: ItemSink, encode: fn(&Item) -> Result<proto::frame::Body>) -> Self {
        StreamSink { sink, encode }
    }

    /// Sends one item, waiting (without blocking a thread) while the reader has granted no
    /// credit, at most the hub's stream stall timeout. Fails with [`Error::Cancelled`] once the
    /// caller has cancelled, dropped the stream or died: return from the handler then.
    pub fn send(&self, item: &Item) -> impl Future<Output = Result<()>> + Send + '_ {
        let body = (self.encode)(item);
        async move { self.sink.send_async(body?).await }
    }

    /// Sends one item from a thread, blocking while the reader has granted no credit (at most
    /// the hub's stream stall timeout).
    pub fn send_blocking(&self, item: &Item) -> Result<()> {
        self.sink.send((self.encode)(item)?)
    }

    /// The call being served: caller, deadline, cancellation.
    pub fn context(&self) -> &CallContext {
        self.sink.context()
    }
}

/// The client's end of a session from an [`AsyncHub`]: `send(&msg).await` (paced by the
/// server's credit), the server's messages as a [`Stream`]. Dropping it closes the session.
#[derive(Debug)]
pub struct Session<Out, In> {
    sender: crate::engine::SessionSender,
    input: ItemReceiver,
    _types: PhantomData<fn(&Out) -> In>,
}

impl<Out: Serialize, In: DeserializeOwned> Session<Out, In> {
    /// Sends one message from a thread, blocking while the server has granted no credit.
    pub fn send_blocking(&self, msg: &Out) -> Result<()> {
        codec::with_body(msg, |body| self.sender.send(body))?
    }

    /// The server's next message, blocking the calling thread: `None` once the server has ended
    /// the session.
    pub fn recv_blocking(&mut self) -> Option<Result<In>> {
        self.input.recv().transpose().map(decode)
    }
}

impl<Out: Serialize, In> Session<Out, In> {
    /// Sends one message, waiting (without blocking a thread) while the server has granted no
    /// credit. Fails once the session is over.
    pub fn send(&self, msg: &Out) -> impl Future<Output = Result<()>> + Send + '_ {
        let body = codec::encode_body(msg);
        async move { self.sender.send_async(body?).await }
    }

    /// Ends this end's sending half; the server's messages can still be read.
    pub fn close_send(&mut self) {
        self.sender.close();
    }
}

impl<Out, In: DeserializeOwned> Stream for Session<Out, In> {
    type Item = Result<In>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<In>>> {
        Pin::new(&mut self.get_mut().input).poll_next(cx).map(|item| item.map(decode))
    }
}

/// The server's end of a session: `send(&msg).await` to the client, the client's messages as a
/// [`Stream`] (ending when the client closes its half or drops its session).
#[derive(Debug)]
pub struct ServerSession<In, Out> {
    sink: StreamSink<Out>,
    input: ItemReceiver,
    _in: PhantomData<fn() -> In>,
}

impl<In, Out: Serialize> ServerSession<In, Out> {
    /// Sends one message to the client, waiting (without blocking a thread) for its credit.
    pub fn send(&self, msg: &Out) -> impl Future<Output = Result<()>> + Send + '_ {
        self.sink.send(msg)
    }

    /// The call being served: caller, deadline, cancellation.
    pub fn context(&self) -> &CallContext {
        self.sink.context()
    }
}

impl<In: DeserializeOwned, Out> Stream for ServerSession<In, Out> {
    type Item = Result<In>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<In>>> {
        Pin::new(&mut self.get_mut().input).poll_next(cx).map(|item| item.map(decode))
    }
}

/// The server's end of a session, from its parts (for `#[service]` session methods).
pub fn server_session<In, Out: Serialize>(sink: ItemSink, input: ItemReceiver) -> ServerSession<In, Out> {
    ServerSession { sink: StreamSink::new(sink), input, _in: PhantomData }
}

/// Opens a session on `service.method` (for `#[service]` clients).
pub fn open_session<Args: Serialize, Out, In>(
    hub: &HubCore,
    service: &str,
    method: &str,
    first: &Args,
    timeout: Option<Duration>,
) -> Result<Session<Out, In>> {
    let timeout = timeout.unwrap_or_else(|| hub.default_timeout());
    let (sender, input) = hub.open_session(&format!("{service}.{method}"), first, timeout)?;
    Ok(Session { sender, input, _types: PhantomData })
}
