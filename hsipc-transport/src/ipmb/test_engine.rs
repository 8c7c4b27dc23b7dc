//! For tests of the transport's readers: an engine on a memory bus, and its ingress, for a
//! reader to hand frames to.

use std::sync::{Arc, Mutex};

use proto::PeerId;

use crate::engine::{Dispatcher, Engine, EngineConfig, Handle, IncomingCall, Reject};
use crate::ingress::Ingress;
use crate::transport::{Connect, Transport};

/// Connects through another connector and keeps the engine's ingress, for a reader to use.
#[derive(Debug)]
struct KeepIngress(Box<dyn Connect>, Arc<Mutex<Option<Ingress>>>);

impl Connect for KeepIngress {
    fn connect(
        self: Box<Self>,
        local: PeerId,
        name: &str,
        ingress: Ingress,
    ) -> Result<Box<dyn Transport>, crate::transport::TransportError> {
        *self.1.lock().unwrap() = Some(ingress.clone());
        self.0.connect(local, name, ingress)
    }
}

struct NoCalls;

impl Dispatcher for NoCalls {
    fn dispatch(&self, _: IncomingCall, _: &Handle) -> Result<(), Reject> {
        Ok(())
    }
}

/// An engine (peer 1) whose input a test's reader hands over through the ingress returned.
pub(super) fn engine(config: EngineConfig) -> (Engine, Ingress) {
    engine_on(&crate::mem::MemBus::new(), config)
}

/// [`engine`], and beside it on the same bus peer 2, serving `svc` and never answering.
pub(super) fn engine_and_server() -> (Engine, Ingress, Engine) {
    let bus = crate::mem::MemBus::new();
    let (engine, ingress) = engine_on(&bus, EngineConfig::default());
    let server = Engine::start(EngineConfig::default(), bus.connector(), PeerId(2), "test-server", Arc::new(NoCalls));
    let server = server.unwrap();
    server.handle().serve("svc").unwrap();
    (engine, ingress, server)
}

fn engine_on(bus: &crate::mem::MemBus, config: EngineConfig) -> (Engine, Ingress) {
    let kept = Arc::new(Mutex::new(None));
    let connect = Box::new(KeepIngress(bus.connector(), kept.clone()));
    let engine = Engine::start(config, connect, PeerId(1), "test-reader", Arc::new(NoCalls)).unwrap();
    let ingress = kept.lock().unwrap().take().unwrap();
    (engine, ingress)
}
