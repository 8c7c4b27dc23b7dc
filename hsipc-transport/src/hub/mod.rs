//! The hub: everything a `ProcessHub` is, except how its handlers are spawned.
//!
//! - [`HubBuilder`] holds every setting and its default (the `HSIPC_BUS` default, the maximum
//!   message size set in both the protocol and the transport, the transport choice) and
//!   starts the engine.
//! - [`HubCore`] is one membership of a bus: the handler registry (`service.method` names, a
//!   service withdrawn with its last method), typed calls, publishing, subscribing.
//! - The dispatch policy and the handler wrappers live here too (unknown method, busy, a
//!   caller that gave up before its handler started, decode errors, panics), so every hub
//!   behaves the same.
//! - [`AsyncHub`] is the async surface, written once for every executor: `hsipc-tokio` and
//!   `hsipc-smol` only say how a task is spawned ([`Runtime`]).
//!
//! An adapter implements [`RuntimeKind`] on a marker type and, for the blocking hub, adds the
//! blocking surface over [`HubCore`].

mod asynchronous;
mod builder;
mod core;
mod handler;
mod registry;
mod runtime;
mod service;
mod typed;

pub use self::asynchronous::{
    AsyncHub, CallFuture, ResponseStream, ServerSession, Session, StreamSink, Subscription, open_session,
    server_session,
};
pub use self::builder::{DEFAULT_BUS, HubBuilder, Settings};
pub use self::core::HubCore;
pub use self::runtime::{BlockingJob, BoxFuture, BoxingSpawner, Runtime, RuntimeKind, Spawner};
pub use self::service::{
    ClientError, ClientErrorOf, ClientResult, HasCore, MethodCall, MethodIter, MethodResult, MethodStream, Service,
    ServiceError, Wire, assert_service_error, assert_wire, end_stream, end_stream_blocking, method_sink,
};
pub use self::typed::{Event, decode};
pub use crate::engine::{AnswersHeld, HeldAnswers, IdleLanes};
pub use futures_core::Stream;
