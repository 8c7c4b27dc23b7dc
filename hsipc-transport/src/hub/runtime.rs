//! The one thing an adapter brings: how handlers are spawned.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::builder::Settings;
use super::core::HubCore;
use super::handler::BlockingFn;
use super::registry::{Slot, wanted};
use crate::engine::{Handle, IdleLanes, IncomingCall};
use crate::error::Result;

/// A boxed, sendable future, as handed to [`Runtime::spawn`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How a hub runs its handlers: the whole of what differs between tokio, smol and threads.
///
/// Waiting needs nothing from the runtime: the engine's clock thread ends every wait by its
/// deadline, and its channels can be awaited from any executor or blocked on from any thread.
/// So there is no `sleep` or `now` here (quinn's `Runtime` needs them because its timers
/// live in the runtime; ours live in the engine).
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// This runtime as `Any`, for its kind's [`RuntimeKind::spawner`] to find its own type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Spawns a boxed future as a task. Called with no engine lock held, on the thread that
    /// delivered the request; must not block. Async handlers reach it only through a
    /// [`BoxingSpawner`] (the blocking hub's); the tokio and smol hubs spawn theirs with their
    /// own [`Spawner`], unboxed.
    fn spawn(&self, task: BoxFuture);
    /// Runs a blocking handler where blocking is allowed (a worker thread), by calling
    /// [`BlockingJob::run`] there. Must not block the caller. The job is handed over unboxed:
    /// a pool that queues it by value serves a call without allocating for it.
    fn spawn_blocking(&self, job: BlockingJob);
    /// Whether handlers may send their answers from their own thread when the send path is
    /// free. True for thread pools (it saves a thread hop); false for async runtimes, whose
    /// threads must never block in a stalled bus.
    fn handlers_send_inline(&self) -> bool;
    /// Runs a cheap (inline) handler that cannot run where its request was read: that thread
    /// is the application's, reading a lane while it waits for a call of its own (a handler
    /// there could wait for a lock the thread holds). It must not wait behind the workers
    /// (they may all be busy, one of them with that very call). Default: like
    /// [`spawn_blocking`](Self::spawn_blocking), for runtimes whose callers never read lanes.
    fn run_aside(&self, job: BlockingJob) {
        self.spawn_blocking(job);
    }
    /// Called on the thread that just ran an inline handler (see `serve_inline`), after it
    /// answered. Default: nothing. (smol uses it when that thread is async-io's own, which
    /// naps after each round of I/O while it expects `block_on` threads to poll: it wakes an
    /// executor thread to poll instead.)
    fn ran_inline(&self) {}
    /// Reads direct lanes on this runtime (its reactor waits for them) instead of a thread
    /// each, if it can: a reply then wakes the task waiting for it on the thread that read it.
    /// Default: threads.
    fn lane_runner(&self) -> Option<crate::ipmb::LaneRunner> {
        None
    }
    /// Given once, when the hub starts: how a worker with nothing to do may wait for work by
    /// reading one of the lanes requests come through (see [`IdleLanes`]). Default: ignored.
    fn idle_lanes(&self, _lanes: IdleLanes) {}
}

/// One served call for a blocking handler, as handed to [`Runtime::spawn_blocking`]: its
/// handler, the call and its place among the calls being served. [`run`](Self::run) it on a
/// thread that may block.
pub struct BlockingJob {
    handler: Arc<BlockingFn>,
    call: IncomingCall,
    handle: Handle,
    slot: Slot,
}

impl BlockingJob {
    pub(super) fn new(handler: Arc<BlockingFn>, call: IncomingCall, handle: Handle, slot: Slot) -> Self {
        BlockingJob { handler, call, handle, slot }
    }

    /// Runs the handler and answers the call; a call whose caller gave up while it waited for
    /// a worker is skipped (and its place given back).
    pub fn run(self) {
        let BlockingJob { handler, call, handle, slot } = self;
        if !wanted(&call) {
            drop(slot);
            handle.abandon(call.id);
            return;
        }
        handler(call, &handle, slot);
    }
}

impl fmt::Debug for BlockingJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingJob").field("call", &self.call).finish_non_exhaustive()
    }
}

/// A kind of hub: which [`Runtime`] it runs handlers on, and which hub type its builder
/// makes. Each adapter implements it once, on a marker type.
pub trait RuntimeKind: Sized + 'static {
    /// The hub type [`HubBuilder::build`](super::HubBuilder::build) returns.
    type Hub: From<HubCore>;
    /// How this kind's hubs spawn their async handlers.
    type Spawner: Spawner;
    /// Makes the runtime for one hub (tokio: a handle on the current runtime).
    fn runtime(settings: &Settings) -> Result<Arc<dyn Runtime>>;
    /// The spawner for a hub whose runtime [`runtime`](Self::runtime) made.
    fn spawner(runtime: &Arc<dyn Runtime>) -> Self::Spawner;
}

/// Spawns a hub's async handlers with their futures' own types: a call's task is then one
/// allocation, where a [`BoxFuture`] handed to [`Runtime::spawn`] costs two (the box, then the
/// runtime's task around it). Each kind of hub has one ([`RuntimeKind::Spawner`]).
pub trait Spawner: Clone + Send + Sync + 'static {
    /// Spawns `task` on the hub's runtime. Called on the thread that delivered the request, with
    /// no engine lock held; must not block.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F);
}

/// The spawner of a runtime known only as a [`Runtime`]: each task is boxed and handed to
/// [`Runtime::spawn`].
#[derive(Clone, Debug)]
pub struct BoxingSpawner(pub Arc<dyn Runtime>);

impl Spawner for BoxingSpawner {
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.0.spawn(Box::pin(task));
    }
}
