//! The engine's state: the endpoint and everyone waiting on it.
//!
//! Everything here runs under the state lock and never blocks: what wakes another thread is
//! recorded as [`Deferred`] work and carried out once the lock is released.

use std::collections::VecDeque;

use proto::fast_map::FastMap as HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proto::frame::{Body, WireFrame};
use proto::{
    CallMode, CallRef, Dest, Endpoint, ErrorCode, Event, IncomingId, Input, Output, PeerId, RemoteError, RequestId,
    SubscriptionId, TableSizes,
};

use super::EngineConfig;
use super::deferred::{Deferred, Followup};
use super::dispatch::{CallContext, IncomingCall};
use super::event_credit::{Claim, EventCredit};
use super::stream_reader::{ItemSender, StreamMsg};
use super::subscription::{Delivery, SubscriptionQueue};
use super::waiters::Waiters;
use crate::error::{Error, Result};
use crate::liveness::Liveness;

/// Where a received frame's bytes lie (a transport's reader says so: see
/// [`Ingress`](crate::Ingress)).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Landed {
    /// In memory of this process's own.
    Own,
    /// In memory the sender may still change (an [`Input::SharedFrame`]).
    Shared,
    /// As [`Landed::Shared`], and the frame stands for another of its fan-out, whose flags and
    /// sequence number these are (an [`Input::StampedFrame`]).
    Stamped(proto::frame::Stamp),
}

/// Most `wait_for_service` callers waiting at once.
pub(super) const MAX_WATCHERS: usize = 4096;

/// Frames queued for sending beyond this many are detached from the buffer their heads share
/// (see `WireFrame::detached`): up to here, at most this many small buffers stay alive.
const KEEP_SHARED: usize = 16;

/// Most contexts of answered calls kept for later calls (each about a hundred bytes): as many
/// as calls are commonly served at once.
const MAX_SPARE_CONTEXTS: usize = 64;

/// A served stream's item waiting for the reader's credit.
struct BlockedItem {
    body: Body,
    done: flume::Sender<Result<()>>,
    /// When the sender gives up (the hub's stream stall timeout).
    deadline: Instant,
}

/// What a watcher waits for.
pub(super) enum Awaited {
    /// Some peer serving this service.
    Service(String),
    /// Some peer subscribed to a pattern matching this topic.
    Subscriber(proto::Topic),
}

/// Frames a sender took from the queue: the ones still in `frames` are not sent yet.
pub(super) struct Batch {
    pub(super) frames: VecDeque<(Dest, WireFrame)>,
    /// How many frames, and bytes, were taken (for the backlog count).
    taken: usize,
    bytes: usize,
}

/// A `wait_for_service` (or `wait_for_subscriber`) caller.
struct Watcher {
    awaited: Awaited,
    done: flume::Sender<Result<()>>,
    deadline: Instant,
}

/// What a hub counted: its protocol's counters, and every drop a queue's policy made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames in and out, malformed frames from peers, late or unknown responses, duplicates,
    /// events nobody matched.
    pub protocol: proto::Stats,
    /// Frames dropped because the send queue was full (the transport stalled long enough to
    /// fill it; publishers are held back before that, so these are other frames).
    pub dropped_sends: u64,
    /// Events this hub's lossy subscription queues ([`Qos::KeepLast`](crate::Qos::KeepLast),
    /// [`Qos::DropNewest`](crate::Qos::DropNewest)) dropped (each also reported to its subscriber
    /// as `missed`). Events a publisher dropped for a cut-off reliable subscriber are counted by
    /// that publisher, in `protocol.events_cut_off`.
    pub dropped_events: u64,
}

/// Sizes of the engine's tables, for leak checks: all zero on an idle hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Census {
    /// Unary calls waiting for their answer.
    pub calls: usize,
    /// Response streams being read.
    pub streams: usize,
    /// Calls being served.
    pub served: usize,
    /// Stream or session items waiting for credit.
    pub blocked_items: usize,
    /// Sessions being served.
    pub sessions: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// `wait_for_service` and `wait_for_subscriber` callers, and publishers waiting for room
    /// or for a subscriber's credit.
    pub watchers: usize,
    /// The protocol core's own tables.
    pub proto: TableSizes,
}

impl Census {
    /// Whether nothing is open: no call, stream, served call, subscription, wait or protocol
    /// timer (the heartbeat aside).
    pub fn is_idle(&self) -> bool {
        let p = &self.proto;
        self.calls
            + self.streams
            + self.served
            + self.blocked_items
            + self.sessions
            + self.subscriptions
            + self.watchers
            == 0
            && p.outgoing + p.incoming + p.subscriptions + p.timers == 0
    }
}

pub(crate) struct State {
    pub(super) endpoint: Endpoint,
    liveness: Liveness,
    config: EngineConfig,
    pub(super) calls: HashMap<RequestId, oneshot::Sender<Result<Bytes>>>,
    pub(super) streams: HashMap<RequestId, ItemSender>,
    /// Each known peer's name and pid, shared by the contexts of its calls (no copy per call).
    callers: HashMap<PeerId, (Arc<str>, u32)>,
    /// Calls being served, with the context their handler sees.
    pub(super) served: HashMap<IncomingId, CallContext>,
    /// Contexts of calls served and answered, that nobody held any more, for later calls.
    spare_contexts: Vec<CallContext>,
    /// Items waiting for their reader's credit: of streams and sessions this hub serves, and of
    /// sessions it opened.
    blocked_items: HashMap<CallRef, BlockedItem>,
    /// The client's messages of each session this hub serves, for its handler to read.
    session_inputs: HashMap<IncomingId, ItemSender>,
    pub(super) subscriptions: HashMap<SubscriptionId, Arc<SubscriptionQueue>>,
    watchers: Vec<Watcher>,
    outbound: VecDeque<(Dest, WireFrame)>,
    /// An empty queue a sender handed back, to be the next `outbound` (no allocation per batch).
    spare_outbound: VecDeque<(Dest, WireFrame)>,
    outbound_bytes: usize,
    /// Frames taken from the queue by a sender and not yet handed to the transport.
    sending: usize,
    /// Their bytes.
    sending_bytes: usize,
    /// Publishers waiting for the send backlog to drain.
    room_waiters: Waiters,
    /// Publishers waiting for a reliable subscriber's credit. At their deadline they publish
    /// again, cutting the subscribers still without credit off.
    credit_waiters: Waiters,
    /// Event credit: returned as this hub's application takes events, waited for by its
    /// publishers.
    pub(super) credit: EventCredit,
    dropped_outbound: u64,
    /// Events this hub's subscription queues dropped (shared with the queues).
    pub(super) dropped_events: Arc<std::sync::atomic::AtomicU64>,
    looped_back: Vec<Bytes>,
    deferred: Vec<Deferred>,
    /// When the clock thread will wake by itself (None while it is awake).
    sleeping_until: Option<Instant>,
    /// The peers' processes the clock sleeps on changed since it fell asleep.
    watched_changed: bool,
    closed: bool,
}

impl State {
    pub(super) fn new(endpoint: Endpoint, config: EngineConfig, alarm: super::alarm::Alarm) -> Self {
        State {
            credit: EventCredit::new(config.proto.event_window, config.proto.event_window_bytes, alarm),
            liveness: Liveness::new(std::process::id()),
            endpoint,
            config,
            calls: HashMap::default(),
            streams: HashMap::default(),
            callers: HashMap::default(),
            served: HashMap::default(),
            spare_contexts: Vec::new(),
            blocked_items: HashMap::default(),
            session_inputs: HashMap::default(),
            subscriptions: HashMap::default(),
            watchers: Vec::new(),
            outbound: VecDeque::new(),
            spare_outbound: VecDeque::new(),
            outbound_bytes: 0,
            sending: 0,
            sending_bytes: 0,
            room_waiters: Waiters::new("the send queue"),
            credit_waiters: Waiters::new("subscribers' credit"),
            dropped_outbound: 0,
            dropped_events: Arc::default(),
            looped_back: Vec::new(),
            deferred: Vec::new(),
            sleeping_until: None,
            watched_changed: false,
            closed: false,
        }
    }

    pub(super) fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.closed { Err(Error::Closed) } else { Ok(()) }
    }

    /// A frame from a peer, landed where `landed` says.
    pub(super) fn input(&mut self, now: Instant, from: PeerId, bytes: Bytes, landed: Landed) {
        let input = match landed {
            Landed::Own => Input::Frame { from, bytes },
            Landed::Shared => Input::SharedFrame { from, bytes },
            Landed::Stamped(stamp) => Input::StampedFrame { from, bytes, stamp },
        };
        if let Err(e) = self.endpoint.handle_input(now, input) {
            tracing::debug!(%from, error = %e, "dropped a frame");
        }
    }

    /// The clock woke: runs due protocol timers, the engine's own deadlines, the liveness check.
    pub(super) fn awake(&mut self, now: Instant) {
        self.sleeping_until = None;
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        // The clock also wakes when a peer's process exits (its pidfd is among what it polls).
        for peer in self.liveness.dead() {
            tracing::debug!(%peer, "peer process exited");
            let _ = self.endpoint.handle_input(now, Input::PeerLost(peer));
        }
        let stalled: Vec<CallRef> =
            self.blocked_items.iter().filter(|(_, b)| b.deadline <= now).map(|(id, _)| *id).collect();
        for id in stalled {
            if let Some(b) = self.blocked_items.remove(&id) {
                self.deferred.push(Deferred::Done(b.done, Err(Error::Timeout)));
            }
        }
        let (expired, waiting): (Vec<Watcher>, Vec<Watcher>) =
            std::mem::take(&mut self.watchers).into_iter().partition(|w| w.deadline <= now);
        self.watchers = waiting;
        for w in expired {
            self.deferred.push(Deferred::Done(w.done, Err(Error::Timeout)));
        }
        // However few were taken, the publishers hear of it by the next tick.
        self.return_credit(now);
        self.credit_waiters.expire(now, || Ok(()), &mut self.deferred);
        let full = || {
            let why =
                "the send queue did not drain before the publish timeout: subscribers or the bus are not keeping up";
            Err(Error::LocalLimit(why.into()))
        };
        self.room_waiters.expire(now, full, &mut self.deferred);
    }

    /// Gives the publishers back the credit of every event the application has taken.
    pub(super) fn return_credit(&mut self, now: Instant) {
        for (from, n, bytes) in self.credit.taken() {
            self.endpoint.events_taken(now, from, n, bytes);
        }
        self.endpoint.flush_event_credit();
    }

    /// The next instant anything here is due (never more than a minute away).
    fn next_deadline(&self) -> Instant {
        // Never asleep for longer than a minute, whatever is (not) due.
        let cap = Instant::now() + std::time::Duration::from_secs(60);
        self.earliest_due().map_or(cap, |d| d.min(cap))
    }

    /// The earliest instant anything here is due, if anything is. Reads no clock: it runs at
    /// every commit (see [`needs_earlier_wake`](Self::needs_earlier_wake)).
    fn earliest_due(&self) -> Option<Instant> {
        let engine = self
            .blocked_items
            .values()
            .map(|b| b.deadline)
            .chain(self.watchers.iter().map(|w| w.deadline))
            .chain(self.room_waiters.deadlines())
            .chain(self.credit_waiters.deadlines());
        self.endpoint.poll_timeout().into_iter().chain(engine).min()
    }

    /// The pidfds of the peers' processes, for the clock to sleep on.
    pub(super) fn watched_processes(&self) -> Vec<Arc<std::os::fd::OwnedFd>> {
        self.liveness.fds()
    }

    /// When the clock should wake next; records it.
    pub(super) fn sleep_until(&mut self) -> Instant {
        let t = self.next_deadline();
        self.sleeping_until = Some(t);
        t
    }

    /// Whether something is now due before the clock plans to wake, or the clock must sleep on
    /// other processes than it does (a peer joined or left).
    pub(super) fn needs_earlier_wake(&mut self) -> bool {
        let watched_changed = std::mem::take(&mut self.watched_changed);
        watched_changed || self.sleeping_until.is_some_and(|s| self.earliest_due().is_some_and(|d| d < s))
    }

    pub(super) fn has_outbound(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// Takes everything queued for sending; hand it back with [`batch_done`](Self::batch_done).
    pub(super) fn take_outbound(&mut self) -> Batch {
        let bytes = std::mem::take(&mut self.outbound_bytes);
        let frames = std::mem::replace(&mut self.outbound, std::mem::take(&mut self.spare_outbound));
        self.sending += frames.len();
        self.sending_bytes += bytes;
        Batch { taken: frames.len(), bytes, frames }
    }

    /// A sender is done with a batch it took; the frames still in it were not sent and go back
    /// in front of the queue, in their order. Wakes publishers waiting for room once the backlog
    /// has drained.
    pub(super) fn batch_done(&mut self, mut batch: Batch) {
        self.sending = self.sending.saturating_sub(batch.taken);
        self.sending_bytes = self.sending_bytes.saturating_sub(batch.bytes);
        if !batch.frames.is_empty() {
            self.outbound_bytes += batch.frames.iter().map(|(_, f)| f.len()).sum::<usize>();
            batch.frames.append(&mut self.outbound);
            self.outbound = batch.frames;
        } else if batch.frames.capacity() > self.spare_outbound.capacity() {
            self.spare_outbound = batch.frames;
        }
        let bytes = self.outbound_bytes + self.sending_bytes;
        if self.outbound.len() + self.sending <= self.low_water() && bytes <= self.config.outbound_max_bytes / 8 {
            self.room_waiters.end_all(|| Ok(()), &mut self.deferred);
        }
    }

    /// Whether the send backlog is so long that a publisher must wait for it to drain (rather
    /// than have the queue drop frames when it is full).
    pub(super) fn backlogged(&self) -> bool {
        self.outbound.len() + self.sending >= self.config.outbound_capacity / 2
            || self.outbound_bytes + self.sending_bytes >= self.config.outbound_max_bytes / 2
    }

    /// Has `done` complete once the send backlog has drained, or fail at `deadline`.
    pub(super) fn wait_for_room(&mut self, done: flume::Sender<Result<()>>, deadline: Instant) {
        self.room_waiters.add(done, deadline, &mut self.deferred);
    }

    /// Has `done` complete when a reliable subscriber gives credit back, or at `deadline` (the
    /// publisher then publishes again and cuts off whoever still has none).
    pub(super) fn wait_for_credit(&mut self, done: flume::Sender<Result<()>>, deadline: Instant) {
        self.credit_waiters.add(done, deadline, &mut self.deferred);
    }

    /// Says which subscribers a publish cut off.
    pub(super) fn report_cut_off(&self, topic: &proto::Topic, peers: &[PeerId]) {
        for peer in peers {
            let subscriber = self.peer_name(*peer);
            tracing::warn!(
                %subscriber,
                %topic,
                "a reliable subscriber took no events for the publish timeout: cut off (it is told, and the \
                 events it misses are counted) until it catches up"
            );
        }
    }

    fn low_water(&self) -> usize {
        self.config.outbound_capacity / 8
    }

    /// Takes what is to be done once the lock is released, leaving `spare` (an empty vector
    /// kept from an earlier commit, so that commits do not allocate) in its place.
    pub(super) fn take_deferred(&mut self, spare: Vec<Deferred>) -> Vec<Deferred> {
        std::mem::replace(&mut self.deferred, spare)
    }

    /// Closes the endpoint (goodbye, every open call fails) and ends every wait.
    pub(super) fn close(&mut self) {
        self.endpoint.close();
        self.closed = true;
        for (_, b) in self.blocked_items.drain() {
            self.deferred.push(Deferred::Done(b.done, Err(Error::Closed)));
        }
        for w in self.watchers.drain(..) {
            self.deferred.push(Deferred::Done(w.done, Err(Error::Closed)));
        }
        self.room_waiters.end_all(|| Err(Error::Closed), &mut self.deferred);
        self.credit_waiters.end_all(|| Err(Error::Closed), &mut self.deferred);
        self.session_inputs.clear();
        for (_, ctx) in self.served.drain() {
            self.deferred.push(Deferred::Cancel(ctx));
        }
        // Dropping the senders ends every reader with `Closed`.
        self.subscriptions.clear();
    }

    /// What this hub counted: the protocol's counters and the engine's drops.
    pub(super) fn stats(&self) -> Stats {
        Stats {
            protocol: self.endpoint.stats(),
            dropped_sends: self.dropped_outbound,
            dropped_events: self.dropped_events.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Everything open, for leak checks.
    pub(super) fn census(&self) -> Census {
        Census {
            calls: self.calls.len(),
            streams: self.streams.len(),
            served: self.served.len(),
            blocked_items: self.blocked_items.len(),
            sessions: self.session_inputs.len(),
            subscriptions: self.subscriptions.len(),
            watchers: self.watchers.len() + self.room_waiters.live() + self.credit_waiters.live(),
            proto: self.endpoint.table_sizes(),
        }
    }

    /// Takes every event and frame the endpoint produced, until none is left.
    pub(super) fn drain(&mut self, now: Instant) {
        loop {
            while let Some(out) = self.endpoint.poll_output() {
                match out {
                    Output::Transmit(t) => self.queue(t.dest, t.frame),
                    Output::Event(e) => self.event(e),
                }
            }
            if self.looped_back.is_empty() {
                break;
            }
            let local = self.endpoint.local();
            for bytes in std::mem::take(&mut self.looped_back) {
                self.input(now, local, bytes, Landed::Own);
            }
        }
        if self.closed {
            // The endpoint failed every call with an event; what is left has no reader.
            self.calls.clear();
            self.streams.clear();
        }
    }

    /// Applies what a delivery found after the lock was released.
    pub(super) fn follow_up(&mut self, f: Followup) {
        match f {
            Followup::CancelStream(CallRef::Outgoing(id)) => {
                self.end_outgoing(id);
                let _ = self.endpoint.cancel(id);
            }
            // A session's handler stopped reading the client's messages (it dropped its end, or
            // the client overran its credit): the session ends, with an error for the client,
            // and the handler is told its call is over.
            Followup::CancelStream(CallRef::Incoming(id)) => {
                if let Some(ctx) = self.served.get(&id).cloned() {
                    self.deferred.push(Deferred::Cancel(ctx));
                }
                self.end_served(id);
                let msg = "the session's handler stopped reading";
                let _ = self.endpoint.finish(id, Err(RemoteError::new(ErrorCode::PROTOCOL, msg)));
            }
            Followup::Unsubscribe(id) => {
                self.subscriptions.remove(&id);
                let _ = self.endpoint.unsubscribe(id);
            }
            Followup::Refuse(id, err) => {
                self.end_served(id);
                let _ = self.endpoint.respond(id, Err(err));
            }
        }
    }

    fn queue(&mut self, dest: Dest, frame: WireFrame) {
        if dest == Dest::Peer(self.endpoint.local()) {
            self.looped_back.push(frame.to_bytes());
        } else if self.outbound.is_empty()
            || (self.outbound.len() < self.config.outbound_capacity
                && self.outbound_bytes + frame.len() <= self.config.outbound_max_bytes)
        {
            self.outbound_bytes += frame.len();
            // A frame normally leaves this queue at once; behind a few others it may wait long
            // (a stalled transport), and then keeps only its own bytes alive.
            let frame = if self.outbound.len() >= KEEP_SHARED { frame.detached() } else { frame };
            self.outbound.push_back((dest, frame));
        } else {
            // Only when the bus has been stalled for a long time: protocol deadlines and loss
            // detection report what this drops.
            self.dropped_outbound += 1;
            if self.dropped_outbound.is_power_of_two() {
                tracing::warn!(dropped = self.dropped_outbound, "send queue full (bus stalled?): dropping frames");
            }
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Response { id, outcome } => {
                if let Some(done) = self.calls.remove(&id) {
                    self.deferred.push(Deferred::Response(done, outcome.map_err(Error::from)));
                }
            }
            Event::Item { call: CallRef::Outgoing(id), body } => {
                if let Some(items) = self.streams.get(&id) {
                    self.deferred.push(Deferred::Stream(id.into(), items.clone(), StreamMsg::Item(body)));
                }
            }
            Event::Item { call: CallRef::Incoming(id), body } => match self.session_inputs.get(&id) {
                Some(input) => self.deferred.push(Deferred::Stream(id.into(), input.clone(), StreamMsg::Item(body))),
                None => {
                    let msg = "no session is open for this item";
                    let _ = self.endpoint.finish(id, Err(RemoteError::new(ErrorCode::PROTOCOL, msg)));
                }
            },
            Event::StreamEnded { id, outcome } => {
                // A session's own message still waiting for credit will never go.
                if let Some(b) = self.blocked_items.remove(&CallRef::Outgoing(id)) {
                    let why = outcome.clone().err().map_or(Error::Cancelled, Error::from);
                    self.deferred.push(Deferred::Done(b.done, Err(why)));
                }
                if let Some(items) = self.streams.remove(&id) {
                    let end = StreamMsg::End(outcome.map_err(Error::from));
                    self.deferred.push(Deferred::Stream(id.into(), items, end));
                }
            }
            Event::InputFinished { id } => {
                if let Some(input) = self.session_inputs.remove(&id) {
                    self.deferred.push(Deferred::Stream(id.into(), input, StreamMsg::End(Ok(()))));
                }
            }
            Event::Writable { call } => {
                if let Some(b) = self.blocked_items.remove(&call) {
                    self.send_item(call, b.body, b.done, b.deadline);
                }
            }
            Event::RequestReceived { id, from, method, body, deadline, mode } => {
                let (name, pid) = self.peer_identity(from);
                let context = CallContext::new(self.spare_contexts.pop(), method, from, name, pid, deadline);
                self.served.insert(id, context.clone());
                let input = (mode == CallMode::Session).then(|| {
                    // Credit bounds the client's messages in flight to one window; +1 for the end.
                    let (tx, rx) = super::stream_reader::item_queue(self.config.proto.stream_window as usize + 1);
                    self.session_inputs.insert(id, tx);
                    rx
                });
                self.deferred.push(Deferred::Dispatch(IncomingCall { id, from, body, deadline, mode, context, input }));
            }
            Event::IncomingCancelled { id, reason } => {
                tracing::debug!(id = id.as_u64(), ?reason, "served call cancelled");
                // The parked send fails before the context is cancelled (deferreds complete in
                // order): an async handler woken by the cancel then sees its send fail with
                // `Cancelled`, as documented, instead of racing its own drop (as in `close`).
                if let Some(b) = self.blocked_items.remove(&CallRef::Incoming(id)) {
                    self.deferred.push(Deferred::Done(b.done, Err(Error::Cancelled)));
                }
                if let Some(input) = self.session_inputs.remove(&id) {
                    let end = match reason {
                        // A client that closes its session closes its half first (read as the
                        // end); a cancel on its own means the client failed or gave up.
                        proto::CancelReason::CallerCancelled => Err(Error::Cancelled),
                        proto::CancelReason::DeadlineExpired => Err(Error::Timeout),
                        proto::CancelReason::PeerLost => Err(Error::PeerLost),
                        proto::CancelReason::Closed => Err(Error::Closed),
                        proto::CancelReason::Broken(e) => Err(Error::from(e)),
                    };
                    self.deferred.push(Deferred::Stream(id.into(), input, StreamMsg::End(end)));
                }
                if let Some(ctx) = self.served.remove(&id) {
                    self.deferred.push(Deferred::Cancel(ctx));
                }
            }
            Event::Published { from, topic, body, subscriptions, missed, credited } => {
                // An event paid for with this hub's credit gives it back once every reliable
                // subscription it goes to has taken it; if none does, at once.
                let is_reliable = |s: &SubscriptionId| self.subscriptions.get(s).is_some_and(|q| q.is_reliable());
                let reliable = if credited { subscriptions.iter().filter(|s| is_reliable(s)).count() } else { 0 };
                let size = body.len() as u64;
                if credited && reliable == 0 {
                    self.endpoint.events_taken(Instant::now(), from, 1, size);
                }
                // One reliable subscription (the usual case) holds the ticket itself; several
                // share it.
                let mut one = (reliable == 1).then(|| self.credit.ticket(from, size));
                let shared = (reliable > 1).then(|| Arc::new(self.credit.ticket(from, size)));
                // The last subscription (the only one, usually) takes the topic and the body
                // themselves: no reference count goes up and down for them.
                let mut topic_body = Some((topic, body));
                let last = subscriptions.len().saturating_sub(1);
                for (i, &sub) in subscriptions.iter().enumerate() {
                    let Some(queue) = self.subscriptions.get(&sub) else { continue };
                    let ticket = if queue.is_reliable() {
                        one.take().map(Claim::One).or_else(|| shared.clone().map(Claim::Shared))
                    } else {
                        None
                    };
                    let Some((topic, body)) = (if i == last { topic_body.take() } else { topic_body.clone() }) else {
                        continue;
                    };
                    let d = Delivery { from, topic, body, missed, ticket };
                    self.deferred.push(Deferred::Publish(sub, queue.clone(), d));
                }
            }
            Event::EventsLost { from, topic, missed, subscriptions } => {
                let publisher = self.peer_name(from);
                tracing::warn!(%publisher, %topic, missed, "a publisher cut this hub's subscription off: events were lost");
                for sub in subscriptions {
                    let Some(queue) = self.subscriptions.get(&sub) else { continue };
                    self.deferred.push(Deferred::Lost(sub, queue.clone(), publisher.clone(), missed));
                }
            }
            Event::EventCredit { .. } => self.credit_waiters.end_all(|| Ok(()), &mut self.deferred),
            Event::PeerJoined { peer, name, pid } => {
                self.liveness.watch(peer, pid);
                self.watched_changed = true;
                self.callers.insert(peer, (name.into(), pid));
                self.notify_watchers();
            }
            Event::PeerChanged { .. } => {
                self.notify_watchers();
                self.credit_waiters.end_all(|| Ok(()), &mut self.deferred);
            }
            Event::DiscoveryComplete => {}
            Event::PeerLeft { peer, .. } => {
                self.liveness.unwatch(peer);
                self.watched_changed = true;
                self.callers.remove(&peer);
                self.credit.forget(peer);
                self.credit_waiters.end_all(|| Ok(()), &mut self.deferred);
            }
        }
    }

    /// A peer's name and pid. (This hub itself, for loopback calls, is not a joined peer: it
    /// is looked up, which is rare.)
    fn peer_identity(&self, peer: PeerId) -> (Arc<str>, u32) {
        self.callers.get(&peer).cloned().unwrap_or_else(|| {
            self.endpoint.peer(peer).map_or((Arc::from(""), 0), |p| (Arc::from(p.info.name.as_str()), p.info.pid))
        })
    }

    fn peer_name(&self, peer: PeerId) -> Arc<str> {
        self.peer_identity(peer).0
    }

    /// Sends a served stream's item now, or parks it until the reader grants credit (at most
    /// until `deadline`).
    pub(super) fn send_item(&mut self, id: CallRef, body: Body, done: flume::Sender<Result<()>>, deadline: Instant) {
        match self.endpoint.send_item(id, body.clone()) {
            Ok(()) => self.deferred.push(Deferred::Done(done, Ok(()))),
            Err(proto::CommandError::Blocked) => {
                self.blocked_items.insert(id, BlockedItem { body, done, deadline });
            }
            Err(e) => self.deferred.push(Deferred::Done(done, Err(e.into()))),
        }
    }

    /// Whether an item of served call `id` waits for credit.
    pub(super) fn has_blocked_item(&self, id: CallRef) -> bool {
        self.blocked_items.contains_key(&id)
    }

    /// Sends an item of a served stream now (`None`), or parks it until the reader's credit
    /// lets it go (the waiter completes then, or fails at `deadline`).
    pub(super) fn try_send_item(
        &mut self,
        id: CallRef,
        body: Body,
        deadline: Instant,
    ) -> Result<Option<super::Waiter<()>>> {
        match self.endpoint.send_item(id, body.clone()) {
            Ok(()) => Ok(None),
            Err(proto::CommandError::Blocked) => {
                let (done, rx) = flume::bounded(1);
                self.blocked_items.insert(id, BlockedItem { body, done, deadline });
                Ok(Some(super::Waiter::new(rx, deadline)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends a served call: it no longer needs its context or a parked item.
    pub(super) fn end_served(&mut self, id: IncomingId) {
        if let Some(spare) = self.served.remove(&id).and_then(CallContext::into_spare) {
            if self.spare_contexts.len() < MAX_SPARE_CONTEXTS {
                self.spare_contexts.push(spare);
            }
        }
        self.session_inputs.remove(&id);
        if let Some(b) = self.blocked_items.remove(&CallRef::Incoming(id)) {
            self.deferred.push(Deferred::Done(b.done, Err(Error::Cancelled)));
        }
    }

    /// Forgets a session this hub opened (its items waiting for credit fail).
    pub(super) fn end_outgoing(&mut self, id: RequestId) {
        self.streams.remove(&id);
        self.calls.remove(&id);
        if let Some(b) = self.blocked_items.remove(&CallRef::Outgoing(id)) {
            self.deferred.push(Deferred::Done(b.done, Err(Error::Cancelled)));
        }
    }

    fn is_present(&self, awaited: &Awaited) -> bool {
        match awaited {
            Awaited::Service(service) => self.endpoint.has_provider(service),
            Awaited::Subscriber(topic) => self.endpoint.has_subscriber(topic),
        }
    }

    pub(super) fn add_watcher(&mut self, awaited: Awaited, done: flume::Sender<Result<()>>, deadline: Instant) {
        if self.is_present(&awaited) {
            self.deferred.push(Deferred::Done(done, Ok(())));
            return;
        }
        self.watchers.retain(|w| !w.done.is_disconnected());
        if self.watchers.len() < MAX_WATCHERS {
            self.watchers.push(Watcher { awaited, done, deadline });
        } else {
            let why = format!("more than {MAX_WATCHERS} wait_for_service or wait_for_subscriber calls are waiting");
            self.deferred.push(Deferred::Done(done, Err(Error::LocalLimit(why))));
        }
    }

    pub(super) fn notify_watchers(&mut self) {
        let (up, waiting): (Vec<Watcher>, Vec<Watcher>) = std::mem::take(&mut self.watchers)
            .into_iter()
            .filter(|w| !w.done.is_disconnected())
            .partition(|w| self.is_present(&w.awaited));
        self.watchers = waiting;
        for w in up {
            self.deferred.push(Deferred::Done(w.done, Ok(())));
        }
    }
}
