//! Conversions between the broker's AMQP values and the admin plane's messages: argument maps
//! written as text (typed as RabbitMQ's management UI types them), message properties, and
//! field values as JSON (definitions).

use crate::amqp::{BasicProperties, FieldTable, FieldValue, ShortStr};
use proto::MessageProperties;
use std::collections::HashMap;
use warren_proto::admin as proto;

/// Text to a typed value: a decimal integer is a signed 64-bit integer, `true`/`false` a
/// boolean, `str:…` the string after the prefix, anything else a string.
pub fn value_from_text(text: &str) -> FieldValue {
    if let Some(rest) = text.strip_prefix("str:") {
        return FieldValue::string(rest);
    }
    if let Ok(n) = text.parse::<i64>() {
        return FieldValue::I64(n);
    }
    match text {
        "true" => FieldValue::Bool(true),
        "false" => FieldValue::Bool(false),
        _ => FieldValue::string(text),
    }
}

/// A value as text; `value_from_text(value_to_text(v))` gives back an equal value for
/// integers (as 64-bit), booleans and strings.
pub fn value_to_text(value: &FieldValue) -> String {
    if let Some(n) = value.as_i64() {
        return n.to_string();
    }
    match value {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::LongStr(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            // Strings that would read back as something else keep a prefix.
            match value_from_text(&text) {
                FieldValue::LongStr(_) if !text.starts_with("str:") => text.into_owned(),
                _ => format!("str:{text}"),
            }
        }
        other => value_to_json(other).to_string(),
    }
}

pub fn table_from_text(map: &HashMap<String, String>) -> FieldTable {
    let mut entries: Vec<(&String, &String)> = map.iter().collect();
    entries.sort();
    let mut table = FieldTable::new();
    for (k, v) in entries {
        table.insert(k, value_from_text(v));
    }
    table
}

pub fn table_to_text(table: &FieldTable) -> HashMap<String, String> {
    table
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_to_text(v)))
        .collect()
}

/// A field value as JSON, as RabbitMQ's definitions export writes arguments.
pub fn value_to_json(value: &FieldValue) -> serde_json::Value {
    use serde_json::Value;
    if let Some(n) = value.as_i64() {
        return Value::from(n);
    }
    match value {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::F32(f) => Value::from(f64::from(*f)),
        FieldValue::F64(f) => Value::from(*f),
        FieldValue::Decimal { scale, value } => {
            Value::from(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b).into_owned())
        }
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
        _ => Value::Null,
    }
}

pub fn table_to_json(table: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        table
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
            .collect(),
    )
}

pub fn value_from_json(value: &serde_json::Value) -> FieldValue {
    use serde_json::Value;
    match value {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::string(s),
        Value::Array(items) => FieldValue::Array(items.iter().map(value_from_json).collect()),
        Value::Object(_) => FieldValue::Table(table_from_json(value)),
    }
}

pub fn table_from_json(value: &serde_json::Value) -> FieldTable {
    let mut table = FieldTable::new();
    if let serde_json::Value::Object(map) = value {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for k in keys {
            table.insert(k, value_from_json(&map[k]));
        }
    }
    table
}

fn short(text: &str) -> Option<ShortStr> {
    (!text.is_empty()).then(|| ShortStr::new(text))
}

pub fn properties_from_proto(p: &MessageProperties) -> BasicProperties {
    BasicProperties {
        content_type: short(&p.content_type),
        content_encoding: short(&p.content_encoding),
        headers: (!p.headers.is_empty()).then(|| table_from_text(&p.headers)),
        delivery_mode: (p.delivery_mode != 0).then_some(p.delivery_mode.min(255) as u8),
        priority: (p.priority != 0).then_some(p.priority.min(255) as u8),
        correlation_id: short(&p.correlation_id),
        reply_to: short(&p.reply_to),
        expiration: short(&p.expiration),
        message_id: short(&p.message_id),
        timestamp: (p.timestamp != 0).then_some(p.timestamp),
        kind: short(&p.r#type),
        user_id: short(&p.user_id),
        app_id: short(&p.app_id),
        cluster_id: None,
    }
}

pub fn properties_to_proto(p: &BasicProperties) -> MessageProperties {
    let text = |s: &Option<ShortStr>| {
        s.as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default()
    };
    MessageProperties {
        content_type: text(&p.content_type),
        content_encoding: text(&p.content_encoding),
        headers: p.headers.as_ref().map(table_to_text).unwrap_or_default(),
        delivery_mode: p.delivery_mode.map_or(0, u32::from),
        priority: p.priority.map_or(0, u32::from),
        correlation_id: text(&p.correlation_id),
        reply_to: text(&p.reply_to),
        expiration: text(&p.expiration),
        message_id: text(&p.message_id),
        timestamp: p.timestamp.unwrap_or(0),
        r#type: text(&p.kind),
        user_id: text(&p.user_id),
        app_id: text(&p.app_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_are_typed_as_the_management_ui_types_them() {
        assert_eq!(value_from_text("10"), FieldValue::I64(10));
        assert_eq!(value_from_text("-3"), FieldValue::I64(-3));
        assert_eq!(value_from_text("true"), FieldValue::Bool(true));
        assert_eq!(value_from_text("quorum"), FieldValue::string("quorum"));
        assert_eq!(value_from_text("str:10"), FieldValue::string("10"));
    }

    #[test]
    fn text_round_trips() {
        for v in [
            FieldValue::I64(7),
            FieldValue::Bool(false),
            FieldValue::string("x"),
            FieldValue::string("42"),
            FieldValue::string("str:x"),
            FieldValue::string("true"),
        ] {
            assert_eq!(value_from_text(&value_to_text(&v)), v, "{v:?}");
        }
        assert_eq!(value_to_text(&FieldValue::I32(5)), "5");
    }

    #[test]
    fn json_round_trips_tables() {
        let table = FieldTable::from_entries(&[
            ("x-max-length", FieldValue::I64(10)),
            ("x-queue-type", FieldValue::string("quorum")),
            ("flag", FieldValue::Bool(true)),
            (
                "nested",
                FieldValue::Table(FieldTable::from_entries(&[("a", FieldValue::I64(1))])),
            ),
        ]);
        let json = table_to_json(&table);
        assert_eq!(json["x-max-length"], 10);
        assert_eq!(table_to_json(&table_from_json(&json)), json);
    }
}
