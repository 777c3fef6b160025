//! The basic class's content header: body size and the fourteen message properties.
//!
//! A broker mostly passes properties through, so [`ContentHeader`] keeps the raw property octets
//! (flags and list) beside the body size; [`BasicProperties`] decodes them when the broker needs
//! to look inside (delivery mode, priority, expiration, headers, reply-to).

use super::field::FieldTable;
use super::wire::{CodecError, Field, Reader, Result, ShortStr, Writer};
use bytes::{Bytes, BytesMut};

pub const BASIC_CLASS: u16 = 60;

/// A content header frame payload.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentHeader {
    pub body_size: u64,
    /// The property flags and list exactly as sent.
    pub properties: Bytes,
}

impl ContentHeader {
    pub fn decode(payload: Bytes) -> Result<ContentHeader> {
        let mut reader = Reader::new(payload);
        let class = reader.u16()?;
        if class != BASIC_CLASS {
            return Err(CodecError::WrongHeaderClass { class });
        }
        let _weight = reader.u16()?;
        let body_size = reader.u64()?;
        let properties = reader.bytes(reader.remaining(), "properties")?;
        // Validate now, so a malformed header is refused at once, not when a consumer reads it.
        BasicProperties::decode(properties.clone())?;
        Ok(ContentHeader {
            body_size,
            properties,
        })
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let mut writer = Writer::new(buf);
        writer.u16(BASIC_CLASS);
        writer.u16(0);
        writer.u64(self.body_size);
        writer.raw(&self.properties);
    }
}

/// The properties of a message (AMQP 0-9-1 basic class).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

fn read_if<T: Field>(flags: u16, bit: u16, reader: &mut Reader) -> Result<Option<T>> {
    if flags & (1 << bit) != 0 {
        Ok(Some(T::read(reader)?))
    } else {
        Ok(None)
    }
}

fn write_if<T: Field>(value: &Option<T>, bit: u16, flags: &mut u16, writer: &mut Writer<'_>) {
    if let Some(value) = value {
        *flags |= 1 << bit;
        value.write(writer);
    }
}

impl BasicProperties {
    /// Decodes a property flags + list block.
    pub fn decode(bytes: Bytes) -> Result<BasicProperties> {
        let mut reader = Reader::new(bytes);
        let flags = reader.u16()?;
        // Bit 0 says more flag words follow; basic defines only 14 properties, so any further
        // words carry no properties we know, and RabbitMQ rejects them as well.
        let mut more = flags & 1 != 0;
        while more {
            more = reader.u16()? & 1 != 0;
        }
        let properties = BasicProperties {
            content_type: read_if(flags, 15, &mut reader)?,
            content_encoding: read_if(flags, 14, &mut reader)?,
            headers: read_if(flags, 13, &mut reader)?,
            delivery_mode: read_if(flags, 12, &mut reader)?,
            priority: read_if(flags, 11, &mut reader)?,
            correlation_id: read_if(flags, 10, &mut reader)?,
            reply_to: read_if(flags, 9, &mut reader)?,
            expiration: read_if(flags, 8, &mut reader)?,
            message_id: read_if(flags, 7, &mut reader)?,
            timestamp: read_if(flags, 6, &mut reader)?,
            kind: read_if(flags, 5, &mut reader)?,
            user_id: read_if(flags, 4, &mut reader)?,
            app_id: read_if(flags, 3, &mut reader)?,
            cluster_id: read_if(flags, 2, &mut reader)?,
        };
        reader.finish("basic properties")?;
        Ok(properties)
    }

    /// Encodes the property flags + list block.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        let mut flags = 0u16;
        {
            let mut writer = Writer::new(&mut buf);
            writer.u16(0);
            write_if(&self.content_type, 15, &mut flags, &mut writer);
            write_if(&self.content_encoding, 14, &mut flags, &mut writer);
            write_if(&self.headers, 13, &mut flags, &mut writer);
            write_if(&self.delivery_mode, 12, &mut flags, &mut writer);
            write_if(&self.priority, 11, &mut flags, &mut writer);
            write_if(&self.correlation_id, 10, &mut flags, &mut writer);
            write_if(&self.reply_to, 9, &mut flags, &mut writer);
            write_if(&self.expiration, 8, &mut flags, &mut writer);
            write_if(&self.message_id, 7, &mut flags, &mut writer);
            write_if(&self.timestamp, 6, &mut flags, &mut writer);
            write_if(&self.kind, 5, &mut flags, &mut writer);
            write_if(&self.user_id, 4, &mut flags, &mut writer);
            write_if(&self.app_id, 3, &mut flags, &mut writer);
            write_if(&self.cluster_id, 2, &mut flags, &mut writer);
        }
        buf[0..2].copy_from_slice(&flags.to_be_bytes());
        buf.freeze()
    }

    pub fn persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }
}
