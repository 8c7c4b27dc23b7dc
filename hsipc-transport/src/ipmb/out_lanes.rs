//! The lanes a hub writes, one per peer, and the frames waiting for room in each.
//!
//! Writing does not block: a frame a lane cannot take now waits in that lane's own queue
//! (behind any frame already waiting, so the peer's order holds), and the engine's writer
//! thread writes it once the lane has room (it sleeps in `poll` on the full lanes, see
//! [`Transport::waiting`](crate::Transport::waiting)). So a peer that stops reading holds back
//! its own frames only, never another peer's. What waits for one lane is bounded: beyond
//! [`MAX_WAITING_BYTES`] or [`MAX_WAITING_FRAMES`], a thread that must not wait leaves the frame
//! to the engine's writer (whose queue holds publishers back), and the writer waits for that
//! lane to take some. A lane whose waiting frames make no progress for the stall timeout is
//! given up: its peer is cut off.
//!
//! # Each peer's lane is written under its own lock
//!
//! Threads that produce frames hand them to their peer's lane under the engine's send lock
//! ([`OutLanes::try_queue`]: a push into the lane's queue, no system call, no copy), and write
//! them once they have let go of it ([`PeerLane::write_handed`], the transport's
//! [`PeerSender`]): the copy into the ring or the pool, and the message that wakes the reader,
//! happen under that lane's lock alone, so threads that answer different peers write at the same
//! time. The order of each peer's frames is the order they were handed over in (under the
//! engine's send lock), whoever writes them: a thread that finds the lane's lock taken leaves
//! its frames to the holder ([`SendLock`]), and a writer under the engine's send lock (the
//! engine's writer thread, a broadcast) takes what was handed over before it writes its own.

use std::collections::VecDeque;

use proto::fast_map::FastMap as HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::PeerId;
use proto::frame::WireFrame;

use super::fan_pool::FanPools;
use super::lane;
use super::large::{How, LargeFrames};
use crate::send_lock::SendLock;
use crate::transport::PeerSender;

/// Most bytes that wait for one lane before its writers wait (a larger frame still goes, alone).
const MAX_WAITING_BYTES: usize = 64 << 20;
/// Most frames that wait for one lane before its writers wait.
const MAX_WAITING_FRAMES: usize = 8192;
/// How many times in a row a thread writes frames other threads handed to a lane meanwhile
/// before it leaves the rest to the engine's writer.
const WRITE_ROUNDS: usize = 4;

/// One peer's lane: what threads handed to it, and the lane itself under its own lock.
pub(crate) struct PeerLane {
    peer: PeerId,
    /// Frames handed over (under the engine's send lock) and not yet taken by a writer, oldest
    /// first. Held only to push or take.
    handed: Mutex<Handed>,
    /// The lane: whoever holds it writes.
    lane: SendLock<OutLane>,
    /// Whether a frame for this peer alone went in since the last idle check.
    used: AtomicBool,
    /// No longer written: removed (closed, broken or stalled), or found broken by a write
    /// outside the engine's send lock. What is handed to it is dropped.
    gone: AtomicBool,
    /// A write outside the engine's send lock found the lane broken: the error, for the
    /// transport to cut the peer off with (the engine's writer is woken to do it).
    broken: Mutex<Option<io::Error>>,
    /// Frames handed over were left unwritten after [`WRITE_ROUNDS`], or the lane was found
    /// broken: the engine's writer is to come (see [`OutLanes::waiting`]).
    left: AtomicBool,
    /// Frames and bytes waiting in the lane (mirrors, for the bound on what is handed over).
    waiting_frames: AtomicUsize,
    waiting_bytes: AtomicUsize,
    /// The reader's hub declined the lane: frames go to the engine's writer until it is closed.
    declined: AtomicBool,
}

/// Frames handed to a lane, and their bytes.
#[derive(Default)]
struct Handed {
    frames: VecDeque<WireFrame>,
    bytes: usize,
}

impl std::fmt::Debug for PeerLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLane").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl PeerSender for PeerLane {
    fn send_queued(&self) -> bool {
        self.write_handed()
    }
}

impl PeerLane {
    fn handed(&self) -> MutexGuard<'_, Handed> {
        self.handed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `frame` must wait for room (a frame alone always has room).
    fn is_full(&self, frame: &WireFrame, handed: &Handed) -> bool {
        let frames = handed.frames.len() + self.waiting_frames.load(Ordering::Relaxed);
        let bytes = handed.bytes + self.waiting_bytes.load(Ordering::Relaxed);
        frames > 0 && (bytes + frame.len() > MAX_WAITING_BYTES || frames >= MAX_WAITING_FRAMES)
    }

    /// Writes what was handed to the lane, as far as it takes it now, without ever waiting (a
    /// thread that finds the lane being written leaves its frames to that thread). `true` if
    /// the engine's writer is to come: the lane is full (the writer polls it), other threads
    /// kept handing frames over for [`WRITE_ROUNDS`] rounds, or the lane broke (the writer
    /// has the transport cut the peer off).
    pub(crate) fn write_handed(&self) -> bool {
        for _ in 0..WRITE_ROUNDS {
            let Some(mut lane) = self.lane.try_lock() else { return false };
            if self.gone.load(Ordering::Acquire) {
                // Removed, or broken: nothing more goes in. A break not yet settled still needs
                // the engine's writer.
                let dropped = std::mem::take(&mut *self.handed());
                drop(lane);
                drop(dropped);
                return self.broken.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            }
            let mut written = self.take_handed(&mut lane);
            if written.is_ok() && !lane.waiting.is_empty() {
                written = lane.flush(Instant::now());
            }
            let full = !lane.waiting.is_empty();
            self.mirror(&lane);
            if let Err(e) = written {
                // Marked before the lane is let go: no other thread writes after the failure.
                self.break_off(e);
                return true;
            }
            drop(lane);
            if !self.lane.asked() {
                return full;
            }
        }
        self.left.store(true, Ordering::Release);
        true
    }

    /// Takes what was handed over into the lane (written, or queued behind what waits), before
    /// anything else is written. Dropped if the lane is gone.
    fn take_handed(&self, lane: &mut OutLane) -> io::Result<()> {
        // Swapped for the lane's empty queue, so that handing over allocates nothing once the
        // two have grown.
        let mut frames = std::mem::take(&mut lane.spare);
        {
            let mut handed = self.handed();
            if handed.frames.is_empty() {
                lane.spare = frames;
                return Ok(());
            }
            // Counted as waiting in the lane from now (the mirrors are made exact after the
            // write), so that what is handed over meanwhile stays within the bound.
            self.waiting_frames.fetch_add(handed.frames.len(), Ordering::Relaxed);
            self.waiting_bytes.fetch_add(std::mem::take(&mut handed.bytes), Ordering::Relaxed);
            std::mem::swap(&mut handed.frames, &mut frames);
        }
        let gone = self.gone.load(Ordering::Acquire);
        let mut written = Ok(());
        for frame in frames.drain(..) {
            if !gone && written.is_ok() {
                written = lane.push(&frame);
            }
        }
        lane.spare = frames;
        written
    }

    /// The lane, waiting for its lock (under the engine's send lock: the engine's writer, a
    /// thread whose frame must wait for room), with what was handed over taken in first. Let go
    /// with [`release`](Self::release). `Err` if the lane broke: it is to be removed (the
    /// guard is dropped without serving threads that asked meanwhile; what they handed over
    /// goes with the lane).
    fn hold(&self) -> io::Result<MutexGuard<'_, OutLane>> {
        if let Some(e) = self.take_broken() {
            return Err(e);
        }
        let mut lane = self.lane.lock();
        self.take_handed(&mut lane)?;
        self.left.store(false, Ordering::Relaxed);
        Ok(lane)
    }

    /// Lets go of the lane held with [`hold`](Self::hold) (or [`peek`](Self::peek)), writing
    /// what threads that found it taken handed over meanwhile (what that leaves, the engine's
    /// writer finds through `waiting`).
    fn release(&self, lane: MutexGuard<'_, OutLane>) {
        self.mirror(&lane);
        drop(lane);
        if self.lane.asked() && self.write_handed() {
            // The threads it acted for returned thinking their frames were written: the
            // engine's writer is to come (see `OutLanes::waiting`).
            self.left.store(true, Ordering::Release);
        }
    }

    /// Runs `f` on the lane, waiting for its lock, without taking in what was handed over.
    fn peek<R>(&self, f: impl FnOnce(&mut OutLane) -> R) -> R {
        let mut lane = self.lane.lock();
        let r = f(&mut lane);
        self.release(lane);
        r
    }

    /// Keeps the mirrors of what waits in the lane up to date.
    fn mirror(&self, lane: &OutLane) {
        self.waiting_frames.store(lane.waiting.len(), Ordering::Relaxed);
        self.waiting_bytes.store(lane.waiting_bytes, Ordering::Relaxed);
        self.declined.store(lane.large.declined(), Ordering::Relaxed);
    }

    /// A write outside the engine's send lock found the lane broken: it is given up, and the
    /// transport cuts the peer off (and tells the engine) under the send lock, once the
    /// engine's writer comes (see [`OutLanes::take_broken`]); this thread's caller wakes it.
    fn break_off(&self, e: io::Error) {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        self.gone.store(true, Ordering::Release);
        self.left.store(true, Ordering::Release);
    }

    fn take_broken(&self) -> Option<io::Error> {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// One peer's lane and what waits for it (under the lane's lock).
struct OutLane {
    fd: OwnedFd,
    /// Frames accepted and not yet fully written, oldest first.
    waiting: VecDeque<Outgoing>,
    /// Chunks of the first waiting frame already written.
    written: usize,
    /// An empty queue to swap for what is handed over (see [`PeerLane::take_handed`]).
    spare: VecDeque<WireFrame>,
    /// How large frames go.
    large: LargeFrames,
    waiting_bytes: usize,
    /// When the waiting frames last made progress (or began to wait).
    progress: Instant,
    /// When a frame for this peer alone (not its copy of a broadcast) last went in, as dated
    /// by the idle check that saw [`PeerLane::used`] (so never earlier than the use).
    last_used: Instant,
}

impl Drop for OutLane {
    /// What the reader sent back is read before the end closes: a close with it unread would
    /// make the reader's next read fail once, ahead of the last frames.
    fn drop(&mut self) {
        lane::drain_back(&self.fd);
    }
}

/// A frame waiting for room in a lane, and how it goes.
struct Outgoing {
    frame: WireFrame,
    how: How,
}

/// The lanes this hub writes.
pub(super) struct OutLanes {
    lanes: HashMap<PeerId, Arc<PeerLane>>,
    stall: Duration,
    /// The one copy of each large event published to several of the lanes' peers.
    fan: Arc<FanPools>,
}

impl OutLanes {
    pub(super) fn new(stall: Duration) -> Self {
        OutLanes { lanes: HashMap::default(), stall: stall.max(Duration::from_millis(1)), fan: Arc::default() }
    }

    /// Units in use in the hub's fan-out pool, and runs closed lanes left there.
    #[cfg(test)]
    pub(super) fn fan_census(&self) -> (usize, usize) {
        self.fan.census()
    }

    pub(super) fn insert(&mut self, peer: PeerId, fd: OwnedFd) {
        let now = Instant::now();
        let lane = OutLane {
            fd,
            waiting: VecDeque::new(),
            written: 0,
            spare: VecDeque::new(),
            large: LargeFrames::new(self.fan.clone()),
            waiting_bytes: 0,
            progress: now,
            last_used: now,
        };
        let lane = PeerLane {
            peer,
            handed: Mutex::default(),
            lane: SendLock::new(lane),
            used: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            broken: Mutex::new(None),
            waiting_frames: AtomicUsize::new(0),
            waiting_bytes: AtomicUsize::new(0),
            declined: AtomicBool::new(false),
            left: AtomicBool::new(false),
        };
        if let Some(old) = self.lanes.insert(peer, Arc::new(lane)) {
            old.gone.store(true, Ordering::Release);
        }
    }

    pub(super) fn contains(&self, peer: PeerId) -> bool {
        self.lanes.contains_key(&peer)
    }

    pub(super) fn len(&self) -> usize {
        self.lanes.len()
    }

    pub(super) fn peers(&self) -> Vec<PeerId> {
        self.lanes.keys().copied().collect()
    }

    /// Forgets a lane (its peer sees the end once every copy of the fd is closed); what is
    /// handed to it and not written yet is dropped.
    pub(super) fn remove(&mut self, peer: PeerId) {
        if let Some(lane) = self.lanes.remove(&peer) {
            lane.gone.store(true, Ordering::Release);
        }
    }

    pub(super) fn clear(&mut self) {
        for (_, lane) in self.lanes.drain() {
            lane.gone.store(true, Ordering::Release);
        }
    }

    /// The lanes a write outside the engine's send lock found broken, taken out: their peers
    /// are to be cut off (and the engine told).
    pub(super) fn take_broken(&mut self) -> Vec<(PeerId, io::Error)> {
        let mut broken = Vec::new();
        self.lanes.retain(|peer, lane| match lane.take_broken() {
            Some(e) => {
                broken.push((*peer, e));
                false
            }
            None => true,
        });
        broken
    }

    /// Writes `frame` into `peer`'s lane, or queues it behind what waits there. When too much
    /// waits already, this waits for the lane to take some (at most until it has made no
    /// progress for the stall timeout). `Err` if the lane broke or stalled: its peer is to be
    /// cut off.
    pub(super) fn write(&mut self, peer: PeerId, frame: &WireFrame) -> io::Result<()> {
        let stall = self.stall;
        let Some(peer_lane) = self.lanes.get(&peer) else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no lane to that peer"));
        };
        let mut lane = peer_lane.hold()?;
        let mut written = Ok(());
        while written.is_ok() && lane.is_full(frame) {
            written = lane.wait_for_room(stall);
        }
        let written = written.and_then(|()| lane.push(frame));
        peer_lane.release(lane);
        written
    }

    /// Hands `frame`, for `peer` alone, to its lane from a thread that must not wait: write it
    /// with [`PeerLane::write_handed`] once the engine's send lock is let go. `Ok(None)` if it
    /// was not taken (no lane to `peer`, or a full queue: the engine's writer takes it); `Err`
    /// if a write found the lane broken (its peer is to be cut off).
    pub(super) fn try_queue(&mut self, peer: PeerId, frame: &WireFrame) -> io::Result<Option<Arc<PeerLane>>> {
        let Some(lane) = self.lanes.get(&peer) else { return Ok(None) };
        if lane.declined.load(Ordering::Relaxed) {
            // To be closed: the writer sends what comes meanwhile, and closes it once the
            // reader has taken all (a peer kept busy from other threads would keep it open).
            return Ok(None);
        }
        let mut handed = lane.handed();
        if lane.is_full(frame, &handed) {
            drop(handed);
            // Room made now (the reader has taken some meanwhile) keeps the frame off the
            // writer; a lane being written by another thread is not waited for, and what this
            // leaves the writer is told of (see `write_handed`).
            lane.write_handed();
            handed = lane.handed();
        }
        if lane.gone.load(Ordering::Acquire) {
            // Broken (a lane in the map is gone only so), maybe by the write just above: its
            // peer is to be cut off.
            drop(handed);
            return lane.take_broken().map_or(Ok(None), Err);
        }
        if lane.is_full(frame, &handed) {
            return Ok(None);
        }
        handed.bytes += frame.len();
        handed.frames.push_back(frame.clone());
        drop(handed);
        // A frame for this peer alone: the lane is in use (no clock read per frame: the idle
        // check, about once a second, dates the use).
        lane.used.store(true, Ordering::Relaxed);
        Ok(Some(lane.clone()))
    }

    /// Notes that a frame for `peer` alone is going into its lane (the lane is in use).
    pub(super) fn touch(&mut self, peer: PeerId) {
        if let Some(lane) = self.lanes.get(&peer) {
            lane.used.store(true, Ordering::Relaxed);
        }
    }

    /// Runs `f` on every lane, held (what was handed over taken in first), and removes those
    /// it closed (it says so) and those it found broken (it adds them to `broken`, as this does
    /// lanes found broken on the way). Returns the peers of the lanes it closed.
    fn sweep(
        &mut self,
        broken: &mut Vec<(PeerId, io::Error)>,
        mut f: impl FnMut(PeerId, &PeerLane, &mut OutLane, &mut Vec<(PeerId, io::Error)>) -> bool,
    ) -> Vec<PeerId> {
        let mut removed = Vec::new();
        self.lanes.retain(|peer, peer_lane| {
            let mut lane = match peer_lane.hold() {
                Ok(lane) => lane,
                Err(e) => {
                    broken.push((*peer, e));
                    peer_lane.gone.store(true, Ordering::Release);
                    return false;
                }
            };
            let before = broken.len();
            let closed = f(*peer, peer_lane, &mut lane, broken);
            let remove = closed || broken.len() > before;
            if remove {
                peer_lane.gone.store(true, Ordering::Release);
            }
            if closed {
                removed.push(*peer);
            }
            peer_lane.release(lane);
            !remove
        });
        removed
    }

    /// Closes the lanes no frame for their peer alone has used for `idle` (nothing waits in
    /// them): each gets a closing message, after which its reader ends without taking the peer
    /// for gone. Returns their peers, whose frames go through the bus (or a new lane) from now;
    /// adds to `broken` the lanes found broken on the way (their peers are to be cut off).
    pub(super) fn close_idle(&mut self, idle: Duration, broken: &mut Vec<(PeerId, io::Error)>) -> Vec<PeerId> {
        let now = Instant::now();
        self.sweep(broken, |peer, peer_lane, l, broken| {
            if peer_lane.used.swap(false, Ordering::Relaxed) {
                l.last_used = now;
            }
            let unused = l.waiting.is_empty() && now.saturating_duration_since(l.last_used) >= idle;
            // A lane with no room for the closing message stays until the next look.
            unused && closes(peer, l, broken)
        })
    }

    /// Closes the lanes whose reader's hub declined them, once nothing waits in them (their
    /// reader reads until the closing message). Returns their peers, whose frames go through the
    /// bus from now on; adds to `broken` the lanes found broken on the way.
    pub(super) fn close_declined(&mut self, broken: &mut Vec<(PeerId, io::Error)>) -> Vec<PeerId> {
        self.sweep(broken, |peer, _, l, broken| {
            if !l.large.heard() {
                let _ = l.large.read_back(&l.fd); // a reader that is gone shows in the next write
            }
            l.large.declined() && l.waiting.is_empty() && closes(peer, l, broken)
        })
    }

    /// Gives back the pages of lane pools beyond their first megabytes, for lanes whose pool
    /// has had no frame for `quiet`, and gives a quiet fan-out pool up (see `fan_pool`).
    pub(super) fn trim_pools(&mut self, quiet: Duration) {
        let now = Instant::now();
        for lane in self.lanes.values() {
            lane.peek(|l| l.large.trim_if_quiet(now, quiet));
        }
        // After the lanes took their readers' releases in.
        if let Some(given_up) = self.fan.trim_if_quiet(now, quiet) {
            // Its readers look at it at their next message: each gets one now (a lane that has
            // no room has messages for its reader already).
            for lane in self.lanes.values() {
                lane.peek(|l| {
                    if l.large.forget_fan_pool(given_up) {
                        let _ = lane::write_wake(&l.fd); // a broken lane shows at its next write
                    }
                });
            }
        }
    }

    /// Writes what waits, as far as the lanes take it now. Returns the peers whose lane broke,
    /// or made no progress for the stall timeout (their reader is stuck).
    pub(super) fn flush(&mut self) -> Vec<(PeerId, io::Error)> {
        let now = Instant::now();
        let stall = self.stall;
        let mut failed = Vec::new();
        self.sweep(&mut failed, |peer, _, lane, failed| {
            if let Err(e) = lane.flush(now) {
                failed.push((peer, e));
            } else if !lane.waiting.is_empty() && now >= lane.progress + stall {
                failed.push((peer, io::Error::new(io::ErrorKind::TimedOut, "the lane's reader is stuck")));
            }
            false
        });
        failed
    }

    /// The lanes with frames waiting, to poll for room (writable: room in the socket;
    /// readable: the reader says it made room in the ring), and when the first of them stalls
    /// (now, if frames handed over were left unwritten or a lane was found broken). Only lanes
    /// with frames waiting are locked.
    pub(super) fn waiting(&self) -> Option<(Vec<RawFd>, Vec<RawFd>, Instant)> {
        let (mut writable, mut readable, mut until) = (Vec::new(), Vec::new(), None::<Instant>);
        for peer_lane in self.lanes.values() {
            let fd = if peer_lane.waiting_frames.load(Ordering::Relaxed) > 0 {
                peer_lane.peek(|lane| {
                    (!lane.waiting.is_empty())
                        .then(|| (lane.fd.as_raw_fd(), lane.large.ring_full(), lane.progress + self.stall))
                })
            } else {
                None
            };
            // After the look (whose release may act for other threads and leave frames).
            let left = peer_lane.left.load(Ordering::Acquire);
            let at = match (left, fd) {
                (true, _) => Instant::now(),
                (false, Some((_, _, stalls))) => stalls,
                (false, None) => continue,
            };
            until = Some(until.map_or(at, |u| u.min(at)));
            match fd {
                Some((fd, true, _)) => readable.push(fd),
                Some((fd, false, _)) => writable.push(fd),
                None => {}
            }
        }
        Some((writable, readable, until?))
    }

    /// At close: writes what waits, waiting for room until `deadline` at most.
    pub(super) fn drain(&mut self, deadline: Instant) {
        loop {
            // A broken lane takes nothing more (and would wake `poll` at once, forever): `flush`
            // took it out.
            let _ = self.flush();
            let Some((writable, readable, _)) = self.waiting() else { return };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if writable.is_empty() && readable.is_empty() {
                // Only frames handed over are left (the next flush takes them in): no fd to
                // wait on.
                std::thread::yield_now();
                continue;
            }
            let poll = |events| move |&fd: &RawFd| libc::pollfd { fd, events, revents: 0 };
            let mut polls: Vec<libc::pollfd> =
                writable.iter().map(poll(libc::POLLOUT)).chain(readable.iter().map(poll(libc::POLLIN))).collect();
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: a valid array of pollfds; the fds stay open (owned by `self`).
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        }
    }
}

/// Writes a lane's closing message: whether it went (no room: not now); a lane found broken is
/// added to `broken` (the sweep removes it, and its peer is to be cut off).
fn closes(peer: PeerId, lane: &mut OutLane, broken: &mut Vec<(PeerId, io::Error)>) -> bool {
    match lane.large.write_close(&lane.fd) {
        Ok(went) => went,
        Err(e) => {
            broken.push((peer, e));
            false
        }
    }
}

impl OutLane {
    /// Whether `frame` must wait for room in the queue (a frame alone always has room).
    fn is_full(&self, frame: &WireFrame) -> bool {
        !self.waiting.is_empty()
            && (self.waiting_bytes + frame.len() > MAX_WAITING_BYTES || self.waiting.len() >= MAX_WAITING_FRAMES)
    }

    /// Writes `frame`, or queues it behind what waits.
    fn push(&mut self, frame: &WireFrame) -> io::Result<()> {
        if self.waiting.is_empty() {
            self.large.prepare_lane(&self.fd)?;
        } else {
            self.large.prepare_behind();
        }
        let mut how = self.large.prepare(&self.fd, frame);
        if self.waiting.is_empty() {
            let written = self.large.write(&self.fd, frame, &mut how, 0)?;
            if written == how.parts(frame) {
                return Ok(()); // the common case: nothing kept, nothing cloned
            }
            self.written = written;
            self.progress = Instant::now();
        }
        self.waiting_bytes += frame.len();
        // It may wait long (a peer that does not read): it keeps only its own bytes alive.
        self.waiting.push_back(Outgoing { frame: frame.detached(), how });
        Ok(())
    }

    /// Waits until the lane takes some of what waits: `TimedOut` once it has taken nothing
    /// for `stall`.
    fn wait_for_room(&mut self, stall: Duration) -> io::Result<()> {
        let before = self.waiting.len();
        loop {
            self.flush(Instant::now())?;
            if self.waiting.len() < before {
                return Ok(());
            }
            let left = (self.progress + stall).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the lane's reader is stuck"));
            }
            let events = if self.large.ring_full() { libc::POLLIN } else { libc::POLLOUT };
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 };
            let ms = left.as_millis().clamp(1, 100) as libc::c_int;
            // SAFETY: one valid pollfd; the fd stays open (owned by `self`).
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// Writes waiting frames until the lane is full or nothing waits.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        if self.large.ring_full() {
            // Takes in what the reader said (that it made room), so the fd polls quiet again;
            // finds out, too, if the reader is gone (writing into the ring would not tell).
            self.large.read_back(&self.fd)?;
        }
        while let Some(mut front) = self.waiting.pop_front() {
            let written = self.large.write(&self.fd, &front.frame, &mut front.how, self.written)?;
            if written > self.written {
                self.progress = now;
            }
            if written < front.how.parts(&front.frame) {
                self.written = written;
                self.waiting.push_front(front);
                return Ok(());
            }
            self.waiting_bytes -= front.frame.len();
            self.written = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::pool::{self, RecvPool};
    use super::super::ring;
    use super::super::sealed;
    use super::*;

    fn lanes_for_tests(stall: Duration) -> OutLanes {
        OutLanes::new(stall)
    }

    /// Lanes that never stall, with one lane to peer 7, and that lane's reading end.
    fn one_lane() -> (OutLanes, PeerId, OwnedFd) {
        let (mine, theirs) = lane::pair().unwrap();
        let mut lanes = lanes_for_tests(Duration::from_secs(3600));
        lanes.insert(PeerId(7), mine);
        (lanes, PeerId(7), theirs)
    }

    /// Hands `frame` to `peer`'s lane and writes it as a thread that must not wait does:
    /// whether the lane took it.
    fn hand(lanes: &mut OutLanes, peer: PeerId, frame: &WireFrame) -> bool {
        match lanes.try_queue(peer, frame).unwrap() {
            Some(lane) => {
                lane.write_handed();
                true
            }
            None => false,
        }
    }

    /// A lane whose reader does not read: frames wait without blocking the writer, in order,
    /// and go through once the reader reads.
    #[test]
    fn a_full_lane_queues_without_blocking_and_keeps_order() {
        let (mut lanes, peer, theirs) = one_lane();
        let frames: Vec<WireFrame> = (0..64u8).map(|i| WireFrame::from(Bytes::from(vec![i; 100_000]))).collect();
        for f in &frames {
            lanes.write(peer, f).unwrap();
        }
        assert!(lanes.waiting().is_some(), "a lane holds far less than 6 MB: some must wait");
        // A frame from a thread that must not wait queues behind them.
        let last = WireFrame::from(Bytes::from_static(b"last"));
        assert!(hand(&mut lanes, peer, &last));
        let frames: Vec<Bytes> = frames.into_iter().chain([last]).map(|f| f.to_bytes()).collect();
        // Read everything while flushing: the frames arrive whole and in order.
        let mut got = Vec::new();
        let mut frame = Vec::new();
        let mut buf = vec![0u8; 70 * 1024];
        while got.len() < frames.len() {
            assert!(lanes.flush().is_empty());
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(theirs.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT)
                };
                if n <= 0 {
                    break;
                }
                frame.extend_from_slice(&buf[1..n as usize]);
                if buf[0] == 0 {
                    got.push(std::mem::take(&mut frame));
                }
            }
        }
        assert!(got.iter().zip(&frames).all(|(a, b)| a[..] == b[..]));
        assert!(lanes.waiting().is_none());
    }

    /// A frame for the lane's peer alone marks the lane used (so the idle check keeps it); a
    /// broadcast's copy, written with `write`, does not (a lane kept busy only by announces
    /// is idle).
    #[test]
    fn only_frames_for_the_peer_alone_mark_a_lane_used() {
        let (mut lanes, peer, _theirs) = one_lane();
        let frame = WireFrame::from(Bytes::from_static(b"frame"));
        lanes.write(peer, &frame).unwrap();
        let used = |lanes: &OutLanes| lanes.lanes[&peer].used.load(Ordering::Relaxed);
        assert!(!used(&lanes), "a broadcast's copy");
        assert!(hand(&mut lanes, peer, &frame));
        assert!(used(&lanes), "a frame from a thread that must not wait");
        lanes.lanes[&peer].used.store(false, Ordering::Relaxed);
        lanes.touch(peer);
        assert!(used(&lanes), "a frame the writer sends to the peer alone");
    }

    /// Reads one small frame from a lane's reading end, waiting for it (10 s at most): its
    /// bytes.
    fn read_one(fd: &OwnedFd) -> Vec<u8> {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; the fd stays open (borrowed).
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1, "no frame came");
        let mut buf = vec![0u8; lane::CHUNK + 1];
        match lane::receive(fd, &mut buf, false) {
            lane::Received::Message(n, _) => buf[1..n].to_vec(),
            _ => panic!("no frame"),
        }
    }

    /// Each peer's lane is written under its own lock: while one thread holds one peer's lane
    /// (as a thread writing a large frame into it does), another hands a frame to a second
    /// peer and writes it itself, without waiting; a frame it hands to the held peer is
    /// written by the holder once it lets go, after what the holder wrote, and nothing waits.
    #[test]
    fn a_thread_writes_its_peers_lane_while_another_peers_lane_is_held() {
        let (p, q) = (PeerId(7), PeerId(8));
        let (mine_p, theirs_p) = lane::pair().unwrap();
        let (mine_q, theirs_q) = lane::pair().unwrap();
        let mut lanes = lanes_for_tests(Duration::from_secs(3600));
        lanes.insert(p, mine_p);
        lanes.insert(q, mine_q);
        let frame = |b: &'static [u8]| WireFrame::from(Bytes::from_static(b));
        let lane_p = lanes.lanes[&p].clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            lane_p.peek(|lane| {
                lane.push(&WireFrame::from(Bytes::from_static(b"first"))).unwrap();
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            });
        });
        held_rx.recv().unwrap();
        // Another peer's lane: handed over and written by this thread, now.
        assert!(hand(&mut lanes, q, &frame(b"to q")));
        assert_eq!(read_one(&theirs_q), b"to q");
        // The held peer's lane: handed over, left to the holder; this thread does not wait.
        let handed = lanes.try_queue(p, &frame(b"second")).unwrap().expect("the lane takes it");
        assert!(!handed.write_handed(), "nothing is left for the engine's writer");
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(read_one(&theirs_p), b"first");
        assert_eq!(read_one(&theirs_p), b"second", "written by the holder as it let go");
        assert!(lanes.waiting().is_none());
    }

    /// A holder that writes, as it lets go, frames other threads handed over meanwhile and cannot
    /// write them all (the lane is full) marks the lane for the engine's writer: the threads it
    /// acted for have returned, and nobody else would wake the writer.
    #[test]
    fn a_holder_that_acts_for_others_and_leaves_frames_calls_the_writer() {
        let (mut lanes, peer, _theirs) = one_lane();
        let lane = lanes.lanes[&peer].clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let lane = lane.clone();
            std::thread::spawn(move || {
                lane.peek(|_| {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                })
            })
        };
        held_rx.recv().unwrap();
        // Far more than a lane holds, handed over while the lane is held: left to the holder.
        for i in 0..64u8 {
            let frame = WireFrame::from(Bytes::from(vec![i; 100_000]));
            let handed = lanes.try_queue(peer, &frame).unwrap().expect("the lane takes it");
            assert!(!handed.write_handed(), "left to the holder");
        }
        assert!(!lane.left.load(Ordering::Acquire));
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(lane.left.load(Ordering::Acquire), "the writer is called");
        let (_, _, until) = lanes.waiting().expect("frames wait");
        assert!(until <= Instant::now(), "the writer comes at once");
    }

    /// What waits for one lane stays within its bound also while a writer is taking in what
    /// was handed over (the frames count as waiting from the moment they are taken).
    #[test]
    fn frames_handed_over_stay_within_the_bound_while_a_writer_takes_them_in() {
        let (mut lanes, peer, _theirs) = one_lane();
        let small = WireFrame::from(Bytes::from_static(b"small"));
        let lane = lanes.lanes[&peer].clone();
        // Held meanwhile (as by a thread writing into it): nothing handed over is written yet.
        let mut held = lane.lane.lock();
        for _ in 0..MAX_WAITING_FRAMES {
            assert!(lanes.try_queue(peer, &small).unwrap().is_some());
        }
        assert!(lanes.try_queue(peer, &small).unwrap().is_none(), "full");
        lane.take_handed(&mut held).unwrap();
        // Written as far as the lane takes them, the rest waiting in it, and the mirrors not
        // made exact yet.
        assert!(lanes.try_queue(peer, &small).unwrap().is_none(), "still full while taken in");
        lane.release(held);
        let waiting = lane.waiting_frames.load(Ordering::Relaxed) + lane.handed().frames.len();
        assert!(waiting <= MAX_WAITING_FRAMES, "{waiting} frames wait");
    }

    /// What threads handed to a lane goes before what the engine's writer writes into it later
    /// (a broadcast's copy), though nobody wrote the handed frames yet.
    #[test]
    fn handed_frames_go_before_a_later_write() {
        let (mut lanes, peer, theirs) = one_lane();
        let frame = |b: &'static [u8]| WireFrame::from(Bytes::from_static(b));
        let handed = lanes.try_queue(peer, &frame(b"handed")).unwrap().unwrap();
        assert!(lanes.waiting().is_none(), "handed frames are their thread's to write, not the writer's");
        lanes.write(peer, &frame(b"written")).unwrap();
        assert!(!handed.write_handed());
        assert_eq!(read_one(&theirs), b"handed");
        assert_eq!(read_one(&theirs), b"written");
    }

    #[test]
    fn a_lane_that_makes_no_progress_is_given_up_at_its_stall_timeout() {
        let (mine, _theirs) = lane::pair().unwrap();
        let mut lanes = lanes_for_tests(Duration::from_millis(1));
        lanes.insert(PeerId(7), mine);
        let big = WireFrame::from(Bytes::from(vec![0u8; 1 << 20]));
        lanes.write(PeerId(7), &big).unwrap();
        let (_, _, until) = lanes.waiting().unwrap();
        while Instant::now() < until {
            std::thread::yield_now();
        }
        let failed = lanes.flush();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1.kind(), io::ErrorKind::TimedOut);
    }

    /// A lane whose reader says it takes a ring only once frames already wait (its thread ran
    /// late) gets the ring behind them, while frames still wait, not at a moment with nothing
    /// waiting (which a steady burst never has): the socket brings the frames that waited, then
    /// the ring, and the ring the rest, every frame once and in order.
    #[test]
    fn a_ring_is_handed_over_behind_frames_that_wait() {
        let (mut lanes, peer, theirs) = one_lane();
        let frame = |i: u32| {
            let mut bytes = vec![0u8; 4096];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            WireFrame::from(Bytes::from(bytes))
        };
        let n = 3000u32;
        // Far more than the socket holds: frames wait from early on, and the reader (nobody
        // reads yet) has said nothing.
        for i in 0..300 {
            lanes.write(peer, &frame(i)).unwrap();
        }
        assert!(lanes.waiting().is_some(), "frames wait");
        lane::say(&theirs, lane::Takes::Ring);
        for i in 300..n {
            lanes.write(peer, &frame(i)).unwrap();
        }
        // Read: chunks from the socket until the ring comes, then the ring (and the socket when
        // the ring marks a frame there; these frames never need it).
        let (mut got, mut through_socket) = (Vec::new(), 0);
        let (mut buf, mut chunk) = (vec![0u8; lane::CHUNK + 1], Vec::new());
        let mut ring: Option<ring::RingReader> = None;
        let mut out = bytes::BytesMut::new();
        let first = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < n as usize {
            assert!(Instant::now() < deadline, "{} of {n} frames came", got.len());
            assert!(lanes.flush().is_empty());
            if let Some(r) = &mut ring {
                loop {
                    let (record, tell) = r.next(&mut out).unwrap();
                    if tell {
                        lane::say_space(&theirs);
                    }
                    match record {
                        Some(ring::Record::Frame) => got.push(first(&out.split())),
                        None => break,
                        Some(other) => panic!("unexpected ring record {:?}", std::mem::discriminant(&other)),
                    }
                }
                continue;
            }
            while let lane::Received::Message(len, passed) = lane::receive(&theirs, &mut buf, false) {
                match buf[0] {
                    lane::RING => {
                        ring = Some(ring::RingReader::map(&passed[0], &passed[1]).unwrap());
                        break;
                    }
                    flag => {
                        chunk.extend_from_slice(&buf[1..len]);
                        if flag == lane::LAST {
                            got.push(first(&std::mem::take(&mut chunk)));
                            through_socket += 1;
                        }
                    }
                }
            }
        }
        assert!(ring.is_some(), "no ring came");
        assert!(through_socket < n - 1000, "the ring came only after {through_socket} frames");
        assert_eq!(got, (0..n).collect::<Vec<u32>>(), "every frame once, in order");
    }

    /// A lane's reading end, for tests: frames as (how they came, length, first byte).
    struct TestReader {
        fd: OwnedFd,
        pool: Option<Arc<RecvPool>>,
        /// Every frame read, still held (a pooled one keeps its run).
        held: Vec<Bytes>,
    }

    impl TestReader {
        /// A lane to peer 7 that never stalls, and its reading end.
        fn lane() -> (OutLanes, PeerId, TestReader) {
            let (lanes, peer, theirs) = one_lane();
            (lanes, peer, TestReader { fd: theirs, pool: None, held: Vec::new() })
        }

        /// Reads every frame, flushing `lanes` until nothing waits in them.
        fn read_all(&mut self, lanes: &mut OutLanes) -> Vec<(char, usize, u8)> {
            let mut got = Vec::new();
            loop {
                while let Some(f) = self.next(lanes) {
                    got.push(f);
                }
                if lanes.waiting().is_none() {
                    return got;
                }
                assert!(lanes.flush().is_empty());
            }
        }

        /// Reads the next whole frame, flushing `lanes` while it waits for the rest of one:
        /// `'c'` for chunks, `'s'` sealed, `'p'` pooled.
        fn next(&mut self, lanes: &mut OutLanes) -> Option<(char, usize, u8)> {
            let mut buf = vec![0u8; lane::CHUNK + 1];
            let mut frame = Vec::new();
            loop {
                let (n, passed) = match lane::receive(&self.fd, &mut buf, false) {
                    lane::Received::Message(n, passed) => (n, passed),
                    lane::Received::WouldBlock if !frame.is_empty() => {
                        assert!(lanes.flush().is_empty());
                        continue;
                    }
                    _ => return None,
                };
                let word = |i: usize| u64::from_le_bytes(buf[1 + 8 * i..9 + 8 * i].try_into().unwrap());
                let (how, bytes) = match buf[0] {
                    lane::SEALED => ('s', sealed::map(&passed[0], word(0) as usize).unwrap()),
                    lane::POOL => {
                        self.pool = Some(RecvPool::map(&passed[0], &passed[1], word(0)).unwrap());
                        continue;
                    }
                    lane::POOLED => ('p', self.pool.as_ref().unwrap().frame(word(0), word(1)).unwrap()),
                    flag => {
                        frame.extend_from_slice(&buf[1..n]);
                        if flag != lane::LAST {
                            continue;
                        }
                        ('c', Bytes::from(std::mem::take(&mut frame)))
                    }
                };
                let seen = (how, bytes.len(), bytes[0]);
                self.held.push(bytes);
                return Some(seen);
            }
        }
    }

    /// Large frames go through the lane's pool once the reader says it takes them; when the
    /// pool is full (the reader holds them), sealed, while the reader keeps up; when it does not,
    /// in chunks; all in order with small frames. Released runs are used again.
    #[test]
    fn large_frames_go_pooled_then_sealed_then_in_chunks() {
        let (mut lanes, peer, mut reader) = TestReader::lane();
        // A sixteenth of the pool, less a little: 16 of them fill it.
        let size = pool::POOL_SIZE / 16 - 64;
        let big = |i: u8| WireFrame::from(Bytes::from(vec![i; size + i as usize]));
        let seen = |how: char, i: u8| (how, size + i as usize, i);
        let small = || WireFrame::from(Bytes::from_static(b"small"));
        // Before the reader says it takes them, a large frame goes in chunks.
        lanes.write(peer, &big(0)).unwrap();
        assert_eq!(reader.next(&mut lanes), Some(seen('c', 0)));
        lane::say(&reader.fd, lane::Takes::Pooled);
        // 16 fill the pool (the reader holds them all); the next go sealed while it reads.
        let mut got = Vec::new();
        for i in 1..=20 {
            lanes.write(peer, &big(i)).unwrap();
            lanes.write(peer, &small()).unwrap();
            while let Some(f) = reader.next(&mut lanes) {
                got.push(f);
            }
        }
        let want: Vec<_> = (1..=20).flat_map(|i| [seen(if i <= 16 { 'p' } else { 's' }, i), ('c', 5, b's')]).collect();
        assert_eq!(got, want, "16 pooled, then sealed, all in order");
        // A reader that reads nothing gets sealed frames up to a budget (64 MiB, counting each
        // unread message as a frame), then chunks, which the socket's buffer holds back.
        let mid = |i: u8| WireFrame::from(Bytes::from(vec![i; (4 << 20) + i as usize]));
        for i in 21..=40 {
            lanes.write(peer, &mid(i)).unwrap();
        }
        let got = reader.read_all(&mut lanes);
        assert_eq!(got.iter().map(|f| f.2).collect::<Vec<u8>>(), (21..=40).collect::<Vec<u8>>(), "in order");
        let sealed = got.iter().take_while(|f| f.0 == 's').count();
        assert!((1..=16).contains(&sealed), "{sealed} sealed 4 MiB frames before the first chunked one");
        assert_eq!(got[sealed].0, 'c');
        // Once the reader lets go of what it holds, the pool is used again.
        reader.held.clear();
        lanes.write(peer, &big(9)).unwrap();
        assert_eq!(reader.next(&mut lanes), Some(seen('p', 9)));
    }

    /// Sealed frames a reader has not read stay within the budget (64 MiB, plus one frame)
    /// even when they shrink: each unread one counts as large as the largest.
    #[test]
    fn sealed_frames_unread_stay_within_the_budget_however_their_sizes_go() {
        let (mut lanes, peer, mut reader) = TestReader::lane();
        lane::say(&reader.fd, lane::Takes::Sealed); // no pool: large frames go sealed
        // 16 MiB, then halving sizes, twice as many of each: 96 MiB in all, none read meanwhile.
        let mut sizes = Vec::new();
        for k in 0..6 {
            sizes.extend(std::iter::repeat_n((16 << 20) >> k, 1 << k));
        }
        for (i, &size) in sizes.iter().enumerate() {
            lanes.write(peer, &WireFrame::from(Bytes::from(vec![i as u8; size]))).unwrap();
        }
        let got = reader.read_all(&mut lanes);
        assert_eq!(got.len(), sizes.len());
        let sealed: usize = got.iter().take_while(|f| f.0 == 's').map(|f| f.1).sum();
        assert!(sealed >= 16 << 20, "the first frame goes sealed into an empty lane");
        assert!(sealed <= (64 << 20) + (16 << 20), "{} MiB sealed unread", sealed >> 20);
    }
}
