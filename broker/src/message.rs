//! A published message as the broker holds it, and its record in the write-ahead log.
//!
//! Properties stay in their wire encoding (`properties`): a delivery copies them to the consumer
//! untouched, and only the few the broker acts on are decoded once, at publish.

use crate::amqp::properties::BasicProperties;
use crate::amqp::wire::{CodecError, Reader, Writer};
use crate::amqp::ShortStr;
use bytes::{Bytes, BytesMut};

/// One message; shared (`Arc`) by every queue a publish reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// The content header's property flags and list, as published.
    pub properties: Bytes,
    pub body: Bytes,
    /// `delivery_mode = 2`.
    pub persistent: bool,
    pub priority: u8,
    /// The per-message TTL from the `expiration` property, in milliseconds.
    pub expiration_ms: Option<u64>,
}

impl Message {
    /// Builds a message from a publish, reading the properties the broker acts on.
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: Bytes,
        body: Bytes,
    ) -> Result<Message, CodecError> {
        let decoded = BasicProperties::decode(properties.clone())?;
        Ok(Message::with_decoded(
            exchange,
            routing_key,
            properties,
            body,
            &decoded,
        ))
    }

    pub fn with_decoded(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: Bytes,
        body: Bytes,
        decoded: &BasicProperties,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent: decoded.persistent(),
            priority: decoded.priority.unwrap_or(0),
            expiration_ms: decoded
                .expiration
                .as_ref()
                .and_then(|e| e.as_str().parse::<u64>().ok()),
        }
    }

    pub fn decode_properties(&self) -> BasicProperties {
        BasicProperties::decode(self.properties.clone()).unwrap_or_default()
    }

    /// Bytes counted against `x-max-length-bytes` (the body, as RabbitMQ counts).
    pub fn body_bytes(&self) -> u64 {
        self.body.len() as u64
    }
}

/// The record of a message in a queue's stream of the log.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub message: Message,
    /// When the queue accepted it (for `x-message-ttl` across restarts).
    pub enqueued_at_ms: u64,
    /// A transient message written only because the queue was paging to disk; recovery drops it.
    pub transient: bool,
}

const RECORD_VERSION: u8 = 1;

impl StoredMessage {
    pub fn encode(&self) -> BytesMut {
        let mut buf = self.encode_head_leaving(self.message.body.len());
        buf.extend_from_slice(&self.message.body);
        buf
    }

    /// The record without the body, which follows it: `encode` is this then the body. Lets the
    /// store write a large body into the log without joining it to its head first.
    pub fn encode_head(&self) -> BytesMut {
        self.encode_head_leaving(0)
    }

    /// `encode_head` in a buffer with room for `more` bytes after the head.
    fn encode_head_leaving(&self, more: usize) -> BytesMut {
        let m = &self.message;
        let mut buf = BytesMut::with_capacity(
            32 + m.exchange.len() + m.routing_key.len() + m.properties.len() + more,
        );
        let mut w = Writer::new(&mut buf);
        w.u8(RECORD_VERSION);
        w.u8(u8::from(self.transient));
        w.u64(self.enqueued_at_ms);
        w.short_str(&m.exchange);
        w.short_str(&m.routing_key);
        w.long_str(&m.properties);
        buf
    }

    pub fn decode(bytes: Bytes) -> Result<StoredMessage, CodecError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(CodecError::UnknownFieldType { code: version });
        }
        let transient = r.u8()? != 0;
        let enqueued_at_ms = r.u64()?;
        let exchange = r.short_str()?;
        let routing_key = r.short_str()?;
        let properties = r.long_str()?;
        let body = r.bytes(r.remaining(), "body")?;
        Ok(StoredMessage {
            message: Message::new(exchange, routing_key, properties, body)?,
            enqueued_at_ms,
            transient,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_message_round_trips() {
        let properties = BasicProperties {
            delivery_mode: Some(2),
            priority: Some(4),
            expiration: Some("1500".into()),
            ..Default::default()
        };
        let message = Message::new(
            "ex".into(),
            "rk".into(),
            properties.encode(),
            Bytes::from_static(b"hello"),
        )
        .unwrap();
        assert!(message.persistent);
        assert_eq!(message.priority, 4);
        assert_eq!(message.expiration_ms, Some(1500));
        let stored = StoredMessage {
            message,
            enqueued_at_ms: 42,
            transient: false,
        };
        assert_eq!(
            StoredMessage::decode(stored.encode().freeze()).unwrap(),
            stored
        );
    }
}
