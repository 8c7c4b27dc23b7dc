//! Identifiers: peers, outgoing calls, incoming calls and subscriptions.
//!
//! Every id is a `Copy` newtype. Call and subscription ids come from per-endpoint counters, so
//! they are deterministic (no RNG) and never reused for the life of an [`Endpoint`].
//!
//! [`Endpoint`]: crate::Endpoint

use std::fmt;

/// A peer on the bus: one hub in one process.
///
/// Chosen by the application (or the adapter) when it creates an [`Endpoint`](crate::Endpoint);
/// it must be unique on the bus for the life of the process. Adapters derive it from the process
/// id and a random part, so a restarted process gets a new id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An outgoing call (unary, server stream or session) made by this endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The raw value, as it travels in frames (unique per calling peer).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A call received from a peer, as this endpoint names it locally.
///
/// Distinct from the caller's [`RequestId`]: two callers may use the same number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncomingId(pub(crate) u64);

impl IncomingId {
    /// The raw local value (for logs and maps).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A local subscription to a topic pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub(crate) u64);

impl SubscriptionId {
    /// The raw local value (for logs and maps).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Either side of a call, for the commands that work on both (stream items, credit, finish).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallRef {
    /// A call this endpoint made.
    Outgoing(RequestId),
    /// A call this endpoint received.
    Incoming(IncomingId),
}

impl From<RequestId> for CallRef {
    fn from(id: RequestId) -> Self {
        CallRef::Outgoing(id)
    }
}

impl From<IncomingId> for CallRef {
    fn from(id: IncomingId) -> Self {
        CallRef::Incoming(id)
    }
}

/// Hands out increasing ids; never wraps in practice (2^64 calls).
#[derive(Debug, Default)]
pub(crate) struct Counter(u64);

impl Counter {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A method's name (`service.method`) as a call carries it: one of up to 23 bytes is held
/// inline, so a call's record of its method costs no allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MethodName(smol_str::SmolStr);

impl MethodName {
    /// A name holding `method`.
    pub fn new(method: &str) -> Self {
        MethodName(smol_str::SmolStr::new(method))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for MethodName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for MethodName {
    fn from(method: &str) -> Self {
        MethodName::new(method)
    }
}
