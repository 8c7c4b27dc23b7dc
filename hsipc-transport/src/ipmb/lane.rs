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

use proto::PeerId;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The payload of one lane message (a frame travels in as many as it needs).
pub(super) const CHUNK: usize = 60 * 1024;
/// The first byte of a lane message: more chunks of this frame follow.
pub(super) const MORE: u8 = 1;
/// The first byte of a lane message: the last (or only) chunk of a frame.
pub(super) const LAST: u8 = 0;
/// The first byte of a lane message: the writer closes the lane (it was idle); the peer lives
/// on, and its frames come through the bus again.
pub(super) const CLOSE: u8 = 2;
/// The size of a lane reader's arena for small frames. A frame handed on keeps its arena
/// alive, so it is small: a reader that holds many events pins little memory.
pub(super) const ARENA: usize = 16 * 1024;
/// Frames up to this size go through the arena; larger ones get a buffer of their own.
pub(super) const ARENA_FRAME_MAX: usize = 2 * 1024;

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

/// Reads a lane on a thread of its own until it ends.
pub(super) fn spawn_thread(reader: super::lane_reader::LaneReader, from: PeerId) -> io::Result<()> {
    std::thread::Builder::new().name(format!("hsipc-lane-{from}")).spawn(move || reader.run_blocking())?;
    Ok(())
}
