//! The state machine: [`Endpoint`].
//!
//! This module holds the endpoint, its inputs, outputs and getters; the commands and frame
//! handlers live with their subject: `call` (requests, responses, streams), `pubsub`
//! (services, subscriptions, events) and `peers` (the directory and discovery).

mod call;
mod event_credit;
mod peers;
mod pubsub;
#[cfg(test)]
pub(crate) use pubsub::MAX_UNKNOWN_PUBLISHERS;

use self::event_credit::{Granted, Owed};
pub use self::event_credit::{NoCredit, Published};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::fast_map::FastMap as HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec;
use crate::config::Config;
use crate::directory::{Directory, Learned, Peer, PeerInfo};
use crate::error::{CallError, CommandError, ErrorCode, FrameError, RemoteError};
use crate::event::{CallMode, CancelReason, Dest, Event, Input, LeaveReason, Output, Transmit};
use crate::frame::{Arena, Body, Flags, Frame, FrameKind, MAX_NAME_LEN, Payload, WireFrame, encode_parts};
use crate::id::{CallRef, Counter, IncomingId, MethodName, PeerId, RequestId, SubscriptionId};
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
    /// Responses, items or credit for calls that are not open (late, after a timeout or
    /// cancel), and events from a peer no one announced once as many such publishers as 1024
    /// beyond the peers known are tracked already.
    pub late_or_unknown: u64,
    /// Duplicated requests, stream items or events, dropped.
    pub duplicates: u64,
    /// Events received that no local subscription matches (the publisher's view was stale).
    pub unmatched_events: u64,
    /// Frames dropped because the output queue was full.
    pub overloaded: u64,
    /// Reliable subscribers cut off because they had no credit at a publish timeout.
    pub subscribers_cut_off: u64,
    /// Events not sent to a cut-off reliable subscriber for want of credit (it is told).
    pub events_cut_off: u64,
    /// Credited events received beyond the window granted to their publisher (delivered
    /// anyway; the two sides' accounts had drifted apart).
    pub credit_overruns: u64,
    /// Peers cut off because the transport found they broke the protocol beneath the frames
    /// ([`Input::PeerBroke`]).
    pub peers_broke: u64,
}

/// A call this endpoint made.
#[derive(Debug)]
struct Outgoing {
    peer: PeerId,
    mode: CallMode,
    /// Kept for errors that name it.
    method: MethodName,
    timeout: Duration,
    /// `None` while the timer is paused (a stream whose reader has all granted items queued).
    deadline: Option<Instant>,
    recv: Option<RecvHalf>,
    send: Option<SendHalf>,
}

/// A call made while discovering, before any provider of its service was known: sent as soon
/// as one is, failed with `NoSuchService` if discovery ends without one.
#[derive(Debug)]
struct Parked {
    method: MethodName,
    body: Body,
    mode: CallMode,
    timeout: Duration,
    deadline: Instant,
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
    parked: BTreeMap<RequestId, Parked>,
    incoming: HashMap<IncomingId, Incoming>,
    incoming_keys: HashMap<(PeerId, u64), IncomingId>,
    /// How many calls each peer has open here (for its share of the incoming table).
    incoming_per_peer: HashMap<PeerId, usize>,
    /// The processes of the latest departed peers, oldest first: a peer id is one hub's for
    /// good, so an announce bringing one back from another process is refused.
    departed: VecDeque<(PeerId, u32)>,
    services: BTreeSet<String>,
    subscriptions: TopicIndex<SubscriptionId>,
    subscription_filters: HashMap<SubscriptionId, (TopicFilter, bool)>,
    patterns: BTreeMap<String, usize>,
    /// The patterns of reliable subscriptions, counted.
    reliable_patterns: BTreeMap<String, usize>,
    /// As a publisher: each reliable subscriber's credit.
    granted: HashMap<PeerId, Granted>,
    /// As a subscriber: what each publisher's credited events used of this endpoint's window.
    owed: HashMap<PeerId, Owed>,
    publish_seq_out: HashMap<PeerId, u64>,
    publish_seq_in: HashMap<PeerId, u64>,
    timers: Timers,
    out: VecDeque<Output>,
    /// Where small frames' heads are written (see [`Arena`]).
    arena: Arena,
    stats: Stats,
}

impl Endpoint {
    /// Creates the endpoint of peer `local` named `name` in process `pid`.
    ///
    /// Queues the first announce (asking every peer to announce itself back) and arms the
    /// heartbeat. `name` is only informative here; uniqueness is the transport's job.
    pub fn new(config: Config, local: PeerId, name: &str, pid: u32, now: Instant) -> Self {
        let config = config.sanitized();
        let mut ep = Endpoint {
            local,
            info: PeerInfo {
                name: name.to_string(),
                pid,
                services: Vec::new(),
                patterns: Vec::new(),
                reliable: Vec::new(),
                event_window: config.event_window,
                event_window_bytes: config.event_window_bytes,
                peers: 1,
            },
            generation: 1,
            closed: false,
            discovering: Some((1, now + config.discovery_window)),
            directory: Directory::default(),
            request_ids: Counter::default(),
            incoming_ids: Counter::default(),
            subscription_ids: Counter::default(),
            outgoing: HashMap::default(),
            parked: BTreeMap::new(),
            incoming: HashMap::default(),
            incoming_keys: HashMap::default(),
            incoming_per_peer: HashMap::default(),
            departed: VecDeque::new(),
            services: BTreeSet::new(),
            subscriptions: TopicIndex::new(),
            subscription_filters: HashMap::default(),
            patterns: BTreeMap::new(),
            reliable_patterns: BTreeMap::new(),
            granted: HashMap::default(),
            owed: HashMap::default(),
            publish_seq_out: HashMap::default(),
            publish_seq_in: HashMap::default(),
            timers: Timers::default(),
            out: VecDeque::new(),
            arena: Arena::default(),
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
            Input::PeerBroke { peer, why } => {
                if peer != self.local {
                    self.stats.peers_broke += 1;
                    self.peer_gone(peer, LeaveReason::Broke(why));
                }
                Ok(())
            }
            Input::Frame { from, bytes } => {
                let decoded = Frame::decode(bytes, self.config.max_frame_len);
                self.on_decoded(now, from, decoded)
            }
            Input::SharedFrame { from, bytes } => {
                let decoded = Frame::decode_shared(bytes, self.config.max_frame_len);
                self.on_decoded(now, from, decoded)
            }
            Input::StampedFrame { from, bytes, stamp } => {
                let decoded = Frame::decode_shared_stamped(bytes, self.config.max_frame_len, stamp);
                self.on_decoded(now, from, decoded)
            }
        }
    }

    /// Handles a frame as decoded (or the reason it could not be).
    fn on_decoded(&mut self, now: Instant, from: PeerId, decoded: Result<Frame, FrameError>) -> Result<(), FrameError> {
        let frame = match decoded {
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
                    } else if let Some(p) = self.parked.remove(&id) {
                        self.finish_outgoing(id, p.mode, Err(CallError::TimedOut));
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
                        self.discovery_done(now);
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
    // Lifecycle

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
        for (id, p) in std::mem::take(&mut self.parked) {
            self.finish_outgoing(id, p.mode, Err(CallError::Closed));
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

    /// Whether some peer (this one included) subscribes to a pattern matching `topic`.
    pub fn has_subscriber(&self, topic: &Topic) -> bool {
        self.directory.has_subscriber(topic)
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
            outgoing: self.outgoing.len() + self.parked.len(),
            incoming: self.incoming.len() + self.incoming_keys.len() + self.incoming_per_peer.len(),
            subscriptions: self.subscription_filters.len() + self.subscriptions.len(),
            timers: self.timers.len().saturating_sub(usize::from(!self.closed)),
            queued: self.out.len(),
            publishers: self.publish_seq_in.len(),
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
            FrameKind::Publish => self.on_publish(now, from, f),
            FrameKind::EventCredit => self.on_event_credit(now, from, f),
            FrameKind::EventsLost => self.on_events_lost(from, f),
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

    /// Encodes a frame of this endpoint's (see [`encode_parts`]): an application's [`Body`] is
    /// shared when large, any other payload copied.
    #[allow(clippy::too_many_arguments)]
    fn encode<'a>(
        &mut self,
        kind: FrameKind,
        flags: u8,
        aux: u32,
        id: u64,
        seq: u64,
        name: &[u8],
        payload: impl Into<Payload<'a>>,
    ) -> Result<WireFrame, CommandError> {
        let max = self.config.max_frame_len;
        encode_parts(&mut self.arena, kind, flags, aux, id, seq, name, payload.into(), max).map_err(too_large)
    }

    fn transmit(&mut self, dest: Dest, frame: WireFrame) {
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
#[non_exhaustive]
pub struct TableSizes {
    /// Outgoing calls open.
    pub outgoing: usize,
    /// Incoming calls open (counted in both of their maps), and the peers they come from.
    pub incoming: usize,
    /// Local subscriptions (counted in both of their maps).
    pub subscriptions: usize,
    /// Armed timers besides the heartbeat.
    pub timers: usize,
    /// Outputs not yet drained.
    pub queued: usize,
    /// Publishers whose events this endpoint tracks (their sequence numbers).
    pub publishers: usize,
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
