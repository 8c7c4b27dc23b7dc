//! `Subscription`: events on a topic pattern, as an iterator.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use hsipc_transport::proto::{PeerId, codec};
use hsipc_transport::{Delivery, Error, EventReceiver, Result};
use serde::de::DeserializeOwned;

/// One event received by a subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<T> {
    /// The topic it was published on.
    pub topic: String,
    /// The event.
    pub payload: T,
    /// The publishing hub.
    pub from: PeerId,
    /// Events from this publisher lost before this one: dropped in transit, or dropped because
    /// this subscription's queue was full (a reader too slow for the rate of events).
    pub missed: u64,
}

/// Events matching a pattern. Iterating blocks until the next event, and ends when the hub
/// closes. Dropping the subscription unsubscribes (its [`EventReceiver`] does).
#[derive(Debug)]
pub struct Subscription<T> {
    events: EventReceiver,
    _event: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Subscription<T> {
    pub(crate) fn new(events: EventReceiver) -> Self {
        Subscription { events, _event: PhantomData }
    }

    /// The next event, waiting at most `timeout` ([`Error::Timeout`] if none came).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event<T>> {
        decode(self.events.recv_deadline(Instant::now() + timeout)?)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Result<Event<T>>> {
        self.events.try_recv().map(decode)
    }
}

fn decode<T: DeserializeOwned>(d: Delivery) -> Result<Event<T>> {
    let payload = codec::decode(&d.body).map_err(Error::from)?;
    Ok(Event { topic: d.topic.as_str().to_string(), payload, from: d.from, missed: d.missed })
}

impl<T: DeserializeOwned> Iterator for Subscription<T> {
    type Item = Result<Event<T>>;

    fn next(&mut self) -> Option<Result<Event<T>>> {
        self.events.recv().map(decode)
    }
}
