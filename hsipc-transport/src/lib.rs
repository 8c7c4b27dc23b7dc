//! hsipc's transports, the engine every adapter shares, and the hub built on it.
//!
//! - [`Transport`]: moves frames between peers named by hsipc [`PeerId`](proto::PeerId).
//!   [`IpmbBus`] is the real bus between processes; [`MemBus`] connects hubs in one process.
//! - [`Engine`]: runs one hub — pumps frames between a transport and the protocol core
//!   (`hsipc-proto`), runs its timers, watches peer processes, and wakes waiting callers.
//! - [`hub`]: everything a hub is but its runtime: the builder, the handler registry and the
//!   dispatch policy, typed calls, handler wrappers, and the one async surface that
//!   `hsipc-tokio` and `hsipc-smol` share. Adapters add only a [`hub::Runtime`] (how a
//!   handler is spawned) and, for the blocking hub, the blocking surface.
//! - [`Error`]: the one error type of the public API.

mod engine;
mod error;
pub mod hub;
mod ingress;
pub mod ipmb;
mod liveness;
mod mem;
mod send_lock;
mod transport;

pub use engine::{
    CallContext, Census, Delivery, Dispatcher, Engine, EngineConfig, EventReceiver, Handle, IdleLanes, IncomingCall,
    ItemReceiver, ItemSink, PeerSummary, PendingCall, Publish, Qos, Reject, SessionSender, Stats, Waiter,
};
pub use error::{Error, Result};
pub use ingress::Ingress;
pub use ipmb::{IpmbBus, IpmbConfig};
pub use mem::{MemBus, MemTransport};
pub use proto;
pub use transport::{BusError, Connect, PeerSender, Sent, Transport, TransportError, Waiting};
