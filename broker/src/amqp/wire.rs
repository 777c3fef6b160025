//! Primitive AMQP types and the cursors that read and write them.
//!
//! Bits are packed: consecutive `bit` fields share an octet, lowest bit first, and any other
//! field type starts a new octet (AMQP 0-9-1 §4.2.5.2). The cursors carry that packing state so
//! the method table can list fields plainly.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// A decoding failure, with enough detail for the `connection.close` text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame payload ended while reading {what}")]
    Truncated { what: &'static str },
    #[error("{extra} octets after the last field of {what}")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("unknown method class {class} method {method}")]
    UnknownMethod { class: u16, method: u16 },
    #[error("unknown field table value type {code:#04x} ('{}')", *code as char)]
    UnknownFieldType { code: u8 },
    #[error("field tables nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("short string is not UTF-8")]
    NotUtf8,
    #[error("content header for class {class}, expected 60 (basic)")]
    WrongHeaderClass { class: u16 },
}

pub type Result<T> = std::result::Result<T, CodecError>;

/// An AMQP `shortstr`: at most 255 octets, kept as a slice of the frame it came in. Names
/// (queues, exchanges, routing keys) are checked to be UTF-8 when decoded.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortStr(Bytes);

impl ShortStr {
    /// A short string from text, truncated at 255 octets (on a character boundary).
    pub fn new(text: &str) -> ShortStr {
        let mut end = text.len().min(255);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ShortStr(Bytes::copy_from_slice(&text.as_bytes()[..end]))
    }

    pub fn from_static(text: &'static str) -> ShortStr {
        assert!(text.len() <= 255, "short string longer than 255: {text}");
        ShortStr(Bytes::from_static(text.as_bytes()))
    }

    /// Wraps bytes already checked to be UTF-8 and at most 255 long.
    fn from_checked(bytes: Bytes) -> ShortStr {
        ShortStr(bytes)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ShortStr holds UTF-8 by construction")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ShortStr {
    fn from(text: &str) -> ShortStr {
        ShortStr::new(text)
    }
}

impl From<String> for ShortStr {
    fn from(text: String) -> ShortStr {
        ShortStr::new(&text)
    }
}

/// Reads fields from a frame payload.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    bits: u8,
    bits_used: u8,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader {
            buf,
            bits: 0,
            bits_used: 8,
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every octet was consumed.
    pub fn finish(&self, what: &'static str) -> Result<()> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(CodecError::TrailingBytes { what, extra }),
        }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<()> {
        if self.buf.len() < n {
            Err(CodecError::Truncated { what })
        } else {
            Ok(())
        }
    }

    fn end_bits(&mut self) {
        self.bits_used = 8;
    }

    pub fn bit(&mut self) -> Result<bool> {
        if self.bits_used == 8 {
            self.need(1, "bit")?;
            self.bits = self.buf.get_u8();
            self.bits_used = 0;
        }
        let value = self.bits & (1 << self.bits_used) != 0;
        self.bits_used += 1;
        Ok(value)
    }

    pub fn u8(&mut self) -> Result<u8> {
        self.end_bits();
        self.need(1, "octet")?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16> {
        self.end_bits();
        self.need(2, "short")?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.end_bits();
        self.need(4, "long")?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.end_bits();
        self.need(8, "longlong")?;
        Ok(self.buf.get_u64())
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        self.end_bits();
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    pub fn short_str(&mut self) -> Result<ShortStr> {
        let len = self.u8()? as usize;
        let bytes = self.bytes(len, "shortstr")?;
        std::str::from_utf8(&bytes).map_err(|_| CodecError::NotUtf8)?;
        Ok(ShortStr::from_checked(bytes))
    }

    pub fn long_str(&mut self) -> Result<Bytes> {
        let len = self.u32()? as usize;
        self.bytes(len, "longstr")
    }
}

/// Writes fields into a buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
    /// Position of the octet holding the bits being packed, if any.
    bits_at: Option<usize>,
    bits_used: u8,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Writer<'a> {
        Writer {
            buf,
            bits_at: None,
            bits_used: 0,
        }
    }

    fn end_bits(&mut self) {
        self.bits_at = None;
    }

    pub fn bit(&mut self, value: bool) {
        let at = match self.bits_at {
            Some(at) if self.bits_used < 8 => at,
            _ => {
                self.buf.put_u8(0);
                self.bits_used = 0;
                let at = self.buf.len() - 1;
                self.bits_at = Some(at);
                at
            }
        };
        if value {
            self.buf[at] |= 1 << self.bits_used;
        }
        self.bits_used += 1;
    }

    pub fn u8(&mut self, value: u8) {
        self.end_bits();
        self.buf.put_u8(value);
    }

    pub fn u16(&mut self, value: u16) {
        self.end_bits();
        self.buf.put_u16(value);
    }

    pub fn u32(&mut self, value: u32) {
        self.end_bits();
        self.buf.put_u32(value);
    }

    pub fn u64(&mut self, value: u64) {
        self.end_bits();
        self.buf.put_u64(value);
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.end_bits();
        self.buf.put_slice(bytes);
    }

    pub fn short_str(&mut self, value: &ShortStr) {
        self.u8(value.len() as u8);
        self.raw(value.as_bytes());
    }

    pub fn long_str(&mut self, value: &[u8]) {
        self.u32(value.len() as u32);
        self.raw(value);
    }

    /// Reserves a 4-octet length, returning its position for [`Writer::patch_u32`].
    pub fn reserve_u32(&mut self) -> usize {
        self.u32(0);
        self.buf.len() - 4
    }

    /// Octets written since `start` (a position from [`Writer::position`]).
    pub fn position(&self) -> usize {
        self.buf.len()
    }

    pub fn patch_u32(&mut self, at: usize, value: u32) {
        self.buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }
}

/// A type that appears as a method field.
pub trait Field: Sized {
    fn read(reader: &mut Reader) -> Result<Self>;
    fn write(&self, writer: &mut Writer<'_>);
}

impl Field for bool {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.bit()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.bit(*self)
    }
}

impl Field for u8 {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.u8()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.u8(*self)
    }
}

impl Field for u16 {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.u16()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.u16(*self)
    }
}

impl Field for u32 {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.u32()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.u32(*self)
    }
}

impl Field for u64 {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.u64()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.u64(*self)
    }
}

impl Field for ShortStr {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.short_str()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.short_str(self)
    }
}

/// An AMQP `longstr`: opaque octets.
impl Field for Bytes {
    fn read(reader: &mut Reader) -> Result<Self> {
        reader.long_str()
    }
    fn write(&self, writer: &mut Writer<'_>) {
        writer.long_str(self)
    }
}
