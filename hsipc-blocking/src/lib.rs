//! hsipc for plain blocking code.
//!
//! A [`ProcessHub`] joins a bus and lets threads call services in other processes, serve their
//! own, stream responses and publish or subscribe to events. Calls block with a deadline;
//! response streams and subscriptions are [`Iterator`]s; handlers run on a bounded pool of
//! worker threads.
//!
//! ```no_run
//! use hsipc_blocking::ProcessHub;
//!
//! # fn main() -> hsipc_blocking::Result<()> {
//! // In the server process:
//! let server = ProcessHub::new("calculator")?;
//! server.serve("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b))?;
//!
//! // In the client process:
//! let client = ProcessHub::new("client")?;
//! client.wait_for_service("calc", std::time::Duration::from_secs(5))?;
//! let sum: i64 = client.call("calc.add", &(2, 3))?;
//! assert_eq!(sum, 5);
//! # Ok(())
//! # }
//! ```
//!
//! All protocol logic lives in `hsipc-proto`, and the engine and everything a hub does the
//! same on every runtime in `hsipc-transport`; this crate holds only its worker threads and
//! its blocking surface.

mod hub;
mod iter;
mod pool;

pub use hsipc_transport::hub::Event;
pub use hsipc_transport::proto::{PeerId, RemoteError};
pub use hsipc_transport::{CallContext, Census, Error, PeerSummary, Qos, Result};
pub use hub::{HubBuilder, ProcessHub, SyncProcessHub, Threads};
pub use iter::{ResponseStream, ServerSession, Session, StreamSink, Subscription};
