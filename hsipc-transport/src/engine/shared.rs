//! What the engine's threads and handles share: the state lock, the send lock, the wake-ups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::Bytes;
use proto::frame::WireFrame;
use proto::{Dest, Input, PeerId};
use smallvec::SmallVec;

use super::caller_lane::{CallerLane, CallerLanes};
use super::deferred::{Deferred, ReaderWakes};
use super::dispatch::Dispatcher;
use super::state::{Batch, Landed, State};
use crate::send_lock::SendLock;
use crate::transport::{PeerSender, Sent, Transport};

pub(crate) struct Shared {
    /// This engine, for handles given to the dispatcher.
    me: Weak<Shared>,
    state: Mutex<State>,
    /// Taken before the state lock is released and held while deliveries run, so that commits
    /// deliver in the order they changed the state. Never held while taking the state lock.
    delivery: Mutex<()>,
    /// The send lock: whoever holds it sends everything queued. `None` once closed.
    transport: SendLock<Option<Box<dyn Transport>>>,
    /// Who runs served calls; taken away at close, so that handler workers end.
    dispatcher: Mutex<Option<Arc<dyn Dispatcher>>>,
    wake_writer: super::alarm::Alarm,
    wake_clock: super::alarm::Alarm,
    /// Set by [`Engine::shutdown`](super::Engine::shutdown).
    pub(super) shutdown: AtomicBool,
    /// Set by the clock once the state is closed and the goodbye queued.
    pub(super) closed: AtomicBool,
    pub(super) local: PeerId,
    pub(super) name: Box<str>,
    pub(super) max_frame_len: usize,
    pub(super) window: u32,
    /// How handlers' answers are sent: inline (thread pools) or without blocking (runtimes).
    pub(super) handler_send: SendBy,
    /// Lanes a blocking caller may read itself, by peer (see [`CallerLane`]).
    caller_lanes: CallerLanes,
    /// The peers whose requests workers served latest: the lanes idle workers read.
    pub(super) served_peers: super::idle_lanes::ServedPeers,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("local", &self.local).field("name", &self.name).finish_non_exhaustive()
    }
}

/// Each thread's empty vectors from its last commit, reused by the next one so that a commit
/// does not allocate. (A commit nested in another, by a handler answering inline, finds them
/// taken and makes its own.)
struct Spare {
    deferred: std::cell::Cell<Vec<Deferred>>,
    dispatches: std::cell::Cell<Vec<super::dispatch::IncomingCall>>,
}

thread_local! {
    static SPARE: Spare = const {
        Spare { deferred: std::cell::Cell::new(Vec::new()), dispatches: std::cell::Cell::new(Vec::new()) }
    };
}

/// Who sends the frames a change to the state produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendBy {
    /// The writer thread (threads that must never block or wait: the clock, the readers).
    Writer,
    /// This thread, if nobody else is sending; it may block in the transport (thread-pool
    /// handlers).
    Inline,
    /// As `Inline`, unless this thread holds its final answers for later (a worker, see
    /// [`AnswersHeld`](super::AnswersHeld)).
    InlineUnlessHeld,
    /// This thread, without ever blocking: whatever cannot go at once (a full lane, a frame for
    /// the bus) goes to the writer, in order (callers, async handlers, a subscription's
    /// receiver giving credit back).
    TryInline,
}

/// The channels that wake the writer and the clock thread.
pub(super) struct Wakes {
    pub(super) writer: super::alarm::Alarm,
    pub(super) clock: super::alarm::Alarm,
}

impl Shared {
    pub(super) fn new(
        me: Weak<Shared>,
        state: State,
        dispatcher: Arc<dyn Dispatcher>,
        wakes: Wakes,
        name: &str,
    ) -> Self {
        let Wakes { writer: wake_writer, clock: wake_clock } = wakes;
        let config = state.config();
        let handler_send = if config.handlers_send_inline { SendBy::Inline } else { SendBy::TryInline };
        let (max_frame_len, window) = (config.proto.max_frame_len, config.proto.stream_window);
        let local = state.endpoint.local();
        Shared {
            me,
            state: Mutex::new(state),
            delivery: Mutex::new(()),
            transport: SendLock::new(None),
            dispatcher: Mutex::new(Some(dispatcher)),
            wake_writer,
            wake_clock,
            shutdown: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            local,
            name: name.into(),
            max_frame_len,
            window,
            handler_send,
            caller_lanes: CallerLanes::default(),
            served_peers: Default::default(),
        }
    }

    /// The transport's lane from `peer` that a caller may read (see [`CallerLane`]).
    pub(crate) fn offer_caller_lane(&self, peer: PeerId, lane: Weak<dyn CallerLane>) {
        self.caller_lanes.offer(peer, lane);
    }

    /// The lane from `peer` a waiting caller may read itself, if there is one.
    pub(super) fn caller_lane(&self, peer: PeerId) -> Option<Arc<dyn CallerLane>> {
        self.caller_lanes.get(peer)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic in a callback cannot leave the state half-updated in a way that matters more
        // than stopping the hub would; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_transport(&self, t: Box<dyn Transport>) {
        *self.lock_transport() = Some(t);
    }

    /// A frame from the transport (called by its reader thread).
    pub(crate) fn input(&self, from: PeerId, bytes: Bytes) {
        self.input_all(from, std::iter::once(bytes));
    }

    /// A frame from the transport, landed where `landed` says (see
    /// [`Ingress::deliver_landed`](crate::Ingress::deliver_landed)).
    pub(crate) fn input_landed(&self, from: PeerId, bytes: Bytes, landed: Landed) {
        self.input_frames(from, std::iter::once(bytes), landed);
    }

    /// Frames from the transport, in their order, under one lock and one commit (called by
    /// a reader that found several at once). Whether that handed on requests or answers (see
    /// [`commit`](Self::commit)); `false` once the engine is closed (nothing was handed on).
    pub(crate) fn input_all(&self, from: PeerId, frames: impl Iterator<Item = Bytes>) -> bool {
        self.input_frames(from, frames, Landed::Own)
    }

    /// [`input_all`](Self::input_all), for frames landed where `landed` says.
    fn input_frames(&self, from: PeerId, frames: impl Iterator<Item = Bytes>, landed: Landed) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        if state.is_closed() {
            return false;
        }
        for bytes in frames {
            state.input(now, from, bytes, landed);
            // What the frame produced is taken out of the protocol before the next one, as it
            // would be frame by frame (the protocol bounds its queued outputs).
            state.drain(now);
        }
        self.commit(state, now, SendBy::Writer)
    }

    /// The process id `peer` announced, if known.
    pub(crate) fn peer_pid(&self, peer: PeerId) -> Option<u32> {
        self.state().endpoint.peer(peer).map(|p| p.info.pid).filter(|pid| *pid != 0)
    }

    /// The transport learned that a peer is gone.
    pub(crate) fn peer_lost(&self, peer: PeerId) {
        self.peer_gone(Input::PeerLost(peer));
    }

    /// The transport found that a peer broke the protocol beneath the frames, and dropped
    /// what it read from it (see [`Ingress::peer_broke`](crate::Ingress::peer_broke)).
    pub(crate) fn peer_broke(&self, peer: PeerId, why: &'static str) {
        self.peer_gone(Input::PeerBroke { peer, why });
    }

    fn peer_gone(&self, input: Input) {
        let now = Instant::now();
        let mut state = self.state();
        if state.is_closed() {
            return;
        }
        let _ = state.endpoint.handle_input(now, input);
        self.commit(state, now, SendBy::Writer);
    }

    /// Ends a change to the state: collects its events and frames, releases the lock, then
    /// wakes whoever waits, dispatches requests, and has the frames sent (as `send_by` says: by
    /// this thread, or by whoever holds the send lock if another thread is sending, or by the
    /// writer). Whether it handed requests to the dispatcher or answers to callers: it woke
    /// threads that may read a lane themselves (a worker, a blocking caller).
    pub(crate) fn commit(&self, mut state: MutexGuard<'_, State>, now: Instant, send_by: SendBy) -> bool {
        state.drain(now);
        let mut deferred = state.take_deferred(SPARE.with(|s| s.deferred.take()));
        let queued = state.has_outbound();
        let earlier_timer = state.needs_earlier_wake();
        let mut followups = Vec::new();
        let mut dispatches = SPARE.with(|s| s.dispatches.take());
        let mut answered = false;
        if !deferred.is_empty() {
            let order = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
            drop(state);
            let mut wakes = ReaderWakes::default();
            for d in deferred.drain(..) {
                answered |= matches!(d, Deferred::Response(..));
                match d {
                    // Requests are handed over after the delivery lock too: a dispatcher or a
                    // runtime may then command the engine (refuse, answer inline) without
                    // taking the two locks in the other order.
                    Deferred::Dispatch(call) => dispatches.push(call),
                    other => {
                        wakes.before(&other);
                        followups.extend(other.complete(self));
                    }
                }
            }
            drop(order);
            drop(wakes);
        } else {
            drop(state);
        }
        let mut handed = answered || !dispatches.is_empty();
        followups.extend(dispatches.drain(..).filter_map(|call| Deferred::Dispatch(call).complete(self)));
        SPARE.with(|s| {
            s.deferred.set(deferred);
            s.dispatches.set(dispatches);
        });
        if queued {
            match send_by {
                SendBy::Inline => self.send_inline(true),
                SendBy::InlineUnlessHeld => {
                    if !super::idle_lanes::hold_answer(self) {
                        self.send_inline(true)
                    }
                }
                SendBy::TryInline => self.send_inline(false),
                SendBy::Writer => self.wake_writer(),
            }
        }
        if earlier_timer {
            self.wake_clock();
        }
        if !followups.is_empty() {
            let mut state = self.state();
            for f in followups {
                state.follow_up(f);
            }
            handed |= self.commit(state, now, SendBy::Writer);
        }
        handed
    }

    /// This engine, while any handle to it lives.
    pub(super) fn this(&self) -> Option<Arc<Shared>> {
        self.me.upgrade()
    }

    /// This engine, held weakly.
    pub(super) fn weak(&self) -> Weak<Shared> {
        self.me.clone()
    }

    pub(super) fn dispatcher(&self) -> Option<Arc<dyn Dispatcher>> {
        self.dispatcher.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn close_dispatcher(&self) {
        self.dispatcher.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub(super) fn wake_writer(&self) {
        self.wake_writer.ring();
    }

    pub(super) fn wake_clock(&self) {
        self.wake_clock.ring();
    }

    /// Sends what is queued from this thread, unless another thread is sending (then that
    /// thread sends it once it lets go of the send lock, see [`SendLock`]). Sends one batch,
    /// and then at most [`SEND_ROUNDS`] more that other threads left to it (without waiting),
    /// so a handler's thread is never kept sending other threads' frames for long; what is
    /// queued after that goes to the writer. With `may_block` false, a frame the transport
    /// cannot take at once (a full lane, a frame for the bus) stops the batch: it and
    /// everything after it go back in front of the queue for the writer, in order (the send
    /// lock is held meanwhile).
    pub(super) fn send_inline(&self, may_block: bool) {
        let Some(mut transport) = self.try_lock_transport() else { return };
        let mut batch = self.state().take_outbound();
        // Peers whose own path took frames: written once the send lock is let go.
        let mut handed: SmallVec<[Arc<dyn PeerSender>; 4]> = SmallVec::new();
        // Whether a frame went a way that may leave it kept by the transport (a direct send, or
        // one that may wait).
        let mut may_keep = false;
        match transport.as_deref_mut() {
            Some(t) => {
                while let Some((dest, frame)) = batch.frames.pop_front() {
                    let went = match dest {
                        Dest::Peer(p) => match t.try_send(p, &frame) {
                            Ok(Sent::Now) => {
                                // It may be kept by the transport (see `kept` below).
                                may_keep = true;
                                Ok(true)
                            }
                            Ok(Sent::Queued(peer)) => {
                                if !handed.iter().any(|h| Arc::ptr_eq(h, &peer)) {
                                    handed.push(peer);
                                }
                                Ok(true)
                            }
                            Ok(Sent::NotNow) if may_block => {
                                may_keep = true;
                                t.send(p, &frame).map(|()| true)
                            }
                            Ok(Sent::NotNow) => Ok(false),
                            Err(e) => Err(e),
                        },
                        Dest::All if may_block => {
                            may_keep = true;
                            t.broadcast(&frame).map(|()| true)
                        }
                        Dest::All => Ok(false),
                    };
                    match went {
                        Ok(true) => {}
                        Ok(false) => {
                            batch.frames.push_front((dest, frame));
                            break;
                        }
                        Err(e) => tracing::debug!(error = %e, "transport failed to send a frame"),
                    }
                }
            }
            None => batch.frames.clear(),
        }
        // Frames this batch could not send at once, and frames a direct send left kept by the
        // transport (a full lane), are the writer's to finish. (Frames queued meanwhile by other
        // threads are sent when the lock is let go, or by the writer if they woke it.) Frames
        // handed to a peer's own path say so when they are written (below).
        let stopped = !batch.frames.is_empty();
        let kept = may_keep && transport.as_ref().is_some_and(|t| t.waiting().is_some());
        self.finish_batch(batch);
        let _then_others = transport.unlock_first();
        if stopped || kept {
            self.wake_writer();
        }
        // Each peer's frames are written under that peer's lock alone: threads sending to
        // different peers write at the same time. This thread's own go first, then (as
        // `_then_others` drops) what other threads left to it while it held the send lock.
        let mut left = false;
        for peer in handed {
            left |= peer.send_queued();
        }
        if left {
            self.wake_writer();
        }
    }

    /// The writer's send: waits for the send lock (held only briefly by handlers), writes what
    /// the transport kept (full lanes with room again), then what is queued, then lets the
    /// transport keep house (close idle lanes).
    pub(super) fn send_queued_blocking(&self) {
        let mut transport = self.lock_transport();
        if let Some(t) = transport.as_deref_mut() {
            t.flush();
        }
        self.send_all(transport.as_deref_mut());
        if let Some(t) = transport.as_deref_mut() {
            t.tick();
        }
    }

    /// What the transport's kept frames wait for, for the writer to sleep on.
    pub(super) fn transport_waiting(&self) -> Option<crate::transport::Waiting> {
        self.lock_transport().as_ref().and_then(|t| t.waiting())
    }

    pub(super) fn close_transport(&self) {
        let mut transport = self.lock_transport();
        self.send_all(transport.as_deref_mut());
        if let Some(mut t) = transport.take() {
            t.close();
        }
    }

    /// Sends the queue out with the send lock held.
    fn send_all(&self, mut transport: Option<&mut (dyn Transport + 'static)>) {
        loop {
            let mut batch = self.state().take_outbound();
            if batch.frames.is_empty() {
                return;
            }
            for (dest, frame) in batch.frames.drain(..) {
                if let Some(t) = transport.as_deref_mut() {
                    if let Err(e) = send_one(t, dest, &frame) {
                        tracing::debug!(error = %e, "transport failed to send a frame");
                    }
                }
            }
            self.finish_batch(batch);
        }
    }

    /// The send lock, waiting for it.
    fn lock_transport(&self) -> Sending<'_> {
        Sending { shared: self, guard: Some(self.transport.lock()) }
    }

    /// The send lock if it is free; if not, its holder sends what this thread queued once it
    /// lets go (`None`: nothing more to do here).
    fn try_lock_transport(&self) -> Option<Sending<'_>> {
        Some(Sending { shared: self, guard: Some(self.transport.try_lock()?) })
    }

    /// The send lock was let go: sends what threads that found it taken queued meanwhile (they
    /// left it to the holder; waking the writer would cost them a context switch), at most
    /// [`SEND_ROUNDS`] rounds in a row on one thread, without waiting; then the writer does.
    fn after_send_lock(&self) {
        if !self.transport.asked() {
            return;
        }
        let rounds = ROUNDS.with(|r| r.get());
        if rounds >= SEND_ROUNDS || std::thread::panicking() {
            self.wake_writer();
            return;
        }
        /// Puts this thread's round count back, also if the send unwinds.
        struct Round(u8);
        impl Drop for Round {
            fn drop(&mut self) {
                ROUNDS.with(|r| r.set(self.0));
            }
        }
        ROUNDS.with(|r| r.set(rounds + 1));
        let _back = Round(rounds);
        self.send_inline(false);
    }

    /// Hands a batch back (requeueing what was not sent, waking publishers waiting for room).
    fn finish_batch(&self, batch: Batch) {
        let mut state = self.state();
        state.batch_done(batch);
        let mut deferred = state.take_deferred(SPARE.with(|s| s.deferred.take()));
        drop(state);
        for d in deferred.drain(..) {
            // Only `Done` wake-ups come from here; nothing to follow up (and no event or stream
            // item, whose reader would need waking: they come from `drain`, in `commit`).
            debug_assert!(!matches!(d, Deferred::Publish(..) | Deferred::Lost(..) | Deferred::Stream(..)));
            let _ = d.complete(self);
        }
        SPARE.with(|s| s.deferred.set(deferred));
    }

    /// Has the engine say goodbye and stop (the clock thread does it); idempotent.
    pub(crate) fn begin_shutdown(&self) {
        if !self.shutdown.swap(true, Ordering::SeqCst) {
            self.wake_clock();
        }
    }

    pub(super) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}

/// How many rounds of sending other threads' frames one thread does in a row when it lets go
/// of the send lock (see [`Shared::after_send_lock`]).
const SEND_ROUNDS: u8 = 4;

thread_local! {
    /// The rounds of other threads' frames this thread is sending now.
    static ROUNDS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// The engine's send lock (the transport), held. Threads that find it taken leave their frames
/// to the holder: when it is let go, what they queued is sent (see
/// [`Shared::after_send_lock`]).
struct Sending<'a> {
    shared: &'a Shared,
    guard: Option<MutexGuard<'a, Option<Box<dyn Transport>>>>,
}

impl std::ops::Deref for Sending<'_> {
    type Target = Option<Box<dyn Transport>>;

    fn deref(&self) -> &Self::Target {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Sending<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl<'a> Sending<'a> {
    /// Lets go of the send lock without sending what other threads left to this one yet: that
    /// happens when the returned guard drops (also on unwind), once this thread has written its
    /// own frames.
    fn unlock_first(mut self) -> ActLater<'a> {
        drop(self.guard.take());
        ActLater(self.shared)
    }
}

/// Sends what other threads left to this one while it held the send lock, when it drops (see
/// [`Sending::unlock_first`]).
struct ActLater<'a>(&'a Shared);

impl Drop for ActLater<'_> {
    fn drop(&mut self) {
        self.0.after_send_lock();
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.guard.take().is_some() {
            self.shared.after_send_lock();
        }
    }
}

/// Sends one frame, waiting if the transport must.
fn send_one(t: &mut dyn Transport, dest: Dest, frame: &WireFrame) -> Result<(), crate::TransportError> {
    match dest {
        Dest::Peer(p) => t.send(p, frame),
        Dest::All => t.broadcast(frame),
    }
}
