//! A lane's ring: small frames through memory both sides map, past the socket.
//!
//! Every frame through a socket costs a `sendmsg` and a `recvmsg`, each with a socket buffer
//! allocated, charged, copied and freed: most of what a small event costs. Once the reader has
//! said it takes one, a lane's writer makes a ring (a 128 KiB memfd it maps read-write and the
//! reader maps read-only, and a control page both map read-write), hands it over through the
//! socket, and from then on writes every frame of up to [`RING_FRAME_MAX`] bytes into the ring
//! (a copy and an atomic store), and the closing message too. The socket only wakes a reader
//! that said it sleeps (one message per sleep, not per frame) and carries what needs it: large
//! frames (pooled, sealed or in chunks). Each of those is marked in the ring, in its place among
//! the frames (a [`SOCKET`] record, written before the socket message is sent), so the reader
//! keeps the writer's order: it takes the next frame from the socket exactly when it meets the
//! mark.
//!
//! The ring holds records, each at an 8-byte boundary: a header (length: 4 bytes little-endian,
//! kind: 1 byte, 3 bytes spare), then the frame's bytes. A record that would run past the
//! end is written at the start instead, after a [`WRAP`] header where it would have begun.
//! `head` and `tail` count bytes since the ring began (they never wrap; their remainder by the
//! ring's size is a place in it): the writer publishes `head` after each record, the reader
//! `tail` after each record it has taken.
//!
//! Waking without a message per frame is the classic pair of flags (each side stores its own,
//! then loads the other's, all sequentially consistent, so at least one of them sees the
//! other): the reader that found the ring empty marks itself asleep, then looks at `head`
//! once more before it waits on the socket; the writer publishes `head`, then looks at the
//! mark, and if it is set, takes it and sends one wake-up message. A full ring is the same the
//! other way: the writer marks that it wants room and looks at `tail` once more; the reader
//! publishes `tail`, and once at least half the ring is free, if the mark is set, takes it and
//! says so on the lane's back channel (once per half ring, not per frame, under overload).
//!
//! A blocking caller waiting for a reply from the ring's writer may read the ring itself (see
//! `caller_lane`): it marks the control page's `CALLER` word (awake, or asleep on it as a futex)
//! before its request goes out. While the word is marked, the writer wakes nobody through the
//! socket: it wakes a caller asleep on the word with a futex wake-up (one per sleep, the word
//! taken back from asleep to awake, as with the reader's mark), and wakes nobody when the caller
//! is awake. A caller that stops reading clears the word, then marks the reader asleep and looks
//! at `head` once more (the reader's own pair of flags, above): a frame the writer put while it
//! still saw the word is found then, and one put later finds the mark and wakes the reader.
//! The writer says it does this in the control page's `FEATURES` word; a reader whose writer
//! does not (an older version) never lets a caller read.
//!
//! Trust: the reader never trusts what the ring says. It keeps its own `tail`, checks every
//! `head` and header against it and the ring's size, and copies a frame out before anything
//! reads it: a writer that breaks the rules has its lane dropped, and can spoil only its own
//! frames. The writer never reads the ring, and takes a `tail` that is ahead of `head`, or more
//! than a ring behind it, for "no room": a reader that lies about it only stalls its own lane.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;

use super::sealed::{MapError, check_offered};
use super::shm::{self, Mapping};

/// A ring's size. Records are at most a quarter of it.
pub(super) const RING_SIZE: usize = 128 * 1024;
/// The largest frame that goes through the ring; larger ones go through the socket (pooled,
/// sealed or in chunks).
pub(super) const RING_FRAME_MAX: usize = 16 * 1024 - 1;
/// The control page's size.
const CONTROL_SIZE: usize = 4096;
/// Where `head` is on the control page (each word on a cache line of its own).
const HEAD: usize = 0;
/// Where `tail` is.
const TAIL: usize = 64;
/// Where the reader's "asleep" mark is.
const ASLEEP: usize = 128;
/// Where the writer's "wants room" mark is.
const WANTS_ROOM: usize = 192;
/// Where the mark of a caller reading the ring itself is ([`CALLER_NONE`], [`CALLER_AWAKE`] or
/// [`CALLER_ASLEEP`]; a futex word).
const CALLER: usize = 256;
/// Where the writer says what it does beyond the first version of this layout.
const FEATURES: usize = 320;
/// A `FEATURES` bit: the writer wakes a caller asleep on the `CALLER` word.
const FEATURE_CALLER: u32 = 1;
/// No caller reads the ring: the reader's thread does.
pub(super) const CALLER_NONE: u32 = 0;
/// A caller reads the ring and is awake: it will see what comes.
pub(super) const CALLER_AWAKE: u32 = 1;
/// A caller reads the ring and sleeps on the `CALLER` word: wake it there.
pub(super) const CALLER_ASLEEP: u32 = 2;
/// A record header's size.
const HEADER: usize = 8;

/// A record kind: a frame.
const FRAME: u8 = 1;
/// A record kind: the next frame comes through the socket.
const SOCKET: u8 = 2;
/// A record kind: nothing more before the end of the ring; go on at its start.
const WRAP: u8 = 3;
/// A record kind: the writer closes the lane (it was idle), like the socket's closing message.
const CLOSE: u8 = 4;

const _: () = assert!(HEADER + RING_FRAME_MAX < RING_SIZE / 4 && RING_SIZE % HEADER == 0);

/// How many bytes a record of `len` bytes takes.
fn record_size(len: usize) -> usize {
    HEADER + len.next_multiple_of(HEADER)
}

fn word64(control: &Mapping, at: usize) -> &AtomicU64 {
    assert!(at + 8 <= control.len() && at % 8 == 0, "a word within the control page");
    // SAFETY: within the mapping (checked) and aligned (the mapping is page-aligned); the page is
    // only ever accessed atomically, by both processes.
    unsafe { &*(control.base().add(at) as *const AtomicU64) }
}

fn word32(control: &Mapping, at: usize) -> &AtomicU32 {
    assert!(at + 4 <= control.len() && at % 4 == 0, "a word within the control page");
    // SAFETY: as in `word64`.
    unsafe { &*(control.base().add(at) as *const AtomicU32) }
}

/// The writer's side of a ring.
pub(super) struct RingWriter {
    data: Mapping,
    control: Mapping,
    /// Bytes written since the ring began.
    head: u64,
    /// The reader's `tail` as last seen (read again only when that shows no room).
    tail: u64,
}

impl std::fmt::Debug for RingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingWriter").field("head", &self.head).field("tail", &self.tail).finish_non_exhaustive()
    }
}

impl RingWriter {
    /// Makes a ring: its data and control page, mapped read-write here, and their memfds (data,
    /// control) to hand to the reader (and close once it has them: the mappings stay).
    pub(super) fn new() -> io::Result<(RingWriter, [OwnedFd; 2])> {
        let data_fd = shm::sized_memfd(c"hsipc-ring", RING_SIZE, true)?;
        let control_fd = shm::sized_memfd(c"hsipc-ring-control", CONTROL_SIZE, true)?;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let data = Mapping::new(&data_fd, RING_SIZE, rw, 0)?;
        let control = Mapping::new(&control_fd, CONTROL_SIZE, rw, 0)?;
        word32(&control, FEATURES).store(FEATURE_CALLER, Ordering::SeqCst);
        Ok((RingWriter { data, control, head: 0, tail: 0 }, [data_fd, control_fd]))
    }

    /// Puts a frame (its pieces, one after the other) into the ring: `false` if there is no room
    /// now (then the reader says when it has made some, on the lane's back channel).
    pub(super) fn put_frame(&mut self, pieces: [&[u8]; 2]) -> bool {
        debug_assert!(pieces[0].len() + pieces[1].len() <= RING_FRAME_MAX);
        self.put(FRAME, pieces)
    }

    /// Puts the mark of a frame that goes through the socket: `false` if there is no room now.
    pub(super) fn put_socket_mark(&mut self) -> bool {
        self.put(SOCKET, [&[], &[]])
    }

    /// Puts the closing message: `false` if there is no room now.
    pub(super) fn put_close(&mut self) -> bool {
        self.put(CLOSE, [&[], &[]])
    }

    fn put(&mut self, kind: u8, pieces: [&[u8]; 2]) -> bool {
        let len = pieces[0].len() + pieces[1].len();
        let size = record_size(len);
        let at = (self.head % RING_SIZE as u64) as usize;
        let to_end = RING_SIZE - at;
        let need = if size > to_end { to_end + size } else { size };
        if !self.has_room(need) {
            // Ask the reader to say when it has made room, then look once more (it may have
            // made some just before it could see the mark).
            word32(&self.control, WANTS_ROOM).store(1, Ordering::SeqCst);
            if !self.has_room(need) {
                return false;
            }
        }
        let mut at = at;
        if size > to_end {
            self.write_header(at, 0, WRAP);
            self.head += to_end as u64;
            at = 0;
        }
        self.write_header(at, len as u32, kind);
        let mut to = at + HEADER;
        for piece in pieces {
            // SAFETY: the record lies within the ring (`at + size <= RING_SIZE`: a record that
            // would not fit before the end went to the start, and records are far smaller than
            // the ring), the reader has taken everything in this part of the ring (`has_room`),
            // and `piece` is not in the ring.
            unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), self.data.base().add(to), piece.len()) };
            to += piece.len();
        }
        self.head += size as u64;
        word64(&self.control, HEAD).store(self.head, Ordering::SeqCst);
        true
    }

    fn write_header(&mut self, at: usize, len: u32, kind: u8) {
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4] = kind;
        // SAFETY: `at` is 8-aligned and below the ring's size, so the header lies within it.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), self.data.base().add(at), HEADER) };
    }

    /// Whether `need` bytes are free (reading the reader's `tail` again only if the last one
    /// seen shows too little).
    fn has_room(&mut self, need: usize) -> bool {
        let fits = |tail: u64, head: u64| {
            // A reader that reports more than was written, or less than a ring behind, lies:
            // then nothing fits, and the lane stalls (its peer is cut off after the stall timeout).
            let used = head.wrapping_sub(tail);
            used <= RING_SIZE as u64 && RING_SIZE as u64 - used >= need as u64
        };
        if fits(self.tail, self.head) {
            return true;
        }
        self.tail = word64(&self.control, TAIL).load(Ordering::SeqCst);
        fits(self.tail, self.head)
    }

    /// After a record: wakes a caller that sleeps on the ring (see the module's docs), or says
    /// whether the reader said it sleeps, so it must be woken through the socket, once (the mark
    /// is taken).
    pub(super) fn wake_reader(&self) -> bool {
        if self.wake_caller() {
            return false;
        }
        let asleep = word32(&self.control, ASLEEP);
        asleep.load(Ordering::SeqCst) != 0 && asleep.swap(0, Ordering::SeqCst) != 0
    }

    /// After a record: wakes a caller that sleeps on the ring; whether a caller reads it (then
    /// nobody else is to be woken).
    pub(super) fn wake_caller(&self) -> bool {
        wake_caller_word(word32(&self.control, CALLER))
    }
}

/// What [`RingReader::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record {
    /// A frame, copied to the end of the buffer given.
    Frame,
    /// The next frame comes through the socket.
    Socket,
    /// The writer closes the lane.
    Close,
}

/// The writer broke the ring's rules.
#[derive(Debug, thiserror::Error)]
#[error("the lane's ring is corrupt: {0}")]
pub(super) struct Corrupt(&'static str);

/// The reader's side of a ring: the data mapped read-only, the control page read-write.
pub(super) struct RingReader {
    data: Mapping,
    control: Arc<Mapping>,
    /// Bytes taken since the ring began.
    tail: u64,
    /// The writer's `head` as last seen.
    head: u64,
    /// The reader said it sleeps and has not taken it back yet.
    asleep: bool,
}

impl std::fmt::Debug for RingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingReader").field("tail", &self.tail).field("head", &self.head).finish_non_exhaustive()
    }
}

impl RingReader {
    /// Maps a ring the writer offered: both memfds sealed against shrinking, and of the sizes
    /// this version makes.
    pub(super) fn map(data: &OwnedFd, control: &OwnedFd) -> Result<RingReader, MapError> {
        check_offered(data, libc::F_SEAL_SHRINK, RING_SIZE as u64)?;
        check_offered(control, libc::F_SEAL_SHRINK, CONTROL_SIZE as u64)?;
        let data = Mapping::new(data, RING_SIZE, libc::PROT_READ, 0)?;
        let control = Arc::new(Mapping::new(control, CONTROL_SIZE, libc::PROT_READ | libc::PROT_WRITE, 0)?);
        Ok(RingReader { data, control, tail: 0, head: 0, asleep: false })
    }

    /// The ring's caller word, if its writer wakes callers that sleep on it.
    pub(super) fn caller_word(&self) -> Option<CallerWord> {
        let features = word32(&self.control, FEATURES).load(Ordering::SeqCst);
        (features & FEATURE_CALLER != 0).then(|| CallerWord(self.control.clone()))
    }

    /// Takes the next record: a frame (its bytes appended to `out`), the mark of a frame that
    /// comes through the socket, or `None` if the ring is empty. Returns, besides, whether the
    /// writer wants to hear that there is room (it is to be told on the back channel).
    pub(super) fn next(&mut self, out: &mut BytesMut) -> Result<(Option<Record>, bool), Corrupt> {
        if self.asleep {
            self.asleep = false;
            word32(&self.control, ASLEEP).store(0, Ordering::Relaxed);
        }
        loop {
            if self.tail == self.head && !self.look()? {
                return Ok((None, false));
            }
            let at = (self.tail % RING_SIZE as u64) as usize;
            let mut header = [0u8; HEADER];
            // SAFETY: `at` is 8-aligned and below the ring's size: the header is within it.
            unsafe { std::ptr::copy_nonoverlapping(self.data.base().add(at), header.as_mut_ptr(), HEADER) };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let left = self.head - self.tail;
            match header[4] {
                WRAP => {
                    // A writer wraps only a record that does not fit before the ring's end, never
                    // at its start: a wrap there would skip the whole ring, and a writer moving
                    // `head` on could keep the reader in this loop.
                    if at == 0 {
                        return Err(Corrupt("a wrap at the ring's start"));
                    }
                    let skip = (RING_SIZE - at) as u64;
                    if skip > left {
                        return Err(Corrupt("a wrap past the head"));
                    }
                    self.tail += skip;
                }
                kind @ (FRAME | SOCKET | CLOSE) => {
                    if len > RING_FRAME_MAX || (kind != FRAME && len != 0) {
                        return Err(Corrupt("a record too long"));
                    }
                    let size = record_size(len);
                    if at + size > RING_SIZE || size as u64 > left {
                        return Err(Corrupt("a record past the head or the end"));
                    }
                    if kind == FRAME {
                        out.reserve(len);
                        // SAFETY: the frame lies within the ring (checked above) and `out` has room
                        // for `len` more bytes (reserved). The bytes are copied, not referenced:
                        // what the writer may change in the ring meanwhile is only ever seen in the
                        // copy, which nothing reads before it is complete.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                self.data.base().add(at + HEADER),
                                out.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
                                len,
                            );
                            out.set_len(out.len() + len);
                        }
                    }
                    self.tail += size as u64;
                    word64(&self.control, TAIL).store(self.tail, Ordering::SeqCst);
                    // The writer hears of room once half the ring is free (by its latest `head`),
                    // not at every record.
                    let wanted = word32(&self.control, WANTS_ROOM).load(Ordering::SeqCst) != 0;
                    let tell = wanted
                        && self.look().is_ok()
                        && self.head - self.tail <= RING_SIZE as u64 / 2
                        && word32(&self.control, WANTS_ROOM).swap(0, Ordering::SeqCst) != 0;
                    let record = match kind {
                        FRAME => Record::Frame,
                        SOCKET => Record::Socket,
                        _ => Record::Close,
                    };
                    return Ok((Some(record), tell));
                }
                _ => return Err(Corrupt("an unknown record")),
            }
        }
    }

    /// Reads the writer's `head` again: whether there is more to take.
    fn look(&mut self) -> Result<bool, Corrupt> {
        let head = word64(&self.control, HEAD).load(Ordering::SeqCst);
        let ahead = head.wrapping_sub(self.tail);
        if ahead > RING_SIZE as u64 || head % HEADER as u64 != 0 {
            return Err(Corrupt("a head behind the tail or more than a ring ahead"));
        }
        self.head = head;
        Ok(head != self.tail)
    }

    /// Says the reader is about to sleep (wait on the socket), unless the ring has something
    /// after all: then `Ok(false)`, and the reader reads on.
    pub(super) fn sleep(&mut self) -> Result<bool, Corrupt> {
        word32(&self.control, ASLEEP).store(1, Ordering::SeqCst);
        self.asleep = true;
        if self.tail != self.head || self.look()? {
            return Ok(false);
        }
        Ok(true)
    }

    /// Marks the reader asleep for good: its lane has ended, and the writer's next frame into
    /// the ring then sends a wake-up, which fails and tells the writer.
    pub(super) fn ended(&self) {
        word32(&self.control, ASLEEP).store(1, Ordering::SeqCst);
    }

    /// Whether anything is left to take (after the writer's end, say).
    pub(super) fn has_more(&mut self) -> Result<bool, Corrupt> {
        Ok(self.tail != self.head || self.look()?)
    }
}

/// A ring's `CALLER` word, as the reader's side holds it (see the module's docs): shared by the
/// caller that reads the ring, whoever wakes it in this process, and the lane's thread.
#[derive(Clone)]
pub(super) struct CallerWord(Arc<Mapping>);

impl std::fmt::Debug for CallerWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CallerWord").field(&self.word().load(Ordering::Relaxed)).finish()
    }
}

impl CallerWord {
    fn word(&self) -> &AtomicU32 {
        word32(&self.0, CALLER)
    }

    /// Marks the caller's state ([`CALLER_NONE`], [`CALLER_AWAKE`] or [`CALLER_ASLEEP`]).
    pub(super) fn set(&self, state: u32) {
        self.word().store(state, Ordering::SeqCst);
    }

    /// Sleeps while the word says the caller sleeps, at most `timeout` (see [`futex::wait`]).
    ///
    /// [`futex::wait`]: super::futex::wait
    pub(super) fn sleep(&self, timeout: Duration) {
        super::futex::wait(self.word(), CALLER_ASLEEP, timeout);
    }

    /// Wakes the caller if it sleeps (as the writer does after a record).
    pub(super) fn wake(&self) {
        wake_caller_word(self.word());
    }
}

/// Wakes a caller asleep on `word`, once (the word taken from asleep to awake); whether a caller
/// reads the ring at all.
fn wake_caller_word(word: &AtomicU32) -> bool {
    match word.load(Ordering::SeqCst) {
        CALLER_NONE => false,
        CALLER_ASLEEP => {
            if word.swap(CALLER_AWAKE, Ordering::SeqCst) == CALLER_ASLEEP {
                super::futex::wake(word);
            }
            true
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::super::sealed::check_sealed;
    use super::*;

    fn pair() -> (RingWriter, RingReader) {
        let (w, [data, control]) = RingWriter::new().unwrap();
        assert!(check_sealed(&data, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW).is_ok());
        let r = RingReader::map(&data, &control).unwrap();
        (w, r)
    }

    fn take(r: &mut RingReader) -> Option<Vec<u8>> {
        let mut out = BytesMut::new();
        match r.next(&mut out).unwrap().0 {
            Some(Record::Frame) => Some(out.to_vec()),
            Some(Record::Socket) => Some(b"<socket>".to_vec()),
            Some(Record::Close) => Some(b"<close>".to_vec()),
            None => None,
        }
    }

    #[test]
    fn frames_and_marks_come_out_in_order_across_many_wraps() {
        let (mut w, mut r) = pair();
        for round in 0..2000u32 {
            let len = (round as usize * 37) % 3000;
            let frame: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
            assert!(w.put_frame([&frame[..len / 2], &frame[len / 2..]]));
            if round % 7 == 0 {
                assert!(w.put_socket_mark());
            }
            assert_eq!(take(&mut r).unwrap(), frame, "round {round}");
            if round % 7 == 0 {
                assert_eq!(take(&mut r).unwrap(), b"<socket>");
            }
            assert_eq!(take(&mut r), None);
        }
        assert!(w.head > 10 * RING_SIZE as u64, "the ring wrapped many times");
        assert!(w.put_close());
        assert_eq!(take(&mut r).unwrap(), b"<close>");
    }

    #[test]
    fn a_full_ring_refuses_until_the_reader_takes_and_says_so() {
        let (mut w, mut r) = pair();
        let frame = vec![9u8; 1000];
        let mut put = 0;
        while w.put_frame([&frame, &[]]) {
            put += 1;
        }
        assert_eq!(put, RING_SIZE / record_size(1000), "the ring holds as many as fit");
        // The writer asked to hear of room: the reader tells once half the ring is free.
        let mut out = BytesMut::new();
        let mut told = 0;
        for i in 0..put {
            out.clear();
            let (record, tell) = r.next(&mut out).unwrap();
            assert_eq!((record, &out[..]), (Some(Record::Frame), &frame[..]));
            if tell {
                told += 1;
                assert!(i + 1 >= put / 2, "told at {i} of {put}");
            }
        }
        assert_eq!(told, 1, "once");
        assert!(w.put_frame([&frame, &[]]), "room again");
        assert_eq!(take(&mut r).unwrap(), frame);
        assert_eq!(take(&mut r), None);
    }

    #[test]
    fn a_sleeping_reader_is_woken_once_and_one_that_finds_more_does_not_sleep() {
        let (mut w, mut r) = pair();
        assert!(r.sleep().unwrap(), "an empty ring: the reader sleeps");
        assert!(w.put_frame([b"a", &[]]));
        assert!(w.wake_reader(), "the writer sees the mark");
        assert!(!w.wake_reader(), "once");
        assert_eq!(take(&mut r).unwrap(), b"a");
        assert!(w.put_frame([b"b", &[]]));
        assert!(!w.wake_reader(), "an awake reader is not woken");
        assert!(!r.sleep().unwrap(), "a frame waits: no sleep");
        assert_eq!(take(&mut r).unwrap(), b"b");
    }

    #[test]
    fn a_caller_reading_the_ring_is_woken_by_futex_and_the_socket_stays_quiet() {
        let (mut w, mut r) = pair();
        let word = r.caller_word().expect("this writer wakes callers");
        assert!(r.sleep().unwrap(), "the reader's thread sleeps on the socket");
        // A caller that reads, awake: nobody is woken, the reader's mark is left alone.
        word.set(CALLER_AWAKE);
        assert!(w.put_frame([b"a", &[]]));
        assert!(!w.wake_reader(), "no socket wake-up while a caller reads");
        assert_eq!(take(&mut r).unwrap(), b"a");
        // A caller asleep on the word is woken there, once; the socket stays quiet.
        word.set(CALLER_ASLEEP);
        assert!(w.put_frame([b"b", &[]]));
        assert!(!w.wake_reader());
        assert_eq!(word.word().load(Ordering::SeqCst), CALLER_AWAKE, "taken from asleep to awake");
        assert_eq!(take(&mut r).unwrap(), b"b");
        // The caller leaves: the reader's thread is woken through the socket again.
        word.set(CALLER_NONE);
        assert!(r.sleep().unwrap());
        assert!(w.put_frame([b"c", &[]]));
        assert!(w.wake_reader(), "the sleeping reader's thread is woken");
    }

    #[test]
    fn a_caller_asleep_on_the_word_wakes_when_a_frame_comes() {
        let (mut w, r) = pair();
        let word = r.caller_word().unwrap();
        word.set(CALLER_ASLEEP);
        let (tid_tx, tid) = std::sync::mpsc::channel();
        let sleeper = {
            let word = word.clone();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let t = std::time::Instant::now();
                // Spurious returns aside, only the writer's wake-up ends this before a minute.
                while word.word().load(Ordering::SeqCst) == CALLER_ASLEEP && t.elapsed() < Duration::from_secs(60) {
                    word.sleep(Duration::from_secs(60));
                }
                t.elapsed()
            })
        };
        // The frame comes only once the sleeper sleeps (its one blocking point is the futex), so
        // that it is the futex wake-up that ends the sleep.
        let stat = format!("/proc/self/task/{}/stat", tid.recv().unwrap());
        let asleep = |stat: &str| {
            std::fs::read_to_string(stat).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('S')))
        };
        while !asleep(&stat) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.put_frame([b"x", &[]]));
        assert!(!w.wake_reader());
        let slept = sleeper.join().unwrap();
        assert!(slept < Duration::from_secs(30), "woken well before the minute: {slept:?}");
    }

    #[test]
    fn a_writer_that_does_not_wake_callers_gets_none() {
        let (w, r) = pair();
        word32(&w.control, FEATURES).store(0, Ordering::SeqCst); // as an older writer leaves it
        assert!(r.caller_word().is_none());
    }

    #[test]
    fn a_writer_that_breaks_the_rules_is_caught_and_nothing_is_read_out_of_bounds() {
        let (w, mut r) = pair();
        let head = word64(&w.control, HEAD);
        let mut out = BytesMut::new();
        // A head more than a ring ahead.
        head.store(RING_SIZE as u64 + 8, Ordering::SeqCst);
        assert!(r.next(&mut out).is_err());
        // A record longer than any frame.
        let (mut w, mut r) = pair();
        w.write_header(0, (RING_FRAME_MAX + 1) as u32, FRAME);
        word64(&w.control, HEAD).store(64, Ordering::SeqCst);
        assert!(r.next(&mut out).is_err());
        // A record past the head.
        let (mut w, mut r) = pair();
        w.write_header(0, 100, FRAME);
        word64(&w.control, HEAD).store(64, Ordering::SeqCst);
        assert!(r.next(&mut out).is_err());
        // A wrap at the ring's start, which would skip the whole ring (and, with the head kept
        // moving, keep the reader looping).
        let (mut w, mut r) = pair();
        w.write_header(0, 0, WRAP);
        word64(&w.control, HEAD).store(RING_SIZE as u64, Ordering::SeqCst);
        assert!(r.next(&mut out).is_err());
        // An unknown kind.
        let (mut w, mut r) = pair();
        w.write_header(0, 0, 9);
        word64(&w.control, HEAD).store(8, Ordering::SeqCst);
        assert!(r.next(&mut out).is_err());
        // A lying reader: a tail ahead of the head makes the writer refuse, not overwrite.
        let (mut w, _r) = pair();
        word64(&w.control, TAIL).store(1 << 40, Ordering::SeqCst);
        w.tail = 1 << 40;
        assert!(!w.put_frame([b"x", &[]]));
    }
}
