//! The reading end of a server stream: what every adapter's response stream is built on.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use proto::CallRef;

use super::Handle;
use crate::error::{Error, Result};

/// What a stream's reader receives.
#[derive(Debug)]
pub(crate) enum StreamMsg {
    /// The next item.
    Item(Bytes),
    /// The stream ended: cleanly, or with why it failed.
    End(Result<()>),
}

/// The items of a server-streaming call, in order, then its end.
///
/// Taking an item reports it consumed, so credit flows back to the server and at most one
/// window of items is ever queued here. Dropping the receiver before the end (or calling
/// [`cancel`](Self::cancel)) cancels the stream at the server. Read it from a thread with
/// [`recv`](Self::recv), or as a [`Stream`] from async code: the engine ends a stalled stream
/// by itself (its idle timeout), so neither needs a timer.
#[derive(Debug)]
pub struct ItemReceiver {
    handle: Handle,
    id: CallRef,
    rx: flume::Receiver<StreamMsg>,
    stream: Option<flume::r#async::RecvStream<'static, StreamMsg>>,
    /// Backstop for one blocking wait, should the engine fail to end the stream.
    backstop: Duration,
    ended: bool,
}

impl ItemReceiver {
    pub(super) fn new(handle: Handle, id: CallRef, rx: flume::Receiver<StreamMsg>, backstop: Duration) -> Self {
        ItemReceiver { handle, id, rx, stream: None, backstop, ended: false }
    }

    /// Whether the stream has ended (cleanly, with an error, or cancelled).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Blocks for the next item: `Ok(None)` after a clean end, an error if the stream failed.
    pub fn recv(&mut self) -> Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv_deadline(super::deadline_in(self.backstop)) {
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

    /// Stops the stream now: the server's next send fails with [`Error::Cancelled`]. (For the
    /// client's messages of a served session, it only stops reading them.)
    pub fn cancel(&mut self) {
        if !self.ended {
            self.ended = true;
            if let CallRef::Outgoing(id) = self.id {
                self.handle.cancel(id);
            }
        }
    }

    /// Blocks for the next item at most `timeout`: `Err(Timeout)` if none came (the stream
    /// stays open).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv_deadline(super::deadline_in(timeout)) {
            Ok(msg) => self.take(msg),
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(flume::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Err(Error::Closed)
            }
        }
    }

    /// Accounts for one message taken from the channel.
    fn take(&mut self, msg: StreamMsg) -> Result<Option<Bytes>> {
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
}

impl Stream for ItemReceiver {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let rx = &this.rx;
        let stream = this.stream.get_or_insert_with(|| rx.clone().into_stream());
        match Pin::new(stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(Some(Err(Error::Closed)))
            }
            Poll::Ready(Some(msg)) => Poll::Ready(this.take(msg).transpose()),
        }
    }
}

impl Drop for ItemReceiver {
    fn drop(&mut self) {
        self.cancel();
    }
}
