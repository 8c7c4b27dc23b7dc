//! The engine's one queue: frames from the transport and commands from the application.
//!
//! Bounded. The transport's reader never blocks on it: when it is full, a received frame is
//! dropped and counted (the protocol then reports a timeout, a lost stream item or missed
//! events), so a slow process never stalls the bus for the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use proto::PeerId;

use crate::engine::Command;

/// One piece of mail for the engine.
#[derive(Debug)]
pub enum Mail {
    /// A frame from a peer.
    Frame {
        /// Who sent it.
        from: PeerId,
        /// The frame.
        bytes: Bytes,
    },
    /// The transport learned that a peer is gone.
    PeerLost(PeerId),
    /// A command from the application.
    Command(Command),
    /// Close the hub.
    Shutdown,
}

/// Where a transport delivers what it receives. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: flume::Sender<Mail>,
    dropped: Arc<AtomicU64>,
}

impl Inbox {
    pub(crate) fn new(tx: flume::Sender<Mail>) -> Self {
        Inbox {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Delivers a frame, or drops it (counted) if the engine is that far behind.
    /// Returns false once the engine is gone.
    pub fn deliver(&self, from: PeerId, bytes: Bytes) -> bool {
        self.push(Mail::Frame { from, bytes })
    }

    /// Reports that a peer is gone.
    pub fn peer_lost(&self, peer: PeerId) -> bool {
        self.push(Mail::PeerLost(peer))
    }

    /// Frames dropped because the mailbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, mail: Mail) -> bool {
        match self.tx.try_send(mail) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        "hsipc engine is behind: dropping received frames"
                    );
                }
                true
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        }
    }
}
