//! The reader thread: ipmb `recv` → the engine (through its [`Ingress`]). It waits for nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proto::PeerId;
use proto::frame::{Frame, FrameKind};

use super::envelope::Received;
use super::lane::Takes;
use super::lane_reader::{LaneReader, LaneRunner};
use super::{Msg, cloexec, envelope, lane};
use crate::ingress::Ingress;
use crate::transport::TransportError;

/// How often the reader re-marks the process's bus fds close-on-exec when nothing suggests a
/// new one (a message from a peer it has not heard from, whose connection ipmb may just have
/// accepted, sweeps at once). Reading `/proc/self/fd` is most of an idle hub's CPU time.
const CLOEXEC_SWEEP: Duration = Duration::from_secs(1);

/// The lanes this hub reads, kept so that closing can wake their readers, each with whether it
/// was declined.
pub(super) type IncomingLanes = Arc<std::sync::Mutex<Vec<(Arc<std::os::fd::OwnedFd>, bool)>>>;

/// How long the bus reader waits for a closed lane's reader to finish its last frames.
const LANE_END_WAIT: Duration = Duration::from_secs(1);

/// Most senders remembered for the sweep (beyond, new senders wait for the periodic sweep).
const MAX_HEARD: usize = 4096;

/// Lanes declined (read only until their writer closes them) beyond the most a hub takes; offers
/// beyond these are refused outright (their writer takes the peer for gone).
const MAX_DECLINED_LANES: usize = 64;

/// What the reader needs besides the bus.
pub(super) struct ReaderSetup {
    pub(super) local: PeerId,
    pub(super) ingress: Ingress,
    pub(super) max_len: usize,
    pub(super) timeout: Duration,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) sweeper: cloexec::Sweeper,
    pub(super) lanes: IncomingLanes,
    /// Accept lanes made by another user's process.
    pub(super) across_users: bool,
    /// Read large frames in place from the writer's pool.
    pub(super) takes_pooled: bool,
    /// Most lanes taken (each has a thread or a task); offers beyond are declined.
    pub(super) max_lanes: usize,
    /// Runs lane readers on an async runtime instead of threads, if given.
    pub(super) lane_runner: Option<LaneRunner>,
}

pub(super) fn spawn(
    mut receiver: ipmb::EndpointReceiver<Msg>,
    setup: ReaderSetup,
) -> Result<JoinHandle<()>, TransportError> {
    let ReaderSetup {
        local,
        ingress,
        max_len,
        timeout,
        stop,
        sweeper,
        lanes,
        across_users,
        takes_pooled,
        max_lanes,
        lane_runner,
    } = setup;
    let limits = Limits { uid: (!across_users).then_some(lane::own_uid()), max_lanes, takes_pooled };
    let mut bus = BusReader::new(local, ingress, max_len, stop, lanes, limits, lane_runner);
    std::thread::Builder::new()
        .name("hsipc-ipmb-reader".into())
        .spawn(move || {
            let mut next_sweep = Instant::now();
            // Senders heard from: a new one may come with a new ipmb connection to mark.
            let mut heard: std::collections::HashSet<PeerId> = std::collections::HashSet::new();
            while !bus.stop.load(Ordering::Relaxed) {
                if Instant::now() >= next_sweep {
                    sweeper.sweep();
                    next_sweep = Instant::now() + CLOEXEC_SWEEP;
                }
                let wait = bus.recv_timeout(timeout);
                let received = catch_unwind(AssertUnwindSafe(|| receiver.recv(Some(wait))));
                let msg = match received {
                    Ok(Ok(msg)) => Some(msg),
                    // A timeout only means "nothing yet": the loop never ends on one.
                    Ok(Err(ipmb::RecvError::Timeout)) => None,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "ipmb recv failed; retrying");
                        std::thread::sleep(Duration::from_millis(10));
                        None
                    }
                    Err(_) => {
                        // ipmb's state may be poisoned (a retry would panic again): nothing more
                        // comes from the bus, so the hub closes instead of going deaf.
                        bus.ingress.failed("ipmb panicked while receiving from the bus (a malformed message?)");
                        return;
                    }
                };
                let went_on = match msg.map(|msg| envelope::unwrap(msg, bus.max_len)) {
                    Some(Ok(received)) => {
                        let from = received.from();
                        if heard.len() < MAX_HEARD && heard.insert(from) {
                            next_sweep = Instant::now();
                        }
                        bus.take(received, Instant::now())
                    }
                    Some(Err(envelope::Unwrap::Foreign)) | None => true,
                    Some(Err(envelope::Unwrap::Malformed(why))) => {
                        tracing::debug!(why, "dropped a malformed message");
                        true
                    }
                };
                if !went_on || !bus.release_due(Instant::now()) {
                    return; // the engine is gone
                }
            }
        })
        .map_err(|source| TransportError::Io { what: "spawning the ipmb reader thread", source })
}

/// Most messages and lane offers (each an open fd) held back for one peer while the bus reader
/// waits for the end of that peer's previous lane (a peer that keeps to the protocol has one
/// offer waiting at a time), and most bytes of frames and lane offers held for all peers
/// together. Beyond a peer's own bound the reader stops waiting for that peer's lane (as at
/// [`LANE_END_WAIT`]); beyond the bound for all, for the lane of the peer holding the most, so
/// that one peer's flood does not cut short another's wait.
const MAX_HELD_MESSAGES: usize = 1024;
const MAX_HELD_PEER_LANES: usize = 2;
const MAX_HELD_BYTES: usize = 16 << 20;
const MAX_HELD_LANES: usize = 16;
/// How often the bus reader looks whether a lane it waits for has ended.
const HELD_POLL: Duration = Duration::from_millis(2);
/// After its own goodbye came back, how often the bus reader looks whether its hub's close
/// has stopped it (the close sets the flag just after the goodbye went), and for how long.
const CLOSING_POLL: Duration = Duration::from_millis(5);
const CLOSING_WATCH: Duration = Duration::from_secs(2);

/// One peer's messages held back: a lane offer or a closed lane's notice that waits for the
/// peer's previous lane to be read to its end (its last frames go first), and every message
/// from that peer after it. Other peers' messages are handled meanwhile.
struct Held {
    /// Disconnected once the previous lane's reader has ended.
    end: flume::Receiver<()>,
    /// When the bus reader stops waiting, as if the lane had ended.
    until: Instant,
    msgs: std::collections::VecDeque<Received>,
    /// Bytes of the frames among `msgs`, and how many are lane offers.
    bytes: usize,
    lanes: usize,
}

impl Held {
    fn new(end: flume::Receiver<()>, until: Instant) -> Self {
        Held { end, until, msgs: Default::default(), bytes: 0, lanes: 0 }
    }

    fn push(&mut self, msg: Received) {
        match &msg {
            Received::Frame(_, bytes) => self.bytes += bytes.len(),
            Received::Lane(..) => self.lanes += 1,
            Received::LaneClosed(_) => {}
        }
        self.msgs.push_back(msg);
    }
}

/// The bus reader's state: the lanes it started, and what it holds back.
struct BusReader {
    local: PeerId,
    ingress: Ingress,
    max_len: usize,
    stop: Arc<AtomicBool>,
    lanes: IncomingLanes,
    limits: Limits,
    lane_runner: Option<LaneRunner>,
    /// Peers whose frames now come through their lane (with the lane's number): their bus
    /// messages are copies. A lane's reader takes its peer out again when the lane ends,
    /// unless a newer lane from that peer has taken its place.
    laned: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, u64>>>,
    lanes_accepted: u64,
    /// Per lane being read: disconnected once its reader has ended (a closed lane's notice, or
    /// a new lane, from its peer waits for that, so that the lane's last frames go first).
    lane_ends: std::collections::HashMap<PeerId, flume::Receiver<()>>,
    held: std::collections::HashMap<PeerId, Held>,
    /// Until when the reader looks for its stop flag often: its own goodbye came back.
    closing_until: Option<Instant>,
}

impl BusReader {
    fn new(
        local: PeerId,
        ingress: Ingress,
        max_len: usize,
        stop: Arc<AtomicBool>,
        lanes: IncomingLanes,
        limits: Limits,
        lane_runner: Option<LaneRunner>,
    ) -> Self {
        BusReader {
            local,
            ingress,
            max_len,
            stop,
            lanes,
            limits,
            lane_runner,
            laned: Arc::default(),
            lanes_accepted: 0,
            lane_ends: Default::default(),
            held: Default::default(),
            closing_until: None,
        }
    }

    /// What is held for all peers together: bytes of frames, and lane offers.
    fn held_totals(&self) -> (usize, usize) {
        self.held.values().fold((0, 0), |(bytes, lanes), h| (bytes + h.bytes, lanes + h.lanes))
    }

    /// How long the next `recv` may wait: briefly while a lane's end is awaited, or while this
    /// hub closes.
    fn recv_timeout(&self, timeout: Duration) -> Duration {
        let closing = self.closing_until.is_some_and(|until| Instant::now() < until);
        let timeout = if closing { timeout.min(CLOSING_POLL) } else { timeout };
        if self.held.is_empty() { timeout } else { timeout.min(HELD_POLL) }
    }

    /// Takes a message from the bus: handled now, or held behind what waits for its peer's
    /// lane to end. `false` once the engine is gone.
    fn take(&mut self, msg: Received, now: Instant) -> bool {
        let from = msg.from();
        if let Some(held) = self.held.remove(&from) {
            return self.hold(from, held, [msg]);
        }
        if let Some(end) = self.live_lane_end(&msg) {
            return self.hold(from, Held::new(end, now + LANE_END_WAIT), [msg]);
        }
        self.handle(msg)
    }

    /// Holds `msgs` back for `peer`, after what `held` has; if that is too much for the peer,
    /// stops waiting for its lane and handles them now, and while too much is held for all
    /// together, does so for the peer holding the most. `false` once the engine is gone.
    fn hold(&mut self, peer: PeerId, mut held: Held, msgs: impl IntoIterator<Item = Received>) -> bool {
        msgs.into_iter().for_each(|m| held.push(m));
        let full = held.msgs.len() >= MAX_HELD_MESSAGES || held.lanes > MAX_HELD_PEER_LANES;
        self.held.insert(peer, held);
        if full && !self.release(peer) {
            return false;
        }
        loop {
            let (bytes, lanes) = self.held_totals();
            let most = if bytes > MAX_HELD_BYTES {
                self.held.iter().max_by_key(|(_, h)| h.bytes)
            } else if lanes > MAX_HELD_LANES {
                self.held.iter().max_by_key(|(_, h)| h.lanes)
            } else {
                return true;
            };
            let Some(most) = most.map(|(p, _)| *p) else { return true };
            if !self.release(most) {
                return false;
            }
        }
    }

    /// For a lane offer or a closed lane's notice from a peer whose lane is still being read
    /// (it was cut off and came back, or its last frames are not all read): that lane's end,
    /// to wait for.
    fn live_lane_end(&mut self, msg: &Received) -> Option<flume::Receiver<()>> {
        let (Received::Lane(from, _) | Received::LaneClosed(from)) = msg else { return None };
        let end = self.lane_ends.remove(from)?;
        (!end.is_disconnected()).then_some(end)
    }

    /// Handles what waited for lanes that have ended meanwhile (or for too long). `false` once
    /// the engine is gone.
    fn release_due(&mut self, now: Instant) -> bool {
        if self.held.is_empty() {
            return true;
        }
        let due: Vec<PeerId> =
            self.held.iter().filter(|(_, h)| h.end.is_disconnected() || now >= h.until).map(|(p, _)| *p).collect();
        due.into_iter().all(|peer| self.release(peer))
    }

    /// Handles `peer`'s held messages in order, until one must wait for the end of a lane an
    /// earlier one opened (the rest is held again). `false` once the engine is gone.
    fn release(&mut self, peer: PeerId) -> bool {
        let Some(Held { mut msgs, .. }) = self.held.remove(&peer) else { return true };
        while let Some(msg) = msgs.pop_front() {
            if let Some(end) = self.live_lane_end(&msg) {
                // Held again only within the bounds (a message this takes out is not held again).
                let held = Held::new(end, Instant::now() + LANE_END_WAIT);
                return self.hold(peer, held, std::iter::once(msg).chain(msgs));
            }
            if !self.handle(msg) {
                return false;
            }
        }
        true
    }

    /// Handles a message that waits for nothing. `false` once the engine is gone.
    fn handle(&mut self, msg: Received) -> bool {
        match msg {
            // Our own multicast, back. Our goodbye means the hub is closing: the close stops this
            // reader just after it went, so look for that often for a while (a peer that forges
            // our goodbye costs this reader a few hundred short waits, nothing more).
            Received::Frame(from, bytes) if from == self.local => {
                let goodbye = Frame::decode(bytes, self.max_len).is_ok_and(|f| f.kind == FrameKind::Goodbye);
                if goodbye {
                    self.closing_until = Some(Instant::now() + CLOSING_WATCH);
                }
                true
            }
            Received::Frame(from, _) if self.laned.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&from) => {
                true
            }
            Received::Frame(from, bytes) => self.ingress.deliver(from, bytes),
            Received::Lane(from, fd) => {
                // Every earlier frame from `from` has been delivered: read its lane now.
                self.start_lane(from, fd);
                true
            }
            Received::LaneClosed(from) => {
                // Its frames come through the bus from now on, after the lane's last ones.
                self.laned.lock().unwrap_or_else(|e| e.into_inner()).remove(&from);
                true
            }
        }
    }

    /// Checks a lane offered by `from` and, if taken, starts its reader.
    fn start_lane(&mut self, from: PeerId, fd: std::os::fd::OwnedFd) {
        let announced = self.ingress.peer_pid(from);
        let Some((fd, takes)) = accept_lane(from, announced, fd, &self.limits, &self.lanes, &self.stop) else {
            tracing::warn!(%from, "refused a lane; what that peer writes into it is lost");
            return;
        };
        self.lanes_accepted += 1;
        let number = self.lanes_accepted;
        let ended = self.laned.clone();
        let (end_tx, end_rx) = flume::bounded::<()>(1);
        self.lane_ends.retain(|_, rx| !rx.is_disconnected());
        self.lane_ends.insert(from, end_rx);
        let on_end = move |peer| {
            let mut laned = ended.lock().unwrap_or_else(|e| e.into_inner());
            if laned.get(&peer) == Some(&number) {
                laned.remove(&peer);
            }
            drop(end_tx);
        };
        // Marked before the reader starts: its first frame may follow at once.
        self.laned.lock().unwrap_or_else(|e| e.into_inner()).insert(from, number);
        let reader =
            LaneReader::new(fd.clone(), from, self.ingress.clone(), self.max_len, self.stop.clone(), takes, on_end);
        // On the hub's runtime if it takes it, else on a thread.
        let left = match &self.lane_runner {
            Some(runner) => runner.run(reader),
            None => Some(reader),
        };
        let started = left.map_or(Ok(()), |reader| lane::spawn_thread(reader, from));
        if let Err(e) = started {
            tracing::warn!(%from, error = %e, "cannot start a lane reader");
            self.laned.lock().unwrap_or_else(|e| e.into_inner()).remove(&from);
            lane::shut(&fd); // the sender sees the end instead of a silent lane
        }
    }
}

/// What a hub accepts of lane offers.
struct Limits {
    /// Lanes only from processes of this user, if given.
    uid: Option<u32>,
    max_lanes: usize,
    takes_pooled: bool,
}

/// Checks a lane offer. A lane from another user's process (unless allowed) is refused: its
/// writer sees its end (and takes this hub for gone; a writer of this version never offers one
/// unless it, too, allows lanes across users). A lane beyond the most this hub reads is
/// declined: read, chunks only, until its writer closes it (which it does at once), so nothing
/// the writer sent into it is lost and its frames go through the bus from then on; beyond
/// [`MAX_DECLINED_LANES`] declined at once, offers are refused too.
fn accept_lane(
    from: PeerId,
    announced_pid: Option<u32>,
    fd: std::os::fd::OwnedFd,
    limits: &Limits,
    lanes: &IncomingLanes,
    stop: &AtomicBool,
) -> Option<(Arc<std::os::fd::OwnedFd>, Takes)> {
    // Until the sweep marks it, a received fd would leak into a child spawned meanwhile.
    // SAFETY: F_SETFD on an fd we own only sets its close-on-exec flag.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_SETFD, libc::FD_CLOEXEC) };
    if !lane::is_lane_socket(&fd) {
        tracing::warn!(%from, "a lane offer carried something that is not a socket pair end");
        return None;
    }
    // The shared pool only between processes of one user (see `pool`).
    let mut takes = if limits.takes_pooled { Takes::Fan } else { Takes::Sealed };
    let maker = match lane::maker(&fd) {
        Ok(maker) => maker,
        Err(e) => {
            tracing::warn!(%from, error = %e, "cannot read a lane's credentials");
            return None;
        }
    };
    // Only the process that announced `from` may open its lane: another process (of any user)
    // that claimed its peer id on the bus would otherwise have its frames taken for that
    // peer's, and that peer's own frames on the bus dropped while its lane lasts.
    // (A maker in a pid namespace this process cannot see reads as pid 0: not checked, as
    // before; its user still is.)
    if let Some(pid) = announced_pid.filter(|pid| maker.pid != 0 && *pid != maker.pid) {
        tracing::warn!(%from, announced = pid, maker = maker.pid, "refused a lane made by another process than the peer it claims to come from");
        return None;
    }
    if maker.uid != lane::own_uid() {
        if limits.uid.is_some() {
            tracing::warn!(%from, uid = maker.uid, "refused a lane offered by another user's process");
            return None;
        }
        takes = Takes::Sealed;
    }
    let mut lanes = lanes.lock().unwrap_or_else(|e| e.into_inner());
    // Checked under the lock `close` drains: no lane is accepted after it.
    if stop.load(Ordering::Relaxed) {
        return None;
    }
    lanes.retain(|(l, _)| Arc::strong_count(l) > 1); // forget lanes whose reader has ended
    let declined = lanes.iter().filter(|(_, d)| *d).count();
    if lanes.len() - declined >= limits.max_lanes {
        if declined >= MAX_DECLINED_LANES {
            tracing::warn!(%from, "refused a lane: too many lanes, even to decline; that peer is cut off");
            return None;
        }
        tracing::info!(%from, max = limits.max_lanes, "declined a lane: this hub reads its most lanes");
        takes = Takes::Declined;
    }
    let fd = Arc::new(fd);
    lanes.push((fd.clone(), takes == Takes::Declined));
    Some((fd, takes))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    /// A lane end made by a process of user `uid`: a forked child switches to that user, makes
    /// the pair and passes one end back over a socket pair (`SCM_RIGHTS`).
    fn lane_made_by(uid: libc::uid_t) -> OwnedFd {
        let (here, there) = lane::pair().unwrap();
        // SAFETY: the child only makes async-signal-safe calls (setuid, socketpair, sendmsg,
        // _exit) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: plain syscalls on fds this child holds; `_exit` never returns.
            unsafe {
                if libc::setuid(uid) != 0 {
                    libc::_exit(1);
                }
                let mut fds = [0; 2];
                if libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) != 0 {
                    libc::_exit(2);
                }
                let mut byte = 0u8;
                let mut iov = libc::iovec { iov_base: &mut byte as *mut u8 as *mut libc::c_void, iov_len: 1 };
                let mut space = [0u8; 64];
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = space.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fds[1]);
                let sent = libc::sendmsg(there.as_raw_fd(), &msg, 0);
                libc::_exit(if sent == 1 { 0 } else { 3 });
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed: {status}");
        let mut byte = 0u8;
        let mut iov = libc::iovec { iov_base: &mut byte as *mut u8 as *mut libc::c_void, iov_len: 1 };
        let mut space = [0u8; 64];
        // SAFETY: an all-zero msghdr is valid; it is pointed at live buffers, and recvmsg fills
        // them; the fd it carries is new and owned by nothing else.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space.len();
            assert_eq!(libc::recvmsg(here.as_raw_fd(), &mut msg, 0), 1);
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null());
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32))
        }
    }

    #[test]
    fn a_lane_made_by_another_user_is_refused_unless_allowed_and_never_pooled() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can make a socket pair as another user");
            return;
        }
        let lanes = IncomingLanes::default();
        let stop = AtomicBool::new(false);
        let theirs = lane_made_by(65534);
        assert_eq!(lane::maker(&theirs).unwrap().uid, 65534);
        let own = Limits { uid: Some(lane::own_uid()), max_lanes: 8, takes_pooled: true };
        let takes = |r: Option<(Arc<OwnedFd>, Takes)>| r.map(|(_, t)| t);
        assert_eq!(takes(accept_lane(PeerId(1), None, theirs, &own, &lanes, &stop)), None);
        // Allowed across users: taken, but sealed frames only (no shared pool across users).
        let across = Limits { uid: None, ..own };
        assert_eq!(
            takes(accept_lane(PeerId(1), None, lane_made_by(65534), &across, &lanes, &stop)),
            Some(Takes::Sealed)
        );
        // This user's: taken, with the pool and the ring.
        assert_eq!(takes(accept_lane(PeerId(2), None, lane_made_by(0), &across, &lanes, &stop)), Some(Takes::Fan));
        let no_pools = Limits { uid: Some(lane::own_uid()), max_lanes: 8, takes_pooled: false };
        assert_eq!(takes(accept_lane(PeerId(3), None, lane_made_by(0), &no_pools, &lanes, &stop)), Some(Takes::Sealed));
    }

    /// A lane offered in a peer's name by another process than the one that announced that
    /// peer (a bus member claiming another's peer id) is refused; the announcer's own is taken.
    #[test]
    fn a_lane_made_by_another_process_than_the_announced_peer_is_refused() {
        let lanes = IncomingLanes::default();
        let stop = AtomicBool::new(false);
        let limits = Limits { uid: Some(lane::own_uid()), max_lanes: 8, takes_pooled: true };
        let me = std::process::id();
        let (_mine, theirs) = lane::pair().unwrap();
        assert_eq!(lane::maker(&theirs).unwrap().pid, me);
        assert!(accept_lane(PeerId(1), Some(me + 1), theirs, &limits, &lanes, &stop).is_none());
        let (_mine, theirs) = lane::pair().unwrap();
        assert!(accept_lane(PeerId(1), Some(me), theirs, &limits, &lanes, &stop).is_some());
    }

    fn publish(seq: u64) -> bytes::Bytes {
        proto::frame::Frame::new(proto::frame::FrameKind::Publish, 0, 0, seq).with_name("t/x").encode(1 << 20).unwrap()
    }

    /// A bus reader handing frames to an engine subscribed to `t/#`: the engine, its events,
    /// the reader.
    fn bus_reader() -> (crate::engine::Engine, crate::engine::EventReceiver, BusReader) {
        let (engine, ingress) = super::super::test_engine::engine(crate::engine::EngineConfig::default());
        let filter = proto::topic::TopicFilter::new("t/#").unwrap();
        let events = engine.handle().subscribe(filter, crate::engine::Qos::KeepLast(100)).unwrap();
        let limits = Limits { uid: Some(lane::own_uid()), max_lanes: 8, takes_pooled: true };
        let stop = Arc::new(AtomicBool::new(false));
        let bus = BusReader::new(PeerId(1), ingress, 2 << 20, stop, IncomingLanes::default(), limits, None);
        (engine, events, bus)
    }

    /// While a peer's closed lane is still being read, its notice (and what follows it from
    /// that peer) waits for the lane's end; other peers' messages go on meanwhile, and the
    /// peer's own follow in their order once the lane has ended.
    #[test]
    fn a_peer_whose_lane_ends_late_holds_back_only_its_own_messages() {
        let (engine, events, mut bus) = bus_reader();
        let (slow, other) = (PeerId(2), PeerId(3));
        // `slow`'s lane is being read (its reader has not ended): its bus frames are copies
        // until the closed lane's notice is handled (a frame handled before it is dropped).
        let (lane_end, end) = flume::bounded::<()>(1);
        bus.lane_ends.insert(slow, end);
        bus.laned.lock().unwrap().insert(slow, 1);
        let now = Instant::now();
        assert!(bus.take(Received::LaneClosed(slow), now));
        assert!(bus.take(Received::Frame(slow, publish(1)), now));
        assert!(bus.take(Received::Frame(other, publish(1)), now));
        assert!(bus.release_due(now));
        // The other peer's event came through, though `slow`'s was taken first.
        let first = events.try_recv().expect("the other peer's event").unwrap();
        assert_eq!(first.from, other);
        assert!(events.try_recv().is_none(), "`slow`'s event waits for its lane's end");
        drop(lane_end);
        assert!(bus.release_due(now));
        assert_eq!(events.try_recv().expect("`slow`'s event, once its lane ended").unwrap().from, slow);
        assert!(bus.held.is_empty());

        // A lane that does not end is waited for until the deadline, and no longer.
        let (_lane_end, end) = flume::bounded::<()>(1);
        bus.lane_ends.insert(slow, end);
        assert!(bus.take(Received::LaneClosed(slow), now));
        assert!(bus.take(Received::Frame(slow, publish(2)), now));
        assert!(bus.release_due(now + LANE_END_WAIT / 2));
        assert!(events.try_recv().is_none());
        assert!(bus.release_due(now + LANE_END_WAIT));
        assert_eq!(events.try_recv().unwrap().unwrap().from, slow);

        // Nor beyond what may be held for one peer.
        let (_lane_end, end) = flume::bounded::<()>(1);
        bus.lane_ends.insert(slow, end);
        assert!(bus.take(Received::LaneClosed(slow), now));
        for seq in 3..3 + MAX_HELD_MESSAGES as u64 {
            assert!(bus.take(Received::Frame(slow, publish(seq)), now));
        }
        assert!(bus.held.is_empty(), "released once full");
        assert_eq!(events.try_recv().unwrap().unwrap().from, slow);
        assert_eq!(bus.held_totals(), (0, 0));
        engine.shutdown();
    }

    /// One peer's flood while it is held stops the wait for its own lane, not another's.
    #[test]
    fn a_flood_from_one_held_peer_releases_that_peer_not_another() {
        let (engine, events, mut bus) = bus_reader();
        let (flood, quiet) = (PeerId(2), PeerId(3));
        let mut lanes_open = Vec::new();
        for peer in [flood, quiet] {
            let (lane_end, end) = flume::bounded::<()>(1);
            lanes_open.push(lane_end);
            bus.lane_ends.insert(peer, end);
            bus.laned.lock().unwrap().insert(peer, 1);
        }
        let now = Instant::now();
        // The flooding peer fills what may be held for all, short of the bound.
        assert!(bus.take(Received::LaneClosed(flood), now));
        let frame = |seq: u64, len: usize| {
            proto::frame::Frame::new(proto::frame::FrameKind::Publish, 0, 0, seq)
                .with_name("t/x")
                .with_payload(bytes::Bytes::from(vec![0u8; len]))
                .encode(2 << 20)
                .unwrap()
        };
        for seq in 1..=(MAX_HELD_BYTES / (1 << 20)) as u64 {
            assert!(bus.take(Received::Frame(flood, frame(seq, (1 << 20) - 4096)), now));
        }
        assert!(bus.held.contains_key(&flood));
        // Another peer's wait then goes over it: the peer holding the most is let go.
        assert!(bus.take(Received::LaneClosed(quiet), now));
        assert!(bus.take(Received::Frame(quiet, frame(1, 128 << 10)), now));
        assert!(!bus.held.contains_key(&flood), "the flooding peer's wait was cut short");
        assert!(bus.held.contains_key(&quiet), "the other still waits for its lane");
        assert!(bus.held_totals().0 <= MAX_HELD_BYTES);
        assert!(events.try_recv().is_some_and(|e| e.unwrap().from == flood));
        drop(lanes_open);
        assert!(bus.release_due(now));
        assert!(bus.held.is_empty());
        engine.shutdown();
    }

    /// A held lane offer, once released, starts its lane; a closed lane's notice after it
    /// then waits for that lane's end in turn, with what follows it.
    #[test]
    fn a_released_lane_offer_starts_its_lane_and_what_follows_waits_for_it() {
        let (engine, events, mut bus) = bus_reader();
        let peer = PeerId(2);
        let (old_lane, end) = flume::bounded::<()>(1);
        bus.lane_ends.insert(peer, end);
        let (mine, theirs) = lane::pair().unwrap();
        let now = Instant::now();
        assert!(bus.take(Received::Lane(peer, theirs), now));
        assert!(bus.take(Received::LaneClosed(peer), now));
        assert!(bus.take(Received::Frame(peer, publish(1)), now));
        assert_eq!(bus.held_totals().1, 1);
        drop(old_lane);
        assert!(bus.release_due(now));
        // The new lane is read now, and the notice waits for its end.
        assert!(bus.laned.lock().unwrap().contains_key(&peer), "the offered lane was started");
        assert_eq!(bus.held.get(&peer).map(|h| h.msgs.len()), Some(2), "the notice and the frame wait again");
        assert!(events.try_recv().is_none());
        // The writer closes the lane: its reader ends, and what waited goes on.
        drop(mine);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !bus.held.is_empty() {
            assert!(Instant::now() < deadline, "the lane's reader did not end");
            std::thread::sleep(Duration::from_millis(1));
            assert!(bus.release_due(now), "released by the end alone (`now` is before any deadline)");
        }
        assert_eq!(events.try_recv().expect("the frame after the notice").unwrap().from, peer);
        assert_eq!(bus.held_totals(), (0, 0));
        engine.shutdown();
    }

    /// Beyond its most lanes a hub declines offers (reads them until their writer closes them),
    /// and beyond as many again as it may decline, refuses them.
    #[test]
    fn lanes_beyond_the_most_are_declined_then_refused() {
        let lanes = IncomingLanes::default();
        let stop = AtomicBool::new(false);
        let limits = Limits { uid: Some(lane::own_uid()), max_lanes: 2, takes_pooled: true };
        let mut kept = Vec::new();
        let mut said = Vec::new();
        for i in 0..(2 + MAX_DECLINED_LANES + 1) {
            let (_mine, theirs) = lane::pair().unwrap();
            match accept_lane(PeerId(i as u64), None, theirs, &limits, &lanes, &stop) {
                Some((fd, takes)) => {
                    kept.push(fd);
                    said.push(Some(takes));
                }
                None => said.push(None),
            }
        }
        assert_eq!(said[..2], [Some(Takes::Fan), Some(Takes::Fan)]);
        assert!(said[2..2 + MAX_DECLINED_LANES].iter().all(|t| *t == Some(Takes::Declined)));
        assert_eq!(said[2 + MAX_DECLINED_LANES], None);
        // A taken lane whose reader has ended frees its place, for a lane to take (declined
        // lanes alive do not count against it).
        kept.remove(0);
        let (_mine, theirs) = lane::pair().unwrap();
        assert_eq!(accept_lane(PeerId(99), None, theirs, &limits, &lanes, &stop).map(|(_, t)| t), Some(Takes::Fan));
    }
}
