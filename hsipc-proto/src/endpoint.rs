//! The state machine: [`Endpoint`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec;
use crate::config::Config;
use crate::directory::{Directory, Learned, Peer, PeerInfo};
use crate::error::{CallError, CommandError, ErrorCode, FrameError, RemoteError};
use crate::event::{CallMode, CancelReason, Dest, Event, Input, LeaveReason, Output, Transmit};
use crate::frame::{Flags, Frame, FrameKind, MAX_NAME_LEN, encode_parts};
use crate::id::{CallRef, Counter, IncomingId, PeerId, RequestId, SubscriptionId};
use crate::stream::{Gap, RecvHalf, SendHalf};
use crate::timer::{Timer, Timers};
use crate::topic::{Topic, TopicFilter, TopicIndex};

/// Counters of what the endpoint saw and dropped, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames accepted from peers.
    pub frames_in: u64,
    /// Frames queued for transmission.
    pub frames_out: u64,
    /// Frames rejected as malformed or in violation of the protocol.
    pub bad_frames: u64,
    /// Responses, items or credit for calls that are not open (late, after a timeout or cancel).
    pub late_or_unknown: u64,
    /// Duplicated requests, stream items or events, dropped.
    pub duplicates: u64,
    /// Events received that no local subscription matches (the publisher's view was stale).
    pub unmatched_events: u64,
    /// Frames dropped because the output queue was full.
    pub overloaded: u64,
}

/// A call this endpoint made.
#[derive(Debug)]
struct Outgoing {
    peer: PeerId,
    mode: CallMode,
    method: Box<str>,
    timeout: Duration,
    /// `None` while the timer is paused (a stream whose reader has all granted items queued).
    deadline: Option<Instant>,
    recv: Option<RecvHalf>,
    send: Option<SendHalf>,
}

/// A call this endpoint is serving.
#[derive(Debug)]
struct Incoming {
    peer: PeerId,
    remote_id: u64,
    mode: CallMode,
    deadline: Option<Instant>,
    send: Option<SendHalf>,
    recv: Option<RecvHalf>,
}

/// The protocol state of one hub: its calls, streams, subscriptions and view of the bus.
///
/// See the [crate documentation](crate) for the run loop that drives it.
#[derive(Debug)]
pub struct Endpoint {
    config: Config,
    local: PeerId,
    info: PeerInfo,
    generation: u64,
    closed: bool,
    /// While discovering: how many peers (ourselves included) the bus says there are, and
    /// when discovery ends anyway.
    discovering: Option<(usize, Instant)>,
    directory: Directory,
    request_ids: Counter,
    incoming_ids: Counter,
    subscription_ids: Counter,
    outgoing: HashMap<RequestId, Outgoing>,
    incoming: HashMap<IncomingId, Incoming>,
    incoming_keys: HashMap<(PeerId, u64), IncomingId>,
    services: BTreeSet<String>,
    subscriptions: TopicIndex<SubscriptionId>,
    subscription_filters: HashMap<SubscriptionId, TopicFilter>,
    patterns: BTreeMap<String, usize>,
    publish_seq_out: HashMap<PeerId, u64>,
    publish_seq_in: HashMap<PeerId, u64>,
    timers: Timers,
    out: VecDeque<Output>,
    stats: Stats,
}

impl Endpoint {
    /// Creates the endpoint of peer `local` named `name` in process `pid`.
    ///
    /// Queues the first announce (asking every peer to announce itself back) and arms the
    /// heartbeat. `name` is only informative here; uniqueness is the transport's job.
    pub fn new(config: Config, local: PeerId, name: &str, pid: u32, now: Instant) -> Self {
        let mut ep = Endpoint {
            local,
            info: PeerInfo { name: name.to_string(), pid, services: Vec::new(), patterns: Vec::new(), peers: 1 },
            generation: 1,
            closed: false,
            discovering: Some((1, now + config.discovery_window)),
            directory: Directory::default(),
            request_ids: Counter::default(),
            incoming_ids: Counter::default(),
            subscription_ids: Counter::default(),
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            incoming_keys: HashMap::new(),
            services: BTreeSet::new(),
            subscriptions: TopicIndex::new(),
            subscription_filters: HashMap::new(),
            patterns: BTreeMap::new(),
            publish_seq_out: HashMap::new(),
            publish_seq_in: HashMap::new(),
            timers: Timers::default(),
            out: VecDeque::new(),
            stats: Stats::default(),
            config,
        };
        ep.directory.learn(now, local, ep.generation, ep.info.clone());
        ep.announce(Dest::All, Flags::PROBE);
        ep.timers.set(now + ep.config.heartbeat_interval, Timer::Heartbeat);
        ep.timers.set(now + ep.config.discovery_window, Timer::Discovery);
        debug_assert_eq!(ep.discovering.map(|d| d.1), Some(now + ep.config.discovery_window));
        ep
    }

    // ---------------------------------------------------------------------------------------
    // Inputs

    /// Feeds one input from the transport. Never panics on remote data.
    ///
    /// An `Err` means the frame was rejected and had no effect: log it and carry on.
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), FrameError> {
        if self.closed {
            return Ok(());
        }
        match input {
            Input::PeerLost(peer) => {
                if peer != self.local {
                    self.peer_gone(peer, LeaveReason::Lost);
                }
                Ok(())
            }
            Input::Frame { from, bytes } => {
                let frame = match Frame::decode(bytes, self.config.max_frame_len) {
                    Ok(f) => f,
                    Err(e) => {
                        self.stats.bad_frames += 1;
                        return Err(e);
                    }
                };
                if self.out.len() >= self.config.max_queued_outputs {
                    self.stats.overloaded += 1;
                    return Err(FrameError::Overloaded);
                }
                let r = self.on_frame(now, from, frame);
                match &r {
                    Ok(()) => self.stats.frames_in += 1,
                    Err(_) => self.stats.bad_frames += 1,
                }
                r
            }
        }
    }

    /// Runs every timer due at `now`: call deadlines, the heartbeat and peer expiry.
    ///
    /// Call it when [`poll_timeout`](Self::poll_timeout)'s instant has passed. A spurious call
    /// does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Call(id) => {
                    if let Some(o) = self.outgoing.remove(&id) {
                        tracing::debug!(id = id.0, method = %o.method, "call timed out");
                        self.send_cancel(o.peer, id);
                        self.finish_outgoing(id, o.mode, Err(CallError::TimedOut));
                    }
                }
                Timer::Incoming(id) => {
                    if self.incoming.contains_key(&id) {
                        self.drop_incoming(id, CancelReason::DeadlineExpired);
                    }
                }
                Timer::Discovery => {
                    if self.discovering.is_some() {
                        tracing::debug!(known = self.directory.len(), "discovery window over");
                        self.discovery_done();
                    }
                }
                Timer::Heartbeat => {
                    self.announce(Dest::All, 0);
                    if let Some(cutoff) = now.checked_sub(self.config.peer_timeout) {
                        for peer in self.directory.silent_since(cutoff, self.local) {
                            tracing::debug!(%peer, "peer expired: no announce within the peer timeout");
                            self.peer_gone(peer, LeaveReason::Expired);
                        }
                    }
                    self.timers.set(now + self.config.heartbeat_interval, Timer::Heartbeat);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Commands: calls

    /// Calls `method` (`service.method`) on some peer that serves the service (round-robin
    /// when several do, including this endpoint itself).
    ///
    /// The outcome arrives as [`Event::Response`] (unary) or as [`Event::Item`]s then
    /// [`Event::StreamEnded`] (streams). For a stream, `timeout` bounds the wait for each next
    /// item while this side has granted credit; it is paused while the reader is behind.
    pub fn request(
        &mut self,
        now: Instant,
        method: &str,
        body: Bytes,
        mode: CallMode,
        timeout: Duration,
    ) -> Result<RequestId, CommandError> {
        self.check_open()?;
        validate_method(method)?;
        let service = service_of(method);
        let peer = self
            .directory
            .pick_provider(service)
            .ok_or_else(|| CommandError::NoSuchService { service: service.to_string() })?;
        self.request_to(now, peer, method, body, mode, timeout)
    }

    /// Calls `method` on one given peer.
    pub fn request_to(
        &mut self,
        now: Instant,
        peer: PeerId,
        method: &str,
        body: Bytes,
        mode: CallMode,
        timeout: Duration,
    ) -> Result<RequestId, CommandError> {
        self.check_open()?;
        validate_method(method)?;
        if self.directory.get(peer).is_none() {
            return Err(CommandError::UnknownPeer(peer));
        }
        if self.outgoing.len() >= self.config.max_outgoing_calls {
            return Err(CommandError::TooManyCalls { limit: self.config.max_outgoing_calls });
        }
        self.check_room(1)?;
        let id = RequestId(self.request_ids.next());
        let flags = match mode {
            CallMode::Unary => 0,
            CallMode::ServerStream => Flags::STREAM,
            CallMode::Session => Flags::SESSION,
        };
        let window = if mode == CallMode::Unary { 0 } else { u64::from(self.config.stream_window) };
        let budget_ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let frame = self.encode(FrameKind::Request, flags, budget_ms, id.0, window, method.as_bytes(), &body)?;
        let deadline = now + timeout;
        self.timers.set(deadline, Timer::Call(id));
        let recv = (mode != CallMode::Unary).then(|| RecvHalf::new(self.config.stream_window));
        // A session's sending half starts with no credit: the server grants its window.
        let send = (mode == CallMode::Session).then(|| SendHalf::new(0));
        self.outgoing
            .insert(id, Outgoing { peer, mode, method: method.into(), timeout, deadline: Some(deadline), recv, send });
        self.transmit(Dest::Peer(peer), frame);
        Ok(id)
    }

    /// Gives up on a call this endpoint made. The server is told; no event follows.
    pub fn cancel(&mut self, id: RequestId) -> Result<(), CommandError> {
        let o = self.outgoing.remove(&id).ok_or(CommandError::UnknownCall)?;
        if let Some(d) = o.deadline {
            self.timers.cancel(d, Timer::Call(id));
        }
        self.send_cancel(o.peer, id);
        Ok(())
    }

    /// Answers a unary call. For streams, an `Err` ends the stream with that error.
    pub fn respond(&mut self, id: IncomingId, result: Result<Bytes, RemoteError>) -> Result<(), CommandError> {
        let inc = self.incoming.get(&id).ok_or(CommandError::UnknownCall)?;
        match (inc.mode, result) {
            (CallMode::Unary, Ok(body)) => {
                self.check_room(1)?;
                let frame = self.encode(FrameKind::Response, 0, 0, inc.remote_id, 0, &[], &body)?;
                let peer = inc.peer;
                self.remove_incoming(id);
                self.transmit(Dest::Peer(peer), frame);
                Ok(())
            }
            (CallMode::Unary, Err(e)) => {
                self.check_room(1)?;
                let (peer, remote_id) = (inc.peer, inc.remote_id);
                self.remove_incoming(id);
                self.send_error(peer, remote_id, e.code, &e.message);
                Ok(())
            }
            (_, Ok(_)) => {
                Err(CommandError::WrongMode("respond with a body is for unary calls; use send_item and finish"))
            }
            (_, Err(e)) => self.finish(CallRef::Incoming(id), Err(e)),
        }
    }

    /// Sends one stream item: from a server stream or session this endpoint serves, or from
    /// the caller's side of a session.
    ///
    /// Fails with [`CommandError::Blocked`] when the receiver has granted no credit; an
    /// [`Event::Writable`] follows when it does.
    pub fn send_item(&mut self, call: impl Into<CallRef>, body: Bytes) -> Result<(), CommandError> {
        self.check_open()?;
        self.check_room(1)?;
        let max = self.config.max_frame_len;
        let (dest, id, flags, half) = match call.into() {
            CallRef::Incoming(id) => {
                let inc = self.incoming.get_mut(&id).ok_or(CommandError::UnknownCall)?;
                let half = inc.send.as_mut().ok_or(CommandError::WrongMode("unary calls have no stream"))?;
                // A stream in progress is bounded by the caller's own idle timeout and cancel.
                if let Some(d) = inc.deadline.take() {
                    self.timers.cancel(d, Timer::Incoming(id));
                }
                (inc.peer, inc.remote_id, Flags::TO_CALLER, half)
            }
            CallRef::Outgoing(id) => {
                let o = self.outgoing.get_mut(&id).ok_or(CommandError::UnknownCall)?;
                let half = o.send.as_mut().ok_or(CommandError::WrongMode("only sessions send items to the server"))?;
                (o.peer, id.0, 0, half)
            }
        };
        let seq = half.take_credit()?;
        match encode_parts(FrameKind::StreamItem, flags, 0, id, seq, &[], &body, max) {
            Ok(frame) => {
                self.transmit(Dest::Peer(dest), frame);
                Ok(())
            }
            Err(e) => {
                half.give_back();
                Err(too_large(e))
            }
        }
    }

    /// Ends this side's stream: the server's end of a server stream or session (which closes
    /// the call), or the caller's sending half of a session (`Err` then cancels the call).
    pub fn finish(&mut self, call: impl Into<CallRef>, result: Result<(), RemoteError>) -> Result<(), CommandError> {
        self.check_open()?;
        self.check_room(1)?;
        match call.into() {
            CallRef::Incoming(id) => {
                let inc = self.incoming.get(&id).ok_or(CommandError::UnknownCall)?;
                let half = inc.send.as_ref().ok_or(CommandError::WrongMode("unary calls end with respond"))?;
                let (flags, code, msg) = match &result {
                    Ok(()) => (Flags::TO_CALLER, 0, ""),
                    Err(e) => (Flags::TO_CALLER | Flags::ERROR, e.code.0, e.message.as_str()),
                };
                let frame =
                    self.encode(FrameKind::StreamEnd, flags, code, inc.remote_id, half.sent(), &[], msg.as_bytes())?;
                let peer = inc.peer;
                self.remove_incoming(id);
                self.transmit(Dest::Peer(peer), frame);
                Ok(())
            }
            CallRef::Outgoing(id) => {
                if result.is_err() {
                    return self.cancel(id);
                }
                let o = self.outgoing.get_mut(&id).ok_or(CommandError::UnknownCall)?;
                let half = o.send.as_mut().ok_or(CommandError::WrongMode("only sessions have a sending half"))?;
                if half.is_finished() {
                    return Err(CommandError::StreamFinished);
                }
                half.finish();
                let (peer, sent) = (o.peer, half.sent());
                let frame = self.encode(FrameKind::StreamEnd, 0, 0, id.0, sent, &[], &[])?;
                self.transmit(Dest::Peer(peer), frame);
                Ok(())
            }
        }
    }

    /// Reports that the reader took `n` items of a stream. When enough have been taken,
    /// credit is granted to the sender, so items keep flowing and the reader's queue never
    /// holds more than [`Config::stream_window`] items.
    pub fn consumed(&mut self, now: Instant, call: impl Into<CallRef>, n: u32) -> Result<(), CommandError> {
        self.check_open()?;
        let (peer, id, flags, grant) = match call.into() {
            CallRef::Outgoing(id) => {
                let o = self.outgoing.get_mut(&id).ok_or(CommandError::UnknownCall)?;
                let half = o.recv.as_mut().ok_or(CommandError::WrongMode("unary calls have no stream"))?;
                let grant = half.consume(n);
                // The sender has credit again, so waiting on it is bounded again.
                if grant > 0 && o.deadline.is_none() {
                    let d = now + o.timeout;
                    o.deadline = Some(d);
                    self.timers.set(d, Timer::Call(id));
                }
                (o.peer, id.0, 0, grant)
            }
            CallRef::Incoming(id) => {
                let inc = self.incoming.get_mut(&id).ok_or(CommandError::UnknownCall)?;
                let half = inc.recv.as_mut().ok_or(CommandError::WrongMode("only sessions receive items"))?;
                (inc.peer, inc.remote_id, Flags::TO_CALLER, half.consume(n))
            }
        };
        if grant > 0 {
            let frame = self.encode(FrameKind::Credit, flags, 0, id, grant, &[], &[])?;
            self.transmit(Dest::Peer(peer), frame);
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Commands: services, pub/sub, lifecycle

    /// Starts serving `service`: calls to `service.*` are routed here. Announced at once.
    pub fn serve(&mut self, service: &str) -> Result<(), CommandError> {
        self.check_open()?;
        validate_service(service)?;
        if self.services.insert(service.to_string()) {
            if let Err(e) = self.reannounce() {
                self.services.remove(service);
                self.refresh_info();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops serving `service`.
    pub fn unserve(&mut self, service: &str) -> Result<(), CommandError> {
        self.check_open()?;
        if self.services.remove(service) {
            self.reannounce()?;
        }
        Ok(())
    }

    /// Subscribes to a topic pattern. Matching events arrive as [`Event::Published`].
    pub fn subscribe(&mut self, filter: TopicFilter) -> Result<SubscriptionId, CommandError> {
        self.check_open()?;
        let id = SubscriptionId(self.subscription_ids.next());
        let count = self.patterns.entry(filter.as_str().to_string()).or_insert(0);
        *count += 1;
        let is_new = *count == 1;
        self.subscriptions.insert(&filter, id);
        self.subscription_filters.insert(id, filter);
        if is_new {
            if let Err(e) = self.reannounce() {
                self.remove_subscription(id);
                self.refresh_info();
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Removes a subscription.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), CommandError> {
        self.check_open()?;
        if self.remove_subscription(id) {
            self.reannounce()?;
        }
        Ok(())
    }

    /// Publishes an event to every peer with a matching pattern, and to local subscriptions.
    /// Returns how many peers (local one included) it was queued for.
    pub fn publish(&mut self, topic: &Topic, body: Bytes) -> Result<usize, CommandError> {
        self.check_open()?;
        let peers = self.directory.subscribers(topic);
        self.check_room(peers.len())?;
        let name = topic.as_str().as_bytes();
        let len = crate::frame::HEADER_LEN + name.len() + body.len();
        if len > self.config.max_frame_len {
            return Err(CommandError::PayloadTooLarge { len, max: self.config.max_frame_len });
        }
        let mut count = 0;
        for peer in peers {
            if peer == self.local {
                let subscriptions = self.subscriptions.matches(topic);
                if !subscriptions.is_empty() {
                    count += 1;
                    self.push_event(Event::Published {
                        from: self.local,
                        topic: topic.clone(),
                        body: body.clone(),
                        subscriptions,
                        missed: 0,
                    });
                }
                continue;
            }
            let seq = self.publish_seq_out.entry(peer).or_insert(0);
            *seq += 1;
            let seq = *seq;
            let frame = self.encode(FrameKind::Publish, 0, 0, 0, seq, name, &body)?;
            self.transmit(Dest::Peer(peer), frame);
            count += 1;
        }
        Ok(count)
    }

    /// Ends discovery now: the transport knows that no other peer was on the bus when this one
    /// joined, so there is nobody to wait for.
    pub fn finish_discovery(&mut self) {
        if self.discovering.is_some() {
            self.discovery_done();
        }
    }

    /// Says goodbye and fails everything still open with [`CallError::Closed`]. After this,
    /// commands fail with [`CommandError::Closed`] and inputs are ignored; drain the final
    /// outputs (the goodbye frame and the failure events).
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        let frame = self.encode(FrameKind::Goodbye, 0, 0, 0, 0, &[], &[]);
        if let Ok(frame) = frame {
            self.transmit(Dest::All, frame);
        }
        let ids: Vec<RequestId> = self.outgoing.keys().copied().collect();
        for id in ids {
            if let Some(o) = self.outgoing.remove(&id) {
                self.finish_outgoing(id, o.mode, Err(CallError::Closed));
            }
        }
        let ids: Vec<IncomingId> = self.incoming.keys().copied().collect();
        for id in ids {
            self.drop_incoming(id, CancelReason::Closed);
        }
        self.timers.clear();
        self.discovering = None;
        self.closed = true;
    }

    // ---------------------------------------------------------------------------------------
    // Outputs

    /// The next output: a frame to transmit or an event for the application.
    ///
    /// Call it until it returns `None` after every input and command (the driver contract);
    /// outputs are queued inside, so a late drain delays them but never loses them.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called; `None` when no timer
    /// is armed (only after [`close`](Self::close): the heartbeat is always armed before).
    /// Ask again after every input, command or timeout.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ---------------------------------------------------------------------------------------
    // Getters

    /// This endpoint's peer id.
    pub fn local(&self) -> PeerId {
        self.local
    }

    /// Every peer in the directory, this one included.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.directory.iter()
    }

    /// One peer, if known.
    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.directory.get(id)
    }

    /// Whether some peer (this one included) serves `service`.
    pub fn has_provider(&self, service: &str) -> bool {
        self.directory.iter().any(|p| self.directory.serves(p.id, service))
    }

    /// Counters of what was seen and dropped.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether this endpoint is still learning who is on the bus (see
    /// [`Event::DiscoveryComplete`]).
    pub fn is_discovering(&self) -> bool {
        self.discovering.is_some()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sizes of the internal tables, for leak checks: (outgoing calls, incoming calls,
    /// subscriptions, armed timers besides the heartbeat, queued outputs).
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            outgoing: self.outgoing.len(),
            incoming: self.incoming.len() + self.incoming_keys.len(),
            subscriptions: self.subscription_filters.len() + self.subscriptions.len(),
            timers: self.timers.len().saturating_sub(usize::from(!self.closed)),
            queued: self.out.len(),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Private: frame handling

    fn on_frame(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        if from != self.local {
            self.directory.touch(now, from);
        }
        let to_caller = f.flags.has(Flags::TO_CALLER);
        match f.kind {
            FrameKind::Request => self.on_request(now, from, f),
            FrameKind::Response | FrameKind::ErrorResponse => {
                self.on_response(from, f);
                Ok(())
            }
            FrameKind::StreamItem if to_caller => self.on_outgoing_item(now, from, f),
            FrameKind::StreamItem => self.on_incoming_item(from, f),
            FrameKind::StreamEnd if to_caller => {
                self.on_outgoing_end(from, f);
                Ok(())
            }
            FrameKind::StreamEnd => {
                self.on_incoming_end(from, f);
                Ok(())
            }
            FrameKind::Credit => self.on_credit(from, f),
            FrameKind::Cancel => {
                match self.incoming_keys.get(&(from, f.id)) {
                    Some(&id) => self.drop_incoming(id, CancelReason::CallerCancelled),
                    None => self.stats.late_or_unknown += 1,
                }
                Ok(())
            }
            FrameKind::Publish => self.on_publish(from, f),
            FrameKind::Announce => self.on_announce(now, from, f),
            FrameKind::Goodbye => {
                if from != self.local {
                    self.peer_gone(from, LeaveReason::Goodbye);
                }
                Ok(())
            }
            FrameKind::Ping => {
                let frame = self.encode(FrameKind::Pong, 0, 0, f.id, 0, &[], &[]);
                if let Ok(frame) = frame {
                    self.transmit(Dest::Peer(from), frame);
                }
                Ok(())
            }
            FrameKind::Pong => Ok(()),
        }
    }

    fn on_request(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        if self.incoming_keys.contains_key(&(from, f.id)) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let method = f.name();
        let service = service_of(method);
        if !self.services.contains(service) {
            let msg = format!("`{}` does not serve `{service}`", self.info.name);
            self.send_error(from, f.id, ErrorCode::NO_SUCH_SERVICE, &msg);
            return Ok(());
        }
        if self.incoming.len() >= self.config.max_incoming_calls {
            let msg = format!("`{}` is serving its limit of {} calls", self.info.name, self.config.max_incoming_calls);
            self.send_error(from, f.id, ErrorCode::BUSY, &msg);
            return Ok(());
        }
        let mode = if f.flags.has(Flags::SESSION) {
            CallMode::Session
        } else if f.flags.has(Flags::STREAM) {
            CallMode::ServerStream
        } else {
            CallMode::Unary
        };
        let deadline = now + Duration::from_millis(u64::from(f.aux));
        let id = IncomingId(self.incoming_ids.next());
        let window = f.seq.min(u64::from(u32::MAX));
        let send = (mode != CallMode::Unary).then(|| SendHalf::new(window));
        let recv = (mode == CallMode::Session).then(|| RecvHalf::new(self.config.stream_window));
        // Streams are bounded by the caller's idle timeout (it cancels); a unary call by its
        // deadline, after which the caller no longer waits.
        let timer = (mode == CallMode::Unary).then_some(deadline);
        if let Some(d) = timer {
            self.timers.set(d, Timer::Incoming(id));
        }
        self.incoming.insert(id, Incoming { peer: from, remote_id: f.id, mode, deadline: timer, send, recv });
        self.incoming_keys.insert((from, f.id), id);
        if mode == CallMode::Session {
            let window = u64::from(self.config.stream_window);
            if let Ok(frame) = self.encode(FrameKind::Credit, Flags::TO_CALLER, 0, f.id, window, &[], &[]) {
                self.transmit(Dest::Peer(from), frame);
            }
        }
        let method = method.to_string();
        self.push_event(Event::RequestReceived { id, from, method, body: f.payload, deadline, mode });
        Ok(())
    }

    fn on_response(&mut self, from: PeerId, f: Frame) {
        let id = RequestId(f.id);
        let matches = self
            .outgoing
            .get(&id)
            .is_some_and(|o| o.peer == from && (f.kind == FrameKind::ErrorResponse || o.mode == CallMode::Unary));
        if !matches {
            self.stats.late_or_unknown += 1;
            return;
        }
        let Some(o) = self.outgoing.remove(&id) else {
            return;
        };
        if let Some(d) = o.deadline {
            self.timers.cancel(d, Timer::Call(id));
        }
        let outcome = if f.kind == FrameKind::Response {
            Ok(f.payload)
        } else {
            let msg = String::from_utf8_lossy(&f.payload).into_owned();
            Err(CallError::from_remote(ErrorCode(f.aux), msg, &o.method))
        };
        match outcome {
            Ok(body) => self.push_event(Event::Response { id, outcome: Ok(body) }),
            Err(e) => self.finish_outgoing(id, o.mode, Err(e)),
        }
    }

    fn on_outgoing_item(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let id = RequestId(f.id);
        let Some(o) = self.outgoing.get_mut(&id).filter(|o| o.peer == from) else {
            self.stats.late_or_unknown += 1;
            return Ok(());
        };
        let Some(half) = o.recv.as_mut() else {
            return Err(self.fail_outgoing_violation(id, from, "stream item on a unary call"));
        };
        match half.accept(f.seq) {
            Ok(()) => {}
            Err(Gap::Duplicate) => {
                self.stats.duplicates += 1;
                return Ok(());
            }
            Err(Gap::Lost { expected, got }) => {
                let o = self.outgoing.remove(&id).expect("checked above: the call is open");
                self.disarm(id, o.deadline);
                self.send_cancel(from, id);
                self.finish_outgoing(id, o.mode, Err(CallError::ItemLost { expected, got }));
                return Ok(());
            }
            Err(Gap::OverCredit) => {
                return Err(self.fail_outgoing_violation(id, from, "stream item beyond the granted credit"));
            }
        }
        // The idle timer runs only while the sender has credit left to use.
        let sender_has_credit = half.outstanding_credit() > 0;
        let old = o.deadline.take();
        if sender_has_credit {
            o.deadline = Some(now + o.timeout);
        }
        let new = o.deadline;
        if let Some(d) = old {
            self.timers.cancel(d, Timer::Call(id));
        }
        if let Some(d) = new {
            self.timers.set(d, Timer::Call(id));
        }
        self.push_event(Event::Item { call: CallRef::Outgoing(id), body: f.payload });
        Ok(())
    }

    fn on_outgoing_end(&mut self, from: PeerId, f: Frame) {
        let id = RequestId(f.id);
        let ok = self.outgoing.get(&id).is_some_and(|o| o.peer == from && o.recv.is_some());
        if !ok {
            self.stats.late_or_unknown += 1;
            return;
        }
        let Some(o) = self.outgoing.remove(&id) else {
            return;
        };
        self.disarm(id, o.deadline);
        let received = o.recv.as_ref().map_or(0, RecvHalf::received);
        let outcome = if f.flags.has(Flags::ERROR) {
            let msg = String::from_utf8_lossy(&f.payload).into_owned();
            Err(CallError::from_remote(ErrorCode(f.aux), msg, &o.method))
        } else if f.seq != received {
            // The server sent more items than arrived: the missing ones were lost.
            Err(CallError::ItemLost { expected: received + 1, got: f.seq })
        } else {
            Ok(())
        };
        self.push_event(Event::StreamEnded { id, outcome });
    }

    fn on_incoming_item(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let Some(&id) = self.incoming_keys.get(&(from, f.id)) else {
            self.stats.late_or_unknown += 1;
            return Ok(());
        };
        let Some(half) = self.incoming.get_mut(&id).and_then(|i| i.recv.as_mut()) else {
            return Err(self.fail_incoming_violation(id, from, "stream item to a call that is not a session"));
        };
        match half.accept(f.seq) {
            Ok(()) => {
                self.push_event(Event::Item { call: CallRef::Incoming(id), body: f.payload });
                Ok(())
            }
            Err(Gap::Duplicate) => {
                self.stats.duplicates += 1;
                Ok(())
            }
            Err(Gap::Lost { expected, got }) => {
                self.abort_incoming(id, CallError::ItemLost { expected, got });
                Ok(())
            }
            Err(Gap::OverCredit) => {
                Err(self.fail_incoming_violation(id, from, "stream item beyond the granted credit"))
            }
        }
    }

    fn on_incoming_end(&mut self, from: PeerId, f: Frame) {
        let Some(&id) = self.incoming_keys.get(&(from, f.id)) else {
            self.stats.late_or_unknown += 1;
            return;
        };
        let Some(half) = self.incoming.get_mut(&id).and_then(|i| i.recv.as_mut()) else {
            self.stats.late_or_unknown += 1;
            return;
        };
        let received = half.received();
        if f.seq != received {
            self.abort_incoming(id, CallError::ItemLost { expected: received + 1, got: f.seq });
        } else if half.end() {
            self.push_event(Event::InputFinished { id });
        } else {
            self.stats.duplicates += 1;
        }
    }

    fn on_credit(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let (call, half) = if f.flags.has(Flags::TO_CALLER) {
            let id = RequestId(f.id);
            match self.outgoing.get_mut(&id).filter(|o| o.peer == from).and_then(|o| o.send.as_mut()) {
                Some(h) => (CallRef::Outgoing(id), h),
                None => {
                    self.stats.late_or_unknown += 1;
                    return Ok(());
                }
            }
        } else {
            let Some(&id) = self.incoming_keys.get(&(from, f.id)) else {
                self.stats.late_or_unknown += 1;
                return Ok(());
            };
            match self.incoming.get_mut(&id).and_then(|i| i.send.as_mut()) {
                Some(h) => (CallRef::Incoming(id), h),
                None => {
                    return Err(FrameError::Violation { peer: from, what: "credit for a call with no stream" });
                }
            }
        };
        match half.grant(f.seq) {
            Some(true) => self.push_event(Event::Writable { call }),
            Some(false) => {}
            None => {
                return Err(FrameError::Violation { peer: from, what: "credit overflow" });
            }
        }
        Ok(())
    }

    fn on_publish(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let topic = Topic::new(f.name()).map_err(FrameError::BadTopic)?;
        let last = self.publish_seq_in.entry(from).or_insert(0);
        if f.seq <= *last {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let missed = f.seq - *last - 1;
        *last = f.seq;
        let subscriptions = self.subscriptions.matches(&topic);
        if subscriptions.is_empty() {
            self.stats.unmatched_events += 1;
            return Ok(());
        }
        self.push_event(Event::Published { from, topic, body: f.payload, subscriptions, missed });
        Ok(())
    }

    fn on_announce(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        if from == self.local {
            return Ok(());
        }
        let info: PeerInfo = codec::decode(&f.payload).map_err(FrameError::BadAnnounce)?;
        let (name, pid, their_count) = (info.name.clone(), info.pid, info.peers as usize);
        let learned = self.directory.learn(now, from, f.seq, info);
        match learned {
            Learned::New => self.push_event(Event::PeerJoined { peer: from, name, pid }),
            Learned::Changed => self.push_event(Event::PeerChanged { peer: from }),
            Learned::Same => {}
        }
        // A newcomer (or one that asked) learns about us at once rather than at our next
        // heartbeat, so it can call us without a discovery delay.
        if f.flags.has(Flags::PROBE) || learned == Learned::New {
            self.announce(Dest::Peer(from), 0);
        }
        if let Some((expected, _)) = self.discovering.as_mut() {
            *expected = (*expected).max(their_count);
            if self.directory.len() >= *expected {
                self.discovery_done();
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Private: state changes

    fn peer_gone(&mut self, peer: PeerId, reason: LeaveReason) {
        let known = self.directory.remove(peer);
        let calls: Vec<RequestId> = self.outgoing.iter().filter(|(_, o)| o.peer == peer).map(|(id, _)| *id).collect();
        for id in calls {
            if let Some(o) = self.outgoing.remove(&id) {
                self.disarm(id, o.deadline);
                self.finish_outgoing(id, o.mode, Err(CallError::PeerLost));
            }
        }
        let served: Vec<IncomingId> = self.incoming.iter().filter(|(_, i)| i.peer == peer).map(|(id, _)| *id).collect();
        for id in served {
            self.drop_incoming(id, CancelReason::PeerLost);
        }
        self.publish_seq_out.remove(&peer);
        self.publish_seq_in.remove(&peer);
        if known {
            self.push_event(Event::PeerLeft { peer, reason });
        }
    }

    /// Emits the terminal event of an outgoing call that was already removed.
    fn finish_outgoing(&mut self, id: RequestId, mode: CallMode, outcome: Result<Bytes, CallError>) {
        let ev = match mode {
            CallMode::Unary => Event::Response { id, outcome },
            _ => Event::StreamEnded { id, outcome: outcome.map(|_| ()) },
        };
        self.push_event(ev);
    }

    fn fail_outgoing_violation(&mut self, id: RequestId, peer: PeerId, what: &'static str) -> FrameError {
        if let Some(o) = self.outgoing.remove(&id) {
            self.disarm(id, o.deadline);
            self.send_cancel(peer, id);
            self.finish_outgoing(id, o.mode, Err(CallError::Protocol(what)));
        }
        FrameError::Violation { peer, what }
    }

    fn fail_incoming_violation(&mut self, id: IncomingId, peer: PeerId, what: &'static str) -> FrameError {
        self.abort_incoming(id, CallError::Protocol(what));
        FrameError::Violation { peer, what }
    }

    /// Ends a served call with an error to its caller and tells the application.
    fn abort_incoming(&mut self, id: IncomingId, why: CallError) {
        if let Some(inc) = self.incoming.get(&id) {
            let (peer, remote_id) = (inc.peer, inc.remote_id);
            let msg = why.to_string();
            if let Ok(frame) = self.encode(
                FrameKind::StreamEnd,
                Flags::TO_CALLER | Flags::ERROR,
                ErrorCode::PROTOCOL.0,
                remote_id,
                0,
                &[],
                msg.as_bytes(),
            ) {
                self.transmit(Dest::Peer(peer), frame);
            }
            self.drop_incoming(id, CancelReason::Broken(why));
        }
    }

    fn drop_incoming(&mut self, id: IncomingId, reason: CancelReason) {
        if self.remove_incoming(id) {
            self.push_event(Event::IncomingCancelled { id, reason });
        }
    }

    fn remove_incoming(&mut self, id: IncomingId) -> bool {
        let Some(inc) = self.incoming.remove(&id) else {
            return false;
        };
        self.incoming_keys.remove(&(inc.peer, inc.remote_id));
        if let Some(d) = inc.deadline {
            self.timers.cancel(d, Timer::Incoming(id));
        }
        true
    }

    fn remove_subscription(&mut self, id: SubscriptionId) -> bool {
        let Some(filter) = self.subscription_filters.remove(&id) else {
            return false;
        };
        self.subscriptions.remove(&filter, &id);
        let key = filter.as_str();
        match self.patterns.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.patterns.remove(key);
                true
            }
            None => false,
        }
    }

    fn disarm(&mut self, id: RequestId, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            self.timers.cancel(d, Timer::Call(id));
        }
    }

    fn refresh_info(&mut self) {
        self.info.services = self.services.iter().cloned().collect();
        self.info.patterns = self.patterns.keys().cloned().collect();
    }

    /// Bumps the generation and announces the new state to everyone.
    fn reannounce(&mut self) -> Result<(), CommandError> {
        self.refresh_info();
        let payload = codec::encode(&self.info).expect("PeerInfo always encodes");
        let len = crate::frame::HEADER_LEN + payload.len();
        if len > self.config.max_frame_len {
            return Err(CommandError::AnnounceTooLarge { len, max: self.config.max_frame_len });
        }
        self.generation += 1;
        // The local entry serves local calls and publishes like any other peer's.
        self.directory.learn_local(self.local, self.generation, self.info.clone());
        self.announce(Dest::All, 0);
        Ok(())
    }

    fn discovery_done(&mut self) {
        if let Some((_, deadline)) = self.discovering.take() {
            self.timers.cancel(deadline, Timer::Discovery);
        }
        self.push_event(Event::DiscoveryComplete);
    }

    fn announce(&mut self, dest: Dest, flags: u8) {
        self.info.peers = self.directory.len().min(u32::MAX as usize) as u32;
        let payload = codec::encode(&self.info).expect("PeerInfo always encodes");
        match self.encode(FrameKind::Announce, flags, 0, 0, self.generation, &[], &payload) {
            Ok(frame) => self.transmit(dest, frame),
            Err(e) => tracing::warn!(error = %e, "announce does not fit in a frame"),
        }
    }

    fn send_cancel(&mut self, peer: PeerId, id: RequestId) {
        if let Ok(frame) = self.encode(FrameKind::Cancel, 0, 0, id.0, 0, &[], &[]) {
            self.transmit(Dest::Peer(peer), frame);
        }
    }

    fn send_error(&mut self, peer: PeerId, remote_id: u64, code: ErrorCode, message: &str) {
        // Clip the message so an error always fits in a frame.
        let max = self.config.max_frame_len.saturating_sub(crate::frame::HEADER_LEN).min(64 << 10);
        let msg = clip_utf8(message, max);
        if let Ok(frame) = self.encode(FrameKind::ErrorResponse, 0, code.0, remote_id, 0, &[], msg.as_bytes()) {
            self.transmit(Dest::Peer(peer), frame);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        kind: FrameKind,
        flags: u8,
        aux: u32,
        id: u64,
        seq: u64,
        name: &[u8],
        payload: &[u8],
    ) -> Result<Bytes, CommandError> {
        encode_parts(kind, flags, aux, id, seq, name, payload, self.config.max_frame_len).map_err(too_large)
    }

    fn transmit(&mut self, dest: Dest, frame: Bytes) {
        self.stats.frames_out += 1;
        self.out.push_back(Output::Transmit(Transmit { dest, frame }));
    }

    fn push_event(&mut self, ev: Event) {
        self.out.push_back(Output::Event(ev));
    }

    fn check_open(&self) -> Result<(), CommandError> {
        if self.closed { Err(CommandError::Closed) } else { Ok(()) }
    }

    fn check_room(&self, n: usize) -> Result<(), CommandError> {
        if self.out.len() + n > self.config.max_queued_outputs {
            Err(CommandError::OutputFull { limit: self.config.max_queued_outputs })
        } else {
            Ok(())
        }
    }
}

/// Sizes of an endpoint's internal tables, for leak checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// Outgoing calls open.
    pub outgoing: usize,
    /// Incoming calls open (counted in both of their maps).
    pub incoming: usize,
    /// Local subscriptions (counted in both of their maps).
    pub subscriptions: usize,
    /// Armed timers besides the heartbeat.
    pub timers: usize,
    /// Outputs not yet drained.
    pub queued: usize,
}

/// The service part of a method name: everything before the last `.`.
///
/// ```
/// assert_eq!(hsipc_proto::service_of("calc.add"), "calc");
/// assert_eq!(hsipc_proto::service_of("a.b.c"), "a.b");
/// ```
pub fn service_of(method: &str) -> &str {
    method.rsplit_once('.').map_or(method, |(s, _)| s)
}

fn validate_method(method: &str) -> Result<(), CommandError> {
    let bad = |reason| Err(CommandError::InvalidName { name: method.to_string(), reason });
    if method.len() > MAX_NAME_LEN {
        return bad("longer than 65535 bytes");
    }
    match method.rsplit_once('.') {
        Some((s, m)) if !s.is_empty() && !m.is_empty() => validate_service(s),
        _ => bad("a method is named `service.method`"),
    }
}

fn validate_service(service: &str) -> Result<(), CommandError> {
    let bad = |reason| Err(CommandError::InvalidName { name: service.to_string(), reason });
    if service.is_empty() {
        return bad("a service name cannot be empty");
    }
    if service.len() > MAX_NAME_LEN {
        return bad("longer than 65535 bytes");
    }
    if service.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("names cannot contain spaces or control characters");
    }
    Ok(())
}

fn too_large(e: FrameError) -> CommandError {
    match e {
        FrameError::TooLarge { len, max } => CommandError::PayloadTooLarge { len, max },
        FrameError::NameTooLong { len } => {
            CommandError::InvalidName { name: format!("<{len} bytes>"), reason: "longer than 65535 bytes" }
        }
        _ => CommandError::WrongMode("frame could not be encoded"),
    }
}

fn clip_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
