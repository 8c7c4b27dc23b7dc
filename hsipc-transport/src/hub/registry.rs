//! The handler registry and the dispatch policy: which handler runs a call, whether it may
//! run at all, and on what.

use proto::fast_map::FastMap as HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use proto::{CallMode, PeerId};

use super::handler::Handler;
use super::runtime::{BlockingJob, Runtime};
use crate::engine::{Dispatcher, Handle, IncomingCall, Reject, reading_for_a_call};
use crate::error::{Error, Result};

/// Handlers by method name, the runtime they run on, and the bound on calls in progress.
pub(crate) struct Registry {
    handlers: RwLock<HashMap<String, (Handler, CallMode)>>,
    runtime: Arc<dyn Runtime>,
    pending: Arc<Pending>,
    pub(crate) stall: Duration,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

impl Registry {
    /// The runtime handlers run on.
    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub(crate) fn new(runtime: Arc<dyn Runtime>, max_pending: usize, stall: Duration) -> Self {
        Registry {
            handlers: RwLock::new(HashMap::default()),
            runtime,
            pending: Arc::new(Pending::new(max_pending)),
            stall,
        }
    }

    /// Adds (or replaces) the handler of `method`; returns its service.
    pub(crate) fn insert<'m>(&self, method: &'m str, h: Handler, mode: CallMode) -> Result<&'m str> {
        let service = service_of(method)?;
        self.handlers.write().unwrap_or_else(|e| e.into_inner()).insert(method.to_string(), (h, mode));
        Ok(service)
    }

    /// Removes the handler of `method`; returns its service if that was its last method (the
    /// service is then to be withdrawn from the bus).
    pub(crate) fn remove<'m>(&self, method: &'m str) -> Result<Option<&'m str>> {
        let service = service_of(method)?;
        let mut map = self.handlers.write().unwrap_or_else(|e| e.into_inner());
        if map.remove(method).is_none() {
            return Ok(None);
        }
        let left = map.keys().any(|m| m.rsplit_once('.').is_some_and(|(s, _)| s == service));
        Ok((!left).then_some(service))
    }

    /// Forgets every handler (at close: a handler that captured a clone of its own hub would
    /// otherwise keep the hub alive through the registry).
    pub(crate) fn clear(&self) {
        let handlers = std::mem::take(&mut *self.handlers.write().unwrap_or_else(|e| e.into_inner()));
        drop(handlers);
    }

    fn get(&self, method: &str) -> Option<(Handler, CallMode)> {
        self.handlers.read().unwrap_or_else(|e| e.into_inner()).get(method).cloned()
    }
}

/// The service of a `service.method` name, or why the name is not one.
fn service_of(method: &str) -> Result<&str> {
    match method.rsplit_once('.') {
        Some((s, m)) if !s.is_empty() && !m.is_empty() => Ok(s),
        _ => Err(Error::InvalidName { name: method.into(), reason: "a method is named `service.method`" }),
    }
}

impl Dispatcher for Registry {
    /// The dispatch policy, the same on every hub: an unknown method is refused with
    /// `NoSuchMethod`; past `max_pending_calls`, or past three quarters of them from one
    /// caller, a call is refused as busy; a call whose caller has given up by the time a worker
    /// takes it is skipped.
    fn dispatch(&self, call: IncomingCall, handle: &Handle) -> std::result::Result<(), Reject> {
        let (handler, mode) = self.get(call.method()).ok_or(Reject::NoSuchMethod)?;
        if mode != call.mode {
            let shape = |m: CallMode| match m {
                CallMode::Unary => "a unary method",
                CallMode::ServerStream => "a streaming method",
                CallMode::Session => "a session",
            };
            return Err(Reject::WrongShape(format!(
                "`{}` is {} but was called as {}; check the client's method kind",
                call.method(),
                shape(mode),
                shape(call.mode)
            )));
        }
        let slot = Slot::take(&self.pending, call.from).map_err(Reject::Busy)?;
        let handle = handle.clone();
        match handler {
            Handler::Blocking(f) => {
                handle.served_for(call.from);
                self.runtime.spawn_blocking(BlockingJob::new(f, call, handle, slot))
            }
            // Not on a thread that reads a lane for a call of its own: that is the application's
            // thread, which may hold a lock the handler takes (see `reading_for_a_call`).
            Handler::Inline(f) if reading_for_a_call() => {
                self.runtime.run_aside(BlockingJob::new(f, call, handle, slot))
            }
            // Right here, on the thread that read the request; its answer never blocks it.
            Handler::Inline(f) => {
                if wanted(&call) {
                    f(call, &handle.never_blocking(), slot);
                    self.runtime.ran_inline();
                } else {
                    drop(slot);
                    handle.abandon(call.id);
                }
            }
            // The handler gives the slot back before it answers (or when its task is dropped).
            Handler::Async(f) => {
                handle.served_for(call.from);
                f(call, handle, slot)
            }
        }
        Ok(())
    }
}

/// Whether a call is still wanted when its handler is about to start: not cancelled, and (for
/// a unary call) its deadline not passed while it waited for a worker.
pub(crate) fn wanted(call: &IncomingCall) -> bool {
    let stale = call.mode == CallMode::Unary && Instant::now() >= call.deadline;
    !(call.context.is_cancelled() || stale)
}

/// The calls in progress, in all and per caller: one caller may hold three quarters of the
/// `max_pending_calls` places at most ([`proto::caller_share`]), so that one that keeps streams
/// or sessions open (or floods the hub) leaves the others a quarter.
struct Pending {
    max: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    all: usize,
    per_caller: HashMap<PeerId, usize>,
}

impl Pending {
    fn new(max: usize) -> Self {
        Pending { max, counts: Mutex::default() }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One of the `max_pending_calls` places; given back just before the call is answered (or
/// abandoned), so that a caller holding its answer never finds its place still taken.
pub(crate) struct Slot {
    pending: Arc<Pending>,
    caller: PeerId,
}

impl Slot {
    /// A place for a call from `caller`, or why there is none (for the caller's `ServerBusy`).
    fn take(pending: &Arc<Pending>, caller: PeerId) -> std::result::Result<Slot, String> {
        let (max, share) = (pending.max, proto::caller_share(pending.max));
        let mut counts = pending.counts();
        let held = counts.per_caller.get(&caller).copied().unwrap_or(0);
        // The caller's share first: a caller refused for it never takes a place meanwhile.
        if held >= share {
            return Err(format!(
                "this caller has {share} calls in progress here, the most one caller may have of the {max}; retry later"
            ));
        }
        if counts.all >= max {
            return Err(format!("{max} calls are already being served; retry later"));
        }
        counts.all += 1;
        counts.per_caller.insert(caller, held + 1);
        Ok(Slot { pending: pending.clone(), caller })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.pending.counts();
        counts.all -= 1;
        if let Some(held) = counts.per_caller.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                counts.per_caller.remove(&self.caller);
            }
        }
    }
}
