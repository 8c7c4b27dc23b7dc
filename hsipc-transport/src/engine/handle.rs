//! `Handle`: how a hub commands its engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use proto::frame::Body;
use proto::{
    CallMode, CallRef, IncomingId, NoCredit, PeerId, RemoteError, RequestId, SubscriptionId, Topic, TopicFilter,
};

use super::item_sink::{ItemSink, SessionSender};
use super::pending::{PendingCall, Waiter};
use super::shared::{SendBy, Shared};
use super::state::{Awaited, Census, State, Stats};
use super::stream_reader::ItemReceiver;
use super::subscription::{EventReceiver, Qos, SubscriptionQueue};
use super::{CallContext, ReadingForACall};
use crate::error::{Error, Result};

/// How much longer than a stream's idle timeout one blocking read waits before it gives up on
/// the engine (a guard against a bug: the engine's clock ends stalled streams itself).
const STREAM_BACKSTOP: Duration = Duration::from_millis(500);

/// A hub's handle on its running engine. Cheap to clone.
///
/// Every method runs at once on the calling thread and never waits for the bus: a call that
/// cannot start fails immediately, and outcomes that come later arrive as [`Waiter`]s,
/// [`PendingCall`]s and receivers that a thread blocks on or a task awaits.
#[derive(Clone, Debug)]
pub struct Handle {
    shared: Arc<Shared>,
    /// Answers go out without ever blocking this thread (a handler run inline on a reader).
    never_block: bool,
}

/// The outcome of [`Handle::publish`].
#[derive(Debug)]
pub enum Publish {
    /// Queued for this many peers (this hub included).
    Queued(usize),
    /// Not published: the send backlog is long. Wait, then publish again.
    Wait(Waiter<()>),
}

/// A peer as shown to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

impl Handle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Handle { shared, never_block: false }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A request from `peer` goes to a worker or a task: idle workers read its lane (see
    /// [`IdleLanes`](super::IdleLanes)).
    pub(crate) fn served_for(&self, peer: PeerId) {
        self.shared.served_peers.set(peer);
    }

    /// This hub's peer id.
    pub fn local(&self) -> PeerId {
        self.shared.local
    }

    /// This hub's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The largest payload that fits in a frame.
    pub fn max_payload_len(&self) -> usize {
        self.shared.max_frame_len.saturating_sub(proto::frame::HEADER_LEN)
    }

    /// Whether the hub has been asked to shut down.
    pub fn is_closed(&self) -> bool {
        self.shared.is_shut_down()
    }

    /// Runs `f` on the state, then delivers its events and has its frames sent as `send_by`
    /// says.
    fn with<T>(&self, send_by: SendBy, f: impl FnOnce(&mut State, Instant) -> Result<T>) -> Result<T> {
        self.with_at(Instant::now(), send_by, f)
    }

    /// [`with`](Self::with) at `now`, an instant the caller has just read.
    fn with_at<T>(&self, now: Instant, send_by: SendBy, f: impl FnOnce(&mut State, Instant) -> Result<T>) -> Result<T> {
        let mut state = self.shared.state();
        state.check_open()?;
        let r = f(&mut state, now);
        self.shared.commit(state, now, send_by);
        r
    }

    /// Gives publishers the credit of the events the application has taken (a subscription's
    /// receiver does, once a batch is taken, instead of waking the clock). Never blocks in the
    /// transport (what a full lane cannot take goes to the writer); it takes the engine's
    /// locks briefly, so it must not be called with one of them held.
    pub(crate) fn return_event_credit(&self) {
        let _ = self.with(SendBy::TryInline, |state, now| {
            state.return_credit(now);
            Ok(())
        });
    }

    /// Starts a unary call. Fails at once if it cannot start (no such service, too large,
    /// too many calls); otherwise the outcome arrives by the deadline. Dropping the
    /// [`PendingCall`] first cancels the call at the server.
    pub fn call(&self, method: &str, body: impl Into<Body>, timeout: Duration) -> Result<PendingCall> {
        let (state, now, pending) = self.open_call(method, body.into(), timeout)?;
        self.shared.commit(state, now, SendBy::TryInline);
        Ok(pending)
    }

    /// Opens a unary call in the state, not yet sent: the state still locked (committing it
    /// sends the request), the instant the call started, and the call.
    fn open_call(
        &self,
        method: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<(MutexGuard<'_, State>, Instant, PendingCall)> {
        self.check_len(method.len() + body.len())?;
        let (done, rx) = oneshot::channel();
        let now = Instant::now();
        let mut state = self.shared.state();
        state.check_open()?;
        match state.endpoint.request(now, method, body, CallMode::Unary, timeout) {
            Ok(id) => {
                state.calls.insert(id, done);
                Ok((state, now, PendingCall::new(self.clone(), id, rx, super::deadline_after(now, timeout))))
            }
            Err(e) => {
                self.shared.commit(state, now, SendBy::TryInline);
                Err(e.into())
            }
        }
    }

    /// Makes a unary call and waits on this thread for its answer (what a blocking caller
    /// does with [`call`](Self::call) and [`PendingCall::wait`], in one step).
    ///
    /// When the answer will come through a direct lane that this thread may read itself (see
    /// `CallerLane`), the lane is taken before the request goes out (or, from an idle worker
    /// that holds it, right after), and this thread reads it while it waits: the reply wakes it
    /// directly, with no reader thread in between. Otherwise, or should the lane's own reader
    /// need it back meanwhile, it waits as `wait` does.
    pub fn call_wait(&self, method: &str, body: impl Into<Body>, timeout: Duration) -> Result<Bytes> {
        let (state, now, mut pending) = self.open_call(method, body.into(), timeout)?;
        let lane = state.endpoint.call_peer(pending.id()).and_then(|peer| self.shared.caller_lane(peer));
        let Some(lane) = lane else {
            self.shared.commit(state, now, SendBy::TryInline);
            return pending.wait();
        };
        let until = pending.deadline();
        // Sends the request (once): with the lane taken first if it can be. (If an idle worker
        // holds the lane, it goes before this thread waits for the worker to give the lane up,
        // which may need the state lock held here.)
        let mut state = Some(state);
        let mut send = || {
            if let Some(state) = state.take() {
                self.shared.commit(state, now, SendBy::TryInline);
            }
        };
        let mut answer = None;
        // Polled until it is ready, never after (the channel is spent then).
        let mut answered = |cx: &mut Context<'_>| {
            if answer.is_some() {
                return true;
            }
            match Pin::new(&mut pending).poll(cx) {
                Poll::Ready(r) => {
                    answer = Some(r);
                    true
                }
                Poll::Pending => false,
            }
        };
        // Requests for inline handlers read meanwhile go elsewhere: this thread is the
        // application's, in the middle of its call (see `reading_for_a_call`).
        let reading = ReadingForACall::start();
        lane.read_for(&mut send, &mut answered, until, false);
        drop(reading);
        if let Some(r) = answer {
            return r;
        }
        send();
        pending.wait()
    }

    /// Starts a server-streaming call whose items may each take at most `timeout` while the
    /// reader is waiting. Dropping the receiver cancels the stream at the server.
    pub fn call_stream(&self, method: &str, body: impl Into<Body>, timeout: Duration) -> Result<ItemReceiver> {
        Ok(self.open_stream(method, body.into(), CallMode::ServerStream, timeout)?.1)
    }

    /// Starts a call whose answer is a stream of items (a server stream, or a session's
    /// messages from the server), each of which may take at most `timeout` while the reader
    /// waits.
    fn open_stream(
        &self,
        method: &str,
        body: Body,
        mode: CallMode,
        timeout: Duration,
    ) -> Result<(RequestId, ItemReceiver)> {
        self.check_len(method.len() + body.len())?;
        // Credit bounds the items in flight to one window; +1 for the end.
        let (items, source) = super::stream_reader::item_queue(self.shared.window as usize + 1);
        let id = self.with(SendBy::TryInline, |state, now| {
            let id = state.endpoint.request(now, method, body, mode, timeout)?;
            state.streams.insert(id, items);
            Ok(id)
        })?;
        Ok((id, ItemReceiver::new(self.clone(), id.into(), source, timeout.min(proto::MAX_TIMEOUT) + STREAM_BACKSTOP)))
    }

    /// Opens a session on `method` with the encoded first message `body`: the sending half, and
    /// the receiver of the server's messages. Each message may take at most `timeout` to come
    /// while the reader waits (as a stream's items).
    pub fn open_session(
        &self,
        method: &str,
        body: impl Into<Body>,
        timeout: Duration,
        stall: Duration,
    ) -> Result<(SessionSender, ItemReceiver)> {
        let (id, items) = self.open_stream(method, body.into(), CallMode::Session, timeout)?;
        Ok((SessionSender::new(self.clone(), id, stall), items))
    }

    /// Ends the sending half of session `id` (the server sees the end of its input).
    pub(super) fn finish_sending(&self, id: RequestId) {
        let _ = self.with(SendBy::TryInline, |state, _| Ok(state.endpoint.finish(id, Ok(()))?));
    }

    /// The reader of stream or session `id` took `n` items.
    pub(super) fn consumed(&self, id: CallRef, n: u32) {
        let _ = self.with(SendBy::TryInline, |state, now| Ok(state.endpoint.consumed(now, id, n)?));
    }

    /// Cancels outgoing call `id` (the server is told).
    pub(super) fn cancel(&self, id: RequestId) {
        let _ = self.with(SendBy::TryInline, |state, _| {
            state.end_outgoing(id);
            Ok(state.endpoint.cancel(id)?)
        });
    }

    /// The same handle, for a handler that runs on a thread that must never block (the thread
    /// that read its request): its answers go out at once if they can, else through the writer.
    pub(crate) fn never_blocking(&self) -> Handle {
        Handle { shared: self.shared.clone(), never_block: true }
    }

    /// How a handler's answers are sent.
    fn answer_send(&self) -> SendBy {
        if self.never_block { SendBy::TryInline } else { self.shared.handler_send }
    }

    /// How a final answer is sent: as [`answer_send`](Self::answer_send), but a worker that
    /// holds its answers (see [`AnswersHeld`](super::AnswersHeld)) sends it after its job.
    fn final_answer_send(&self) -> SendBy {
        match self.answer_send() {
            SendBy::Inline => SendBy::InlineUnlessHeld,
            other => other,
        }
    }

    /// Answers a unary call this hub serves.
    pub fn respond(&self, id: IncomingId, result: std::result::Result<Body, RemoteError>) {
        let r = self.with(self.final_answer_send(), |state, _| {
            state.end_served(id);
            Ok(state.endpoint.respond(id, result)?)
        });
        if let Err(e) = r {
            tracing::debug!(id = id.as_u64(), error = %e, "response not sent (the caller left or gave up)");
        }
    }

    /// The sink of a stream this hub serves; items wait for credit at most `stall`.
    pub fn item_sink(&self, id: IncomingId, stall: Duration, context: CallContext) -> ItemSink {
        ItemSink::new(self.clone(), id, stall, context)
    }

    /// Sends one item of a stream this hub serves: `None` if it went at once, else a waiter
    /// that completes when the reader's credit lets it go (or fails at `deadline`).
    pub(super) fn send_item(&self, id: CallRef, body: Body, deadline: Instant) -> Result<Option<Waiter<()>>> {
        self.check_len(body.len())?;
        let send_by = if matches!(id, CallRef::Outgoing(_)) { SendBy::TryInline } else { self.answer_send() };
        self.with(send_by, |state, _| {
            if state.has_blocked_item(id) {
                // One item waits for credit already: a second would overtake or replace it.
                return Err(Error::LocalLimit(
                    "a send on this stream is still waiting for credit; await it before sending the next item".into(),
                ));
            }
            state.try_send_item(id, body, deadline)
        })
    }

    /// Ends a stream this hub serves.
    pub fn finish(&self, id: IncomingId, result: std::result::Result<(), RemoteError>) {
        let _ = self.with(self.final_answer_send(), |state, _| {
            state.end_served(id);
            Ok(state.endpoint.finish(id, result)?)
        });
    }

    /// Forgets a served call that its handler will not answer (it was cancelled, or its caller
    /// gave up before it started).
    pub fn abandon(&self, id: IncomingId) {
        let _ = self.with(SendBy::TryInline, |state, _| {
            state.end_served(id);
            Ok(())
        });
    }

    /// Publishes an event: `Queued(n)` once it is queued for `n` peers (this one included), or
    /// `Wait(waiter)` without publishing, while the send backlog is long (subscribers or the
    /// bus not keeping up) or a reliable subscriber has no credit left: wait for the waiter,
    /// then publish again. So a publisher is held back instead of having its events dropped.
    ///
    /// The publish began at `started`; from `deadline` on, a reliable subscriber without credit
    /// that has given none back for as long (`deadline - started`) is cut off: the event goes to
    /// the others, and that subscriber is told what it lost. One without credit that gave some
    /// back meanwhile is still reading, and is waited for. `now` is this attempt's instant
    /// (`started` itself for the first: one clock read less per event).
    pub fn publish(
        &self,
        topic: &Topic,
        body: impl Into<Body>,
        now: Instant,
        started: Instant,
        deadline: Instant,
    ) -> Result<Publish> {
        let body = body.into();
        self.check_len(topic.as_str().len() + body.len())?;
        self.with_at(now, SendBy::TryInline, |state, now| {
            if state.backlogged() {
                let (done, rx) = flume::bounded(1);
                state.wait_for_room(done, deadline);
                return Ok(Publish::Wait(Waiter::new(rx, deadline)));
            }
            let no_credit = if now >= deadline {
                NoCredit::CutOff { silent_since: now - deadline.saturating_duration_since(started) }
            } else {
                NoCredit::Refuse
            };
            match state.endpoint.publish(now, topic, body, no_credit) {
                Ok(published) => {
                    state.report_cut_off(topic, &published.cut_off);
                    Ok(Publish::Queued(published.peers))
                }
                Err(proto::CommandError::NoEventCredit { recheck_at, .. }) => {
                    let (done, rx) = flume::bounded(1);
                    let until = recheck_at.unwrap_or(deadline);
                    state.wait_for_credit(done, until);
                    Ok(Publish::Wait(Waiter::new(rx, until)))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Subscribes; events arrive on the receiver as `qos` says. Dropping the receiver
    /// unsubscribes.
    pub fn subscribe(&self, filter: TopicFilter, qos: Qos) -> Result<EventReceiver> {
        let (id, rx) = self.with(SendBy::TryInline, |state, _| {
            // Room for 64 publishers' full windows at once.
            let room = (state.config().proto.event_window as usize).saturating_mul(64);
            let (queue, rx) = SubscriptionQueue::new(qos, room, state.dropped_events.clone());
            let id = state.endpoint.subscribe(filter, qos == Qos::Reliable)?;
            state.subscriptions.insert(id, Arc::new(queue));
            state.notify_watchers();
            Ok((id, rx))
        })?;
        Ok(rx.attach(self.clone(), id))
    }

    /// Removes a subscription.
    pub(super) fn unsubscribe(&self, id: SubscriptionId) {
        let _ = self.with(SendBy::TryInline, |state, _| {
            state.subscriptions.remove(&id);
            Ok(state.endpoint.unsubscribe(id)?)
        });
    }

    /// Starts serving a service (announced to the bus at once).
    pub fn serve(&self, service: &str) -> Result<()> {
        self.with(SendBy::TryInline, |state, _| {
            state.endpoint.serve(service)?;
            state.notify_watchers();
            Ok(())
        })
    }

    /// Stops serving a service (announced to the bus at once).
    pub fn unserve(&self, service: &str) -> Result<()> {
        self.with(SendBy::TryInline, |state, _| Ok(state.endpoint.unserve(service)?))
    }

    /// Completes as soon as some peer serves `service` (at once if one does), or fails with
    /// [`Error::Timeout`] after `timeout`.
    pub fn watch_service(&self, service: &str, timeout: Duration) -> Result<Waiter<()>> {
        let (done, rx) = flume::bounded(1);
        let deadline = super::deadline_in(timeout);
        self.with(SendBy::TryInline, |state, _| {
            state.add_watcher(Awaited::Service(service.to_string()), done, deadline);
            Ok(())
        })?;
        Ok(Waiter::new(rx, deadline))
    }

    /// Completes as soon as some peer (this one included) subscribes to a pattern matching
    /// `topic` (at once if one does), or fails with [`Error::Timeout`] after `timeout`.
    pub fn watch_subscriber(&self, topic: &Topic, timeout: Duration) -> Result<Waiter<()>> {
        let (done, rx) = flume::bounded(1);
        let deadline = super::deadline_in(timeout);
        self.with(SendBy::TryInline, |state, _| {
            state.add_watcher(Awaited::Subscriber(topic.clone()), done, deadline);
            Ok(())
        })?;
        Ok(Waiter::new(rx, deadline))
    }

    /// A snapshot of the peer directory.
    pub fn peers(&self) -> Result<Vec<PeerSummary>> {
        let state = self.shared.state();
        state.check_open()?;
        let local = state.endpoint.local();
        Ok(state
            .endpoint
            .peers()
            .map(|p| PeerSummary {
                id: p.id,
                name: p.info.name.clone(),
                pid: p.info.pid,
                services: p.info.services.clone(),
                patterns: p.info.patterns.clone(),
                is_local: p.id == local,
            })
            .collect())
    }

    /// Counters of what the protocol saw and dropped (bad frames, late responses, ...).
    pub fn stats(&self) -> Stats {
        self.shared.state().stats()
    }

    /// What is open in the engine and its protocol core, for leak checks.
    pub fn census(&self) -> Census {
        self.shared.state().census()
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let max = self.max_payload_len();
        if len > max { Err(Error::PayloadTooLarge { len, max }) } else { Ok(()) }
    }
}
