//! hsipc's transports and the engine every adapter shares.
//!
//! - [`Transport`]: moves frames between peers named by hsipc [`PeerId`](proto::PeerId).
//!   [`IpmbBus`] is the real bus between processes; [`MemBus`] connects hubs in one process.
//! - [`Engine`]: runs one hub — pumps frames between a transport and the protocol core
//!   (`hsipc-proto`), runs its timers, watches peer processes, and wakes waiting callers.
//!   Adapters (`hsipc-blocking`, and later `hsipc-tokio` and `hsipc-smol`) command it through a
//!   [`Handle`] and only decide how to wait and how to run handlers.
//! - [`Error`]: the one error type of the public API.

mod engine;
mod error;
mod inbox;
pub mod ipmb;
mod liveness;
mod mem;
mod transport;

pub use engine::{
    Delivery, Dispatcher, Engine, EngineConfig, EventReceiver, Handle, IncomingCall, ItemReceiver, ItemSent, Overflow,
    PeerSummary, Reject, StreamMsg,
};
pub use error::{Error, Result};
pub use inbox::Inbox;
pub use ipmb::{IpmbBus, IpmbConfig};
pub use mem::{MemBus, MemTransport};
pub use proto;
pub use transport::{Connect, Transport, TransportError};
