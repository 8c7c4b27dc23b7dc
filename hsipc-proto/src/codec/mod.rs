//! The payload codec: application values as CBOR (serde + ciborium).
//!
//! CBOR is self-describing, so a tool can show any payload as JSON, and a struct can gain
//! optional fields without breaking older peers. ciborium bounds its recursion depth, so a
//! deeply nested payload from a peer is a decode error, not a stack overflow.
//!
//! Sequences of bytes (`Vec<u8>`, `&[u8]`, ...) are written as CBOR byte strings, not as arrays
//! of integers (see `byte_strings`): a megabyte stays a megabyte. The fastest payload type for
//! raw bytes is still `bytes::Bytes` (or `serde_bytes::ByteBuf`), which is copied whole,
//! where a `Vec<u8>` goes through serde one byte at a time.
//!
//! A payload that *is* `Bytes`, `Vec<u8>` or `&[u8]` (not one inside a struct) skips serde
//! altogether (see `whole_bytes`): one copy to encode, and [`decode_from`] hands a `Bytes`
//! back as a slice of the received frame, with no copy at all.

mod byte_strings;
mod whole_bytes;

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use self::byte_strings::Wrapped;
use crate::frame::Body;

/// A value could not be turned into CBOR or back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Serialising failed (a `Serialize` impl returned an error).
    #[error("cannot encode a `{type_name}` as CBOR: {reason}")]
    Encode {
        /// The Rust type that was being encoded.
        type_name: &'static str,
        /// What serde or ciborium said.
        reason: String,
    },
    /// The bytes are not a valid CBOR encoding of the expected type.
    #[error("cannot decode the payload as a `{type_name}`: {reason}; check that both sides use the same message type")]
    Decode {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What serde or ciborium said.
        reason: String,
    },
}

/// Encodes `value` as CBOR.
///
/// ```
/// let bytes = hsipc_proto::codec::encode(&(1u8, "two")).unwrap();
/// let back: (u8, String) = hsipc_proto::codec::decode(&bytes).unwrap();
/// assert_eq!(back, (1, "two".to_string()));
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, CodecError> {
    if let Some(data) = whole_bytes::as_bytes(value) {
        return Ok(whole_bytes::encode(data));
    }
    let mut w = Growing(BytesMut::with_capacity(SMALL));
    ciborium::into_writer(&Wrapped(value), &mut w)
        .map_err(|e| CodecError::Encode { type_name: std::any::type_name::<T>(), reason: e.to_string() })?;
    Ok(w.0.freeze())
}

/// Encodes `value` as a frame's [`Body`]: as [`encode`] does, except that a `Bytes` (or
/// `&Bytes`) is not copied: the body holds its CBOR head and shares the buffer.
///
/// ```
/// let data = bytes::Bytes::from(vec![7u8; 4096]);
/// let body = hsipc_proto::codec::encode_body(&data).unwrap();
/// assert_eq!(body.len(), 3 + 4096);
/// assert_eq!(body.to_bytes(), hsipc_proto::codec::encode(&data).unwrap());
/// ```
pub fn encode_body<T: Serialize + ?Sized>(value: &T) -> Result<Body, CodecError> {
    match whole_bytes::as_shared(value) {
        Some(data) => Ok(whole_bytes::body(data.clone())),
        None => encode(value).map(Body::from),
    }
}

/// Like [`encode_body`], for a value the caller gives up: a `Bytes` is moved into the body
/// (cloning one made from a `Vec` would allocate), and a `Vec<u8>` hands over its buffer
/// instead of being copied. A reference is encoded as [`encode_body`] does (a `&Bytes` is
/// shared, a `&[u8]` copied once).
///
/// ```
/// let data = vec![7u8; 4096];
/// let expected = hsipc_proto::codec::encode(&data).unwrap();
/// let body = hsipc_proto::codec::into_body(data).unwrap();
/// assert_eq!(body.to_bytes(), expected);
/// ```
pub fn into_body<T: Serialize>(value: T) -> Result<Body, CodecError> {
    match whole_bytes::into_shared(value) {
        Ok(data) => Ok(whole_bytes::body(data)),
        Err(value) => encode_body(&value),
    }
}

/// Like [`into_body`], for a value the caller holds on to while `f` runs: a borrowed byte
/// slice (`&[u8]` or `&Vec<u8>`) of 16 KiB or more is lent to the body rather than copied into
/// it: a frame made of the body and written while `f` runs is written
/// from the caller's memory, and one still held when `f` returns takes a copy then. Anything
/// else is encoded as [`into_body`] does.
///
/// ```
/// let data = vec![7u8; 100_000];
/// let expected = hsipc_proto::codec::encode(&data).unwrap();
/// let same = hsipc_proto::codec::with_body(&data[..], |body| body.to_bytes() == expected).unwrap();
/// assert!(same);
/// ```
pub fn with_body<T: Serialize, R>(value: T, f: impl FnOnce(Body) -> R) -> Result<R, CodecError> {
    match whole_bytes::as_lendable(&value) {
        Some(data) if data.len() >= LEND_MIN => Ok(whole_bytes::lend(data, f)),
        _ => into_body(value).map(f),
    }
}

/// A borrowed byte slice at least this large is lent to a frame ([`with_body`]); a smaller
/// one is copied (a copy of a few kilobytes costs less than the loan's lock and allocation).
const LEND_MIN: usize = 16 * 1024;

/// The room [`encode`] starts with: enough for most messages at once (a 64 B payload must not
/// regrow).
const SMALL: usize = 256;
/// A write at least this large (a byte string, in practice) gets room of its own size.
const LARGE: usize = 4096;

/// A writer into a growing buffer that gives a large write exactly the room it needs (plus a
/// little for what follows) instead of doubling up to it: a 1 MiB payload is copied once,
/// into one allocation, not again at each doubling into fresh pages.
struct Growing(BytesMut);

impl std::io::Write for Growing {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.0.capacity() - self.0.len();
        if room < data.len() {
            let more = if data.len() >= LARGE { data.len() + SMALL } else { self.0.capacity().max(data.len()) };
            self.0.reserve(more);
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes CBOR bytes as a `T`; the error names `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(bytes)
        .map_err(|e| CodecError::Decode { type_name: std::any::type_name::<T>(), reason: e.to_string() })
}

/// Decodes a received payload as a `T`, as [`decode`] does, except that a `Bytes` payload of
/// 2 KiB or more comes back as a slice of `payload` (no copy; a smaller one is copied, so as
/// not to keep a larger buffer alive) and a `Vec<u8>` in one copy.
///
/// ```
/// use bytes::Bytes;
/// let wire = hsipc_proto::codec::encode(&Bytes::from(vec![7u8; 4096])).unwrap();
/// let back: Bytes = hsipc_proto::codec::decode_from(&wire).unwrap();
/// assert_eq!(back.as_ptr(), wire[3..].as_ptr()); // the same memory
/// let back: Vec<u8> = hsipc_proto::codec::decode_from(&wire).unwrap(); // one copy
/// assert_eq!(back, vec![7u8; 4096]);
/// ```
pub fn decode_from<T: DeserializeOwned>(payload: &Bytes) -> Result<T, CodecError> {
    match whole_bytes::decode(payload) {
        Some(value) => Ok(value),
        None => decode(payload),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn decode_error_names_the_expected_type() {
        let bytes = encode("not a number").unwrap();
        let err = decode::<u32>(&bytes).unwrap_err();
        assert!(err.to_string().contains("u32"), "{err}");
    }

    #[test]
    fn byte_sequences_are_byte_strings_and_read_back_as_before() {
        let v: Vec<u8> = (0..=255).collect();
        let bytes = encode(&v).unwrap();
        // A byte string header (major type 2, 2-byte length) and the bytes themselves.
        assert_eq!(&bytes[..3], &[0x59, 0x01, 0x00]);
        assert_eq!(bytes.len(), 3 + 256);
        assert_eq!(decode::<Vec<u8>>(&bytes).unwrap(), v);
        // Nested, and beside sequences that are not bytes.
        type Nested = (Option<Vec<u8>>, Vec<Vec<u8>>, Vec<u16>, Vec<u8>);
        let nested: Nested = (Some(vec![1u8, 2, 3]), vec![vec![9u8]], vec![300u16, 1], Vec::<u8>::new());
        let back: Nested = decode(&encode(&nested).unwrap()).unwrap();
        assert_eq!(back, nested);
        // What an older peer wrote (an array of integers) still reads.
        let mut old = Vec::new();
        ciborium::into_writer(&v, &mut old).unwrap();
        assert_eq!(decode::<Vec<u8>>(&old).unwrap(), v);
    }

    #[test]
    fn a_sequence_that_stops_being_bytes_falls_back_to_an_array() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(untagged)]
        enum Small {
            Byte(u8),
            Word(u32),
        }
        let v = vec![Small::Byte(1), Small::Byte(2), Small::Word(70_000), Small::Byte(3)];
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], 0x84, "an array of four");
        assert_eq!(decode::<Vec<Small>>(&bytes).unwrap(), v);
    }

    #[test]
    fn a_vec_given_up_is_moved_and_a_borrowed_bytes_is_shared() {
        let v = vec![7u8; 4096];
        let at = v.as_ptr();
        let body = into_body(v).unwrap();
        assert_eq!(body.rest().as_ptr(), at, "the Vec's own buffer, not a copy");
        let b = Bytes::from(vec![8u8; 4096]);
        let body = into_body(&b).unwrap();
        assert_eq!(body.rest().as_ptr(), b.as_ptr(), "the Bytes' buffer, shared");
        let slice: &[u8] = &b;
        let body = into_body(slice).unwrap();
        assert_ne!(body.rest().as_ptr(), b.as_ptr(), "a borrowed slice is copied");
        assert_eq!(body.to_bytes(), encode(slice).unwrap());
    }

    #[test]
    fn a_large_borrowed_slice_is_lent_a_small_one_or_an_owned_one_is_not() {
        let v = vec![9u8; LEND_MIN];
        let expected = encode(&v).unwrap();
        for lent in [with_body(&v[..], |b| (b.is_lent(), b.to_bytes())), with_body(&v, |b| (b.is_lent(), b.to_bytes()))]
        {
            assert_eq!(lent.unwrap(), (true, expected.clone()));
        }
        let small = &v[..LEND_MIN - 1];
        assert!(!with_body(small, |b| b.is_lent()).unwrap());
        assert!(!with_body(Bytes::from(v.clone()), |b| b.is_lent()).unwrap(), "a Bytes is shared");
        assert!(!with_body(v, |b| b.is_lent()).unwrap(), "a Vec given up is moved");
        assert_eq!(with_body((1u8, 2u8), |b| b.to_bytes()).unwrap(), encode(&(1u8, 2u8)).unwrap());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let bytes = vec![0x81u8; 100_000]; // arrays nested 100 000 deep
        assert!(decode::<ciborium::Value>(&bytes).is_err());
    }

    /// Byte sequences at several depths, beside other sequences.
    type WithBytes = (Vec<u8>, Option<Vec<u8>>, Vec<(u8, Vec<u8>)>, std::collections::BTreeMap<String, Vec<u8>>);

    proptest! {
        #[test]
        fn round_trip(v: (u64, String, Vec<i32>, Option<bool>)) {
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(decode::<(u64, String, Vec<i32>, Option<bool>)>(&bytes).unwrap(), v);
        }

        #[test]
        fn round_trip_with_bytes(v: WithBytes) {
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(decode::<WithBytes>(&bytes).unwrap(), v);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode::<(u64, String, Vec<i32>)>(&bytes);
        }
    }
}
