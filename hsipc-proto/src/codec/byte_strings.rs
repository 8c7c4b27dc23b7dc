//! A serde adaptor that writes every sequence of `u8` as a CBOR byte string.
//!
//! serde serialises a `Vec<u8>` (or `&[u8]`, `VecDeque<u8>`, ...) element by element, and CBOR
//! then stores each byte as an integer: 1 MiB becomes a million array items, slow to write and
//! slower to read. [`ByteStrings`] wraps any serializer and watches sequences: while every
//! element is a `u8` it collects them, and writes one byte string at the end; at the first
//! element that is not a `u8` it falls back to an ordinary array (nothing has been written for
//! that sequence until then, so the fallback is exact). Readers need no change: ciborium reads
//! a byte string as a sequence of `u8`, so old and new peers understand each other both ways.
//!
//! Every nested value goes through the adaptor too, so a `Vec<u8>` field of a struct inside an
//! `Option` inside a map gets the same treatment.

use serde::ser::{
    self, Impossible, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// Wraps a serializer so that sequences of `u8` become byte strings.
pub(crate) struct ByteStrings<S>(S);

/// Serializes the wrapped value through [`ByteStrings`].
pub(crate) struct Wrapped<'a, T: ?Sized>(pub(crate) &'a T);

impl<T: Serialize + ?Sized> Serialize for Wrapped<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(ByteStrings(s))
    }
}

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $name(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> { self.0.$name($($arg),*) })*
    };
}

impl<S: Serializer> Serializer for ByteStrings<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Seq<S>;
    type SerializeTuple = Compound<S::SerializeTuple>;
    type SerializeTupleStruct = Compound<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<S::SerializeTupleVariant>;
    type SerializeMap = Compound<S::SerializeMap>;
    type SerializeStruct = Compound<S::SerializeStruct>;
    type SerializeStructVariant = Compound<S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Wrapped(value))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Wrapped(value))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_variant(name, index, variant, &Wrapped(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<S>, S::Error> {
        Ok(Seq::Undecided { inner: self.0, len, bytes: Vec::with_capacity(len.unwrap_or(0).min(1 << 20)) })
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Compound)
    }

    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Compound)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0.serialize_tuple_variant(name, index, variant, len).map(Compound)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Compound)
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Compound)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0.serialize_struct_variant(name, index, variant, len).map(Compound)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// A sequence: bytes collected while every element is a `u8`, an ordinary array after that.
pub(crate) enum Seq<S: Serializer> {
    Undecided {
        inner: S,
        len: Option<usize>,
        bytes: Vec<u8>,
    },
    Array(S::SerializeSeq),
    /// Only while switching (a serializer moves).
    Poisoned,
}

impl<S: Serializer> SerializeSeq for Seq<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        if let Seq::Undecided { bytes, .. } = self {
            if let Ok(b) = value.serialize(U8Probe) {
                bytes.push(b);
                return Ok(());
            }
            // Not a `u8`: write what was collected as an array, and go on as one.
            let Seq::Undecided { inner, len, bytes } = std::mem::replace(self, Seq::Poisoned) else {
                unreachable!("matched above")
            };
            let mut seq = inner.serialize_seq(len)?;
            for b in &bytes {
                seq.serialize_element(b)?;
            }
            *self = Seq::Array(seq);
        }
        match self {
            Seq::Array(seq) => seq.serialize_element(&Wrapped(value)),
            _ => Err(ser::Error::custom("sequence serializer used after an error")),
        }
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        match self {
            // An empty sequence stays an array, as any reader expects.
            Seq::Undecided { inner, bytes, .. } if bytes.is_empty() => inner.serialize_seq(Some(0))?.end(),
            Seq::Undecided { inner, bytes, .. } => inner.serialize_bytes(&bytes),
            Seq::Array(seq) => seq.end(),
            Seq::Poisoned => Err(ser::Error::custom("sequence serializer used after an error")),
        }
    }
}

/// A compound value whose parts go through [`ByteStrings`] too.
pub(crate) struct Compound<C>(C);

macro_rules! compound {
    ($trait:ident, $($method:ident($($arg:ident: $ty:ty),*)),*) => {
        impl<C: $trait> $trait for Compound<C> {
            type Ok = C::Ok;
            type Error = C::Error;
            $(fn $method<T: Serialize + ?Sized>(&mut self, $($arg: $ty,)* value: &T) -> Result<(), C::Error> {
                self.0.$method($($arg,)* &Wrapped(value))
            })*
            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    };
}

compound!(SerializeTuple, serialize_element());
compound!(SerializeTupleStruct, serialize_field());
compound!(SerializeTupleVariant, serialize_field());
compound!(SerializeStruct, serialize_field(key: &'static str));
compound!(SerializeStructVariant, serialize_field(key: &'static str));

impl<C: SerializeMap> SerializeMap for Compound<C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        self.0.serialize_key(&Wrapped(key))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        self.0.serialize_value(&Wrapped(value))
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.0.end()
    }
}

/// Succeeds only for a value that serializes as a single `u8`.
struct U8Probe;

#[derive(Debug)]
struct NotU8;

impl std::fmt::Display for NotU8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a u8")
    }
}

impl std::error::Error for NotU8 {}

impl ser::Error for NotU8 {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotU8
    }
}

macro_rules! not_u8 {
    ($($name:ident($($ty:ty),*);)*) => {
        $(fn $name(self, $(_: $ty),*) -> Result<u8, NotU8> { Err(NotU8) })*
    };
}

impl Serializer for U8Probe {
    type Ok = u8;
    type Error = NotU8;
    type SerializeSeq = Impossible<u8, NotU8>;
    type SerializeTuple = Impossible<u8, NotU8>;
    type SerializeTupleStruct = Impossible<u8, NotU8>;
    type SerializeTupleVariant = Impossible<u8, NotU8>;
    type SerializeMap = Impossible<u8, NotU8>;
    type SerializeStruct = Impossible<u8, NotU8>;
    type SerializeStructVariant = Impossible<u8, NotU8>;

    fn serialize_u8(self, v: u8) -> Result<u8, NotU8> {
        Ok(v)
    }

    not_u8! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<u8, NotU8> {
        Err(NotU8)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<u8, NotU8> {
        Err(NotU8)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<u8, NotU8> {
        Err(NotU8)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotU8> {
        Err(NotU8)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotU8> {
        Err(NotU8)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, NotU8> {
        Err(NotU8)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotU8> {
        Err(NotU8)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotU8> {
        Err(NotU8)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotU8> {
        Err(NotU8)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotU8> {
        Err(NotU8)
    }
}
