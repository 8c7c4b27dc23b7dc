//! A lane read by its thread, by a blocking caller waiting for a reply from the lane's peer, or
//! by an idle worker waiting for requests from it.
//!
//! A reader thread per lane costs a round trip two context switches more than it needs: the
//! reply wakes the lane's thread, which reads it and wakes the caller. So on a hub that reads its
//! lanes on threads (the blocking hub), a caller whose reply will come through a lane with a ring
//! takes the lane's reader before its request goes out and reads the lane itself while it
//! waits, asleep on the ring's caller word (a futex the writer wakes, see `ring`): the reply
//! wakes the caller directly. It reads everything that comes meanwhile (other callers' replies,
//! events, requests), as the lane's thread would.
//!
//! The lane's thread holds the reader only while it reads, and waits for the socket without it
//! (having handed on events, credit or stream items, it gives up its CPU once with it before it
//! sleeps, see `LaneReader::ring_empty`).
//! Whoever holds the reader reads; the other never waits for it in a way that loses a wake-up:
//! - the caller takes the reader only if nobody holds it (or an idle worker, which gives it up,
//!   see below), and only with the ring's writer promising futex wake-ups (for every record,
//!   marks of large frames included); it gives it back when its reply is in, at its deadline,
//!   when a large frame's socket message is not in yet when its mark is read (the lane's thread
//!   waits for the socket), or after [`EMPTY_WAKES`] wake-ups in a row that brought nothing;
//! - the lane's thread, woken by the socket while a caller holds the reader (a large frame, the
//!   writer's end), says so and wakes the caller, which reads the socket too; it waits until the
//!   caller has (at most [`SOCKET_HANDOVER`], then it looks at the socket again);
//! - while a caller reads, requests from the lane's peer for inline handlers go to a thread the
//!   runtime keeps for them (`Runtime::run_aside`): an inline handler would otherwise run on the
//!   application's thread, in the middle of its call, and could wait for a lock that thread
//!   holds; a worker could be the caller itself;
//! - a caller that gives the reader back clears the caller word, reads a short turn of what
//!   came while it was set (a writer that saw the word set did not wake the lane's thread), then
//!   marks the reader asleep and looks at the ring once more (the reader's own handshake with
//!   writers): should more be there, it nudges the lane's thread (an eventfd it waits on
//!   besides the socket) to read it.
//!
//! An idle worker of the hub (see `IdleLanes`) reads a lane the same way while it waits for a
//! job, with two differences: requests for inline handlers run on it (it is no application
//! thread), and it gives way to callers. It does not take the reader while a caller waits for
//! it, and a caller that finds it holding the reader says so (`caller_wants`, then a wake of
//! the word) and waits on `idle_holds` until it has given the reader back (at most
//! [`CALLER_HANDOVER`]). Any reader gives the lane up after [`EMPTY_WAKES`] wake-ups in a row
//! that brought nothing: the word is in memory the writer can change.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use super::lane_reader::{LaneReader, LaneState};
use super::ring::{CALLER_ASLEEP, CALLER_AWAKE, CALLER_NONE, CallerWord};
use crate::engine::CallerLane;

/// Messages (or frames of a ring batch) a leaving caller reads before it leaves the rest to the
/// lane's thread.
const LEAVING_TURN: usize = 16;
/// Wake-ups in a row that bring a reader nothing before it gives the lane up: the caller word
/// lives in memory the writer shares, and a writer that keeps flipping it must not keep a
/// thread spinning (a real record always comes with its wake-up).
const EMPTY_WAKES: u32 = 1024;
/// The longest the lane's thread waits for a caller to read the socket before it looks at the
/// socket again (a caller busy elsewhere does not leave the socket unwatched for longer).
const SOCKET_HANDOVER: Duration = Duration::from_millis(100);
/// The longest a caller waits for an idle worker to give the reader up (one busy with a turn's
/// inline handlers, say) before it sends its request and waits for the reply as usual.
const CALLER_HANDOVER: Duration = Duration::from_millis(20);

/// A lane whose reader its thread and waiting callers share.
pub(super) struct SharedLane {
    reader: Mutex<LaneReader>,
    /// The ring's caller word, once the lane has a ring whose writer wakes callers.
    word: OnceLock<CallerWord>,
    /// 1 while the lane's thread, which found the socket readable while a caller held the
    /// reader, waits for the caller to read the socket (a futex word); 0 otherwise.
    wanted: AtomicU32,
    /// 1 while an idle worker holds the reader (a futex word: a caller waiting for it to give
    /// the reader up sleeps on it).
    idle_holds: AtomicU32,
    /// How many application callers wait for an idle worker to give the reader up (callers
    /// come first: an idle worker only fills the time nobody waits).
    caller_wants: AtomicU32,
    /// Wakes the lane's thread (besides its socket): a leaving caller left frames unread.
    nudge: OwnedFd,
    fd: Arc<OwnedFd>,
}

/// A new eventfd.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd with valid flags; the new fd is owned here.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

impl SharedLane {
    /// The reader, if nobody holds it (one poisoned by a panic in engine code is read on).
    fn try_take(&self) -> Option<MutexGuard<'_, LaneReader>> {
        match self.reader.try_lock() {
            Ok(reader) => Some(reader),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Learns the ring's caller word once the reader has a ring.
    fn learn_word(&self, reader: &LaneReader) {
        if self.word.get().is_none() {
            if let Some(word) = reader.caller_word() {
                let _ = self.word.set(word);
            }
        }
    }

    /// Waits until the lane's socket or the nudge is readable (no timeout: the socket ends when
    /// the writer goes or this hub closes); whether the socket is.
    fn wait_readable(&self) -> bool {
        let mut polls = [
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.nudge.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds; an error (EINTR) only makes the caller look again.
        unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if polls[1].revents != 0 {
            let mut count = [0u8; 8];
            // SAFETY: reads the eventfd's 8-byte counter into a buffer of 8 bytes.
            unsafe { libc::read(self.nudge.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        }
        polls[0].revents != 0
    }

    /// The lane's thread found the socket readable while a caller holds the reader: asks the
    /// caller to read it, and waits (at most [`SOCKET_HANDOVER`]) until it has. Whether the reader
    /// turned out to be free after all (then read it at once).
    fn ask_caller_to_read(&self) -> bool {
        self.wanted.store(1, Ordering::SeqCst);
        // Paired with the fence of a caller that gives the reader back: either it sees the
        // request, or this sees the reader free.
        fence(Ordering::SeqCst);
        if self.try_take().is_some() {
            self.wanted.store(0, Ordering::SeqCst);
            return true;
        }
        if let Some(word) = self.word.get() {
            word.wake();
        }
        super::futex::wait_while(&self.wanted, 1, Instant::now() + SOCKET_HANDOVER);
        false
    }

    /// The caller has read the socket (or gives the reader back): the lane's thread watches it
    /// again.
    fn socket_read(&self) {
        if self.wanted.swap(0, Ordering::SeqCst) == 1 {
            super::futex::wake_private(&self.wanted);
        }
    }

    fn nudge(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes to the eventfd from a buffer of 8 bytes.
        unsafe { libc::write(self.nudge.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl Wake for SharedLane {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Wakes the caller reading the lane, if it sleeps.
    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(word) = self.word.get() {
            word.wake();
        }
    }
}

/// Reads `reader`'s lane on this thread until it ends, sharing it with waiting callers (the
/// engine learns of it through the reader's ingress).
pub(super) fn run(reader: LaneReader) {
    let from = reader.from();
    let nudge = match eventfd() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(%from, error = %e, "no eventfd: callers will not read this lane");
            return reader.run_alone();
        }
    };
    let ingress = reader.ingress().clone();
    let fd = reader.fd();
    let lane = Arc::new(SharedLane {
        reader: Mutex::new(reader),
        word: OnceLock::new(),
        wanted: AtomicU32::new(0),
        idle_holds: AtomicU32::new(0),
        caller_wants: AtomicU32::new(0),
        nudge,
        fd,
    });
    let weak: std::sync::Weak<dyn CallerLane> = Arc::downgrade(&lane) as _;
    ingress.offer_caller_lane(from, weak);
    // The socket is looked at when `poll` says it has something (and at first): a read that
    // finds the ring empty need not ask it again.
    let mut socket_ready = true;
    loop {
        match lane.try_take() {
            Some(mut reader) => {
                reader.probe_socket(socket_ready);
                reader.batch(super::lane_reader::BATCH); // a caller's turn may have set it
                reader.yield_before_sleep(); // a caller's or idle worker's read may have cleared it
                let state = reader.read_some(super::lane_reader::TURN);
                lane.learn_word(&reader); // a ring may have come with this turn
                match state {
                    LaneState::Ended => return,
                    LaneState::More => continue,
                    LaneState::Drained => {}
                }
            }
            // A caller reads the lane (the ring wakes it); the socket is this thread's to watch,
            // and what it has, the caller reads when asked.
            None if socket_ready && lane.ask_caller_to_read() => continue,
            None => {}
        }
        socket_ready = lane.wait_readable();
    }
}

impl SharedLane {
    /// Takes the reader for a caller; if an idle worker holds it, runs `start` (the caller's
    /// request goes out at once: its reply, if it comes before the lane is had, still reaches
    /// the caller, and the worker may need what the caller holds until then), asks the worker
    /// to give the reader up and waits for that (at most [`CALLER_HANDOVER`], and not past
    /// `until`). `None` if it cannot be had.
    fn take_for_caller(
        &self,
        word: &CallerWord,
        until: Instant,
        start: &mut dyn FnMut(),
    ) -> Option<MutexGuard<'_, LaneReader>> {
        if let Some(reader) = self.try_take() {
            return Some(reader);
        }
        if self.idle_holds.load(Ordering::SeqCst) == 0 {
            return None; // another caller or the lane's thread reads it
        }
        let now = Instant::now();
        if now >= until {
            return None;
        }
        start();
        let until = until.min(now + CALLER_HANDOVER);
        self.caller_wants.fetch_add(1, Ordering::SeqCst);
        // Paired with the idle reader's look at `caller_wants` after it marks itself asleep.
        word.wake();
        super::futex::wait_while(&self.idle_holds, 1, until);
        let reader = self.try_take();
        self.caller_wants.fetch_sub(1, Ordering::SeqCst);
        reader
    }
}

impl CallerLane for SharedLane {
    fn read_for(
        self: Arc<Self>,
        start: &mut dyn FnMut(),
        done: &mut dyn FnMut(&mut Context<'_>) -> bool,
        until: Instant,
        idle: bool,
    ) -> Option<bool> {
        // Learned by the lane's thread once the lane has a ring whose writer wakes callers.
        let word = self.word.get()?.clone();
        let reader = if idle {
            if self.caller_wants.load(Ordering::SeqCst) > 0 {
                return None;
            }
            // Said before the reader is taken: a caller that finds it taken knows to ask. Only
            // one idle worker at a time says so (the others try other lanes): the mark is the
            // holder's to clear.
            if self.idle_holds.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                return None;
            }
            match self.try_take() {
                Some(reader) => reader,
                None => {
                    self.idle_released();
                    return None;
                }
            }
        } else {
            self.take_for_caller(&word, until, start)?
        };
        // From here the reader is given back through `Held`, whatever happens (a panic in the
        // engine or a handler included): the word cleared, the lane's thread told.
        let mut held = Held { lane: &self, word: &word, reader: Some(reader), idle, leaving_turn: true };
        let reader = held.reader.as_mut()?;
        if reader.ended() {
            return None;
        }
        word.set(CALLER_AWAKE);
        // The socket is the lane's thread's to watch (it wakes for it and asks for the reader).
        reader.probe_socket(false);
        start();
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // Wake-ups in a row that handed nothing on, and what had been handed on when this last
        // went to sleep (`None` while it has not slept since).
        let (mut empty_wakes, mut asleep_at) = (0, None);
        let mut gave_way = false;
        // An idle worker looks for its job after every frame: one it queued itself would
        // otherwise wait for the rest of a turn.
        let turn = if idle { 1 } else { super::lane_reader::TURN };
        reader.batch(if idle { 1 } else { super::lane_reader::BATCH });
        reader.lent();
        let answered = loop {
            // The lane's thread saw the socket readable: this reader reads it, then says so.
            let probe = self.wanted.load(Ordering::SeqCst) == 1;
            reader.probe_socket(probe);
            let state = reader.read_some(turn);
            reader.probe_socket(false);
            if probe && state != LaneState::More {
                self.socket_read(); // the turn got as far as the socket (a message of it, at least)
            }
            if done(&mut cx) {
                break true;
            }
            // A caller wants the lane.
            if self.gives_way(idle) {
                gave_way = true;
                break false;
            }
            match state {
                LaneState::Ended => break false,
                LaneState::More => continue,
                LaneState::Drained => {}
            }
            // A large frame's message is not in yet: the lane's thread waits for it.
            if reader.waits_for_socket() {
                break false;
            }
            if let Some(handed) = asleep_at.take() {
                empty_wakes = if reader.handed() == handed { empty_wakes + 1 } else { 0 };
            }
            if empty_wakes > EMPTY_WAKES {
                tracing::debug!(from = %reader.from(), "woken for nothing again and again; leaving the lane to its thread");
                break false;
            }
            word.set(CALLER_ASLEEP);
            // Looked at after the word is set: what comes later wakes this thread.
            if self.gives_way(idle) {
                word.set(CALLER_AWAKE);
                gave_way = true;
                break false;
            }
            if reader.ring_has_more() || self.wanted.load(Ordering::SeqCst) == 1 || done(&mut cx) {
                word.set(CALLER_AWAKE);
                continue;
            }
            let now = Instant::now();
            if now >= until {
                break false;
            }
            asleep_at = Some(reader.handed());
            word.sleep(until - now);
            word.set(CALLER_AWAKE);
        };
        // The caller that wants the lane reads what is there: no leaving turn.
        held.leaving_turn = !gave_way;
        drop(held);
        Some(answered || done(&mut cx))
    }
}

impl SharedLane {
    /// Whether an idle reader is to give the reader up now: a caller wants it.
    fn gives_way(&self, idle: bool) -> bool {
        idle && self.caller_wants.load(Ordering::SeqCst) > 0
    }

    /// An idle reader no longer holds the reader: a caller waiting for that is woken.
    fn idle_released(&self) {
        self.idle_holds.store(0, Ordering::SeqCst);
        // Paired with the caller's raise of `caller_wants` before it looks at `idle_holds`.
        if self.caller_wants.load(Ordering::SeqCst) > 0 {
            super::futex::wake_private(&self.idle_holds);
        }
    }
}

/// The reader as a caller holds it: given back on drop (the caller word cleared, a short turn
/// read of what came meanwhile, the reader marked asleep for writers to wake its thread, the
/// lane's thread told it may read the socket again, and nudged should the ring hold more).
struct Held<'a> {
    lane: &'a SharedLane,
    word: &'a CallerWord,
    reader: Option<MutexGuard<'a, LaneReader>>,
    /// Held by an idle worker (a caller may wait for it to be given up).
    idle: bool,
    /// Whether to read a short turn before giving it back (not when a caller takes it over).
    leaving_turn: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.word.set(CALLER_NONE);
        let more = self.reader.as_mut().is_some_and(|r| {
            // A writer that still saw the word set woke nobody else: what it put meanwhile is
            // read here, one short turn (not while unwinding; the rest is the lane's thread's).
            if self.leaving_turn && !std::thread::panicking() {
                r.read_some(LEAVING_TURN);
            }
            // The reader's "asleep" handshake, now that writers look at it again: a record put
            // after this is announced to the lane's thread; one put before it is found here.
            !r.ended() && !r.ring_sleep()
        });
        drop(self.reader.take());
        if self.idle {
            self.lane.idle_released();
        }
        // Paired with the fence in `ask_caller_to_read`.
        fence(Ordering::SeqCst);
        self.lane.socket_read();
        if more {
            self.lane.nudge();
        }
    }
}
