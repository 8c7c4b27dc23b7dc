//! The reader thread: ipmb `recv` → the engine (through its [`Ingress`]). It waits for nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proto::PeerId;

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
    std::thread::Builder::new()
        .name("hsipc-ipmb-reader".into())
        .spawn(move || {
            // Peers whose frames now come through their lane (with the lane's number): their bus
            // messages are copies. A lane's reader takes its peer out again when the lane ends,
            // unless a newer lane from that peer has taken its place.
            let laned: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, u64>>> = Arc::default();
            let mut lanes_accepted = 0u64;
            // Per lane being read: disconnected once its reader has ended (a closed lane's
            // notice on the bus waits for that, so that the lane's last frames go first).
            let mut lane_ends: std::collections::HashMap<PeerId, flume::Receiver<()>> = Default::default();
            let mut next_sweep = Instant::now();
            // Senders heard from: a new one may come with a new ipmb connection to mark.
            let mut heard: std::collections::HashSet<PeerId> = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next_sweep {
                    sweeper.sweep();
                    next_sweep = Instant::now() + CLOEXEC_SWEEP;
                }
                let received = catch_unwind(AssertUnwindSafe(|| receiver.recv(Some(timeout))));
                let msg = match received {
                    Ok(Ok(msg)) => msg,
                    // A timeout only means "nothing yet": the loop never ends on one.
                    Ok(Err(ipmb::RecvError::Timeout)) => continue,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "ipmb recv failed; retrying");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => {
                        // ipmb's state may be poisoned (a retry would panic again): nothing more
                        // comes from the bus, so the hub closes instead of going deaf.
                        ingress.failed("ipmb panicked while receiving from the bus (a malformed message?)");
                        return;
                    }
                };
                let unwrapped = envelope::unwrap(msg, max_len);
                if let Ok(Received::Frame(from, _) | Received::Lane(from, _)) = &unwrapped {
                    if heard.len() < MAX_HEARD && heard.insert(*from) {
                        next_sweep = Instant::now();
                    }
                }
                match unwrapped {
                    Ok(Received::Frame(from, _))
                        if from == local || laned.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&from) => {}
                    Ok(Received::Frame(from, bytes)) => {
                        if !ingress.deliver(from, bytes) {
                            return; // the engine is gone
                        }
                    }
                    Ok(Received::Lane(from, fd)) => {
                        // A new lane from a peer whose last one is still being read (it was cut
                        // off and came back): that one's last frames, and its end, go first.
                        await_lane_end(&mut lane_ends, from);
                        // Every earlier frame from `from` has been delivered: read its lane now.
                        match accept_lane(from, ingress.peer_pid(from), fd, &limits, &lanes, &stop) {
                            Some((fd, takes)) => {
                                lanes_accepted += 1;
                                let number = lanes_accepted;
                                let ended = laned.clone();
                                let (end_tx, end_rx) = flume::bounded::<()>(1);
                                lane_ends.retain(|_, rx| !rx.is_disconnected());
                                lane_ends.insert(from, end_rx);
                                let on_end = move |peer| {
                                    let mut laned = ended.lock().unwrap_or_else(|e| e.into_inner());
                                    if laned.get(&peer) == Some(&number) {
                                        laned.remove(&peer);
                                    }
                                    drop(end_tx);
                                };
                                // Marked before the reader starts: its first frame may follow at once.
                                laned.lock().unwrap_or_else(|e| e.into_inner()).insert(from, number);
                                let reader = LaneReader::new(
                                    fd.clone(),
                                    from,
                                    ingress.clone(),
                                    max_len,
                                    stop.clone(),
                                    takes,
                                    on_end,
                                );
                                // On the hub's runtime if it takes it, else on a thread.
                                let left = match &lane_runner {
                                    Some(runner) => runner.run(reader),
                                    None => Some(reader),
                                };
                                let started = left.map_or(Ok(()), |reader| lane::spawn_thread(reader, from));
                                if let Err(e) = started {
                                    tracing::warn!(%from, error = %e, "cannot start a lane reader");
                                    laned.lock().unwrap_or_else(|e| e.into_inner()).remove(&from);
                                    lane::shut(&fd); // the sender sees the end instead of a silent lane
                                }
                            }
                            None => tracing::warn!(%from, "refused a lane; what that peer writes into it is lost"),
                        }
                    }
                    Ok(Received::LaneClosed(from)) => {
                        // Its frames come through the bus from now on, after the lane's last
                        // ones: wait (briefly) for the lane's reader to have handed them over.
                        await_lane_end(&mut lane_ends, from);
                        laned.lock().unwrap_or_else(|e| e.into_inner()).remove(&from);
                    }
                    Err(envelope::Unwrap::Foreign) => {}
                    Err(envelope::Unwrap::Malformed(why)) => {
                        tracing::debug!(why, "dropped a malformed message")
                    }
                }
            }
        })
        .map_err(|source| TransportError::Io { what: "spawning the ipmb reader thread", source })
}

/// Waits (at most [`LANE_END_WAIT`]) for the reader of `from`'s lane, if one runs, to end.
fn await_lane_end(lane_ends: &mut std::collections::HashMap<PeerId, flume::Receiver<()>>, from: PeerId) {
    if let Some(end) = lane_ends.remove(&from) {
        let _ = end.recv_timeout(LANE_END_WAIT);
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
    let mut takes = if limits.takes_pooled { Takes::Ring } else { Takes::Sealed };
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
    if let Some(pid) = announced_pid.filter(|pid| *pid != maker.pid) {
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
        assert_eq!(takes(accept_lane(PeerId(2), None, lane_made_by(0), &across, &lanes, &stop)), Some(Takes::Ring));
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
        assert_eq!(said[..2], [Some(Takes::Ring), Some(Takes::Ring)]);
        assert!(said[2..2 + MAX_DECLINED_LANES].iter().all(|t| *t == Some(Takes::Declined)));
        assert_eq!(said[2 + MAX_DECLINED_LANES], None);
        // A taken lane whose reader has ended frees its place, for a lane to take (declined
        // lanes alive do not count against it).
        kept.remove(0);
        let (_mine, theirs) = lane::pair().unwrap();
        assert_eq!(accept_lane(PeerId(99), None, theirs, &limits, &lanes, &stop).map(|(_, t)| t), Some(Takes::Ring));
    }
}
