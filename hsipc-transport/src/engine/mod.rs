//! The engine: the one piece that pumps frames between a [`Transport`] and a protocol
//! [`Endpoint`], runs its timers, and wakes whoever waits. Every adapter uses it as it is.
//!
//! # Threads and locks
//!
//! The endpoint and everything around it (waiting callers, stream readers, subscriptions,
//! served calls) sit in one [`State`] behind a mutex that is never held across I/O, a blocking
//! wait, or a wake-up of another thread. Four kinds of threads drive it:
//!
//! - **The transport's reader** hands each received frame to the engine ([`Ingress::deliver`];
//!   frames it finds together, in a lane's ring, go together under one lock and one commit):
//!   the protocol runs under the lock, and once the lock is released a response wakes its
//!   caller and a request goes to the [`Dispatcher`]. The reader never blocks in a send (a
//!   handler served inline runs on it, and answers the way callers send).
//! - **Application threads and tasks** run commands directly; a call that cannot start fails
//!   at once. They send their own frames when that needs no waiting (a frame into a direct
//!   lane, see the ipmb transport, whose own queue takes what the lane cannot take now); what
//!   would wait (the bus) goes to the writer, in order. So a caller never blocks in the
//!   transport and saves a thread hop whenever it can. Handlers of the blocking hub send their
//!   answers themselves (blocking, if they must); handlers on an async runtime send the same
//!   way callers do, never blocking an executor thread.
//! - **The writer thread** sends queued frames. It is the only thread that may block in the
//!   bus, and it holds no state lock while it does.
//! - **The clock thread** runs the protocol's timers, the engine's own deadlines (a stream
//!   sink waiting for credit, `wait_for_service`, a publish waiting for credit), the liveness
//!   check and the return of event credit for events not taken through a subscription's
//!   receiver (which gives its credit back itself). It never does I/O on the bus, so deadlines
//!   hold even when the bus is stalled: a caller is always answered by its deadline, and
//!   adapters need no timer of their own. It sleeps in `poll` on an eventfd and the peers'
//!   pidfds (see `alarm`): a peer's death wakes it at once, and an idle hub's clock wakes only
//!   for its heartbeat.
//!
//! Sends happen under a second lock, taken only with `try_lock` by everyone but the writer,
//! and whoever holds it sends everything queued, in order: frames leave in the order the
//! protocol produced them, and no thread that must not wait ever waits for another one's send
//! (the writer, and a blocking handler whose frame must wait for room, may wait for a peer's
//! lane while another thread writes into it). A frame for a peer
//! with a path of its own (a direct lane) is only handed to that path under this lock (a push,
//! no system call, no copy; see [`Sent::Queued`](crate::Sent::Queued)); the thread writes it
//! once it has let go ([`PeerSender`](crate::PeerSender), through `&self`, under that peer's
//! lock alone), so threads answering different peers copy and wake at the same time.
//!
//! Over direct lanes a unary call wakes four threads: the server's lane reader, the handler, the
//! client's lane reader, the caller (the caller and the handler write into the lanes
//! themselves). Over the bus it woke seven: the writer, ipmb's controller twice, each side's
//! reader, the handler and the caller.
//!
//! # Shutdown
//!
//! [`Engine::shutdown`] only raises a flag and wakes the clock thread; it never waits. The
//! clock fails everything open with [`Error::Closed`](crate::Error::Closed), the writer sends
//! the goodbye and releases the bus, and both threads end. [`Engine::stopped`] says when that
//! happened (at the latest about a second later, if the bus is stalled).

mod alarm;
mod caller_lane;
mod deferred;
mod dispatch;
mod event_credit;
mod handle;
mod idle_lanes;
mod item_sink;
mod pending;
mod reader_signal;
mod shared;
mod state;
mod stream_reader;
mod subscription;
mod waiters;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proto::{Config, Endpoint, PeerId};

use self::alarm::Alarm;
pub(crate) use self::caller_lane::{CallerLane, ReadingForACall, reading_for_a_call};
pub use self::dispatch::{CallContext, Dispatcher, IncomingCall, Reject};
pub use self::handle::{Handle, PeerSummary, Publish};
pub use self::idle_lanes::{AnswersHeld, HeldAnswers, IdleLanes};
pub use self::item_sink::{ItemSink, SessionSender};
pub use self::pending::{PendingCall, Waiter};
use self::shared::SendBy;
pub(crate) use self::shared::Shared;
use self::shared::Wakes;
pub(crate) use self::state::Landed;
use self::state::State;
pub use self::state::{Census, Stats};
pub use self::stream_reader::ItemReceiver;
pub use self::subscription::{Delivery, EventReceiver, Qos};
use crate::error::Result;
use crate::ingress::Ingress;
use crate::transport::{Connect, TransportError};

/// How long the clock waits for the writer to send the goodbye before it declares the engine
/// stopped anyway (the bus may be stalled).
const GOODBYE_WAIT: Duration = Duration::from_secs(1);
/// The longest the writer sleeps while frames wait in the transport.
const WAITING_RECHECK: Duration = Duration::from_millis(500);
/// The longest the writer sleeps otherwise.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// Settings of one engine (one hub).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The protocol's limits and timings.
    pub proto: Config,
    /// Frames queued for sending before more are dropped (only when the bus is stalled).
    /// Default 4096.
    pub outbound_capacity: usize,
    /// Bytes queued for sending before more frames are dropped. Default 64 MiB.
    pub outbound_max_bytes: usize,
    /// Whether handlers send their answers from their own thread when the send path is free
    /// (true for thread-pool handlers), or always through the writer (async runtimes, whose
    /// threads must never block in a stalled bus). Default true.
    pub handlers_send_inline: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            proto: Config::default(),
            outbound_capacity: 4096,
            outbound_max_bytes: 64 << 20,
            handlers_send_inline: true,
        }
    }
}

/// A running engine: its threads, and a [`Handle`] to command it.
///
/// Dropping it shuts the engine down without waiting (see [`shutdown`](Self::shutdown)).
#[derive(Debug)]
pub struct Engine {
    handle: Handle,
    stopped: flume::Receiver<Result<()>>,
}

impl Engine {
    /// Connects the transport and starts the engine for peer `local` named `name`; calls are
    /// handed to `dispatcher`.
    pub fn start(
        config: EngineConfig,
        connect: Box<dyn Connect>,
        local: PeerId,
        name: &str,
        dispatcher: Arc<dyn Dispatcher>,
    ) -> Result<Engine> {
        let now = Instant::now();
        let endpoint = Endpoint::new(config.proto.clone(), local, name, std::process::id(), now);
        let writer_alarm =
            Alarm::new().map_err(|source| TransportError::Io { what: "creating the writer's eventfd", source })?;
        let alarm =
            Alarm::new().map_err(|source| TransportError::Io { what: "creating the clock's eventfd", source })?;
        let state = State::new(endpoint, config.clone(), alarm.clone());
        let wakes = Wakes { writer: writer_alarm.clone(), clock: alarm.clone() };
        let shared = Arc::new_cyclic(|me| Shared::new(me.clone(), state, dispatcher, wakes, name));
        let transport = connect.connect(local, name, Ingress::new(Arc::downgrade(&shared)))?;
        if transport.joined_empty_bus() {
            shared.state().endpoint.finish_discovery(Instant::now());
        }
        shared.set_transport(transport);
        shared.commit(shared.state(), Instant::now(), SendBy::Inline); // the first announce
        let (stopped_tx, stopped) = flume::bounded(1);
        let (sent_tx, sent_rx) = flume::bounded(1);
        let writer = shared.clone();
        spawn(format!("hsipc-writer-{name}"), move || run_writer(&writer, &writer_alarm, &sent_tx))?;
        let clock = shared.clone();
        spawn(format!("hsipc-clock-{name}"), move || {
            run_clock(&clock, &alarm);
            // The writer sends the goodbye; a stalled bus must not keep `stopped` waiting.
            let _ = sent_rx.recv_timeout(GOODBYE_WAIT);
            let _ = stopped_tx.send(Ok(()));
        })?;
        Ok(Engine { handle: Handle::new(shared), stopped })
    }

    /// A handle to command the engine.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// For the runtime's idle workers: the lane to read while they wait (see [`IdleLanes`]).
    pub fn idle_lanes(&self) -> IdleLanes {
        IdleLanes::new(self.handle.shared().weak())
    }

    /// Asks the engine to say goodbye and stop. Returns at once; every open call, stream and
    /// wait fails with [`Error::Closed`](crate::Error::Closed) shortly after. Idempotent.
    pub fn shutdown(&self) {
        self.handle.shared().begin_shutdown();
    }

    /// Completes once the engine has stopped: the goodbye was sent (or the bus was stalled
    /// for a second) and the threads are ending. Wait on it with [`Waiter::wait`] or `.await`;
    /// any outcome means "stopped" (a second waiter sees [`Error::Closed`](crate::Error::Closed)).
    pub fn stopped(&self) -> Waiter<()> {
        Waiter::new(self.stopped.clone(), Instant::now() + 2 * GOODBYE_WAIT)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The instant `timeout` from now; a timeout too long for the clock (`Duration::MAX`) is taken as
/// [`proto::MAX_TIMEOUT`].
pub(crate) fn deadline_in(timeout: Duration) -> Instant {
    deadline_after(Instant::now(), timeout)
}

/// The instant `timeout` after `start` (see [`deadline_in`]).
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    start + timeout.min(proto::MAX_TIMEOUT)
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(drop)
        .map_err(|source| TransportError::Io { what: "spawning an engine thread", source }.into())
}

/// The clock thread: sleep until the next deadline or a wake-up, run what is due.
fn run_clock(shared: &Arc<Shared>, alarm: &Alarm) {
    loop {
        let (deadline, watched) = {
            let mut state = shared.state();
            (state.sleep_until(), state.watched_processes())
        };
        alarm.sleep(&watched, &[], &[], deadline);
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        let mut state = shared.state();
        state.awake(now);
        shared.commit(state, now, SendBy::Writer);
    }
    // Goodbye: fail everything open, queue the goodbye, stop dispatching, let the writer finish.
    let now = Instant::now();
    let mut state = shared.state();
    state.close();
    shared.commit(state, now, SendBy::Writer);
    shared.close_dispatcher();
    shared.closed.store(true, Ordering::SeqCst);
    shared.wake_writer();
}

/// The writer thread: send whatever is queued whenever woken; after the close, release the bus.
fn run_writer(shared: &Shared, alarm: &Alarm, sent: &flume::Sender<()>) {
    loop {
        // Asleep until woken, or until a full lane has room (or its stall deadline, or a while:
        // an fd closed meanwhile must not keep the writer from noticing).
        let now = Instant::now();
        match shared.transport_waiting() {
            Some(w) => alarm.sleep(&[], &w.readable, &w.fds, w.until.min(now + WAITING_RECHECK)),
            None => alarm.sleep(&[], &[], &[], now + IDLE_RECHECK),
        }
        // Read before sending: everything queued before the close (the goodbye) goes out.
        let closing = shared.closed.load(Ordering::SeqCst);
        shared.send_queued_blocking();
        // A handler that queued a frame while this thread held the send lock left it to this
        // thread: it went when the lock was let go (see `send_lock`).
        if closing {
            shared.close_transport();
            let _ = sent.send(());
            return;
        }
    }
}
