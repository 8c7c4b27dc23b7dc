//! The ipmb transport: hubs in different processes on one machine, over an ipmb bus.
//!
//! ipmb 0.8.5 is used unmodified from crates.io, and this module absorbs its measured defects
//! (see `shared/ipmb-on-linux.md`; `tests/ipmb_facts.rs` reproduces each one):
//!
//! - **A message between two non-controller endpoints without an fd is dropped** (and the
//!   receiver evicted). Every message we send therefore carries one: an inline frame carries a
//!   duplicate of a private eventfd, a large frame carries its shared-memory region.
//! - **A message over ~131 040 bytes makes `send` loop forever** and leaks fds in the
//!   controller. Frames up to [`INLINE_MAX`] travel inline; larger ones go in a
//!   `MemoryRegion` (one copy in, one copy out), up to [`IpmbConfig::max_message_len`]; above
//!   that the send is refused with [`TransportError::TooLarge`] before ipmb sees it.
//! - **`recv` cannot be woken, and a `send` can wait for a blocked `recv`.** The reader thread
//!   calls `recv` with a timeout (1 s) and never ends on one; the close-on-exec sweep (due
//!   every second) rides on whatever wakes it, and while messages are held for a lane's end it
//!   waits 2 ms at a time. Our own goodbye (a multicast that also reaches us) comes back as the
//!   hub closes: from then on the reader waits 5 ms at a time, so it sees the close's stop flag
//!   (set just after the goodbye went) at once. The timeout bounds the wait only when no
//!   goodbye can go, and how long a `send` that must rejoin the bus after the controller died
//!   waits for the reader to let go of ipmb's lock.
//! - **One slow reader stalls the whole bus.** The reader hands each frame to the engine,
//!   which never waits for the application: responses go to callers, requests to handlers,
//!   events to bounded subscription queues (whose overflow is counted), so the socket is
//!   always drained.
//! - **Nothing reports a peer's death, and `send` is Ok for messages nobody receives.** The
//!   protocol has heartbeats and deadlines, and the engine watches peer processes (pidfds).
//! - **ipmb's sockets are not close-on-exec**, so a child process would inherit them and, if
//!   this process is the bus controller, keep the bus wedged after it dies. The fds the join
//!   opened are marked close-on-exec, and then, every second (and at once when a new peer is heard from), any new socket or
//!   anonymous-inode fd (ipmb's controller accepts connections at any time); fds 0-2 and the
//!   application's earlier fds are left alone.
//! - **ipmb panics on some errors** (`unreachable!`, poisoned locks). Calls into it are wrapped
//!   in `catch_unwind`; a panic turns into a transport error, not a crashed process.
//!
//! Hub names are made unique per bus with an abstract Unix socket bound for the hub's lifetime:
//! the kernel refuses a second bind at once and frees the name when the process dies.

mod cloexec;

pub use cloexec::mark_bus_fds_close_on_exec;
mod caller_lane;
mod envelope;
mod fan_pool;
mod futex;
mod lane;
mod lane_reader;
mod large;
mod name_lock;
mod out_lanes;
mod pool;
mod reader;
mod ring;
mod sealed;
mod shm;
#[cfg(test)]
mod test_engine;

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proto::PeerId;
use proto::frame::WireFrame;

use crate::ingress::Ingress;
use crate::transport::{Connect, Sent, Transport, TransportError, Waiting};

pub use envelope::INLINE_MAX;
pub use lane_reader::{LaneReader, LaneRunner, LaneState};

/// The ipmb message type hsipc sends: opaque bytes.
type Msg = ipmb::BytesMessage;

/// The label every hsipc endpoint carries, for broadcasts.
const ALL_LABEL: &str = "hsipc";

/// Settings of the ipmb transport.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IpmbConfig {
    /// The bus name: hubs on different buses never see each other. 1 to 64 characters from
    /// `A-Z a-z 0-9 . _ -`.
    pub bus: String,
    /// The largest frame sent or accepted (frames above [`INLINE_MAX`] travel in shared memory).
    /// Default 32 MiB.
    pub max_message_len: usize,
    /// How long the bus reader waits for a message before it looks whether the hub is closing.
    /// A closing hub's goodbye comes back to its own reader, which then looks often; this bounds
    /// the wait only when the goodbye cannot go (a broken bus). An idle hub's reader wakes this
    /// often beside its peers' heartbeats. Default 1 s.
    pub recv_timeout: Duration,
    /// How long joining the bus may take. Default 5 s.
    pub join_timeout: Duration,
    /// Whether frames to a peer go through a direct lane (a socket pair of the two hubs', set up
    /// over the bus) rather than through ipmb's controller. Default true.
    pub direct_lanes: bool,
    /// Most lanes this hub opens; peers beyond it are reached through the bus. Default 64.
    pub max_lanes: usize,
    /// Most lanes from other hubs this hub reads (each has a thread, or a task on the hub's
    /// runtime). Offers beyond are declined: the peer closes the lane and reaches this hub
    /// through the bus, and offers again after `lane_idle_timeout`. Default 256.
    pub max_incoming_lanes: usize,
    /// How long frames may wait for a full lane without any of them going through before the
    /// lane's reader is taken to be stuck and its peer is cut off. Default 5 s. (Frames to other
    /// peers never wait for it: each lane has its own queue.)
    pub lane_stall_timeout: Duration,
    /// A lane that no frame for its peer alone (heartbeats aside) has used for this long is
    /// closed; the peer's frames then go through the bus, or a new lane once it is busy again.
    /// Default 60 s.
    pub lane_idle_timeout: Duration,
    /// Runs the readers of lanes from other hubs on an async runtime (its reactor waits for
    /// them) instead of a thread each. The tokio hub sets it. Default none.
    pub lane_runner: Option<LaneRunner>,
    /// Whether lanes are made with, and accepted from, processes that run as another user.
    /// Default false: a peer of another user is reached through the bus, and a lane it offers
    /// is refused (`SO_PEERCRED`), so no other user's process gets a socket into this one. Set
    /// it on both sides or neither. A lane across users never uses the shared pool (large
    /// frames go sealed against writes).
    pub lanes_across_users: bool,
    /// Whether this hub reads large frames (16 KiB to 16 MiB) in place from a memory pool its
    /// peer shares with it (the fastest way: one copy in all). Default true. The peer keeps write
    /// access to its pool, so this trusts peers (processes of the same user) not to change a
    /// frame they have handed over; with false, peers send large frames in memfds sealed against
    /// writes (or in chunks), which costs a copy and the kernel's page work per frame. The same
    /// goes for the ring small frames take (a frame is copied out of it before it is read, so a
    /// peer can spoil only its own frames): with false, they come through the socket, each a
    /// `sendmsg` and a `recvmsg`.
    pub lane_pools: bool,
}

impl IpmbConfig {
    /// Defaults for bus `bus`.
    pub fn new(bus: impl Into<String>) -> Self {
        IpmbConfig {
            bus: bus.into(),
            max_message_len: 32 << 20,
            recv_timeout: Duration::from_secs(1),
            join_timeout: Duration::from_secs(5),
            direct_lanes: true,
            max_lanes: 64,
            max_incoming_lanes: 256,
            lane_stall_timeout: Duration::from_secs(5),
            lanes_across_users: false,
            lane_pools: true,
            lane_idle_timeout: Duration::from_secs(60),
            lane_runner: None,
        }
    }
}

/// Connects hubs to an ipmb bus.
#[derive(Clone, Debug)]
pub struct IpmbBus {
    config: IpmbConfig,
}

impl IpmbBus {
    /// A connector for the bus described by `config`.
    pub fn new(config: IpmbConfig) -> Self {
        IpmbBus { config }
    }

    /// A connector, boxed for [`Engine::start`](crate::Engine::start).
    pub fn connector(self) -> Box<dyn Connect> {
        Box::new(self)
    }
}

/// The ipmb label of a peer.
fn peer_label(p: PeerId) -> String {
    format!("p{p}")
}

/// Whether no process listens on the bus's socket yet, i.e. joining makes us its first member.
/// Read from `/proc/net/unix` (abstract names appear as `@name`, NUL padding as `@`); when it
/// cannot be read, the answer is "not known to be empty".
fn bus_is_empty(identifier: &str) -> bool {
    const LISTENING: u32 = 0x0001_0000; // __SO_ACCEPTCON
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else { return false };
    let wanted = format!("@{identifier}");
    !table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3).and_then(|f| u32::from_str_radix(f, 16).ok()).is_some_and(|f| f & LISTENING != 0);
        listening && fields.get(7).is_some_and(|path| path.trim_end_matches('@') == wanted)
    })
}

fn validate_bus(bus: &str) -> Result<(), TransportError> {
    let ok = !bus.is_empty()
        && bus.len() <= 64
        && bus.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TransportError::InvalidName { name: bus.into(), reason: "a bus name is 1 to 64 of A-Z a-z 0-9 . _ -" })
    }
}

fn validate_hub(name: &str) -> Result<(), TransportError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(TransportError::InvalidName {
            name: name.into(),
            reason: "a hub name is 1 to 255 bytes without control characters",
        });
    }
    Ok(())
}

impl Connect for IpmbBus {
    fn connect(
        self: Box<Self>,
        local: PeerId,
        name: &str,
        ingress: Ingress,
    ) -> Result<Box<dyn Transport>, TransportError> {
        let cfg = self.config;
        validate_bus(&cfg.bus)?;
        validate_hub(name)?;
        let lock = name_lock::NameLock::acquire(&cfg.bus, name)?;
        let identifier = format!("hsipc.{}", cfg.bus);
        let alone = bus_is_empty(&identifier);
        let options = ipmb::Options::new(identifier, ipmb::label!(ALL_LABEL, peer_label(local)), "");
        let sweeper = cloexec::Sweeper::before_join();
        let joined = catch_unwind(|| ipmb::join::<Msg, Msg>(options, Some(cfg.join_timeout)));
        let (sender, receiver) = match joined {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(TransportError::Join { bus: cfg.bus, source: Box::new(e) });
            }
            Err(_) => {
                return Err(TransportError::Panicked { during: "joining the bus" });
            }
        };
        sweeper.after_join();
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(TransportError::Io {
                what: "creating the eventfd attached to messages",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh fd owned by nothing else.
        let carrier = unsafe { OwnedFd::from_raw_fd(fd) };
        let stop = Arc::new(AtomicBool::new(false));
        let incoming = reader::IncomingLanes::default();
        let setup = reader::ReaderSetup {
            local,
            ingress: ingress.clone(),
            max_len: cfg.max_message_len,
            timeout: cfg.recv_timeout,
            stop: stop.clone(),
            sweeper,
            lanes: incoming.clone(),
            across_users: cfg.lanes_across_users,
            takes_pooled: cfg.lane_pools,
            max_lanes: cfg.max_incoming_lanes,
            lane_runner: cfg.lane_runner.clone(),
        };
        let reader = reader::spawn(receiver, setup)?;
        Ok(Box::new(IpmbTransport {
            sender,
            local,
            carrier,
            max_message_len: cfg.max_message_len,
            stop,
            reader: Some(reader),
            _lock: lock,
            broken: false,
            alone,
            lanes: Lanes {
                enabled: cfg.direct_lanes,
                max: cfg.max_lanes,
                across_users: cfg.lanes_across_users,
                idle: cfg.lane_idle_timeout,
                unnoticed: HashSet::new(),
                next_idle_check: Instant::now(),
                other_users: HashSet::new(),
                declined: Default::default(),
                outgoing: out_lanes::OutLanes::new(cfg.lane_stall_timeout),
                dead: PeersUntil::default(),
                dead_for: cfg.lane_stall_timeout,
                incoming,
            },
            ingress,
        }))
    }
}

/// One hub's end of an ipmb bus.
pub struct IpmbTransport {
    sender: ipmb::EndpointSender<Msg>,
    local: PeerId,
    carrier: OwnedFd,
    max_message_len: usize,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    _lock: name_lock::NameLock,
    broken: bool,
    alone: bool,
    lanes: Lanes,
    /// The engine, to report a peer cut off by its lane.
    ingress: Ingress,
}

/// How often idle lanes are looked for (at most).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long closing waits for full lanes to take the frames waiting for them (the goodbye).
const CLOSE_DRAIN: Duration = Duration::from_millis(500);

/// Most peers remembered in a [`PeersUntil`] (beyond, new ones are not marked).
const MAX_MARKED_PEERS: usize = 4096;

/// Peers marked until some instant: the expired ones are forgotten, and at most
/// [`MAX_MARKED_PEERS`] are kept.
#[derive(Debug, Default)]
struct PeersUntil(std::collections::HashMap<PeerId, Instant>);

impl PeersUntil {
    /// Marks `peer` until `until`.
    fn mark(&mut self, peer: PeerId, until: Instant, now: Instant) {
        self.0.retain(|_, u| *u > now);
        if self.0.len() < MAX_MARKED_PEERS {
            self.0.insert(peer, until);
        }
    }

    /// Whether `peer` is marked at `now` (an expired mark is forgotten).
    fn holds(&mut self, peer: PeerId, now: Instant) -> bool {
        match self.0.get(&peer) {
            Some(until) if now < *until => true,
            Some(_) => {
                self.0.remove(&peer);
                false
            }
            None => false,
        }
    }
}

/// Most peers remembered as another user's (beyond, they are looked up again each time).
const MAX_OTHER_USERS: usize = 4096;

/// This hub's direct lanes (see [`lane`]).
struct Lanes {
    enabled: bool,
    max: usize,
    across_users: bool,
    /// How long a lane may go unused before it is closed.
    idle: Duration,
    /// Peers whose lane was closed but whose closing notice could not be sent yet: nothing
    /// else goes to them on the bus before it (their reader would take it for a copy).
    unnoticed: HashSet<PeerId>,
    next_idle_check: Instant,
    /// Peers that run as another user: reached through the bus.
    other_users: HashSet<PeerId>,
    /// Peers that declined a lane, and until when they are reached through the bus only.
    declined: PeersUntil,
    /// The lane to each peer, with the frames waiting for room in it.
    outgoing: out_lanes::OutLanes,
    /// Peers whose lane broke or stalled, and until when they are taken for gone: frames to
    /// them are dropped meanwhile (a new lane at once could reorder them with the broken one's
    /// last frames). The peer itself sees the old lane end and forgets this hub; a peer that
    /// lives on is reached afresh (a new lane) after that.
    dead: PeersUntil,
    /// How long a cut-off peer is taken for gone.
    dead_for: Duration,
    /// The lanes this hub reads, to wake their readers at close.
    incoming: reader::IncomingLanes,
}

impl std::fmt::Debug for IpmbTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmbTransport").field("local", &self.local).finish_non_exhaustive()
    }
}

impl IpmbTransport {
    /// Opens a lane to `to`: sends the reading end over the bus, keeps the writing end.
    fn open_lane(&mut self, to: PeerId) -> Result<(), TransportError> {
        let io = |what| move |source| TransportError::Io { what, source };
        let (mine, theirs) = lane::pair().map_err(io("creating a lane"))?;
        let offer = envelope::lane_offer(ipmb::Selector::unicast(peer_label(to)), self.local, theirs);
        self.send_msg(offer)?;
        tracing::debug!(peer = %to, "opened a direct lane");
        self.lanes.outgoing.insert(to, mine);
        Ok(())
    }

    /// Whether a lane to `to` may be made: it runs as this process's user (unless lanes across
    /// users are allowed). Unknown yet (no announce heard): not now, ask again next time.
    fn may_lane_to(&mut self, to: PeerId) -> bool {
        if self.lanes.declined.holds(to, Instant::now()) {
            return false;
        }
        if self.lanes.across_users {
            return true;
        }
        if self.lanes.other_users.contains(&to) {
            return false;
        }
        let Some(pid) = self.ingress.peer_pid(to) else { return false };
        match lane::process_uid(pid) {
            Some(uid) if uid == lane::own_uid() => true,
            found => {
                match found {
                    Some(uid) => {
                        tracing::info!(peer = %to, uid, "peer runs as another user: its frames go through the bus")
                    }
                    None => {
                        tracing::info!(peer = %to, pid, "cannot tell the peer's user: its frames go through the bus")
                    }
                }
                if self.lanes.other_users.len() < MAX_OTHER_USERS {
                    self.lanes.other_users.insert(to);
                }
                false
            }
        }
    }

    /// Writes a frame into the lane to `to`, or queues it there; a broken lane means the peer
    /// is gone.
    fn lane_send(&mut self, to: PeerId, frame: &WireFrame) -> Result<(), TransportError> {
        self.lanes.outgoing.write(to, frame).map_err(|source| self.lane_broken(to, source))
    }

    /// A lane broke (its reader ended) or stayed full past the stall timeout (its reader is
    /// stuck): the peer is cut off, and the engine is told at once, so that calls to it fail
    /// now instead of at their deadlines. If it lives on, it is reached afresh later.
    fn lane_broken(&mut self, to: PeerId, source: std::io::Error) -> TransportError {
        tracing::debug!(peer = %to, error = %source, "lane broken: the peer is gone or stuck");
        self.lanes.outgoing.remove(to);
        let now = Instant::now();
        self.lanes.dead.mark(to, now + self.lanes.dead_for, now);
        self.ingress.peer_lost(to);
        TransportError::Io { what: "writing into a direct lane", source }
    }

    /// Cuts off the peers whose lane a write outside the engine's send lock found broken (that
    /// write woke the engine's writer, which comes here through `flush` or `tick`), and tells
    /// the engine they are gone.
    fn settle_broken_lanes(&mut self) {
        for (peer, source) in self.lanes.outgoing.take_broken() {
            self.lane_broken(peer, source);
        }
    }

    fn send_msg(&mut self, msg: ipmb::Message<Msg>) -> Result<(), TransportError> {
        match catch_unwind(AssertUnwindSafe(|| self.sender.send(msg))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TransportError::Send(Box::new(e))),
            Err(_) => {
                tracing::error!("ipmb panicked in send; this hub can no longer send");
                self.broken = true;
                Err(TransportError::Panicked { during: "sending" })
            }
        }
    }

    fn check_open(&self, frame: &WireFrame) -> Result<(), TransportError> {
        if self.broken || self.stop.load(Ordering::Relaxed) {
            return Err(TransportError::Closed);
        }
        if frame.len() > self.max_message_len {
            return Err(TransportError::TooLarge { len: frame.len(), max: self.max_message_len });
        }
        Ok(())
    }

    fn send_to(&mut self, selector: ipmb::Selector, frame: &WireFrame) -> Result<(), TransportError> {
        self.check_open(frame)?;
        let msg = envelope::wrap(selector, self.local, frame)?;
        if msg.memory_regions.is_empty() { self.send_carried(msg) } else { self.send_msg(msg) }
    }

    /// Tells `peer` that the lane to it is closed (see [`Transport::tick`]).
    fn send_close_notice(&mut self, peer: PeerId) -> Result<(), TransportError> {
        let notice = envelope::lane_closed(ipmb::Selector::unicast(peer_label(peer)), self.local);
        self.send_carried(notice)
    }

    /// Sends a closing notice still owed to `peer` before anything else goes to it.
    fn settle_close_notice(&mut self, peer: PeerId) -> Result<(), TransportError> {
        if self.lanes.unnoticed.contains(&peer) {
            self.send_close_notice(peer)?;
            self.lanes.unnoticed.remove(&peer);
        }
        Ok(())
    }

    /// Sends a message with a duplicate of the carrier fd attached (ipmb drops messages
    /// without an fd between two of its clients).
    fn send_carried(&mut self, mut msg: ipmb::Message<Msg>) -> Result<(), TransportError> {
        // SAFETY: fcntl duplicates a valid fd we own; the result is a new fd or -1.
        let dup = unsafe { libc::fcntl(self.carrier.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(TransportError::Io {
                what: "duplicating the carrier fd",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `dup` is a new fd; ipmb's Object takes ownership and closes it.
        msg.objects.push(unsafe { ipmb::Object::from_raw(dup) });
        self.send_msg(msg)
    }
}

impl Transport for IpmbTransport {
    fn send(&mut self, to: PeerId, frame: &WireFrame) -> Result<(), TransportError> {
        self.check_open(frame)?;
        if self.lanes.outgoing.contains(to) {
            self.lanes.outgoing.touch(to);
            return self.lane_send(to, frame);
        }
        self.settle_close_notice(to)?;
        if self.lanes.dead.holds(to, Instant::now()) {
            return Err(TransportError::Closed);
        }
        if self.lanes.enabled && self.lanes.outgoing.len() < self.lanes.max && self.may_lane_to(to) {
            match self.open_lane(to) {
                Ok(()) => return self.lane_send(to, frame),
                Err(e) => tracing::debug!(peer = %to, error = %e, "no lane; sending through the bus"),
            }
        }
        self.send_to(ipmb::Selector::unicast(peer_label(to)), frame)
    }

    fn try_send(&mut self, to: PeerId, frame: &WireFrame) -> Result<Sent, TransportError> {
        self.check_open(frame)?;
        // Only a lane can take a frame without waiting; the bus (and opening a lane) is the
        // writer's job. The lane takes it into its queue; the thread writes it once it has let
        // go of the engine's send lock.
        match self.lanes.outgoing.try_queue(to, frame) {
            Ok(Some(lane)) => Ok(Sent::Queued(lane)),
            Ok(None) => Ok(Sent::NotNow),
            Err(source) => Err(self.lane_broken(to, source)),
        }
    }

    fn tick(&mut self) {
        self.settle_broken_lanes();
        let now = Instant::now();
        let mut broken = Vec::new();
        for peer in self.lanes.outgoing.close_declined(&mut broken) {
            tracing::debug!(%peer, "the peer declined the lane: its frames go through the bus");
            self.lanes.declined.mark(peer, now + self.lanes.idle, now);
            if let Err(e) = self.send_close_notice(peer) {
                tracing::debug!(%peer, error = %e, "could not send a lane's closing notice; will retry");
                self.lanes.unnoticed.insert(peer);
            }
        }
        if now >= self.lanes.next_idle_check {
            self.lanes.next_idle_check = now + IDLE_CHECK.min(self.lanes.idle);
            self.lanes.outgoing.trim_pools(IDLE_CHECK);
            for peer in self.lanes.outgoing.close_idle(self.lanes.idle, &mut broken) {
                tracing::debug!(%peer, "closed an idle lane; its frames go through the bus until it is busy again");
                // After the lane's last frames (the reader waits for them), before any frame for
                // that peer on the bus.
                if let Err(e) = self.send_close_notice(peer) {
                    tracing::debug!(%peer, error = %e, "could not send a lane's closing notice; will retry");
                    self.lanes.unnoticed.insert(peer);
                }
            }
        }
        for (peer, source) in broken {
            self.lane_broken(peer, source);
        }
    }

    fn flush(&mut self) {
        self.settle_broken_lanes();
        for (peer, source) in self.lanes.outgoing.flush() {
            self.lane_broken(peer, source);
        }
    }

    fn waiting(&self) -> Option<Waiting> {
        self.lanes.outgoing.waiting().map(|(fds, readable, until)| Waiting::new(fds, readable, until))
    }

    fn broadcast(&mut self, frame: &WireFrame) -> Result<(), TransportError> {
        let owed: Vec<PeerId> = self.lanes.unnoticed.iter().copied().collect();
        for peer in owed {
            let _ = self.settle_close_notice(peer);
        }
        let r = self.send_to(ipmb::Selector::multicast(ALL_LABEL), frame);
        // Peers this hub has a lane to ignore its bus messages: they get their copy in order
        // through the lane.
        let laned = self.lanes.outgoing.peers();
        for peer in laned {
            let _ = self.lane_send(peer, frame);
        }
        r
    }

    fn max_frame_len(&self) -> usize {
        self.max_message_len
    }

    fn joined_empty_bus(&self) -> bool {
        self.alone
    }

    fn close(&mut self) {
        if self.stop.swap(true, Ordering::Relaxed) {
            return;
        }
        // Peers reading our lanes see their end (after everything sent, the goodbye included,
        // unless their lane stays full).
        self.lanes.outgoing.drain(Instant::now() + CLOSE_DRAIN);
        self.lanes.outgoing.clear();
        for (fd, _) in self.lanes.incoming.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            lane::shut(&fd);
        }
        if let Some(reader) = self.reader.take() {
            // The reader sees `stop` within a few ms once our goodbye came back to it, else within
            // one recv timeout.
            // It is never joined from itself (if it held the engine's last reference).
            if reader.thread().id() != std::thread::current().id() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for IpmbTransport {
    fn drop(&mut self) {
        self.close();
    }
}
