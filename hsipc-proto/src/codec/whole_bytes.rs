//! Payloads that are bytes and nothing else (`Bytes`, `Vec<u8>`, `&[u8]`), without serde.
//!
//! serde hands a `Vec<u8>` to a serializer one element at a time, and `Bytes` deserializes
//! through a copy: a megabyte payload spends milliseconds in serde for a memcpy's work. When the
//! payload's type *is* one of these (checked by type id, lifetimes aside, so no `'static` bound
//! is asked of callers), the codec writes or reads the CBOR byte string itself:
//!
//! - encoding `Bytes`, `Vec<u8>`, `&[u8]`, `&Vec<u8>` or `&Bytes` is one copy into the payload,
//!   and none at all for a frame's [`Body`] of a `Bytes` (the head goes with the frame header,
//!   the buffer is shared);
//! - decoding a `Bytes` of 2 KiB or more is a slice of the received buffer (no copy at all: a
//!   payload that came in a shared mapping stays in it); a smaller one, and a `Vec<u8>`, is one
//!   copy.
//!
//! The bytes on the wire are exactly what ciborium writes for the same value, so peers cannot
//! tell the difference; a payload that is not a single byte string (an older peer's array of
//! integers) goes through serde as before.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::Body;

/// A decoded `Bytes` payload at least this large is a slice of the received buffer; a smaller
/// one is copied.
pub(super) const SHARE_MIN: usize = 2048;

/// The contents of `value` if its type is one of the byte payload types.
pub(super) fn as_bytes<T: ?Sized>(value: &T) -> Option<&[u8]> {
    let id = typeid::of::<T>();
    // A thin pointer to the value; only read through as the type its id names.
    let ptr = value as *const T as *const u8;
    // SAFETY (each arm): the type ids are equal and none of these types has a lifetime of
    // its own beyond the reference's (which `typeid` ignores), so `T` is that type and `ptr`
    // points at a live value of it for as long as `value` is borrowed.
    if id == typeid::of::<Bytes>() {
        Some(unsafe { &*(ptr as *const Bytes) })
    } else if id == typeid::of::<Vec<u8>>() {
        Some(unsafe { &*(ptr as *const Vec<u8>) })
    } else if id == typeid::of::<&[u8]>() {
        Some(unsafe { *(ptr as *const &[u8]) })
    } else if id == typeid::of::<&Vec<u8>>() {
        Some(unsafe { *(ptr as *const &Vec<u8>) })
    } else if id == typeid::of::<&Bytes>() {
        Some(unsafe { *(ptr as *const &Bytes) })
    } else {
        None
    }
}

/// The contents of `value` if it is a borrowed byte slice (`&[u8]` or `&Vec<u8>`): what the
/// caller keeps, and so may lend rather than copy.
pub(super) fn as_lendable<T: ?Sized>(value: &T) -> Option<&[u8]> {
    let id = typeid::of::<T>();
    let ptr = value as *const T as *const u8;
    // SAFETY: as in `as_bytes`: the type ids are equal, so `T` is that type.
    if id == typeid::of::<&[u8]>() {
        Some(unsafe { *(ptr as *const &[u8]) })
    } else if id == typeid::of::<&Vec<u8>>() {
        Some(unsafe { *(ptr as *const &Vec<u8>) })
    } else {
        None
    }
}

/// Runs `f` with `data` as a CBOR byte string in a [`Body`] that borrows `data` (see
/// `Body::lend`).
pub(super) fn lend<R>(data: &[u8], f: impl FnOnce(Body) -> R) -> R {
    let (head, n) = head(data.len());
    Body::lend(&head, n, data, f)
}

/// The `Bytes` itself if `value` is one (or a reference to one): shared, not copied.
pub(super) fn as_shared<T: ?Sized>(value: &T) -> Option<&Bytes> {
    let id = typeid::of::<T>();
    let ptr = value as *const T as *const u8;
    // SAFETY: as in `as_bytes`: the type ids are equal, so `T` is that type.
    if id == typeid::of::<Bytes>() {
        Some(unsafe { &*(ptr as *const Bytes) })
    } else if id == typeid::of::<&Bytes>() {
        Some(unsafe { *(ptr as *const &Bytes) })
    } else {
        None
    }
}

/// `data` as a CBOR byte string.
pub(super) fn encode(data: &[u8]) -> Bytes {
    let (head, n) = head(data.len());
    let mut out = BytesMut::with_capacity(n + data.len());
    out.put_slice(&head[..n]);
    out.put_slice(data);
    out.freeze()
}

/// `value` itself as a `Bytes` if it is a `Bytes` or a `Vec<u8>` (whose buffer becomes the
/// `Bytes`'s, not copied); `value` back otherwise.
pub(super) fn into_shared<T>(value: T) -> Result<Bytes, T> {
    let id = typeid::of::<T>();
    if id != typeid::of::<Bytes>() && id != typeid::of::<Vec<u8>>() {
        return Err(value);
    }
    let value = std::mem::ManuallyDrop::new(value);
    let ptr = &*value as *const T;
    // SAFETY (both arms): the type ids are equal and neither type has lifetimes, so `T` is that
    // type; the value is moved out of the `ManuallyDrop` exactly once.
    if id == typeid::of::<Bytes>() {
        Ok(unsafe { std::ptr::read(ptr as *const Bytes) })
    } else {
        let mut v = unsafe { std::ptr::read(ptr as *const Vec<u8>) };
        // Its spare room would travel with the frame (and stay alive while it is queued).
        if v.capacity() - v.len() > v.len() / 4 {
            v.shrink_to_fit();
        }
        Ok(Bytes::from(v))
    }
}

/// `data` as a CBOR byte string in a [`Body`]: its head inline, the bytes shared.
pub(super) fn body(data: Bytes) -> Body {
    let (head, n) = head(data.len());
    Body::with_lead(&head[..n], data).unwrap_or_default()
}

/// The head of a CBOR byte string of `len` bytes (major type 2, the shortest length encoding,
/// as ciborium writes it), and its length.
fn head(len: usize) -> ([u8; 9], usize) {
    let len = len as u64;
    let mut h = [0u8; 9];
    if len < 24 {
        h[0] = 0x40 | len as u8;
        (h, 1)
    } else if len <= u8::MAX as u64 {
        h[0] = 0x58;
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as u64 {
        h[0] = 0x59;
        h[1..3].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 3)
    } else if len <= u32::MAX as u64 {
        h[0] = 0x5a;
        h[1..5].copy_from_slice(&(len as u32).to_be_bytes());
        (h, 5)
    } else {
        h[0] = 0x5b;
        h[1..9].copy_from_slice(&len.to_be_bytes());
        (h, 9)
    }
}

/// The decoded value if `T` is `Bytes` or `Vec<u8>` and `payload` is one whole byte string;
/// `None` to decode through serde.
pub(super) fn decode<T>(payload: &Bytes) -> Option<T> {
    let id = typeid::of::<T>();
    if id == typeid::of::<Bytes>() {
        let range = byte_string(payload)?;
        // A small payload is copied: a slice would keep alive the whole buffer it came in (a
        // transport's arena of many frames, say), far larger than itself.
        let value =
            if range.len() < SHARE_MIN { Bytes::copy_from_slice(&payload[range]) } else { payload.slice(range) };
        // SAFETY: `T` is `Bytes` (equal type ids, and `Bytes` has no lifetimes); the value is
        // moved out of the `ManuallyDrop` exactly once.
        Some(unsafe { std::ptr::read(&*std::mem::ManuallyDrop::new(value) as *const Bytes as *const T) })
    } else if id == typeid::of::<Vec<u8>>() {
        let value = payload[byte_string(payload)?].to_vec();
        // SAFETY: as above, for `Vec<u8>`.
        Some(unsafe { std::ptr::read(&*std::mem::ManuallyDrop::new(value) as *const Vec<u8> as *const T) })
    } else {
        None
    }
}

/// Where the contents of `buf` lie if it is exactly one definite-length CBOR byte string.
fn byte_string(buf: &[u8]) -> Option<Range<usize>> {
    let (&first, rest) = buf.split_first()?;
    if first >> 5 != 2 {
        return None;
    }
    let (len, head) = match first & 0x1f {
        n @ 0..=23 => (n as u64, 1),
        24 => (*rest.first()? as u64, 2),
        25 => (u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as u64, 3),
        26 => (u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as u64, 5),
        27 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 9),
        _ => return None, // indefinite length, or reserved
    };
    (head as u64).checked_add(len).filter(|&end| end == buf.len() as u64)?;
    Some(head..buf.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_the_byte_types_are_recognised() {
        let v = vec![1u8, 2, 3];
        let b = Bytes::from_static(b"abc");
        assert_eq!(as_bytes(&v), Some(&[1u8, 2, 3][..]));
        assert_eq!(as_bytes(&&v[..]), Some(&[1u8, 2, 3][..]));
        assert_eq!(as_bytes(&&v), Some(&[1u8, 2, 3][..]));
        assert_eq!(as_bytes(&b), Some(&b"abc"[..]));
        assert_eq!(as_bytes(&&b), Some(&b"abc"[..]));
        assert_eq!(as_bytes(&vec![1u16]), None);
        assert_eq!(as_bytes(&"abc"), None);
        assert_eq!(as_bytes(&(1u8, 2u8)), None);
        assert!(decode::<String>(&encode(b"abc")).is_none());
        assert!(decode::<Vec<u16>>(&encode(b"abc")).is_none());
        let v = vec![1u8, 2, 3];
        let ptr = v.as_ptr();
        assert_eq!(into_shared(v).unwrap().as_ptr(), ptr, "a Vec's buffer is handed over, not copied");
        assert_eq!(into_shared(b.clone()).unwrap(), b);
        assert_eq!(into_shared(vec![1u16]).unwrap_err(), vec![1u16]);
        assert_eq!(into_shared("abc").unwrap_err(), "abc");
    }

    #[test]
    fn a_decoded_bytes_payload_shares_the_received_buffer() {
        let wire = encode(&[7u8; 3000]);
        let back: Bytes = decode(&wire).unwrap();
        assert_eq!(back.len(), 3000);
        assert_eq!(back.as_ptr(), wire[3..].as_ptr(), "a slice, not a copy");
        let wire = encode(&[7u8; 100]);
        let back: Bytes = decode(&wire).unwrap();
        assert_eq!(&back[..], &[7u8; 100][..]);
        assert_ne!(back.as_ptr(), wire[2..].as_ptr(), "a small payload is copied");
    }

    #[test]
    fn anything_but_one_whole_byte_string_is_left_to_serde() {
        for buf in
            [&[][..], &[0x43, 1, 2][..], &[0x43, 1, 2, 3, 4][..], &[0x5f, 0x41, 1, 0xff][..], &[0x83, 1, 2, 3][..]]
        {
            assert!(decode::<Bytes>(&Bytes::copy_from_slice(buf)).is_none(), "{buf:?}");
        }
        let huge_len = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Vec<u8>>(&Bytes::copy_from_slice(&huge_len)).is_none());
    }

    proptest! {
        /// The fast path writes what ciborium writes, and reads it back.
        #[test]
        fn same_bytes_as_ciborium(data in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let mut theirs = Vec::new();
            ciborium::into_writer(&serde_bytes_like(&data), &mut theirs).unwrap();
            let ours = encode(&data);
            prop_assert_eq!(&ours[..], &theirs[..]);
            prop_assert_eq!(&body(Bytes::from(data.clone())).to_bytes()[..], &theirs[..]);
            let moved = into_shared(data.clone()).unwrap();
            prop_assert_eq!(&body(moved).to_bytes()[..], &theirs[..]);
            prop_assert_eq!(decode::<Vec<u8>>(&ours).unwrap(), data.clone());
            prop_assert_eq!(decode::<Bytes>(&ours).unwrap(), Bytes::from(data));
        }
    }

    /// A value that serde writes as one byte string.
    fn serde_bytes_like(data: &[u8]) -> ciborium::Value {
        ciborium::Value::Bytes(data.to_vec())
    }
}
