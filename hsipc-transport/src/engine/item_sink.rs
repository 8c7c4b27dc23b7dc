//! The sending end of a served stream.

use std::time::Duration;

use proto::frame::Body;
use proto::{CallRef, IncomingId, RequestId};

use super::{CallContext, Handle, Waiter};
use crate::error::Result;

/// Where a streaming handler's items go, one frame each, paced by the reader's credit.
///
/// A send that finds no credit waits until the reader takes items, at most the hub's stall
/// timeout (then [`Error::Timeout`](crate::Error::Timeout)); the engine's clock enforces that,
/// so a thread blocks on [`send`](Self::send) and a task awaits
/// [`send_async`](Self::send_async) with no timer of its own. Once the call is gone (the
/// caller cancelled, died or its deadline passed) sends fail with
/// [`Error::Cancelled`](crate::Error::Cancelled).
#[derive(Clone, Debug)]
pub struct ItemSink {
    out: Outbox,
    context: CallContext,
}

/// Items of one call, one way, paced by the reader's credit: what a served stream's sink and a
/// session's sending half have in common.
#[derive(Clone, Debug)]
struct Outbox {
    handle: Handle,
    call: CallRef,
    stall: Duration,
}

impl Outbox {
    fn send(&self, body: impl Into<Body>) -> Result<()> {
        match self.start(body)? {
            None => Ok(()),
            Some(waiter) => waiter.wait(),
        }
    }

    async fn send_async(&self, body: impl Into<Body>) -> Result<()> {
        match self.start(body)? {
            None => Ok(()),
            Some(waiter) => waiter.await,
        }
    }

    fn start(&self, body: impl Into<Body>) -> Result<Option<Waiter<()>>> {
        self.handle.send_item(self.call, body.into(), super::deadline_in(self.stall))
    }
}

impl ItemSink {
    /// The sink of served call `id`.
    pub fn new(handle: Handle, id: IncomingId, stall: Duration, context: CallContext) -> Self {
        ItemSink { out: Outbox { handle, call: id.into(), stall }, context }
    }

    /// The call being served.
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// Sends one item, blocking while the reader has granted no credit.
    pub fn send(&self, body: impl Into<Body>) -> Result<()> {
        self.out.send(body)
    }

    /// Sends one item, waiting (without blocking a thread) while the reader has granted no
    /// credit.
    pub async fn send_async(&self, body: impl Into<Body>) -> Result<()> {
        self.out.send_async(body).await
    }
}

/// The client's sending half of a session: messages to the server, paced by its credit.
/// [`close`](Self::close) (or dropping it) ends the half; the server then reads the end.
#[derive(Debug)]
pub struct SessionSender {
    out: Outbox,
    id: RequestId,
    closed: bool,
}

impl SessionSender {
    pub(super) fn new(handle: Handle, id: RequestId, stall: Duration) -> Self {
        SessionSender { out: Outbox { handle, call: id.into(), stall }, id, closed: false }
    }

    /// Sends one message, blocking while the server has granted no credit (at most the
    /// hub's stall timeout).
    pub fn send(&self, body: impl Into<Body>) -> Result<()> {
        self.check_open()?;
        self.out.send(body)
    }

    /// Sends one message, waiting (without blocking a thread) while the server has granted no
    /// credit.
    pub async fn send_async(&self, body: impl Into<Body>) -> Result<()> {
        self.check_open()?;
        self.out.send_async(body).await
    }

    /// Ends this half: the server reads the end after the messages sent before.
    pub fn close(&mut self) {
        if !std::mem::replace(&mut self.closed, true) {
            self.out.handle.finish_sending(self.id);
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed { Err(crate::Error::Closed) } else { Ok(()) }
    }
}

impl Drop for SessionSender {
    fn drop(&mut self) {
        self.close();
    }
}
