//! The engine's state: the endpoint and everyone waiting on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proto::{
    CallMode, CallRef, Dest, Endpoint, ErrorCode, Event, IncomingId, Input, Output, PeerId, RemoteError, RequestId,
    SubscriptionId,
};

use super::api::{Delivery, Dispatcher, IncomingCall, Reject, StreamMsg};
use super::queue::SubscriptionQueue;
use super::{EngineConfig, Handle, Shared};
use crate::error::{Error, Result};
use crate::liveness::Liveness;

/// Most service watchers kept (each is a waiting `wait_for_service`).
const MAX_WATCHERS: usize = 4096;

pub(crate) struct Core {
    pub(super) endpoint: Endpoint,
    dispatcher: Option<Box<dyn Dispatcher>>,
    liveness: Liveness,
    next_liveness: Instant,
    config: EngineConfig,
    pub(super) calls: HashMap<RequestId, flume::Sender<Result<Bytes>>>,
    pub(super) streams: HashMap<RequestId, flume::Sender<StreamMsg>>,
    pub(super) blocked_items: HashMap<IncomingId, (Bytes, flume::Sender<Result<()>>)>,
    pub(super) subscriptions: HashMap<SubscriptionId, SubscriptionQueue>,
    watchers: Vec<(String, flume::Sender<()>)>,
    outbound: VecDeque<(Dest, Bytes)>,
    outbound_bytes: usize,
    dropped_outbound: u64,
    looped_back: Vec<Bytes>,
    /// When the engine thread will wake by itself (None while it is awake).
    sleeping_until: Option<Instant>,
    closed: bool,
}

impl Core {
    pub(super) fn new(endpoint: Endpoint, dispatcher: Box<dyn Dispatcher>, config: EngineConfig, now: Instant) -> Self {
        Core {
            liveness: Liveness::new(std::process::id()),
            next_liveness: now + config.liveness_interval,
            endpoint,
            dispatcher: Some(dispatcher),
            config,
            calls: HashMap::new(),
            streams: HashMap::new(),
            blocked_items: HashMap::new(),
            subscriptions: HashMap::new(),
            watchers: Vec::new(),
            outbound: VecDeque::new(),
            outbound_bytes: 0,
            dropped_outbound: 0,
            looped_back: Vec::new(),
            sleeping_until: None,
            closed: false,
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.closed { Err(Error::Closed) } else { Ok(()) }
    }

    pub(super) fn input(&mut self, now: Instant, from: PeerId, bytes: Bytes) {
        if let Err(e) = self.endpoint.handle_input(now, Input::Frame { from, bytes }) {
            tracing::debug!(%from, error = %e, "dropped a frame");
        }
    }

    /// The engine thread woke: runs due timers and the liveness check.
    pub(super) fn awake(&mut self, now: Instant) {
        self.sleeping_until = None;
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
    }

    /// When the engine thread should wake next; records it.
    pub(super) fn sleep_until(&mut self) -> Instant {
        let t = self.endpoint.poll_timeout().map_or(self.next_liveness, |t| t.min(self.next_liveness));
        self.sleeping_until = Some(t);
        t
    }

    /// Whether a timer is now due before the engine thread plans to wake.
    pub(super) fn needs_earlier_wake(&self) -> bool {
        match (self.sleeping_until, self.endpoint.poll_timeout()) {
            (Some(s), Some(t)) => t < s,
            _ => false,
        }
    }

    pub(super) fn has_outbound(&self) -> bool {
        !self.outbound.is_empty()
    }

    pub(super) fn take_outbound(&mut self) -> VecDeque<(Dest, Bytes)> {
        self.outbound_bytes = 0;
        std::mem::take(&mut self.outbound)
    }

    /// Closes the endpoint (goodbye, every open call fails) and stops serving.
    pub(super) fn close(&mut self) {
        self.endpoint.close();
        self.closed = true;
        // Drop the dispatcher so handler workers end, and wake everyone still waiting.
        self.dispatcher = None;
        for (_, (_, done)) in self.blocked_items.drain() {
            let _ = done.send(Err(Error::Closed));
        }
        self.subscriptions.clear();
        self.watchers.clear();
    }

    /// Delivers every event and queues every frame the endpoint produced, until none is left.
    /// `shared` is only needed (as a [`Handle`]) when a request is handed to the dispatcher.
    pub(super) fn drain(&mut self, now: Instant, shared: &Arc<Shared>) {
        loop {
            while let Some(out) = self.endpoint.poll_output() {
                match out {
                    Output::Transmit(t) => self.queue(t.dest, t.frame),
                    Output::Event(e) => self.event(e, shared),
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

    fn queue(&mut self, dest: Dest, frame: Bytes) {
        if dest == Dest::Peer(self.endpoint.local()) {
            self.looped_back.push(frame);
        } else if self.outbound.is_empty()
            || (self.outbound.len() < self.config.outbound_capacity
                && self.outbound_bytes + frame.len() <= self.config.outbound_max_bytes)
        {
            self.outbound_bytes += frame.len();
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

    fn event(&mut self, ev: Event, shared: &Arc<Shared>) {
        match ev {
            Event::Response { id, outcome } => {
                if let Some(done) = self.calls.remove(&id) {
                    let _ = done.send(outcome.map_err(Error::from));
                }
            }
            Event::Item { call: CallRef::Outgoing(id), body } => {
                let broken = self.streams.get(&id).is_some_and(|items| items.try_send(StreamMsg::Item(body)).is_err());
                if broken {
                    // The reader is gone (or broke the credit contract): stop the stream.
                    self.streams.remove(&id);
                    let _ = self.endpoint.cancel(id);
                }
            }
            Event::Item { call: CallRef::Incoming(id), .. } => {
                // Sessions have no application API yet: end them rather than buffer.
                let msg = "sessions are not served by this hub";
                let _ = self.endpoint.finish(id, Err(RemoteError::new(ErrorCode::PROTOCOL, msg)));
            }
            Event::StreamEnded { id, outcome } => {
                if let Some(items) = self.streams.remove(&id) {
                    let _ = items.try_send(StreamMsg::End(outcome.map_err(Error::from)));
                }
            }
            Event::Writable { call: CallRef::Incoming(id) } => {
                if let Some((body, done)) = self.blocked_items.remove(&id) {
                    self.send_item(id, body, done);
                }
            }
            Event::Writable { call: CallRef::Outgoing(_) } | Event::InputFinished { .. } => {}
            Event::RequestReceived { id, from, method, body, deadline, mode } => {
                self.dispatch(IncomingCall { id, from, method, body, deadline, mode }, shared);
            }
            Event::IncomingCancelled { id, reason } => {
                tracing::debug!(id = id.as_u64(), ?reason, "served call cancelled");
                if let Some((_, done)) = self.blocked_items.remove(&id) {
                    let _ = done.send(Err(Error::Cancelled));
                }
            }
            Event::Published { from, topic, body, subscriptions, missed } => {
                for sub in subscriptions {
                    let Some(queue) = self.subscriptions.get_mut(&sub) else { continue };
                    let d = Delivery { from, topic: topic.clone(), body: body.clone(), missed };
                    if queue.push(d).is_err() {
                        self.subscriptions.remove(&sub);
                        let _ = self.endpoint.unsubscribe(sub);
                    }
                }
            }
            Event::PeerJoined { peer, pid, .. } => {
                self.liveness.watch(peer, pid);
                self.notify_watchers();
            }
            Event::PeerChanged { .. } => self.notify_watchers(),
            Event::DiscoveryComplete => {}
            Event::PeerLeft { peer, .. } => self.liveness.unwatch(peer),
        }
    }

    fn dispatch(&mut self, call: IncomingCall, shared: &Arc<Shared>) {
        let (id, mode) = (call.id, call.mode);
        if mode == CallMode::Session {
            let msg = "sessions are not served by this hub yet";
            let _ = self.endpoint.respond(id, Err(RemoteError::new(ErrorCode::NO_SUCH_METHOD, msg)));
            return;
        }
        let method = call.method.clone();
        let verdict = match self.dispatcher.as_mut() {
            Some(d) => d.dispatch(call, &Handle::from_shared(shared.clone())),
            None => Err(Reject::Busy("the hub is closing".into())),
        };
        let refusal = match verdict {
            Ok(()) => return,
            Err(Reject::NoSuchMethod) => {
                RemoteError::new(ErrorCode::NO_SUCH_METHOD, format!("no handler for `{method}`"))
            }
            Err(Reject::Busy(why)) => RemoteError::new(ErrorCode::BUSY, why),
        };
        let _ = self.endpoint.respond(id, Err(refusal));
    }

    /// Sends a served stream's item now, or parks it until the reader grants credit.
    pub(super) fn send_item(&mut self, id: IncomingId, body: Bytes, done: flume::Sender<Result<()>>) {
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

    pub(super) fn add_watcher(&mut self, service: String, done: flume::Sender<()>) {
        if self.endpoint.has_provider(&service) {
            let _ = done.send(());
            return;
        }
        self.watchers.retain(|(_, w)| !w.is_disconnected());
        if self.watchers.len() < MAX_WATCHERS {
            self.watchers.push((service, done));
        } else {
            tracing::warn!("too many wait_for_service callers; one will time out");
        }
    }

    pub(super) fn notify_watchers(&mut self) {
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
