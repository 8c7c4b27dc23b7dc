//! hsipc's protocol core: a sans-IO state machine for calls, streams, publish/subscribe and
//! the peer directory.
//!
//! This crate never touches a socket, a clock or a thread. Time comes in as an argument, input
//! comes in through `handle_*` methods, and everything the endpoint wants done comes out of
//! `poll_*` methods. That makes every behaviour — a call timing out, a stream running out of
//! credit, a peer vanishing mid-stream — testable deterministically with endpoints wired back
//! to back and a fake clock. The design follows `quinn-proto` and `str0m`.
//!
//! # The state machine
//!
//! One [`Endpoint`] per hub. Its methods come in four groups:
//!
//! - **Inputs** (`handle_*`): [`Endpoint::handle_input`] takes a frame a peer sent (or the
//!   transport's news that a peer is gone); [`Endpoint::handle_timeout`] runs the timers due.
//!   They never block and never panic on remote data: a bad frame is rejected with a
//!   [`FrameError`], counted in [`Stats`], and has no effect.
//! - **Commands** (verbs): [`request`](Endpoint::request), [`respond`](Endpoint::respond),
//!   [`send_item`](Endpoint::send_item), [`finish`](Endpoint::finish),
//!   [`consumed`](Endpoint::consumed) (which grants credit), [`cancel`](Endpoint::cancel),
//!   [`publish`](Endpoint::publish), [`subscribe`](Endpoint::subscribe),
//!   [`serve`](Endpoint::serve), [`close`](Endpoint::close). A [`CommandError`] means the
//!   caller's request could not be carried out and nothing changed.
//! - **Outputs** (`poll_*`): [`Endpoint::poll_output`] yields [`Output::Transmit`] (a frame for
//!   one peer or for all) and [`Output::Event`] (an [`Event`] for the application);
//!   [`Endpoint::poll_timeout`] says when to call `handle_timeout` next.
//! - **Getters**: [`peers`](Endpoint::peers), [`stats`](Endpoint::stats), ...
//!
//! # The run loop
//!
//! A driver (hsipc-transport's engine is the real one) repeats: wait for one input or the
//! deadline, feed it in, then drain every output and ask for the next deadline.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use hsipc_proto::{Config, Dest, Endpoint, Input, Output, PeerId};
//!
//! # fn wait_for_frame(_deadline: Option<Instant>) -> Option<(PeerId, bytes::Bytes)> { None }
//! # fn send(_dest: Dest, _frame: hsipc_proto::frame::WireFrame) {}
//! # fn deliver(_event: hsipc_proto::Event) {}
//! # fn clock() -> Instant { unreachable!("the driver's clock") }
//! let mut ep = Endpoint::new(Config::default(), PeerId(1), "my-hub", 42, clock());
//! loop {
//!     // 1. Drain: outputs are queued inside, so nothing is lost if this runs late.
//!     while let Some(out) = ep.poll_output() {
//!         match out {
//!             Output::Transmit(t) => send(t.dest, t.frame),
//!             Output::Event(e) => deliver(e),
//!         }
//!     }
//!     // 2. Wait for a frame, at most until the next deadline.
//!     let deadline = ep.poll_timeout();
//!     let now = clock(); // the driver reads the clock, never the endpoint
//!     match wait_for_frame(deadline) {
//!         Some((from, bytes)) => {
//!             if let Err(e) = ep.handle_input(now, Input::Frame { from, bytes }) {
//!                 eprintln!("dropped a bad frame: {e}"); // one bad peer never stops the loop
//!             }
//!         }
//!         None => ep.handle_timeout(now),
//!     }
//!     # break;
//! }
//! ```
//!
//! # Time
//!
//! Every input and most commands take `now`. The endpoint compares deadlines with it
//! (`deadline <= now` is due) and never reads a clock itself; clippy's `disallowed-methods`
//! enforces that in this crate. Timers are armed when something happens (a request is sent, an
//! item arrives), never inside `poll_*`.
//!
//! # Invariants
//!
//! - Every table is bounded by [`Config`]: calls in flight both ways, queued outputs, stream
//!   windows. Hitting a bound gives a [`CommandError`] (or, for a peer's frame, a counted drop),
//!   never unbounded growth.
//! - Every call ends with exactly one terminal event ([`Event::Response`] or
//!   [`Event::StreamEnded`]), unless the application cancelled it itself.
//! - A panic means a bug in this crate, never bad input.
//!
//! The wire format is in [`frame`]; the topic rules in [`topic`].

pub mod codec;
mod config;
mod directory;
mod endpoint;
mod error;
mod event;
pub mod fast_map;
pub mod frame;
mod id;
mod lent;
mod stream;
mod timer;
pub mod topic;

#[cfg(test)]
mod tests;

pub use config::{Config, caller_share};

/// The longest timeout a call can have (about ten years); a longer one (`Duration::MAX`, say)
/// is taken as this, so that no deadline overflows the clock.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
pub use directory::{Peer, PeerInfo};
pub use endpoint::{Endpoint, NoCredit, Published, Stats, TableSizes, service_of};
pub use error::{CallError, CommandError, ErrorCode, FrameError, RemoteError};
pub use event::{CallMode, CancelReason, Dest, Event, Input, LeaveReason, Matches, Output, Transmit};
pub use id::{CallRef, IncomingId, MethodName, PeerId, RequestId, SubscriptionId};
pub use topic::{Topic, TopicError, TopicFilter};
