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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use std::future::Future;

use hsipc_transport::hub::{BlockingJob, BoxFuture, Runtime, RuntimeKind, Settings, Spawner};
use hsipc_transport::ipmb::{LaneReader, LaneRunner, LaneState};
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
    type Spawner = SmolSpawner;

    fn runtime(_: &Settings) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(SmolRuntime))
    }

    fn spawner(_: &Arc<dyn Runtime>) -> SmolSpawner {
        SmolSpawner
    }
}

/// Spawns a smol hub's async handlers on smol's global executor, each call's task one
/// allocation.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct SmolSpawner;

impl Spawner for SmolSpawner {
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        smol::spawn(task).detach();
    }
}

#[derive(Debug)]
struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn spawn(&self, task: BoxFuture) {
        smol::spawn(task).detach();
    }

    fn spawn_blocking(&self, job: BlockingJob) {
        smol::unblock(|| job.run()).detach();
    }

    fn handlers_send_inline(&self) -> bool {
        false
    }

    /// async-io's own thread naps 50 µs or more after each round of I/O whenever a `block_on`
    /// exists (it expects those to poll for I/O). Lanes read there whose frames wake no
    /// `block_on` (requests answered by inline handlers) would keep it reading alone, each
    /// request ~100 µs late; an empty task wakes an executor thread, which then polls for I/O
    /// itself. (async-io 2 names its thread "async-io"; should that change, requests are
    /// still answered, only with those naps.)
    fn ran_inline(&self) {
        if std::thread::current().name() == Some("async-io") {
            smol::spawn(async {}).detach();
        }
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

/// Reads a lane where async-io's reactor reports it readable: in the reactor's waker, on the
/// thread that waited for it (an application's `block_on`, an executor thread, or async-io's
/// own), with no hop to an executor task. A reply read there wakes its caller on that same
/// thread (a `block_on` waiting for it is woken without a thread switch). Hands the reader back
/// (to run on a thread) if the reactor does not take the fd.
///
/// async-io calls wakers while it holds its reactor lock (no other thread polls for I/O
/// meanwhile), so a waker reads one short turn ([`WAKER_TURN`] messages) and leaves the rest to
/// an executor task; the reads never wait for I/O, and inline handlers, which run here, are
/// documented as never waiting.
fn read_lane(reader: LaneReader) -> Option<LaneReader> {
    // The reader never waits on the fd (it reads with MSG_DONTWAIT), so it is left as it is.
    let fd = match Async::new_nonblocking(LaneFd(reader.fd())) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::info!(error = %e, "async-io does not take a direct lane: it is read on a thread");
            return Some(reader);
        }
    };
    let task = Arc::new(LaneTask { state: AtomicU8::new(IDLE), lane: Mutex::new(Some((reader, fd))) });
    LaneTask::wake_up(&task);
    None
}

/// Messages (or frames of a ring batch) a reactor waker reads before it leaves the rest of a
/// full lane to a task.
const WAKER_TURN: usize = 32;

/// Nobody reads the lane now; the next wake-up does.
const IDLE: u8 = 0;
/// A wake-up is reading the lane.
const READING: u8 = 1;
/// A wake-up is reading, and another came meanwhile: the reader goes round once more.
const AGAIN: u8 = 2;
/// The lane has ended.
const DONE: u8 = 3;

/// A lane read by its reactor waker: the waker *is* the reading (see [`read_lane`]).
///
/// One wake-up reads at a time; one that comes while another reads (on another thread, or on
/// this one from inside `poll_readable`) only tells the reader to go round again, so none is
/// lost and none waits.
struct LaneTask {
    state: AtomicU8,
    /// The reader and its registration; `None` once the lane has ended (dropping the `Async`
    /// takes the fd and any waker it holds out of the reactor: nothing is left behind).
    lane: Mutex<Option<(LaneReader, Async<LaneFd>)>>,
}

impl Wake for LaneTask {
    fn wake(self: Arc<Self>) {
        Self::wake_up(&self);
    }
}

/// How a turn of reading ended.
enum Turn {
    /// Drained; the reactor calls again when there is more.
    Waiting,
    /// A full turn read; the rest is for a task.
    Full,
    /// The lane ended (or the reactor failed and the reader went to a thread).
    Over,
}

impl LaneTask {
    fn wake_up(this: &Arc<Self>) {
        let mut state = this.state.load(Ordering::Acquire);
        loop {
            let (next, reads) = match state {
                IDLE => (READING, true),
                READING | AGAIN => (AGAIN, false),
                _ => return,
            };
            match this.state.compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if reads => break,
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
        loop {
            let turn = this.read_turn();
            if let Turn::Over = turn {
                this.state.store(DONE, Ordering::Release);
                *this.lane.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
            if let Turn::Full = turn {
                let this = this.clone();
                smol::spawn(async move {
                    this.state.store(IDLE, Ordering::Release);
                    LaneTask::wake_up(&this);
                })
                .detach();
                return;
            }
            // Drained: done, unless another wake-up came meanwhile.
            if this.state.compare_exchange(READING, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return;
            }
            this.state.store(READING, Ordering::Release);
        }
    }

    /// Reads what the lane holds now (at most a turn), then asks the reactor to call again when
    /// there is more. Never waits for I/O.
    fn read_turn(self: &Arc<Self>) -> Turn {
        let mut lane = self.lane.lock().unwrap_or_else(|e| e.into_inner());
        let Some((reader, fd)) = lane.as_mut() else { return Turn::Over };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // Takes in the readiness that woke this (else the first check below reports it again
        // and costs a read that finds nothing).
        let _ = fd.poll_readable(&mut cx);
        reader.socket_readable();
        loop {
            match reader.read_some(WAKER_TURN) {
                LaneState::Drained => match fd.poll_readable(&mut cx) {
                    Poll::Pending => return Turn::Waiting,
                    Poll::Ready(Ok(())) => reader.socket_readable(),
                    // The reactor failed: the reader, dropped with the lane, reads on a thread.
                    Poll::Ready(Err(_)) => return Turn::Over,
                },
                LaneState::More => return Turn::Full,
                LaneState::Ended => return Turn::Over,
            }
        }
    }
}
