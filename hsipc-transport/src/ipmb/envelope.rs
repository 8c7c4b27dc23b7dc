//! How a frame is wrapped in an ipmb message.
//!
//! The message is an `ipmb::BytesMessage` whose `format` is [`FORMAT`] and whose data is:
//!
//! ```text
//! offset size
//!      0    8 sender's hsipc peer id (little-endian)
//!      8    1 0 = the frame follows inline, 1 = the frame is in the attached memory region,
//!             2 = a lane offer: the attached fd is the reading end of a direct lane
//!      9    8 (region only) the frame's length in the region
//!      9      (inline only) the frame
//! ```

use bytes::Bytes;
use proto::PeerId;
use proto::frame::WireFrame;

use super::Msg;
use crate::transport::TransportError;

/// `BytesMessage::format` of hsipc messages; others on the bus are ignored.
pub(super) const FORMAT: u16 = 0x4853;
/// Frames up to this size travel inline; ipmb hangs on messages over about 131 040 bytes, so
/// this leaves room for ipmb's own header and selector.
pub const INLINE_MAX: usize = 120 * 1024;

const INLINE: u8 = 0;
const REGION: u8 = 1;
/// Where a region's buffer starts in its file: after ipmb's header (a reference count, `u32`,
/// and the buffer's size, `u64`; ipmb 0.8's `MemoryRegion` layout).
const REGION_HEADER: u64 = 12;
const LANE: u8 = 2;
const LANE_CLOSED: u8 = 3;

/// What a received hsipc message holds.
#[derive(Debug)]
pub(super) enum Received {
    /// A frame from a peer.
    Frame(PeerId, Bytes),
    /// A peer's offer of a direct lane: the reading end of its socket pair.
    Lane(PeerId, std::os::fd::OwnedFd),
    /// A peer closed its (idle) lane to this hub: its frames come through the bus again, after
    /// everything it wrote into the lane.
    LaneClosed(PeerId),
}

impl Received {
    /// The peer it came from.
    pub(super) fn from(&self) -> PeerId {
        match self {
            Received::Frame(from, _) | Received::Lane(from, _) | Received::LaneClosed(from) => *from,
        }
    }
}

/// The notice that `from` closed its lane to the receiver (the message needs a carrier fd to
/// travel, as every message between two ipmb clients does).
pub(super) fn lane_closed(selector: ipmb::Selector, from: PeerId) -> ipmb::Message<Msg> {
    let mut data = Vec::with_capacity(9);
    data.extend_from_slice(&from.0.to_le_bytes());
    data.push(LANE_CLOSED);
    ipmb::Message::new(selector, Msg { format: FORMAT, data })
}

/// A lane offer from `from` to `selector`, carrying `fd` (which the message now owns).
pub(super) fn lane_offer(selector: ipmb::Selector, from: PeerId, fd: std::os::fd::OwnedFd) -> ipmb::Message<Msg> {
    let mut data = Vec::with_capacity(9);
    data.extend_from_slice(&from.0.to_le_bytes());
    data.push(LANE);
    let mut msg = ipmb::Message::new(selector, Msg { format: FORMAT, data });
    // SAFETY: `into_raw_fd` gives up ownership; ipmb's Object takes it and closes it.
    msg.objects.push(unsafe { ipmb::Object::from_raw(std::os::fd::IntoRawFd::into_raw_fd(fd)) });
    msg
}

/// Wraps `frame` from `from` in a message for `selector`.
pub(super) fn wrap(
    selector: ipmb::Selector,
    from: PeerId,
    frame: &WireFrame,
) -> Result<ipmb::Message<Msg>, TransportError> {
    let mut data = Vec::with_capacity(17 + frame.len().min(INLINE_MAX));
    data.extend_from_slice(&from.0.to_le_bytes());
    if frame.len() <= INLINE_MAX {
        data.push(INLINE);
        for piece in frame.pieces().get() {
            data.extend_from_slice(piece);
        }
        return Ok(ipmb::Message::new(selector, Msg { format: FORMAT, data }));
    }
    data.push(REGION);
    data.extend_from_slice(&(frame.len() as u64).to_le_bytes());
    let mut region = ipmb::MemoryRegion::new(frame.len()).ok_or_else(|| TransportError::Io {
        what: "creating a shared-memory region for a large message",
        source: std::io::Error::last_os_error(),
    })?;
    let buf = region.map(..).map_err(|e| TransportError::SharedMemory(Box::new(e)))?;
    let mut at = 0;
    for piece in frame.pieces().get() {
        buf[at..at + piece.len()].copy_from_slice(piece);
        at += piece.len();
    }
    let mut msg = ipmb::Message::new(selector, Msg { format: FORMAT, data });
    msg.memory_regions.push(region);
    Ok(msg)
}

/// Why a received message was not an hsipc frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unwrap {
    Foreign,
    Malformed(&'static str),
}

/// Takes the frame (or lane) out of a received message. The message's other fds are closed
/// when it drops.
pub(super) fn unwrap(mut msg: ipmb::Message<Msg>, max_len: usize) -> Result<Received, Unwrap> {
    if msg.payload.format != FORMAT {
        return Err(Unwrap::Foreign);
    }
    let data = &msg.payload.data;
    if data.len() < 9 {
        return Err(Unwrap::Malformed("message shorter than the envelope"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&data[..8]);
    let from = PeerId(u64::from_le_bytes(id));
    match data[8] {
        // The message's buffer becomes the frame's: no copy.
        INLINE => Ok(Received::Frame(from, Bytes::from(std::mem::take(&mut msg.payload.data)).slice(9..))),
        LANE => {
            if data.len() != 9 || msg.objects.len() != 1 {
                return Err(Unwrap::Malformed("lane offer without exactly one fd"));
            }
            let raw = msg.objects.remove(0).into_raw();
            // SAFETY: ipmb received this fd for us and gave up ownership with `into_raw`.
            Ok(Received::Lane(from, unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) }))
        }
        LANE_CLOSED if data.len() == 9 => Ok(Received::LaneClosed(from)),
        REGION => {
            if data.len() != 17 {
                return Err(Unwrap::Malformed("region envelope has the wrong length"));
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&data[9..17]);
            let len = u64::from_le_bytes(len);
            if len > max_len as u64 {
                return Err(Unwrap::Malformed("region frame over the maximum message length"));
            }
            let len = len as usize;
            let Some(region) = msg.memory_regions.first() else {
                return Err(Unwrap::Malformed("region envelope without a region"));
            };
            if region.buffer_size() < len as u64 {
                return Err(Unwrap::Malformed("region smaller than the frame"));
            }
            // Read, not mapped: the region's file is the sender's, unsealed, and its size is only
            // what the sender's header says, so a mapping could reach past its end (a `SIGBUS`
            // here) or change while it is parsed. A file shorter than the frame is an error.
            // SAFETY: the region (and its fd) lives as long as `msg`, past this read.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(region.object().as_raw()) };
            let frame = super::sealed::read_at(fd, REGION_HEADER, len)
                .map_err(|_| Unwrap::Malformed("region file shorter than the frame"))?;
            Ok(Received::Frame(from, frame))
        }
        _ => Err(Unwrap::Malformed("unknown envelope kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn large_frame() -> (WireFrame, Bytes) {
        let bytes: Bytes = (0..INLINE_MAX + 1000).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        (WireFrame::from(bytes.clone()), bytes)
    }

    #[test]
    fn a_large_frame_goes_in_a_region_and_comes_out_whole() {
        let (frame, bytes) = large_frame();
        let msg = wrap(ipmb::Selector::unicast("x"), PeerId(7), &frame).unwrap();
        assert_eq!(msg.memory_regions.len(), 1);
        match unwrap(msg, 1 << 30) {
            Ok(Received::Frame(from, got)) => assert_eq!((from, got), (PeerId(7), bytes)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_region_file_shorter_than_its_header_says_is_malformed_not_a_crash() {
        let (frame, _) = large_frame();
        let msg = wrap(ipmb::Selector::unicast("x"), PeerId(7), &frame).unwrap();
        // The sender cuts its file short after sending (ipmb's regions are not sealed): reading
        // the frame out of a mapping would raise SIGBUS.
        let fd = msg.memory_regions[0].object().as_raw();
        // SAFETY: an fd the message owns, open until it drops.
        assert_eq!(unsafe { libc::ftruncate(fd, 4096) }, 0);
        assert_eq!(unwrap(msg, 1 << 30).unwrap_err(), Unwrap::Malformed("region file shorter than the frame"));
    }
}
