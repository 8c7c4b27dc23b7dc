//! An in-memory transport: hubs in one process exchange frames through a shared registry.
//!
//! For tests (fast, deterministic delivery order) and for services inside one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proto::PeerId;
use proto::frame::WireFrame;

use crate::ingress::Ingress;
use crate::transport::{Connect, Sent, Transport, TransportError};

/// A bus in memory. Clone it to give every hub the same bus.
#[derive(Clone, Debug, Default)]
pub struct MemBus {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    peers: HashMap<PeerId, (String, Ingress)>,
}

impl MemBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connector that joins this bus.
    pub fn connector(&self) -> Box<dyn Connect> {
        Box::new(self.clone())
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Connect for MemBus {
    fn connect(
        self: Box<Self>,
        local: PeerId,
        name: &str,
        ingress: Ingress,
    ) -> Result<Box<dyn Transport>, TransportError> {
        let mut reg = self.registry();
        if reg.peers.values().any(|(n, _)| n == name) {
            return Err(TransportError::NameTaken { bus: "memory".into(), name: name.into() });
        }
        let alone = reg.peers.is_empty();
        reg.peers.insert(local, (name.to_string(), ingress));
        drop(reg);
        Ok(Box::new(MemTransport { bus: *self, local, closed: false, alone }))
    }
}

/// One hub's end of a [`MemBus`].
#[derive(Debug)]
pub struct MemTransport {
    bus: MemBus,
    local: PeerId,
    closed: bool,
    alone: bool,
}

impl Transport for MemTransport {
    fn send(&mut self, to: PeerId, frame: &WireFrame) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::Closed);
        }
        let ingress = self.bus.registry().peers.get(&to).map(|(_, i)| i.clone());
        if let Some(ingress) = ingress {
            ingress.deliver(self.local, frame.to_bytes());
        }
        Ok(())
    }

    fn try_send(&mut self, to: PeerId, frame: &WireFrame) -> Result<Sent, TransportError> {
        // Delivery in memory never waits for the receiver.
        self.send(to, frame).map(|()| Sent::Now)
    }

    fn broadcast(&mut self, frame: &WireFrame) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::Closed);
        }
        let ingresses: Vec<Ingress> =
            self.bus.registry().peers.iter().filter(|(p, _)| **p != self.local).map(|(_, (_, i))| i.clone()).collect();
        for ingress in ingresses {
            ingress.deliver(self.local, frame.to_bytes());
        }
        Ok(())
    }

    fn max_frame_len(&self) -> usize {
        usize::MAX
    }

    fn joined_empty_bus(&self) -> bool {
        self.alone
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let ingresses: Vec<Ingress> = {
                let mut reg = self.bus.registry();
                reg.peers.remove(&self.local);
                reg.peers.values().map(|(_, i)| i.clone()).collect()
            };
            // In one process a hub's end is certain: tell the others at once.
            for ingress in ingresses {
                ingress.peer_lost(self.local);
            }
        }
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.close();
    }
}
