//! The payload codec: application values as CBOR (serde + ciborium).
//!
//! CBOR is self-describing, so a tool can show any payload as JSON, and a struct can gain
//! optional fields without breaking older peers. ciborium bounds its recursion depth, so a
//! deeply nested payload from a peer is a decode error, not a stack overflow.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

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
    let mut w = BytesMut::with_capacity(64).writer();
    ciborium::into_writer(value, &mut w)
        .map_err(|e| CodecError::Encode { type_name: std::any::type_name::<T>(), reason: e.to_string() })?;
    Ok(w.into_inner().freeze())
}

/// Decodes CBOR bytes as a `T`; the error names `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(bytes)
        .map_err(|e| CodecError::Decode { type_name: std::any::type_name::<T>(), reason: e.to_string() })
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
    fn deep_nesting_is_an_error_not_a_crash() {
        let bytes = vec![0x81u8; 100_000]; // arrays nested 100 000 deep
        assert!(decode::<ciborium::Value>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(v: (u64, String, Vec<i32>, Option<bool>)) {
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(decode::<(u64, String, Vec<i32>, Option<bool>)>(&bytes).unwrap(), v);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode::<(u64, String, Vec<i32>)>(&bytes);
        }
    }
}
