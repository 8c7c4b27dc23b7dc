//! The one error type of hsipc's public API, shared by every adapter.

use proto::{CallError, CommandError, RemoteError, TopicError, codec::CodecError};

use crate::transport::TransportError;

/// What went wrong, with variants a caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No answer before the deadline.
    #[error("call timed out; the server may be slow or stuck, or the timeout too short")]
    Timeout,
    /// The call or stream was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Nobody on the bus serves the service.
    #[error("no peer on the bus serves `{service}`; start the server, or wait for it with wait_for_service")]
    NoSuchService {
        /// The service (method name up to its last `.`).
        service: String,
    },
    /// The server serves the service but has no such method.
    #[error("the server has no method `{method}`; check the method name and the server's version")]
    NoSuchMethod {
        /// The method called.
        method: String,
    },
    /// The handler returned an error.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer serving the call left or died.
    #[error("the peer serving the call left or died; retry once another provider is up")]
    PeerLost,
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A payload is over the configured maximum.
    #[error(
        "payload of {len} bytes is too large (maximum {max} bytes); stream it in pieces, or raise max_message_len on every hub"
    )]
    PayloadTooLarge {
        /// Encoded length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A topic or pattern is malformed.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// A method or service name is malformed.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A stream item was lost in transit.
    #[error("stream item lost in transit (expected item {expected}, got {got})")]
    ItemLost {
        /// Sequence expected.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// The serving hub refused the call because all its handlers are busy: the server's
    /// fault (or load), not this hub's. Retry later, or give the server more workers.
    #[error("the server is busy: {0}")]
    ServerBusy(String),
    /// A publisher cut this hub's reliable subscriptions off: they had given no credit back for
    /// the publisher's whole publish timeout (an unread subscription starves its hub's others),
    /// so events meant for this hub were dropped. Every subscription of the hub reads it; later
    /// events arrive as usual.
    #[error(
        "{missed} event(s) from `{publisher}` were lost: this subscriber took no events for the publisher's publish timeout and was cut off; take events faster (or in a task of their own), raise the publisher's publish_timeout, or subscribe with Qos::KeepLast if only the latest events matter"
    )]
    EventsLost {
        /// The publishing hub's name.
        publisher: String,
        /// How many events were lost.
        missed: u64,
    },
    /// This subscription's own queue was full and dropped the newest events (a `DropNewest`
    /// queue, or a reliable one past its room for 64 publishers' windows), and no later event
    /// has reported them: the end of a burst was lost. Later events arrive as usual.
    #[error(
        "{missed} event(s) were dropped because this subscription's queue was full; take events faster, or give the subscription more room"
    )]
    EventsDropped {
        /// How many events were dropped.
        missed: u64,
    },
    /// This hub is at one of its own limits (calls in flight, queued frames, waiters).
    #[error("this hub is at a limit: {0}; wait for some work to finish, or raise the limit")]
    LocalLimit(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The hub is closed.
    #[error("the hub is closed")]
    Closed,
    /// The hub cannot run where it was created.
    #[error("{0}")]
    Runtime(&'static str),
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::TimedOut => Error::Timeout,
            CallError::PeerLost => Error::PeerLost,
            CallError::Cancelled => Error::Cancelled,
            CallError::NoSuchService(service) => Error::NoSuchService { service },
            CallError::NoSuchMethod(method) => Error::NoSuchMethod { method },
            CallError::Remote(r) if r.code == proto::ErrorCode::BUSY => Error::ServerBusy(r.message),
            CallError::Remote(r) => Error::Remote(r),
            CallError::ItemLost { expected, got } => Error::ItemLost { expected, got },
            CallError::Closed => Error::Closed,
            other => Error::Protocol(other.to_string()),
        }
    }
}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NoSuchService { service } => Error::NoSuchService { service },
            CommandError::UnknownPeer(_) => Error::PeerLost,
            CommandError::PayloadTooLarge { len, max } => Error::PayloadTooLarge { len, max },
            CommandError::InvalidName { name, reason } => Error::InvalidName { name, reason },
            CommandError::InvalidTopic(t) => Error::InvalidTopic(t),
            CommandError::UnknownCall | CommandError::StreamFinished => Error::Cancelled,
            CommandError::Closed => Error::Closed,
            CommandError::WrongMode(what) => Error::Protocol(what.to_string()),
            other => Error::LocalLimit(other.to_string()),
        }
    }
}

/// A `Result` with hsipc's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
