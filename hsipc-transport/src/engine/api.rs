//! The types adapters exchange with the engine.

use std::time::Instant;

use bytes::Bytes;
use proto::{CallMode, IncomingId, PeerId, Topic};

use super::Handle;
use crate::error::Result;

/// A call this hub serves, as handed to the adapter's [`Dispatcher`].
#[derive(Debug)]
pub struct IncomingCall {
    /// The call's id, for [`Handle::respond`], [`Handle::send_item`] and [`Handle::finish`].
    pub id: IncomingId,
    /// The caller.
    pub from: PeerId,
    /// `service.method`.
    pub method: String,
    /// The request body (CBOR).
    pub body: Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Unary, server stream or session.
    pub mode: CallMode,
}

/// Why a dispatcher did not take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No handler for this method.
    NoSuchMethod,
    /// The handler queue is full.
    Busy(String),
}

/// The adapter's side of serving: runs handlers its own way (a thread pool, tokio tasks, ...).
pub trait Dispatcher: Send + 'static {
    /// A call arrived. Start its handler and return at once: this runs inside the engine (on
    /// the transport's reader thread), so it must never block. The handler answers through
    /// `handle` ([`Handle::respond`], [`Handle::send_item`], [`Handle::finish`]).
    fn dispatch(&mut self, call: IncomingCall, handle: &Handle) -> std::result::Result<(), Reject>;
}

/// One event delivered to a subscription.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The publisher.
    pub from: PeerId,
    /// The topic it was published on.
    pub topic: Topic,
    /// The event body (CBOR).
    pub body: Bytes,
    /// Events lost before this one (dropped in transit, or because this subscription's queue
    /// was full).
    pub missed: u64,
}

/// What a stream's reader receives.
#[derive(Debug)]
pub enum StreamMsg {
    /// The next item.
    Item(Bytes),
    /// The stream ended: cleanly, or with why it failed.
    End(Result<()>),
}

/// A peer as shown to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSummary {
    /// Its id.
    pub id: PeerId,
    /// Its hub name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// The services it serves.
    pub services: Vec<String>,
    /// The topic patterns it subscribes to.
    pub patterns: Vec<String>,
    /// Whether it is this hub.
    pub is_local: bool,
}
