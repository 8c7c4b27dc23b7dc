//! How a runtime's idle worker waits for work by reading a lane itself.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Context;
use std::time::Instant;

use proto::PeerId;

use super::Shared;

/// A runtime's way to wait for work on the lane its hub's latest request for a worker came
/// from, given to it once through [`Runtime::idle_lanes`](crate::hub::Runtime::idle_lanes).
///
/// A request for a blocking handler otherwise wakes the lane's reader thread, which wakes a
/// worker: on one CPU that is a context switch more per call than a handler run on the reader
/// itself. A worker with nothing to do reads the lane in the meantime instead (as a blocking
/// caller reads its reply, see [`Handle::call_wait`](super::Handle::call_wait)): the request
/// wakes that worker, which queues it for itself, gives the lane back and runs it. Inline
/// handlers it reads run on it, as on the lane's thread.
#[derive(Clone, Debug)]
pub struct IdleLanes {
    shared: Weak<Shared>,
}

impl IdleLanes {
    pub(super) fn new(shared: Weak<Shared>) -> Self {
        IdleLanes { shared }
    }

    /// Reads the lane of the peer whose request was last handed to a worker (or a task), if
    /// there is one that can be read this way and nobody reads it now (nor waits to: a caller
    /// comes first), until `work` says yes, `until` passes, a caller wants the lane, or requests
    /// start coming from another peer. `work` is polled with a context whose waker wakes this
    /// thread: wake it when work comes another way. `None` if no lane was taken (wait some
    /// other way); else whether `work` said yes (or the peer changed).
    ///
    /// `answers` (what the worker's last job left, see [`AnswersHeld`]) are sent once the lane
    /// is taken, or at once if it is not.
    pub fn read_until(
        &self,
        mut answers: HeldAnswers,
        work: &mut dyn FnMut(&mut Context<'_>) -> bool,
        until: Instant,
    ) -> Option<bool> {
        let (lane, peer) = {
            let shared = self.shared.upgrade()?;
            let peer = shared.served_peer.get()?;
            (shared.caller_lane(peer)?, peer)
        };
        let shared = &self.shared;
        // Ends too when workers start serving another peer (looked at whenever this wakes).
        let mut work =
            |cx: &mut Context<'_>| work(cx) || shared.upgrade().is_none_or(|s| s.served_peer.get() != Some(peer));
        // Sent without blocking: this thread now reads the lane, and must not wait in a send
        // (what cannot go at once goes to the writer).
        lane.read_for(&mut || answers.send(false), &mut work, until, true)
    }
}

/// The peer whose request a worker last served (the lane an idle worker reads).
#[derive(Debug, Default)]
pub(super) struct ServedPeer(AtomicU64);

/// No peer yet (a peer id is random: one that is 0 only loses this shortcut).
const NONE: u64 = 0;

impl ServedPeer {
    pub(super) fn set(&self, peer: PeerId) {
        // Written only when it changes: one client's calls do not bounce the cache line.
        if self.0.load(Ordering::Relaxed) != peer.0 {
            self.0.store(peer.0, Ordering::Relaxed);
        }
    }

    fn get(&self) -> Option<PeerId> {
        Some(self.0.load(Ordering::Relaxed)).filter(|p| *p != NONE).map(PeerId)
    }
}

thread_local! {
    /// A worker's held answers (see [`AnswersHeld`]): whether it holds them now, and the
    /// engines whose answers wait for it to send them. The vector is kept, so that holding
    /// allocates nothing once it has grown.
    static HELD: std::cell::RefCell<(bool, Vec<std::sync::Arc<Shared>>)> = const { std::cell::RefCell::new((false, Vec::new())) };
}

/// While it lives, the final answers (a unary call's response, a stream's end) that handlers
/// give on this thread are queued but not sent: a worker sends them once it has taken the lane
/// it reads while idle (see [`IdleLanes::read_until`]), so that the next request, which the
/// answer may prompt at once, finds it reading instead of waking the lane's thread. Only
/// final answers wait (nothing after them in the handler can wait for them), and only until
/// the job returns: [`end`](Self::end) hands them on; dropping it sends them.
#[derive(Debug)]
pub struct AnswersHeld(std::marker::PhantomData<*const ()>);

impl AnswersHeld {
    /// Holds this thread's final answers until [`end`](Self::end).
    pub fn start() -> Self {
        HELD.with(|h| h.borrow_mut().0 = true);
        AnswersHeld(std::marker::PhantomData)
    }

    /// Stops holding; what was held is to be sent on this thread (by
    /// [`IdleLanes::read_until`] once it has the lane, or when dropped).
    pub fn end(self) -> HeldAnswers {
        HELD.with(|h| h.borrow_mut().0 = false);
        std::mem::forget(self);
        HeldAnswers(std::marker::PhantomData)
    }
}

impl Drop for AnswersHeld {
    /// Stops holding and sends what was held, as [`HeldAnswers`] does when dropped.
    fn drop(&mut self) {
        HELD.with(|h| h.borrow_mut().0 = false);
        drop(HeldAnswers::default());
    }
}

/// Answers a worker's job left queued on this thread (see [`AnswersHeld`]); sent when
/// dropped. Not `Send`: they are this thread's.
#[derive(Debug, Default)]
pub struct HeldAnswers(std::marker::PhantomData<*const ()>);

impl HeldAnswers {
    /// Sends them now (waiting for room in the transport if `may_block`, else leaving what
    /// cannot go at once to the writer).
    fn send(&mut self, may_block: bool) {
        send_held(may_block);
    }
}

impl Drop for HeldAnswers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Not sent from here (a panic in the send would abort): the writer sends them.
            while let Some(shared) = HELD.with(|h| h.borrow_mut().1.pop()) {
                shared.wake_writer();
            }
            return;
        }
        self.send(true);
    }
}

/// Sends what this thread's jobs left held, keeping the vector.
fn send_held(may_block: bool) {
    loop {
        // Taken one at a time: sending runs engine code, which may look at `HELD` again.
        let Some(shared) = HELD.with(|h| h.borrow_mut().1.pop()) else { return };
        shared.send_inline(may_block);
    }
}

/// Whether `shared`'s frames just queued by a final answer wait for the worker (see
/// [`AnswersHeld`]); if so, it is noted for sending.
pub(super) fn hold_answer(shared: &Shared) -> bool {
    HELD.with(|h| {
        let (holding, engines) = &mut *h.borrow_mut();
        if !*holding {
            return false;
        }
        if !engines.iter().any(|e| std::ptr::eq(&**e, shared)) {
            match shared.this() {
                Some(e) => engines.push(e),
                None => return false,
            }
        }
        true
    })
}
