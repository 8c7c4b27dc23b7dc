//! The blocking forms of response streams, subscriptions and stream sinks.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use hsipc_transport::hub::{Event, decode};
use hsipc_transport::proto::codec;
use hsipc_transport::{CallContext, EventReceiver, ItemReceiver, ItemSink, Result, SessionSender};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The items of a streaming call. Each `next` blocks for the next item; the server can only
/// run ahead of this reader by the credit window, so memory stays bounded however slow the
/// reader is. Dropping the stream before its end cancels it at the server.
#[derive(Debug)]
pub struct ResponseStream<T> {
    items: ItemReceiver,
    _item: PhantomData<fn() -> T>,
}

impl<T> ResponseStream<T> {
    pub(crate) fn new(items: ItemReceiver) -> Self {
        ResponseStream { items, _item: PhantomData }
    }

    /// Stops the stream now (the server's next send fails with `Cancelled`).
    pub fn cancel(mut self) {
        self.items.cancel();
    }
}

impl<T: DeserializeOwned> Iterator for ResponseStream<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        self.items.recv().transpose().map(decode)
    }
}

/// Events matching a pattern. Iterating blocks until the next event, and ends when the hub
/// closes. Dropping the subscription unsubscribes.
#[derive(Debug)]
pub struct Subscription<T> {
    events: EventReceiver,
    _event: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Subscription<T> {
    pub(crate) fn new(events: EventReceiver) -> Self {
        Subscription { events, _event: PhantomData }
    }

    /// The next event, waiting at most `timeout` ([`Error::Timeout`](crate::Error::Timeout)
    /// if none came).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event<T>> {
        let deadline = Instant::now() + timeout.min(hsipc_transport::proto::MAX_TIMEOUT);
        Event::decode(self.events.recv_deadline(deadline)?)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Result<Event<T>>> {
        self.events.try_recv().map(|d| d.and_then(Event::decode))
    }
}

impl<T: DeserializeOwned> Iterator for Subscription<T> {
    type Item = Result<Event<T>>;

    fn next(&mut self) -> Option<Result<Event<T>>> {
        self.events.recv().map(|d| d.and_then(Event::decode))
    }
}

/// Where a streaming handler sends its items.
#[derive(Debug)]
pub struct StreamSink<Item> {
    sink: ItemSink,
    _item: PhantomData<fn(&Item)>,
}

impl<Item: Serialize> StreamSink<Item> {
    pub(crate) fn new(sink: ItemSink) -> Self {
        StreamSink { sink, _item: PhantomData }
    }

    /// Sends one item. Blocks while the reader has granted no credit (so a slow reader slows
    /// the handler instead of filling memory), at most the hub's stream stall timeout.
    ///
    /// Fails with [`Error::Cancelled`](crate::Error::Cancelled) once the caller has
    /// cancelled, dropped the stream or died: return from the handler then.
    pub fn send(&self, item: &Item) -> Result<()> {
        codec::with_body(item, |body| self.sink.send(body))?
    }

    /// The call being served: caller, deadline, cancellation.
    pub fn context(&self) -> &CallContext {
        self.sink.context()
    }
}

/// The client's end of a session: [`send`](Self::send) (blocking while the server has granted
/// no credit), [`recv`](Self::recv) / [`recv_timeout`](Self::recv_timeout) or iteration for the
/// server's messages (the end is `None`, not an error). Dropping it closes the session.
#[derive(Debug)]
pub struct Session<Out, In> {
    sender: SessionSender,
    input: ItemReceiver,
    _types: PhantomData<fn(&Out) -> In>,
}

impl<Out: Serialize, In: DeserializeOwned> Session<Out, In> {
    pub(crate) fn new(sender: SessionSender, input: ItemReceiver) -> Self {
        Session { sender, input, _types: PhantomData }
    }

    /// Sends one message, blocking while the server has granted no credit (at most the hub's
    /// stream stall timeout). Fails once the session is over.
    pub fn send(&self, msg: &Out) -> Result<()> {
        codec::with_body(msg, |body| self.sender.send(body))?
    }

    /// Ends this end's sending half; the server's messages can still be read.
    pub fn close_send(&mut self) {
        self.sender.close();
    }

    /// The server's next message, blocking (at most the hub's default timeout): `None` once the
    /// server has ended the session.
    pub fn recv(&mut self) -> Option<Result<In>> {
        self.input.recv().transpose().map(decode)
    }

    /// The server's next message, waiting at most `timeout` (`Error::Timeout` if none came; the
    /// session stays open).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<In>> {
        self.input.recv_timeout(timeout)?.map(|b| decode(Ok(b))).transpose()
    }
}

impl<Out: Serialize, In: DeserializeOwned> Iterator for Session<Out, In> {
    type Item = Result<In>;

    fn next(&mut self) -> Option<Result<In>> {
        self.recv()
    }
}

/// The server's end of a session: [`send`](Self::send) to the client, [`recv`](Self::recv) or
/// iteration for the client's messages (ending when the client closes its half or drops its
/// session).
#[derive(Debug)]
pub struct ServerSession<In, Out> {
    sink: StreamSink<Out>,
    input: ItemReceiver,
    _in: PhantomData<fn() -> In>,
}

impl<In: DeserializeOwned, Out: Serialize> ServerSession<In, Out> {
    pub(crate) fn new(sink: ItemSink, input: ItemReceiver) -> Self {
        ServerSession { sink: StreamSink::new(sink), input, _in: PhantomData }
    }

    /// Sends one message to the client, blocking while it has granted no credit.
    pub fn send(&self, msg: &Out) -> Result<()> {
        self.sink.send(msg)
    }

    /// The client's next message, blocking until it comes: `None` once the client has closed
    /// its half or dropped its session.
    pub fn recv(&mut self) -> Option<Result<In>> {
        self.input.recv().transpose().map(decode)
    }

    /// The client's next message, waiting at most `timeout` (`Error::Timeout` if none came).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<In>> {
        self.input.recv_timeout(timeout)?.map(|b| decode(Ok(b))).transpose()
    }

    /// The call being served: caller, deadline, cancellation.
    pub fn context(&self) -> &CallContext {
        self.sink.context()
    }
}

impl<In: DeserializeOwned, Out: Serialize> Iterator for ServerSession<In, Out> {
    type Item = Result<In>;

    fn next(&mut self) -> Option<Result<In>> {
        self.recv()
    }
}
