//! The wire format: one fixed 32-byte header, then a name (method or topic), then the payload.
//!
//! This is the only module that parses bytes. Every length is checked against the buffer before
//! it is used, so [`Frame::decode`] returns a typed [`FrameError`] for any input and never panics
//! (a property test and the `hsipc-proto/fuzz` target hold it to that).
//!
//! ```text
//! offset size field
//!      0    1 magic       0xB5
//!      1    1 version     VERSION (a peer with another version is rejected, not misread)
//!      2    1 kind        FrameKind
//!      3    1 flags       Flags bits
//!      4    4 aux         Request: time budget in ms; error frames: ErrorCode
//!      8    8 id          call id, in the caller's id space (see Flags::TO_CALLER)
//!     16    8 seq         stream item sequence, item count at end, credit, publish sequence,
//!                         announce generation, or a Request's initial credit window
//!     24    2 name_len    bytes of UTF-8 name following the header
//!     26    2 reserved    zero
//!     28    4 payload_len bytes of payload following the name
//!     32      name, then payload; nothing may follow
//! ```
//! All integers are little-endian.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::FrameError;
use crate::lent::{self, Lent, LentBytes};

/// First byte of every frame.
pub const MAGIC: u8 = 0xB5;
/// The wire version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 32;
/// Longest name (method or topic) a frame can carry.
pub const MAX_NAME_LEN: usize = u16::MAX as usize;

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Caller to server: start a call (unary, server stream or session).
    Request = 1,
    /// Server to caller: the successful result of a unary call.
    Response = 2,
    /// Server to caller: the call failed (`aux` = error code, payload = UTF-8 message).
    ErrorResponse = 3,
    /// A sequenced stream item, in either direction.
    StreamItem = 4,
    /// The end of one direction of a stream (`seq` = number of items sent).
    StreamEnd = 5,
    /// Caller to server: the caller gave up on the call.
    Cancel = 6,
    /// Receiver to sender: permission to send `seq` more items.
    Credit = 7,
    /// An event on a topic (`seq` = per publisher and subscriber sequence).
    Publish = 8,
    /// Peer directory: who I am, what I serve, what I subscribe to. Also the heartbeat.
    Announce = 9,
    /// Peer directory: I am leaving.
    Goodbye = 10,
    /// Liveness probe; answered with [`FrameKind::Pong`] carrying the same id.
    Ping = 11,
    /// Answer to [`FrameKind::Ping`].
    Pong = 12,
    /// Subscriber to publisher: permission to send `seq` more credited events, and `id` more
    /// bytes of their payloads (0 from a subscriber that announced no byte window).
    EventCredit = 13,
    /// Publisher to subscriber: events up to sequence `seq` were published to you, and those
    /// not received were dropped because you had no credit (`name` = the topic of the last).
    EventsLost = 14,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::ErrorResponse,
            4 => Self::StreamItem,
            5 => Self::StreamEnd,
            6 => Self::Cancel,
            7 => Self::Credit,
            8 => Self::Publish,
            9 => Self::Announce,
            10 => Self::Goodbye,
            11 => Self::Ping,
            12 => Self::Pong,
            13 => Self::EventCredit,
            14 => Self::EventsLost,
            _ => return None,
        })
    }
}

/// Flag bits of the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// The frame travels from the server back to the caller, so `id` names one of the
    /// receiver's own outgoing calls (stream items, stream end and credit go both ways).
    pub const TO_CALLER: u8 = 0x01;
    /// Request: the server answers with a stream of items.
    pub const STREAM: u8 = 0x02;
    /// Request: a bidirectional session (items and credit flow both ways).
    pub const SESSION: u8 = 0x04;
    /// StreamEnd: the stream failed (`aux` = error code, payload = message).
    pub const ERROR: u8 = 0x08;
    /// Announce: the sender is new and asks every peer to answer with its own announce.
    pub const PROBE: u8 = 0x10;
    /// Publish: the event took one of the subscriber's event credits (it has a reliable
    /// subscription to the topic), to be returned once the application has taken it.
    pub const CREDITED: u8 = 0x20;

    /// Whether every bit of `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit == bit
    }
}

/// One decoded frame. `name` and `payload` share the received buffer (no copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is for.
    pub kind: FrameKind,
    /// Flag bits.
    pub flags: Flags,
    /// Kind-specific 32-bit field (time budget, error code).
    pub aux: u32,
    /// Call id in the caller's id space, or a ping nonce.
    pub id: u64,
    /// Kind-specific 64-bit field (sequence, count, credit, generation).
    pub seq: u64,
    /// Method or topic; valid UTF-8 (checked by [`Frame::decode`]).
    name: Bytes,
    /// Opaque body (CBOR for application values).
    pub payload: Bytes,
}

impl Frame {
    /// A frame with an empty name and payload.
    pub fn new(kind: FrameKind, flags: u8, id: u64, seq: u64) -> Self {
        Frame { kind, flags: Flags(flags), aux: 0, id, seq, name: Bytes::new(), payload: Bytes::new() }
    }

    /// Sets the name (method or topic).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Bytes::copy_from_slice(name.as_bytes());
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: Bytes) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the `aux` field.
    pub fn with_aux(mut self, aux: u32) -> Self {
        self.aux = aux;
        self
    }

    /// The name (method or topic).
    pub fn name(&self) -> &str {
        // Checked in `decode` and guaranteed by `with_name`; the fallback is unreachable.
        std::str::from_utf8(&self.name).unwrap_or_default()
    }

    /// Total encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.name.len() + self.payload.len()
    }

    /// Encodes the frame; fails if it would be longer than `max_len` or the name is too long.
    pub fn encode(&self, max_len: usize) -> Result<Bytes, FrameError> {
        let payload = Payload::Copied(&self.payload);
        encode_parts(
            &mut Arena::exact(),
            self.kind,
            self.flags.0,
            self.aux,
            self.id,
            self.seq,
            &self.name,
            payload,
            max_len,
        )
        .map(|w| w.to_bytes())
    }

    /// Parses one frame. Never panics; any malformed input gives a [`FrameError`].
    pub fn decode(buf: Bytes, max_len: usize) -> Result<Frame, FrameError> {
        Self::decode_as(buf, max_len, false)
    }

    /// Parses one frame whose bytes another process may still change (it lies in shared
    /// memory that process writes): the header and the name are copied out before they are
    /// checked, so that what is checked is what is used, and the frame keeps no reference to
    /// them. The payload stays where it is (no copy): its bytes are the sender's to leave alone.
    ///
    /// ```
    /// use hsipc_proto::frame::{Frame, FrameKind};
    /// let bytes = Frame::new(FrameKind::Publish, 0, 1, 2).with_name("a/b").encode(1 << 20).unwrap();
    /// let frame = Frame::decode_shared(bytes.clone(), 1 << 20).unwrap();
    /// assert_eq!(frame, Frame::decode(bytes, 1 << 20).unwrap());
    /// ```
    pub fn decode_shared(buf: Bytes, max_len: usize) -> Result<Frame, FrameError> {
        Self::decode_as(buf, max_len, true)
    }

    /// [`decode_shared`](Self::decode_shared), for a frame that stands for another of its
    /// fan-out (see [`FanOut`]): the frame decoded has `stamp`'s flags and sequence number in
    /// place of its own.
    ///
    /// ```
    /// use hsipc_proto::frame::{Frame, FrameKind, Stamp};
    /// let bytes = Frame::new(FrameKind::Publish, 0, 0, 1).with_name("a/b").encode(1 << 20).unwrap();
    /// let frame = Frame::decode_shared_stamped(bytes, 1 << 20, Stamp::new(0, 9)).unwrap();
    /// assert_eq!(frame.seq, 9);
    /// ```
    pub fn decode_shared_stamped(buf: Bytes, max_len: usize, stamp: Stamp) -> Result<Frame, FrameError> {
        let mut frame = Self::decode_as(buf, max_len, true)?;
        frame.flags = Flags(stamp.flags);
        frame.seq = stamp.seq;
        Ok(frame)
    }

    fn decode_as(buf: Bytes, max_len: usize, shared: bool) -> Result<Frame, FrameError> {
        let len = buf.len();
        if len > max_len {
            return Err(FrameError::TooLarge { len, max: max_len });
        }
        if len < HEADER_LEN {
            return Err(FrameError::Truncated { len });
        }
        // Read once, into a copy: every field below comes from the same bytes.
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&buf[..HEADER_LEN]);
        if h[0] != MAGIC {
            return Err(FrameError::BadMagic(h[0]));
        }
        if h[1] != VERSION {
            return Err(FrameError::UnsupportedVersion { theirs: h[1], ours: VERSION });
        }
        let kind = FrameKind::from_u8(h[2]).ok_or(FrameError::UnknownKind(h[2]))?;
        let reserved = u16::from_le_bytes([h[26], h[27]]);
        if reserved != 0 {
            return Err(FrameError::ReservedNotZero(reserved));
        }
        let flags = Flags(h[3]);
        let aux = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let id = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let seq = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        let name_len = u16::from_le_bytes([h[24], h[25]]) as usize;
        let payload_len = u32::from_le_bytes([h[28], h[29], h[30], h[31]]) as usize;
        let declared = HEADER_LEN as u64 + name_len as u64 + payload_len as u64;
        if declared != len as u64 {
            return Err(FrameError::LengthMismatch { declared, actual: len });
        }
        let name_end = HEADER_LEN + name_len;
        let name = if shared {
            // Checked as copied: the sender cannot change it afterwards.
            Bytes::copy_from_slice(&buf[HEADER_LEN..name_end])
        } else {
            buf.slice(HEADER_LEN..name_end)
        };
        if std::str::from_utf8(&name).is_err() {
            return Err(FrameError::NameNotUtf8);
        }
        let payload = buf.slice(name_end..);
        Ok(Frame { kind, flags, aux, id, seq, name, payload })
    }
}

/// An encoded frame on its way out, in up to two pieces: the header with the name (and a small
/// payload), then a larger payload as a piece of its own, shared with the buffer it was encoded
/// into instead of copied behind the header. A transport writes the pieces one after the other
/// (a gathered write, or one copy into shared memory); on the wire they are one frame.
///
/// ```
/// use hsipc_proto::frame::WireFrame;
/// let w = WireFrame::from(bytes::Bytes::from_static(b"whole"));
/// assert_eq!(w.len(), 5);
/// assert_eq!(&w.to_bytes()[..], b"whole");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireFrame {
    head: Bytes,
    body: Rest,
    fan_out: Option<FanOut>,
}

/// Bodies from this size on are shared by the frames of a fan-out (see [`FanOut`]): smaller
/// ones cost less copied once per peer.
pub const FAN_OUT_MIN: usize = 16 * 1024;

/// What the frames of one fan-out share: an event published to several peers is one frame per
/// peer, the same but for their flags and sequence number (see [`Stamp`]). A transport may keep
/// here, once, what it made of their common bytes (a copy in memory every receiver maps, say),
/// for the other frames to use instead of making it again. Not part of the frame's bytes: frames
/// compare equal whatever theirs holds.
///
/// ```
/// use hsipc_proto::frame::FanOut;
/// let shared = FanOut::default();
/// let (a, b) = (shared.clone(), shared);
/// assert_eq!(a.get_or_make(|| Some(7u32)), Some(&7));
/// assert_eq!(b.get_or_make(|| Some(8u32)), Some(&7), "made once, for every frame");
/// ```
#[derive(Clone, Default)]
pub struct FanOut(Arc<std::sync::OnceLock<Option<Box<dyn std::any::Any + Send + Sync>>>>);

impl FanOut {
    /// What is kept here: made by `make` for the first frame that asks (another asking
    /// meanwhile waits for it), the same for every frame of the fan-out after. `None` if `make`
    /// made nothing, or made something of another type. `make` must not ask this slot again
    /// (it would wait for itself).
    pub fn get_or_make<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> Option<T>) -> Option<&T> {
        let kept = self.0.get_or_init(|| make().map(|t| Box::new(t) as Box<dyn std::any::Any + Send + Sync>));
        kept.as_ref()?.downcast_ref()
    }
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut").field("made", &self.0.get().is_some()).finish()
    }
}

impl PartialEq for FanOut {
    fn eq(&self, _: &FanOut) -> bool {
        true
    }
}

impl Eq for FanOut {}

/// The header fields the frames of one fan-out differ in (see [`FanOut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stamp {
    /// The frame's flags.
    pub flags: u8,
    /// The frame's sequence number.
    pub seq: u64,
}

impl Stamp {
    /// A stamp of these flags and this sequence number.
    pub fn new(flags: u8, seq: u64) -> Stamp {
        Stamp { flags, seq }
    }
}

/// The pieces of a [`WireFrame`], readable while this lives (see [`WireFrame::pieces`]).
pub struct Pieces<'a> {
    head: &'a [u8],
    body: RestBytes<'a>,
}

impl std::fmt::Debug for Pieces<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces").field("head", &self.head.len()).field("body", &self.body.len()).finish()
    }
}

impl Pieces<'_> {
    /// The pieces, in order (the second may be empty).
    pub fn get(&self) -> [&[u8]; 2] {
        [self.head, &self.body]
    }
}

/// A body's bytes after its lead: a shared buffer, or a slice the application lends for the
/// length of a call (see `lent`).
#[derive(Clone)]
enum Rest {
    Shared(Bytes),
    Lent(Arc<Lent>),
}

impl Default for Rest {
    fn default() -> Self {
        Rest::Shared(Bytes::new())
    }
}

impl Rest {
    fn len(&self) -> usize {
        match self {
            Rest::Shared(b) => b.len(),
            Rest::Lent(l) => l.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self) -> RestBytes<'_> {
        match self {
            Rest::Shared(b) => RestBytes::Shared(b),
            Rest::Lent(l) => RestBytes::Lent(l.bytes()),
        }
    }

    /// As one shared buffer: a clone of a shared one, a copy of a lent one.
    fn to_shared(&self) -> Bytes {
        match self {
            Rest::Shared(b) => b.clone(),
            Rest::Lent(l) => Bytes::copy_from_slice(&l.bytes()),
        }
    }
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rest::Shared(b) => b.fmt(f),
            Rest::Lent(l) => l.fmt(f),
        }
    }
}

impl PartialEq for Rest {
    fn eq(&self, other: &Rest) -> bool {
        match (self, other) {
            // One lock, taken once (twice would wait for itself).
            (Rest::Lent(a), Rest::Lent(b)) if Arc::ptr_eq(a, b) => true,
            // Never two locks at once (two threads comparing in opposite orders would wait for
            // each other): one side is read out first.
            (Rest::Lent(_), _) => self.to_shared()[..] == *other.bytes(),
            _ => *self.bytes() == *other.bytes(),
        }
    }
}

impl Eq for Rest {}

/// A [`Rest`]'s bytes, held (under its lock, for a lent one) while this lives.
enum RestBytes<'a> {
    Shared(&'a Bytes),
    Lent(LentBytes<'a>),
}

impl std::ops::Deref for RestBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            RestBytes::Shared(b) => b,
            RestBytes::Lent(l) => l,
        }
    }
}

/// A payload on its way into a frame: a few leading bytes (a CBOR head, say) kept inline, then
/// the rest as a shared buffer. An application's `Bytes` payload thus goes out without first
/// being copied behind its CBOR head: the head rides with the frame header, and the buffer
/// is the frame's second piece (see [`WireFrame`]).
///
/// ```
/// use hsipc_proto::frame::Body;
/// let body = Body::from(bytes::Bytes::from_static(b"payload"));
/// assert_eq!(body.len(), 7);
/// assert_eq!(&body.to_bytes()[..], b"payload");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    lead: [u8; LEAD_MAX],
    lead_len: u8,
    rest: Rest,
}

/// The most leading bytes a [`Body`] keeps inline (the longest CBOR head).
pub(crate) const LEAD_MAX: usize = 9;

impl Body {
    /// `lead` (at most 9 bytes; `None` if longer), then `rest`.
    pub fn with_lead(lead: &[u8], rest: Bytes) -> Option<Body> {
        Body::lead_then(lead, Rest::Shared(rest))
    }

    fn lead_then(lead: &[u8], rest: Rest) -> Option<Body> {
        let mut body = Body { lead: [0; LEAD_MAX], lead_len: lead.len() as u8, rest };
        body.lead.get_mut(..lead.len())?.copy_from_slice(lead);
        Some(body)
    }

    /// Runs `f` with a body of the first `n` bytes of `lead` (all nine at most) then `data`,
    /// lent rather than copied (see `lent`): a frame made of the body while `f` runs, and
    /// written meanwhile, is written from `data` itself; a frame (or body) still held when `f`
    /// returns reads a copy of `data` from then on. So a large borrowed payload costs one copy
    /// (into the transport) instead of two. Applications reach it through
    /// [`codec::with_body`](crate::codec::with_body).
    pub(crate) fn lend<R>(lead: &[u8; LEAD_MAX], n: usize, data: &[u8], f: impl FnOnce(Body) -> R) -> R {
        let lead = &lead[..n.min(LEAD_MAX)];
        lent::lend(data, |lent| f(Body::lead_then(lead, Rest::Lent(lent)).unwrap_or_default()))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.lead_len as usize + self.rest.len()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lead(&self) -> &[u8] {
        &self.lead[..self.lead_len as usize]
    }

    /// The bytes after the lead (for tests of what is shared and what is copied).
    #[cfg(test)]
    pub(crate) fn rest(&self) -> &Bytes {
        match &self.rest {
            Rest::Shared(b) => b,
            Rest::Lent(_) => panic!("a lent body"),
        }
    }

    /// Whether the bytes after the lead are lent (for tests).
    #[cfg(test)]
    pub(crate) fn is_lent(&self) -> bool {
        matches!(self.rest, Rest::Lent(_))
    }

    /// The body as one buffer: no copy when it has no leading bytes.
    pub fn to_bytes(&self) -> Bytes {
        if self.lead_len == 0 {
            return self.rest.to_shared();
        }
        let mut b = BytesMut::with_capacity(self.len());
        b.put_slice(self.lead());
        b.put_slice(&self.rest.bytes());
        b.freeze()
    }
}

impl From<Bytes> for Body {
    /// A body already in one buffer.
    fn from(rest: Bytes) -> Self {
        Body { lead: [0; LEAD_MAX], lead_len: 0, rest: Rest::Shared(rest) }
    }
}

/// A payload up to this size is copied behind the header (one buffer); a larger one is a
/// piece of its own.
const INLINE_PAYLOAD: usize = 512;

impl WireFrame {
    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether the frame has no bytes (never, for a frame the protocol made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces, in order (the second may be empty), readable while the returned
    /// [`Pieces`] lives. For a body lent by the application (see
    /// [`codec::with_body`](crate::codec::with_body)) it is a lock
    /// guard, shared with the other frames of that body (the frames of one publish to several
    /// peers, say): hold one at a time on a thread (a second would wait for the first), never
    /// across a blocking write or while waiting for another lock, and let it go soon (the
    /// lender waits for it before its call returns).
    pub fn pieces(&self) -> Pieces<'_> {
        Pieces { head: &self.head, body: self.body.bytes() }
    }

    /// The frame for keeping (in a queue that may hold it long): a small head is copied out of
    /// the buffer it shares with other frames' heads (see `Arena`), so that the frame keeps
    /// alive no more than its own bytes. The body is shared as before.
    pub fn detached(&self) -> WireFrame {
        let head = if self.head.len() <= Arena::MOST { Bytes::copy_from_slice(&self.head) } else { self.head.clone() };
        WireFrame { head, body: self.body.clone(), fan_out: self.fan_out.clone() }
    }

    /// What the frames of this one's fan-out share, if it is one of several frames of one
    /// publish (with a body of [`FAN_OUT_MIN`] bytes or more).
    pub fn fan_out(&self) -> Option<&FanOut> {
        self.fan_out.as_ref()
    }

    /// The frame, one of the fan-out that shares `fan_out` (the protocol marks the frames of a
    /// publish to several peers so; a transport's tests may too).
    pub fn with_fan_out(mut self, fan_out: Option<&FanOut>) -> WireFrame {
        self.fan_out = fan_out.cloned();
        self
    }

    /// The frame's flags and sequence number (`None` for a frame shorter than a header).
    pub fn stamp(&self) -> Option<Stamp> {
        let h = self.head.get(..HEADER_LEN)?;
        let seq = u64::from_le_bytes(h[16..24].try_into().ok()?);
        Some(Stamp { flags: h[3], seq })
    }

    /// Whether `head` (another frame's first piece: header, name and the body's leading bytes)
    /// is this frame's, but for the flags and the sequence number (see [`Stamp`]). The rest of
    /// the body is not compared: frames of one [`FanOut`] share it by construction.
    pub fn same_head_but_stamp(&self, head: &[u8]) -> bool {
        let mine = &self.head[..];
        mine.len() == head.len()
            && mine.len() >= HEADER_LEN
            && mine[..3] == head[..3]
            && mine[4..16] == head[4..16]
            && mine[24..] == head[24..]
    }

    /// The frame as one buffer: no copy when it is in one piece.
    pub fn to_bytes(&self) -> Bytes {
        if self.body.is_empty() {
            return self.head.clone();
        }
        let mut b = BytesMut::with_capacity(self.len());
        b.put_slice(&self.head);
        b.put_slice(&self.body.bytes());
        b.freeze()
    }
}

impl From<Bytes> for WireFrame {
    /// A frame already in one buffer.
    fn from(frame: Bytes) -> Self {
        WireFrame { head: frame, body: Rest::default(), fan_out: None }
    }
}

/// A payload as [`encode_parts`] takes it: bytes to copy behind the header, or a [`Body`],
/// whose rest is shared when it is large.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload<'a> {
    Copied(&'a [u8]),
    Shared(&'a Body),
}

impl<'a> From<&'a [u8]> for Payload<'a> {
    fn from(p: &'a [u8]) -> Self {
        Payload::Copied(p)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Payload<'a> {
    fn from(p: &'a [u8; N]) -> Self {
        Payload::Copied(p)
    }
}

impl<'a> From<&'a Body> for Payload<'a> {
    fn from(b: &'a Body) -> Self {
        Payload::Shared(b)
    }
}

/// Where an endpoint writes the heads of its frames: small heads are split off one shared
/// buffer, so that a small frame costs no allocation of its own (a new buffer is taken once
/// every few dozen frames, or the old one reused once every head cut from it is gone).
///
/// A head held long (queued for a stuck peer) keeps its buffer alive, so only small heads come
/// from the arena, and its buffer is small too: at most [`Arena::LEN`] kept per head held.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    buf: BytesMut,
    /// Every head gets a buffer of exactly its size (a frame encoded once, not a stream of them).
    exact: bool,
}

impl Arena {
    /// An arena that gives every head a buffer of its own, of exactly its size.
    fn exact() -> Self {
        Arena { buf: BytesMut::new(), exact: true }
    }

    /// The size of one buffer.
    const LEN: usize = 4096;
    /// The largest head cut from the arena; a larger one has a buffer of its own.
    const MOST: usize = 1024;

    /// A head of `len` bytes, written by `put`.
    fn head(&mut self, len: usize, put: impl FnOnce(&mut BytesMut)) -> Bytes {
        if len > Self::MOST || self.exact {
            let mut own = BytesMut::with_capacity(len);
            put(&mut own);
            return own.freeze();
        }
        if self.buf.capacity() < len {
            // Takes the buffer back if no head cut from it is alive, else a new one.
            self.buf.reserve(Self::LEN);
        }
        put(&mut self.buf);
        self.buf.split().freeze()
    }
}

/// Encodes a frame straight from its parts (the hot path: no intermediate [`Frame`]), its head
/// written into `arena`. A [`Body`]'s leading bytes go behind the header, and its rest, if
/// larger than [`INLINE_PAYLOAD`], is not copied: it becomes the frame's second piece.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_parts(
    arena: &mut Arena,
    kind: FrameKind,
    flags: u8,
    aux: u32,
    id: u64,
    seq: u64,
    name: &[u8],
    payload: Payload<'_>,
    max_len: usize,
) -> Result<WireFrame, FrameError> {
    let (lead, rest) = match payload {
        Payload::Copied(p) => (p, None),
        Payload::Shared(b) => (b.lead(), Some(&b.rest)),
    };
    let rest_len = rest.map_or(0, Rest::len);
    let shared = rest.filter(|_| rest_len > INLINE_PAYLOAD);
    if name.len() > MAX_NAME_LEN {
        return Err(FrameError::NameTooLong { len: name.len() });
    }
    let payload_len = lead.len() + rest_len;
    let len = HEADER_LEN + name.len() + payload_len;
    if len > max_len || payload_len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let head_len = if shared.is_some() { len - rest_len } else { len };
    // The header is put together on the stack and copied in once (a `put` per field checks
    // the buffer's room each time).
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&[MAGIC, VERSION, kind as u8, flags]);
    header[4..8].copy_from_slice(&aux.to_le_bytes());
    header[8..16].copy_from_slice(&id.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..26].copy_from_slice(&(name.len() as u16).to_le_bytes());
    header[28..32].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let head = arena.head(head_len, |b| {
        b.put_slice(&header);
        b.put_slice(name);
        b.put_slice(lead);
        if let (None, Some(rest)) = (shared, rest) {
            b.put_slice(&rest.bytes());
        }
    });
    Ok(WireFrame { head, body: shared.cloned().unwrap_or_default(), fan_out: None })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX: usize = 1 << 20;

    fn small(arena: &mut Arena, id: u64) -> WireFrame {
        encode_parts(arena, FrameKind::Request, 0, 0, id, 0, b"s.m", Payload::Copied(&[7u8; 64]), MAX).unwrap()
    }

    #[test]
    fn a_shared_frame_keeps_its_payload_in_place_and_its_name_in_a_copy() {
        let payload = Bytes::from(vec![5u8; 4096]);
        let bytes = Frame::new(FrameKind::Publish, 0, 1, 2).with_name("t/x").with_payload(payload).encode(MAX).unwrap();
        let within = |p: *const u8| bytes.as_ptr_range().contains(&p);
        let shared = Frame::decode_shared(bytes.clone(), MAX).unwrap();
        assert_eq!(shared, Frame::decode(bytes.clone(), MAX).unwrap());
        assert!(within(shared.payload.as_ptr()), "the payload is not copied");
        assert!(!within(shared.name().as_ptr()), "the name is a copy: the sender cannot change it");
        // The same checks hold.
        let mut bad = bytes.to_vec();
        bad[HEADER_LEN] = 0xff;
        assert_eq!(Frame::decode_shared(Bytes::from(bad), MAX), Err(FrameError::NameNotUtf8));
    }

    #[test]
    fn small_heads_are_cut_from_one_buffer_that_is_taken_back_when_free() {
        let mut arena = Arena::default();
        let a = small(&mut arena, 1);
        let b = small(&mut arena, 2);
        assert_eq!(b.head.as_ptr(), a.head[a.head.len()..].as_ptr(), "the second head follows the first");
        let big = encode_parts(&mut arena, FrameKind::Request, 0, 0, 3, 0, b"s.m", Payload::Copied(&[1; 2000]), MAX);
        let c = small(&mut arena, 4);
        assert_eq!(c.head.as_ptr(), b.head[b.head.len()..].as_ptr(), "a large head has a buffer of its own");
        drop(big);
        // Each frame decodes as what was written.
        for (f, id) in [(&a, 1), (&b, 2), (&c, 4)] {
            let back = Frame::decode(f.to_bytes(), MAX).unwrap();
            assert_eq!((back.id, &back.payload[..]), (id, &[7u8; 64][..]));
        }
        let start = a.head.as_ptr();
        // A frame kept in a queue is detached: it does not hold the buffer.
        let kept = a.detached();
        assert_eq!(kept.to_bytes(), a.to_bytes());
        assert_ne!(kept.head.as_ptr(), start);
        drop((a, b, c));
        // Frames sent and dropped one after another, as on a lane: when the buffer is used up,
        // it is free again, and taken back.
        let again = (0..100).any(|id| small(&mut arena, id).head.as_ptr() == start);
        assert!(again, "the free buffer is taken back, not a new one");
        assert_eq!(Frame::decode(kept.to_bytes(), MAX).unwrap().id, 1);
    }

    fn kind_strategy() -> impl Strategy<Value = FrameKind> {
        (1u8..=14).prop_map(|k| FrameKind::from_u8(k).expect("1..=14 are kinds"))
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            kind in kind_strategy(),
            flags: u8, aux: u32, id: u64, seq: u64,
            name in "\\PC{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let f = Frame::new(kind, flags, id, seq).with_aux(aux).with_name(&name)
                .with_payload(Bytes::from(payload));
            let bytes = f.encode(MAX).unwrap();
            prop_assert_eq!(bytes.len(), f.encoded_len());
            let back = Frame::decode(bytes, MAX).unwrap();
            prop_assert_eq!(back, f);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Frame::decode(Bytes::from(bytes), MAX);
        }

        #[test]
        fn decoding_mutated_frames_never_panics(
            idx in 0usize..64, val: u8, cut in 0usize..64,
        ) {
            let f = Frame::new(FrameKind::Publish, 0, 7, 9).with_name("a/b").with_payload(Bytes::from_static(b"hello world"));
            let mut v = f.encode(MAX).unwrap().to_vec();
            let i = idx % v.len();
            v[i] = val;
            v.truncate(v.len().saturating_sub(cut % 8));
            let v = Bytes::from(v);
            // A shared frame is judged exactly as one in memory of its own.
            prop_assert_eq!(Frame::decode_shared(v.clone(), MAX), Frame::decode(v, MAX));
        }
    }

    #[test]
    fn rejects_each_malformation_with_its_own_error() {
        let good = Frame::new(FrameKind::Request, 0, 1, 2).with_name("svc.m").encode(MAX).unwrap();
        let with = |i: usize, v: u8| {
            let mut b = good.to_vec();
            b[i] = v;
            Frame::decode(Bytes::from(b), MAX)
        };
        assert_eq!(Frame::decode(Bytes::from_static(b"abc"), MAX), Err(FrameError::Truncated { len: 3 }));
        assert_eq!(with(0, 0), Err(FrameError::BadMagic(0)));
        assert_eq!(with(1, 9), Err(FrameError::UnsupportedVersion { theirs: 9, ours: VERSION }));
        assert_eq!(with(2, 99), Err(FrameError::UnknownKind(99)));
        assert_eq!(with(26, 1), Err(FrameError::ReservedNotZero(1)));
        assert!(matches!(with(24, 200), Err(FrameError::LengthMismatch { .. })));
        assert_eq!(with(HEADER_LEN, 0xFF), Err(FrameError::NameNotUtf8));
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(Frame::decode(Bytes::from(long), MAX), Err(FrameError::LengthMismatch { .. })));
        assert_eq!(Frame::decode(good.clone(), 10), Err(FrameError::TooLarge { len: good.len(), max: 10 }));
    }

    #[test]
    fn encode_enforces_the_maximum() {
        let f = Frame::new(FrameKind::Publish, 0, 0, 0).with_payload(Bytes::from(vec![0u8; 100]));
        assert_eq!(
            f.encode(HEADER_LEN + 99),
            Err(FrameError::TooLarge { len: HEADER_LEN + 100, max: HEADER_LEN + 99 })
        );
        assert!(f.encode(HEADER_LEN + 100).is_ok());
    }
}
