//! What the endpoint asks the driver to do: transmit frames and deliver events.

use std::time::Instant;

use bytes::Bytes;

use crate::error::CallError;
use crate::id::{CallRef, IncomingId, MethodName, PeerId, RequestId, SubscriptionId};
use crate::topic::Topic;

/// Input from the transport.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Input {
    /// A frame received from a peer.
    Frame {
        /// The peer that sent it, as the transport knows it.
        from: PeerId,
        /// The frame's bytes (payloads are sliced from it, not copied).
        bytes: Bytes,
    },
    /// A frame received from a peer whose bytes that peer may still change: they lie in
    /// shared memory it writes (a transport's shared pool). Decoded with
    /// [`Frame::decode_shared`](crate::frame::Frame::decode_shared): what the protocol parses is
    /// copied out first; the payload is passed on as is.
    SharedFrame {
        /// The peer that sent it, as the transport knows it.
        from: PeerId,
        /// The frame's bytes.
        bytes: Bytes,
    },
    /// A [`SharedFrame`](Input::SharedFrame) that stands for another frame of its fan-out (see
    /// [`FanOut`](crate::frame::FanOut)): the frames of one publish to several peers differ only
    /// in their flags and sequence number, so a transport may hand every receiver the one copy
    /// it made of the first, with the receiver's own flags and sequence number beside it.
    /// Decoded with [`Frame::decode_shared_stamped`](crate::frame::Frame::decode_shared_stamped).
    StampedFrame {
        /// The peer that sent it, as the transport knows it.
        from: PeerId,
        /// The frame's bytes, as the first frame of the fan-out had them.
        bytes: Bytes,
        /// This receiver's flags and sequence number.
        stamp: crate::frame::Stamp,
    },
    /// The transport learned that a peer is gone (e.g. its process exited).
    PeerLost(PeerId),
    /// The transport found that a peer broke the protocol beneath the frames: a malformed
    /// message in the connection it reads from that peer alone (a transport's direct lane, say),
    /// which it has dropped. The peer is cut off as a lost one is (it is known again from its
    /// next announce), but what it had open fails with [`CallError::Protocol`]`(why)` rather
    /// than [`CallError::PeerLost`]: the peer misbehaved, it did not die.
    PeerBroke {
        /// The peer.
        peer: PeerId,
        /// What it did, for the application's error: "its lane carried …".
        why: &'static str,
    },
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// One peer. This may be the local peer itself (a call to a service this endpoint
    /// serves): the driver then feeds the frame straight back into
    /// [`handle_input`](crate::Endpoint::handle_input).
    Peer(PeerId),
    /// Every peer on the bus (announce and goodbye), not the local one.
    All,
}

/// A frame to send.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dest: Dest,
    /// The encoded frame.
    pub frame: crate::frame::WireFrame,
}

/// One output of the endpoint: drain them with [`poll_output`](crate::Endpoint::poll_output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this frame.
    Transmit(Transmit),
    /// Tell the application.
    Event(Event),
}

/// The shape of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallMode {
    /// One request, one response.
    Unary,
    /// One request, a stream of items from the server, then an end.
    ServerStream,
    /// One request, then items and credit both ways; the server's end closes the call.
    Session,
}

/// Why a call this endpoint was serving went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The caller cancelled it (or dropped its stream).
    CallerCancelled,
    /// The caller's deadline passed: it no longer waits for the answer.
    DeadlineExpired,
    /// The caller left the bus or died.
    PeerLost,
    /// The caller's stream to us lost an item or broke the protocol.
    Broken(CallError),
    /// This endpoint was closed.
    Closed,
}

/// Why a peer left the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// It said goodbye.
    Goodbye,
    /// It was silent for longer than [`Config::peer_timeout`](crate::Config::peer_timeout).
    Expired,
    /// The transport reported it gone ([`Input::PeerLost`]).
    Lost,
    /// The transport found it broke the protocol beneath the frames ([`Input::PeerBroke`]),
    /// and why.
    Broke(&'static str),
}

/// Something the application should know. Events are past-tense facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A unary call finished. Wake its caller with the outcome; the id is then free.
    Response {
        /// The call.
        id: RequestId,
        /// The response body, or why the call failed.
        outcome: Result<Bytes, CallError>,
    },
    /// A stream item arrived, in order. Queue it for the reader; when the reader has taken
    /// items, report that with [`consumed`](crate::Endpoint::consumed) so more credit flows.
    Item {
        /// The call the item belongs to (outgoing: server stream or session; incoming: session).
        call: CallRef,
        /// The item.
        body: Bytes,
    },
    /// A server stream or session this endpoint called has ended (after all its items).
    StreamEnded {
        /// The call.
        id: RequestId,
        /// `Ok` for a clean end, or why it failed.
        outcome: Result<(), CallError>,
    },
    /// A stream that was [`Blocked`](crate::CommandError::Blocked) has credit again.
    Writable {
        /// The call whose sending side can continue.
        call: CallRef,
    },
    /// A peer called a service this endpoint serves. Run the handler and answer with
    /// [`respond`](crate::Endpoint::respond) (unary) or
    /// [`send_item`](crate::Endpoint::send_item) and [`finish`](crate::Endpoint::finish)
    /// (streams), before `deadline`.
    RequestReceived {
        /// The call, as this endpoint names it.
        id: IncomingId,
        /// The caller.
        from: PeerId,
        /// The method called (`service.method`); a short name (up to 23 bytes) is held inline.
        method: MethodName,
        /// The request body.
        body: Bytes,
        /// When the caller gives up.
        deadline: Instant,
        /// The shape of the call.
        mode: CallMode,
    },
    /// The caller of a session finished sending items (a clean end of its half).
    InputFinished {
        /// The call.
        id: IncomingId,
    },
    /// A call this endpoint was serving is gone; stop its handler. Any answer is now refused
    /// with [`UnknownCall`](crate::CommandError::UnknownCall).
    IncomingCancelled {
        /// The call.
        id: IncomingId,
        /// Why.
        reason: CancelReason,
    },
    /// An event arrived on a topic matching one or more local subscriptions.
    Published {
        /// The publisher.
        from: PeerId,
        /// The topic.
        topic: Topic,
        /// The event body.
        body: Bytes,
        /// The local subscriptions it matches.
        subscriptions: Matches,
        /// How many events from this publisher to this endpoint were lost before this one.
        missed: u64,
        /// It took one of this endpoint's event credits (a reliable subscription matches it):
        /// report it, with `body.len()` bytes, with
        /// [`events_taken`](crate::Endpoint::events_taken) once taken.
        credited: bool,
    },
    /// A publisher cut this endpoint off (its reliable subscriptions had given no credit back
    /// for the publisher's timeout) and dropped events meant for it. Credit is the endpoint's,
    /// not one subscription's, so every subscription is named: tell them all now; later events
    /// arrive as usual.
    EventsLost {
        /// The publisher.
        from: PeerId,
        /// The topic of the last event lost.
        topic: Topic,
        /// How many events were lost.
        missed: u64,
        /// Every local subscription.
        subscriptions: Vec<SubscriptionId>,
    },
    /// A reliable subscriber gave this publisher credit back: a publish refused with
    /// [`NoEventCredit`](crate::CommandError::NoEventCredit) may be tried again.
    EventCredit {
        /// The subscriber.
        peer: PeerId,
    },
    /// A new peer joined the bus (or was heard from for the first time).
    PeerJoined {
        /// The peer.
        peer: PeerId,
        /// Its name.
        name: String,
        /// Its process id.
        pid: u32,
    },
    /// A peer's services or subscriptions changed.
    PeerChanged {
        /// The peer.
        peer: PeerId,
    },
    /// This endpoint has heard from every peer the bus told it about (or waited
    /// [`Config::discovery_window`](crate::Config::discovery_window)): from now on, a service
    /// missing from the directory is missing from the bus. Calls that failed with
    /// `NoSuchService` while discovery was under way may be retried once now.
    DiscoveryComplete,
    /// A peer left the directory; its calls and streams have already failed with
    /// [`CallError::PeerLost`].
    PeerLeft {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: LeaveReason,
    },
}

/// The local subscriptions an event matches: a few, held inline (an event matching up to four
/// costs no allocation for them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matches(smallvec::SmallVec<[SubscriptionId; 4]>);

impl Matches {
    /// The matches the topic index found.
    pub(crate) fn new(ids: smallvec::SmallVec<[SubscriptionId; 4]>) -> Self {
        Matches(ids)
    }
}

impl std::ops::Deref for Matches {
    /// The subscriptions, in no particular order.
    type Target = [SubscriptionId];

    fn deref(&self) -> &[SubscriptionId] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Matches {
    type Item = &'a SubscriptionId;
    type IntoIter = std::slice::Iter<'a, SubscriptionId>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
