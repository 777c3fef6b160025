//! proptest strategies for every wire type (tests only).

use super::field::{FieldTable, FieldValue};
use super::properties::BasicProperties;
use super::wire::ShortStr;
use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

pub(crate) trait Arb: Sized {
    fn arb() -> BoxedStrategy<Self>;
}

impl Arb for bool {
    fn arb() -> BoxedStrategy<Self> {
        any::<bool>().boxed()
    }
}
impl Arb for u8 {
    fn arb() -> BoxedStrategy<Self> {
        any::<u8>().boxed()
    }
}
impl Arb for u16 {
    fn arb() -> BoxedStrategy<Self> {
        any::<u16>().boxed()
    }
}
impl Arb for u32 {
    fn arb() -> BoxedStrategy<Self> {
        any::<u32>().boxed()
    }
}
impl Arb for u64 {
    fn arb() -> BoxedStrategy<Self> {
        any::<u64>().boxed()
    }
}
impl Arb for ShortStr {
    fn arb() -> BoxedStrategy<Self> {
        "[a-zA-Z0-9._\u{e9}\u{4e2d}-]{0,40}"
            .prop_map(|s| ShortStr::new(&s))
            .boxed()
    }
}
impl Arb for Bytes {
    fn arb() -> BoxedStrategy<Self> {
        vec(any::<u8>(), 0..64).prop_map(Bytes::from).boxed()
    }
}
impl Arb for FieldTable {
    fn arb() -> BoxedStrategy<Self> {
        field_table(2)
    }
}

/// Any field value, floats without NaN (NaN != NaN would fail a round trip that is correct).
pub(crate) fn field_value(depth: u32) -> BoxedStrategy<FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        (-1e30f32..1e30).prop_map(FieldValue::F32),
        (-1e300f64..1e300).prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        Bytes::arb().prop_map(FieldValue::LongStr),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        Bytes::arb().prop_map(FieldValue::ByteArray),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        4 => leaf,
        1 => vec(field_value(depth - 1), 0..4).prop_map(FieldValue::Array),
        1 => field_table(depth - 1).prop_map(FieldValue::Table),
    ]
    .boxed()
}

pub(crate) fn field_table(depth: u32) -> BoxedStrategy<FieldTable> {
    vec((ShortStr::arb(), field_value(depth)), 0..5)
        .prop_map(FieldTable)
        .boxed()
}

impl Arb for BasicProperties {
    fn arb() -> BoxedStrategy<Self> {
        let s = || option::of(ShortStr::arb());
        (
            (
                s(),
                s(),
                option::of(field_table(1)),
                option::of(any::<u8>()),
            ),
            (option::of(any::<u8>()), s(), s(), s(), s()),
            (option::of(any::<u64>()), s(), s(), s(), s()),
        )
            .prop_map(|(a, b, c)| BasicProperties {
                content_type: a.0,
                content_encoding: a.1,
                headers: a.2,
                delivery_mode: a.3,
                priority: b.0,
                correlation_id: b.1,
                reply_to: b.2,
                expiration: b.3,
                message_id: b.4,
                timestamp: c.0,
                kind: c.1,
                user_id: c.2,
                app_id: c.3,
                cluster_id: c.4,
            })
            .boxed()
    }
}
