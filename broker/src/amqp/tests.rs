//! Codec tests: round trips of every method and field type, framing errors, and amq-protocol
//! (lapin's codec) as an independent oracle for the encoding.

use super::arbitrary::{field_table, Arb};
use super::constants::ReplyCode;
use super::field::{FieldTable, FieldValue};
use super::frame::{self, Frame, FrameError};
use super::method::{self, Method};
use super::properties::{BasicProperties, ContentHeader};
use super::wire::ShortStr;
use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

const FRAME_MAX: usize = 131_072;

fn round_trip_frame(channel: u16, method: &Method) -> Frame {
    let mut buf = BytesMut::new();
    frame::put_method(&mut buf, channel, method);
    let parsed = frame::parse(&mut buf, FRAME_MAX)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty(), "{} octets left over", buf.len());
    parsed
}

#[test]
fn every_method_round_trips() {
    let mut runner = proptest::test_runner::TestRunner::default();
    for strategy in method::strategies() {
        runner
            .run(&(strategy, any::<u16>()), |(method, channel)| {
                let parsed = round_trip_frame(channel, &method);
                prop_assert_eq!(parsed, Frame::Method(channel, method));
                Ok(())
            })
            .unwrap();
    }
}

proptest! {
    #[test]
    fn field_tables_round_trip(table in field_table(3)) {
        prop_assert_eq!(FieldTable::decode(table.encode()).unwrap(), table);
    }

    #[test]
    fn properties_round_trip(properties in BasicProperties::arb(), body_size in any::<u64>()) {
        let header = ContentHeader { body_size, properties: properties.encode() };
        let mut buf = BytesMut::new();
        frame::put_header(&mut buf, 7, &header);
        let parsed = frame::parse(&mut buf, FRAME_MAX).unwrap().unwrap();
        prop_assert_eq!(parsed, Frame::Header(7, header.clone()));
        prop_assert_eq!(BasicProperties::decode(header.properties).unwrap(), properties);
    }

    /// Arbitrary octets never panic the decoder, and a frame that decodes re-encodes the same.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = frame::parse(&mut buf, 4096);
        let _ = Method::decode(Bytes::from(bytes.clone()));
        let _ = BasicProperties::decode(Bytes::from(bytes));
    }
}

#[test]
fn every_field_type_code_is_rabbitmqs() {
    let cases: &[(FieldValue, u8)] = &[
        (FieldValue::Bool(true), b't'),
        (FieldValue::I8(-1), b'b'),
        (FieldValue::U8(1), b'B'),
        (FieldValue::I16(-2), b's'),
        (FieldValue::U16(2), b'u'),
        (FieldValue::I32(-3), b'I'),
        (FieldValue::U32(3), b'i'),
        (FieldValue::I64(-4), b'l'),
        (FieldValue::F32(1.5), b'f'),
        (FieldValue::F64(2.5), b'd'),
        (FieldValue::Decimal { scale: 2, value: 5 }, b'D'),
        (FieldValue::string("x"), b'S'),
        (FieldValue::Array(vec![]), b'A'),
        (FieldValue::Timestamp(9), b'T'),
        (FieldValue::Table(FieldTable::new()), b'F'),
        (FieldValue::Void, b'V'),
        (FieldValue::ByteArray(Bytes::from_static(b"\x00")), b'x'),
    ];
    for (value, code) in cases {
        let mut table = FieldTable::new();
        table.insert("k", value.clone());
        let encoded = table.encode();
        // 4 length octets, 1 name length, "k", then the type code.
        assert_eq!(encoded[6], *code, "{value:?}");
        assert_eq!(FieldTable::decode(encoded).unwrap(), table);
    }
}

#[test]
fn unknown_field_type_is_refused() {
    // Table of length 3: name "k", type 'Z'.
    let bytes = Bytes::from_static(b"\x00\x00\x00\x03\x01kZ");
    assert!(FieldTable::decode(bytes).is_err());
}

#[test]
fn bits_pack_into_one_octet() {
    let method = Method::from(method::QueueDeclare {
        queue: "q".into(),
        passive: true,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: true,
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    method.encode(&mut buf);
    // class, method, ticket, "q", one bit octet, empty table.
    assert_eq!(
        &buf[..],
        b"\x00\x32\x00\x0a\x00\x00\x01q\x15\x00\x00\x00\x00"
    );
}

#[test]
fn framing_errors_carry_rabbitmq_reply_codes() {
    let mut too_large = BytesMut::new();
    frame::put_body(&mut too_large, 1, &[0u8; 5000], 8192);
    let error = frame::parse(&mut too_large, 4096).unwrap_err();
    assert!(matches!(error, FrameError::TooLarge { .. }));
    assert_eq!(error.reply_code(), ReplyCode::FrameError);

    let mut bad_end = BytesMut::new();
    frame::put_heartbeat(&mut bad_end);
    let last = bad_end.len() - 1;
    bad_end[last] = 0;
    assert_eq!(
        frame::parse(&mut bad_end, 4096).unwrap_err(),
        FrameError::BadEnd { found: 0 }
    );

    let mut unknown = BytesMut::new();
    unknown.put_slice(b"\x01\x00\x01\x00\x00\x00\x04\x00\x63\x00\x01\xce");
    let error = frame::parse(&mut unknown, 4096).unwrap_err();
    assert_eq!(error.reply_code(), ReplyCode::CommandInvalid);

    let mut truncated_args = BytesMut::new();
    truncated_args.put_slice(b"\x01\x00\x01\x00\x00\x00\x05\x00\x3c\x00\x50\x00\xce");
    let error = frame::parse(&mut truncated_args, 4096).unwrap_err();
    assert_eq!(error.reply_code(), ReplyCode::SyntaxError);
}

#[test]
fn partial_frames_wait_for_more() {
    let mut whole = BytesMut::new();
    frame::put_method(
        &mut whole,
        3,
        &Method::from(method::BasicAck {
            delivery_tag: 9,
            multiple: true,
        }),
    );
    for cut in 0..whole.len() {
        let mut part = BytesMut::from(&whole[..cut]);
        assert_eq!(frame::parse(&mut part, 4096).unwrap(), None, "cut at {cut}");
    }
}

#[test]
fn bodies_split_at_frame_max() {
    let mut buf = BytesMut::new();
    let body = vec![7u8; 10_000];
    frame::put_body(&mut buf, 1, &body, 4096);
    let mut total = 0;
    while let Some(frame) = frame::parse(&mut buf, 4096).unwrap() {
        let Frame::Body(1, chunk) = frame else {
            panic!("{frame:?}")
        };
        assert!(chunk.len() <= 4096 - 8);
        total += chunk.len();
    }
    assert_eq!(total, body.len());
}

#[test]
fn output_with_shared_bodies_sends_the_same_bytes_as_copying_them() {
    let deliver: Method = method::BasicDeliver {
        consumer_tag: ShortStr::from_static("c"),
        delivery_tag: 9,
        redelivered: false,
        exchange: ShortStr::from_static(""),
        routing_key: ShortStr::from_static("q"),
    }
    .into();
    let properties = Bytes::from_static(&[0, 0]);
    for (len, frame_max) in [
        (0, 4096),
        (100, 4096),
        (4096, 4096),
        (10_000, 4096),
        (70_000, 131_072),
    ] {
        let body = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
        let mut copied = BytesMut::new();
        frame::put_content(&mut copied, 3, &deliver, &properties, &body, frame_max);
        frame::put_heartbeat(&mut copied);
        let mut out = frame::Output::default();
        out.put_content(3, &deliver, &properties, &body, frame_max);
        frame::put_heartbeat(&mut out);
        let pieces = out.take();
        if len >= frame::SHARED_BODY_MIN {
            assert!(
                pieces.len() > 1,
                "a {len}-byte body is referenced, not copied"
            );
        }
        assert_eq!(
            pieces.concat(),
            copied.to_vec(),
            "{len} bytes, frame_max {frame_max}"
        );
        assert!(out.is_empty() && out.take().is_empty());
        // The same body as a copied head and a shared tail, split at several places (in the
        // first frame, at a frame boundary, past it).
        for split in [0, 16, 4095, 4096, 9000, len] {
            let split = split.min(len);
            let mut parts = frame::Output::default();
            parts.put_content_parts(
                3,
                &deliver,
                &properties,
                &body[..split],
                &body.slice(split..),
                frame_max,
            );
            frame::put_heartbeat(&mut parts);
            assert_eq!(
                parts.take().concat(),
                copied.to_vec(),
                "{len} bytes split at {split}, frame_max {frame_max}"
            );
        }
    }
}

mod oracle {
    //! amq-protocol encodes, we decode; we encode, amq-protocol decodes.
    use super::*;
    use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
    use amq_protocol::protocol::{basic, queue, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldTable as TheirTable};

    fn theirs_encode(frame: &AMQPFrame) -> BytesMut {
        let context = gen_frame(frame)(WriteContext::from(Vec::new())).expect("encodes");
        BytesMut::from(&context.write[..])
    }

    fn theirs_decode(bytes: &[u8]) -> AMQPFrame {
        parse_frame(bytes).expect("amq-protocol parses our frame").1
    }

    /// amq-protocol is generated from RabbitMQ's spec JSON: it must parse every method we
    /// encode, consume every octet, and see the same class and method ids.
    #[test]
    fn amq_protocol_parses_every_method_we_encode() {
        let mut runner = proptest::test_runner::TestRunner::default();
        for strategy in method::strategies() {
            runner
                .run(&strategy, |method| {
                    let mut buf = BytesMut::new();
                    frame::put_method(&mut buf, 3, &method);
                    let (rest, parsed) = parse_frame(&buf[..]).map_err(|e| {
                        proptest::test_runner::TestCaseError::fail(format!(
                            "{e:?} parsing {method:?}"
                        ))
                    })?;
                    prop_assert!(
                        rest.is_empty(),
                        "{} octets left of {:?}",
                        rest.len(),
                        method
                    );
                    let AMQPFrame::Method(3, class) = parsed else {
                        return Err(proptest::test_runner::TestCaseError::fail(format!(
                            "not a method frame: {parsed:?}"
                        )));
                    };
                    prop_assert_eq!(
                        (class.get_amqp_class_id(), class.get_amqp_method_id()),
                        method.id()
                    );
                    Ok(())
                })
                .unwrap();
        }
    }

    #[test]
    fn publish_and_deliver_agree() {
        let publish = AMQPFrame::Method(
            5,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "a.b.c".into(),
                mandatory: true,
                immediate: false,
            })),
        );
        let mut buf = theirs_encode(&publish);
        let ours = frame::parse(&mut buf, FRAME_MAX).unwrap().unwrap();
        let Frame::Method(5, Method::BasicPublish(p)) = &ours else {
            panic!("{ours:?}")
        };
        assert_eq!(p.exchange.as_str(), "amq.topic");
        assert_eq!(p.routing_key.as_str(), "a.b.c");
        assert!(p.mandatory && !p.immediate);

        let deliver = Method::from(method::BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 1 << 40,
            redelivered: true,
            exchange: "".into(),
            routing_key: "q".into(),
        });
        let mut ours = BytesMut::new();
        frame::put_method(&mut ours, 9, &deliver);
        match theirs_decode(&ours) {
            AMQPFrame::Method(9, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                assert_eq!(d.consumer_tag.as_str(), "ctag");
                assert_eq!(d.delivery_tag, 1 << 40);
                assert!(d.redelivered);
                assert_eq!(d.routing_key.as_str(), "q");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn declare_with_arguments_agrees() {
        let mut arguments = TheirTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
        arguments.insert("x-message-ttl".into(), AMQPValue::LongInt(-5));
        arguments.insert("x-short".into(), AMQPValue::ShortInt(-7));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("dlx".into()),
        );
        arguments.insert("x-flag".into(), AMQPValue::Boolean(true));
        arguments.insert("x-void".into(), AMQPValue::Void);
        let declare = AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "orders".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: false,
                arguments,
            })),
        );
        let encoded = theirs_encode(&declare);
        let mut buf = encoded.clone();
        let Frame::Method(1, Method::QueueDeclare(d)) =
            frame::parse(&mut buf, FRAME_MAX).unwrap().unwrap()
        else {
            panic!()
        };
        assert_eq!(d.queue.as_str(), "orders");
        assert!(d.durable && d.auto_delete && !d.passive && !d.exclusive && !d.nowait);
        let arg = |name: &str| d.arguments.get(name).cloned();
        assert_eq!(arg("x-max-length"), Some(FieldValue::I64(10)));
        assert_eq!(arg("x-message-ttl"), Some(FieldValue::I32(-5)));
        assert_eq!(arg("x-short"), Some(FieldValue::I16(-7)));
        assert_eq!(
            arg("x-dead-letter-exchange"),
            Some(FieldValue::string("dlx"))
        );
        assert_eq!(arg("x-flag"), Some(FieldValue::Bool(true)));
        assert_eq!(arg("x-void"), Some(FieldValue::Void));
        // Our re-encoding is byte-identical (amq-protocol sorts keys; so do these inputs once
        // we keep its order).
        let mut ours = BytesMut::new();
        frame::put_method(&mut ours, 1, &Method::QueueDeclare(d));
        assert_eq!(&ours[..], &encoded[..]);
    }

    #[test]
    fn content_header_agrees() {
        let mut headers = FieldTable::new();
        headers.insert("h", FieldValue::string("v"));
        let properties = BasicProperties {
            content_type: Some(ShortStr::from("text/plain")),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(3),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            timestamp: Some(1_700_000_000),
            ..Default::default()
        };
        let mut ours = BytesMut::new();
        frame::put_header(
            &mut ours,
            2,
            &ContentHeader {
                body_size: 1234,
                properties: properties.encode(),
            },
        );
        match theirs_decode(&ours) {
            AMQPFrame::Header(2, header) => {
                assert_eq!(header.body_size, 1234);
                let p = &header.properties;
                assert_eq!(
                    p.content_type().as_ref().map(|s| s.as_str()),
                    Some("text/plain")
                );
                assert_eq!(*p.delivery_mode(), Some(2));
                assert_eq!(*p.priority(), Some(3));
                assert_eq!(*p.timestamp(), Some(1_700_000_000));
                assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
            }
            other => panic!("{other:?}"),
        }
    }
}
