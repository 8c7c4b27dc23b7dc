//! hsipc for smol (and any async-io based executor).
//!
//! [`ProcessHub`] joins a bus and lets tasks call services in other processes, serve their
//! own, stream responses and publish or subscribe to events. Calls are futures (dropping one
//! cancels the call at the server); response streams and subscriptions are
//! [`Stream`]s; handlers are spawned on smol's global executor, blocking work on
//! its blocking pool.
//!
//! ```no_run
//! use hsipc_smol::ProcessHub;
//!
//! fn main() -> hsipc_smol::Result<()> {
//!     smol::block_on(async {
//!         let hub = ProcessHub::new("calculator").await?;
//!         hub.serve("calc.add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await?;
//!         let sum: i64 = hub.call("calc.add", (2, 3)).await?;
//!         assert_eq!(sum, 5);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! This crate holds only what is smol's: how a handler is spawned and how a direct lane is
//! read (by async-io's reactor, on the thread it wakes). The async surface is shared with `hsipc-tokio`
//! ([`hsipc_transport::hub::AsyncHub`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use hsipc_transport::hub::{BoxFuture, Runtime, RuntimeKind, Settings};
use hsipc_transport::ipmb::{LaneReader, LaneRunner};
use smol::Async;

pub use hsipc_transport::hub::{
    CallFuture, Event, ResponseStream, ServerSession, Session, Stream, StreamSink, Subscription,
};
pub use hsipc_transport::proto::{PeerId, RemoteError};
pub use hsipc_transport::{CallContext, Census, Error, PeerSummary, Qos, Result};

/// A hub for smol code. See [`AsyncHub`](hsipc_transport::hub::AsyncHub) for its methods.
pub type ProcessHub = hsipc_transport::hub::AsyncHub<Smol>;

/// Configures and creates a [`ProcessHub`]: `ProcessHub::builder(name)...build()`.
pub type HubBuilder = hsipc_transport::hub::HubBuilder<Smol>;

/// The smol hub's kind: handlers are tasks on smol's global executor.
#[derive(Debug)]
pub struct Smol;

impl RuntimeKind for Smol {
    type Hub = ProcessHub;

    fn runtime(_: &Settings) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(SmolRuntime))
    }
}

#[derive(Debug)]
struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, task: BoxFuture) {
        smol::spawn(task).detach();
    }

    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send + 'static>) {
        smol::unblock(job).detach();
    }

    fn handlers_send_inline(&self) -> bool {
        false
    }

    fn lane_runner(&self) -> Option<LaneRunner> {
        Some(LaneRunner::new(read_lane))
    }
}

/// A lane's fd, shared with its reader.
struct LaneFd(Arc<OwnedFd>);

impl AsFd for LaneFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Reads a lane where async-io's reactor reports it readable: on the thread that waited for
/// it (an application's `block_on`, an executor thread, or async-io's own), with no hop to
/// an executor task. A reply read there wakes its caller on that same thread (a `block_on`
/// waiting for it is woken without a thread switch). Hands the reader back (to run on a
/// thread) if the reactor does not take the fd.
fn read_lane(reader: LaneReader) -> Option<LaneReader> {
    // The reader never waits on the fd (it reads with MSG_DONTWAIT), so it is left as it is.
    let fd = match Async::new_nonblocking(LaneFd(reader.fd())) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::info!(error = %e, "async-io does not take a direct lane: it is read on a thread");
            return Some(reader);
        }
    };
    LaneTask::read(&Arc::new(LaneTask { fd, reader: Mutex::new(Some(reader)) }));
    None
}

/// A lane read from its reactor waker: the waker *is* the reading (see [`read_lane`]).
struct LaneTask {
    fd: Async<LaneFd>,
    /// `None` once the lane has ended (or its reader was handed to a thread).
    reader: Mutex<Option<LaneReader>>,
}

impl Wake for LaneTask {
    fn wake(self: Arc<Self>) {
        Self::read(&self);
    }
}

impl LaneTask {
    /// Reads what the lane holds now, then asks the reactor to call again when there is more.
    /// Never waits: reads are non-blocking, and a full turn (a peer keeping the lane full) goes
    /// on as a task on the executor instead of holding the reactor's thread.
    fn read(this: &Arc<Self>) {
        let mut reader = this.reader.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = reader.as_mut() else { return };
        let waker = Waker::from(this.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            match r.read_step() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match this.fd.poll_readable(&mut cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {}
                    // The reactor failed: the reader, dropped, reads on a thread.
                    Poll::Ready(Err(_)) => break,
                },
                Ok(true) => {
                    let this = this.clone();
                    smol::spawn(async move { LaneTask::read(&this) }).detach();
                    return;
                }
                // Ended.
                Ok(false) | Err(_) => break,
            }
        }
        *reader = None;
    }
}
