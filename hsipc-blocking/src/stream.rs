//! `ResponseStream`: the items of a server-streaming call, as an iterator.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use hsipc_transport::proto::{RequestId, codec};
use hsipc_transport::{Error, Handle, Result, StreamMsg};
use serde::de::DeserializeOwned;

/// The items of a streaming call. Each `next` waits for the next item; the server can only
/// run ahead of this reader by the credit window, so memory stays bounded however slow the
/// reader is. Dropping the stream before its end cancels it at the server.
#[derive(Debug)]
pub struct ResponseStream<T> {
    handle: Handle,
    id: RequestId,
    items: flume::Receiver<StreamMsg>,
    /// Backstop for one wait: the engine times the stream out itself before this.
    wait: Duration,
    ended: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> ResponseStream<T> {
    pub(crate) fn new(handle: Handle, id: RequestId, items: flume::Receiver<StreamMsg>, wait: Duration) -> Self {
        ResponseStream { handle, id, items, wait, ended: false, _item: PhantomData }
    }

    /// Stops the stream now (the server's next send fails with `Cancelled`).
    pub fn cancel(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.ended {
            self.ended = true;
            self.handle.cancel(self.id);
        }
    }
}

impl<T: DeserializeOwned> Iterator for ResponseStream<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.ended {
            return None;
        }
        let msg = match self.items.recv_deadline(Instant::now() + self.wait) {
            Ok(msg) => msg,
            Err(flume::RecvTimeoutError::Timeout) => {
                self.stop();
                return Some(Err(Error::Timeout));
            }
            Err(flume::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                return Some(Err(Error::Closed));
            }
        };
        match msg {
            StreamMsg::Item(bytes) => {
                self.handle.consumed(self.id, 1);
                Some(codec::decode(&bytes).map_err(Error::from))
            }
            StreamMsg::End(Ok(())) => {
                self.ended = true;
                None
            }
            StreamMsg::End(Err(e)) => {
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

impl<T> Drop for ResponseStream<T> {
    fn drop(&mut self) {
        self.stop();
    }
}
