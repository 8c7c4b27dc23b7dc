//! Waiting for one outcome, from a thread or a future alike.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::RequestId;

use super::Handle;
use crate::error::{Error, Result};

/// How much longer than its deadline a blocking wait lasts before it gives up on the engine.
/// The engine's clock answers every wait by its deadline (it never does I/O), so this only
/// guards against a bug; a stalled bus does not need it.
const GRACE: Duration = Duration::from_millis(500);

/// One outcome the engine will deliver by `deadline`: block on it with [`wait`](Self::wait),
/// or `.await` it. The engine ends every wait itself (with [`Error::Timeout`] at its deadline,
/// [`Error::Closed`] when the hub closes), so an adapter awaits this one thing and needs no
/// timer of its own.
#[derive(Debug)]
pub struct Waiter<T: 'static> {
    rx: flume::Receiver<Result<T>>,
    fut: Option<flume::r#async::RecvFut<'static, Result<T>>>,
    deadline: Instant,
}

impl<T: Send + 'static> Waiter<T> {
    pub(super) fn new(rx: flume::Receiver<Result<T>>, deadline: Instant) -> Self {
        Waiter { rx, fut: None, deadline }
    }

    /// Blocks the calling thread until the outcome arrives.
    pub fn wait(self) -> Result<T> {
        match self.rx.recv_deadline(self.deadline + GRACE) {
            Ok(r) => r,
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(flume::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let rx = &self.rx;
        let fut = self.fut.get_or_insert_with(|| rx.clone().into_recv_async());
        Pin::new(fut).poll(cx).map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl<T: Send + 'static> Future for Waiter<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.get_mut().poll_outcome(cx)
    }
}

/// A unary call in flight: its response, by the call's deadline. Dropping it before the
/// response arrives cancels the call at the server.
///
/// The response comes through a oneshot channel: one allocation per call, none per wait (a
/// blocking wait parks the thread, a future keeps its waker in the channel).
#[derive(Debug)]
pub struct PendingCall {
    /// Only ever reached through `&mut self` (`get_mut`, no locking): the mutex is there to make
    /// the call `Sync` (a oneshot receiver is not), as a flume receiver was.
    outcome: std::sync::Mutex<Outcome>,
    deadline: Instant,
    handle: Handle,
    id: RequestId,
    done: bool,
}

/// Where a call's response will be read: by a blocked thread, or (once polled) by a future.
#[derive(Debug)]
enum Outcome {
    Waiting(oneshot::Receiver<Result<Bytes>>),
    Polled(oneshot::AsyncReceiver<Result<Bytes>>),
    /// Only while switching from one to the other.
    Taken,
}

impl PendingCall {
    pub(super) fn new(handle: Handle, id: RequestId, rx: oneshot::Receiver<Result<Bytes>>, deadline: Instant) -> Self {
        PendingCall { outcome: std::sync::Mutex::new(Outcome::Waiting(rx)), deadline, handle, id, done: false }
    }

    /// The call's id.
    pub(super) fn id(&self) -> RequestId {
        self.id
    }

    /// When the caller stops waiting.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Blocks the calling thread until the response arrives.
    pub fn wait(mut self) -> Result<Bytes> {
        let until = self.deadline + GRACE;
        let r = match self.outcome() {
            Outcome::Waiting(rx) => match rx.recv_deadline(until) {
                Ok(r) => r,
                Err(oneshot::RecvTimeoutError::Timeout) => Err(Error::Timeout),
                Err(oneshot::RecvTimeoutError::Disconnected) => Err(Error::Closed),
            },
            // A future that was polled and then waited for on a thread (a caller that read a
            // lane for its answer, say): park until it is ready, by the same deadline.
            Outcome::Polled(_) | Outcome::Taken => match block_until(&mut self, until) {
                Some(r) => return r, // `poll` marked it done
                None => Err(Error::Timeout),
            },
        };
        self.done = true;
        r
    }

    fn outcome(&mut self) -> &mut Outcome {
        self.outcome.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

/// Polls `fut` on this thread, parking between polls, until it is ready or `until` passes.
fn block_until<F: Future + Unpin>(fut: &mut F, until: Instant) -> Option<F::Output> {
    with_thread_waker(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(r) = Pin::new(&mut *fut).poll(&mut cx) {
                return Some(r);
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            std::thread::park_timeout(until - now);
        }
    })
}

/// Runs `f` with a waker that unparks this thread: made once per thread (a waker per wait
/// would allocate), or afresh while the thread's locals are being destroyed.
pub(super) fn with_thread_waker<R>(f: impl FnOnce(&Waker) -> R) -> R {
    thread_local! {
        static UNPARK: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }
    if UNPARK.try_with(|_| ()).is_ok() {
        UNPARK.with(f)
    } else {
        f(&Waker::from(Arc::new(Unpark(std::thread::current()))))
    }
}

/// Unparks the thread it was made on.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl Future for PendingCall {
    type Output = Result<Bytes>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Bytes>> {
        let this = self.get_mut();
        let outcome = this.outcome();
        if let Outcome::Waiting(_) = outcome {
            let Outcome::Waiting(rx) = std::mem::replace(outcome, Outcome::Taken) else { unreachable!() };
            *outcome = Outcome::Polled(rx.into_future());
        }
        let Outcome::Polled(fut) = outcome else { return Poll::Ready(Err(Error::Closed)) };
        let r = Pin::new(fut).poll(cx).map(|r| r.unwrap_or(Err(Error::Closed)));
        if r.is_ready() {
            this.done = true;
        }
        r
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            self.handle.cancel(self.id);
        }
    }
}
