//! Dead-lettering: the message a queue republishes to its dead-letter exchange, with the
//! `x-death` header as RabbitMQ 3.x writes it.
//!
//! `x-death` is an array of tables, most recent first, one per (queue, reason) pair; a repeat
//! increments `count` and moves the entry to the front. The first death is also recorded in
//! `x-first-death-queue`, `-reason` and `-exchange`. The `expiration` property moves to the
//! entry's `original-expiration` so the copy does not expire again for the same reason.

use super::state::DeathReason;
use crate::amqp::{FieldTable, FieldValue, ShortStr};
use crate::message::Message;
use bytes::Bytes;

pub fn dead_lettered(
    message: &Message,
    reason: DeathReason,
    queue: &str,
    dead_letter_exchange: &str,
    dead_letter_routing_key: Option<&str>,
    now_s: u64,
) -> Message {
    let mut properties = message.decode_properties();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(values)) => values,
        _ => Vec::new(),
    };
    let same = |v: &FieldValue| match v {
        FieldValue::Table(t) => {
            t.get("queue").and_then(|q| q.as_str()) == Some(queue)
                && t.get("reason").and_then(|r| r.as_str()) == Some(reason.as_str())
        }
        _ => false,
    };
    let mut entry = match deaths.iter().position(same) {
        Some(at) => match deaths.remove(at) {
            FieldValue::Table(t) => t,
            _ => unreachable!("position matched a table"),
        },
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(0));
            t.insert("reason", FieldValue::string(reason.as_str()));
            t.insert("queue", FieldValue::string(queue));
            t.insert("exchange", FieldValue::string(message.exchange.as_str()));
            t.insert(
                "routing-keys",
                FieldValue::Array(vec![FieldValue::string(message.routing_key.as_str())]),
            );
            t
        }
    };
    let count = entry.get("count").and_then(|c| c.as_i64()).unwrap_or(0) + 1;
    entry.insert("count", FieldValue::I64(count));
    entry.insert("time", FieldValue::Timestamp(now_s));
    if let Some(expiration) = properties.expiration.take() {
        entry.insert(
            "original-expiration",
            FieldValue::string(expiration.as_str()),
        );
    }
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    for (name, value) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", message.exchange.as_str()),
    ] {
        if headers.get(name).is_none() {
            headers.insert(name, FieldValue::string(value));
        }
    }
    properties.headers = Some(headers);
    let routing_key = dead_letter_routing_key.unwrap_or(message.routing_key.as_str());
    Message::with_decoded(
        ShortStr::new(dead_letter_exchange),
        ShortStr::new(routing_key),
        properties.encode(),
        Bytes::clone(&message.body),
        &properties,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::BasicProperties;

    #[test]
    fn x_death_counts_repeats_and_keeps_first_death() {
        let properties = BasicProperties {
            expiration: Some("100".into()),
            ..Default::default()
        };
        let original = Message::new(
            "ex".into(),
            "rk".into(),
            properties.encode(),
            Bytes::from_static(b"b"),
        )
        .unwrap();
        let once = dead_lettered(&original, DeathReason::Expired, "q", "dlx", None, 10);
        assert_eq!(once.exchange.as_str(), "dlx");
        assert_eq!(once.routing_key.as_str(), "rk");
        assert_eq!(once.expiration_ms, None);
        let twice = dead_lettered(&once, DeathReason::Expired, "q", "dlx", Some("k2"), 11);
        assert_eq!(twice.routing_key.as_str(), "k2");
        let headers = twice.decode_properties().headers.unwrap();
        let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
            panic!("{headers:?}")
        };
        assert_eq!(deaths.len(), 1);
        let FieldValue::Table(entry) = &deaths[0] else {
            panic!()
        };
        assert_eq!(entry.get("count"), Some(&FieldValue::I64(2)));
        assert_eq!(
            entry.get("original-expiration"),
            Some(&FieldValue::string("100"))
        );
        assert_eq!(
            headers.get("x-first-death-exchange"),
            Some(&FieldValue::string("ex"))
        );
        let rejected = dead_lettered(&twice, DeathReason::Rejected, "q2", "dlx", None, 12);
        let headers = rejected.decode_properties().headers.unwrap();
        let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
            panic!()
        };
        assert_eq!(deaths.len(), 2);
        let FieldValue::Table(first) = &deaths[0] else {
            panic!()
        };
        assert_eq!(first.get("reason"), Some(&FieldValue::string("rejected")));
        assert_eq!(
            headers.get("x-first-death-reason"),
            Some(&FieldValue::string("expired"))
        );
    }
}
