//! The hub builder: every setting, its default, and starting the engine with them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use proto::PeerId;

use super::core::HubCore;
use super::registry::Registry;
use super::runtime::{Runtime, RuntimeKind};
use crate::engine::Qos;
use crate::engine::{Engine, EngineConfig};
use crate::error::Result;
use crate::ipmb::{IpmbBus, IpmbConfig};
use crate::transport::Connect;

/// The bus joined when neither [`HubBuilder::bus`] nor `HSIPC_BUS` names one.
pub const DEFAULT_BUS: &str = "hsipc";

/// A hub's settings, as the builder collected them.
#[non_exhaustive]
pub struct Settings {
    /// The hub's name, unique on its bus.
    pub name: String,
    /// The bus, if set explicitly.
    pub bus: Option<String>,
    /// The engine's and the protocol's settings.
    pub engine: EngineConfig,
    /// Largest message sent or accepted, set in both the protocol and the transport.
    pub max_message_len: usize,
    /// Timeout of calls made without one.
    pub default_timeout: Duration,
    /// Threads that run blocking handlers (on the blocking hub, every handler).
    pub workers: usize,
    /// Served calls accepted and not yet answered before more are refused as busy.
    pub max_pending_calls: usize,
    /// How `subscribe` delivers events.
    pub subscription_qos: Qos,
    /// How long a publish waits for room or for a reliable subscriber's credit.
    pub publish_timeout: Duration,
    /// How long a serving stream's send waits for the reader's credit.
    pub stream_stall_timeout: Duration,
    /// Whether traffic to a peer moves onto a direct lane (ipmb transport only).
    pub direct_lanes: bool,
    transport: Option<Box<dyn Connect>>,
}

/// Configures and creates a hub. `K` is the kind of hub (blocking, tokio, smol); every kind
/// has the same settings.
///
/// ```no_run
/// # fn f<K: hsipc_transport::hub::RuntimeKind>() -> hsipc_transport::Result<()> {
/// use std::time::Duration;
/// let hub = hsipc_transport::hub::HubBuilder::<K>::new("sensor-reader")
///     .bus("plant-7")
///     .default_timeout(Duration::from_secs(5))
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct HubBuilder<K> {
    settings: Settings,
    _kind: PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for HubBuilder<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBuilder").field("settings", &self.settings).finish()
    }
}

impl<K: RuntimeKind> HubBuilder<K> {
    /// A builder for a hub named `name` (unique on its bus).
    pub fn new(name: &str) -> Self {
        HubBuilder {
            settings: Settings {
                name: name.to_string(),
                bus: None,
                engine: EngineConfig::default(),
                max_message_len: 32 << 20,
                default_timeout: Duration::from_secs(30),
                workers: 8,
                max_pending_calls: 1024,
                subscription_qos: Qos::Reliable,
                publish_timeout: Duration::from_secs(10),
                stream_stall_timeout: Duration::from_secs(60),
                direct_lanes: true,
                transport: None,
            },
            _kind: PhantomData,
        }
    }

    /// The bus to join. Default: the `HSIPC_BUS` environment variable, else `"hsipc"`.
    pub fn bus(mut self, bus: impl Into<String>) -> Self {
        self.settings.bus = Some(bus.into());
        self
    }

    /// Timeout of `call` and of each item of `call_stream`. Default 30 s.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.settings.default_timeout = timeout;
        self
    }

    /// Threads that run blocking handlers. Default 8. (Async handlers on tokio and smol run
    /// as tasks; this bounds only the blocking ones.)
    pub fn workers(mut self, n: usize) -> Self {
        self.settings.workers = n.max(1);
        self
    }

    /// Served calls accepted and not yet answered (running or queued) before more are
    /// refused with [`Error::ServerBusy`](crate::Error::ServerBusy) at their callers. One
    /// caller may have three quarters of them at most: a caller that keeps streams or
    /// sessions open (or floods the hub) leaves the others a quarter. Default 1024.
    pub fn max_pending_calls(mut self, n: usize) -> Self {
        self.settings.max_pending_calls = n.max(1);
        self
    }

    /// How often the hub announces itself, and after how long a silent peer is considered
    /// dead. Defaults 250 ms and 3 s. (A peer whose process exits is noticed sooner, through
    /// its process id.)
    pub fn heartbeat(mut self, interval: Duration, peer_timeout: Duration) -> Self {
        self.settings.engine.proto.heartbeat_interval = interval;
        self.settings.engine.proto.peer_timeout = peer_timeout;
        self
    }

    /// Largest message sent or accepted (payload plus a small header). Default 32 MiB. Set the
    /// same on every hub of a bus.
    pub fn max_message_len(mut self, n: usize) -> Self {
        self.settings.max_message_len = n;
        self
    }

    /// How [`subscribe`](crate::hub::AsyncHub::subscribe) delivers events (`subscribe_with`
    /// chooses per subscription). Default [`Qos::Reliable`]: nothing is lost, publishers are
    /// held back by a slow subscriber.
    pub fn subscription_qos(mut self, qos: Qos) -> Self {
        self.settings.subscription_qos = qos;
        self
    }

    /// Events from one publisher this hub's reliable subscriptions may have queued and not yet
    /// taken (the event credit window it grants each publisher). Default 1024. A larger window
    /// absorbs longer bursts without holding publishers back (and a publisher waits for credit
    /// less often: more events a second), at the cost of memory; the window in bytes
    /// ([`event_window_bytes`](Self::event_window_bytes)) bounds that memory whatever the
    /// events' size.
    pub fn event_window(mut self, n: u32) -> Self {
        self.settings.engine.proto.event_window = n.max(1);
        self
    }

    /// Bytes of event payloads from one publisher this hub's reliable subscriptions may have
    /// queued and not yet taken. Default 16 MiB: 1024 events of up to 16 KiB, or 16 of 1 MiB,
    /// are in flight at once (a 1 MiB event stream still goes at over 10 GiB/s). An event
    /// larger than the whole window still goes, once the subscriber has taken everything before
    /// it. `0` bounds nothing (only the count of [`event_window`](Self::event_window) holds;
    /// peers from before this setting announce none). A subscriber of large events (camera
    /// frames of 4 MiB, say) that wants eight in flight sets `event_window_bytes(32 << 20)`.
    pub fn event_window_bytes(mut self, bytes: u64) -> Self {
        self.settings.engine.proto.event_window_bytes = bytes;
        self
    }

    /// How long a publish waits for room in the send queue or for a reliable subscriber's
    /// credit. Default 10 s. Then a subscriber still without credit is cut off (it is told, and
    /// the publisher does not wait for it again until it catches up); a send queue still full
    /// fails the publish with [`Error::LocalLimit`](crate::Error::LocalLimit).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.settings.publish_timeout = timeout;
        self
    }

    /// Stream items in flight per stream this hub reads (the credit window). Default 64.
    pub fn stream_window(mut self, n: u32) -> Self {
        self.settings.engine.proto.stream_window = n.max(1);
        self
    }

    /// How long a serving stream's send waits for the reader's credit. Default 60 s.
    pub fn stream_stall_timeout(mut self, timeout: Duration) -> Self {
        self.settings.stream_stall_timeout = timeout;
        self
    }

    /// Whether traffic to a peer moves onto a direct lane (a socket pair of the two hubs', set
    /// up over the bus: faster, and independent of ipmb's bus controller) or stays on the bus.
    /// Default true.
    pub fn direct_lanes(mut self, on: bool) -> Self {
        self.settings.direct_lanes = on;
        self
    }

    /// Uses another transport instead of the ipmb bus (e.g. [`MemBus`](crate::MemBus) for
    /// tests, or hubs inside one process).
    pub fn transport(mut self, connect: Box<dyn Connect>) -> Self {
        self.settings.transport = Some(connect);
        self
    }

    /// Joins the bus and starts the hub.
    pub fn build(self) -> Result<K::Hub> {
        let runtime = K::runtime(&self.settings)?;
        Self::start(self.settings, runtime).map(Into::into)
    }

    /// Joins the bus without blocking the calling task: joining (normally milliseconds, up to
    /// the join timeout on a wedged bus) runs on a thread of its own while the task waits.
    pub async fn build_async(self) -> Result<K::Hub> {
        // The runtime is taken here, on the caller's thread (tokio's lives in a thread-local).
        let runtime = K::runtime(&self.settings)?;
        let settings = self.settings;
        let (tx, rx) = flume::bounded(1);
        std::thread::Builder::new()
            .name("hsipc-join".into())
            .spawn(move || {
                let _ = tx.send(Self::start(settings, runtime));
            })
            .map_err(|source| crate::TransportError::Io { what: "spawning the thread that joins the bus", source })?;
        match rx.recv_async().await {
            Ok(core) => core.map(Into::into),
            Err(_) => Err(crate::Error::Runtime("the thread joining the bus ended without an answer")),
        }
    }

    fn start(mut s: Settings, runtime: Arc<dyn Runtime>) -> Result<HubCore> {
        let bus = s.bus.clone().or_else(|| std::env::var("HSIPC_BUS").ok()).unwrap_or_else(|| DEFAULT_BUS.into());
        s.engine.proto.max_frame_len = s.max_message_len;
        s.engine.handlers_send_inline = runtime.handlers_send_inline();
        let connect = match s.transport.take() {
            Some(c) => c,
            None => {
                let mut cfg = IpmbConfig::new(bus);
                cfg.max_message_len = s.max_message_len;
                cfg.direct_lanes = s.direct_lanes;
                cfg.lane_runner = runtime.lane_runner();
                IpmbBus::new(cfg).connector()
            }
        };
        let registry = Arc::new(Registry::new(runtime.clone(), s.max_pending_calls, s.stream_stall_timeout));
        let engine = Engine::start(s.engine.clone(), connect, new_peer_id(), &s.name, registry.clone())?;
        runtime.idle_lanes(engine.idle_lanes());
        Ok(HubCore::new(engine, registry, &s))
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("bus", &self.bus)
            .field("max_message_len", &self.max_message_len)
            .field("default_timeout", &self.default_timeout)
            .finish_non_exhaustive()
    }
}

/// A peer id no other hub will have: random, mixed with the process id and the time.
fn new_peer_id() -> PeerId {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    PeerId(h.finish())
}
