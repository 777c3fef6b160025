//! Field tables and arrays with RabbitMQ's type codes.
//!
//! RabbitMQ (and every client written against it) uses its own codes rather than the 0-9-1 spec
//! text: `s` is a signed 16-bit integer (not a short string), `l` a signed 64-bit integer, `x` a
//! byte array, and there is no `U`/`L`. The table below is RabbitMQ's `rabbit_binary_parser`.
//!
//! | code | type | code | type |
//! |---|---|---|---|
//! | `t` | bool | `f` | f32 |
//! | `b` | i8 | `d` | f64 |
//! | `B` | u8 | `D` | decimal (scale u8, value u32) |
//! | `s` | i16 | `S` | long string |
//! | `u` | u16 | `A` | array |
//! | `I` | i32 | `T` | timestamp (u64 seconds) |
//! | `i` | u32 | `F` | nested table |
//! | `l` | i64 | `V` | void |
//! | `x` | byte array | | |

use super::wire::{CodecError, Field, Reader, Result, ShortStr, Writer};
use bytes::{Bytes, BytesMut};

/// Tables nested deeper than this are refused (a guard against stack exhaustion).
pub const NESTING_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal { scale: u8, value: u32 },
    LongStr(Bytes),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
    ByteArray(Bytes),
}

impl FieldValue {
    pub fn type_code(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongStr(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// The value as an integer, whatever its integer width (RabbitMQ accepts any integer type
    /// for numeric arguments such as `x-max-length`).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as text, for long strings that hold UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(value) => Some(*value),
            _ => None,
        }
    }

    pub fn string(text: &str) -> FieldValue {
        FieldValue::LongStr(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn read_with(reader: &mut Reader, depth: usize) -> Result<FieldValue> {
        let code = reader.u8()?;
        Ok(match code {
            b't' => FieldValue::Bool(reader.u8()? != 0),
            b'b' => FieldValue::I8(reader.u8()? as i8),
            b'B' => FieldValue::U8(reader.u8()?),
            b's' => FieldValue::I16(reader.u16()? as i16),
            b'u' => FieldValue::U16(reader.u16()?),
            b'I' => FieldValue::I32(reader.u32()? as i32),
            b'i' => FieldValue::U32(reader.u32()?),
            b'l' => FieldValue::I64(reader.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(reader.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(reader.u64()?)),
            b'D' => FieldValue::Decimal {
                scale: reader.u8()?,
                value: reader.u32()?,
            },
            b'S' => FieldValue::LongStr(reader.long_str()?),
            b'x' => FieldValue::ByteArray(reader.long_str()?),
            b'A' => {
                let mut inner = Reader::new(reader.long_str()?);
                let mut values = Vec::new();
                while inner.remaining() > 0 {
                    values.push(FieldValue::read_nested(&mut inner, depth + 1)?);
                }
                FieldValue::Array(values)
            }
            b'T' => FieldValue::Timestamp(reader.u64()?),
            b'F' => FieldValue::Table(FieldTable::read_with(reader, depth + 1)?),
            b'V' => FieldValue::Void,
            code => return Err(CodecError::UnknownFieldType { code }),
        })
    }

    fn read_nested(reader: &mut Reader, depth: usize) -> Result<FieldValue> {
        if depth > NESTING_MAX {
            return Err(CodecError::TooDeep { max: NESTING_MAX });
        }
        FieldValue::read_with(reader, depth)
    }

    fn write(&self, writer: &mut Writer<'_>) {
        writer.u8(self.type_code());
        match self {
            FieldValue::Bool(v) => writer.u8(u8::from(*v)),
            FieldValue::I8(v) => writer.u8(*v as u8),
            FieldValue::U8(v) => writer.u8(*v),
            FieldValue::I16(v) => writer.u16(*v as u16),
            FieldValue::U16(v) => writer.u16(*v),
            FieldValue::I32(v) => writer.u32(*v as u32),
            FieldValue::U32(v) => writer.u32(*v),
            FieldValue::I64(v) => writer.u64(*v as u64),
            FieldValue::F32(v) => writer.u32(v.to_bits()),
            FieldValue::F64(v) => writer.u64(v.to_bits()),
            FieldValue::Decimal { scale, value } => {
                writer.u8(*scale);
                writer.u32(*value);
            }
            FieldValue::LongStr(v) | FieldValue::ByteArray(v) => writer.long_str(v),
            FieldValue::Array(values) => {
                let at = writer.reserve_u32();
                let start = writer.position();
                for value in values {
                    value.write(writer);
                }
                let len = writer.position() - start;
                writer.patch_u32(at, len as u32);
            }
            FieldValue::Timestamp(v) => writer.u64(*v),
            FieldValue::Table(table) => table.write(writer),
            FieldValue::Void => {}
        }
    }
}

/// A field table: named values in the order they were sent (RabbitMQ keeps the order, and so do
/// we; lookups are linear because tables are small).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    pub fn new() -> FieldTable {
        FieldTable(Vec::new())
    }

    /// A table of the given entries, in order.
    pub fn from_entries(entries: &[(&str, FieldValue)]) -> FieldTable {
        FieldTable(
            entries
                .iter()
                .map(|(k, v)| (ShortStr::new(k), v.clone()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(key, _)| key.as_str() == name)
            .map(|(_, value)| value)
    }

    /// Sets `name`, replacing an existing entry in place.
    pub fn insert(&mut self, name: &str, value: FieldValue) {
        match self.0.iter_mut().find(|(key, _)| key.as_str() == name) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((ShortStr::new(name), value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        let at = self.0.iter().position(|(key, _)| key.as_str() == name)?;
        Some(self.0.remove(at).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The table's wire encoding (length prefix included).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.write(&mut Writer::new(&mut buf));
        buf.freeze()
    }

    /// Decodes a table written by [`FieldTable::encode`].
    pub fn decode(bytes: Bytes) -> Result<FieldTable> {
        let mut reader = Reader::new(bytes);
        let table = FieldTable::read(&mut reader)?;
        reader.finish("field table")?;
        Ok(table)
    }

    fn read_with(reader: &mut Reader, depth: usize) -> Result<FieldTable> {
        if depth > NESTING_MAX {
            return Err(CodecError::TooDeep { max: NESTING_MAX });
        }
        let mut inner = Reader::new(reader.long_str()?);
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let name = inner.short_str()?;
            let value = FieldValue::read_with(&mut inner, depth)?;
            entries.push((name, value));
        }
        Ok(FieldTable(entries))
    }
}

impl Field for FieldTable {
    fn read(reader: &mut Reader) -> Result<Self> {
        FieldTable::read_with(reader, 0)
    }

    fn write(&self, writer: &mut Writer<'_>) {
        let at = writer.reserve_u32();
        let start = writer.position();
        for (name, value) in &self.0 {
            writer.short_str(name);
            value.write(writer);
        }
        let len = writer.position() - start;
        writer.patch_u32(at, len as u32);
    }
}
