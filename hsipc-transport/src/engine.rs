//! The engine: the one piece that pumps frames between a [`Transport`] and a protocol
//! [`Endpoint`], runs its timers, and wakes whoever waits. Every adapter uses it as it is.
//!
//! The engine runs on its own thread and owns the endpoint and the transport's sending side;
//! nothing else touches them. Everything reaches it through one bounded [`Mail`] queue: frames
//! from the transport's reader, commands from the application (through a [`Handle`]). Results
//! go back through channels that work from threads and from futures alike (flume: `recv`,
//! `recv_deadline` and `recv_async` on the same receiver), so a blocking caller and an async
//! caller wait on the same type and the adapters contain only their way of waiting.
//!
//! Why a thread of its own: the transport's `send` can block (ipmb blocks when the bus
//! controller is stalled). Keeping that on one thread means an application thread never hangs
//! in the bus (it waits on its own deadline), and the reader thread, which never waits for the
//! engine, keeps draining the bus, so two busy processes can never deadlock each other
//! through the controller.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::{
    CallMode, CallRef, Config, Dest, Endpoint, Event, IncomingId, Input, Output, PeerId,
    RemoteError, RequestId, SubscriptionId, Topic, TopicFilter,
};

use crate::error::{Error, Result};
use crate::liveness::Liveness;
use crate::mailbox::{Inbox, Mail};
use crate::transport::{Connect, Transport};

/// Settings of one engine (one hub).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The protocol's limits and timings.
    pub proto: Config,
    /// Capacity of the mailbox (received frames plus commands). Default 8192.
    pub mailbox_capacity: usize,
    /// Events queued per subscription before the newest are dropped (and reported as missed).
    /// Default 1024.
    pub subscription_capacity: usize,
    /// How often the engine checks whether known peer processes are still alive. Default 100 ms.
    pub liveness_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            proto: Config::default(),
            mailbox_capacity: 8192,
            subscription_capacity: 1024,
            liveness_interval: Duration::from_millis(100),
        }
    }
}

/// A call this hub serves, as handed to the adapter's [`Dispatcher`].
#[derive(Debug)]
pub struct IncomingCall {
    /// The call's id, for [`Handle::respond`], [`Handle::send_item`] and [`Handle::finish`].
    pub id: IncomingId,
    /// The caller.
    pub from: PeerId,
    /// `service.method`.
    pub method: String,
    /// The request body (CBOR).
    pub body: Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Unary, server stream or session.
    pub mode: CallMode,
}

/// Why a dispatcher did not take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No handler for this method.
    NoSuchMethod,
    /// The handler queue is full.
    Busy(String),
}

/// The adapter's side of serving: runs handlers its own way (a thread pool, tokio tasks, ...).
pub trait Dispatcher: Send + 'static {
    /// A call arrived. Start its handler and return at once (this runs on the engine thread).
    /// The handler answers through `handle` ([`Handle::respond`], [`Handle::send_item`],
    /// [`Handle::finish`]).
    fn dispatch(&mut self, call: IncomingCall, handle: &Handle) -> std::result::Result<(), Reject>;
}

/// One event delivered to a subscription.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The publisher.
    pub from: PeerId,
    /// The topic it was published on.
    pub topic: Topic,
    /// The event body (CBOR).
    pub body: Bytes,
    /// Events lost before this one (dropped in transit, or because this subscription's queue
    /// was full).
    pub missed: u64,
}

/// What a stream's reader receives.
#[derive(Debug)]
pub enum StreamMsg {
    /// The next item.
    Item(Bytes),
    /// The stream ended: cleanly, or with why it failed.
    End(Result<()>),
}

/// A peer as shown to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSummary {
    /// Its id.
    pub id: PeerId,
    /// Its hub name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// The services it serves.
    pub services: Vec<String>,
    /// The topic patterns it subscribes to.
    pub patterns: Vec<String>,
    /// Whether it is this hub.
    pub is_local: bool,
}

/// A command from the application. Built by [`Handle`]; public only so [`Mail`] can carry it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    #[doc(hidden)]
    Call {
        method: String,
        body: Bytes,
        timeout: Duration,
        done: flume::Sender<Result<Bytes>>,
    },
    #[doc(hidden)]
    CallStream {
        method: String,
        body: Bytes,
        timeout: Duration,
        opened: flume::Sender<Result<RequestId>>,
        items: flume::Sender<StreamMsg>,
    },
    #[doc(hidden)]
    Consumed { id: RequestId, n: u32 },
    #[doc(hidden)]
    Cancel { id: RequestId },
    #[doc(hidden)]
    Respond {
        id: IncomingId,
        result: std::result::Result<Bytes, RemoteError>,
    },
    #[doc(hidden)]
    SendItem {
        id: IncomingId,
        body: Bytes,
        done: flume::Sender<Result<()>>,
    },
    #[doc(hidden)]
    Finish {
        id: IncomingId,
        result: std::result::Result<(), RemoteError>,
    },
    #[doc(hidden)]
    Publish {
        topic: Topic,
        body: Bytes,
        done: Option<flume::Sender<Result<usize>>>,
    },
    #[doc(hidden)]
    Subscribe {
        filter: TopicFilter,
        events: flume::Sender<Delivery>,
        done: flume::Sender<Result<SubscriptionId>>,
    },
    #[doc(hidden)]
    Unsubscribe { id: SubscriptionId },
    #[doc(hidden)]
    Serve {
        service: String,
        done: flume::Sender<Result<()>>,
    },
    #[doc(hidden)]
    Peers {
        done: flume::Sender<Vec<PeerSummary>>,
    },
    #[doc(hidden)]
    WatchService {
        service: String,
        done: flume::Sender<()>,
    },
}

/// The application's handle on a running engine. Cheap to clone; every method returns at once
/// (at most it waits for room in the mailbox), and results come back on channels.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: flume::Sender<Mail>,
    local: PeerId,
    name: Arc<str>,
    max_frame_len: usize,
    window: u32,
}

/// How long a command may wait for room in a full mailbox before failing.
const MAILBOX_WAIT: Duration = Duration::from_secs(5);

impl Handle {
    /// This hub's peer id.
    pub fn local(&self) -> PeerId {
        self.local
    }

    /// This hub's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The largest payload that fits in a frame.
    pub fn max_payload_len(&self) -> usize {
        self.max_frame_len.saturating_sub(proto::frame::HEADER_LEN)
    }

    /// The credit window of streams this hub reads.
    pub fn stream_window(&self) -> u32 {
        self.window
    }

    /// Starts a unary call; the outcome arrives on the returned channel (always, at the latest
    /// at the deadline).
    pub fn call(
        &self,
        method: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<flume::Receiver<Result<Bytes>>> {
        self.check_len(method.len() + body.len())?;
        let (done, rx) = flume::bounded(1);
        self.send(Command::Call {
            method: method.to_string(),
            body,
            timeout,
            done,
        })?;
        Ok(rx)
    }

    /// Starts a server-streaming call. The first channel yields the call's id (or why it could
    /// not start); the second the items and the end. Report consumed items with
    /// [`consumed`](Self::consumed), or items stop at the credit window.
    #[allow(clippy::type_complexity)]
    pub fn call_stream(
        &self,
        method: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(
        flume::Receiver<Result<RequestId>>,
        flume::Receiver<StreamMsg>,
    )> {
        self.check_len(method.len() + body.len())?;
        let (opened, opened_rx) = flume::bounded(1);
        // Credit bounds the items in flight to one window; +1 for the end.
        let (items, items_rx) = flume::bounded(self.window as usize + 1);
        self.send(Command::CallStream {
            method: method.to_string(),
            body,
            timeout,
            opened,
            items,
        })?;
        Ok((opened_rx, items_rx))
    }

    /// The reader of stream `id` took `n` items.
    pub fn consumed(&self, id: RequestId, n: u32) {
        let _ = self.send(Command::Consumed { id, n });
    }

    /// Cancels outgoing call `id` (the server is told).
    pub fn cancel(&self, id: RequestId) {
        let _ = self.send(Command::Cancel { id });
    }

    /// Answers a unary call.
    pub fn respond(&self, id: IncomingId, result: std::result::Result<Bytes, RemoteError>) {
        let _ = self.send(Command::Respond { id, result });
    }

    /// Sends one item of a stream this hub serves; the channel says when it was accepted (which
    /// may wait for the reader's credit) or why not.
    pub fn send_item(&self, id: IncomingId, body: Bytes) -> Result<flume::Receiver<Result<()>>> {
        self.check_len(body.len())?;
        let (done, rx) = flume::bounded(1);
        self.send(Command::SendItem { id, body, done })?;
        Ok(rx)
    }

    /// Ends a stream this hub serves.
    pub fn finish(&self, id: IncomingId, result: std::result::Result<(), RemoteError>) {
        let _ = self.send(Command::Finish { id, result });
    }

    /// Publishes an event. With `confirm`, the channel yields how many peers it was sent to.
    pub fn publish(
        &self,
        topic: Topic,
        body: Bytes,
        confirm: bool,
    ) -> Result<Option<flume::Receiver<Result<usize>>>> {
        self.check_len(topic.as_str().len() + body.len())?;
        let (done, rx) = if confirm {
            let (tx, rx) = flume::bounded(1);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.send(Command::Publish { topic, body, done })?;
        Ok(rx)
    }

    /// Subscribes; events arrive on the second channel (bounded; see
    /// [`EngineConfig::subscription_capacity`]).
    #[allow(clippy::type_complexity)]
    pub fn subscribe(
        &self,
        filter: TopicFilter,
        capacity: usize,
    ) -> Result<(
        flume::Receiver<Result<SubscriptionId>>,
        flume::Receiver<Delivery>,
    )> {
        let (done, done_rx) = flume::bounded(1);
        let (events, events_rx) = flume::bounded(capacity.max(1));
        self.send(Command::Subscribe {
            filter,
            events,
            done,
        })?;
        Ok((done_rx, events_rx))
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let _ = self.send(Command::Unsubscribe { id });
    }

    /// Starts serving a service (announced to the bus).
    pub fn serve(&self, service: &str) -> Result<flume::Receiver<Result<()>>> {
        let (done, rx) = flume::bounded(1);
        self.send(Command::Serve {
            service: service.to_string(),
            done,
        })?;
        Ok(rx)
    }

    /// A snapshot of the peer directory.
    pub fn peers(&self) -> Result<flume::Receiver<Vec<PeerSummary>>> {
        let (done, rx) = flume::bounded(1);
        self.send(Command::Peers { done })?;
        Ok(rx)
    }

    /// The channel yields `()` as soon as some peer serves `service` (at once if one does).
    pub fn watch_service(&self, service: &str) -> Result<flume::Receiver<()>> {
        let (done, rx) = flume::bounded(1);
        self.send(Command::WatchService {
            service: service.to_string(),
            done,
        })?;
        Ok(rx)
    }

    /// Asks the engine to say goodbye and stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send_timeout(Mail::Shutdown, MAILBOX_WAIT);
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let max = self.max_payload_len();
        if len > max {
            Err(Error::PayloadTooLarge { len, max })
        } else {
            Ok(())
        }
    }

    fn send(&self, cmd: Command) -> Result<()> {
        match self.tx.send_timeout(Mail::Command(cmd), MAILBOX_WAIT) {
            Ok(()) => Ok(()),
            Err(flume::SendTimeoutError::Timeout(_)) => Err(Error::Overloaded(
                "the hub's engine has not taken commands for 5 s (is the bus stalled?)".into(),
            )),
            Err(flume::SendTimeoutError::Disconnected(_)) => Err(Error::Closed),
        }
    }
}

/// A running engine: its thread, and a [`Handle`] to command it.
#[derive(Debug)]
pub struct Engine {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    stopped: flume::Receiver<()>,
    dropped: Inbox,
}

impl Engine {
    /// Connects the transport and starts the engine thread for peer `local` named `name`.
    pub fn start(
        config: EngineConfig,
        connect: Box<dyn Connect>,
        local: PeerId,
        name: &str,
        dispatcher: Box<dyn Dispatcher>,
    ) -> Result<Engine> {
        let (tx, rx) = flume::bounded(config.mailbox_capacity.max(16));
        let inbox = Inbox::new(tx.clone());
        let transport = connect.connect(local, name, inbox.clone())?;
        let max_frame_len = config.proto.max_frame_len.min(transport.max_frame_len());
        let mut proto_config = config.proto.clone();
        proto_config.max_frame_len = max_frame_len;
        let handle = Handle {
            tx,
            local,
            name: name.into(),
            max_frame_len,
            window: proto_config.stream_window,
        };
        let pid = std::process::id();
        let now = Instant::now();
        let endpoint = Endpoint::new(proto_config, local, name, pid, now);
        let (stopped_tx, stopped) = flume::bounded(1);
        let mut core = Core {
            handle: handle.clone(),
            endpoint,
            transport,
            dispatcher,
            liveness: Liveness::new(pid),
            next_liveness: now + config.liveness_interval,
            config,
            calls: HashMap::new(),
            streams: HashMap::new(),
            blocked_items: HashMap::new(),
            subscriptions: HashMap::new(),
            watchers: Vec::new(),
            looped_back: Vec::new(),
            dropped_events: AtomicU64::new(0),
        };
        let thread = std::thread::Builder::new()
            .name(format!("hsipc-engine-{name}"))
            .spawn(move || {
                core.run(rx);
                let _ = stopped_tx.send(());
            })
            .map_err(|source| crate::transport::TransportError::Io {
                what: "spawning the engine thread",
                source,
            })?;
        Ok(Engine {
            handle,
            thread: Some(thread),
            stopped,
            dropped: inbox,
        })
    }

    /// A handle to command the engine.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Frames the transport dropped because the engine was behind.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped.dropped()
    }

    /// Says goodbye, stops the engine and the transport, and waits (at most `timeout`) for the
    /// thread to finish. Idempotent.
    pub fn shutdown(&mut self, timeout: Duration) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            match self.stopped.recv_timeout(timeout) {
                Ok(()) | Err(flume::RecvTimeoutError::Disconnected) => {
                    let _ = thread.join();
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        "hsipc engine did not stop within {timeout:?}; leaving it to finish alone"
                    );
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

/// The engine thread's state.
struct Core {
    handle: Handle,
    endpoint: Endpoint,
    transport: Box<dyn Transport>,
    dispatcher: Box<dyn Dispatcher>,
    liveness: Liveness,
    next_liveness: Instant,
    config: EngineConfig,
    calls: HashMap<RequestId, flume::Sender<Result<Bytes>>>,
    streams: HashMap<RequestId, flume::Sender<StreamMsg>>,
    blocked_items: HashMap<IncomingId, (Bytes, flume::Sender<Result<()>>)>,
    subscriptions: HashMap<SubscriptionId, (flume::Sender<Delivery>, u64)>,
    watchers: Vec<(String, flume::Sender<()>)>,
    looped_back: Vec<Bytes>,
    dropped_events: AtomicU64,
}

/// Most mails handled in one turn before timers and outputs get their chance.
const BATCH: usize = 256;
/// Most service watchers kept (each is a waiting `wait_for_service`).
const MAX_WATCHERS: usize = 4096;

impl Core {
    fn run(&mut self, rx: flume::Receiver<Mail>) {
        let mut shutdown = false;
        while !shutdown {
            let deadline = match self.endpoint.poll_timeout() {
                Some(t) => t.min(self.next_liveness),
                None => self.next_liveness,
            };
            let first = match rx.recv_deadline(deadline) {
                Ok(m) => Some(m),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let mut now = Instant::now();
            if let Some(mail) = first {
                shutdown |= self.apply(now, mail);
                // Take what else is waiting, so a burst costs one drain.
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(mail) => shutdown |= self.apply(now, mail),
                        Err(_) => break,
                    }
                }
                now = Instant::now();
            }
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            if now >= self.next_liveness {
                for peer in self.liveness.dead() {
                    tracing::debug!(%peer, "peer process exited");
                    let _ = self.endpoint.handle_input(now, Input::PeerLost(peer));
                }
                self.next_liveness = now + self.config.liveness_interval;
            }
            self.drain(now);
        }
        self.endpoint.close();
        self.drain(Instant::now());
        self.transport.close();
        // Whatever is still waiting learns that the hub is gone.
        for (_, (_, done)) in self.blocked_items.drain() {
            let _ = done.send(Err(Error::Closed));
        }
    }

    /// Applies one mail; returns true on shutdown.
    fn apply(&mut self, now: Instant, mail: Mail) -> bool {
        match mail {
            Mail::Frame { from, bytes } => self.input(now, from, bytes),
            Mail::PeerLost(peer) => {
                let _ = self.endpoint.handle_input(now, Input::PeerLost(peer));
            }
            Mail::Command(cmd) => self.command(now, cmd),
            Mail::Shutdown => return true,
        }
        false
    }

    fn input(&mut self, now: Instant, from: PeerId, bytes: Bytes) {
        if let Err(e) = self
            .endpoint
            .handle_input(now, Input::Frame { from, bytes })
        {
            tracing::debug!(%from, error = %e, "dropped a frame");
        }
    }

    fn command(&mut self, now: Instant, cmd: Command) {
        let ep = &mut self.endpoint;
        match cmd {
            Command::Call {
                method,
                body,
                timeout,
                done,
            } => match ep.request(now, &method, body, CallMode::Unary, timeout) {
                Ok(id) => {
                    self.calls.insert(id, done);
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            },
            Command::CallStream {
                method,
                body,
                timeout,
                opened,
                items,
            } => match ep.request(now, &method, body, CallMode::ServerStream, timeout) {
                Ok(id) => {
                    self.streams.insert(id, items);
                    let _ = opened.send(Ok(id));
                }
                Err(e) => {
                    let _ = opened.send(Err(e.into()));
                }
            },
            Command::Consumed { id, n } => {
                let _ = ep.consumed(now, id, n);
            }
            Command::Cancel { id } => {
                self.streams.remove(&id);
                self.calls.remove(&id);
                let _ = ep.cancel(id);
            }
            Command::Respond { id, result } => {
                if let Err(e) = ep.respond(id, result) {
                    tracing::debug!(id = id.as_u64(), error = %e, "response not sent (caller gone or gave up)");
                }
            }
            Command::SendItem { id, body, done } => match ep.send_item(id, body.clone()) {
                Ok(()) => {
                    let _ = done.send(Ok(()));
                }
                Err(proto::CommandError::Blocked) => {
                    self.blocked_items.insert(id, (body, done));
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            },
            Command::Finish { id, result } => {
                if let Some((_, done)) = self.blocked_items.remove(&id) {
                    let _ = done.send(Err(Error::Cancelled));
                }
                let _ = ep.finish(id, result);
            }
            Command::Publish { topic, body, done } => {
                let r = ep.publish(&topic, body).map_err(Error::from);
                if let Some(done) = done {
                    let _ = done.send(r);
                } else if let Err(e) = r {
                    tracing::debug!(topic = %topic, error = %e, "publish failed");
                }
            }
            Command::Subscribe {
                filter,
                events,
                done,
            } => match ep.subscribe(filter) {
                Ok(id) => {
                    self.subscriptions.insert(id, (events, 0));
                    let _ = done.send(Ok(id));
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            },
            Command::Unsubscribe { id } => {
                self.subscriptions.remove(&id);
                let _ = ep.unsubscribe(id);
            }
            Command::Serve { service, done } => {
                let _ = done.send(ep.serve(&service).map_err(Error::from));
                self.notify_watchers();
            }
            Command::Peers { done } => {
                let local = ep.local();
                let list = ep
                    .peers()
                    .map(|p| PeerSummary {
                        id: p.id,
                        name: p.info.name.clone(),
                        pid: p.info.pid,
                        services: p.info.services.clone(),
                        patterns: p.info.patterns.clone(),
                        is_local: p.id == local,
                    })
                    .collect();
                let _ = done.send(list);
            }
            Command::WatchService { service, done } => {
                if ep.has_provider(&service) {
                    let _ = done.send(());
                } else {
                    self.watchers.retain(|(_, w)| !w.is_disconnected());
                    if self.watchers.len() < MAX_WATCHERS {
                        self.watchers.push((service, done));
                    } else {
                        tracing::warn!("too many wait_for_service callers; one will time out");
                    }
                }
            }
        }
    }

    /// Drains the endpoint: transmits frames and delivers events, until nothing is left.
    fn drain(&mut self, now: Instant) {
        loop {
            while let Some(out) = self.endpoint.poll_output() {
                match out {
                    Output::Transmit(t) => self.transmit(t.dest, t.frame),
                    Output::Event(e) => self.event(e),
                }
            }
            if self.looped_back.is_empty() {
                break;
            }
            let local = self.endpoint.local();
            for bytes in std::mem::take(&mut self.looped_back) {
                self.input(now, local, bytes);
            }
        }
    }

    fn transmit(&mut self, dest: Dest, frame: Bytes) {
        let r = match dest {
            Dest::Peer(p) if p == self.endpoint.local() => {
                self.looped_back.push(frame);
                Ok(())
            }
            Dest::Peer(p) => self.transport.send(p, &frame),
            Dest::All => self.transport.broadcast(&frame),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "transport failed to send a frame");
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Response { id, outcome } => {
                if let Some(done) = self.calls.remove(&id) {
                    let _ = done.send(outcome.map_err(Error::from));
                }
            }
            Event::Item {
                call: CallRef::Outgoing(id),
                body,
            } => {
                if let Some(items) = self.streams.get(&id) {
                    if items.try_send(StreamMsg::Item(body)).is_err() {
                        // The reader is gone (or broke the credit contract): stop the stream.
                        self.streams.remove(&id);
                        let _ = self.endpoint.cancel(id);
                    }
                }
            }
            Event::Item {
                call: CallRef::Incoming(id),
                ..
            } => {
                // Sessions have no application API yet: refuse rather than buffer.
                let _ = self.endpoint.finish(
                    id,
                    Err(RemoteError::new(
                        proto::ErrorCode::PROTOCOL,
                        "sessions are not served here",
                    )),
                );
            }
            Event::StreamEnded { id, outcome } => {
                if let Some(items) = self.streams.remove(&id) {
                    let _ = items.try_send(StreamMsg::End(outcome.map_err(Error::from)));
                }
            }
            Event::Writable {
                call: CallRef::Incoming(id),
            } => {
                if let Some((body, done)) = self.blocked_items.remove(&id) {
                    match self.endpoint.send_item(id, body.clone()) {
                        Ok(()) => {
                            let _ = done.send(Ok(()));
                        }
                        Err(proto::CommandError::Blocked) => {
                            self.blocked_items.insert(id, (body, done));
                        }
                        Err(e) => {
                            let _ = done.send(Err(e.into()));
                        }
                    }
                }
            }
            Event::Writable {
                call: CallRef::Outgoing(_),
            }
            | Event::InputFinished { .. } => {}
            Event::RequestReceived {
                id,
                from,
                method,
                body,
                deadline,
                mode,
            } => {
                if mode == CallMode::Session {
                    let _ = self.endpoint.respond(
                        id,
                        Err(RemoteError::new(
                            proto::ErrorCode::NO_SUCH_METHOD,
                            "sessions are not served here yet",
                        )),
                    );
                    return;
                }
                let call = IncomingCall {
                    id,
                    from,
                    method: method.clone(),
                    body,
                    deadline,
                    mode,
                };
                match self.dispatcher.dispatch(call, &self.handle) {
                    Ok(()) => {}
                    Err(Reject::NoSuchMethod) => {
                        let msg = format!("no handler for `{method}`");
                        let _ = self.endpoint.respond(
                            id,
                            Err(RemoteError::new(proto::ErrorCode::NO_SUCH_METHOD, msg)),
                        );
                    }
                    Err(Reject::Busy(why)) => {
                        let _ = self
                            .endpoint
                            .respond(id, Err(RemoteError::new(proto::ErrorCode::BUSY, why)));
                    }
                }
            }
            Event::IncomingCancelled { id, reason } => {
                tracing::debug!(id = id.as_u64(), ?reason, "served call cancelled");
                if let Some((_, done)) = self.blocked_items.remove(&id) {
                    let _ = done.send(Err(Error::Cancelled));
                }
            }
            Event::Published {
                from,
                topic,
                body,
                subscriptions,
                missed,
            } => {
                for sub in subscriptions {
                    let Some((tx, pending_missed)) = self.subscriptions.get_mut(&sub) else {
                        continue;
                    };
                    let d = Delivery {
                        from,
                        topic: topic.clone(),
                        body: body.clone(),
                        missed: missed + *pending_missed,
                    };
                    match tx.try_send(d) {
                        Ok(()) => *pending_missed = 0,
                        // Drop-newest: the subscriber learns the count with its next event.
                        Err(flume::TrySendError::Full(_)) => {
                            *pending_missed += 1;
                            self.dropped_events.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(flume::TrySendError::Disconnected(_)) => {
                            self.subscriptions.remove(&sub);
                            let _ = self.endpoint.unsubscribe(sub);
                        }
                    }
                }
            }
            Event::PeerJoined { peer, pid, .. } => {
                self.liveness.watch(peer, pid);
                self.notify_watchers();
            }
            Event::PeerChanged { .. } => self.notify_watchers(),
            Event::PeerLeft { peer, .. } => self.liveness.unwatch(peer),
        }
    }

    fn notify_watchers(&mut self) {
        let ep = &self.endpoint;
        self.watchers.retain(|(service, done)| {
            if ep.has_provider(service) {
                let _ = done.send(());
                false
            } else {
                !done.is_disconnected()
            }
        });
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("local", &self.endpoint.local())
            .finish_non_exhaustive()
    }
}
