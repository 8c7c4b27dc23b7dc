//! Reading one lane: messages in, frames out to the engine, until the lane ends.
//!
//! A [`LaneReader`] reads on a thread of its own ([`run_blocking`](LaneReader::run_blocking)),
//! or on an async runtime's reactor: the runtime waits for the lane to be readable and calls
//! [`read_ready`](LaneReader::read_ready), [`read_some`](LaneReader::read_some) or
//! [`read_step`](LaneReader::read_step) (see [`LaneRunner`]). On a runtime, a reply read from
//! a lane wakes the task waiting for it on the thread that read it: one thread wake-up less
//! per message than a reader thread handing it over.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use proto::PeerId;
use proto::frame::Stamp;

use super::fan_pool::RecvFanPool;
use super::lane::{
    self, ARENA, ARENA_FRAME_MAX, CHUNK, CLOSE, FAN_POOL, FANNED, LAST, MORE, POOL, POOLED, RING, Received, SEALED,
    Takes, WAKE,
};
use super::pool::RecvPool;
use super::ring::{self, Record, RingReader};
use super::sealed::{self, MapError};
use crate::engine::Landed;
use crate::ingress::Ingress;

/// Runs lane readers on an async runtime: takes the reader and drives it (waiting for
/// readability, then [`LaneReader::read_ready`]), or hands it back to be run on a thread.
#[derive(Clone)]
pub struct LaneRunner(Arc<dyn Fn(LaneReader) -> Option<LaneReader> + Send + Sync>);

impl LaneRunner {
    /// A runner that calls `run` with each new lane's reader.
    pub fn new(run: impl Fn(LaneReader) -> Option<LaneReader> + Send + Sync + 'static) -> Self {
        LaneRunner(Arc::new(run))
    }

    /// Runs `reader`, or hands it back.
    pub(super) fn run(&self, reader: LaneReader) -> Option<LaneReader> {
        (self.0)(reader)
    }
}

impl std::fmt::Debug for LaneRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneRunner")
    }
}

/// Most messages (or frames, counting each frame of a ring batch) [`LaneReader::read_ready`]
/// reads in one turn.
pub(super) const TURN: usize = 128;

/// Most frames a reader takes from the ring before it hands them on together (one lock of the
/// engine's state and one commit for them all; see [`LaneReader::batch`]).
pub(super) const BATCH: usize = 32;

/// What [`LaneReader::read_ready`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneState {
    /// Nothing more to read now: wait until the lane is readable, then read again.
    Drained,
    /// More may be there, but this turn's share is read: let others run, then read again
    /// (without waiting for readability).
    More,
    /// The lane has ended (its writer died or closed it, or this hub is closing): stop.
    Ended,
}

/// Reads one lane from one peer, handing each frame to the engine.
pub struct LaneReader {
    fd: Arc<OwnedFd>,
    from: PeerId,
    ingress: Ingress,
    max_len: usize,
    stop: Arc<AtomicBool>,
    on_end: Option<Box<dyn FnOnce(PeerId) + Send>>,
    buf: Vec<u8>,
    /// A frame arriving in pieces.
    frame: BytesMut,
    /// Small frames are copied into a shared arena and handed on as slices of it: no
    /// allocation per frame, and the protocol's slices of a frame need none either.
    arena: BytesMut,
    /// What this reader said it takes.
    takes: Takes,
    /// The writer's pool, once it has handed it over.
    pool: Option<Arc<RecvPool>>,
    /// The writer's hub's fan-out pool, once handed over.
    fan: Option<Arc<RecvFanPool>>,
    /// Reading on a thread already (a dropped reader does not move to another one).
    on_thread: bool,
    /// The writer's ring, once it has handed it over: from then on it holds the lane's order.
    ring: Option<RingReader>,
    /// Read by the lane's own thread, or by a runtime's worker ([`yield_before_sleep`](Self::yield_before_sleep)),
    /// which give up their CPU once before they sleep (see `ring_empty`); not by a caller or an
    /// idle worker that took the reader for a while.
    yields: bool,
    /// What was handed on since the ring was last found empty: `None` nothing, `Some(true)`
    /// only what makes the lane's thread yield before it sleeps (events, credit, stream items
    /// from the ring), `Some(false)` a request or an answer at least, a frame from the socket
    /// (not looked into), or a read by a caller or an idle worker (see [`lent`](Self::lent)).
    yield_owed: Option<bool>,
    /// The ring's mark was met: the next frame comes through the socket.
    in_socket_frame: bool,
    /// A message read from the socket before the ring's mark for it was met (its length and
    /// fds; its bytes are in `buf`).
    stash: Option<(usize, Vec<OwnedFd>)>,
    /// Whether a non-blocking read that finds the ring empty looks at the socket too (always,
    /// but for readers that learn from `poll` that the socket has nothing; see `caller_lane`).
    /// A reader on a thread clears it once it has read a wake-up message: `poll` tells it of
    /// the rest.
    probe_socket: bool,
    /// A level-triggered reactor tells this reader when the socket is readable
    /// ([`socket_readable`]): like a reader on a thread, it need not read the socket on to
    /// `EAGAIN` after a wake-up message.
    ///
    /// [`socket_readable`]: Self::socket_readable
    told_of_readiness: bool,
    /// Frames handed on so far (a reader woken for nothing can tell).
    handed: u64,
    /// Frames taken from the ring and not handed on yet: a read hands them on before it
    /// returns, so they are never held past it.
    held: Vec<bytes::Bytes>,
    /// Most frames handed on together (1: each on its own).
    batch: usize,
    /// What is left of the current turn ([`read_some`](Self::read_some)): a batch takes no
    /// more frames than that.
    turn_left: usize,
}

impl std::fmt::Debug for LaneReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneReader").field("from", &self.from).finish_non_exhaustive()
    }
}

/// How reading one message went.
enum Step {
    Read,
    WouldBlock,
    Ended,
}

/// How a lane ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Its writer closed it (idle), and lives on.
    Closed,
    /// Its writer is gone (end of file), or this hub can no longer read it.
    Gone,
    /// Its writer broke the lane's protocol: what it did.
    Broke(&'static str),
}

impl LaneReader {
    pub(super) fn new(
        fd: Arc<OwnedFd>,
        from: PeerId,
        ingress: Ingress,
        max_len: usize,
        stop: Arc<AtomicBool>,
        takes: Takes,
        on_end: impl FnOnce(PeerId) + Send + 'static,
    ) -> LaneReader {
        lane::say(&fd, takes);
        LaneReader {
            fd,
            from,
            ingress,
            max_len,
            stop,
            on_end: Some(Box::new(on_end)),
            buf: vec![0u8; CHUNK + 1],
            frame: BytesMut::new(),
            arena: BytesMut::new(),
            takes,
            pool: None,
            fan: None,
            on_thread: false,
            ring: None,
            yields: false,
            yield_owed: None,
            in_socket_frame: false,
            stash: None,
            probe_socket: true,
            told_of_readiness: false,
            handed: 0,
            held: Vec::new(),
            batch: BATCH,
            turn_left: usize::MAX,
        }
    }

    /// The lane's fd, to wait on for readability (open while this handle or the reader
    /// lives).
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }

    /// Reads and hands on what the lane holds now, without waiting: at most `TURN` (128) messages
    /// (or frames, where the ring's come in batches), so that a peer that keeps the lane full
    /// cannot keep a runtime's thread to itself.
    pub fn read_ready(&mut self) -> LaneState {
        self.read_some(TURN)
    }

    /// Like [`read_ready`](Self::read_ready), with a turn of at most `most` messages (a batch
    /// of frames from the ring counts each of its frames).
    pub fn read_some(&mut self, most: usize) -> LaneState {
        let until = self.handed.saturating_add(most as u64);
        let mut state = LaneState::More;
        for _ in 0..most {
            self.turn_left = until.saturating_sub(self.handed).max(1) as usize;
            match self.read_one(false) {
                Step::Read if self.handed >= until => break,
                Step::Read => {}
                Step::WouldBlock => {
                    state = LaneState::Drained;
                    break;
                }
                Step::Ended => {
                    state = LaneState::Ended;
                    break;
                }
            }
        }
        self.turn_left = usize::MAX;
        state
    }

    /// [`read_ready`](Self::read_ready) in the shape reactors retry on (tokio's
    /// `AsyncFd::async_io`, say): `Err(WouldBlock)` when the lane is
    /// drained (wait for readability, then call again), `Ok(true)` when this turn's share is
    /// read (let other tasks run, then call again), `Ok(false)` when the lane has ended.
    pub fn read_step(&mut self) -> std::io::Result<bool> {
        match self.read_ready() {
            LaneState::Drained => Err(std::io::ErrorKind::WouldBlock.into()),
            LaneState::More => Ok(true),
            LaneState::Ended => Ok(false),
        }
    }

    /// Reads on this thread until the lane ends; meanwhile a blocking caller of this hub that
    /// waits for a reply from the lane's peer may read it itself (see `caller_lane`).
    pub fn run_blocking(mut self) {
        self.on_thread = true;
        super::caller_lane::run(self);
    }

    /// Reads on this thread until the lane ends, alone.
    pub(super) fn run_alone(mut self) {
        self.on_thread = true;
        self.yield_before_sleep();
        while !matches!(self.read_one(true), Step::Ended) {}
    }

    /// The lane's peer.
    pub(super) fn from(&self) -> PeerId {
        self.from
    }

    /// Where its frames go.
    pub(super) fn ingress(&self) -> &Ingress {
        &self.ingress
    }

    /// The ring's caller word, once there is a ring whose writer wakes callers.
    pub(super) fn caller_word(&self) -> Option<super::ring::CallerWord> {
        self.ring.as_ref()?.caller_word()
    }

    /// Whether the ring holds more (a corrupt ring says yes: reading it ends the lane).
    pub(super) fn ring_has_more(&mut self) -> bool {
        self.ring.as_mut().is_none_or(|ring| ring.has_more().unwrap_or(true))
    }

    /// Has this reader give up its thread's CPU once before it says it sleeps, after it handed
    /// on events, credit or stream items (not requests or answers; see `ring_empty`): on a CPU
    /// it shares with the writer, the writer puts more meanwhile, found without a wake-up
    /// message. For the lane's own thread (which sets it again after a caller or an idle worker
    /// had the reader, see `lent`) and a runtime's worker (tokio's); not for a
    /// reader that runs holding a lock other threads need (async-io's reactor).
    pub fn yield_before_sleep(&mut self) {
        self.yields = true;
    }

    /// A caller or an idle worker reads the lane from now on: it does not yield, and what the
    /// lane's thread handed on before owes none (the threads it woke may want the lane). (What
    /// the caller hands on after it first finds the ring empty is noted as usual: an answer or
    /// request among it still rules a yield out.)
    pub(super) fn lent(&mut self) {
        self.yields = false;
        self.yield_owed = Some(false);
    }

    /// Notes a delivery: `yields_ok` if it handed on no request or answer. One that did keeps
    /// the lane's thread from yielding until the ring is next found empty.
    fn owe_yield(&mut self, yields_ok: bool) {
        self.yield_owed = Some(self.yield_owed.unwrap_or(true) && yields_ok);
    }

    /// Marks the reader asleep for the ring's writer to wake (through the socket), then looks
    /// at the ring once more: whether it is empty (if not, or if corrupt, read on).
    pub(super) fn ring_sleep(&mut self) -> bool {
        self.ring.as_mut().is_some_and(|ring| ring.sleep().unwrap_or(false))
    }

    /// Whether the next frame is to come through the socket (its mark met, or its message read
    /// before the mark): it wakes the lane's thread, not a caller.
    pub(super) fn waits_for_socket(&self) -> bool {
        self.in_socket_frame || self.stash.is_some()
    }

    /// For a reader driven by a level-triggered reactor (one that reports a socket that still
    /// holds something again at once, as async-io's does): the reactor says the socket is
    /// readable, so the next read that finds the ring empty looks at it (and, after a wake-up
    /// message, not again until the reactor says so once more: one `recvmsg` per wake-up, not
    /// two). Not for an edge-triggered one (tokio): see the wake-up branch of `ring_empty`.
    pub fn socket_readable(&mut self) {
        self.told_of_readiness = true;
        self.probe_socket = true;
    }

    /// Whether reads that find the ring empty look at the socket (see the field's docs).
    pub(super) fn probe_socket(&mut self, probe: bool) {
        self.probe_socket = probe;
    }

    /// Hands on at most `most` frames that the ring holds together (one engine commit for
    /// them all), or each frame on its own with 1 (a reader that looks for other work after
    /// every frame).
    pub(super) fn batch(&mut self, most: usize) {
        self.batch = most.max(1);
    }

    /// Frames handed on so far.
    pub(super) fn handed(&self) -> u64 {
        self.handed
    }

    /// Whether the lane has ended.
    pub(super) fn ended(&self) -> bool {
        self.on_end.is_none()
    }

    /// Reads one message (waiting for it if `wait`), and hands on the frame it completes (or
    /// the frames the ring holds, up to a batch).
    fn read_one(&mut self, wait: bool) -> Step {
        if self.on_end.is_none() {
            return Step::Ended;
        }
        let nothing_held = self.stash.is_none() && !self.in_socket_frame;
        if self.fan.as_ref().is_some_and(|fan| fan.given_up()) && nothing_held && !lane::has_unread(&self.fd) {
            // No frame of it is still to come (a message of it still unread, in the socket or
            // taken from it already, is that of a lane its writer closed, read here first): its
            // pages go once the frames read are dropped.
            self.fan = None;
        }
        if self.ring.is_some() && !self.in_socket_frame {
            if let Some(step) = self.read_ring(wait) {
                return step;
            }
        }
        let (n, passed) = match self.stash.take() {
            Some(stashed) => stashed,
            None => match lane::receive(&self.fd, &mut self.buf, wait) {
                Received::Message(n, passed) => (n, passed),
                Received::WouldBlock => return Step::WouldBlock,
                Received::Ended => return self.end(End::Gone), // end of file: the sender is gone
                Received::FdsDropped => return self.end(End::Gone),
            },
        };
        if n > self.buf.len() {
            return self.broke("its lane carried a message over the largest a lane message may be");
        }
        if self.buf[0] == WAKE {
            return Step::Read; // the ring has frames: read on
        }
        match self.buf[0] {
            _ if !self.frame.is_empty() && self.buf[0] > CLOSE => {
                return self.broke("its lane cut a frame's chunks short");
            }
            SEALED => return self.read_sealed(n, passed),
            POOL => return self.take_pool(n, passed),
            POOLED => return self.read_pooled(n),
            RING => return self.take_ring(n, passed),
            FAN_POOL => return self.take_fan_pool(n, passed),
            FANNED => return self.read_fanned(n),
            LAST | MORE | CLOSE => {}
            _ => return self.broke("its lane carried a message of an unknown kind"),
        }
        let from = self.from;
        let buf = &self.buf;
        if buf[0] == CLOSE {
            // Idle, closed by its writer, which lives on: no departure to report.
            tracing::debug!(%from, "lane closed by its writer (idle)");
            return self.end(End::Closed);
        }
        let bytes = if buf[0] == LAST && self.frame.is_empty() && n - 1 <= ARENA_FRAME_MAX {
            let arena = arena_with_room(&mut self.arena, n - 1);
            arena.extend_from_slice(&self.buf[1..n]);
            Some(arena.split().freeze())
        } else {
            self.frame.extend_from_slice(&buf[1..n]);
            if self.frame.len() > self.max_len {
                return self.broke("its lane carried a frame over the largest message this hub takes");
            }
            (buf[0] == LAST).then(|| std::mem::take(&mut self.frame).freeze())
        };
        match bytes {
            Some(bytes) => self.hand_on(bytes),
            None => Step::Read,
        }
    }

    /// Maps the sealed frame a message passed (see `sealed`) and hands it on.
    fn read_sealed(&mut self, n: usize, passed: Vec<OwnedFd>) -> Step {
        let frame = match (<[u8; 8]>::try_from(&self.buf[1..n]), &passed[..]) {
            (Ok(len), [memfd]) if self.takes != Takes::Declined => {
                let len = u64::from_le_bytes(len);
                if len > self.max_len as u64 {
                    return self.broke("its lane carried a sealed frame over the largest message this hub takes");
                }
                match sealed::map(memfd, len as usize) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let why = "its lane carried a sealed frame in a memfd not sealed or shorter than said";
                        return self.map_failed("a sealed frame", e, why);
                    }
                }
            }
            _ => return self.broke("its lane carried a malformed or unasked-for sealed-frame message"),
        };
        self.hand_on(frame)
    }

    /// Takes the next record from the ring: `None` if it is the mark of a frame that comes
    /// through the socket (read it there), else how reading went.
    fn read_ring(&mut self, wait: bool) -> Option<Step> {
        let from = self.from;
        loop {
            let ring = self.ring.as_mut()?;
            // (A frame over ARENA_FRAME_MAX makes the arena take a buffer large enough for it.)
            let next = ring.next(arena_with_room(&mut self.arena, ARENA_FRAME_MAX));
            let record = match next {
                Ok((record, tell)) => {
                    if tell {
                        lane::say_space(&self.fd);
                    }
                    record
                }
                Err(e) => {
                    if let Some(ended) = self.hand_on_held() {
                        return Some(ended);
                    }
                    tracing::warn!(%from, error = %e, "corrupt lane ring");
                    return Some(self.broke("its lane's ring was corrupt"));
                }
            };
            if let Some(Record::Frame) = record {
                if self.arena.len() <= self.max_len {
                    // Frames the ring holds now go on together, up to a batch.
                    self.held.push(self.arena.split().freeze());
                    if self.held.len() < self.batch.min(self.turn_left) {
                        continue;
                    }
                    return Some(self.hand_on_held().unwrap_or(Step::Read));
                }
            }
            // Whatever comes next, the frames before it go first.
            let handed = !self.held.is_empty();
            if let Some(ended) = self.hand_on_held() {
                return Some(ended);
            }
            return match record {
                Some(Record::Frame) => {
                    Some(self.broke("its lane's ring carried a frame over the largest message this hub takes"))
                }
                Some(Record::Socket) => {
                    self.in_socket_frame = true;
                    None
                }
                Some(Record::Close) => {
                    tracing::debug!(%from, "lane closed by its writer (idle)");
                    Some(self.end(End::Closed))
                }
                // The next read finds the ring empty (or more in it).
                None if handed => Some(Step::Read),
                None => Some(self.ring_empty(wait)),
            };
        }
    }

    /// Hands on the frames taken from the ring, if any, together; `Some(Step::Ended)` if the
    /// engine is gone.
    fn hand_on_held(&mut self) -> Option<Step> {
        if self.held.is_empty() {
            return None;
        }
        self.in_socket_frame = false;
        self.handed += self.held.len() as u64;
        if let Some(woke_lane_readers) = self.ingress.deliver_all(self.from, &mut self.held) {
            self.owe_yield(!woke_lane_readers);
            return None;
        }
        self.held.clear();
        Some(self.engine_gone())
    }

    /// The ring is empty: says the reader sleeps (unless the ring has something after all) and
    /// looks at the socket, waiting there if `wait`. What it finds is a wake-up, the writer's
    /// end, or a message whose mark the ring shows next (kept for it).
    fn ring_empty(&mut self, wait: bool) -> Step {
        if self.stash.is_some() {
            return self.broke("its lane carried a message without its mark in the ring");
        }
        // The lane's thread (or a runtime's worker, see `yield_before_sleep`), having just
        // handed frames on (events, credit, stream items), lets the threads they woke run
        // before it says it sleeps, once: on a shared CPU the writer puts more meanwhile,
        // found here without a wake-up message (a system call on each side and a context
        // switch back); alone on its CPU the yield returns at once. It keeps the
        // reader meanwhile: an idle worker that took it instead would read on one frame at a
        // time. Not after requests or answers (the worker or the caller they woke is to take
        // the lane once it has answered or called again, and would find it held), nor on a
        // caller's or an idle worker's read (they have their own work to go back to, and a
        // round trip would pay for the yield).
        let owed = self.yield_owed.take() == Some(true);
        if self.yields && owed {
            std::thread::yield_now();
            if self.ring_has_more() {
                return Step::Read;
            }
        }
        match self.ring.as_mut().map(RingReader::sleep) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => return Step::Read, // more came after all
            Some(Err(e)) => {
                tracing::warn!(from = %self.from, error = %e, "corrupt lane ring");
                return self.broke("its lane's ring was corrupt");
            }
            None => return self.end(End::Gone),
        }
        if !wait && !self.probe_socket {
            // Whoever reads knows the socket has nothing (or is not the one to read it).
            return Step::WouldBlock;
        }
        match lane::receive(&self.fd, &mut self.buf, wait) {
            Received::WouldBlock => Step::WouldBlock,
            // The writer is gone: what it put in the ring before goes first.
            Received::Ended => match self.ring.as_mut().map(RingReader::has_more) {
                Some(Ok(true)) => Step::Read,
                Some(Err(_)) => self.broke("its lane's ring was corrupt"),
                _ => self.end(End::Gone),
            },
            Received::Message(n, _) if n >= 1 && n <= self.buf.len() && self.buf[0] == WAKE => {
                // A reader on a thread learns of more from `poll`, and one told of readiness by
                // a level-triggered reactor (async-io re-arms so) from it: either reports a
                // socket that still holds something at once, so it need not read on to `EAGAIN`
                // this turn (one system call less per wake-up). An edge-triggered reactor's
                // reader (tokio) must: two wake-ups that came before one `epoll_wait` are one
                // edge, and the one left unread would stay (more could pile up, until the
                // socket is full and the writer's next wake-up is dropped).
                if self.on_thread || self.told_of_readiness {
                    self.probe_socket = false;
                }
                Step::Read
            }
            Received::Message(n, passed) => {
                self.stash = Some((n, passed));
                Step::Read
            }
            Received::FdsDropped => self.end(End::Gone),
        }
    }

    /// Maps the ring the writer hands over (see `ring`).
    fn take_ring(&mut self, n: usize, passed: Vec<OwnedFd>) -> Step {
        let asked = self.takes.ring() && self.ring.is_none();
        // (Fds this process had no room for end the lane before this: see `Received::FdsDropped`.)
        let (Ok(size), [data, control], true) = (<[u8; 8]>::try_from(&self.buf[1..n]), &passed[..], asked) else {
            return self.broke("its lane carried a malformed or unasked-for ring message");
        };
        if u64::from_le_bytes(size) != ring::RING_SIZE as u64 {
            return self.broke("its lane carried a ring of another size");
        }
        match RingReader::map(data, control) {
            Ok(ring) => {
                self.ring = Some(ring);
                Step::Read
            }
            Err(e) => {
                self.map_failed("a lane ring", e, "its lane carried a ring in memfds not sealed or shorter than said")
            }
        }
    }

    /// Maps the pool the writer hands over (see `pool`).
    fn take_pool(&mut self, n: usize, passed: Vec<OwnedFd>) -> Step {
        let pooled = self.takes.pooled();
        let (Ok(size), [data, board], true) = (<[u8; 8]>::try_from(&self.buf[1..n]), &passed[..], pooled) else {
            return self.broke("its lane carried a malformed or unasked-for pool message");
        };
        match RecvPool::map(data, board, u64::from_le_bytes(size)) {
            Ok(pool) => {
                self.pool = Some(pool);
                Step::Read
            }
            Err(e) => {
                self.map_failed("a lane pool", e, "its lane carried a pool in memfds not sealed or shorter than said")
            }
        }
    }

    /// Hands on a frame in the writer's pool (released when the last reference to it drops).
    fn read_pooled(&mut self, n: usize) -> Step {
        let frame = match (<[u8; 16]>::try_from(&self.buf[1..n]), &self.pool) {
            (Ok(place), Some(pool)) => {
                let offset = u64::from_le_bytes(place[..8].try_into().unwrap_or_default());
                let len = u64::from_le_bytes(place[8..].try_into().unwrap_or_default());
                if len > self.max_len as u64 {
                    return self.broke("its lane carried a pooled frame over the largest message this hub takes");
                }
                pool.frame(offset, len)
            }
            _ => None,
        };
        match frame {
            // The writer keeps its mapping of the pool writable: what is parsed is copied out.
            Some(frame) => self.hand_on_as(frame, Landed::Shared),
            None => self.broke("its lane carried a malformed pooled-frame message, or one before its pool"),
        }
    }

    /// Maps the fan-out pool the writer hands over (see `fan_pool`); it comes after the lane's
    /// pool, whose board its runs are released on.
    fn take_fan_pool(&mut self, n: usize, passed: Vec<OwnedFd>) -> Step {
        let asked = self.takes.fan() && self.pool.is_some();
        let (Ok(size), [data], true) = (<[u8; 8]>::try_from(&self.buf[1..n]), &passed[..], asked) else {
            return self.broke("its lane carried a malformed or unasked-for fan-out pool message");
        };
        match RecvFanPool::map(data, u64::from_le_bytes(size)) {
            Ok(fan) => {
                // Frames of the pool before live on in their own mapping.
                self.fan = Some(fan);
                Step::Read
            }
            Err(e) => {
                let why = "its lane carried a fan-out pool in a memfd not sealed against writes, or shorter than said";
                self.map_failed("a fan-out pool", e, why)
            }
        }
    }

    /// Hands on the frame a fan-out pool's run holds, with this lane's stamp (released when
    /// the last reference to it drops).
    fn read_fanned(&mut self, n: usize) -> Step {
        let frame = match (<[u8; 25]>::try_from(&self.buf[1..n]), &self.fan, &self.pool) {
            (Ok(m), Some(fan), Some(pool)) => {
                let word = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap_or_default());
                let (offset, len, stamp) = (word(0), word(8), Stamp::new(m[24], word(16)));
                if len > self.max_len as u64 {
                    return self.broke("its lane carried a fan-out frame over the largest message this hub takes");
                }
                fan.frame(pool, offset, len).map(|bytes| (bytes, stamp))
            }
            _ => None,
        };
        match frame {
            Some((bytes, stamp)) => self.hand_on_as(bytes, Landed::Stamped(stamp)),
            None => self.broke("its lane carried a malformed fan-out frame message, or one before its pools"),
        }
    }

    /// Hands a whole frame to the engine.
    fn hand_on(&mut self, bytes: bytes::Bytes) -> Step {
        self.hand_on_as(bytes, Landed::Own)
    }

    /// Hands a whole frame to the engine, as where it lies says.
    fn hand_on_as(&mut self, bytes: bytes::Bytes, landed: Landed) -> Step {
        self.in_socket_frame = false;
        self.handed += 1;
        self.owe_yield(false);
        if !self.ingress.deliver_landed(self.from, bytes, landed) {
            return self.engine_gone();
        }
        Step::Read
    }

    /// The engine is gone: the writer sees the end at its next frame (see `end`).
    fn engine_gone(&mut self) -> Step {
        if let Some(ring) = &self.ring {
            ring.ended();
        }
        lane::shut(&self.fd);
        self.on_end = None;
        Step::Ended
    }

    /// `what` (a memfd the writer passed) could not be mapped or read: the lane ends, blamed on
    /// this process if it failed (no address space, no fds), on the writer (`why`) if what it
    /// passed is not what it said.
    fn map_failed(&mut self, what: &str, e: MapError, why: &'static str) -> Step {
        tracing::warn!(from = %self.from, error = %e, "cannot read {what} from a lane");
        match e {
            MapError::Io(_) => self.end(End::Gone),
            _ => self.broke(why),
        }
    }

    /// The peer broke the lane's protocol (`why`, for the errors of its calls): the lane ends,
    /// and the peer is cut off (see [`Ingress::peer_broke`]).
    fn broke(&mut self, why: &'static str) -> Step {
        tracing::warn!(from = %self.from, why, "a peer broke the lane protocol: its lane is dropped and the peer cut off");
        self.end(End::Broke(why))
    }

    /// The lane is over, as `how` says (unless this hub closes, a writer gone or broken is
    /// reported).
    fn end(&mut self, how: End) -> Step {
        let Some(on_end) = self.on_end.take() else { return Step::Ended };
        let from = self.from;
        if how != End::Closed {
            // The sender sees the end at once (instead of filling a lane nobody reads); a writer
            // that puts frames into the ring sees it at its next frame, which tries to wake this.
            if let Some(ring) = &self.ring {
                ring.ended();
            }
            lane::shut(&self.fd);
        }
        on_end(from);
        if self.stop.load(Ordering::Relaxed) {
            return Step::Ended;
        }
        match how {
            End::Closed => {}
            End::Gone => {
                tracing::debug!(%from, "lane closed: the peer is gone");
                self.ingress.peer_lost(from);
            }
            End::Broke(why) => {
                self.ingress.peer_broke(from, why);
            }
        }
        Step::Ended
    }
}

/// The arena small frames are copied into, with room for `len` more bytes (a fresh one if the
/// old one is used up; the old one lives on in the frames cut from it).
fn arena_with_room(arena: &mut BytesMut, len: usize) -> &mut BytesMut {
    if arena.capacity() - arena.len() < len {
        *arena = BytesMut::with_capacity(ARENA);
    }
    arena
}

impl Drop for LaneReader {
    /// A reader dropped before its lane ended (its runtime shut down, or its task could not be
    /// spawned) goes on reading on a thread: the peer is not to be taken for gone because this
    /// hub's runtime went away. Only if no thread can be started does the lane end.
    fn drop(&mut self) {
        let Some(on_end) = self.on_end.take() else { return };
        if self.on_thread || self.stop.load(Ordering::Relaxed) {
            self.on_end = Some(on_end);
            self.end(End::Gone);
            return;
        }
        let rest = LaneReader {
            fd: self.fd.clone(),
            from: self.from,
            ingress: self.ingress.clone(),
            max_len: self.max_len,
            stop: self.stop.clone(),
            on_end: Some(on_end),
            buf: std::mem::take(&mut self.buf),
            frame: std::mem::take(&mut self.frame),
            arena: std::mem::take(&mut self.arena),
            takes: self.takes,
            pool: self.pool.take(),
            fan: self.fan.take(),
            on_thread: true,
            ring: self.ring.take(),
            yields: false,
            yield_owed: None,
            in_socket_frame: self.in_socket_frame,
            stash: self.stash.take(),
            probe_socket: true,
            told_of_readiness: false,
            handed: self.handed,
            held: Vec::new(),
            batch: BATCH,
            turn_left: usize::MAX,
        };
        if let Err(e) = lane::spawn_thread(rest, self.from) {
            // The reader moved into the failed spawn has been dropped, which ended the lane.
            tracing::warn!(from = %self.from, error = %e, "cannot read a lane any more");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_engine::engine;
    use super::*;
    use crate::engine::{Engine, EngineConfig};

    /// A reader of a lane from peer 2 that has its ring: (the reader, the ring's writer, the
    /// lane's writing end).
    fn reader_with_ring(ingress: Ingress) -> (LaneReader, ring::RingWriter, OwnedFd) {
        let (mine, theirs) = lane::pair().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = LaneReader::new(Arc::new(theirs), PeerId(2), ingress, 1 << 20, stop, Takes::Ring, |_| {});
        let (ring, [data, control]) = ring::RingWriter::new().unwrap();
        assert!(lane::write_ring(&mine, [&data, &control], ring::RING_SIZE).unwrap());
        assert_eq!(reader.read_some(1), LaneState::More, "the ring taken");
        (reader, ring, mine)
    }

    /// Ends a test's lane: the writer closes, the reader sees the end (and stops), the engine
    /// stops.
    fn end(mut reader: LaneReader, mine: OwnedFd, engine: Engine) {
        drop(mine);
        assert_eq!(reader.read_some(TURN), LaneState::Ended);
        drop(reader);
        engine.shutdown();
        engine.stopped().wait().unwrap();
    }

    /// A lane message of a kind no writer sends ends the lane and cuts its writer off as one
    /// that broke the protocol: its open calls fail with a protocol error that says what it
    /// did (not `PeerLost`: it did not die), and the writer sees its lane's end.
    #[test]
    fn a_message_of_an_unknown_kind_cuts_its_writer_off_as_a_violation() {
        use std::os::fd::AsRawFd;
        use std::time::Duration;
        let (engine, ingress, server) = super::super::test_engine::engine_and_server();
        let long = Duration::from_secs(60);
        engine.handle().watch_service("svc", long).unwrap().wait().unwrap();
        let call = engine.handle().call("svc.m", bytes::Bytes::new(), long).unwrap();
        let (mine, theirs) = lane::pair().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = LaneReader::new(Arc::new(theirs), PeerId(2), ingress, 1 << 20, stop, Takes::Ring, |_| {});
        let message = [0xEEu8, 1, 2, 3];
        // SAFETY: sends the bytes of a live array on a socket this test owns.
        let sent = unsafe { libc::send(mine.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
        assert_eq!(sent, 4);
        assert_eq!(reader.read_some(TURN), LaneState::Ended);
        match call.wait() {
            Err(crate::Error::Protocol(message)) => assert!(message.contains("unknown kind"), "{message}"),
            other => panic!("the call ended with {other:?}"),
        }
        assert_eq!(engine.handle().stats().protocol.peers_broke, 1);
        // The writer's next message finds the lane's end.
        assert!(lane::write_close(&mine).is_err(), "the lane was shut");
        drop(reader);
        server.shutdown();
        engine.shutdown();
        engine.stopped().wait().unwrap();
    }

    /// A large event published to three peers is copied once, into the hub's fan-out pool;
    /// each lane sends its place and the lane's own stamp, and each reader hands on the event
    /// with its own sequence number, read where it lies. A run is free again once every reader
    /// let go of it; runs a closed lane's reader still holds stay in use until it does.
    #[test]
    fn a_large_event_to_three_lanes_is_copied_once() {
        use proto::frame::{FanOut, Frame, FrameKind, WireFrame};
        use std::time::Duration;
        let mut lanes = super::super::out_lanes::OutLanes::new(Duration::from_secs(3600));
        let filter = || proto::topic::TopicFilter::new("t/#").unwrap();
        let mut readers = Vec::new();
        for peer in 2..5u64 {
            let (engine, ingress) = engine(EngineConfig::default());
            let events = engine.handle().subscribe(filter(), crate::engine::Qos::KeepLast(100)).unwrap();
            let (mine, theirs) = lane::pair().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let reader = LaneReader::new(Arc::new(theirs), PeerId(1), ingress, 4 << 20, stop, Takes::Fan, |_| {});
            lanes.insert(PeerId(peer), mine);
            readers.push((reader, events, engine));
        }
        let event = |seq: u64, fan: &FanOut, peer: u64| {
            let payload = bytes::Bytes::from(vec![seq as u8; (1 << 20) - 64]); // with its head, 16 units
            // Peer 4's sequence numbers skip one each time (each of its events says one was
            // missed): its stamp differs from the copy's, made of peer 2's frame.
            let stamp = if peer == 4 { seq * 2 } else { seq };
            let frame = Frame::new(FrameKind::Publish, 0, 0, stamp).with_name("t/x").with_payload(payload);
            WireFrame::from(frame.encode(4 << 20).unwrap()).with_fan_out(Some(fan))
        };
        let mut kept = Vec::new();
        for seq in 1..=4u64 {
            let fan = FanOut::default();
            for peer in 2..5u64 {
                lanes.write(PeerId(peer), &event(seq, &fan, peer)).unwrap();
            }
            // (The first event's frames hand each reader its lane's pool, then the fan-out pool.)
            assert_eq!(lanes.fan_census().0, 16 * seq as usize, "one copy of each megabyte so far");
            for (peer, (reader, events, _)) in (2..5u64).zip(&mut readers) {
                reader.read_some(TURN);
                let got = events.try_recv().expect("the event").unwrap();
                assert_eq!(got.body.len(), (1 << 20) - 64);
                assert!(got.body.iter().all(|b| *b == seq as u8));
                assert_eq!(got.missed, if peer == 4 { 1 } else { 0 }, "peer {peer}'s own sequence numbers");
                kept.push((peer, seq, got.body));
            }
        }
        // The readers let go of all but peer 2's last event; the next write takes that in.
        kept.retain(|(peer, seq, _)| (*peer, *seq) == (2, 4));
        let fan = FanOut::default();
        for peer in 2..5u64 {
            lanes.write(PeerId(peer), &event(5, &fan, peer)).unwrap();
        }
        assert_eq!(lanes.fan_census(), (32, 0), "the held run, and the new one");
        // Peer 2's lane closes while its reader holds one run and has not read another: both
        // stay in use.
        lanes.remove(PeerId(2));
        assert_eq!(lanes.fan_census().1, 2, "runs the closed lane's reader held or has not read");
        // The others read the fifth event and let go of it, and peer 2's reader of the fourth;
        // the pool, quiet, is given up (nothing holds a run but the closed lane's list)...
        for (reader, events, _) in &mut readers[1..] {
            reader.read_some(TURN);
            drop(events.try_recv().expect("the fifth event"));
        }
        drop((kept, fan));
        lanes.trim_pools(Duration::ZERO);
        assert_eq!(lanes.fan_census(), (0, 0), "given up");
        for (reader, _, _) in &mut readers[1..] {
            // Woken to look, and letting go of it.
            assert!(lane::has_unread(&reader.fd), "a wake-up for a reader with nothing to read");
            assert!(reader.fan.is_some());
            reader.read_some(TURN);
            assert!(reader.fan.is_none(), "a reader let go of the given-up pool");
        }
        // ... and peer 2's reader, reading on, still reads the fifth event from it, though it
        // had taken the message from the socket already (as a reader asleep on its ring does).
        let (mut reader, events, engine) = readers.remove(0);
        let lane::Received::Message(n, passed) = lane::receive(&reader.fd, &mut reader.buf, false) else {
            panic!("the fifth event's message is in the socket")
        };
        reader.stash = Some((n, passed));
        reader.read_some(TURN);
        let fifth = events.try_recv().expect("the fifth event, read after the pool was given up").unwrap();
        assert!(fifth.body.iter().all(|b| *b == 5));
        assert_eq!(engine.handle().stats().protocol.peers_broke, 0);
        drop(reader);
        engine.shutdown();
        for (_, _, engine) in readers {
            engine.shutdown();
        }
    }

    /// Wake-up messages the socket holds once the ring is read: a reader no reactor tells of
    /// readiness (tokio's, edge-triggered) reads them all, so none piles up; one told by a
    /// level-triggered reactor (smol's) reads one per readiness and leaves the rest for the
    /// reactor to report again.
    #[test]
    fn wake_up_messages_are_read_on_to_eagain_unless_a_reactor_tells_of_readiness() {
        let (engine, ingress) = engine(EngineConfig::default());
        let (mut reader, mut ring, mine) = reader_with_ring(ingress);
        let unread = |reader: &LaneReader| {
            let mut buf = [0u8; 16];
            let mut n = 0;
            while let lane::Received::Message(..) = lane::receive(&reader.fd(), &mut buf, false) {
                n += 1;
            }
            n
        };
        for told in [false, true] {
            assert!(ring.put_frame([&[1u8; 40], &[]]));
            lane::write_wake(&mine).unwrap();
            lane::write_wake(&mine).unwrap();
            if told {
                reader.socket_readable();
            }
            assert_eq!(reader.read_some(TURN), LaneState::Drained);
            assert_eq!(unread(&reader), if told { 1 } else { 0 }, "told of readiness: {told}");
        }
        // The writer's end, as the reactor would report it.
        reader.socket_readable();
        end(reader, mine, engine);
    }

    /// A turn counts the frames a ring batch hands on, not the reads: a peer that keeps the
    /// ring full holds a reader (a runtime's thread, a caller) for at most a turn's frames.
    #[test]
    fn a_turn_counts_the_frames_of_a_ring_batch() {
        let (engine, ingress) = engine(EngineConfig::default());
        let (mut reader, mut ring, mine) = reader_with_ring(ingress);
        // Frames the protocol drops (they are not frames of its): handed on all the same.
        for i in 0..100u8 {
            assert!(ring.put_frame([&[i; 40], &[]]));
        }
        // Ten frames, not a whole batch.
        assert_eq!(reader.read_some(10), LaneState::More);
        assert_eq!(reader.handed(), 10);
        assert_eq!(reader.read_some(3), LaneState::More);
        assert_eq!(reader.handed(), 13);
        // A turn across a batch's end: a batch, then what is left of the turn.
        assert_eq!(reader.read_some(40), LaneState::More);
        assert_eq!(reader.handed(), 53);
        // A long turn takes the rest and finds the ring empty.
        assert_eq!(reader.read_some(TURN), LaneState::Drained);
        assert_eq!(reader.handed(), 100);
        end(reader, mine, engine);
    }

    /// The frames of a batch go through the protocol one by one, each one's outputs taken out
    /// before the next goes in: the protocol's bound on queued outputs drops none of them.
    #[test]
    fn a_batch_of_events_is_not_taken_for_an_overload() {
        let mut config = EngineConfig::default();
        config.proto.max_queued_outputs = 2;
        let (engine, ingress) = engine(config);
        let filter = proto::topic::TopicFilter::new("t/#").unwrap();
        let events = engine.handle().subscribe(filter, crate::engine::Qos::KeepLast(100)).unwrap();
        let (mut reader, mut ring, mine) = reader_with_ring(ingress);
        for seq in 1..=20u64 {
            let frame = proto::frame::Frame::new(proto::frame::FrameKind::Publish, 0, 0, seq)
                .with_name("t/x")
                .with_payload(bytes::Bytes::from(seq.to_le_bytes().to_vec()))
                .encode(1 << 20)
                .unwrap();
            assert!(ring.put_frame([&frame, &[]]));
        }
        assert_eq!(reader.read_some(TURN), LaneState::Drained);
        assert_eq!(reader.handed(), 20);
        // Delivered as the read handed them on (no thread in between), all and in order.
        for seq in 1..=20u64 {
            let event = events.try_recv().expect("an event for every frame").unwrap();
            assert_eq!((event.body.as_ref(), event.missed), (&seq.to_le_bytes()[..], 0));
        }
        end(reader, mine, engine);
    }

    /// The lane's thread gives up its CPU before it sleeps after events (their readers run
    /// first), not after a request (the worker it woke is to take the lane back, and would find
    /// it held), nor when a request came earlier in the run, nor for what a caller reads.
    #[test]
    fn a_yield_is_owed_after_events_not_after_a_request() {
        use proto::frame::{Frame, FrameKind};
        let (engine, ingress) = engine(EngineConfig::default());
        let filter = proto::topic::TopicFilter::new("t/#").unwrap();
        let events = engine.handle().subscribe(filter, crate::engine::Qos::KeepLast(10)).unwrap();
        engine.handle().serve("svc").unwrap();
        let (mut reader, mut ring, mine) = reader_with_ring(ingress);
        let event = |seq: u64| Frame::new(FrameKind::Publish, 0, 0, seq).with_name("t/x").encode(1 << 20).unwrap();
        let request = |id: u64| {
            Frame::new(FrameKind::Request, 0, id, 0).with_name("svc.m").with_aux(60_000).encode(1 << 20).unwrap()
        };
        let mut put = |frames: &[bytes::Bytes]| {
            for frame in frames {
                assert!(ring.put_frame([frame, &[]]));
            }
        };
        reader.batch(1);
        // Each delivery alone, the ring then found empty (which takes what is owed).
        for (frame, what, owed) in
            [(event(1), "an event", true), (request(1), "a request", false), (event(2), "an event", true)]
        {
            put(&[frame]);
            assert_eq!(reader.read_some(1), LaneState::More);
            assert_eq!(reader.yield_owed, Some(owed), "after {what}");
            assert_eq!(reader.read_some(1), LaneState::Drained);
            assert_eq!(reader.yield_owed, None, "taken once the ring is found empty");
        }
        // A request in an earlier delivery counts as much as one in the last.
        put(&[request(2), event(3)]);
        assert_eq!(reader.read_some(2), LaneState::More);
        assert_eq!(reader.yield_owed, Some(false), "after a request, then an event");
        assert_eq!(reader.read_some(1), LaneState::Drained);
        // Lent to a caller: what it reads owes the lane's thread no yield.
        put(&[event(4)]);
        reader.lent();
        assert_eq!(reader.read_some(1), LaneState::More);
        assert_eq!(reader.yield_owed, Some(false), "after an event a caller read");
        assert_eq!(reader.read_some(1), LaneState::Drained);
        // Every event reached the subscription.
        let mut got = 0;
        while events.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, 4);
        end(reader, mine, engine);
    }
}
