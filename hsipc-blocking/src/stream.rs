//! `ResponseStream`: the items of a server-streaming call, as an iterator.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use hsipc_transport::proto::codec;
use hsipc_transport::{Error, ItemReceiver, Result};
use serde::de::DeserializeOwned;

/// The items of a streaming call. Each `next` waits for the next item; the server can only
/// run ahead of this reader by the credit window, so memory stays bounded however slow the
/// reader is. Dropping the stream before its end cancels it at the server.
#[derive(Debug)]
pub struct ResponseStream<T> {
    items: ItemReceiver,
    /// Backstop for one wait: the engine times the stream out itself before this.
    wait: Duration,
    _item: PhantomData<fn() -> T>,
}

impl<T> ResponseStream<T> {
    pub(crate) fn new(items: ItemReceiver, wait: Duration) -> Self {
        ResponseStream { items, wait, _item: PhantomData }
    }

    /// Stops the stream now (the server's next send fails with `Cancelled`).
    pub fn cancel(mut self) {
        self.items.cancel();
    }
}

impl<T: DeserializeOwned> Iterator for ResponseStream<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        match self.items.recv_deadline(Instant::now() + self.wait) {
            Ok(Some(bytes)) => Some(codec::decode(&bytes).map_err(Error::from)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}
