//! hsipc: typed inter-process services, response streams and publish/subscribe between
//! processes on one machine, over the ipmb bus.
//!
//! This is the facade. Pick the hub for your code; the names are the same in each, so switching
//! is a change of `use` line:
//!
//! | feature | hub | calls | streams and subscriptions | handlers run |
//! |---|---|---|---|---|
//! | `tokio` (default) | [`ProcessHub`] | `.await` | [`Stream`]s | as tokio tasks |
//! | `smol` | `smol::ProcessHub` | `.await` | [`Stream`]s | on smol's executor |
//! | `blocking` (default) | [`SyncProcessHub`] ([`blocking::ProcessHub`]) | block with a deadline | iterators | on worker threads |
//!
//! Features are additive: any combination compiles and works in one process.
//!
//! ```no_run
//! use hsipc::{ProcessHub, Result};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct TemperatureEvent {
//!     pub sensor_id: String,
//!     pub value: f64,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<()> {
//!     let hub = ProcessHub::new("sensor").await?;
//!     hub.serve("calc.add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await?;
//!     let sum: i64 = hub.call("calc.add", (2, 3)).await?;
//!     assert_eq!(sum, 5);
//!
//!     let event = TemperatureEvent { sensor_id: "room_001".to_string(), value: 25.5 };
//!     hub.publish("sensor/temperature", event).await?;
//!     Ok(())
//! }
//! ```
//!
//! The layers underneath are re-exported for those who need them: [`proto`] (the sans-IO
//! protocol core) and [`transport`] (transports, the engine and the hub layer).

/// Binary payloads: a `Bytes` travels as one CBOR byte string; one over 512 bytes is not copied
/// before it is written to the other process (once, into memory the two hubs share, for 16 KiB
/// and more), and received, a large one points into that memory. A `Vec<u8>` or `&[u8]`
/// payload skips serde too (a `&[u8]` under 16 KiB, or one sent through an async hub's
/// `publish` or `send`, is copied once first; decoding into a `Vec` is one copy); a `Vec<u8>`
/// *inside* a struct goes through serde one byte at a time, so put large blobs in a `Bytes`
/// field. See the README's "Binary payloads".
pub use bytes::Bytes;
pub use futures_core::Stream;
pub use hsipc_macros::{service, service_impl, service_trait};
pub use hsipc_transport as transport;
pub use hsipc_transport::hub::{ClientError, Event, HasCore, MethodCall, MethodIter, MethodStream, Service};
pub use hsipc_transport::proto;
pub use hsipc_transport::proto::{PeerId, RemoteError, Topic, TopicError, TopicFilter};
pub use hsipc_transport::{CallContext, Census, Error, PeerSummary, Qos, Result, Stats};

/// The blocking hub: calls block with a deadline, streams and subscriptions are iterators,
/// handlers run on worker threads.
#[cfg(feature = "blocking")]
pub mod blocking {
    pub use hsipc_blocking::{
        HubBuilder, ProcessHub, ResponseStream, ServerSession, Session, StreamSink, Subscription, SyncProcessHub,
    };
}

/// The blocking hub, under the earlier hsipc's name.
#[cfg(feature = "blocking")]
pub use hsipc_blocking::SyncProcessHub;

/// The tokio hub.
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use hsipc_tokio::{CallFuture, HubBuilder, ProcessHub, ResponseStream, StreamSink, Subscription};
}

/// The tokio hub, as the earlier hsipc had it.
#[cfg(feature = "tokio")]
pub use hsipc_tokio::{HubBuilder, ProcessHub};

/// The smol hub.
#[cfg(feature = "smol")]
pub mod smol {
    pub use hsipc_smol::{CallFuture, HubBuilder, ProcessHub, ResponseStream, StreamSink, Subscription};
}

/// The sink a streaming handler sends through: `send(&item).await` from async code,
/// `send_blocking(&item)` from a thread. `#[service]` streaming methods take one.
pub use hsipc_transport::hub::StreamSink;

/// The async hubs' call future, response stream and subscription (the same for tokio and smol;
/// present whatever the features, so that no name here changes meaning when a feature is
/// turned on: the blocking hub's iterators are `hsipc::blocking::ResponseStream` and
/// `hsipc::blocking::Subscription`).
pub use hsipc_transport::hub::{CallFuture, ResponseStream, ServerSession, Session, Subscription};

/// What `#[service]`'s generated code uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use hsipc_transport::hub::{
        ClientErrorOf, ClientResult, HasCore, HubCore, MethodResult, Service, ServiceError, assert_service_error,
        assert_wire, end_stream, end_stream_blocking, method_sink,
    };
    pub use hsipc_transport::hub::{open_session, server_session};
    pub use hsipc_transport::{ItemReceiver, ItemSink};
}

/// README.md's examples, compiled as doc tests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
