//! How a lane's writer sends each frame: small ones through the lane's ring (or in chunks),
//! large ones through the lane's pool, sealed in a memfd of their own, or in chunks, whichever
//! the reader and the moment allow.
//!
//! A frame of up to [`ring::RING_FRAME_MAX`] bytes goes into the lane's ring once there is one
//! (see `ring`); every other frame then has its mark in the ring, written first.
//!
//! A frame of [`pool::POOLED_MIN`] bytes or more, once the reader has said what it takes:
//! 0. one of a fan-out (a large event published to several peers), if the reader takes frames
//!    in the hub's fan-out pool: as the place of the fan-out's one copy in that pool (see
//!    `fan_pool`), made by the first lane that writes one (the lane's pool, whose board the
//!    run's release is marked on, and the fan-out pool are handed over first if they have not
//!    been);
//! 1. into the lane's pool (see `pool`), if the reader takes pooled frames, the frame fits
//!    ([`pool::POOLED_MAX`]) and a run is free: one copy, no page allocated;
//! 2. else, from [`sealed::SEALED_MIN`] bytes, sealed in a memfd of its own (see `sealed`),
//!    made when the frame's turn to be written comes, and only while what the reader has left
//!    unread in the lane, counted as if each unread message held a frame as large as the
//!    largest sealed since the lane was last read dry (or this one), stays within
//!    [`SEALED_BUDGET`] (64 MiB), or nothing is unread: a reader that stops reading pins at most
//!    that much in memfds, plus one frame;
//! 3. else in chunks, like a small frame.
//!
//! Every other way goes through the lane's socket, in order with everything else on it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use proto::frame::{Stamp, WireFrame};

use super::fan_pool::{self, FanPools, FanRun};
use super::lane::{self, Takes};
use super::pool::{self, SendPool};
use super::ring::{self, RingWriter};
use super::sealed;

/// What sealed frames a reader has not read yet may hold in all, at most (about: see
/// [`unread_sealed_bound`]).
const SEALED_BUDGET: usize = 64 << 20;
/// The least the kernel counts for one unread message in a lane (768 bytes on Linux 6.18, for a
/// small message with or without an fd: a socket buffer's overhead, which is over 512 bytes on
/// any 64-bit kernel): unread bytes divided by it bound the unread messages.
const LEAST_MESSAGE: usize = 512;

/// How a frame goes into a lane: its way, and whether its mark goes into the lane's ring first
/// (the first of its parts).
pub(super) struct How {
    way: Way,
    marked: bool,
    /// The ring's memfds, handed to the reader before this frame (the first frame after the
    /// ring was made while frames waited in the lane; see [`LargeFrames::prepare_behind`]).
    ring_offer: Option<[OwnedFd; 2]>,
}

/// The way a frame goes.
enum Way {
    /// Into the ring.
    Ring,
    Chunks,
    /// Sealed if the lane allows when its turn comes, else in chunks.
    SealLater,
    Sealed(OwnedFd),
    /// In the pool at `offset`; `offer`: the pool itself goes first (the lane's first pooled
    /// frame).
    Pooled {
        offset: u64,
        offer: bool,
    },
    /// As `run` of the hub's fan-out pool, with this frame's stamp; `offer_pool`: the lane's pool
    /// goes first (whose board the run's release is marked on), then, with `offer`, the fan-out
    /// pool (their first frames on this lane).
    Fanned {
        run: Arc<FanRun>,
        stamp: Stamp,
        offer_pool: bool,
        offer: bool,
    },
}

impl How {
    /// How many parts `frame` takes this way (as far as it is decided): its mark, then its lane
    /// messages (or its ring record).
    pub(super) fn parts(&self, frame: &WireFrame) -> usize {
        usize::from(self.ring_offer.is_some())
            + usize::from(self.marked)
            + match &self.way {
                Way::Ring | Way::SealLater | Way::Sealed(_) => 1,
                Way::Chunks => lane::chunk_count(frame),
                Way::Pooled { offer, .. } => 1 + usize::from(*offer),
                Way::Fanned { offer_pool, offer, .. } => 1 + usize::from(*offer_pool) + usize::from(*offer),
            }
    }
}

/// One lane's writer's state for how frames go: what the reader takes, its ring and its pool.
#[derive(Debug, Default)]
pub(super) struct LargeFrames {
    takes: Takes,
    pool: Option<SendPool>,
    /// A pool cannot be made or handed over: do not try again.
    no_pool: bool,
    /// When a frame last went into the pool, if the pool has pages to give back since.
    untrimmed_since: Option<std::time::Instant>,
    /// The largest sealed frame sent since the reader last had nothing unread: every unread
    /// message is counted as one that large.
    largest_sealed: usize,
    /// The ring, once handed over.
    ring: Option<RingWriter>,
    /// A ring cannot be made or handed over: do not try again.
    no_ring: bool,
    /// The last write stopped at a full ring (wait for the reader to say it made room, not for
    /// room in the socket).
    ring_full: bool,
    /// Frames prepared while the lane had no ring (saturating): the first [`LOOKS`] look for
    /// what the reader said, then one in [`LATER_LOOKS`], and the ring comes after
    /// [`RING_AFTER`].
    frames: u32,
    /// A ring made but not handed over yet (the socket had no room), with the memfds to hand
    /// over: handed over next time.
    unsent_ring: Option<(RingWriter, [OwnedFd; 2])>,
    /// A ring made while frames waited: its memfds, for the next frame to hand over ahead of
    /// itself (see [`prepare_behind`](Self::prepare_behind)).
    ring_offer: Option<[OwnedFd; 2]>,
    /// The hub's fan-out pool.
    fan: Option<Arc<FanPools>>,
    /// The fan-out pool last handed to the reader (see `fan_pool::Generation::id`).
    fan_offered: Option<u64>,
    /// Runs of the fan-out pool this lane sent, until the reader has let go of them (all of one
    /// pool).
    fan_held: Vec<Arc<FanRun>>,
}

impl Drop for LargeFrames {
    /// Runs the reader may still hold stay in use until it lets go of them (see `fan_pool`).
    fn drop(&mut self) {
        self.take_fan_releases();
        if let (Some(fan), Some(pool)) = (&self.fan, &self.pool) {
            fan.orphan(pool.board().clone(), std::mem::take(&mut self.fan_held));
        }
    }
}

/// Frames that look for what a lane's reader takes, until it has said it (a reader of an earlier
/// version never does; each look is a system call).
const LOOKS: u32 = 64;
/// Past the first [`LOOKS`], one frame in this many looks again, whether or not frames wait in
/// the lane: a reader that answered late (its thread first ran after a burst of frames, on a busy
/// CPU) still gets its ring (behind the frames that wait: see
/// [`prepare_behind`](LargeFrames::prepare_behind)). Such a lane used to go without one for its
/// whole life.
const LATER_LOOKS: u32 = 256;
/// Frames a lane carries through the socket before it gets a ring: a lane that carries a call or
/// two does not pay for one.
const RING_AFTER: u32 = 16;

impl LargeFrames {
    /// A lane's: large events published to several peers go through `fan`.
    pub(super) fn new(fan: Arc<FanPools>) -> LargeFrames {
        let mut large = LargeFrames::default();
        large.fan = Some(fan);
        large
    }

    /// Before a frame is written with nothing waiting ahead of it: hands the reader the ring if
    /// it takes one (see [`prepare`](Self::prepare) for how the writer learns that). The ring's
    /// message goes through the socket in order: from it on, the ring holds the lane's order.
    pub(super) fn prepare_lane(&mut self, lane_fd: &OwnedFd) -> io::Result<()> {
        if self.ring.is_some() {
            return Ok(());
        }
        if !self.takes.ring() || self.no_ring || self.frames < RING_AFTER {
            return Ok(());
        }
        let (ring, [data, control]) = match self.unsent_ring.take().map_or_else(RingWriter::new, Ok) {
            Ok(unsent) => unsent,
            Err(e) => {
                tracing::debug!(error = %e, "cannot make a lane ring; small frames go through the socket");
                self.no_ring = true;
                return Ok(());
            }
        };
        match handed(lane::write_ring(lane_fd, [&data, &control], ring::RING_SIZE))? {
            // The reader has the memfds: they are closed here (the mappings stay).
            Handed::Went => self.ring = Some(ring),
            Handed::NoRoom => self.unsent_ring = Some((ring, [data, control])), // next time
            Handed::Refused => self.no_ring = true,
        }
        Ok(())
    }

    /// Before a frame is queued behind others: makes the ring if the reader takes one, for the
    /// next frame to hand over ahead of itself, in order (behind the frames that wait, which go
    /// through the socket without it). A lane busy from its start (a burst that keeps more
    /// frames waiting than its socket holds, on a busy CPU) would otherwise never have nothing
    /// waiting, and go without a ring for as long as the burst lasts.
    pub(super) fn prepare_behind(&mut self) {
        if self.ring.is_some() || !self.takes.ring() || self.no_ring || self.frames < RING_AFTER {
            return;
        }
        match self.unsent_ring.take().map_or_else(RingWriter::new, Ok) {
            Ok((ring, memfds)) => {
                self.ring = Some(ring);
                self.ring_offer = Some(memfds);
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot make a lane ring; small frames go through the socket");
                self.no_ring = true;
            }
        }
    }

    /// Decides how `frame` goes (and copies it into the pool, if that is the way).
    pub(super) fn prepare(&mut self, lane_fd: &OwnedFd, frame: &WireFrame) -> How {
        if self.ring.is_none() {
            self.frames = self.frames.saturating_add(1);
            if !self.heard() && (self.frames <= LOOKS || self.frames % LATER_LOOKS == 0) {
                // Learns what the reader takes. A reader that is gone shows in the next write.
                let _ = self.read_back(lane_fd);
            }
        }
        // Once there is a ring, a frame goes into it, or through the socket with its mark.
        let ring = self.ring.is_some();
        let ring_offer = self.ring_offer.take();
        if ring && frame.len() <= ring::RING_FRAME_MAX {
            return How { way: Way::Ring, marked: false, ring_offer };
        }
        let way = if frame.len() < pool::POOLED_MIN { Way::Chunks } else { self.large(lane_fd, frame) };
        How { way, marked: ring, ring_offer }
    }

    fn large(&mut self, lane_fd: &OwnedFd, frame: &WireFrame) -> Way {
        if self.ring.is_none() {
            // (With a ring, what the reader takes is settled, and what it says back is its word
            // that it made room, for `flush` to take in.) A reader that is gone shows in the
            // next write.
            let _ = self.read_back(lane_fd);
        }
        if self.takes.fan() {
            if let Some(way) = self.fanned(frame) {
                return way;
            }
        }
        if self.takes.pooled() {
            if let Some(way) = self.pooled(frame) {
                return way;
            }
        }
        if self.takes.sealed() && frame.len() >= sealed::SEALED_MIN { Way::SealLater } else { Way::Chunks }
    }

    /// Puts `frame` into the pool (made on first use), if it fits.
    fn pooled(&mut self, frame: &WireFrame) -> Option<Way> {
        let offer = self.pool.is_none();
        if offer && !self.make_pool() {
            return None;
        }
        let offset = self.pool.as_mut()?.put(frame)?;
        self.untrimmed_since = Some(std::time::Instant::now());
        Some(Way::Pooled { offset, offer })
    }

    /// Makes the lane's pool (to hand over with the next frame that goes through it): whether
    /// there is one now.
    fn make_pool(&mut self) -> bool {
        if self.no_pool {
            return false;
        }
        match SendPool::new() {
            Ok(pool) => self.pool = Some(pool),
            Err(e) => {
                tracing::debug!(error = %e, "cannot make a lane pool; large frames go sealed");
                self.no_pool = true;
            }
        }
        self.pool.is_some()
    }

    /// Sends `frame` as the one copy of its fan-out in the hub's fan-out pool (made now if it
    /// is the first of its fan-out to be written), if it is one, the pool has room, and this
    /// lane holds no runs of an older fan-out pool. The lane's pool (whose board the run's
    /// release is marked on) goes first if it has not yet.
    fn fanned(&mut self, frame: &WireFrame) -> Option<Way> {
        let fan_out = frame.fan_out()?;
        let fan = self.fan.as_ref()?;
        let run = fan_out.get_or_make(|| fan.put(frame))?;
        if !run.stands_for(frame) {
            return None;
        }
        let (run, stamp) = (Arc::clone(run), frame.stamp()?);
        self.take_fan_releases();
        let id = run.generation().id();
        if self.fan_held.iter().any(|held| held.generation().id() != id) {
            return None;
        }
        // Last, so that a pool made here goes with this frame (no other way would offer it).
        let offer_pool = self.pool.is_none();
        if offer_pool && !self.make_pool() {
            return None;
        }
        let offer = self.fan_offered != Some(id);
        self.fan_offered = Some(id);
        self.fan_held.push(Arc::clone(&run));
        Some(Way::Fanned { run, stamp, offer_pool, offer })
    }

    /// Forgets that the fan-out pool `id`, given up, was handed to the reader: whether it was.
    pub(super) fn forget_fan_pool(&mut self, id: u64) -> bool {
        let offered = self.fan_offered == Some(id);
        if offered {
            self.fan_offered = None;
        }
        offered
    }

    /// Lets go of the fan-out runs the reader marked released.
    fn take_fan_releases(&mut self) {
        let Some(pool) = &self.pool else { return };
        let board = pool.board();
        self.fan_held.retain(|run| !pool::take_release(board, fan_pool::BOARD_BASE + run.unit()));
    }

    /// The kernel refused to pass the lane's pool (too many fds in flight): large frames on this
    /// lane go sealed or in chunks from now on.
    /// Hands the lane's pool over, ahead of a frame in it; a pool the kernel refused to pass is
    /// let go of ([`pool_refused`](Self::pool_refused)). A lane without its pool refuses, as if
    /// the kernel had (its callers check first).
    fn offer_pool(&mut self, lane_fd: &OwnedFd) -> io::Result<Handed> {
        let Some(pool) = self.pool.as_ref() else { return Ok(Handed::Refused) };
        let offered = handed(lane::write_pool(lane_fd, pool.memfds(), pool::POOL_SIZE))?;
        if let Handed::Refused = offered {
            self.pool_refused();
        }
        Ok(offered)
    }

    fn pool_refused(&mut self) {
        tracing::debug!("too many fds in flight; large frames on this lane go sealed or in chunks");
        (self.pool, self.no_pool) = (None, true);
    }

    /// A fanned frame that cannot go (its pool was not handed over): it goes in chunks instead,
    /// and its run is let go of (the reader never gets it).
    fn unfan(&mut self, lane_fd: &OwnedFd, frame: &WireFrame, how: &mut Way) -> io::Result<usize> {
        if let Way::Fanned { run, .. } = how {
            self.fan_held.retain(|held| !Arc::ptr_eq(held, run));
        }
        *how = Way::Chunks;
        lane::write_chunks(lane_fd, frame, 0)
    }

    /// Takes in what the reader has said (the most it said stands: see `lane::say`). `Err` if
    /// the reader's end is gone.
    pub(super) fn read_back(&mut self, lane_fd: &OwnedFd) -> io::Result<()> {
        if let Some(said) = lane::read_back(lane_fd)? {
            self.takes = self.takes.then(said);
        }
        Ok(())
    }

    /// Gives back the pool's pages beyond its first megabytes (see `pool`) once no frame has
    /// gone into it for `quiet`.
    /// Takes in, too, which runs of the hub's fan-out pool the reader let go of (so that a quiet
    /// fan-out pool can be given up).
    pub(super) fn trim_if_quiet(&mut self, now: std::time::Instant, quiet: std::time::Duration) {
        self.take_fan_releases();
        let (Some(pool), Some(since)) = (&mut self.pool, self.untrimmed_since) else { return };
        if now.saturating_duration_since(since) >= quiet && !pool.trim() {
            self.untrimmed_since = None;
        }
    }

    /// Whether the reader has said what it takes (or that it declines the lane).
    pub(super) fn heard(&self) -> bool {
        self.takes != Takes::Chunks
    }

    /// Whether the reader's hub declines the lane.
    pub(super) fn declined(&self) -> bool {
        self.takes == Takes::Declined
    }

    /// Whether the last write stopped at a full ring: the writer waits for the reader to say
    /// it made room (the lane's fd becomes readable), not for room in the socket.
    pub(super) fn ring_full(&self) -> bool {
        self.ring_full
    }

    /// Writes the closing message (through the ring, once there is one): `Ok(false)` if there is
    /// no room now.
    pub(super) fn write_close(&mut self, lane_fd: &OwnedFd) -> io::Result<bool> {
        match &mut self.ring {
            Some(ring) => put_and_wake(ring, lane_fd, RingWriter::put_close),
            None => lane::write_close(lane_fd),
        }
    }

    /// Writes `frame` the way `how` says, from part `from` on, as far as the lane takes it now
    /// (deciding what was left open, or falling back to chunks, in `how`); returns the parts
    /// written in all.
    pub(super) fn write(
        &mut self,
        lane_fd: &OwnedFd,
        frame: &WireFrame,
        how: &mut How,
        from: usize,
    ) -> io::Result<usize> {
        self.ring_full = false;
        if let Some([data, control]) = &how.ring_offer {
            // The ring's message first (part 0), in the lane's order: the reader reads the ring
            // from it on. The memfds close with `how`, once the frame is written.
            if from == 0 {
                match handed(lane::write_ring(lane_fd, [data, control], ring::RING_SIZE))? {
                    Handed::Went => {}
                    Handed::NoRoom => return Ok(0),
                    Handed::Refused => {
                        // The ring cannot be handed over: this frame and those behind it go
                        // through the socket, as before it was made (nothing of it is written).
                        (self.ring, self.no_ring, how.ring_offer) = (None, true, None);
                        return self.write(lane_fd, frame, how, 0);
                    }
                }
            }
            let mut rest =
                How { way: std::mem::replace(&mut how.way, Way::Chunks), marked: how.marked, ring_offer: None };
            let written = self.write(lane_fd, frame, &mut rest, from.saturating_sub(1));
            how.way = rest.way;
            return Ok(1 + written?);
        }
        if self.ring.is_none() && (how.marked || matches!(how.way, Way::Ring)) {
            // Prepared for a ring that could not be handed over (above); nothing of it written.
            debug_assert_eq!(from, 0);
            how.marked = false;
            if let Way::Ring = how.way {
                how.way = Way::Chunks;
            }
        }
        if let Way::Ring = how.way {
            let Some(ring) = &mut self.ring else { unreachable!("a frame goes into a ring only once there is one") };
            let went = put_and_wake(ring, lane_fd, |ring| ring.put_frame(frame.pieces().get()))?;
            self.ring_full = !went;
            return Ok(usize::from(went));
        }
        if !how.marked {
            return self.write_way(lane_fd, frame, &mut how.way, from);
        }
        if from == 0 {
            // The mark first: the message that follows wakes the reader if it sleeps.
            let Some(ring) = &mut self.ring else { unreachable!("a frame is marked only once there is a ring") };
            if !ring.put_socket_mark() {
                self.ring_full = true;
                return Ok(0);
            }
        }
        let written = self.write_way(lane_fd, frame, &mut how.way, from.saturating_sub(1));
        // A caller reading the ring is woken once the message is in the socket (it reads it
        // after the mark); a sleeping reader's thread is woken by the message itself.
        if let Some(ring) = &self.ring {
            ring.wake_caller();
        }
        Ok(1 + written?)
    }

    fn write_way(&mut self, lane_fd: &OwnedFd, frame: &WireFrame, how: &mut Way, from: usize) -> io::Result<usize> {
        let len = frame.len();
        if let Way::SealLater = how {
            let unread = unread_sealed_bound(lane_fd);
            if unread == 0 {
                self.largest_sealed = 0;
            }
            let each = len.max(self.largest_sealed);
            let fits = unread == 0 || unread.saturating_add(1).saturating_mul(each) <= SEALED_BUDGET;
            if fits {
                self.largest_sealed = each;
            }
            *how = match fits {
                true => match sealed::seal(frame) {
                    Ok(memfd) => Way::Sealed(memfd),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot seal a large frame; it goes in chunks");
                        Way::Chunks
                    }
                },
                false => Way::Chunks,
            };
        }
        match how {
            Way::Ring => unreachable!("written in `write`"),
            Way::Chunks | Way::SealLater => lane::write_chunks(lane_fd, frame, from),
            Way::Sealed(memfd) => match lane::write_sealed(lane_fd, memfd, len) {
                Ok(sent) => Ok(usize::from(sent)),
                Err(e) if too_many_fds(&e) => {
                    tracing::debug!("too many fds in flight; a sealed frame goes in chunks");
                    *how = Way::Chunks;
                    lane::write_chunks(lane_fd, frame, from)
                }
                Err(e) => Err(e),
            },
            &mut Way::Pooled { offset, offer } => {
                if self.pool.is_none() {
                    // The pool could not be handed over (below): nothing of this frame went.
                    *how = Way::Chunks;
                    return lane::write_chunks(lane_fd, frame, 0);
                }
                if offer && from == 0 {
                    match self.offer_pool(lane_fd)? {
                        Handed::Went => {}
                        Handed::NoRoom => return Ok(0),
                        Handed::Refused => {
                            *how = Way::Chunks;
                            return lane::write_chunks(lane_fd, frame, 0);
                        }
                    }
                }
                let done = usize::from(offer);
                Ok(done + usize::from(lane::write_pooled(lane_fd, offset, len)?))
            }
            Way::Fanned { run, stamp, offer_pool, offer } => {
                let (run, stamp, offer_pool, offer) = (Arc::clone(run), *stamp, *offer_pool, *offer);
                let fan_pool_handed = offer || self.fan_offered == Some(run.generation().id());
                if self.pool.is_none() || !fan_pool_handed {
                    // The lane's pool, or the fan-out pool, could not be handed over (an earlier
                    // frame's write): nothing of this frame went.
                    return self.unfan(lane_fd, frame, how);
                }
                // Its parts: the lane's pool, the fan-out pool (each if offered), the frame.
                if offer_pool && from == 0 {
                    match self.offer_pool(lane_fd)? {
                        Handed::Went => {}
                        Handed::NoRoom => return Ok(0),
                        Handed::Refused => return self.unfan(lane_fd, frame, how),
                    }
                }
                let offered = usize::from(offer_pool);
                if offer && from <= offered {
                    match handed(lane::write_fan_pool(lane_fd, run.generation().memfd(), fan_pool::SIZE))? {
                        Handed::Went => {}
                        Handed::NoRoom => return Ok(offered),
                        Handed::Refused => {
                            tracing::debug!("too many fds in flight; large events on this lane go through its pool");
                            (self.fan, self.fan_offered) = (None, None);
                            // (The lane's pool, if it went just now, is the reader's from now on.)
                            return self.unfan(lane_fd, frame, how);
                        }
                    }
                }
                let done = offered + usize::from(offer);
                Ok(done + usize::from(lane::write_fanned(lane_fd, run.offset(), run.len(), stamp)?))
            }
        }
    }
}

/// Puts a record into the ring (`put`: whether it went), then wakes the reader if it said it
/// sleeps, or a caller reading the ring. (A large frame's mark is put by `write` instead: a
/// caller is woken once the message is in the socket, the reader's thread by the message.)
fn put_and_wake(
    ring: &mut RingWriter,
    lane_fd: &OwnedFd,
    put: impl FnOnce(&mut RingWriter) -> bool,
) -> io::Result<bool> {
    if !put(ring) {
        return Ok(false);
    }
    if ring.wake_reader() {
        lane::write_wake(lane_fd)?;
    }
    Ok(true)
}

/// At most how many messages the reader has not read yet (the kernel's count of unread bytes,
/// divided by the least it counts for one message).
fn unread_sealed_bound(lane_fd: &OwnedFd) -> usize {
    let unread = lane::unread_bytes(lane_fd);
    if unread == usize::MAX {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| tracing::warn!("cannot tell what a lane's reader has not read (SIOCOUTQ): no sealed frames"));
    }
    unread / LEAST_MESSAGE
}

/// The user has too many fds in flight in Unix sockets (the kernel refuses to pass another).
fn too_many_fds(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETOOMANYREFS)
}

/// How a message that hands the reader memfds (a ring, a pool) went.
enum Handed {
    Went,
    /// No room in the lane now: again later.
    NoRoom,
    /// The kernel will not pass the fds (too many in flight): do without.
    Refused,
}

/// What one attempt to send a hand-over message (`Ok(false)`: no room) came to.
fn handed(sent: io::Result<bool>) -> io::Result<Handed> {
    match sent {
        Ok(true) => Ok(Handed::Went),
        Ok(false) => Ok(Handed::NoRoom),
        Err(e) if too_many_fds(&e) => Ok(Handed::Refused),
        Err(e) => Err(e),
    }
}
