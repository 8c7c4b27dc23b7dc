//! hsipc: typed inter-process services, response streams and publish/subscribe between
//! processes on one machine, over the ipmb bus.
//!
//! This is the facade. Pick the adapter for your code:
//!
//! - [`blocking`] (feature `blocking`, on by default): plain threads. Calls block with a
//!   deadline; response streams and subscriptions are iterators. [`SyncProcessHub`] is its hub.
//! - `tokio` and `smol` adapters are not written yet (see README's status table).
//!
//! ```no_run
//! use hsipc::SyncProcessHub;
//!
//! # fn main() -> hsipc::Result<()> {
//! let hub = SyncProcessHub::new("client")?;
//! hub.wait_for_service("calc", std::time::Duration::from_secs(5))?;
//! let sum: i64 = hub.call("calc.add", &(2, 3))?;
//! hub.publish("sensor/temperature", &21.5)?;
//! for event in hub.subscribe::<f64>("sensor/+")? {
//!     let event = event?;
//!     println!("{} = {}", event.topic, event.payload);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The layers underneath are re-exported for those who need them: [`proto`] (the sans-IO
//! protocol core) and [`transport`] (transports and the engine).

#[cfg(feature = "blocking")]
pub use hsipc_blocking as blocking;
#[cfg(feature = "blocking")]
pub use hsipc_blocking::SyncProcessHub;
pub use hsipc_transport as transport;
pub use hsipc_transport::{Error, PeerSummary, Result, proto};
