//! Queue arguments: RabbitMQ's `x-` vocabulary, validated at declare and compared on
//! re-declare (DESIGN §7).

use crate::amqp::{FieldTable, FieldValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// The arguments the broker acts on; unknown `x-` arguments are kept in the declaration but
/// ignored, as RabbitMQ does.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    pub max_priority: Option<u8>,
    pub queue_type: QueueType,
}

impl Default for QueueArgs {
    fn default() -> QueueArgs {
        QueueArgs {
            message_ttl_ms: None,
            expires_ms: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            single_active_consumer: false,
            delivery_limit: None,
            max_priority: None,
            queue_type: QueueType::Classic,
        }
    }
}

/// The `PRECONDITION_FAILED` text RabbitMQ gives for a bad argument.
fn invalid(name: &str, why: impl std::fmt::Display) -> String {
    format!("invalid arg '{name}': {why}")
}

fn non_negative(table: &FieldTable, name: &str) -> Result<Option<u64>, String> {
    match table.get(name) {
        None => Ok(None),
        Some(value) => match value.as_i64() {
            Some(v) if v >= 0 => Ok(Some(v as u64)),
            Some(v) => Err(invalid(name, format_args!("{{value_negative,{v}}}"))),
            None => Err(invalid(
                name,
                format_args!("{{unacceptable_type,{}}}", value.type_code() as char),
            )),
        },
    }
}

fn string(table: &FieldTable, name: &str) -> Result<Option<String>, String> {
    match table.get(name) {
        None => Ok(None),
        Some(value) => match value.as_str() {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(invalid(
                name,
                format_args!("{{unacceptable_type,{}}}", value.type_code() as char),
            )),
        },
    }
}

impl QueueArgs {
    pub fn parse(table: &FieldTable) -> Result<QueueArgs, String> {
        let mut args = QueueArgs {
            message_ttl_ms: non_negative(table, "x-message-ttl")?,
            expires_ms: non_negative(table, "x-expires")?,
            max_length: non_negative(table, "x-max-length")?,
            max_length_bytes: non_negative(table, "x-max-length-bytes")?,
            dead_letter_exchange: string(table, "x-dead-letter-exchange")?,
            dead_letter_routing_key: string(table, "x-dead-letter-routing-key")?,
            delivery_limit: non_negative(table, "x-delivery-limit")?,
            ..QueueArgs::default()
        };
        if args.expires_ms == Some(0) {
            return Err(invalid("x-expires", "{value_zero,0}"));
        }
        if args.dead_letter_routing_key.is_some() && args.dead_letter_exchange.is_none() {
            return Err(
                "invalid arg 'x-dead-letter-routing-key': routing key given without a \
                 dead letter exchange"
                    .into(),
            );
        }
        if let Some(overflow) = string(table, "x-overflow")? {
            args.overflow = match overflow.as_str() {
                "drop-head" => Overflow::DropHead,
                "reject-publish" => Overflow::RejectPublish,
                "reject-publish-dlx" => Overflow::RejectPublishDlx,
                other => return Err(invalid("x-overflow", format_args!("'{other}'"))),
            };
        }
        if let Some(value) = table.get("x-single-active-consumer") {
            args.single_active_consumer = value
                .as_bool()
                .ok_or_else(|| invalid("x-single-active-consumer", "not a boolean"))?;
        }
        if let Some(priority) = non_negative(table, "x-max-priority")? {
            if priority == 0 || priority > 255 {
                return Err(invalid(
                    "x-max-priority",
                    format_args!("{priority} is not between 1 and 255"),
                ));
            }
            args.max_priority = Some(priority as u8);
        }
        if let Some(mode) = string(table, "x-queue-mode")? {
            if mode != "default" && mode != "lazy" {
                return Err(invalid("x-queue-mode", format_args!("'{mode}'")));
            }
        }
        if let Some(kind) = string(table, "x-queue-type")? {
            args.queue_type = match kind.as_str() {
                "classic" => QueueType::Classic,
                "quorum" => QueueType::Quorum,
                other => return Err(invalid("x-queue-type", format_args!("'{other}'"))),
            };
        }
        Ok(args)
    }
}

/// The arguments RabbitMQ compares when a queue is declared again.
const COMPARED: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-max-priority",
    "x-queue-type",
];

/// `Err(text)` naming the first argument whose value differs (integers of different widths but
/// equal value are equal; an absent `x-queue-type` equals `classic`).
pub fn equivalent(current: &FieldTable, requested: &FieldTable) -> Result<(), String> {
    for name in COMPARED {
        let a = current.get(name);
        let b = requested.get(name);
        let same = match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
                (Some(i), Some(j)) => i == j,
                _ => x == y,
            },
            (Some(v), None) | (None, Some(v)) => {
                *name == "x-queue-type" && v.as_str() == Some("classic")
            }
        };
        if !same {
            return Err(format!(
                "inequivalent arg '{name}' for queue: received {} but current is {}",
                describe(b),
                describe(a)
            ));
        }
    }
    Ok(())
}

fn describe(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => format!("the value '{s}' of type 'longstr'"),
            (_, Some(i)) => format!("the value '{i}'"),
            _ => format!("{v:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        FieldTable::from_entries(entries)
    }

    #[test]
    fn parses_rabbitmq_vocabulary() {
        let args = QueueArgs::parse(&table(&[
            ("x-message-ttl", FieldValue::I32(500)),
            ("x-max-length", FieldValue::I64(10)),
            ("x-overflow", FieldValue::string("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("x-max-priority", FieldValue::U8(5)),
            ("x-queue-mode", FieldValue::string("lazy")),
            ("x-unknown", FieldValue::Void),
        ]))
        .unwrap();
        assert_eq!(args.message_ttl_ms, Some(500));
        assert_eq!(args.max_length, Some(10));
        assert_eq!(args.overflow, Overflow::RejectPublish);
        assert_eq!(args.max_priority, Some(5));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            table(&[("x-message-ttl", FieldValue::I32(-1))]),
            table(&[("x-expires", FieldValue::I32(0))]),
            table(&[("x-overflow", FieldValue::string("explode"))]),
            table(&[("x-max-length", FieldValue::string("ten"))]),
            table(&[("x-max-priority", FieldValue::I32(256))]),
            table(&[("x-queue-type", FieldValue::string("stream"))]),
            table(&[("x-dead-letter-routing-key", FieldValue::string("k"))]),
        ] {
            assert!(QueueArgs::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn equivalence_ignores_integer_width() {
        let a = table(&[("x-max-length", FieldValue::I32(10))]);
        let b = table(&[("x-max-length", FieldValue::I64(10))]);
        assert!(equivalent(&a, &b).is_ok());
        let c = table(&[("x-max-length", FieldValue::I64(11))]);
        assert!(equivalent(&a, &c).is_err());
        let quorum = table(&[("x-queue-type", FieldValue::string("classic"))]);
        assert!(equivalent(&FieldTable::new(), &quorum).is_ok());
    }
}
