//! The engine: the one piece that pumps frames between a [`Transport`] and a protocol
//! [`Endpoint`], runs its timers, and wakes whoever waits. Every adapter uses it as it is.
//!
//! # Threads and locks
//!
//! The endpoint and everything around it (waiting callers, stream readers, subscriptions) sit
//! in one `Core` behind a mutex that is never held across I/O or a blocking wait. Three kinds
//! of threads drive it:
//!
//! - **The transport's reader** delivers each received frame straight into the core
//!   ([`Inbox::deliver`]): the protocol runs, a response wakes its caller, a request goes to
//!   the adapter's [`Dispatcher`]. The reader never sends (a send can block when the bus is
//!   stalled); frames the protocol wants sent are queued for the writer.
//! - **Application threads** run commands in the core directly (a call that cannot start fails
//!   at once, with no thread hop). A caller's frames are sent by the writer, so a caller never
//!   blocks in the bus and always gets its answer or its timeout at its deadline. A handler's
//!   answers are sent by the handler's own thread when the send path is free, which saves a
//!   hop on the server side.
//! - **The engine thread** (the writer) sends queued frames, runs the protocol's timers, and
//!   polls peer processes for death.
//!
//! Sends happen under a second lock, taken only with `try_lock` by everyone but the closing
//! engine, and whoever holds it sends everything queued, in order: frames leave in the order
//! the protocol produced them, and no thread ever waits for another one's send.
//!
//! Each thread hop costs tens of microseconds on a small virtual machine (a sleeping thread
//! has to be woken), so a unary call crosses exactly three: caller → writer, server reader →
//! handler, client reader → caller.

mod api;
mod core;
mod handle;
mod queue;
mod receiver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::{Config, Dest, Endpoint, Input, PeerId};

pub use self::api::{Delivery, Dispatcher, IncomingCall, PeerSummary, Reject, StreamMsg};
use self::core::Core;
pub use self::handle::{Handle, ItemSent};
pub use self::queue::{EventReceiver, Overflow};
pub use self::receiver::ItemReceiver;
use crate::error::Result;
use crate::inbox::Inbox;
use crate::transport::{Connect, Transport, TransportError};

/// Settings of one engine (one hub).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The protocol's limits and timings.
    pub proto: Config,
    /// Events queued per subscription before the newest are dropped (and reported as missed).
    /// Default 1024.
    pub subscription_capacity: usize,
    /// Frames queued for sending before more are dropped (only when the bus is stalled).
    /// Default 4096.
    pub outbound_capacity: usize,
    /// Bytes queued for sending before more frames are dropped. Default 64 MiB.
    pub outbound_max_bytes: usize,
    /// How often the engine checks whether known peer processes are still alive. Default 100 ms.
    pub liveness_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            proto: Config::default(),
            subscription_capacity: 1024,
            outbound_capacity: 4096,
            outbound_max_bytes: 64 << 20,
            liveness_interval: Duration::from_millis(100),
        }
    }
}

/// What the engine's threads share.
pub(crate) struct Shared {
    core: Mutex<Core>,
    /// The send lock: whoever holds it sends everything queued. `None` once closed.
    transport: Mutex<Option<Box<dyn Transport>>>,
    wake: flume::Sender<()>,
    shutdown: AtomicBool,
    local: PeerId,
    name: Box<str>,
    max_frame_len: usize,
    window: u32,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("local", &self.local).field("name", &self.name).finish_non_exhaustive()
    }
}

/// Who finishes a command: the writer thread, or the calling thread itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// Queue for the writer: the calling thread never blocks in the bus.
    Writer,
    /// Send from this thread if nobody else is sending (handler threads).
    Direct,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic in an adapter callback cannot leave the core half-updated in a way that
        // matters more than stopping the hub would; keep serving.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame from the transport (called by its reader thread).
    pub(crate) fn input(self: &Arc<Self>, from: PeerId, bytes: Bytes) {
        let now = Instant::now();
        let mut core = self.lock();
        if core.is_closed() {
            return;
        }
        core.input(now, from, bytes);
        self.finish(core, now, Sender::Writer);
    }

    /// The transport learned that a peer is gone.
    pub(crate) fn peer_lost(self: &Arc<Self>, peer: PeerId) {
        let now = Instant::now();
        let mut core = self.lock();
        if core.is_closed() {
            return;
        }
        let _ = core.endpoint.handle_input(now, Input::PeerLost(peer));
        self.finish(core, now, Sender::Writer);
    }

    /// Ends a change to the core: delivers its events, then has its frames sent.
    pub(crate) fn finish(self: &Arc<Self>, mut core: MutexGuard<'_, Core>, now: Instant, sender: Sender) {
        core.drain(now, self);
        let queued = core.has_outbound();
        let earlier_timer = core.needs_earlier_wake();
        drop(core);
        if queued && sender == Sender::Direct {
            self.flush();
        } else if queued || earlier_timer {
            let _ = self.wake.try_send(());
        }
    }

    /// Sends everything queued, unless another thread is already doing so (it will send ours
    /// too: the queue is shared and re-checked after every release).
    pub(crate) fn flush(&self) {
        loop {
            let Ok(mut transport) = self.transport.try_lock() else { return };
            self.send_all(transport.as_deref_mut());
            drop(transport);
            if !self.lock().has_outbound() {
                return;
            }
        }
    }

    /// Sends the queue out with the send lock held.
    fn send_all(&self, mut transport: Option<&mut (dyn Transport + 'static)>) {
        loop {
            let batch = self.lock().take_outbound();
            if batch.is_empty() {
                return;
            }
            let Some(t) = transport.as_deref_mut() else { continue };
            for (dest, frame) in batch {
                let r = match dest {
                    Dest::Peer(p) => t.send(p, &frame),
                    Dest::All => t.broadcast(&frame),
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "transport failed to send a frame");
                }
            }
        }
    }
}

/// A running engine: its writer thread, and a [`Handle`] to command it.
#[derive(Debug)]
pub struct Engine {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    stopped: flume::Receiver<()>,
}

impl Engine {
    /// Connects the transport and starts the engine for peer `local` named `name`.
    pub fn start(
        config: EngineConfig,
        connect: Box<dyn Connect>,
        local: PeerId,
        name: &str,
        dispatcher: Box<dyn Dispatcher>,
    ) -> Result<Engine> {
        let now = Instant::now();
        let pid = std::process::id();
        let endpoint = Endpoint::new(config.proto.clone(), local, name, pid, now);
        let (wake, wake_rx) = flume::bounded(1);
        let shared = Arc::new(Shared {
            max_frame_len: config.proto.max_frame_len,
            window: config.proto.stream_window,
            core: Mutex::new(Core::new(endpoint, dispatcher, config, now)),
            transport: Mutex::new(None),
            wake,
            shutdown: AtomicBool::new(false),
            local,
            name: name.into(),
        });
        let transport = connect.connect(local, name, Inbox::new(Arc::downgrade(&shared)))?;
        if transport.joined_empty_bus() {
            shared.lock().endpoint.finish_discovery(Instant::now());
        }
        *shared.transport.lock().unwrap_or_else(|e| e.into_inner()) = Some(transport);
        let handle = Handle::from_shared(shared.clone());
        {
            let core = shared.lock();
            shared.finish(core, Instant::now(), Sender::Direct); // the first announce
        }
        let (stopped_tx, stopped) = flume::bounded(1);
        let thread = std::thread::Builder::new()
            .name(format!("hsipc-engine-{name}"))
            .spawn(move || {
                run(&shared, &wake_rx);
                let _ = stopped_tx.send(());
            })
            .map_err(|source| TransportError::Io { what: "spawning the engine thread", source })?;
        Ok(Engine { handle, thread: Some(thread), stopped })
    }

    /// A handle to command the engine.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Says goodbye, stops the engine and the transport, and waits (at most `timeout`) for the
    /// thread to finish. Idempotent.
    pub fn shutdown(&mut self, timeout: Duration) {
        if let Some(thread) = self.thread.take() {
            self.handle.shared().shutdown.store(true, Ordering::SeqCst);
            let _ = self.handle.shared().wake.try_send(());
            match self.stopped.recv_timeout(timeout) {
                Ok(()) | Err(flume::RecvTimeoutError::Disconnected) => {
                    let _ = thread.join();
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    tracing::warn!("hsipc engine did not stop within {timeout:?} (is the bus stalled?)");
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

/// The engine thread: wait for a wake-up or the next deadline, run timers, send.
fn run(shared: &Arc<Shared>, wake: &flume::Receiver<()>) {
    loop {
        let deadline = shared.lock().sleep_until();
        match wake.recv_deadline(deadline) {
            Ok(()) | Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        let mut core = shared.lock();
        core.awake(now);
        shared.finish(core, now, Sender::Direct);
    }
    // Goodbye: fail what is open, send the goodbye, release the bus.
    let now = Instant::now();
    let mut core = shared.lock();
    core.close();
    core.drain(now, shared);
    drop(core);
    let mut transport = shared.transport.lock().unwrap_or_else(|e| e.into_inner());
    shared.send_all(transport.as_deref_mut());
    if let Some(mut t) = transport.take() {
        t.close();
    }
}
