//! Waiting for one outcome, from a thread or a future alike.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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
#[derive(Debug)]
pub struct PendingCall {
    waiter: Waiter<Bytes>,
    handle: Handle,
    id: RequestId,
    done: bool,
}

impl PendingCall {
    pub(super) fn new(handle: Handle, id: RequestId, waiter: Waiter<Bytes>) -> Self {
        PendingCall { waiter, handle, id, done: false }
    }

    /// Blocks the calling thread until the response arrives.
    pub fn wait(mut self) -> Result<Bytes> {
        let rx = self.waiter.rx.clone();
        let deadline = self.waiter.deadline;
        let r = Waiter { rx, fut: None, deadline }.wait();
        self.done = true;
        r
    }
}

impl Future for PendingCall {
    type Output = Result<Bytes>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Bytes>> {
        let this = self.get_mut();
        let r = this.waiter.poll_outcome(cx);
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
