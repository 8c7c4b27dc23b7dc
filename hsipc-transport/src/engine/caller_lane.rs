//! A transport's lane that a blocking caller may read itself while it waits for its reply.

use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::Instant;

use proto::PeerId;

/// A lane from one peer that a thread waiting for a reply from that peer may read itself: the
/// reply then wakes that thread directly, where the lane's own reader thread would first wake
/// and then wake it (two context switches per round trip instead of four).
pub(crate) trait CallerLane: Send + Sync {
    /// If nobody reads the lane now and the lane can be waited on: takes it for this thread,
    /// runs `start` (a caller sends its request there, so no reply can come before the lane
    /// is taken; a caller that waits for an idle worker to give the lane up runs it before it
    /// waits, and catches a reply that comes meanwhile through `done`), then reads it (handing
    /// every frame to the engine as its reader would) until `done` says yes, `until` passes,
    /// or the lane's own reader needs it back; then gives it back.
    ///
    /// An `idle` reader (a worker waiting for work, see `IdleLanes`) gives way to callers: it
    /// does not take the lane while a caller waits for it, and gives it up when one comes (the
    /// caller waits for that, at most 20 ms and not past `until`). A caller does not take a
    /// lane from another caller or the lane's thread.
    ///
    /// `None` if the lane was not taken (`start` has not run); else whether `done` said yes.
    /// `done` is polled with a context whose waker wakes this thread should what it waits for
    /// come some other way.
    fn read_for(
        self: Arc<Self>,
        start: &mut dyn FnMut(),
        done: &mut dyn FnMut(&mut Context<'_>) -> bool,
        until: Instant,
        idle: bool,
    ) -> Option<bool>;
}

/// The lanes callers may read, by peer: at most one per peer (the newest), held weakly (a lane
/// lives while its reader thread runs, and while a caller reading it or a waker it gave out
/// holds it).
#[derive(Default)]
pub(super) struct CallerLanes(std::sync::Mutex<proto::fast_map::FastMap<PeerId, Weak<dyn CallerLane>>>);

impl CallerLanes {
    pub(super) fn offer(&self, peer: PeerId, lane: Weak<dyn CallerLane>) {
        let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the lanes alive (a hub keeps a bounded number): ended ones go here.
        lanes.retain(|_, l| l.strong_count() > 0);
        lanes.insert(peer, lane);
    }

    pub(super) fn get(&self, peer: PeerId) -> Option<Arc<dyn CallerLane>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&peer)?.upgrade()
    }
}

thread_local! {
    /// This thread reads a lane for a call of its own (see [`CallerLane::read_for`]).
    static READING_FOR_A_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as reading a lane for a call of its own, until dropped: requests it hands
/// to the engine meanwhile are not served inline on it (see [`reading_for_a_call`]).
pub(crate) struct ReadingForACall(bool);

impl ReadingForACall {
    pub(crate) fn start() -> Self {
        ReadingForACall(READING_FOR_A_CALL.with(|r| r.replace(true)))
    }
}

impl Drop for ReadingForACall {
    fn drop(&mut self) {
        READING_FOR_A_CALL.with(|r| r.set(self.0));
    }
}

/// Whether this thread reads a lane for a call of its own: an inline handler must not run here
/// (this is the application's thread, in the middle of its call, and may hold a lock the
/// handler takes), so its request goes to a worker.
pub(crate) fn reading_for_a_call() -> bool {
    READING_FOR_A_CALL.with(|r| r.get())
}
