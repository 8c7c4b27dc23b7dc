//! A lane's shared pool: large frames written once into memory both sides keep mapped.
//!
//! A fresh memfd per large frame (see `sealed`) costs the kernel a page allocation per 4 KiB
//! written and a page freed per 4 KiB unmapped: most of the time of a megabyte. So each lane gets
//! one pool, a 64 MiB memfd the writer maps read-write and the reader maps read-only, once
//! (pages cost memory only once written). A large frame is copied into a free run of the pool
//! and only its place goes through the lane; the reader hands the frame on as `Bytes` that
//! point into its mapping. When the last of them drops, the reader marks the run free on the
//! pool's board, a small second memfd both map read-write (one byte per unit of the pool), and
//! the writer takes the marks in before it next looks for room. In the steady state, a large
//! frame costs one copy and one small message, and no page is allocated, faulted or freed.
//!
//! Runs are handed out first fit, so steady traffic keeps to the start of the pool. What a
//! burst wrote beyond its first [`KEEP`] bytes is given back to the kernel once the pool has
//! been quiet for a second ([`SendPool::trim`], a hole punched in the memfd): a lane holds at
//! most 4 MiB of pages while idle (plus the runs its reader still holds), however large its
//! last burst.
//!
//! Who may change what:
//! - the writer writes a run only while it is free: after the reader marked it released, and
//!   before the frame that hands it over again; the reader holds no `Bytes` into it then;
//! - the reader's mapping of the data is read-only, and the data is sealed against shrinking,
//!   growing and further seals (so no page of the mapping can vanish, which would raise
//!   `SIGBUS`, a hole punched in it reads as zeros, and the reader cannot seal it against the
//!   holes); the board is sealed against shrinking and growing;
//! - a reader could map the data writable through the fd it got (the pool cannot be sealed
//!   against that and still have holes punched in it), but what it could change is only ever
//!   read by itself: the writer never reads the pool, and the pool is this lane's alone;
//! - a reader that marks a run it still holds only spoils its own frames.
//!
//! A reader that keeps frames (an application holding payloads) keeps their runs: when the pool
//! has no room, frames go sealed or in chunks instead, so nothing waits for a reader to let go.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use proto::frame::WireFrame;

use super::sealed::{MapError, check_offered};
use super::shm::{self, Mapping};

/// The pool is handed out in runs of units of this size.
pub(super) const UNIT: usize = 64 * 1024;
/// Units in a pool.
pub(super) const UNITS: usize = 1024;
/// A pool's size: 64 MiB.
pub(super) const POOL_SIZE: usize = UNIT * UNITS;
/// Frames from this size on go through the pool (smaller ones cost less in chunks).
pub(super) const POOLED_MIN: usize = 16 * 1024;
/// Frames up to this size go through the pool (larger ones would crowd it out).
pub(super) const POOLED_MAX: usize = POOL_SIZE / 4;
/// The largest pool a reader maps (address space, not memory: only written pages cost).
/// (Only its first [`UNITS`] units carry frames: the board's bytes beyond them are the fan-out
/// pool's.)
const POOL_SIZE_MAX: u64 = 1 << 30;
/// A board's size: one byte per unit (of this pool, then of the hub's fan-out pool: see
/// `fan_pool`), a page at least.
pub(super) const BOARD_SIZE: usize = 4096;
const _: () = assert!(UNITS <= BOARD_SIZE);
/// A board's byte for a run the reader has let go of.
const RELEASED: u8 = 1;
/// The start of the pool whose pages stay when it is trimmed: steady traffic keeps to it.
pub(super) const KEEP: usize = 4 << 20;

/// The board's byte for `unit`.
fn mark(board: &Mapping, unit: usize) -> &AtomicU8 {
    assert!(unit < board.len(), "a unit within the board");
    // SAFETY: `unit` is within the mapping (checked), and the board is only ever accessed
    // atomically, by both processes.
    unsafe { &*(board.base().add(unit) as *const AtomicU8) }
}

/// The writer's side: whether the reader marked the run at board byte `at` released; if so, the
/// mark is cleared (for the run's next use).
pub(super) fn take_release(board: &Mapping, at: usize) -> bool {
    if mark(board, at).load(Ordering::Acquire) != RELEASED {
        return false;
    }
    mark(board, at).store(0, Ordering::Relaxed);
    true
}

/// The reader's side: marks the run at board byte `at` released.
pub(super) fn release(board: &Mapping, at: usize) {
    mark(board, at).store(RELEASED, Ordering::Release);
}

/// Which units of a pool are in use, and which were written (since they were last given back):
/// the book a writer keeps of a lane's pool and of the hub's fan-out pool (see `fan_pool`).
#[derive(Clone, Default)]
pub(super) struct Units {
    used: [u64; UNITS / 64],
    touched: [u64; UNITS / 64],
}

fn bit(words: &[u64; UNITS / 64], u: usize) -> bool {
    words[u / 64] & (1 << (u % 64)) != 0
}

fn set(words: &mut [u64; UNITS / 64], u: usize, on: bool) {
    if on {
        words[u / 64] |= 1 << (u % 64);
    } else {
        words[u / 64] &= !(1 << (u % 64));
    }
}

impl Units {
    /// Takes the first free run of `units` units from unit `first` on (first fit: steady traffic
    /// keeps to the start): its first unit, and whether any of it was never written.
    pub(super) fn take(&mut self, first: usize, units: usize) -> Option<(usize, bool)> {
        let mut run = 0;
        let end = (first..UNITS).find(|&u| {
            run = if bit(&self.used, u) { 0 } else { run + 1 };
            run == units
        })?;
        let start = end + 1 - units;
        let fresh = (start..=end).any(|u| !bit(&self.touched, u));
        for u in start..=end {
            set(&mut self.used, u, true);
            set(&mut self.touched, u, true);
        }
        Some((start, fresh))
    }

    /// Frees the run of `units` units at `start`.
    pub(super) fn free(&mut self, start: usize, units: usize) {
        for u in start..start + units {
            set(&mut self.used, u, false);
        }
    }

    /// Units in use.
    pub(super) fn used(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Units written.
    pub(super) fn touched(&self) -> usize {
        self.touched.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether unit `u` is written and free (its pages can be given back).
    fn idle_page(&self, u: usize) -> bool {
        bit(&self.touched, u) && !bit(&self.used, u)
    }
}

/// Copies `frame` into the run at byte `at` of `data`, faulting its pages in first if the run
/// is `fresh` (never written, or given back).
///
/// # Safety
/// The run, `frame.len()` bytes from `at`, lies within `data`, and nobody reads or writes it
/// meanwhile (it is free: no reader holds it).
pub(super) unsafe fn write_run(data: &Mapping, at: usize, frame: &WireFrame, fresh: bool) {
    if fresh {
        // Pages never written (or given back): fault in the ones the frame will fill with one
        // call rather than one trap per page during the copy. Only a speed-up: if it fails (a
        // kernel before 5.14, or no memory), the copy faults them in, or fails, as before.
        let len = frame.len().next_multiple_of(4096);
        // SAFETY: advice on a range within the mapping (the run is whole units, at least `len`
        // long); it allocates the pages the copy below writes, and changes no data.
        unsafe { libc::madvise(data.base().add(at).cast(), len, libc::MADV_POPULATE_WRITE) };
    }
    let mut to = at;
    for piece in frame.pieces().get() {
        // SAFETY: within the run (the pieces add up to the frame's length), which nobody else
        // touches (the caller's promise); `piece` is a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), data.base().add(to), piece.len()) };
        to += piece.len();
    }
}

/// The writer's side of a pool.
pub(super) struct SendPool {
    data_fd: OwnedFd,
    board_fd: OwnedFd,
    data: Mapping,
    /// Shared with the hub's fan-out pool, which takes the marks of runs a closed lane's
    /// reader still held.
    board: Arc<Mapping>,
    /// Units the reader may hold, and units written since the pool was last trimmed.
    units: Units,
    /// The length in units of the run starting at each unit (0: no run starts there).
    runs: Box<[u16; UNITS]>,
}

impl std::fmt::Debug for SendPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendPool").field("units_used", &self.units.used()).finish_non_exhaustive()
    }
}

impl SendPool {
    /// Makes a pool: its data, mapped read-write here, and its board.
    pub(super) fn new() -> io::Result<SendPool> {
        // No more seals on the data: the reader, who gets the fd, could otherwise seal it against
        // the holes `trim` punches.
        let data_fd = shm::sized_memfd(c"hsipc-pool", POOL_SIZE, true)?;
        let board_fd = shm::sized_memfd(c"hsipc-pool-board", BOARD_SIZE, false)?;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let (data, board) = (Mapping::new(&data_fd, POOL_SIZE, rw, 0)?, Mapping::new(&board_fd, BOARD_SIZE, rw, 0)?);
        let board = Arc::new(board);
        Ok(SendPool { data_fd, board_fd, data, board, units: Units::default(), runs: Box::new([0; UNITS]) })
    }

    /// The pool's memfds (data, board), to hand to the reader.
    pub(super) fn memfds(&self) -> [&OwnedFd; 2] {
        [&self.data_fd, &self.board_fd]
    }

    /// The board the reader marks what it let go of on (this pool's runs, then the fan-out
    /// pool's from `fan_pool::BOARD_BASE` on).
    pub(super) fn board(&self) -> &Arc<Mapping> {
        &self.board
    }

    /// Copies `frame` into a free run: its offset, or `None` if no run is free that large.
    pub(super) fn put(&mut self, frame: &WireFrame) -> Option<u64> {
        if frame.len() > POOLED_MAX {
            return None;
        }
        self.take_releases();
        let units = frame.len().div_ceil(UNIT).max(1);
        let (start, fresh) = self.units.take(0, units)?;
        self.runs[start] = units as u16;
        // SAFETY: the run lies within the mapping (start + units <= UNITS, and the frame fits
        // its units), and it was free: the reader holds nothing in it.
        unsafe { write_run(&self.data, start * UNIT, frame, fresh) };
        Some((start * UNIT) as u64)
    }

    /// Frees the runs the reader marked released on the board.
    fn take_releases(&mut self) {
        for start in 0..UNITS {
            if self.runs[start] == 0 || !take_release(&self.board, start) {
                continue;
            }
            let units = std::mem::take(&mut self.runs[start]) as usize;
            self.units.free(start, units);
        }
    }

    /// Gives the pages of free units beyond [`KEEP`] that were written since the last trim
    /// back to the kernel (a hole punched in the memfd; they read as zeros, and cost a page
    /// fault each when written again). Returns whether units beyond it are still held (to trim
    /// once they are released).
    pub(super) fn trim(&mut self) -> bool {
        self.take_releases();
        let mut u = KEEP / UNIT;
        while u < UNITS {
            if !self.units.idle_page(u) {
                u += 1;
                continue;
            }
            let start = u;
            while u < UNITS && self.units.idle_page(u) {
                u += 1;
            }
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            let (at, len) = ((start * UNIT) as libc::off_t, ((u - start) * UNIT) as libc::off_t);
            // SAFETY: punches a hole in a memfd we own, over units nobody holds.
            if unsafe { libc::fallocate(self.data_fd.as_raw_fd(), mode, at, len) } != 0 {
                tracing::debug!(error = %io::Error::last_os_error(), "cannot give a lane pool's pages back");
                return false;
            }
            for v in start..u {
                set(&mut self.units.touched, v, false);
            }
        }
        (KEEP / UNIT..UNITS).any(|u| bit(&self.units.touched, u))
    }

    /// Whether no run is in use (after taking in the releases).
    #[cfg(test)]
    pub(super) fn is_empty(&mut self) -> bool {
        self.take_releases();
        self.units.used() == 0
    }
}

/// The reader's side of a pool: the data mapped read-only, the board read-write.
pub(super) struct RecvPool {
    data: Mapping,
    board: Mapping,
}

impl RecvPool {
    /// Maps a pool the writer offered: `size` bytes of data and a board, both memfds sealed
    /// against shrinking, at least that large.
    pub(super) fn map(data: &OwnedFd, board: &OwnedFd, size: u64) -> Result<Arc<RecvPool>, MapError> {
        let actual = check_offered(data, libc::F_SEAL_SHRINK, size)?;
        if size > POOL_SIZE_MAX {
            return Err(MapError::TooSmall { size: actual, len: size as usize });
        }
        check_offered(board, libc::F_SEAL_SHRINK, BOARD_SIZE as u64)?;
        let data = Mapping::new(data, size as usize, libc::PROT_READ, 0)?;
        let board = Mapping::new(board, BOARD_SIZE, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        Ok(Arc::new(RecvPool { data, board }))
    }

    /// The frame at `offset`, `len` bytes, as `Bytes` that mark its run released when the last
    /// reference drops; `None` if it does not start at one of the pool's [`UNITS`] units (the
    /// board's bytes beyond them are the fan-out pool's: see `fan_pool`).
    pub(super) fn frame(self: &Arc<Self>, offset: u64, len: u64) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        let unit = offset / UNIT as u64;
        if end > self.data.len() as u64 || len == 0 || offset % UNIT as u64 != 0 || unit >= UNITS as u64 {
            return None;
        }
        Some(PoolFrame::bytes(self.clone(), self.clone(), offset as usize / UNIT, offset as usize, len as usize))
    }
}

impl Mapped for RecvPool {
    fn data(&self) -> &Mapping {
        &self.data
    }
}

/// A reader's read-only mapping of a pool's data: a lane's pool, or the hub's fan-out pool.
pub(super) trait Mapped: Send + Sync + 'static {
    /// The mapping.
    fn data(&self) -> &Mapping;
}

/// One frame in a reader's mapping of a pool, read where it lies; marks its run released on its
/// lane's board when dropped.
pub(super) struct PoolFrame<P: Mapped> {
    pool: Arc<P>,
    lane: Arc<RecvPool>,
    /// Its run's byte on the lane's board.
    at: usize,
    offset: usize,
    len: usize,
}

impl<P: Mapped> PoolFrame<P> {
    /// The `len` bytes at `offset` of `pool` (checked to lie within it), as `Bytes` that mark
    /// byte `at` of `lane`'s board (checked to lie within it) when the last reference drops.
    pub(super) fn bytes(pool: Arc<P>, lane: Arc<RecvPool>, at: usize, offset: usize, len: usize) -> Bytes {
        Bytes::from_owner(PoolFrame { pool, lane, at, offset, len })
    }
}

impl<P: Mapped> AsRef<[u8]> for PoolFrame<P> {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: within the mapping (checked by the caller of `bytes`), which lives while
        // `pool` does. An honest writer does not write this run until every reader released it,
        // after this frame is gone; a hostile one (of the same user: see `pool`) could, so
        // nothing here parses these bytes in place: the frame's header and name are copied out
        // before they are checked (`Ingress::deliver_shared`), and only the payload is read
        // where it lies.
        unsafe { std::slice::from_raw_parts(self.pool.data().base().add(self.offset), self.len) }
    }
}

impl<P: Mapped> Drop for PoolFrame<P> {
    fn drop(&mut self) {
        release(&self.lane.board, self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize, byte: u8) -> WireFrame {
        WireFrame::from(Bytes::from(vec![byte; n]))
    }

    #[test]
    fn runs_are_handed_out_and_freed_and_a_full_pool_says_so() {
        let mut pool = SendPool::new().unwrap();
        let recv = RecvPool::map(&pool.data_fd, &pool.board_fd, POOL_SIZE as u64).unwrap();
        let mb = frame(1 << 20, 1);
        let held: Vec<Bytes> =
            (0..64).map(|_| pool.put(&mb).unwrap()).map(|at| recv.frame(at, 1 << 20).unwrap()).collect();
        assert_eq!(held[1].as_ptr() as usize - held[0].as_ptr() as usize, 1 << 20, "1 MiB takes 16 units");
        assert_eq!(pool.put(&frame(1, 2)), None, "64 MiB are in use");
        let third = held[3].as_ptr();
        let mut held = held;
        drop(held.remove(3));
        let at = pool.put(&frame(100, 2)).unwrap();
        assert_eq!(recv.frame(at, 100).unwrap().as_ptr(), third, "the released run is used again");
        assert_eq!(pool.put(&frame(POOLED_MAX + 1, 0)), None, "too large for the pool");
        assert!(!pool.is_empty());
        drop(held);
        assert!(pool.is_empty(), "every frame the reader had is released");
    }

    #[test]
    fn the_reader_sees_what_was_put_and_its_release_reaches_the_writer() {
        let mut pool = SendPool::new().unwrap();
        let recv = RecvPool::map(&pool.data_fd, &pool.board_fd, POOL_SIZE as u64).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let at = pool.put(&WireFrame::from(Bytes::from(data.clone()))).unwrap();
        let got = recv.frame(at, data.len() as u64).unwrap();
        assert!(got[..] == data[..]);
        assert!(recv.frame(POOL_SIZE as u64 - UNIT as u64, UNIT as u64 + 1).is_none(), "beyond the pool");
        assert!(recv.frame(at + 1, 10).is_none(), "not the start of a unit");
        let tail = got.slice(1000..);
        drop(got);
        assert!(!pool.is_empty(), "a slice still holds the frame");
        drop(tail);
        assert!(pool.is_empty());
    }

    /// The pages a pool's data holds (4 KiB blocks the kernel has allocated).
    fn resident(pool: &SendPool) -> u64 {
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid for writes; the fd is open.
        assert_eq!(unsafe { libc::fstat(pool.data_fd.as_raw_fd(), &mut st) }, 0);
        st.st_blocks as u64 * 512
    }

    /// After a burst, trimming gives back the pages beyond the first 4 MiB that nobody holds,
    /// and keeps what a reader still holds; a trimmed run is used again as before.
    #[test]
    fn trimming_gives_back_what_a_burst_wrote_beyond_the_first_megabytes() {
        let mut pool = SendPool::new().unwrap();
        let recv = RecvPool::map(&pool.data_fd, &pool.board_fd, POOL_SIZE as u64).unwrap();
        let mb = frame(1 << 20, 3);
        let mut held: Vec<Bytes> = (0..32).map(|_| recv.frame(pool.put(&mb).unwrap(), 1 << 20).unwrap()).collect();
        assert!(resident(&pool) >= 32 << 20);
        let last = held.pop().unwrap(); // still held: its pages stay
        drop(held);
        pool.trim();
        let left = resident(&pool);
        assert!(left <= (KEEP + (1 << 20) + (1 << 20)) as u64, "{left} bytes left after trimming");
        assert!(last.iter().all(|b| *b == 3), "a held frame is untouched");
        drop(last);
        pool.trim();
        assert!(resident(&pool) <= (KEEP + (1 << 20)) as u64);
        // The pool works on: the first fit is at the start again, and a run beyond is too.
        let again: Vec<Bytes> = (0..8).map(|_| recv.frame(pool.put(&mb).unwrap(), 1 << 20).unwrap()).collect();
        assert!(again.iter().all(|f| f.iter().all(|b| *b == 3)));
    }
}
