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
//! The reading end checks that the process that made the pair runs as the same user
//! (`SO_PEERCRED`) and refuses it otherwise, unless lanes across users are allowed.
//!
//! A lane message starts with one byte that says what it is:
//! - `LAST` / `MORE`: a frame, or a 60 KiB chunk of one with more to come;
//! - `POOL`: the writer's shared pool (two fds: data and board) for the pooled frames that
//!   follow; `POOLED`: a frame of 16 KiB or more, as its place in the pool (see `pool`);
//! - `SEALED`: a large frame that does not go pooled (over the pool's limit, the pool full, or
//!   a reader that takes no pooled frames), in a sealed memfd of its own (see `sealed`);
//! - `CLOSE`: the writer closes the idle lane;
//! - `RING`: the writer's ring (two fds: data and control) for the small frames that follow
//!   (see `ring`); from then on the ring holds the lane's order (with the closing message), and
//!   each frame that still goes through the socket (with its pool offer, if any) has its mark
//!   there; `WAKE`: the writer wakes a reader that said it sleeps;
//! - `FAN_POOL`: the writer's hub's fan-out pool (one fd, sealed against writes: see
//!   `fan_pool`), sent after `POOL`; `FANNED`: a large event published to several peers, as the
//!   place of its one copy in that pool and this lane's sequence number and flags.
//!
//! The reader writes back on the same socket pair, first thing ([`Takes`], a byte or two): that
//! it takes sealed frames, or sealed and pooled ones, or those and a ring (followed by "pooled",
//! so that a writer of the version before rings, which knows no "ring", goes by that), or all
//! those and fan-out frames (followed by "ring" and "pooled", for the same reason), or that
//! its hub declines the lane (it reads its most lanes; it reads what comes until the writer
//! closes the lane, as after an idle close, and the writer's frames go through the bus from
//! then on). A reader that says nothing (an earlier version) gets only chunks. Later, a reader
//! with a ring says `SPACE` when it has made room in a full one. `large` decides how each frame
//! goes.

use proto::PeerId;
use proto::frame::WireFrame;
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
/// The first byte of a lane message: the frame is in the sealed memfd passed with this message
/// (see `sealed`); the rest of the message is its length, 8 bytes little-endian.
pub(super) const SEALED: u8 = 3;
/// The first byte of a lane message: the writer's pool (see `pool`), its data and its board
/// passed with this message; the rest of the message is the data's size, 8 bytes little-endian.
pub(super) const POOL: u8 = 4;
/// The first byte of a lane message: a frame in the writer's pool; the rest of the message is
/// its offset and its length, 8 bytes little-endian each.
pub(super) const POOLED: u8 = 5;
/// The first byte of a lane message: the writer's ring (see `ring`), its data and its control
/// page passed with this message; the rest of the message is the ring's size, 8 bytes
/// little-endian.
pub(super) const RING: u8 = 6;
/// The first byte of a lane message: wake up, the ring has frames (sent to a reader that said
/// it sleeps).
pub(super) const WAKE: u8 = 7;
/// The first byte of a lane message: the writer's hub's fan-out pool (see `fan_pool`), its data
/// passed with this message; the rest of the message is its size, 8 bytes little-endian. Sent
/// after the lane's pool (whose board the fan-out pool's runs are marked released on).
pub(super) const FAN_POOL: u8 = 8;
/// The first byte of a lane message: a frame in the writer's hub's fan-out pool, standing for
/// this lane's frame of a fan-out; the rest of the message is its offset and its length, 8 bytes
/// little-endian each, then this lane's frame's sequence number (8 bytes little-endian) and
/// flags (1 byte), which the frame is decoded with (see `Ingress::deliver_stamped`).
pub(super) const FANNED: u8 = 9;
/// What a reader with a ring says back when it has made room in it for a writer that wants some.
const SPACE: u8 = 7;
/// What a lane's reader takes besides chunks. The reader says it once, first thing, with a
/// byte or two back to the writer (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Takes {
    /// Chunks only: what a writer assumes until told (a reader of an earlier version never
    /// says anything).
    #[default]
    Chunks,
    /// Chunks and sealed frames.
    Sealed,
    /// Chunks, sealed and pooled frames.
    Pooled,
    /// Chunks, sealed and pooled frames, and small frames through a ring.
    Ring,
    /// All of [`Takes::Ring`], and frames in the writer's hub's fan-out pool.
    Fan,
    /// Nothing more: the hub declines the lane, and reads chunks until the writer closes it.
    Declined,
}

impl Takes {
    /// The byte a reader sends back to say it. (Development builds sent 1, for "sealed" in
    /// some and "sealed and pooled" in others; 1 still reads as "sealed", right for all.)
    fn code(self) -> u8 {
        match self {
            Takes::Chunks => 0,
            Takes::Sealed => 5,
            Takes::Pooled => 3,
            Takes::Declined => 4,
            Takes::Ring => 6,
            Takes::Fan => 8,
        }
    }

    /// Whether the reader takes pooled frames.
    pub(super) fn pooled(self) -> bool {
        matches!(self, Takes::Pooled | Takes::Ring | Takes::Fan)
    }

    /// Whether the reader takes sealed frames.
    pub(super) fn sealed(self) -> bool {
        matches!(self, Takes::Sealed | Takes::Pooled | Takes::Ring | Takes::Fan)
    }

    /// Whether the reader takes a ring.
    pub(super) fn ring(self) -> bool {
        matches!(self, Takes::Ring | Takes::Fan)
    }

    /// Whether the reader takes frames in the fan-out pool.
    pub(super) fn fan(self) -> bool {
        self == Takes::Fan
    }

    /// What a reader takes, having said `self` and then `said`: a reader says what it takes
    /// and then what earlier versions know of it ("fan", "ring", "pooled"), and the most it
    /// said stands.
    pub(super) fn then(self, said: Takes) -> Takes {
        let rank = |t: Takes| match t {
            Takes::Pooled => 1,
            Takes::Ring => 2,
            Takes::Fan => 3,
            _ => 0,
        };
        if rank(self) > rank(said) && rank(said) > 0 { self } else { said }
    }

    fn from_code(code: u8) -> Option<Takes> {
        match code {
            5 | 1 => Some(Takes::Sealed),
            3 => Some(Takes::Pooled),
            4 => Some(Takes::Declined),
            6 => Some(Takes::Ring),
            8 => Some(Takes::Fan),
            _ => None,
        }
    }
}

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
pub(super) fn write_chunks(fd: &OwnedFd, frame: &WireFrame, from: usize) -> io::Result<usize> {
    let total = chunk_count(frame);
    let pieces = frame.pieces();
    for i in from..total {
        let chunk = span(pieces.get(), i * CHUNK, ((i + 1) * CHUNK).min(frame.len()));
        match send_gather(fd, if i + 1 < total { MORE } else { LAST }, chunk, &[]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(i),
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// How many lane messages `frame` takes (an empty frame takes one).
pub(super) fn chunk_count(frame: &WireFrame) -> usize {
    frame.len().div_ceil(CHUNK).max(1)
}

/// Bytes `start..end` of a frame in `pieces`, as the part in each piece.
fn span([head, body]: [&[u8]; 2], start: usize, end: usize) -> [&[u8]; 2] {
    let cut =
        |from: usize, to: usize, piece: &'_ [u8]| -> (usize, usize) { (from.min(piece.len()), to.min(piece.len())) };
    let (a, b) = cut(start, end, head);
    let (c, d) = cut(start.saturating_sub(head.len()), end.saturating_sub(head.len()), body);
    [&head[a..b], &body[c..d]]
}

/// Writes the closing message into an idle lane, if it has room: `Ok(false)` if not (try later).
pub(super) fn write_close(fd: &OwnedFd) -> io::Result<bool> {
    match send_once(fd, CLOSE, &[]) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// One non-blocking attempt to send a sealed frame's memfd, `len` bytes long: `Ok(false)` if
/// the lane has no room now.
pub(super) fn write_sealed(fd: &OwnedFd, memfd: &OwnedFd, len: usize) -> io::Result<bool> {
    sent(send_gather(fd, SEALED, [&(len as u64).to_le_bytes(), &[]], &[memfd]))
}

/// One non-blocking attempt to hand the writer's pool to the reader: `Ok(false)` if the lane
/// has no room now.
pub(super) fn write_pool(fd: &OwnedFd, memfds: [&OwnedFd; 2], size: usize) -> io::Result<bool> {
    sent(send_gather(fd, POOL, [&(size as u64).to_le_bytes(), &[]], &memfds))
}

/// One non-blocking attempt to hand the writer's ring to the reader: `Ok(false)` if the lane
/// has no room now.
pub(super) fn write_ring(fd: &OwnedFd, memfds: [&OwnedFd; 2], size: usize) -> io::Result<bool> {
    sent(send_gather(fd, RING, [&(size as u64).to_le_bytes(), &[]], &memfds))
}

/// Wakes a reader that said it sleeps. A lane with no room needs no wake-up: its reader has
/// messages to read.
pub(super) fn write_wake(fd: &OwnedFd) -> io::Result<()> {
    match send_once(fd, WAKE, &[]) {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

/// One non-blocking attempt to send the place of a frame in the writer's pool: `Ok(false)` if
/// the lane has no room now.
pub(super) fn write_pooled(fd: &OwnedFd, offset: u64, len: usize) -> io::Result<bool> {
    let mut body = [0u8; 16];
    body[..8].copy_from_slice(&offset.to_le_bytes());
    body[8..].copy_from_slice(&(len as u64).to_le_bytes());
    sent(send_gather(fd, POOLED, [&body, &[]], &[]))
}

/// One non-blocking attempt to hand the writer's hub's fan-out pool to the reader: `Ok(false)`
/// if the lane has no room now.
pub(super) fn write_fan_pool(fd: &OwnedFd, memfd: &OwnedFd, size: usize) -> io::Result<bool> {
    sent(send_gather(fd, FAN_POOL, [&(size as u64).to_le_bytes(), &[]], &[memfd]))
}

/// One non-blocking attempt to send the place of a frame in the writer's hub's fan-out pool, with
/// this lane's stamp: `Ok(false)` if the lane has no room now.
pub(super) fn write_fanned(fd: &OwnedFd, offset: u64, len: usize, stamp: proto::frame::Stamp) -> io::Result<bool> {
    let mut body = [0u8; 25];
    body[..8].copy_from_slice(&offset.to_le_bytes());
    body[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    body[16..24].copy_from_slice(&stamp.seq.to_le_bytes());
    body[24] = stamp.flags;
    sent(send_gather(fd, FANNED, [&body, &[]], &[]))
}

/// `Ok(false)` for a send that would have had to wait.
fn sent(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// One non-blocking attempt to send a message without a body.
fn send_once(fd: &OwnedFd, flag: u8, data: &[u8]) -> io::Result<()> {
    send_gather(fd, flag, [data, &[]], &[])
}

/// One non-blocking attempt to send a message: `flag`, then the parts of `data` one after
/// the other, with the fds `pass` (at most two) attached.
fn send_gather(fd: &OwnedFd, flag: u8, data: [&[u8]; 2], pass: &[&OwnedFd]) -> io::Result<()> {
    let mut iov = [
        libc::iovec { iov_base: &flag as *const u8 as *mut libc::c_void, iov_len: 1 },
        libc::iovec { iov_base: data[0].as_ptr() as *mut libc::c_void, iov_len: data[0].len() },
        libc::iovec { iov_base: data[1].as_ptr() as *mut libc::c_void, iov_len: data[1].len() },
    ];
    // SAFETY: an all-zero msghdr is valid; it is then pointed at the iovecs above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if data[1].is_empty() { 2 } else { 3 };
    let mut control = FdControl::new();
    if !pass.is_empty() {
        control.put(&mut msg, pass);
    }
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

/// Room for the control message of one passed fd, aligned as `cmsghdr` needs.
#[repr(C)]
struct FdControl {
    _align: [libc::cmsghdr; 0],
    buf: [u8; 64],
}

impl FdControl {
    fn new() -> Self {
        FdControl { _align: [], buf: [0; 64] }
    }

    /// Points `msg` at this buffer, holding `fds` (one or two) as `SCM_RIGHTS`.
    fn put(&mut self, msg: &mut libc::msghdr, fds: &[&OwnedFd]) {
        let fds = &fds[..fds.len().min(2)];
        let bytes = (fds.len() * std::mem::size_of::<libc::c_int>()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        debug_assert!(space <= self.buf.len());
        msg.msg_control = self.buf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is aligned for cmsghdr and large enough for one header
        // and two ints (64 bytes), so CMSG_FIRSTHDR is non-null and its data writable.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
            let data = libc::CMSG_DATA(cmsg) as *mut libc::c_int;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
        }
    }

    /// Takes every fd a received `msg` carried (so that each is closed when dropped).
    fn take(msg: &libc::msghdr) -> Vec<OwnedFd> {
        let mut fds = Vec::new();
        // SAFETY: `msg` was filled by recvmsg, so its control buffer and length describe
        // valid control messages; CMSG_NXTHDR stays within them.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg) as *const libc::c_int;
                    let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                    for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        if fd >= 0 {
                            fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(msg, cmsg);
            }
        }
        fds
    }
}

/// One message read from a lane.
pub(super) enum Received {
    /// A message of this many bytes (more than the buffer held if it was cut short), with
    /// the fds it carried.
    Message(usize, Vec<OwnedFd>),
    /// Nothing to read now.
    WouldBlock,
    /// End of file, or an error: the lane is over.
    Ended,
    /// A message whose fds the kernel dropped (this process has no fd to spare): it cannot be
    /// read, and the lane cannot go on. This process's failure, not the writer's.
    FdsDropped,
}

/// Whether the lane holds a message its reader has not read yet (the writer's end may be
/// closed: what it wrote before is still there).
pub(super) fn has_unread(fd: &OwnedFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into a live local; never waits.
    let n = unsafe {
        libc::recv(fd.as_raw_fd(), &mut byte as *mut u8 as *mut libc::c_void, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    // A message (or an error other than "nothing now", to be safe).
    n > 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
}

/// Reads one message into `buf` (waiting for it if `wait`).
pub(super) fn receive(fd: &OwnedFd, buf: &mut [u8], wait: bool) -> Received {
    let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
    let mut control = FdControl::new();
    let mut resets = 0;
    loop {
        // SAFETY: an all-zero msghdr is valid; it is pointed at the iovec and control buffer.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.buf.len() as _;
        let flags = libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC | if wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: the msghdr points at live buffers of the given lengths.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Received::WouldBlock,
                // The writer closed its end with some of this reader's messages back to it
                // unread: Linux reports that once, ahead of the frames still queued here. They
                // are read on; the end of file follows them.
                io::ErrorKind::ConnectionReset if resets < 3 => {
                    resets += 1;
                    continue;
                }
                _ => return Received::Ended,
            }
        }
        let fds = if msg.msg_controllen > 0 { FdControl::take(&msg) } else { Vec::new() };
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            tracing::warn!("fds passed through a lane were dropped: this process has no fd to spare");
            return Received::FdsDropped;
        }
        if n == 0 {
            return Received::Ended;
        }
        return Received::Message(n as usize, fds);
    }
}

/// Tells a lane's writer what its reader takes; best effort, never waits (a message the socket
/// cannot take is lost: the writer then takes fewer of its fast paths, nothing more).
pub(super) fn say(fd: &OwnedFd, takes: Takes) {
    say_byte(fd, takes.code());
    // A writer of a version before fan-out pools goes by the last code it knows ("ring"), one
    // before rings by "pooled"; one of this version keeps the most said (see `Takes::then`).
    if takes == Takes::Fan {
        say_byte(fd, Takes::Ring.code());
    }
    if takes.ring() {
        say_byte(fd, Takes::Pooled.code());
    }
}

/// Tells a lane's writer that there is room in its ring again.
pub(super) fn say_space(fd: &OwnedFd) {
    say_byte(fd, SPACE);
}

fn say_byte(fd: &OwnedFd, what: u8) {
    if what == 0 {
        return;
    }
    // SAFETY: one byte from a live local; MSG_DONTWAIT and MSG_NOSIGNAL: no wait, no signal.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            &what as *const u8 as *const libc::c_void,
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// What a lane's reader has said it takes, if it has said anything since the last look (the
/// latest, if more; "ring" wins over a "pooled" said with it). Never waits; reads a bounded
/// number of messages (taking in its `SPACE` messages too). `Err` if the reader's end is gone.
pub(super) fn read_back(fd: &OwnedFd) -> io::Result<Option<Takes>> {
    let mut buf = [0u8; 16];
    let mut said: Option<Takes> = None;
    for _ in 0..256 {
        // SAFETY: `buf` is valid for writes of its length.
        let n =
            unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
        if n == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        if n == 1 {
            said = match (said, Takes::from_code(buf[0])) {
                (Some(before), Some(new)) => Some(before.then(new)),
                (before, new) => new.or(before),
            };
        }
    }
    Ok(said)
}

/// How many bytes the writer's end has sent that the reader has not read yet (as the kernel
/// counts them: a message costs its buffer's whole size). `usize::MAX` if it cannot tell.
pub(super) fn unread_bytes(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `n`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r != 0 { usize::MAX } else { n.max(0) as usize }
}

/// Reads and forgets everything a lane's reader has sent back, before the writer closes its
/// end (a close with unread messages makes the reader's next read fail once; see `receive`).
pub(super) fn drain_back(fd: &OwnedFd) {
    let mut buf = [0u8; 16];
    for _ in 0..1 << 16 {
        // SAFETY: `buf` is valid for writes of its length.
        let n =
            unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            return;
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

/// The process that made the socket pair behind `fd`: its user id and process id (as this
/// process's pid namespace sees it).
pub(super) struct Maker {
    pub(super) uid: u32,
    pub(super) pid: u32,
}

/// Who made the socket pair behind `fd` (`SO_PEERCRED`: set by the kernel, not the peer).
pub(super) fn maker(fd: &OwnedFd) -> io::Result<Maker> {
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
    Ok(Maker { uid: cred.uid, pid: u32::try_from(cred.pid).unwrap_or(0) })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that closes its end without reading what its reader sent back: the reader
    /// still gets every frame, then the end.
    #[test]
    fn frames_before_a_close_are_read_even_with_unread_messages_back() {
        let (writer, reader) = pair().unwrap();
        say(&reader, Takes::Pooled);
        for i in 0..5u8 {
            let frame = WireFrame::from(bytes::Bytes::from(vec![i; 100]));
            assert_eq!(write_chunks(&writer, &frame, 0).unwrap(), 1);
        }
        assert!(write_close(&writer).unwrap());
        drop(writer);
        let mut buf = vec![0u8; CHUNK + 1];
        let mut got = Vec::new();
        loop {
            match receive(&reader, &mut buf, false) {
                Received::Message(n, _) => got.push((buf[0], n)),
                Received::Ended => break,
                Received::WouldBlock => panic!("a closed lane would block"),
                Received::FdsDropped => panic!("no fds were passed"),
            }
        }
        let want: Vec<(u8, usize)> = (0..5).map(|_| (LAST, 101)).chain([(CLOSE, 1)]).collect();
        assert_eq!(got, want);
    }
}
