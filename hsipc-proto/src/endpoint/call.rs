//! Calls: requests, responses, stream items, credit, cancellation.

use super::*;

impl Endpoint {
    // Commands

    /// Calls `method` (`service.method`) on some peer that serves the service (round-robin
    /// when several do, including this endpoint itself).
    ///
    /// The outcome arrives as [`Event::Response`] (unary) or as [`Event::Item`]s then
    /// [`Event::StreamEnded`] (streams). For a stream, `timeout` bounds the wait for each next
    /// item while this side has granted credit; it is paused while the reader is behind.
    ///
    /// With no provider known, this fails with [`CommandError::NoSuchService`] — except while
    /// the endpoint is still discovering the bus (it just joined, and the provider may simply
    /// not have answered yet): then the call is parked, sent as soon as a provider is heard of,
    /// and ended with [`CallError::NoSuchService`] if discovery completes without one.
    pub fn request(
        &mut self,
        now: Instant,
        method: &str,
        body: impl Into<Body>,
        mode: CallMode,
        timeout: Duration,
    ) -> Result<RequestId, CommandError> {
        let body = body.into();
        self.check_open()?;
        validate_method(method)?;
        let timeout = timeout.min(crate::MAX_TIMEOUT);
        let service = service_of(method);
        match self.directory.pick_provider(service) {
            Some(peer) => self.request_to(now, peer, method, body, mode, timeout),
            // Just joined: the provider may not have announced itself to us yet.
            None if self.discovering.is_some() => self.park(now, method, body, mode, timeout),
            None => Err(CommandError::NoSuchService { service: service.to_string() }),
        }
    }

    /// Calls `method` on one given peer.
    pub fn request_to(
        &mut self,
        now: Instant,
        peer: PeerId,
        method: &str,
        body: impl Into<Body>,
        mode: CallMode,
        timeout: Duration,
    ) -> Result<RequestId, CommandError> {
        let body = body.into();
        self.check_open()?;
        validate_method(method)?;
        let timeout = timeout.min(crate::MAX_TIMEOUT);
        if self.directory.get(peer).is_none() {
            return Err(CommandError::UnknownPeer(peer));
        }
        self.check_call_limit()?;
        self.check_room(1)?;
        let id = RequestId(self.request_ids.next());
        self.send_request(now, id, peer, method, &body, mode, timeout, now + timeout)?;
        Ok(id)
    }

    /// Sends a request under a given id and deadline, and opens its call.
    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        now: Instant,
        id: RequestId,
        peer: PeerId,
        method: &str,
        body: &Body,
        mode: CallMode,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), CommandError> {
        let flags = match mode {
            CallMode::Unary => 0,
            CallMode::ServerStream => Flags::STREAM,
            CallMode::Session => Flags::SESSION,
        };
        let window = if mode == CallMode::Unary { 0 } else { u64::from(self.config.stream_window) };
        let budget = deadline.saturating_duration_since(now);
        let budget_ms = budget.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let frame = self.encode(FrameKind::Request, flags, budget_ms, id.0, window, method.as_bytes(), body)?;
        self.timers.set(deadline, Timer::Call(id));
        let recv = (mode != CallMode::Unary).then(|| RecvHalf::new(self.config.stream_window));
        // A session's sending half starts with no credit: the server grants its window.
        let send = (mode == CallMode::Session).then(|| SendHalf::new(0));
        self.outgoing
            .insert(id, Outgoing { peer, mode, method: method.into(), timeout, deadline: Some(deadline), recv, send });
        self.transmit(Dest::Peer(peer), frame);
        Ok(())
    }

    /// Holds a call until discovery tells whether its service exists.
    fn park(
        &mut self,
        now: Instant,
        method: &str,
        body: Body,
        mode: CallMode,
        timeout: Duration,
    ) -> Result<RequestId, CommandError> {
        self.check_call_limit()?;
        let len = crate::frame::HEADER_LEN + method.len() + body.len();
        if len > self.config.max_frame_len {
            return Err(CommandError::PayloadTooLarge { len, max: self.config.max_frame_len });
        }
        let id = RequestId(self.request_ids.next());
        let deadline = now + timeout;
        self.timers.set(deadline, Timer::Call(id));
        self.parked.insert(id, Parked { method: method.into(), body, mode, timeout, deadline });
        Ok(id)
    }

    /// Sends the parked calls whose service now has a provider; once discovery is over, fails
    /// the others with `NoSuchService`.
    pub(super) fn unpark(&mut self, now: Instant) {
        let ids: Vec<RequestId> = self.parked.keys().copied().collect();
        for id in ids {
            let service = service_of(&self.parked[&id].method).to_string();
            let peer = self.directory.pick_provider(&service);
            if peer.is_none() && self.discovering.is_some() {
                continue;
            }
            let Some(p) = self.parked.remove(&id) else { continue };
            self.timers.cancel(p.deadline, Timer::Call(id));
            let outcome = match peer {
                // Its size was checked when it was parked, so this cannot fail in practice.
                Some(peer) => self
                    .send_request(now, id, peer, &p.method, &p.body, p.mode, p.timeout, p.deadline)
                    .map_err(|_| CallError::Protocol("a parked call could not be encoded")),
                None => Err(CallError::NoSuchService(service)),
            };
            if let Err(e) = outcome {
                self.finish_outgoing(id, p.mode, Err(e));
            }
        }
    }

    fn check_call_limit(&self) -> Result<(), CommandError> {
        if self.outgoing.len() + self.parked.len() >= self.config.max_outgoing_calls {
            Err(CommandError::TooManyCalls { limit: self.config.max_outgoing_calls })
        } else {
            Ok(())
        }
    }

    /// The peer an open call of this endpoint went to (`None` for a call still waiting for its
    /// service to be discovered, or one that is over).
    pub fn call_peer(&self, id: RequestId) -> Option<PeerId> {
        self.outgoing.get(&id).map(|o| o.peer)
    }

    /// Gives up on a call this endpoint made. The server is told; no event follows.
    pub fn cancel(&mut self, id: RequestId) -> Result<(), CommandError> {
        if let Some(p) = self.parked.remove(&id) {
            self.timers.cancel(p.deadline, Timer::Call(id));
            return Ok(());
        }
        let o = self.outgoing.remove(&id).ok_or(CommandError::UnknownCall)?;
        if let Some(d) = o.deadline {
            self.timers.cancel(d, Timer::Call(id));
        }
        self.send_cancel(o.peer, id);
        Ok(())
    }

    /// Answers a unary call. For streams, an `Err` ends the stream with that error.
    pub fn respond(&mut self, id: IncomingId, result: Result<Body, RemoteError>) -> Result<(), CommandError> {
        let inc = self.incoming.get(&id).ok_or(CommandError::UnknownCall)?;
        match (inc.mode, result) {
            (CallMode::Unary, Ok(body)) => {
                self.check_room(1)?;
                let (peer, remote_id) = (inc.peer, inc.remote_id);
                let frame = self.encode(FrameKind::Response, 0, 0, remote_id, 0, &[], &body)?;
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
    pub fn send_item(&mut self, call: impl Into<CallRef>, body: impl Into<Body>) -> Result<(), CommandError> {
        let body = body.into();
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
        match encode_parts(&mut self.arena, FrameKind::StreamItem, flags, 0, id, seq, &[], Payload::Shared(&body), max)
        {
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
                let (peer, remote_id, sent) = (inc.peer, inc.remote_id, half.sent());
                let frame = self.encode(FrameKind::StreamEnd, flags, code, remote_id, sent, &[], msg.as_bytes())?;
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
                // The sender has credit again, so waiting on it is bounded again (a session has
                // no idle timer once accepted).
                if grant > 0 && o.deadline.is_none() && o.mode != CallMode::Session {
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

    pub(super) fn on_request(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
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
        let max = self.config.max_incoming_calls;
        if self.incoming.len() >= max {
            let msg = format!("`{}` is serving its limit of {max} calls", self.info.name);
            self.send_error(from, f.id, ErrorCode::BUSY, &msg);
            return Ok(());
        }
        // One caller holding the whole table (streams and sessions it keeps open, say) would
        // leave every other caller busy: a quarter of it is for the others.
        let share = crate::caller_share(max);
        if self.incoming_per_peer.get(&from).is_some_and(|n| *n >= share) {
            let msg =
                format!("`{}` is serving {share} calls from this caller, its most from one caller", self.info.name);
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
        *self.incoming_per_peer.entry(from).or_insert(0) += 1;
        if mode == CallMode::Session {
            let window = u64::from(self.config.stream_window);
            if let Ok(frame) = self.encode(FrameKind::Credit, Flags::TO_CALLER, 0, f.id, window, &[], &[]) {
                self.transmit(Dest::Peer(from), frame);
            }
        }
        let method = MethodName::new(method);
        self.push_event(Event::RequestReceived { id, from, method, body: f.payload, deadline, mode });
        Ok(())
    }

    pub(super) fn on_response(&mut self, from: PeerId, f: Frame) {
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
            let msg = text_of(&f.payload);
            Err(CallError::from_remote(ErrorCode(f.aux), msg, &o.method))
        };
        match outcome {
            Ok(body) => self.push_event(Event::Response { id, outcome: Ok(body) }),
            Err(e) => self.finish_outgoing(id, o.mode, Err(e)),
        }
    }

    pub(super) fn on_outgoing_item(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
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
        // The idle timer runs only while the sender has credit left to use (never for a
        // session).
        let sender_has_credit = half.outstanding_credit() > 0 && o.mode != CallMode::Session;
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

    pub(super) fn on_outgoing_end(&mut self, from: PeerId, f: Frame) {
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
            let msg = text_of(&f.payload);
            Err(CallError::from_remote(ErrorCode(f.aux), msg, &o.method))
        } else if f.seq != received {
            // The server sent more items than arrived: the missing ones were lost.
            Err(CallError::ItemLost { expected: received + 1, got: f.seq })
        } else {
            Ok(())
        };
        self.push_event(Event::StreamEnded { id, outcome });
    }

    pub(super) fn on_incoming_item(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
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

    pub(super) fn on_incoming_end(&mut self, from: PeerId, f: Frame) {
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

    pub(super) fn on_credit(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
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
        // A session's first credit says the server took it: from then on it lasts as long as
        // both ends live (the peer's death ends it), however quiet; no idle timer runs.
        if let CallRef::Outgoing(id) = call {
            if let Some(o) = self.outgoing.get_mut(&id).filter(|o| o.mode == CallMode::Session) {
                let d = o.deadline.take();
                self.disarm(id, d);
            }
        }
        Ok(())
    }

    /// Emits the terminal event of an outgoing call that was already removed.
    pub(super) fn finish_outgoing(&mut self, id: RequestId, mode: CallMode, outcome: Result<Bytes, CallError>) {
        let ev = match mode {
            CallMode::Unary => Event::Response { id, outcome },
            _ => Event::StreamEnded { id, outcome: outcome.map(|_| ()) },
        };
        self.push_event(ev);
    }

    pub(super) fn fail_outgoing_violation(&mut self, id: RequestId, peer: PeerId, what: &'static str) -> FrameError {
        if let Some(o) = self.outgoing.remove(&id) {
            self.disarm(id, o.deadline);
            self.send_cancel(peer, id);
            self.finish_outgoing(id, o.mode, Err(CallError::Protocol(what)));
        }
        FrameError::Violation { peer, what }
    }

    pub(super) fn fail_incoming_violation(&mut self, id: IncomingId, peer: PeerId, what: &'static str) -> FrameError {
        self.abort_incoming(id, CallError::Protocol(what));
        FrameError::Violation { peer, what }
    }

    /// Ends a served call with an error to its caller and tells the application.
    pub(super) fn abort_incoming(&mut self, id: IncomingId, why: CallError) {
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

    pub(super) fn drop_incoming(&mut self, id: IncomingId, reason: CancelReason) {
        if self.remove_incoming(id) {
            self.push_event(Event::IncomingCancelled { id, reason });
        }
    }

    pub(super) fn remove_incoming(&mut self, id: IncomingId) -> bool {
        let Some(inc) = self.incoming.remove(&id) else {
            return false;
        };
        self.incoming_keys.remove(&(inc.peer, inc.remote_id));
        if let Some(n) = self.incoming_per_peer.get_mut(&inc.peer) {
            *n -= 1;
            if *n == 0 {
                self.incoming_per_peer.remove(&inc.peer);
            }
        }
        if let Some(d) = inc.deadline {
            self.timers.cancel(d, Timer::Incoming(id));
        }
        true
    }

    pub(super) fn disarm(&mut self, id: RequestId, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            self.timers.cancel(d, Timer::Call(id));
        }
    }

    pub(super) fn send_cancel(&mut self, peer: PeerId, id: RequestId) {
        if let Ok(frame) = self.encode(FrameKind::Cancel, 0, 0, id.0, 0, &[], &[]) {
            self.transmit(Dest::Peer(peer), frame);
        }
    }

    pub(super) fn send_error(&mut self, peer: PeerId, remote_id: u64, code: ErrorCode, message: &str) {
        // Clip the message so an error always fits in a frame.
        let max = self.config.max_frame_len.saturating_sub(crate::frame::HEADER_LEN).min(64 << 10);
        let msg = clip_utf8(message, max);
        if let Ok(frame) = self.encode(FrameKind::ErrorResponse, 0, code.0, remote_id, 0, &[], msg.as_bytes()) {
            self.transmit(Dest::Peer(peer), frame);
        }
    }
}

/// An error message's text: copied out of the payload before it is checked (a payload may lie
/// in memory its sender still writes, see `Frame::decode_shared`), invalid UTF-8 replaced.
fn text_of(payload: &[u8]) -> String {
    String::from_utf8(payload.to_vec()).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
