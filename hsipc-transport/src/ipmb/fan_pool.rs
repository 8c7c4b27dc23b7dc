//! A hub's fan-out pool: the one copy of a large event published to several peers, which each
//! of their lane readers maps read-only.
//!
//! A lane's own pool (see `pool`) holds the frames of that lane alone, so an event of a
//! megabyte published to three subscriber processes was copied three times. The frames of one
//! publish to several peers differ only in their flags and sequence number (a
//! [`FanOut`](proto::frame::FanOut) says which frames they are, [`Stamp`] what differs), so the
//! first lane to write one copies it into a run of this pool, shared by every lane of the hub,
//! and each lane sends only the run's place and its own stamp. The reader decodes the frame from
//! its mapping with that stamp (`Ingress::deliver_stamped`): one copy per event, whatever the
//! number of subscribers.
//!
//! Who may change what, and why it is sealed differently from a lane's pool:
//! - every reader maps the whole pool, so a subscriber process can read the large events the
//!   hub published to the others (on topics it never subscribed to) while their runs hold them,
//!   where a lane's pool showed it only its own. Lanes with pools are only made between
//!   processes of one user, whom nothing else stops from reading each other's memory but Yama's
//!   `ptrace_scope`; a hub that must not show one subscriber another's events turns pools off
//!   (`IpmbConfig::lane_pools = false`: its readers take sealed frames only);
//! - readers of many processes map this memory, so none may write it: the memfd is sealed
//!   against new writable mappings and writes (`F_SEAL_FUTURE_WRITE`) after the writer mapped
//!   it read-write, and against shrinking and growing (no page under a mapping can vanish:
//!   no `SIGBUS`). A reader checks those seals before it maps. (A lane's pool cannot carry that
//!   seal, which forbids punching holes, and needs none: only its one reader ever reads it.)
//! - the writer writes a run only while it is free: no lane that got it still holds it;
//! - so the pool cannot be trimmed as a lane's pool is: the pages a burst wrote stay until the
//!   pool is given up (below). It is as large as a lane's pool ([`SIZE`], 64 MiB of address
//!   space, pages only where written): four times what a subscriber's credit lets a publisher
//!   have queued for it (16 MiB by default), so that the pool is rarely full. A frame takes at
//!   most a quarter of it.
//!
//! A pool that has had nothing put into it for a second, holds more than [`KEEP`] bytes of pages,
//! and whose runs are all free, or held by nothing but the list of what closed lanes left, is
//! given up: its first unit (a header, never handed out) says so, and every reader that sees it
//! there at its next message (each lane it was handed to carries a wake-up message for it), with
//! nothing unread in its lane, lets go of its mapping (no frame of it is still to
//! come: no lane that lives holds a run of it, and what a closed lane sent is in its socket
//! already); the writer lets go of its own, and the pages go once the last frame read from it is
//! dropped. The next large fan-out makes a new pool, offered to each lane again. (A pool
//! replaced because it was full is not marked given up: live lanes may still send runs of it.
//! Its readers let go of it when the next pool is offered to them, or their lane ends.)
//!
//! A run is free once every lane that sent it has seen its reader let go of it: the reader marks
//! the run released on its lane's board (the lane pool's board, from [`BOARD_BASE`] on), and
//! the lane's writer drops its hold on the run when it takes the mark in. A lane that closes
//! while its reader still holds runs leaves them here, with its board, to be freed once the
//! reader marks them (an application holding an event) or never (a reader that died). Should
//! runs left that way hold a quarter of the pool when it has no room, the pool is replaced by
//! a new one (offered again to each lane with its next frame), and the old one is left to the
//! readers that still map it: the writer never writes it again, and its memory goes once they
//! let go. A lane holds runs of one pool at a time, so its board never marks two at once.
//!
//! When the pool has no room (readers that hold many events), frames go through their lanes'
//! own pools as before: nothing waits.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use proto::frame::WireFrame;

use super::pool::{self, Mapped, PoolFrame, RecvPool, UNIT, Units};
use super::sealed::{MapError, check_offered};
use super::shm::{self, Mapping};

/// Units in a fan-out pool (the first is its header): as many as a lane's pool has, whose book of
/// units ([`Units`]) it keeps.
pub(super) const UNITS: usize = pool::UNITS;
/// A fan-out pool's size: 64 MiB.
pub(super) const SIZE: usize = UNITS * UNIT;
/// The first unit handed out (the one before is the pool's header: its first byte says whether
/// the pool was given up).
const FIRST: usize = 1;
/// A quiet pool holding at most this many bytes of pages is kept (not given up).
pub(super) const KEEP: usize = 4 << 20;
/// The largest frame that goes through the fan-out pool.
pub(super) const MAX: usize = SIZE / 4;
/// Where the board byte of a fan-out pool's unit lies on a lane's board: after the lane
/// pool's own units.
pub(super) const BOARD_BASE: usize = pool::UNITS;
const _: () = assert!(BOARD_BASE + UNITS <= pool::BOARD_SIZE);
/// The seals a reader requires of a fan-out pool before it maps it.
pub(super) const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE;

/// One fan-out pool: its memfd, mapped read-write here, and which of its units are in use.
pub(super) struct Generation {
    /// Tells this pool from the ones before and after it (a lane offers each once).
    id: u64,
    fd: OwnedFd,
    data: Mapping,
    units: Mutex<Units>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Generation {
    fn new(id: u64) -> io::Result<Generation> {
        let fd = shm::sized_memfd(c"hsipc-fan-pool", SIZE, false)?;
        let data = Mapping::new(&fd, SIZE, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        // Only this mapping may write, from now on (and no seal may be added or taken away).
        shm::add_seals(&fd, libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL)?;
        Ok(Generation { id, fd, data, units: Mutex::default() })
    }

    fn units(&self) -> MutexGuard<'_, Units> {
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's memfd, to hand to a lane's reader.
    pub(super) fn memfd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Which pool this is.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Says in the header that the pool is given up (see the module docs).
    fn give_up(&self) {
        // SAFETY: the header's first byte, within our own mapping; it is only ever accessed
        // atomically (readers load it).
        let header = unsafe { &*(self.data.base() as *const std::sync::atomic::AtomicU8) };
        header.store(1, std::sync::atomic::Ordering::Release);
    }
}

/// A run of a fan-out pool that holds the one copy of a fan-out's frame. It is free again once
/// nothing holds it: the fan-out's frames (through their [`FanOut`](proto::frame::FanOut)), and
/// each lane that sent it, until its reader let go of it.
pub(super) struct FanRun {
    pool: Arc<Generation>,
    start: usize,
    units: usize,
    len: usize,
    /// The frame's first piece (its header and name), which each frame sent as this run must
    /// have, but for its stamp.
    head: Box<[u8]>,
}

impl std::fmt::Debug for FanRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanRun")
            .field("pool", &self.pool.id)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl FanRun {
    /// The pool it lies in.
    pub(super) fn generation(&self) -> &Arc<Generation> {
        &self.pool
    }

    /// Its first unit.
    pub(super) fn unit(&self) -> usize {
        self.start
    }

    /// Its offset in the pool.
    pub(super) fn offset(&self) -> u64 {
        (self.start * UNIT) as u64
    }

    /// The frame's length.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether `frame` may be sent as this run: it is the run's frame, but for its stamp.
    pub(super) fn stands_for(&self, frame: &WireFrame) -> bool {
        frame.len() == self.len && frame.same_head_but_stamp(&self.head)
    }
}

impl Drop for FanRun {
    fn drop(&mut self) {
        self.pool.units().free(self.start, self.units);
    }
}

/// Runs that lanes closed while their readers held them, with those lanes' boards.
struct Orphan {
    board: Arc<Mapping>,
    runs: Vec<Arc<FanRun>>,
}

/// The hub's fan-out pool (made on first use), and what closed lanes left in it.
#[derive(Default)]
pub(super) struct FanPools {
    state: Mutex<PoolsState>,
}

impl std::fmt::Debug for FanPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanPools").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct PoolsState {
    current: Option<Arc<Generation>>,
    /// When a frame last went into the current pool.
    last_put: Option<std::time::Instant>,
    /// A pool cannot be made here (no `F_SEAL_FUTURE_WRITE` before Linux 5.1, or no memory):
    /// do not try again.
    failed: bool,
    made: u64,
    orphans: Vec<Orphan>,
}

impl FanPools {
    fn state(&self) -> MutexGuard<'_, PoolsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `frame` into a free run: `None` if it is too large, or no run is free (its lanes
    /// then send it through their own pools).
    pub(super) fn put(&self, frame: &WireFrame) -> Option<Arc<FanRun>> {
        if frame.len() > MAX || frame.is_empty() {
            return None;
        }
        let units = frame.len().div_ceil(UNIT);
        let (pool, start, fresh) = {
            let mut state = self.state();
            state.take_orphan_releases();
            state.last_put = Some(std::time::Instant::now());
            let pool = state.current()?;
            let taken = pool.units().take(FIRST, units);
            match taken {
                Some((start, fresh)) => (pool, start, fresh),
                None => {
                    // Runs closed lanes left behind hold much of it: a new pool (see the module).
                    let left: usize = state.orphan_runs(&pool).map(|r| r.units).sum();
                    if left < UNITS / 4 {
                        return None;
                    }
                    tracing::debug!(left, "a fan-out pool is full of runs closed lanes left: a new one");
                    state.orphans.clear();
                    state.current = None;
                    let pool = state.current()?;
                    let (start, fresh) = pool.units().take(FIRST, units)?;
                    (pool, start, fresh)
                }
            }
        };
        // The run is this thread's alone until it is handed out: copied outside the lock.
        // SAFETY: the run lies within the mapping (start + units <= UNITS, and the frame fits its
        // units), and it is free: no reader holds it.
        unsafe { pool::write_run(&pool.data, start * UNIT, frame, fresh) };
        let head = frame.pieces().get()[0].into();
        Some(Arc::new(FanRun { pool, start, units, len: frame.len(), head }))
    }

    /// Takes the runs a closing lane's reader still holds, with the lane's board: each is freed
    /// once the reader marks it released.
    pub(super) fn orphan(&self, board: Arc<Mapping>, runs: Vec<Arc<FanRun>>) {
        if !runs.is_empty() {
            self.state().orphans.push(Orphan { board, runs });
        }
    }

    /// Gives the pool up (see the module docs) if nothing has gone into it for `quiet`, it holds
    /// more than [`KEEP`] bytes of pages, and no lane that lives holds a run of it (lanes take
    /// their readers' releases in before this, on the same round). Returns the pool given up
    /// (see [`Generation::id`]), whose readers are to be woken to let go of it.
    pub(super) fn trim_if_quiet(&self, now: std::time::Instant, quiet: std::time::Duration) -> Option<u64> {
        let mut state = self.state();
        let (Some(pool), Some(last)) = (&state.current, state.last_put) else { return None };
        if now.saturating_duration_since(last) < quiet || pool.units().touched() * UNIT <= KEEP {
            return None;
        }
        let pool = Arc::clone(pool);
        state.take_orphan_releases();
        // Runs held by nothing but the list of what closed lanes left (no fan-out's frames, no
        // lane: nothing can send them again). Any other run is a frame some reader holds or may
        // still read.
        let left: usize = state.orphan_runs(&pool).filter(|r| Arc::strong_count(r) == 1).map(|r| r.units).sum();
        if pool.units().used() > left {
            return None;
        }
        tracing::debug!(bytes = pool.units().touched() * UNIT, "giving a quiet fan-out pool up");
        pool.give_up();
        state.orphans.clear();
        state.current = None;
        state.last_put = None;
        Some(pool.id)
    }

    /// Units in use in the current pool, and runs left by closed lanes (for tests).
    #[cfg(test)]
    pub(super) fn census(&self) -> (usize, usize) {
        let state = self.state();
        let used = state.current.as_ref().map_or(0, |g| g.units().used());
        (used, state.orphans.iter().map(|o| o.runs.len()).sum())
    }
}

impl PoolsState {
    /// The runs of `pool` that closed lanes left.
    fn orphan_runs<'a>(&'a self, pool: &'a Arc<Generation>) -> impl Iterator<Item = &'a Arc<FanRun>> + 'a {
        self.orphans.iter().flat_map(|o| &o.runs).filter(move |r| Arc::ptr_eq(&r.pool, pool))
    }

    /// The current pool, made if there is none.
    fn current(&mut self) -> Option<Arc<Generation>> {
        if self.failed {
            return None;
        }
        if self.current.is_none() {
            self.made += 1;
            match Generation::new(self.made) {
                Ok(pool) => self.current = Some(Arc::new(pool)),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot make a fan-out pool; large events go through each lane's own pool");
                    self.failed = true;
                    return None;
                }
            }
        }
        self.current.clone()
    }

    /// Frees the runs left by closed lanes that their readers marked released.
    fn take_orphan_releases(&mut self) {
        for orphan in &mut self.orphans {
            orphan.runs.retain(|run| !pool::take_release(&orphan.board, BOARD_BASE + run.unit()));
        }
        self.orphans.retain(|o| !o.runs.is_empty());
    }
}

/// A reader's mapping of a writer's fan-out pool (read-only: nobody but its writer writes it).
pub(super) struct RecvFanPool {
    data: Mapping,
}

impl RecvFanPool {
    /// Maps a fan-out pool a writer offered: `size` bytes, at most [`SIZE`], in a memfd sealed
    /// against writes, shrinking and growing, at least that large.
    pub(super) fn map(fd: &OwnedFd, size: u64) -> Result<Arc<RecvFanPool>, MapError> {
        let actual = check_offered(fd, REQUIRED_SEALS, size)?;
        if size > SIZE as u64 || size < UNIT as u64 {
            return Err(MapError::TooSmall { size: actual, len: size as usize });
        }
        Ok(Arc::new(RecvFanPool { data: Mapping::new(fd, size as usize, libc::PROT_READ, 0)? }))
    }

    /// Whether its writer gave it up: no frame of it is still to come (see the module docs).
    pub(super) fn given_up(&self) -> bool {
        // SAFETY: the header's first byte, within the mapping; only ever accessed atomically.
        let header = unsafe { &*(self.data.base() as *const std::sync::atomic::AtomicU8) };
        header.load(std::sync::atomic::Ordering::Acquire) != 0
    }

    /// The frame at `offset`, `len` bytes, as `Bytes` that mark its run released on `lane`'s
    /// board when the last reference drops; `None` if it does not start at a unit within the
    /// pool.
    pub(super) fn frame(self: &Arc<Self>, lane: &Arc<RecvPool>, offset: u64, len: u64) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        let unit = offset / UNIT as u64;
        if end > self.data.len() as u64 || len == 0 || offset % UNIT as u64 != 0 || unit < FIRST as u64 {
            return None;
        }
        let at = BOARD_BASE + (offset / UNIT as u64) as usize;
        // (Only its writer can write the pool: it is sealed against any other.)
        Some(PoolFrame::bytes(self.clone(), lane.clone(), at, offset as usize, len as usize))
    }
}

impl Mapped for RecvFanPool {
    fn data(&self) -> &Mapping {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane's board, as the writer maps it.
    fn board() -> Arc<Mapping> {
        let fd = shm::sized_memfd(c"test-board", pool::BOARD_SIZE, false).unwrap();
        Arc::new(Mapping::new(&fd, pool::BOARD_SIZE, libc::PROT_READ | libc::PROT_WRITE, 0).unwrap())
    }

    #[test]
    fn a_run_is_free_once_nothing_holds_it_and_the_pool_is_sealed_against_writers() {
        let pools = FanPools::default();
        let frame = WireFrame::from(Bytes::from(vec![3u8; 200_000]));
        let run = pools.put(&frame).unwrap();
        assert_eq!((run.offset(), run.len()), (UNIT as u64, 200_000), "after the header");
        assert!(run.stands_for(&frame));
        let second = pools.put(&frame).unwrap();
        assert_eq!(second.unit(), 5, "200 000 bytes take four units");
        assert_eq!(pools.census(), (8, 0));
        let held = run.clone();
        drop(run);
        assert_eq!(pools.census(), (8, 0), "held elsewhere");
        drop(held);
        assert_eq!(pools.census(), (4, 0));
        assert!(pools.put(&WireFrame::from(Bytes::from(vec![0u8; MAX + 1]))).is_none(), "too large");
        // Nobody maps it writable any more, nor writes to it.
        let fd = second.generation().memfd();
        let writable = Mapping::new(fd, SIZE, libc::PROT_READ | libc::PROT_WRITE, 0);
        assert!(writable.is_err(), "a writable mapping of a sealed fan-out pool");
        assert!(Mapping::new(fd, SIZE, libc::PROT_READ, 0).is_ok());
    }

    /// A quiet pool whose runs are all free is given up once it holds more than a few
    /// megabytes of pages: its readers see it in the header; the next frame makes a new pool.
    /// A small pool, or one whose run a lane still holds, is kept.
    #[test]
    fn a_quiet_pool_is_given_up_once_its_runs_are_free() {
        use std::time::{Duration, Instant};
        let pools = FanPools::default();
        let quiet = Duration::from_secs(1);
        let later = || Instant::now() + Duration::from_secs(2);
        let mb = WireFrame::from(Bytes::from(vec![1u8; 1 << 20]));
        let small = pools.put(&mb).unwrap();
        let pool = small.generation().clone();
        let reader = RecvFanPool::map(pool.memfd(), SIZE as u64).unwrap();
        drop(small);
        pools.trim_if_quiet(later(), quiet);
        assert!(!reader.given_up(), "1 MiB of pages: kept");
        let runs: Vec<_> = (0..8).map(|_| pools.put(&mb).unwrap()).collect();
        let held = runs[3].clone();
        drop(runs);
        pools.trim_if_quiet(Instant::now(), quiet);
        pools.trim_if_quiet(later(), quiet);
        assert!(!reader.given_up(), "a run is still held");
        drop(held);
        pools.trim_if_quiet(Instant::now(), quiet);
        assert!(!reader.given_up(), "not quiet yet");
        pools.trim_if_quiet(later(), quiet);
        assert!(reader.given_up());
        let next = pools.put(&mb).unwrap();
        assert_ne!(next.generation().id(), pool.id(), "a new pool");
    }

    /// Runs of a replaced pool that a lane left when it closed later count for that pool only:
    /// the current one is not given up while a run of it is in use.
    #[test]
    fn runs_left_of_an_older_pool_do_not_count_for_the_current_one() {
        use std::time::{Duration, Instant};
        let pools = FanPools::default();
        let board = board();
        let mb = WireFrame::from(Bytes::from(vec![1u8; 1 << 20]));
        let mut runs: Vec<_> = (0..63).map(|_| pools.put(&mb).unwrap()).collect();
        let live_lane_runs: Vec<_> = runs.drain(..20).collect();
        pools.orphan(board.clone(), runs);
        let next = pools.put(&mb).unwrap(); // full, mostly of runs closed lanes left: replaced
        assert_ne!(next.generation().id(), live_lane_runs[0].generation().id());
        // A lane holding 20 runs of the old pool closes now.
        pools.orphan(board.clone(), live_lane_runs);
        drop((0..6).map(|_| pools.put(&mb).unwrap()).collect::<Vec<_>>()); // pages beyond KEEP
        let reader = RecvFanPool::map(next.generation().memfd(), SIZE as u64).unwrap();
        pools.trim_if_quiet(Instant::now() + Duration::from_secs(2), Duration::from_secs(1));
        assert!(!reader.given_up(), "given up while a run of it is held");
        drop(next);
        pools.trim_if_quiet(Instant::now() + Duration::from_secs(2), Duration::from_secs(1));
        assert!(reader.given_up());
    }

    #[test]
    fn runs_a_closed_lane_left_are_freed_when_marked_and_a_pool_full_of_them_is_replaced() {
        let pools = FanPools::default();
        let board = board();
        let mb = WireFrame::from(Bytes::from(vec![1u8; 1 << 20]));
        let runs: Vec<_> = (0..63).map(|_| pools.put(&mb).unwrap()).collect();
        let first_gen = runs[0].generation().id();
        pools.orphan(board.clone(), runs);
        assert_eq!(pools.census(), (1008, 63), "the pool is full, of runs a closed lane left");
        // The reader lets go of the first: it is freed at the next put, and used again.
        pool::release(&board, BOARD_BASE + FIRST);
        let again = pools.put(&mb).unwrap();
        assert_eq!((again.unit(), again.generation().id()), (FIRST, first_gen));
        assert_eq!(pools.census(), (1008, 62));
        // No room, and the runs left hold more than a quarter: a new pool.
        let next = pools.put(&mb).unwrap();
        assert_ne!(next.generation().id(), first_gen);
        assert_eq!(pools.census().1, 0, "the old pool's runs are left to it");
        drop(again);
    }
}
