//! The encoding of a job's parameters (the workload value) between a pool and its workers:
//! postcard's wire format, written and read by a serializer of our own.
//!
//! Why not postcard itself? serde hands a plain `Vec<u8>` field (the first thing a user
//! writes) to a format one element at a time; postcard's general reader and writer turn
//! every byte into a few calls and checks, so 32 MB took 110–130 ms to decode in each
//! worker. Here each step is one inlined, bounds-checked move of a slice cursor, so a
//! sequence of bytes runs as a tight loop (a fraction of that time). The bytes are
//! postcard's own (varints, length-prefixed sequences and strings, little-endian floats),
//! checked against postcard in the tests, so sizes and stats mean what they meant.
//!
//! Encoding makes two passes: [`encoded_len`] counts the bytes, then [`encode_into`] writes
//! them into a slice of exactly that size (no growing buffer). `Param` and `Input` values
//! inside the parameters serialize through their own contexts, as with any format.
//!
//! It lives in the workload layer because the [`Registry`](super::Registry) rebuilds each
//! workload from these bytes.
//!
//! Decoding trusts nothing in the bytes: a length is never used to allocate more than the
//! bytes that remain (a sequence's size hint is capped by them), nesting is limited, a
//! sequence of elements that take no bytes may not run on without end, trailing bytes are
//! an error, and every error is a one-line message with the offset, never a panic.

use std::any::TypeId;
use std::fmt;
use std::sync::LazyLock;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// What went wrong while encoding or decoding parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
// One thin pointer, so that a result on the per-element path stays two words.
#[allow(clippy::box_collection)]
pub(crate) struct Error(Box<String>);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Boxed: a result stays two words, returned in registers on the per-element path.
    #[cold]
    fn new(msg: impl fmt::Display) -> Error {
        Error(Box::new(msg.to_string()))
    }
}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg)
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg)
    }
}

type Result<T> = std::result::Result<T, Error>;

/// The deepest nesting of sequences, maps, options and enums a decoder follows.
const MAX_DEPTH: u32 = 1024;

/// How many elements that take no bytes at all (unit values, empty tuples) the sequences
/// and maps of one decoding may hold beyond one per remaining byte: a bound on the work
/// a short, hostile input can ask for.
const FREE_ELEMENTS: usize = 1 << 24;

/// The number of bytes `value` encodes to.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    let mut counter = Writer { out: Count(0) };
    value.serialize(&mut counter)?;
    Ok(counter.out.0)
}

/// Encodes `value` into `out`, which must be exactly [`encoded_len`] bytes long (a value
/// that encodes to another length the second time is an error).
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut [u8]) -> Result<()> {
    let len = out.len();
    let mut writer = Writer { out: Cursor(out) };
    value.serialize(&mut writer)?;
    match writer.out.0.len() {
        0 => Ok(()),
        left => Err(Error::new(format!(
            "the value encoded to {} bytes, {left} fewer than it measured: it changed while \
             it was encoded",
            len - left
        ))),
    }
}

/// `value` encoded into a vector of exactly its size.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![0; encoded_len(value)?];
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a `T` from all of `bytes`.
pub(crate) fn from_bytes<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    let mut reader = Reader {
        input: bytes,
        len: bytes.len(),
        depth: 0,
        free: FREE_ELEMENTS,
    };
    let value = T::deserialize(&mut reader)?;
    match reader.input.len() {
        0 => Ok(value),
        left => Err(reader.error(format!("{left} bytes left over after the value"))),
    }
}

// ---- Writing ----------------------------------------------------------------------------

/// Where encoded bytes go.
trait Sink {
    fn put(&mut self, byte: u8) -> Result<()>;
    fn put_all(&mut self, bytes: &[u8]) -> Result<()>;
}

/// Counts bytes (the first pass).
struct Count(usize);

impl Sink for Count {
    #[inline(always)]
    fn put(&mut self, _: u8) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
    #[inline(always)]
    fn put_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.0 += bytes.len();
        Ok(())
    }
}

/// Writes into a slice of the counted size: what is left of it.
struct Cursor<'a>(&'a mut [u8]);

fn overflow() -> Error {
    Error::new("the value encoded to more bytes than it measured: it changed while it was encoded")
}

impl Sink for Cursor<'_> {
    #[inline(always)]
    fn put(&mut self, byte: u8) -> Result<()> {
        match std::mem::take(&mut self.0).split_first_mut() {
            Some((first, rest)) => {
                *first = byte;
                self.0 = rest;
                Ok(())
            }
            None => Err(overflow()),
        }
    }
    #[inline(always)]
    fn put_all(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.0.len() {
            return Err(overflow());
        }
        let (head, rest) = std::mem::take(&mut self.0).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = rest;
        Ok(())
    }
}

/// The serializer: postcard's format into a [`Sink`].
struct Writer<S> {
    out: S,
}

impl<S: Sink> Writer<S> {
    #[inline(always)]
    fn varint(&mut self, mut value: u128) -> Result<()> {
        while value >= 0x80 {
            self.out.put(value as u8 | 0x80)?;
            value >>= 7;
        }
        self.out.put(value as u8)
    }

    /// [`Writer::varint`] with its one-byte case first (most lengths, indices, counts).
    #[inline(always)]
    fn varint64(&mut self, value: u64) -> Result<()> {
        match u8::try_from(value) {
            Ok(byte) if byte < 0x80 => self.out.put(byte),
            _ => self.varint(u128::from(value)),
        }
    }

    #[inline(always)]
    fn length(&mut self, len: Option<usize>) -> Result<()> {
        match len {
            Some(len) => self.varint64(len as u64),
            None => Err(Error::new(
                "a sequence or map of unknown length cannot be encoded (collect it first)",
            )),
        }
    }
}

fn zigzag(value: i128) -> u128 {
    ((value << 1) ^ (value >> 127)) as u128
}

fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

impl<S: Sink> ser::Serializer for &mut Writer<S> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }
    #[inline(always)]
    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.put(u8::from(v))
    }
    #[inline(always)]
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.out.put(v as u8)
    }
    #[inline(always)]
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.varint64(zigzag64(i64::from(v)))
    }
    #[inline(always)]
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.varint64(zigzag64(i64::from(v)))
    }
    #[inline(always)]
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.varint64(zigzag64(v))
    }
    fn serialize_i128(self, v: i128) -> Result<()> {
        self.varint(zigzag(v))
    }
    #[inline(always)]
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.out.put(v)
    }
    #[inline(always)]
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.varint64(u64::from(v))
    }
    #[inline(always)]
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.varint64(u64::from(v))
    }
    #[inline(always)]
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.varint64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<()> {
        self.varint(v)
    }
    #[inline(always)]
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.out.put_all(&v.to_le_bytes())
    }
    #[inline(always)]
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.out.put_all(&v.to_le_bytes())
    }
    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<()> {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.varint64(v.len() as u64)?;
        self.out.put_all(v)
    }
    fn serialize_none(self) -> Result<()> {
        self.out.put(0)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.out.put(1)?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<()> {
        self.varint64(u64::from(index))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        self.varint64(u64::from(index))?;
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.length(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.varint64(u64::from(index))?;
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.length(len)?;
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.varint64(u64::from(index))?;
        Ok(self)
    }
}

/// The compound serializers: elements one after another, nothing around them.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<S: Sink> ser::$trait for &mut Writer<S> {
            type Ok = ();
            type Error = Error;
            #[inline(always)]
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                value.serialize(&mut **self)
            }
            #[inline(always)]
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<S: Sink> ser::SerializeMap for &mut Writer<S> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<()> {
        Ok(())
    }
}

/// The struct serializers: fields one after another, their names not written.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl<S: Sink> ser::$trait for &mut Writer<S> {
            type Ok = ();
            type Error = Error;
            #[inline(always)]
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<()> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

// ---- Reading ----------------------------------------------------------------------------

/// The deserializer: a cursor over the bytes not read yet.
#[derive(Clone, Copy)]
struct Reader<'de> {
    input: &'de [u8],
    /// The length of all the bytes (for the offsets in errors).
    len: usize,
    /// Sequences, maps, options and enums entered and not left.
    depth: u32,
    /// What is left of [`FREE_ELEMENTS`].
    free: usize,
}

impl<'de> Reader<'de> {
    fn error(&self, what: impl fmt::Display) -> Error {
        Error::new(format!(
            "{what} (at byte {} of {})",
            self.len - self.input.len(),
            self.len
        ))
    }

    #[cold]
    fn ended(&self) -> Error {
        self.error("the bytes end in the middle of a value")
    }

    #[inline(always)]
    fn byte(&mut self) -> Result<u8> {
        match self.input.split_first() {
            Some((&b, rest)) => {
                self.input = rest;
                Ok(b)
            }
            None => Err(self.ended()),
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return Err(self.error(format!(
                "a length of {n} bytes, but only {} remain",
                self.input.len()
            )));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.input.split_first_chunk::<N>() {
            Some((&head, rest)) => {
                self.input = rest;
                Ok(head)
            }
            None => Err(self.ended()),
        }
    }

    /// An unsigned varint of at most `bits` bits.
    #[inline(always)]
    fn varint(&mut self, bits: u32, what: &str) -> Result<u128> {
        let mut value: u128 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            let part = u128::from(b & 0x7f);
            if shift >= bits || (shift > 0 && bits - shift < 7 && part >> (bits - shift) != 0) {
                return Err(self.error(format!("a varint too large for {what}")));
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// An unsigned varint of at most 64 bits (the common path: one byte, most often).
    #[inline(always)]
    fn varint64(&mut self, bits: u32, what: &str) -> Result<u64> {
        match self.input.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.input = rest;
                Ok(u64::from(b))
            }
            _ => self.varint(bits, what).map(|v| v as u64),
        }
    }

    fn unzigzag(value: u64) -> i64 {
        ((value >> 1) as i64) ^ -((value & 1) as i64)
    }

    /// A sequence's or map's length: bounded by the bytes that remain, except for
    /// elements that take none (a few of those, see [`FREE_ELEMENTS`]).
    #[inline(always)]
    fn length(&mut self) -> Result<usize> {
        let len = self.varint64(64, "a length")?;
        let len = usize::try_from(len).map_err(|_| self.error("a length too large"))?;
        if let Some(beyond) = len.checked_sub(self.input.len()).filter(|&b| b > 0) {
            if beyond > self.free {
                return Err(self.error(format!(
                    "a sequence of {len} elements in the {} bytes that remain",
                    self.input.len()
                )));
            }
            self.free -= beyond;
        }
        Ok(len)
    }

    #[inline(always)]
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("values nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    #[inline(always)]
    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn str(&mut self) -> Result<&'de str> {
        let len = self.varint64(64, "a length")? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map_err(|e| self.error(format!("a string that is not UTF-8 ({e})")))
    }
}

macro_rules! varints {
    ($($method:ident $visit:ident $ty:ty, $bits:expr);*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let v = self.varint64($bits, stringify!($ty))?;
            visitor.$visit(v as $ty)
        }
    )*};
}

macro_rules! zigzags {
    ($($method:ident $visit:ident $ty:ty, $bits:expr);*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let v = Reader::unzigzag(self.varint64($bits, stringify!($ty))?);
            visitor.$visit(v as $ty)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(self.error(
            "a value of a type that says what it holds only when read (serde's \
             deserialize_any): the parameters' format does not describe itself",
        ))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(self.error(format!("{b} is not a bool"))),
        }
    }

    #[inline(always)]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.byte()? as i8)
    }

    #[inline(always)]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.byte()?)
    }

    varints!(
        deserialize_u16 visit_u16 u16, 16;
        deserialize_u32 visit_u32 u32, 32;
        deserialize_u64 visit_u64 u64, 64
    );

    zigzags!(
        deserialize_i16 visit_i16 i16, 16;
        deserialize_i32 visit_i32 i32, 32;
        deserialize_i64 visit_i64 i64, 64
    );

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint(128, "u128")?;
        visitor.visit_u128(v)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint(128, "i128")?;
        visitor.visit_i128(((v >> 1) as i128) ^ -((v & 1) as i128))
    }

    #[inline(always)]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.array()?))
    }

    #[inline(always)]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let s = self.str()?;
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(self.error(format!("{s:?} is not one char"))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint64(64, "a length")? as usize;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => {
                self.enter()?;
                let value = visitor.visit_some(&mut *self)?;
                self.leave();
                Ok(value)
            }
            b => Err(self.error(format!("{b} is not an option's tag (0 or 1)"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        let visitor_id = typeid::of::<V>();
        if let Some(value) = plain_vec::<V, u8>(self, len, visitor_id)
            .or_else(|| plain_vec::<V, f64>(self, len, visitor_id))
            .or_else(|| plain_vec::<V, f32>(self, len, visitor_id))
        {
            return value;
        }
        self.enter()?;
        let value = visitor.visit_seq(Elements::new(self, len))?;
        self.leave();
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Elements::new(self, len))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        self.enter()?;
        let value = visitor.visit_map(Elements::new(self, len))?;
        self.leave();
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.enter()?;
        let value = visitor.visit_enum(&mut *self)?;
        self.leave();
        Ok(value)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint64(32, "a variant index")?;
        visitor.visit_u32(v as u32)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(self.error(
            "a value to skip: the parameters' format does not describe itself, so nothing \
             can be skipped",
        ))
    }
}

// ---- Plain vectors in one step ----------------------------------------------------------

/// An element type whose vectors are read in one step: a fixed number of bytes each, any
/// bytes a valid value.
trait Plain: Sized + 'static {
    /// Bytes per element.
    const SIZE: usize;
    /// The visitor serde's `Vec<Self>` decodes with, found once (see [`Visitors`]).
    fn visitor(visitors: &Visitors) -> Option<TypeId>;
    /// The elements `bytes` (a multiple of `SIZE` long) encode.
    fn read(bytes: &[u8]) -> Vec<Self>;
}

impl Plain for u8 {
    const SIZE: usize = 1;
    fn visitor(visitors: &Visitors) -> Option<TypeId> {
        visitors.bytes
    }
    fn read(bytes: &[u8]) -> Vec<u8> {
        bytes.to_vec()
    }
}

impl Plain for f64 {
    const SIZE: usize = 8;
    fn visitor(visitors: &Visitors) -> Option<TypeId> {
        visitors.f64s
    }
    fn read(bytes: &[u8]) -> Vec<f64> {
        let (chunks, _) = bytes.as_chunks::<8>();
        chunks.iter().map(|c| f64::from_le_bytes(*c)).collect()
    }
}

impl Plain for f32 {
    const SIZE: usize = 4;
    fn visitor(visitors: &Visitors) -> Option<TypeId> {
        visitors.f32s
    }
    fn read(bytes: &[u8]) -> Vec<f32> {
        let (chunks, _) = bytes.as_chunks::<4>();
        chunks.iter().map(|c| f32::from_le_bytes(*c)).collect()
    }
}

/// The types of the visitors serde's `Vec<u8>`, `Vec<f64>` and `Vec<f32>` decode with.
///
/// Why? serde gives a format a vector one element at a time: for a plain `Vec<u8>` field
/// that is a call, a check and a push per byte (about 3 ns a byte, so 100 ms for 32 MB in
/// every worker). A format may not know which vector it fills, but the visitor it is given
/// tells: when it is the very visitor `Vec<u8>` uses (same type), the value it would build
/// is a `Vec<u8>`, and the format builds it in one copy instead. The visitor types are
/// private to serde, so each is found by letting the vector decode from a [`Probe`] that
/// records the type of the visitor it receives. Any other visitor (a `deserialize_with`,
/// another collection) goes element by element as before.
struct Visitors {
    bytes: Option<TypeId>,
    f64s: Option<TypeId>,
    f32s: Option<TypeId>,
}

static VISITORS: LazyLock<Visitors> = LazyLock::new(|| Visitors {
    bytes: Probe::visitor_of::<Vec<u8>>(),
    f64s: Probe::visitor_of::<Vec<f64>>(),
    f32s: Probe::visitor_of::<Vec<f32>>(),
});

/// The value of a sequence of `len` elements for visitor `V` (of type `visitor`) when `V`
/// is the visitor of serde's `Vec<E>`: read in one step. `None` for any other visitor.
#[inline(always)]
fn plain_vec<'de, V: Visitor<'de>, E: Plain>(
    reader: &mut Reader<'de>,
    len: usize,
    visitor: TypeId,
) -> Option<Result<V::Value>> {
    if E::visitor(&VISITORS) != Some(visitor) {
        return None;
    }
    let bytes = match len.checked_mul(E::SIZE) {
        Some(bytes) => reader.take(bytes),
        None => Err(reader.error(format!("a sequence of {len} elements is too large"))),
    };
    Some(bytes.map(|bytes| {
        let elements = std::mem::ManuallyDrop::new(E::read(bytes));
        // SAFETY: `V` has the type of the visitor serde's `Vec<E>` decodes with (their
        // type ids are equal; that visitor's type has no lifetime parameter, so the id,
        // which ignores lifetimes, names exactly it), and that visitor's value is
        // `Vec<E>`: `V::Value` is `Vec<E>`. The vector is moved bit for bit into the
        // value and never dropped here (`ManuallyDrop`), so it is dropped once, as the
        // value.
        unsafe { std::mem::transmute_copy::<Vec<E>, V::Value>(&elements) }
    }))
}

/// A deserializer that only records the type of the visitor a sequence gives it.
struct Probe;

/// What a [`Probe`] found: the visitor's type, carried out as an error.
#[derive(Debug)]
struct Probed(Option<TypeId>);

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a probe")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probed(None)
    }
}

impl Probe {
    /// The type of the visitor `T` decodes a sequence with (`None` when it asks for
    /// anything else).
    fn visitor_of<T: de::DeserializeOwned>() -> Option<TypeId> {
        match T::deserialize(Probe) {
            Err(Probed(id)) => id,
            Ok(_) => None,
        }
    }
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Probed> {
        Err(Probed(None))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Probed> {
        Err(Probed(Some(typeid::of::<V>())))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct tuple tuple_struct map struct
        enum identifier ignored_any
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
///
/// It reads with a copy of the reader, given back when it is dropped: a local copy the
/// compiler can keep in registers while a visitor's loop stores each element, where a
/// reader behind a pointer would be written back to memory after every byte.
struct Elements<'a, 'de> {
    reader: Reader<'de>,
    parent: &'a mut Reader<'de>,
    left: usize,
}

impl<'a, 'de> Elements<'a, 'de> {
    #[inline(always)]
    fn new(parent: &'a mut Reader<'de>, left: usize) -> Self {
        Elements {
            reader: *parent,
            parent,
            left,
        }
    }
}

impl Drop for Elements<'_, '_> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.parent = self.reader;
    }
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    #[inline(always)]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut self.reader).map(Some)
    }

    #[inline(always)]
    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.reader.input.len()))
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut self.reader).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.reader.input.len()))
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reader<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint64(32, "a variant index")? as u32;
        let value = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reader<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::{BTreeMap, HashMap};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Path(Vec<(i16, i16)>, bool),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Inner {
        name: String,
        letter: char,
        shape: Shape,
        maybe: Option<Box<Inner>>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Meters(f32);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Everything {
        bytes: Vec<u8>,
        floats: Vec<f64>,
        singles: Vec<f32>,
        words: Vec<u64>,
        signed: Vec<i64>,
        small: (u8, i8, u16, i16, u32, i32),
        wide: (u128, i128),
        flags: [bool; 3],
        text: String,
        inner: Inner,
        shapes: Vec<Shape>,
        map: BTreeMap<String, Vec<u8>>,
        hashed: HashMap<u32, Option<String>>,
        nested: Vec<Vec<u8>>,
        none: Option<u8>,
        unit: (),
        unit_struct: Unit,
        newtype: Meters,
        units: Vec<()>,
        #[serde(with = "serde_bytes")]
        marked: Vec<u8>,
    }

    fn everything() -> Everything {
        let inner = Inner {
            name: "inner".into(),
            letter: 'é',
            shape: Shape::Rect { w: 3, h: 300_000 },
            maybe: None,
        };
        Everything {
            bytes: (0..=255).chain(0..44).collect(),
            floats: vec![0.0, -1.5, f64::MAX, f64::MIN_POSITIVE, 1e-300],
            singles: vec![1.25, -0.0, f32::INFINITY],
            words: vec![0, 127, 128, 16_383, 16_384, u64::MAX],
            signed: vec![0, -1, 1, -64, 64, i64::MIN, i64::MAX],
            small: (255, -128, u16::MAX, i16::MIN, u32::MAX, i32::MIN),
            wide: (u128::MAX, i128::MIN),
            flags: [true, false, true],
            text: "päramètres ✓".into(),
            inner: Inner {
                name: "outer".into(),
                letter: '✓',
                shape: Shape::Path(vec![(1, -1), (i16::MAX, i16::MIN)], true),
                maybe: Some(Box::new(inner)),
            },
            shapes: vec![
                Shape::Empty,
                Shape::Circle(2.5),
                Shape::Rect { w: 1, h: 2 },
                Shape::Path(Vec::new(), false),
            ],
            map: [("a".to_string(), vec![1, 2]), ("b".to_string(), Vec::new())].into(),
            hashed: [(7, Some("seven".to_string())), (8, None)].into(),
            nested: vec![vec![], vec![1], vec![2; 300]],
            none: None,
            unit: (),
            unit_struct: Unit,
            newtype: Meters(9.5),
            units: vec![(); 5],
            marked: vec![9; 70],
        }
    }

    #[test]
    fn values_round_trip_in_postcards_own_bytes() {
        let value = everything();
        let bytes = to_vec(&value).unwrap();
        assert_eq!(bytes.len(), encoded_len(&value).unwrap());
        // Our bytes are postcard's: sizes and stats keep their meaning.
        assert_eq!(bytes, postcard::to_stdvec(&value).unwrap());
        let back: Everything = from_bytes(&bytes).unwrap();
        assert_eq!(back, value);
        let by_postcard: Everything = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(by_postcard, value);
        let plain = vec![7u8; 100_000];
        assert_eq!(
            to_vec(&plain).unwrap(),
            postcard::to_stdvec(&plain).unwrap()
        );
        assert_eq!(
            from_bytes::<Vec<u8>>(&to_vec(&plain).unwrap()).unwrap(),
            plain
        );
    }

    #[test]
    fn serdes_vector_visitors_are_found_so_plain_vectors_are_read_in_one_step() {
        assert!(VISITORS.bytes.is_some(), "Vec<u8>'s visitor");
        assert!(VISITORS.f64s.is_some(), "Vec<f64>'s visitor");
        assert!(VISITORS.f32s.is_some(), "Vec<f32>'s visitor");
        let distinct = [VISITORS.bytes, VISITORS.f64s, VISITORS.f32s];
        assert!(distinct[0] != distinct[1] && distinct[1] != distinct[2]);
        // An odd tail of a float vector is an error, not a short vector.
        let mut bytes = to_vec(&vec![1.0f64, 2.0]).unwrap();
        bytes[0] = 3;
        let err = from_bytes::<Vec<f64>>(&bytes).unwrap_err().to_string();
        assert!(err.contains("only 16 remain"), "{err}");
    }

    /// A vector of bytes read through a visitor of its own (each byte doubled): it must go
    /// element by element, never through the one-step path of serde's `Vec<u8>`.
    #[derive(Debug, PartialEq)]
    struct Doubled(Vec<u8>);

    impl<'de> Deserialize<'de> for Doubled {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> std::result::Result<Vec<u8>, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b.wrapping_mul(2));
                    }
                    Ok(out)
                }
            }
            d.deserialize_seq(V).map(Doubled)
        }
    }

    #[test]
    fn another_visitor_of_bytes_goes_element_by_element() {
        let bytes = to_vec(&vec![1u8, 2, 3]).unwrap();
        assert_eq!(
            from_bytes::<Doubled>(&bytes).unwrap(),
            Doubled(vec![2, 4, 6])
        );
    }

    #[test]
    fn every_truncation_is_an_error_and_never_a_panic() {
        let bytes = to_vec(&everything()).unwrap();
        for end in 0..bytes.len() {
            let err = from_bytes::<Everything>(&bytes[..end])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("of {end})")), "{end}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = from_bytes::<Everything>(&longer).unwrap_err().to_string();
        assert!(err.contains("1 bytes left over"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_or_a_value_and_never_a_panic() {
        let good = to_vec(&everything()).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 600).map(|_| next() as u8).collect()
            } else {
                // A good encoding with a few bytes changed.
                let mut b = good.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                b
            };
            let _ = from_bytes::<Everything>(&bytes);
            let _ = from_bytes::<Vec<Shape>>(&bytes);
            let _ = from_bytes::<BTreeMap<String, Vec<u64>>>(&bytes);
        }
    }

    #[test]
    fn lengths_beyond_the_bytes_are_refused_before_anything_is_allocated() {
        let huge = to_vec(&(1u64 << 60)).unwrap();
        for err in [
            from_bytes::<Vec<u8>>(&huge).unwrap_err(),
            from_bytes::<Vec<f64>>(&huge).unwrap_err(),
            from_bytes::<Vec<u64>>(&huge).unwrap_err(),
            from_bytes::<String>(&huge).unwrap_err(),
            from_bytes::<Vec<()>>(&huge).unwrap_err(),
            from_bytes::<BTreeMap<u8, u8>>(&huge).unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(err.contains("remain"), "{err}");
        }
        // Elements of no bytes: a few are fine, not without end.
        let many = to_vec(&vec![(); 1000]).unwrap();
        assert_eq!(from_bytes::<Vec<()>>(&many).unwrap().len(), 1000);
        assert!(from_bytes::<Vec<()>>(&to_vec(&(FREE_ELEMENTS as u64 + 10)).unwrap()).is_err());
        // An element count times the element size that overflows.
        let overflow = to_vec(&(u64::MAX / 4)).unwrap();
        assert!(from_bytes::<Vec<f64>>(&overflow).is_err());
        // A varint longer than its type allows.
        assert!(from_bytes::<u16>(&[0xff, 0xff, 0x7f]).is_err());
        assert!(from_bytes::<u32>(&[0x80; 6]).is_err());
        assert_eq!(from_bytes::<u16>(&[0xff, 0xff, 0x03]).unwrap(), u16::MAX);
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // A stack as large as a worker's main thread (frames are larger unoptimized).
        let decode = std::thread::Builder::new().stack_size(64 << 20).spawn(|| {
            // A million nested nodes: one byte each.
            let mut bytes = vec![1u8; 1_000_000];
            bytes.push(0);
            let err = from_bytes::<Tree>(&bytes).unwrap_err().to_string();
            assert!(err.contains("nested deeper"), "{err}");
            let mut tree = Tree::Leaf;
            for _ in 0..MAX_DEPTH - 1 {
                tree = Tree::Node(Box::new(tree));
            }
            let back = from_bytes::<Tree>(&to_vec(&tree).unwrap());
            std::mem::forget(tree);
            assert!(back.is_ok());
            std::mem::forget(back);
        });
        decode.unwrap().join().unwrap();
    }

    #[test]
    fn a_bad_tag_or_unknown_length_is_an_error() {
        assert!(
            from_bytes::<bool>(&[2])
                .unwrap_err()
                .to_string()
                .contains("not a bool")
        );
        assert!(from_bytes::<Option<u8>>(&[7, 0]).is_err());
        assert!(from_bytes::<Shape>(&[9]).is_err());
        assert!(
            from_bytes::<String>(&[2, 0xff, 0xfe])
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        assert!(from_bytes::<char>(&[2, b'a', b'b']).is_err());
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq((0..10u8).filter(|x| x % 2 == 0))
            }
        }
        let err = to_vec(&Unsized).unwrap_err().to_string();
        assert!(err.contains("unknown length"), "{err}");
        // A buffer of the wrong size is an error, not a panic.
        let mut short = [0u8; 2];
        assert!(encode_into(&vec![1u8, 2, 3], &mut short).is_err());
        let mut long = [0u8; 9];
        assert!(encode_into(&vec![1u8, 2, 3], &mut long).is_err());
        // A type that describes itself only when read is refused, with a message.
        let err = from_bytes::<serde_json::Value>(&[0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not describe itself"), "{err}");
    }
}
