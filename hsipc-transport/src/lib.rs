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
pub mod ipmb;
mod liveness;
mod mailbox;
mod mem;
mod transport;

pub use engine::{
    Command, Delivery, Dispatcher, Engine, EngineConfig, Handle, IncomingCall, PeerSummary, Reject,
    StreamMsg,
};
pub use error::{Error, Result};
pub use ipmb::{IpmbBus, IpmbConfig};
pub use mailbox::{Inbox, Mail};
pub use mem::{MemBus, MemTransport};
pub use proto;
pub use transport::{Connect, Transport, TransportError};
