//! hsipc for smol (and any async-io based executor).
//!
//! [`ProcessHub`] joins a bus and lets tasks call services in other processes, serve their
//! own, stream responses and publish or subscribe to events. Calls are futures (dropping one
//! cancels the call at the server); response streams and subscriptions are
//! [`Stream`]s; handlers are spawned on smol's global executor, blocking work on
//! its blocking pool.
//!
//! ```no_run
//! use hsipc_smol::ProcessHub;
//!
//! fn main() -> hsipc_smol::Result<()> {
//!     smol::block_on(async {
//!         let hub = ProcessHub::new("calculator").await?;
//!         hub.serve("calc.add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await?;
//!         let sum: i64 = hub.call("calc.add", (2, 3)).await?;
//!         assert_eq!(sum, 5);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! This crate holds only what is smol's: how a handler is spawned. The async surface is shared
//! with `hsipc-tokio` ([`hsipc_transport::hub::AsyncHub`]).

use std::sync::Arc;

use hsipc_transport::hub::{BoxFuture, Runtime, RuntimeKind, Settings};

pub use hsipc_transport::hub::{
    CallFuture, Event, ResponseStream, ServerSession, Session, Stream, StreamSink, Subscription,
};
pub use hsipc_transport::proto::{PeerId, RemoteError};
pub use hsipc_transport::{CallContext, Census, Error, PeerSummary, Qos, Result};

/// A hub for smol code. See [`AsyncHub`](hsipc_transport::hub::AsyncHub) for its methods.
pub type ProcessHub = hsipc_transport::hub::AsyncHub<Smol>;

/// Configures and creates a [`ProcessHub`]: `ProcessHub::builder(name)...build()`.
pub type HubBuilder = hsipc_transport::hub::HubBuilder<Smol>;

/// The smol hub's kind: handlers are tasks on smol's global executor.
#[derive(Debug)]
pub struct Smol;

impl RuntimeKind for Smol {
    type Hub = ProcessHub;

    fn runtime(_: &Settings) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(SmolRuntime))
    }
}

#[derive(Debug)]
struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, task: BoxFuture) {
        smol::spawn(task).detach();
    }

    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send + 'static>) {
        smol::unblock(job).detach();
    }

    fn handlers_send_inline(&self) -> bool {
        false
    }
}
