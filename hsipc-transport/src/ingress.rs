//! The transport's way into its engine: where received frames and peer deaths go.

use std::sync::Weak;

use bytes::Bytes;
use proto::PeerId;

use crate::engine::{Landed, Shared};

/// A transport's way into its engine. Cheap to clone. Not a queue: nothing waits here.
///
/// [`deliver`](Self::deliver) runs the frame through the protocol at once, on the calling
/// thread, and hands the results on (a response to its waiting caller, a request to the
/// dispatcher) without queueing on the way: every extra thread hop costs tens of
/// microseconds. It never waits for I/O: frames the protocol wants sent in reply are queued
/// for the engine's writer, so a transport's reader thread never blocks in a send, and a slow
/// application never stops the reader from draining the bus.
#[derive(Clone, Debug)]
pub struct Ingress {
    shared: Weak<Shared>,
}

impl Ingress {
    pub(crate) fn new(shared: Weak<Shared>) -> Self {
        Ingress { shared }
    }

    /// Runs `f` on the engine: `false` once the engine is gone.
    fn to_engine(&self, f: impl FnOnce(&Shared)) -> bool {
        self.shared.upgrade().map(|shared| f(&shared)).is_some()
    }

    /// Delivers a frame from `from`. Returns false once the engine is gone (stop reading).
    pub fn deliver(&self, from: PeerId, bytes: Bytes) -> bool {
        self.to_engine(|shared| shared.input(from, bytes))
    }

    /// Delivers a frame from `from` whose bytes `from` may still change: they lie in shared
    /// memory it writes (a pool both map). What the protocol parses (the frame's header and
    /// name) is copied out before it is checked; the payload is handed on as is, without a
    /// copy. Returns false once the engine is gone (stop reading).
    pub fn deliver_shared(&self, from: PeerId, bytes: Bytes) -> bool {
        self.deliver_landed(from, bytes, Landed::Shared)
    }

    /// [`deliver_shared`](Self::deliver_shared), for a frame that stands for another of its
    /// fan-out (see [`FanOut`](proto::frame::FanOut)): it is decoded with `stamp`'s flags and
    /// sequence number in place of its own. A transport hands every receiver of a large event
    /// the one copy of it it made, and each its own stamp. Returns false once the engine is
    /// gone (stop reading).
    pub fn deliver_stamped(&self, from: PeerId, bytes: Bytes, stamp: proto::frame::Stamp) -> bool {
        self.deliver_landed(from, bytes, Landed::Stamped(stamp))
    }

    /// Delivers a frame from `from` that landed where `landed` says (in this process's own
    /// memory: [`deliver`](Self::deliver); in memory `from` may still change:
    /// [`deliver_shared`](Self::deliver_shared); standing for another frame of its fan-out:
    /// [`deliver_stamped`](Self::deliver_stamped)). Returns false once the engine is gone.
    pub(crate) fn deliver_landed(&self, from: PeerId, bytes: Bytes, landed: Landed) -> bool {
        self.to_engine(|shared| shared.input_landed(from, bytes, landed))
    }

    /// Delivers frames from `from` in their order, all under one lock of the engine's state
    /// (cheaper than one [`deliver`](Self::deliver) each); `frames` is left empty. `None` once
    /// the engine is gone (stop reading); else whether they handed on requests or answers
    /// (woke threads that may read a lane themselves, see `Shared::commit`).
    pub(crate) fn deliver_all(&self, from: PeerId, frames: &mut Vec<Bytes>) -> Option<bool> {
        Some(self.shared.upgrade()?.input_all(from, frames.drain(..)))
    }

    /// Says that a blocking caller waiting for a reply from `from` may read `lane` itself.
    pub(crate) fn offer_caller_lane(&self, from: PeerId, lane: std::sync::Weak<dyn crate::engine::CallerLane>) {
        self.to_engine(|shared| shared.offer_caller_lane(from, lane));
    }

    /// The transport can no longer receive (its reader failed for good): rather than a hub that
    /// silently hears nothing (its calls would only time out), the engine closes, as after
    /// [`Engine::shutdown`](crate::Engine::shutdown): every open call, stream and wait
    /// fails with [`Error::Closed`](crate::Error::Closed) at once, and so does what the
    /// application does with the hub next. `why` is logged as an error.
    pub fn failed(&self, why: &str) {
        tracing::error!(why, "the transport can no longer receive: the hub closes; make a new one to go on");
        self.to_engine(Shared::begin_shutdown);
    }

    /// The process id a peer announced, if it is known.
    pub(crate) fn peer_pid(&self, peer: PeerId) -> Option<u32> {
        self.shared.upgrade()?.peer_pid(peer)
    }

    /// Reports that a peer is gone. Returns false once the engine is gone.
    pub fn peer_lost(&self, peer: PeerId) -> bool {
        self.to_engine(|shared| shared.peer_lost(peer))
    }

    /// Reports that a peer broke the transport's own protocol (a malformed message in a
    /// connection only that peer writes: `why` says what, as "its lane carried …"), and that
    /// the transport has dropped that connection. The peer is cut off as a lost one is, until
    /// its next announce, but its open calls fail with
    /// [`Error::Protocol`](crate::Error::Protocol) naming `why`, not with
    /// [`Error::PeerLost`](crate::Error::PeerLost): it misbehaved, it did not die. Returns
    /// false once the engine is gone.
    pub fn peer_broke(&self, peer: PeerId, why: &'static str) -> bool {
        self.to_engine(|shared| shared.peer_broke(peer, why))
    }
}
