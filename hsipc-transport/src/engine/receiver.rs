//! The reading end of a server stream: what every adapter's response stream is built on.

use std::time::Instant;

use bytes::Bytes;
use proto::RequestId;

use super::Handle;
use super::api::StreamMsg;
use crate::error::{Error, Result};

/// The items of a server-streaming call, in order, then its end.
///
/// Taking an item reports it consumed, so credit flows back to the server and at most one
/// window of items is ever queued here. Dropping the receiver before the end (or calling
/// [`cancel`](Self::cancel)) cancels the stream at the server. Waiting is the adapter's
/// business: [`recv_deadline`](Self::recv_deadline) for threads; an async adapter awaits the
/// same channel and hands each message to [`take`](Self::take).
#[derive(Debug)]
pub struct ItemReceiver {
    handle: Handle,
    id: RequestId,
    rx: flume::Receiver<StreamMsg>,
    ended: bool,
}

impl ItemReceiver {
    pub(super) fn new(handle: Handle, id: RequestId, rx: flume::Receiver<StreamMsg>) -> Self {
        ItemReceiver { handle, id, rx, ended: false }
    }

    /// The call's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Whether the stream has ended (cleanly, with an error, or cancelled).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The channel the engine delivers on, for adapters that await it.
    pub fn channel(&self) -> &flume::Receiver<StreamMsg> {
        &self.rx
    }

    /// The next item, waiting until `deadline` at most: `Ok(None)` after a clean end, an error
    /// if the stream failed. The engine times a stalled stream out by itself; `deadline` is
    /// only a backstop, after which the stream is cancelled and [`Error::Timeout`] returned.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv_deadline(deadline) {
            Ok(msg) => self.take(msg),
            Err(flume::RecvTimeoutError::Timeout) => {
                self.cancel();
                Err(Error::Timeout)
            }
            Err(flume::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Err(Error::Closed)
            }
        }
    }

    /// Accounts for one message taken from [`channel`](Self::channel).
    pub fn take(&mut self, msg: StreamMsg) -> Result<Option<Bytes>> {
        match msg {
            StreamMsg::Item(bytes) => {
                self.handle.consumed(self.id, 1);
                Ok(Some(bytes))
            }
            StreamMsg::End(outcome) => {
                self.ended = true;
                outcome.map(|()| None)
            }
        }
    }

    /// Stops the stream now: the server's next send fails with [`Error::Cancelled`].
    pub fn cancel(&mut self) {
        if !self.ended {
            self.ended = true;
            self.handle.cancel(self.id);
        }
    }
}

impl Drop for ItemReceiver {
    fn drop(&mut self) {
        self.cancel();
    }
}
