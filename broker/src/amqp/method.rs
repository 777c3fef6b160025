//! Every AMQP 0-9-1 method RabbitMQ speaks, as one enum generated from a table.
//!
//! The table follows RabbitMQ's `amqp-rabbitmq-0.9.1.json` (class and method ids, field order and
//! types, the `reserved`/`ticket` fields kept so encodings are byte-exact). Field types:
//! `bool` = bit, `u8` = octet, `u16` = short, `u32` = long, `u64` = longlong or timestamp,
//! `ShortStr` = shortstr, `Bytes` = longstr, `FieldTable` = table.

use super::field::FieldTable;
use super::wire::{CodecError, Field, Reader, Result, ShortStr, Writer};
use bytes::{Bytes, BytesMut};

macro_rules! methods {
    ($( $class:literal $method:literal $name:ident $text:literal
        { $($field:ident : $ty:ty),* $(,)? } $content:literal )*) => {
        $(
            #[derive(Clone, Debug, Default, PartialEq)]
            pub struct $name { $(pub $field: $ty,)* }

            impl From<$name> for Method {
                fn from(method: $name) -> Method {
                    Method::$name(method)
                }
            }
        )*

        /// A decoded method frame payload.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Method { $($name($name),)* }

        /// One proptest strategy per method, for the round-trip tests.
        #[cfg(test)]
        pub(crate) fn strategies() -> Vec<proptest::strategy::BoxedStrategy<Method>> {
            use proptest::strategy::{Just, Strategy};
            vec![$(
                (Just(()), $(<$ty as crate::amqp::arbitrary::Arb>::arb(),)*)
                    .prop_map(|((), $($field,)*)| Method::$name($name { $($field,)* }))
                    .boxed(),
            )*]
        }

        impl Method {
            /// `(class_id, method_id)`.
            pub fn id(&self) -> (u16, u16) {
                match self { $(Method::$name(_) => ($class, $method),)* }
            }

            /// The spec's name, e.g. `basic.publish`.
            pub fn name(&self) -> &'static str {
                match self { $(Method::$name(_) => $text,)* }
            }

            /// The spec's name for a `(class_id, method_id)` pair.
            pub fn name_of(class: u16, method: u16) -> Option<&'static str> {
                match (class, method) { $(($class, $method) => Some($text),)* _ => None }
            }

            /// Whether a content header and body follow this method.
            pub fn has_content(&self) -> bool {
                match self { $(Method::$name(_) => $content,)* }
            }

            /// Decodes a method frame payload (class id, method id, arguments).
            pub fn decode(payload: Bytes) -> Result<Method> {
                let mut reader = Reader::new(payload);
                let class = reader.u16()?;
                let method = reader.u16()?;
                let decoded = match (class, method) {
                    $(($class, $method) => Method::$name($name {
                        $($field: <$ty as Field>::read(&mut reader)?,)*
                    }),)*
                    _ => return Err(CodecError::UnknownMethod { class, method }),
                };
                reader.finish(decoded.name())?;
                Ok(decoded)
            }

            /// Appends the method frame payload to `buf`.
            pub fn encode(&self, buf: &mut BytesMut) {
                let mut writer = Writer::new(buf);
                match self {
                    $(Method::$name(m) => {
                        writer.u16($class);
                        writer.u16($method);
                        $(m.$field.write(&mut writer);)*
                        let _ = m;
                    })*
                }
            }
        }
    };
}

methods! {
    10 10 ConnectionStart "connection.start" {
        version_major: u8, version_minor: u8, server_properties: FieldTable,
        mechanisms: Bytes, locales: Bytes,
    } false
    10 11 ConnectionStartOk "connection.start-ok" {
        client_properties: FieldTable, mechanism: ShortStr, response: Bytes, locale: ShortStr,
    } false
    10 20 ConnectionSecure "connection.secure" { challenge: Bytes } false
    10 21 ConnectionSecureOk "connection.secure-ok" { response: Bytes } false
    10 30 ConnectionTune "connection.tune" { channel_max: u16, frame_max: u32, heartbeat: u16 } false
    10 31 ConnectionTuneOk "connection.tune-ok" {
        channel_max: u16, frame_max: u32, heartbeat: u16,
    } false
    10 40 ConnectionOpen "connection.open" {
        virtual_host: ShortStr, capabilities: ShortStr, insist: bool,
    } false
    10 41 ConnectionOpenOk "connection.open-ok" { known_hosts: ShortStr } false
    10 50 ConnectionClose "connection.close" {
        reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16,
    } false
    10 51 ConnectionCloseOk "connection.close-ok" {} false
    10 60 ConnectionBlocked "connection.blocked" { reason: ShortStr } false
    10 61 ConnectionUnblocked "connection.unblocked" {} false
    10 70 ConnectionUpdateSecret "connection.update-secret" { new_secret: Bytes, reason: ShortStr } false
    10 71 ConnectionUpdateSecretOk "connection.update-secret-ok" {} false

    20 10 ChannelOpen "channel.open" { out_of_band: ShortStr } false
    20 11 ChannelOpenOk "channel.open-ok" { channel_id: Bytes } false
    20 20 ChannelFlow "channel.flow" { active: bool } false
    20 21 ChannelFlowOk "channel.flow-ok" { active: bool } false
    20 40 ChannelClose "channel.close" {
        reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16,
    } false
    20 41 ChannelCloseOk "channel.close-ok" {} false

    40 10 ExchangeDeclare "exchange.declare" {
        ticket: u16, exchange: ShortStr, kind: ShortStr, passive: bool, durable: bool,
        auto_delete: bool, internal: bool, nowait: bool, arguments: FieldTable,
    } false
    40 11 ExchangeDeclareOk "exchange.declare-ok" {} false
    40 20 ExchangeDelete "exchange.delete" {
        ticket: u16, exchange: ShortStr, if_unused: bool, nowait: bool,
    } false
    40 21 ExchangeDeleteOk "exchange.delete-ok" {} false
    40 30 ExchangeBind "exchange.bind" {
        ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr,
        nowait: bool, arguments: FieldTable,
    } false
    40 31 ExchangeBindOk "exchange.bind-ok" {} false
    40 40 ExchangeUnbind "exchange.unbind" {
        ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr,
        nowait: bool, arguments: FieldTable,
    } false
    40 51 ExchangeUnbindOk "exchange.unbind-ok" {} false

    50 10 QueueDeclare "queue.declare" {
        ticket: u16, queue: ShortStr, passive: bool, durable: bool, exclusive: bool,
        auto_delete: bool, nowait: bool, arguments: FieldTable,
    } false
    50 11 QueueDeclareOk "queue.declare-ok" {
        queue: ShortStr, message_count: u32, consumer_count: u32,
    } false
    50 20 QueueBind "queue.bind" {
        ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr, nowait: bool,
        arguments: FieldTable,
    } false
    50 21 QueueBindOk "queue.bind-ok" {} false
    50 30 QueuePurge "queue.purge" { ticket: u16, queue: ShortStr, nowait: bool } false
    50 31 QueuePurgeOk "queue.purge-ok" { message_count: u32 } false
    50 40 QueueDelete "queue.delete" {
        ticket: u16, queue: ShortStr, if_unused: bool, if_empty: bool, nowait: bool,
    } false
    50 41 QueueDeleteOk "queue.delete-ok" { message_count: u32 } false
    50 50 QueueUnbind "queue.unbind" {
        ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr,
        arguments: FieldTable,
    } false
    50 51 QueueUnbindOk "queue.unbind-ok" {} false

    60 10 BasicQos "basic.qos" { prefetch_size: u32, prefetch_count: u16, global: bool } false
    60 11 BasicQosOk "basic.qos-ok" {} false
    60 20 BasicConsume "basic.consume" {
        ticket: u16, queue: ShortStr, consumer_tag: ShortStr, no_local: bool, no_ack: bool,
        exclusive: bool, nowait: bool, arguments: FieldTable,
    } false
    60 21 BasicConsumeOk "basic.consume-ok" { consumer_tag: ShortStr } false
    60 30 BasicCancel "basic.cancel" { consumer_tag: ShortStr, nowait: bool } false
    60 31 BasicCancelOk "basic.cancel-ok" { consumer_tag: ShortStr } false
    60 40 BasicPublish "basic.publish" {
        ticket: u16, exchange: ShortStr, routing_key: ShortStr, mandatory: bool, immediate: bool,
    } true
    60 50 BasicReturn "basic.return" {
        reply_code: u16, reply_text: ShortStr, exchange: ShortStr, routing_key: ShortStr,
    } true
    60 60 BasicDeliver "basic.deliver" {
        consumer_tag: ShortStr, delivery_tag: u64, redelivered: bool, exchange: ShortStr,
        routing_key: ShortStr,
    } true
    60 70 BasicGet "basic.get" { ticket: u16, queue: ShortStr, no_ack: bool } false
    60 71 BasicGetOk "basic.get-ok" {
        delivery_tag: u64, redelivered: bool, exchange: ShortStr, routing_key: ShortStr,
        message_count: u32,
    } true
    60 72 BasicGetEmpty "basic.get-empty" { cluster_id: ShortStr } false
    60 80 BasicAck "basic.ack" { delivery_tag: u64, multiple: bool } false
    60 90 BasicReject "basic.reject" { delivery_tag: u64, requeue: bool } false
    60 100 BasicRecoverAsync "basic.recover-async" { requeue: bool } false
    60 110 BasicRecover "basic.recover" { requeue: bool } false
    60 111 BasicRecoverOk "basic.recover-ok" {} false
    60 120 BasicNack "basic.nack" { delivery_tag: u64, multiple: bool, requeue: bool } false

    85 10 ConfirmSelect "confirm.select" { nowait: bool } false
    85 11 ConfirmSelectOk "confirm.select-ok" {} false

    90 10 TxSelect "tx.select" {} false
    90 11 TxSelectOk "tx.select-ok" {} false
    90 20 TxCommit "tx.commit" {} false
    90 21 TxCommitOk "tx.commit-ok" {} false
    90 30 TxRollback "tx.rollback" {} false
    90 31 TxRollbackOk "tx.rollback-ok" {} false
}
