//! The `Transport` trait: how frames move between peers, addressed by hsipc peer id.

use std::fmt;

use proto::PeerId;
use proto::frame::WireFrame;

use crate::ingress::Ingress;

/// A transport failed to move a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The frame is larger than this transport carries.
    #[error(
        "message of {len} bytes is over the transport's maximum of {max} bytes; raise max_message_len on every hub, or stream the data in pieces"
    )]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The transport's maximum.
        max: usize,
    },
    /// Joining the bus failed.
    #[error("cannot join bus `{bus}`; check that the bus name is right and /tmp is writable")]
    Join {
        /// The bus name.
        bus: String,
        /// What the bus reported.
        #[source]
        source: BusError,
    },
    /// Another hub on this bus already uses this name.
    #[error("a hub named `{name}` is already on bus `{bus}`; pick another name, or stop the other process")]
    NameTaken {
        /// The bus name.
        bus: String,
        /// The hub name.
        name: String,
    },
    /// The bus or hub name cannot be used.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The transport was closed.
    #[error("the transport is closed")]
    Closed,
    /// The bus refused to send a message.
    #[error("the bus refused a message")]
    Send(#[source] BusError),
    /// A shared-memory region for a large message could not be mapped.
    #[error("cannot map a shared-memory region for a large message")]
    SharedMemory(#[source] BusError),
    /// The bus library panicked (a bug in it); this hub can no longer use the bus.
    #[error("the bus library panicked while {during}; close this hub and join again")]
    Panicked {
        /// What the hub was doing.
        during: &'static str,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// An error reported by the bus library underneath a transport.
pub type BusError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Moves frames to peers. Received frames are pushed into the [`Ingress`] given at connect time.
///
/// A frame to send comes as a [`WireFrame`]: a header and, for a large payload, the payload
/// as a second piece that is the application's own buffer. Write the pieces one after the
/// other (`writev`, or one copy each into shared memory) rather than joining them first; the
/// receiving side gets the frame as one buffer. [`WireFrame::pieces`] may hold a lock (a
/// borrowed slice the application lends for the length of its call): hold the pieces of one
/// frame at a time, only across non-blocking writes or copies, and never while waiting for a
/// lock. A frame kept to be written later is cloned (`WireFrame::detached`): that is safe at
/// any time.
///
/// Peers are named by hsipc [`PeerId`], never by a bus-specific address, so a transport can
/// route a frame over the bus, over a direct peer-to-peer link it set up, or over a network,
/// without the engine or the adapters knowing. Implementations must deliver frames from one
/// peer to another in the order they were sent (or drop them): the protocol detects losses
/// but treats a reorder as a loss.
pub trait Transport: Send + fmt::Debug + 'static {
    /// Sends one frame to one peer. `Ok` means "handed over", not "delivered": a transport
    /// may keep a frame it cannot write at once (say, to a peer whose link is full) and write
    /// it on [`flush`](Self::flush), so that one slow peer does not hold up frames to others;
    /// it must then say so through [`waiting`](Self::waiting).
    fn send(&mut self, to: PeerId, frame: &WireFrame) -> Result<(), TransportError>;
    /// Sends one frame to one peer only if that needs no waiting, or hands it to that peer's
    /// own path ([`Sent::Queued`]): the engine then lets go of its send lock and writes it
    /// through [`PeerSender::send_queued`], so that threads sending to different peers write
    /// at the same time (a copy into shared memory, a wake-up message), each under its peer's
    /// lock alone. [`Sent::NotNow`] if it would have had to wait (nothing was sent, and the
    /// engine sends it with [`send`](Self::send), in order). The default never sends here.
    fn try_send(&mut self, to: PeerId, frame: &WireFrame) -> Result<Sent, TransportError> {
        let _ = (to, frame);
        Ok(Sent::NotNow)
    }
    /// Writes frames [`send`](Self::send) kept, as far as that goes without waiting.
    fn flush(&mut self) {}
    /// Housekeeping (closing idle links, say), called by the engine's writer now and then;
    /// never blocks.
    fn tick(&mut self) {}
    /// Whether frames wait to be flushed: the fds that become writable (or readable, for a peer
    /// that says it made room) when they can go on, and the latest instant to
    /// [`flush`](Self::flush) anyway (when a stuck peer is to be given up). The engine's writer
    /// sleeps on them. `None` when nothing waits.
    fn waiting(&self) -> Option<Waiting> {
        None
    }
    /// Sends one frame to every other peer.
    fn broadcast(&mut self, frame: &WireFrame) -> Result<(), TransportError>;
    /// The largest frame this transport carries.
    fn max_frame_len(&self) -> usize;
    /// Whether the bus had no other member when this transport joined, so the new peer has
    /// nobody to discover and can say at once that a service is missing. `false` when unsure.
    fn joined_empty_bus(&self) -> bool {
        false
    }
    /// Stops receiving and releases the bus. Idempotent.
    fn close(&mut self);
}

/// What [`Transport::try_send`] did with a frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum Sent {
    /// It went (or the transport keeps it, and says so through
    /// [`waiting`](Transport::waiting)).
    Now,
    /// It waits, in order, in its peer's own queue: write it with
    /// [`PeerSender::send_queued`] once the engine's send lock is let go.
    Queued(std::sync::Arc<dyn PeerSender>),
    /// Not sent: it would have had to wait.
    NotNow,
}

/// One peer's own path out of a transport, written through `&self` by whichever thread
/// queued a frame for it (see [`Sent::Queued`]), with no lock held but the peer's own.
///
/// Frames go in the order they were queued, whoever writes them: a thread that finds another
/// writing to the same peer leaves its frames to it.
pub trait PeerSender: Send + Sync + fmt::Debug {
    /// Writes what is queued for this peer, as far as that goes without waiting, and never
    /// blocks. `true` if frames are left for the transport's [`flush`](Transport::flush) (the
    /// engine then wakes its writer).
    fn send_queued(&self) -> bool;
}

/// What a transport's kept frames wait for (see [`Transport::waiting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waiting {
    /// Fds to poll for writability.
    pub fds: Vec<std::os::fd::RawFd>,
    /// Fds to poll for readability (a peer that says it has made room).
    pub readable: Vec<std::os::fd::RawFd>,
    /// Flush at this instant at the latest.
    pub until: std::time::Instant,
}

impl Waiting {
    /// Waits for `writable` fds to become writable and `readable` ones readable, until `until`
    /// at the latest.
    pub fn new(
        writable: Vec<std::os::fd::RawFd>,
        readable: Vec<std::os::fd::RawFd>,
        until: std::time::Instant,
    ) -> Self {
        Waiting { fds: writable, readable, until }
    }
}

/// Opens a [`Transport`] for one hub.
pub trait Connect: Send + fmt::Debug + 'static {
    /// Joins as peer `local` named `name`, delivering received frames into `ingress`.
    fn connect(
        self: Box<Self>,
        local: PeerId,
        name: &str,
        ingress: Ingress,
    ) -> Result<Box<dyn Transport>, TransportError>;
}
