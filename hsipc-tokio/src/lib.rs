//! hsipc for tokio applications.
//!
//! [`ProcessHub`] joins a bus and lets tasks call services in other processes, serve their
//! own, stream responses and publish or subscribe to events. Calls are futures (dropping one
//! cancels the call at the server); response streams and subscriptions are
//! [`Stream`]s; handlers are spawned as tasks on the runtime the hub was created
//! in (current-thread or multi-thread).
//!
//! ```no_run
//! use hsipc_tokio::ProcessHub;
//!
//! #[tokio::main]
//! async fn main() -> hsipc_tokio::Result<()> {
//!     // In the server process:
//!     let server = ProcessHub::new("calculator").await?;
//!     server.serve("calc.add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await?;
//!
//!     // In the client process:
//!     let client = ProcessHub::new("client").await?;
//!     client.wait_for_service("calc", std::time::Duration::from_secs(5)).await?;
//!     let sum: i64 = client.call("calc.add", (2, 3)).await?;
//!     assert_eq!(sum, 5);
//!     Ok(())
//! }
//! ```
//!
//! This crate holds only what is tokio's: how a handler is spawned. The async surface is
//! shared with `hsipc-smol` ([`hsipc_transport::hub::AsyncHub`]), and no hub thread waits on
//! tokio: the engine's own threads end every call by its deadline, so a call's `.await` is a
//! single channel receive and needs no tokio timer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::future::Future;

use hsipc_transport::hub::{BlockingJob, BoxFuture, BoxingSpawner, Runtime, RuntimeKind, Settings, Spawner};
use hsipc_transport::ipmb::{LaneReader, LaneRunner};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use hsipc_transport::hub::{
    CallFuture, Event, ResponseStream, ServerSession, Session, Stream, StreamSink, Subscription,
};
pub use hsipc_transport::proto::{PeerId, RemoteError};
pub use hsipc_transport::{CallContext, Census, Error, PeerSummary, Qos, Result};

/// A hub for tokio code. See [`AsyncHub`](hsipc_transport::hub::AsyncHub) for its methods.
pub type ProcessHub = hsipc_transport::hub::AsyncHub<Tokio>;

/// Configures and creates a [`ProcessHub`]: `ProcessHub::builder(name)...build()`, inside a
/// tokio runtime.
pub type HubBuilder = hsipc_transport::hub::HubBuilder<Tokio>;

/// The tokio hub's kind: handlers are tasks on the runtime the hub is created in.
#[derive(Debug)]
pub struct Tokio;

impl RuntimeKind for Tokio {
    type Hub = ProcessHub;
    type Spawner = TokioSpawner;

    fn runtime(_: &Settings) -> Result<Arc<dyn Runtime>> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Runtime(
                "hsipc_tokio::ProcessHub must be created inside a tokio runtime (in #[tokio::main], a task, or after Runtime::enter)",
            )
        })?;
        Ok(Arc::new(TokioRuntime(handle)))
    }

    fn spawner(runtime: &Arc<dyn Runtime>) -> TokioSpawner {
        match runtime.as_any().downcast_ref::<TokioRuntime>() {
            Some(tokio) => TokioSpawner::Handle(tokio.0.clone()),
            None => TokioSpawner::Boxing(BoxingSpawner(runtime.clone())),
        }
    }
}

/// Spawns a tokio hub's async handlers on the runtime the hub was created in, each call's
/// task one allocation.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub enum TokioSpawner {
    /// The hub's runtime.
    Handle(tokio::runtime::Handle),
    /// A runtime of another kind (not made by [`Tokio`]): tasks are boxed.
    Boxing(BoxingSpawner),
}

impl Spawner for TokioSpawner {
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        match self {
            // As in `TokioRuntime::spawn`: once the runtime is shut down the task is dropped.
            TokioSpawner::Handle(handle) => drop(handle.spawn(task)),
            TokioSpawner::Boxing(boxing) => boxing.spawn(task),
        }
    }
}

/// Spawns on the runtime the hub was created in, from any thread.
#[derive(Debug)]
struct TokioRuntime(tokio::runtime::Handle);

impl Runtime for TokioRuntime {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn spawn(&self, task: BoxFuture) {
        // Once the runtime is shut down the task is dropped, which drops the handler: its
        // call is then answered by its caller's deadline or by this hub's close.
        drop(self.0.spawn(task));
    }

    fn spawn_blocking(&self, job: BlockingJob) {
        drop(self.0.spawn_blocking(|| job.run()));
    }

    fn lane_runner(&self) -> Option<LaneRunner> {
        let handle = self.0.clone();
        let no_io = Arc::new(AtomicBool::new(false));
        Some(LaneRunner::new(move |reader| read_lane(&handle, &no_io, reader)))
    }

    fn handlers_send_inline(&self) -> bool {
        false
    }
}

/// Reads a lane as a task on the hub's runtime, woken by its reactor; hands the reader back
/// (to run on a thread) if the runtime has no I/O driver (built without `enable_io`).
fn read_lane(handle: &tokio::runtime::Handle, no_io: &AtomicBool, mut reader: LaneReader) -> Option<LaneReader> {
    // Without unwinding the probe below could not be caught: such a program reads its lanes
    // on threads.
    if !cfg!(panic = "unwind") || no_io.load(Ordering::Relaxed) {
        return Some(reader);
    }
    let _in_runtime = handle.enter();
    let lane = reader.fd();
    // Tokio has no way to ask whether a runtime has an I/O driver: registering with one that has
    // none panics (once per hub: it is not tried again).
    // SAFETY: the AsyncFd owns a handle to the fd (an `Arc<OwnedFd>`), which keeps it open and
    // the same for the AsyncFd's whole life.
    let registered = std::panic::catch_unwind(AssertUnwindSafe(|| unsafe {
        AsyncFd::register_with_interest(lane, Interest::READABLE)
    }));
    let Ok(Ok(fd)) = registered else {
        if registered.is_err() {
            no_io.store(true, Ordering::Relaxed);
            tracing::info!("the tokio runtime has no I/O driver (enable_io): direct lanes are read on threads");
        }
        return Some(reader);
    };
    // A reader woken per few stream items or events preempts their writer on a shared CPU,
    // and costs it a wake-up message each time: it yields the worker's CPU once first (a
    // scheduling hint, not a wait; as the lane's thread of a blocking hub does).
    reader.yield_before_sleep();
    drop(handle.spawn(async move {
        // Ends with the lane, or when the reactor fails (the reader, dropped, reads on a thread).
        // Reads the socket on to EAGAIN (no `socket_readable`): tokio's readiness is
        // edge-triggered, and two wake-up messages that come before one `epoll_wait` are one
        // edge; one left unread would stay, and more could pile up until the socket is full.
        while let Ok(true) = fd.async_io(Interest::READABLE, |_| reader.read_step()).await {
            // A full turn read: the next reads on at once, after other tasks had theirs.
            tokio::task::yield_now().await;
        }
    }));
    None
}
