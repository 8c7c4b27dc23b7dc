//! How a runtime's idle worker waits for work by reading a lane itself.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Context;
use std::time::Instant;

use proto::PeerId;

use super::Shared;

/// A runtime's way to wait for work on the lanes its hub's latest requests for a worker came
/// from, given to it once through [`Runtime::idle_lanes`](crate::hub::Runtime::idle_lanes).
///
/// A request for a blocking handler otherwise wakes the lane's reader thread, which wakes a
/// worker: on one CPU that is a context switch more per call than a handler run on the reader
/// itself. A worker with nothing to do reads a lane in the meantime instead (as a blocking
/// caller reads its reply, see [`Handle::call_wait`](super::Handle::call_wait)): the request
/// wakes that worker, which queues it for itself, gives the lane back and runs it. Inline
/// handlers it reads run on it, as on the lane's thread. With several clients, several idle
/// workers each read the lane of another (up to eight: the peers served latest).
#[derive(Clone, Debug)]
pub struct IdleLanes {
    shared: Weak<Shared>,
}

impl IdleLanes {
    pub(super) fn new(shared: Weak<Shared>) -> Self {
        IdleLanes { shared }
    }

    /// Reads the lane of one of the peers whose requests were last handed to a worker (or a
    /// task), the first that can be read this way and that nobody reads now (nor waits to: a
    /// caller comes first), until `work` says yes, `until` passes, a caller wants the lane, or
    /// that peer drops out of the latest served (requests come from others). `work` is polled
    /// with a context whose waker wakes this thread: wake it when work comes another way.
    /// `None` if no lane was taken (wait some other way); else whether `work` said yes (or
    /// the peer dropped out).
    ///
    /// `answers` (what the worker's last job left, see [`AnswersHeld`]) are sent once a lane
    /// is taken, or at once if none is.
    pub fn read_until(
        &self,
        mut answers: HeldAnswers,
        work: &mut dyn FnMut(&mut Context<'_>) -> bool,
        until: Instant,
    ) -> Option<bool> {
        let served = self.shared.upgrade()?.served_peers.get();
        for peer in served.into_iter().flatten() {
            let Some(lane) = self.shared.upgrade()?.caller_lane(peer) else { continue };
            let shared = &self.shared;
            // Ends too when the peer drops out of the latest served (looked at whenever this
            // wakes).
            let mut work =
                |cx: &mut Context<'_>| work(cx) || shared.upgrade().is_none_or(|s| !s.served_peers.holds(peer));
            // Sent without blocking: this thread now reads the lane, and must not wait in a
            // send (what cannot go at once goes to the writer).
            if let Some(read) = lane.read_for(&mut || answers.send(false), &mut work, until, true) {
                return Some(read);
            }
        }
        None
    }
}

/// How many of the peers whose requests went to workers idle workers read the lanes of: as
/// many idle workers as this read at once, each another peer's lane (a hub serving more
/// clients than this reads the lanes of the latest).
const SERVED_PEERS: usize = 8;

/// The peers whose requests workers served latest (the lanes idle workers read), oldest
/// replaced first.
#[derive(Debug, Default)]
pub(super) struct ServedPeers {
    slots: [AtomicU64; SERVED_PEERS],
    /// The slot the next new peer takes.
    next: AtomicUsize,
}

/// No peer (a peer id is random: one that is 0 only loses this shortcut).
const NONE: u64 = 0;

impl ServedPeers {
    /// A request from `peer` went to a worker. Written only when `peer` is new: clients whose
    /// calls keep coming do not bounce the cache line.
    pub(super) fn set(&self, peer: PeerId) {
        if peer.0 == NONE || self.holds(peer) {
            return;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % SERVED_PEERS;
        self.slots[slot].store(peer.0, Ordering::Relaxed);
    }

    fn holds(&self, peer: PeerId) -> bool {
        self.slots.iter().any(|s| s.load(Ordering::Relaxed) == peer.0)
    }

    /// The peers, newest first.
    fn get(&self) -> [Option<PeerId>; SERVED_PEERS] {
        let newest = self.next.load(Ordering::Relaxed);
        std::array::from_fn(|i| {
            let slot = newest.wrapping_add(SERVED_PEERS * 2 - 1 - i) % SERVED_PEERS;
            Some(self.slots[slot].load(Ordering::Relaxed)).filter(|p| *p != NONE).map(PeerId)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn served(peers: &ServedPeers) -> Vec<u64> {
        peers.get().into_iter().flatten().map(|p| p.0).collect()
    }

    #[test]
    fn served_peers_are_listed_newest_first_once_each() {
        let peers = ServedPeers::default();
        assert!(served(&peers).is_empty());
        for p in [1, 2, 1, 3, 2, 2] {
            peers.set(PeerId(p));
        }
        assert_eq!(served(&peers), [3, 2, 1]);
        assert!(peers.holds(PeerId(2)));
        assert!(!peers.holds(PeerId(4)));
        // The id that means "no peer" is never held.
        peers.set(PeerId(NONE));
        assert_eq!(served(&peers), [3, 2, 1]);
    }

    #[test]
    fn a_new_peer_past_the_slots_replaces_the_oldest() {
        let peers = ServedPeers::default();
        let count = SERVED_PEERS as u64;
        for p in 1..=count + 2 {
            peers.set(PeerId(p));
        }
        let expected: Vec<u64> = (3..=count + 2).rev().collect();
        assert_eq!(served(&peers), expected);
        assert!(!peers.holds(PeerId(1)) && !peers.holds(PeerId(2)));
    }
}
