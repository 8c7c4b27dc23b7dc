//! Direct lanes: frames between two hubs on a socket pair of their own, past ipmb's controller.
//!
//! A lane runs one way, from the hub that made it to one peer. The first time a hub sends a
//! frame to a peer, it makes a `SOCK_SEQPACKET` socket pair, sends the reading end to the peer
//! over the bus (ipmb passes fds), and from then on writes every frame for that peer (its
//! share of broadcasts included) into the lane. Order is kept across the switch without a
//! handshake:
//!
//! - the offer travels on the bus after every frame sent to that peer before it, and the
//!   peer's bus reader handles messages one at a time: it starts reading the lane only once it
//!   has handled every earlier frame;
//! - after the offer, the peer ignores that sender's bus messages (broadcasts still go out on
//!   the bus for peers without a lane; the peer gets its copy through the lane instead).
//!
//! The lane's end of file is the sender's death or close, seen at once; a lane does not
//! depend on the bus controller, so traffic that has its lanes survives the controller's death.
//! A frame larger than one lane message travels in chunks. The reading end checks that the
//! process that made the pair runs as the same user (`SO_PEERCRED`) and refuses it otherwise.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use proto::PeerId;

use crate::ingress::Ingress;

/// The payload of one lane message (a frame travels in as many as it needs).
const CHUNK: usize = 60 * 1024;
/// The first byte of a lane message: more chunks of this frame follow.
const MORE: u8 = 1;
/// The first byte of a lane message: the last (or only) chunk of a frame.
const LAST: u8 = 0;
/// The first byte of a lane message: the writer closes the lane (it was idle); the peer lives
/// on, and its frames come through the bus again.
const CLOSE: u8 = 2;
/// The size of a lane reader's arena for small frames. A frame handed on keeps its arena
/// alive, so it is small: a reader that holds many events pins little memory.
const ARENA: usize = 16 * 1024;
/// Frames up to this size go through the arena; larger ones get a buffer of their own.
const ARENA_FRAME_MAX: usize = 2 * 1024;

/// Makes a lane: (the end this hub writes, the end it hands to the peer).
pub(super) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into the array on success.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes the chunks of `frame` from chunk `from` on, as long as the lane has room; returns how
/// many chunks the frame has written in all (all of them: the frame is through).
pub(super) fn write_chunks(fd: &OwnedFd, frame: &[u8], from: usize) -> io::Result<usize> {
    let total = chunk_count(frame);
    for i in from..total {
        let chunk = &frame[(i * CHUNK).min(frame.len())..((i + 1) * CHUNK).min(frame.len())];
        match send_once(fd, if i + 1 < total { MORE } else { LAST }, chunk) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(i),
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// How many lane messages `frame` takes (an empty frame takes one).
pub(super) fn chunk_count(frame: &[u8]) -> usize {
    frame.len().div_ceil(CHUNK).max(1)
}

/// Writes the closing message into an idle lane, if it has room: `Ok(false)` if not (try later).
pub(super) fn write_close(fd: &OwnedFd) -> io::Result<bool> {
    match send_once(fd, CLOSE, &[]) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// One non-blocking attempt to send a chunk.
fn send_once(fd: &OwnedFd, flag: u8, data: &[u8]) -> io::Result<()> {
    let mut iov = [
        libc::iovec { iov_base: &flag as *const u8 as *mut libc::c_void, iov_len: 1 },
        libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() },
    ];
    // SAFETY: an all-zero msghdr is valid; it is then pointed at the two iovecs above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    loop {
        // SAFETY: the msghdr and its iovecs point at live memory for the duration of the call;
        // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether `fd` is a Unix `SOCK_SEQPACKET` socket with an unnamed peer (a socket pair end, not
/// a connection to some listening socket).
pub(super) fn is_lane_socket(fd: &OwnedFd) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for writes of the given size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 || ty != libc::SOCK_SEQPACKET {
        return false;
    }
    // SAFETY: an all-zero sockaddr_un is valid; getpeername fills it and its length.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` and `alen` are valid for writes of the given size.
    let r = unsafe {
        libc::getpeername(fd.as_raw_fd(), &mut addr as *mut libc::sockaddr_un as *mut libc::sockaddr, &mut alen)
    };
    r == 0
        && addr.sun_family as libc::c_int == libc::AF_UNIX
        && alen as usize == std::mem::size_of::<libc::sa_family_t>()
}

/// The user id of the process that made the socket pair behind `fd`.
pub(super) fn maker_uid(fd: &OwnedFd) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is valid; getsockopt fills it and its length.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the given size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The effective user id of process `pid` (from `/proc/<pid>/status`), if it can be read.
pub(super) fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Real, effective, saved, filesystem.
    line.split_whitespace().nth(2)?.parse().ok()
}

/// This process's effective user id (what `SO_PEERCRED` reports for the pairs it makes).
pub(super) fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Wakes a lane's reader for good (at close): its `recv` returns end of file.
pub(super) fn shut(fd: &OwnedFd) {
    // SAFETY: shutdown on an fd we hold open; it only changes the socket's state.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Reads lane `fd` from peer `from` on a thread of its own, handing each frame to the engine,
/// until end of file: then the peer is gone (unless this hub is closing).
pub(super) fn spawn_reader(
    fd: Arc<OwnedFd>,
    from: PeerId,
    ingress: Ingress,
    max_len: usize,
    stop: Arc<AtomicBool>,
    on_end: impl FnOnce(PeerId) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new().name(format!("hsipc-lane-{from}")).spawn(move || {
        let mut buf = vec![0u8; CHUNK + 1];
        let mut frame = BytesMut::new();
        // Small frames are copied into a shared arena and handed on as slices of it: no
        // allocation per frame, and the protocol's slices of a frame need none either.
        let mut arena = BytesMut::new();
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_TRUNC)
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break; // end of file (or a broken socket): the sender is gone
            }
            let n = n as usize;
            if n > buf.len() {
                tracing::debug!(%from, "oversized lane message; dropping the lane");
                break;
            }
            if buf[0] == CLOSE {
                // Idle, closed by its writer, which lives on: no departure to report.
                tracing::debug!(%from, "lane closed by its writer (idle)");
                on_end(from);
                return;
            }
            let bytes = if buf[0] == LAST && frame.is_empty() && n - 1 <= ARENA_FRAME_MAX {
                if arena.capacity() - arena.len() < n - 1 {
                    arena = BytesMut::with_capacity(ARENA);
                }
                arena.extend_from_slice(&buf[1..n]);
                Some(arena.split().freeze())
            } else {
                frame.extend_from_slice(&buf[1..n]);
                if frame.len() > max_len {
                    tracing::debug!(%from, "lane frame over the maximum message length; dropping the lane");
                    break;
                }
                (buf[0] == LAST).then(|| std::mem::take(&mut frame).freeze())
            };
            if let Some(bytes) = bytes {
                if !ingress.deliver(from, bytes) {
                    shut(&fd); // the engine is gone
                    return;
                }
            }
        }
        // The sender sees the end at once (instead of filling a lane nobody reads).
        shut(&fd);
        on_end(from);
        if !stop.load(Ordering::Relaxed) {
            tracing::debug!(%from, "lane closed: the peer is gone");
            ingress.peer_lost(from);
        }
    })?;
    Ok(())
}
