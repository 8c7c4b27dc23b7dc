//! The lanes a hub writes, one per peer, and the frames waiting for room in each.
//!
//! Writing does not block: a frame a lane cannot take now waits in that lane's own queue
//! (behind any frame already waiting, so the peer's order holds), and the engine's writer
//! thread writes it once the lane has room (it sleeps in `poll` on the full lanes, see
//! [`Transport::waiting`](crate::Transport::waiting)). So a peer that stops reading holds back
//! its own frames only, never another peer's. What waits for one lane is bounded: beyond
//! [`MAX_WAITING_BYTES`] or [`MAX_WAITING_FRAMES`], a thread that must not wait leaves the frame
//! to the engine's writer (whose queue holds publishers back), and the writer waits for that
//! lane to take some. A lane whose waiting frames make no progress for the stall timeout is
//! given up: its peer is cut off.

use std::collections::VecDeque;

use proto::fast_map::FastMap as HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use proto::PeerId;
use proto::frame::WireFrame;

use super::lane;
use super::large::{How, LargeFrames};

/// Most bytes that wait for one lane before its writers wait (a larger frame still goes, alone).
const MAX_WAITING_BYTES: usize = 64 << 20;
/// Most frames that wait for one lane before its writers wait.
const MAX_WAITING_FRAMES: usize = 8192;

/// One peer's lane and what waits for it.
struct OutLane {
    fd: OwnedFd,
    /// Frames accepted and not yet fully written, oldest first.
    waiting: VecDeque<Outgoing>,
    /// Chunks of the first waiting frame already written.
    written: usize,
    /// How large frames go.
    large: LargeFrames,
    waiting_bytes: usize,
    /// When the waiting frames last made progress (or began to wait).
    progress: Instant,
    /// When a frame for this peer alone (not its copy of a broadcast) last went in, as dated
    /// by the idle check that saw [`used`](Self::used) (so never earlier than the use).
    last_used: Instant,
    /// Whether such a frame went in since the last idle check.
    used: bool,
}

impl Drop for OutLane {
    /// What the reader sent back is read before the end closes: a close with it unread would
    /// make the reader's next read fail once, ahead of the last frames.
    fn drop(&mut self) {
        lane::drain_back(&self.fd);
    }
}

/// A frame waiting for room in a lane, and how it goes.
struct Outgoing {
    frame: WireFrame,
    how: How,
}

/// The lanes this hub writes.
pub(super) struct OutLanes {
    lanes: HashMap<PeerId, OutLane>,
    stall: Duration,
}

impl OutLanes {
    pub(super) fn new(stall: Duration) -> Self {
        OutLanes { lanes: HashMap::default(), stall: stall.max(Duration::from_millis(1)) }
    }

    pub(super) fn insert(&mut self, peer: PeerId, fd: OwnedFd) {
        let now = Instant::now();
        let lane = OutLane {
            fd,
            waiting: VecDeque::new(),
            written: 0,
            large: LargeFrames::default(),
            waiting_bytes: 0,
            progress: now,
            last_used: now,
            used: false,
        };
        self.lanes.insert(peer, lane);
    }

    pub(super) fn contains(&self, peer: PeerId) -> bool {
        self.lanes.contains_key(&peer)
    }

    pub(super) fn len(&self) -> usize {
        self.lanes.len()
    }

    pub(super) fn peers(&self) -> Vec<PeerId> {
        self.lanes.keys().copied().collect()
    }

    /// Forgets a lane (its peer sees the end once every copy of the fd is closed).
    pub(super) fn remove(&mut self, peer: PeerId) {
        self.lanes.remove(&peer);
    }

    pub(super) fn clear(&mut self) {
        self.lanes.clear();
    }

    /// Writes `frame` into `peer`'s lane, or queues it behind what waits there. When too much
    /// waits already, this waits for the lane to take some (at most until it has made no
    /// progress for the stall timeout). `Err` if the lane broke or stalled: its peer is to be
    /// cut off.
    pub(super) fn write(&mut self, peer: PeerId, frame: &WireFrame) -> io::Result<()> {
        let stall = self.stall;
        let Some(lane) = self.lanes.get_mut(&peer) else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no lane to that peer"));
        };
        while lane.is_full(frame) {
            lane.wait_for_room(stall)?;
        }
        lane.push(frame)
    }

    /// Writes `frame`, for `peer` alone, from a thread that must not wait: on a lane, it goes
    /// now or waits in the lane's queue, unless too much waits there already. `Ok(false)` if
    /// it did not go (no lane to `peer`, or a full queue: the engine's writer takes it).
    pub(super) fn try_write(&mut self, peer: PeerId, frame: &WireFrame) -> io::Result<bool> {
        let Some(lane) = self.lanes.get_mut(&peer) else { return Ok(false) };
        if lane.large.declined() {
            // To be closed: the writer sends what comes meanwhile, and closes it once the
            // reader has taken all (a peer kept busy from other threads would keep it open).
            return Ok(false);
        }
        if lane.is_full(frame) {
            lane.flush(Instant::now())?;
            if lane.is_full(frame) {
                return Ok(false);
            }
        }
        // A frame for this peer alone: the lane is in use (no clock read per frame: the idle
        // check, about once a second, dates the use).
        lane.used = true;
        lane.push(frame).map(|()| true)
    }

    /// Notes that a frame for `peer` alone is going into its lane (the lane is in use).
    pub(super) fn touch(&mut self, peer: PeerId) {
        if let Some(lane) = self.lanes.get_mut(&peer) {
            lane.used = true;
        }
    }

    /// Closes the lanes no frame for their peer alone has used for `idle` (nothing waits in
    /// them): each gets a closing message, after which its reader ends without taking the peer
    /// for gone. Returns their peers, whose frames go through the bus (or a new lane) from now;
    /// adds to `broken` the lanes found broken on the way (their peers are to be cut off).
    pub(super) fn close_idle(&mut self, idle: Duration, broken: &mut Vec<(PeerId, io::Error)>) -> Vec<PeerId> {
        let now = Instant::now();
        let mut closed = Vec::new();
        self.lanes.retain(|peer, l| {
            if std::mem::take(&mut l.used) {
                l.last_used = now;
            }
            let unused = l.waiting.is_empty() && now.saturating_duration_since(l.last_used) >= idle;
            // A lane with no room for the closing message stays until the next look.
            let close = unused && closes(*peer, l, broken);
            if close {
                closed.push(*peer);
            }
            !close
        });
        closed
    }

    /// Closes the lanes whose reader's hub declined them, once nothing waits in them (their
    /// reader reads until the closing message). Returns their peers, whose frames go through the
    /// bus from now on; adds to `broken` the lanes found broken on the way.
    pub(super) fn close_declined(&mut self, broken: &mut Vec<(PeerId, io::Error)>) -> Vec<PeerId> {
        let mut closed = Vec::new();
        self.lanes.retain(|peer, l| {
            if !l.large.heard() {
                let _ = l.large.read_back(&l.fd); // a reader that is gone shows in the next write
            }
            let close = l.large.declined() && l.waiting.is_empty() && closes(*peer, l, broken);
            if close {
                closed.push(*peer);
            }
            !close
        });
        closed
    }

    /// Gives back the pages of lane pools beyond their first megabytes, for lanes whose pool
    /// has had no frame for `quiet`.
    pub(super) fn trim_pools(&mut self, quiet: Duration) {
        let now = Instant::now();
        for lane in self.lanes.values_mut() {
            lane.large.trim_if_quiet(now, quiet);
        }
    }

    /// Writes what waits, as far as the lanes take it now. Returns the peers whose lane broke,
    /// or made no progress for the stall timeout (their reader is stuck).
    pub(super) fn flush(&mut self) -> Vec<(PeerId, io::Error)> {
        let now = Instant::now();
        let mut failed = Vec::new();
        for (peer, lane) in &mut self.lanes {
            if let Err(e) = lane.flush(now) {
                failed.push((*peer, e));
            } else if !lane.waiting.is_empty() && now >= lane.progress + self.stall {
                failed.push((*peer, io::Error::new(io::ErrorKind::TimedOut, "the lane's reader is stuck")));
            }
        }
        failed
    }

    /// The lanes with frames waiting, to poll for room (writable: room in the socket;
    /// readable: the reader says it made room in the ring), and when the first of them stalls.
    pub(super) fn waiting(&self) -> Option<(Vec<RawFd>, Vec<RawFd>, Instant)> {
        let full: Vec<&OutLane> = self.lanes.values().filter(|l| !l.waiting.is_empty()).collect();
        let until = full.iter().map(|l| l.progress + self.stall).min()?;
        let fds = |ring: bool| full.iter().filter(|l| l.large.ring_full() == ring).map(|l| l.fd.as_raw_fd()).collect();
        Some((fds(false), fds(true), until))
    }

    /// At close: writes what waits, waiting for room until `deadline` at most.
    pub(super) fn drain(&mut self, deadline: Instant) {
        loop {
            // A broken lane takes nothing more (and would wake `poll` at once, forever).
            for (peer, _) in self.flush() {
                self.lanes.remove(&peer);
            }
            let Some((writable, readable, _)) = self.waiting() else { return };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let poll = |events| move |&fd: &RawFd| libc::pollfd { fd, events, revents: 0 };
            let mut polls: Vec<libc::pollfd> =
                writable.iter().map(poll(libc::POLLOUT)).chain(readable.iter().map(poll(libc::POLLIN))).collect();
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: a valid array of pollfds; the fds stay open (owned by `self`).
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        }
    }
}

/// Writes a lane's closing message: whether it went (no room: not now); a lane found broken is
/// added to `broken` (and stays, for its peer to be cut off).
fn closes(peer: PeerId, lane: &mut OutLane, broken: &mut Vec<(PeerId, io::Error)>) -> bool {
    match lane.large.write_close(&lane.fd) {
        Ok(went) => went,
        Err(e) => {
            broken.push((peer, e));
            false
        }
    }
}

impl OutLane {
    /// Whether `frame` must wait for room in the queue (a frame alone always has room).
    fn is_full(&self, frame: &WireFrame) -> bool {
        !self.waiting.is_empty()
            && (self.waiting_bytes + frame.len() > MAX_WAITING_BYTES || self.waiting.len() >= MAX_WAITING_FRAMES)
    }

    /// Writes `frame`, or queues it behind what waits.
    fn push(&mut self, frame: &WireFrame) -> io::Result<()> {
        if self.waiting.is_empty() {
            self.large.prepare_lane(&self.fd)?;
        }
        let mut how = self.large.prepare(&self.fd, frame);
        if self.waiting.is_empty() {
            let written = self.large.write(&self.fd, frame, &mut how, 0)?;
            if written == how.parts(frame) {
                return Ok(()); // the common case: nothing kept, nothing cloned
            }
            self.written = written;
            self.progress = Instant::now();
        }
        self.waiting_bytes += frame.len();
        // It may wait long (a peer that does not read): it keeps only its own bytes alive.
        self.waiting.push_back(Outgoing { frame: frame.detached(), how });
        Ok(())
    }

    /// Waits until the lane takes some of what waits: `TimedOut` once it has taken nothing
    /// for `stall`.
    fn wait_for_room(&mut self, stall: Duration) -> io::Result<()> {
        let before = self.waiting.len();
        loop {
            self.flush(Instant::now())?;
            if self.waiting.len() < before {
                return Ok(());
            }
            let left = (self.progress + stall).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the lane's reader is stuck"));
            }
            let events = if self.large.ring_full() { libc::POLLIN } else { libc::POLLOUT };
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 };
            let ms = left.as_millis().clamp(1, 100) as libc::c_int;
            // SAFETY: one valid pollfd; the fd stays open (owned by `self`).
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// Writes waiting frames until the lane is full or nothing waits.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        if self.large.ring_full() {
            // Takes in what the reader said (that it made room), so the fd polls quiet again;
            // finds out, too, if the reader is gone (writing into the ring would not tell).
            self.large.read_back(&self.fd)?;
        }
        while let Some(mut front) = self.waiting.pop_front() {
            let written = self.large.write(&self.fd, &front.frame, &mut front.how, self.written)?;
            if written > self.written {
                self.progress = now;
            }
            if written < front.how.parts(&front.frame) {
                self.written = written;
                self.waiting.push_front(front);
                return Ok(());
            }
            self.waiting_bytes -= front.frame.len();
            self.written = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::pool::{self, RecvPool};
    use super::super::sealed;
    use super::*;

    /// A lane whose reader does not read: frames wait without blocking the writer, in order,
    /// and go through once the reader reads.
    #[test]
    fn a_full_lane_queues_without_blocking_and_keeps_order() {
        let (mine, theirs) = lane::pair().unwrap();
        let mut lanes = OutLanes::new(Duration::from_secs(3600));
        let peer = PeerId(7);
        lanes.insert(peer, mine);
        let frames: Vec<WireFrame> = (0..64u8).map(|i| WireFrame::from(Bytes::from(vec![i; 100_000]))).collect();
        for f in &frames {
            lanes.write(peer, f).unwrap();
        }
        assert!(lanes.waiting().is_some(), "a lane holds far less than 6 MB: some must wait");
        // A frame from a thread that must not wait queues behind them.
        let last = WireFrame::from(Bytes::from_static(b"last"));
        assert!(lanes.try_write(peer, &last).unwrap());
        let frames: Vec<Bytes> = frames.into_iter().chain([last]).map(|f| f.to_bytes()).collect();
        // Read everything while flushing: the frames arrive whole and in order.
        let mut got = Vec::new();
        let mut frame = Vec::new();
        let mut buf = vec![0u8; 70 * 1024];
        while got.len() < frames.len() {
            assert!(lanes.flush().is_empty());
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(theirs.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT)
                };
                if n <= 0 {
                    break;
                }
                frame.extend_from_slice(&buf[1..n as usize]);
                if buf[0] == 0 {
                    got.push(std::mem::take(&mut frame));
                }
            }
        }
        assert!(got.iter().zip(&frames).all(|(a, b)| a[..] == b[..]));
        assert!(lanes.waiting().is_none());
    }

    /// A frame for the lane's peer alone marks the lane used (so the idle check keeps it); a
    /// broadcast's copy, written with `write`, does not (a lane kept busy only by announces
    /// is idle).
    #[test]
    fn only_frames_for_the_peer_alone_mark_a_lane_used() {
        let (mine, _theirs) = lane::pair().unwrap();
        let mut lanes = OutLanes::new(Duration::from_secs(3600));
        let peer = PeerId(7);
        lanes.insert(peer, mine);
        let frame = WireFrame::from(Bytes::from_static(b"frame"));
        lanes.write(peer, &frame).unwrap();
        assert!(!lanes.lanes[&peer].used, "a broadcast's copy");
        assert!(lanes.try_write(peer, &frame).unwrap());
        assert!(lanes.lanes[&peer].used, "a frame from a thread that must not wait");
        lanes.lanes.get_mut(&peer).unwrap().used = false;
        lanes.touch(peer);
        assert!(lanes.lanes[&peer].used, "a frame the writer sends to the peer alone");
    }

    #[test]
    fn a_lane_that_makes_no_progress_is_given_up_at_its_stall_timeout() {
        let (mine, _theirs) = lane::pair().unwrap();
        let mut lanes = OutLanes::new(Duration::from_millis(1));
        lanes.insert(PeerId(7), mine);
        let big = WireFrame::from(Bytes::from(vec![0u8; 1 << 20]));
        lanes.write(PeerId(7), &big).unwrap();
        let (_, _, until) = lanes.waiting().unwrap();
        while Instant::now() < until {
            std::thread::yield_now();
        }
        let failed = lanes.flush();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1.kind(), io::ErrorKind::TimedOut);
    }

    /// A lane's reading end, for tests: frames as (how they came, length, first byte).
    struct TestReader {
        fd: OwnedFd,
        pool: Option<Arc<RecvPool>>,
        /// Every frame read, still held (a pooled one keeps its run).
        held: Vec<Bytes>,
    }

    impl TestReader {
        /// A lane to peer 7 that never stalls, and its reading end.
        fn lane() -> (OutLanes, PeerId, TestReader) {
            let (mine, theirs) = lane::pair().unwrap();
            let mut lanes = OutLanes::new(Duration::from_secs(3600));
            lanes.insert(PeerId(7), mine);
            (lanes, PeerId(7), TestReader { fd: theirs, pool: None, held: Vec::new() })
        }

        /// Reads every frame, flushing `lanes` until nothing waits in them.
        fn read_all(&mut self, lanes: &mut OutLanes) -> Vec<(char, usize, u8)> {
            let mut got = Vec::new();
            loop {
                while let Some(f) = self.next(lanes) {
                    got.push(f);
                }
                if lanes.waiting().is_none() {
                    return got;
                }
                assert!(lanes.flush().is_empty());
            }
        }

        /// Reads the next whole frame, flushing `lanes` while it waits for the rest of one:
        /// `'c'` for chunks, `'s'` sealed, `'p'` pooled.
        fn next(&mut self, lanes: &mut OutLanes) -> Option<(char, usize, u8)> {
            let mut buf = vec![0u8; lane::CHUNK + 1];
            let mut frame = Vec::new();
            loop {
                let (n, passed) = match lane::receive(&self.fd, &mut buf, false) {
                    lane::Received::Message(n, passed) => (n, passed),
                    lane::Received::WouldBlock if !frame.is_empty() => {
                        assert!(lanes.flush().is_empty());
                        continue;
                    }
                    _ => return None,
                };
                let word = |i: usize| u64::from_le_bytes(buf[1 + 8 * i..9 + 8 * i].try_into().unwrap());
                let (how, bytes) = match buf[0] {
                    lane::SEALED => ('s', sealed::map(&passed[0], word(0) as usize).unwrap()),
                    lane::POOL => {
                        self.pool = Some(RecvPool::map(&passed[0], &passed[1], word(0)).unwrap());
                        continue;
                    }
                    lane::POOLED => ('p', self.pool.as_ref().unwrap().frame(word(0), word(1)).unwrap()),
                    flag => {
                        frame.extend_from_slice(&buf[1..n]);
                        if flag != lane::LAST {
                            continue;
                        }
                        ('c', Bytes::from(std::mem::take(&mut frame)))
                    }
                };
                let seen = (how, bytes.len(), bytes[0]);
                self.held.push(bytes);
                return Some(seen);
            }
        }
    }

    /// Large frames go through the lane's pool once the reader says it takes them; when the
    /// pool is full (the reader holds them), sealed, while the reader keeps up; when it does not,
    /// in chunks; all in order with small frames. Released runs are used again.
    #[test]
    fn large_frames_go_pooled_then_sealed_then_in_chunks() {
        let (mut lanes, peer, mut reader) = TestReader::lane();
        // A sixteenth of the pool, less a little: 16 of them fill it.
        let size = pool::POOL_SIZE / 16 - 64;
        let big = |i: u8| WireFrame::from(Bytes::from(vec![i; size + i as usize]));
        let seen = |how: char, i: u8| (how, size + i as usize, i);
        let small = || WireFrame::from(Bytes::from_static(b"small"));
        // Before the reader says it takes them, a large frame goes in chunks.
        lanes.write(peer, &big(0)).unwrap();
        assert_eq!(reader.next(&mut lanes), Some(seen('c', 0)));
        lane::say(&reader.fd, lane::Takes::Pooled);
        // 16 fill the pool (the reader holds them all); the next go sealed while it reads.
        let mut got = Vec::new();
        for i in 1..=20 {
            lanes.write(peer, &big(i)).unwrap();
            lanes.write(peer, &small()).unwrap();
            while let Some(f) = reader.next(&mut lanes) {
                got.push(f);
            }
        }
        let want: Vec<_> = (1..=20).flat_map(|i| [seen(if i <= 16 { 'p' } else { 's' }, i), ('c', 5, b's')]).collect();
        assert_eq!(got, want, "16 pooled, then sealed, all in order");
        // A reader that reads nothing gets sealed frames up to a budget (64 MiB, counting each
        // unread message as a frame), then chunks, which the socket's buffer holds back.
        let mid = |i: u8| WireFrame::from(Bytes::from(vec![i; (4 << 20) + i as usize]));
        for i in 21..=40 {
            lanes.write(peer, &mid(i)).unwrap();
        }
        let got = reader.read_all(&mut lanes);
        assert_eq!(got.iter().map(|f| f.2).collect::<Vec<u8>>(), (21..=40).collect::<Vec<u8>>(), "in order");
        let sealed = got.iter().take_while(|f| f.0 == 's').count();
        assert!((1..=16).contains(&sealed), "{sealed} sealed 4 MiB frames before the first chunked one");
        assert_eq!(got[sealed].0, 'c');
        // Once the reader lets go of what it holds, the pool is used again.
        reader.held.clear();
        lanes.write(peer, &big(9)).unwrap();
        assert_eq!(reader.next(&mut lanes), Some(seen('p', 9)));
    }

    /// Sealed frames a reader has not read stay within the budget (64 MiB, plus one frame)
    /// even when they shrink: each unread one counts as large as the largest.
    #[test]
    fn sealed_frames_unread_stay_within_the_budget_however_their_sizes_go() {
        let (mut lanes, peer, mut reader) = TestReader::lane();
        lane::say(&reader.fd, lane::Takes::Sealed); // no pool: large frames go sealed
        // 16 MiB, then halving sizes, twice as many of each: 96 MiB in all, none read meanwhile.
        let mut sizes = Vec::new();
        for k in 0..6 {
            sizes.extend(std::iter::repeat_n((16 << 20) >> k, 1 << k));
        }
        for (i, &size) in sizes.iter().enumerate() {
            lanes.write(peer, &WireFrame::from(Bytes::from(vec![i as u8; size]))).unwrap();
        }
        let got = reader.read_all(&mut lanes);
        assert_eq!(got.len(), sizes.len());
        let sealed: usize = got.iter().take_while(|f| f.0 == 's').map(|f| f.1).sum();
        assert!(sealed >= 16 << 20, "the first frame goes sealed into an empty lane");
        assert!(sealed <= (64 << 20) + (16 << 20), "{} MiB sealed unread", sealed >> 20);
    }
}
