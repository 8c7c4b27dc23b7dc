//! Errors, split by blame.
//!
//! - [`CommandError`]: a command from the application could not be carried out (the endpoint's
//!   state is unchanged). Either the caller misused the API or a local limit was hit.
//! - [`FrameError`]: a frame from a peer was rejected and had no effect. The driver logs it
//!   (at debug level) and carries on: one bad peer must not kill the bus.
//! - [`CallError`]: how a call ended, delivered as an [`Event`](crate::Event).

use std::fmt;

use crate::codec::CodecError;
use crate::id::PeerId;
use crate::topic::TopicError;

/// A frame received from a peer was rejected. The frame had no effect; it is counted in
/// [`Stats::bad_frames`](crate::Stats::bad_frames).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than the fixed header.
    #[error("frame of {len} bytes is shorter than the 32-byte header")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The first byte is not [`MAGIC`](crate::frame::MAGIC): not an hsipc frame.
    #[error("bad magic byte {0:#04x}: not an hsipc frame")]
    BadMagic(u8),
    /// The peer speaks another wire version.
    #[error("peer speaks wire version {theirs}, this build speaks {ours}; upgrade the older side")]
    UnsupportedVersion {
        /// The peer's version.
        theirs: u8,
        /// Ours.
        ours: u8,
    },
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The reserved header field is not zero (a newer peer using it, or a corrupt frame).
    #[error("reserved header field is {0:#06x}, not zero")]
    ReservedNotZero(u16),
    /// The frame is over the configured maximum.
    #[error("frame of {len} bytes is over the maximum of {max} bytes")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The header's lengths do not add up to the buffer's length.
    #[error("header declares {declared} bytes but the frame has {actual}")]
    LengthMismatch {
        /// Length the header declares.
        declared: u64,
        /// Length received.
        actual: usize,
    },
    /// The name is longer than 65 535 bytes.
    #[error("name of {len} bytes is over the 65535-byte limit")]
    NameTooLong {
        /// Name length.
        len: usize,
    },
    /// The name (method or topic) is not UTF-8.
    #[error("frame name is not valid UTF-8")]
    NameNotUtf8,
    /// A publish frame names an invalid topic.
    #[error("published topic is invalid: {0}")]
    BadTopic(TopicError),
    /// An announce frame's payload could not be decoded.
    #[error("announce is malformed: {0}")]
    BadAnnounce(CodecError),
    /// The frame breaks the protocol (e.g. a stream item beyond the granted credit).
    #[error("protocol violation by peer {peer}: {what}")]
    Violation {
        /// The offending peer.
        peer: PeerId,
        /// What it did.
        what: &'static str,
    },
    /// The endpoint's output queue is full; the driver is not draining it.
    #[error("endpoint overloaded: output queue full, frame dropped")]
    Overloaded,
}

/// A command could not be carried out; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No peer on the bus serves this service.
    #[error("no peer on the bus serves `{service}`; start the server, or wait for it with wait_for_service")]
    NoSuchService {
        /// The service name (the method name up to its last `.`).
        service: String,
    },
    /// The peer is not (or no longer) in the directory.
    #[error("peer {0} is not on the bus")]
    UnknownPeer(PeerId),
    /// Too many calls are in flight.
    #[error("too many calls in flight (limit {limit}); wait for some to finish or raise the limit")]
    TooManyCalls {
        /// The configured limit.
        limit: usize,
    },
    /// The frame would be over the maximum frame size.
    #[error(
        "payload of {len} bytes is too large (the maximum frame is {max} bytes); send it in pieces with a stream, or raise the limit on both sides"
    )]
    PayloadTooLarge {
        /// Encoded frame length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A method or service name is malformed.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic or pattern is malformed.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The call or stream is not (or no longer) open.
    #[error("no open call with that id (it has already finished, failed or been cancelled)")]
    UnknownCall,
    /// The operation does not apply to this call (e.g. a stream item on a unary call).
    #[error("{0}")]
    WrongMode(&'static str),
    /// The receiver has granted no more credit; wait for [`Event::Writable`](crate::Event::Writable).
    #[error("stream is blocked: the receiver has granted no more credit")]
    Blocked,
    /// This side of the stream has already finished.
    #[error("stream already finished")]
    StreamFinished,
    /// The output queue is full: the driver is not draining [`poll_output`](crate::Endpoint::poll_output).
    #[error("output queue full ({limit} entries); the driver must drain poll_output")]
    OutputFull {
        /// The configured limit.
        limit: usize,
    },
    /// Too many subscriptions or services to fit in one announce frame.
    #[error(
        "the peer's announce would be {len} bytes, over the maximum frame of {max}; use fewer services or topic patterns"
    )]
    AnnounceTooLarge {
        /// Announce frame length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Reliable subscribers of the topic have no event credit left; nothing was published.
    #[error(
        "{subscribers} reliable subscriber(s) of the topic have taken no events for a while; wait for Event::EventCredit and publish again, or cut them off with NoCredit::CutOff"
    )]
    NoEventCredit {
        /// How many.
        subscribers: usize,
        /// With [`NoCredit::CutOff`](crate::NoCredit::CutOff): when the first of them that is
        /// still reading will have been silent long enough to be cut off (try again then, or
        /// when credit comes back).
        recheck_at: Option<std::time::Instant>,
    },
    /// The endpoint is closed.
    #[error("the endpoint is closed")]
    Closed,
}

/// A numeric error code carried by error frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The handler returned an error.
    pub const HANDLER: ErrorCode = ErrorCode(1);
    /// The server has no handler for the method.
    pub const NO_SUCH_METHOD: ErrorCode = ErrorCode(2);
    /// The server does not serve the service (any more).
    pub const NO_SUCH_SERVICE: ErrorCode = ErrorCode(3);
    /// The server is at its limit of concurrent calls.
    pub const BUSY: ErrorCode = ErrorCode(4);
    /// The server could not decode the request.
    pub const BAD_REQUEST: ErrorCode = ErrorCode(5);
    /// The server is shutting down.
    pub const SHUTDOWN: ErrorCode = ErrorCode(6);
    /// The peer broke the protocol.
    pub const PROTOCOL: ErrorCode = ErrorCode(7);
    /// The call's deadline passed at the server.
    pub const DEADLINE: ErrorCode = ErrorCode(8);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::HANDLER => "handler error",
            Self::NO_SUCH_METHOD => "no such method",
            Self::NO_SUCH_SERVICE => "no such service",
            Self::BUSY => "server busy",
            Self::BAD_REQUEST => "bad request",
            Self::SHUTDOWN => "server shutting down",
            Self::PROTOCOL => "protocol error",
            Self::DEADLINE => "deadline exceeded at server",
            _ => return write!(f, "error code {}", self.0),
        };
        f.write_str(name)
    }
}

/// An error sent by the remote side of a call: a code and a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// The handler's message.
    pub message: String,
}

impl RemoteError {
    /// A handler error with a message.
    pub fn handler(message: impl Into<String>) -> Self {
        RemoteError { code: ErrorCode::HANDLER, message: message.into() }
    }

    /// An error with an explicit code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError { code, message: message.into() }
    }
}

/// How a call (or a stream) ended when it did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The deadline passed before an answer arrived.
    #[error("call timed out; the server may be slow or stuck, or the timeout too short")]
    TimedOut,
    /// The peer left the bus or stopped answering while the call was open.
    #[error("the peer serving the call left or died; retry once another provider is up")]
    PeerLost,
    /// The call was cancelled locally.
    #[error("call cancelled")]
    Cancelled,
    /// The server does not serve the service.
    #[error("the server does not serve `{0}`")]
    NoSuchService(String),
    /// The server has no such method.
    #[error("the server has no method `{0}`; check the method name and the server's version")]
    NoSuchMethod(String),
    /// The server answered with an error.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// A stream item was lost in transit (a gap in the sequence).
    #[error("stream item lost in transit (expected item {expected}, got {got})")]
    ItemLost {
        /// The sequence number expected.
        expected: u64,
        /// The sequence number received.
        got: u64,
    },
    /// The peer broke the protocol on this call.
    #[error("protocol violation on this call: {0}")]
    Protocol(&'static str),
    /// The local endpoint was closed.
    #[error("the local endpoint was closed")]
    Closed,
}

impl CallError {
    /// Maps an error frame's code and message to the matching outcome.
    pub(crate) fn from_remote(code: ErrorCode, message: String, method: &str) -> Self {
        match code {
            ErrorCode::NO_SUCH_METHOD => CallError::NoSuchMethod(method.to_string()),
            ErrorCode::NO_SUCH_SERVICE => CallError::NoSuchService(crate::service_of(method).to_string()),
            _ => CallError::Remote(RemoteError { code, message }),
        }
    }
}
