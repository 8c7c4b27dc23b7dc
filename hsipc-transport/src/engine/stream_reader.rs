//! A stream's queue: the engine's end, which it fills with the items of a server stream (at
//! the client) or a session's messages from the client (at the server), and the reading end,
//! [`ItemReceiver`], that every adapter's response stream and session reader is built on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use proto::CallRef;

use super::Handle;
use super::reader_signal::{QueueReceiver, QueueSender, ReaderSignal};
use crate::error::{Error, Result};

/// What a stream's reader receives.
#[derive(Debug)]
pub(crate) enum StreamMsg {
    /// The next item.
    Item(Bytes),
    /// The stream ended: cleanly, or with why it failed.
    End(Result<()>),
}

/// A stream's queue of `capacity` messages: the engine's end and the reader's. Credit bounds
/// the items in flight to one window, so `capacity` is the window and one more for the end.
pub(super) fn item_queue(capacity: usize) -> (ItemSender, ItemSource) {
    let (tx, rx) = super::reader_signal::queue(capacity);
    (ItemSender(Arc::new(tx)), rx)
}

/// The engine's end of a stream's queue, cloned into each delivery; the queue ends when the
/// last clone drops (see [`QueueSender`]).
#[derive(Clone)]
pub(crate) struct ItemSender(Arc<QueueSender<StreamMsg>>);

/// The stream's reader is gone, or the queue is full (the peer broke the credit contract).
pub(super) struct Refused;

impl ItemSender {
    /// Queues a message, never waiting and waking nobody.
    pub(super) fn push(&self, msg: StreamMsg) -> std::result::Result<(), Refused> {
        self.0.try_send(msg).map_err(|_| Refused)
    }

    /// What wakes the reader.
    pub(super) fn signal(&self) -> &Arc<ReaderSignal> {
        self.0.signal()
    }
}

/// The reader's end of a stream's queue, before it is an [`ItemReceiver`].
pub(crate) type ItemSource = QueueReceiver<StreamMsg>;

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
    queue: ItemSource,
    /// Backstop for one blocking wait, should the engine fail to end the stream.
    backstop: Duration,
    ended: bool,
}

impl ItemReceiver {
    pub(super) fn new(handle: Handle, id: CallRef, source: ItemSource, backstop: Duration) -> Self {
        ItemReceiver { handle, id, queue: source, backstop, ended: false }
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
        match self.wait(self.backstop) {
            Some(Some(msg)) => self.take(msg),
            None => {
                self.cancel();
                Err(Error::Timeout)
            }
            Some(None) => {
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
        match self.wait(timeout) {
            Some(Some(msg)) => self.take(msg),
            None => Err(Error::Timeout),
            Some(None) => {
                self.ended = true;
                Err(Error::Closed)
            }
        }
    }

    /// Blocks this thread for the next message (`Some(Some)`), the queue's end (`Some(None)`:
    /// the engine's end gone with nothing left), or at most `timeout` (`None`).
    fn wait(&self, timeout: Duration) -> Option<Option<StreamMsg>> {
        self.queue.wait(Some(super::deadline_in(timeout)))
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
        match this.queue.poll(cx) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::reader_signal::counting;

    /// A push wakes no reader (the engine wakes it once a delivery is over); the wake-up of a
    /// delivery does, and so does the engine's end going (the last clone of its sender).
    #[test]
    fn a_push_wakes_no_reader_a_delivery_and_the_end_do() {
        let (tx, source) = item_queue(4);
        let (waker, count) = counting::waker();
        let mut cx = Context::from_waker(&waker);
        let woken = || count.get();
        let is_item = |p: Poll<Option<StreamMsg>>| matches!(p, Poll::Ready(Some(StreamMsg::Item(_))));
        assert!(source.poll(&mut cx).is_pending());
        assert!(tx.push(StreamMsg::Item(Bytes::from_static(b"1"))).is_ok());
        assert!(tx.push(StreamMsg::Item(Bytes::from_static(b"2"))).is_ok());
        assert_eq!(woken(), 0, "a push alone");
        tx.signal().wake();
        assert_eq!(woken(), 1, "the delivery's wake-up");
        assert!(is_item(source.poll(&mut cx)));
        assert!(is_item(source.poll(&mut cx)));
        assert!(source.poll(&mut cx).is_pending());
        let clone = tx.clone();
        drop(tx);
        assert_eq!(woken(), 1, "a clone of the sender still lives");
        drop(clone);
        assert_eq!(woken(), 2, "the end");
        assert!(matches!(source.poll(&mut cx), Poll::Ready(None)));
    }

    /// The end wakes the reader only once the queue has ended: a reader it wakes finds the
    /// end, never an open and empty queue (it would go back to sleep, for good).
    #[test]
    fn the_reader_the_end_wakes_finds_the_end() {
        struct SeesEnd(flume::Receiver<StreamMsg>, std::sync::atomic::AtomicBool);
        impl std::task::Wake for SeesEnd {
            fn wake(self: Arc<Self>) {
                self.1.store(self.0.is_disconnected(), std::sync::atomic::Ordering::SeqCst);
            }
        }
        let (tx, source) = item_queue(4);
        let sees = Arc::new(SeesEnd(source.channel(), Default::default()));
        let waker = std::task::Waker::from(sees.clone());
        assert!(source.poll(&mut Context::from_waker(&waker)).is_pending());
        drop(tx);
        assert!(sees.1.load(std::sync::atomic::Ordering::SeqCst), "woken, and the queue had ended");
    }

    /// The queue holds its capacity, no more: the engine's push past it is refused (the
    /// stream is then cancelled), never waits.
    #[test]
    fn a_full_queue_refuses_a_push() {
        let (tx, _source) = item_queue(2);
        assert!(tx.push(StreamMsg::Item(Bytes::new())).is_ok());
        assert!(tx.push(StreamMsg::End(Ok(()))).is_ok());
        assert!(tx.push(StreamMsg::Item(Bytes::new())).is_err());
    }
}
