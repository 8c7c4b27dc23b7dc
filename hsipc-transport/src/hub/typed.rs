//! Typed values out of frames: decoded responses, stream items and events.

use bytes::Bytes;
use proto::{PeerId, codec};
use serde::de::DeserializeOwned;

use crate::engine::Delivery;
use crate::error::Result;

/// One event received by a subscription.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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

impl<T: DeserializeOwned> Event<T> {
    /// Decodes a delivery.
    pub fn decode(d: Delivery) -> Result<Event<T>> {
        let payload = codec::decode_from(&d.body)?;
        Ok(Event { topic: d.topic.as_str().to_string(), payload, from: d.from, missed: d.missed })
    }
}

/// Decodes a response or a stream item.
pub fn decode<T: DeserializeOwned>(body: Result<Bytes>) -> Result<T> {
    Ok(codec::decode_from(&body?)?)
}
