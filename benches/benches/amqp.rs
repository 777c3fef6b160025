//! Micro-benchmarks of the AMQP hot path: decoding a publish (method + header + body frames),
//! encoding a delivery, field tables, and topic matching with many bindings.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use warren_broker::amqp::frame;
use warren_broker::amqp::method::{self as m, Method};
use warren_broker::amqp::{BasicProperties, FieldTable, FieldValue};
use warren_broker::exchange::topic::TopicTrie;

fn publish_frames(body_bytes: usize) -> BytesMut {
    let properties = BasicProperties {
        delivery_mode: Some(2),
        content_type: Some("application/json".into()),
        ..Default::default()
    }
    .encode();
    let mut buf = BytesMut::new();
    let publish: Method = m::BasicPublish {
        exchange: "amq.topic".into(),
        routing_key: "orders.eu.created".into(),
        ..Default::default()
    }
    .into();
    frame::put_content(
        &mut buf,
        1,
        &publish,
        &properties,
        &vec![7u8; body_bytes],
        131_072,
    );
    buf
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("amqp");
    for size in [16usize, 1024, 65536] {
        let frames = publish_frames(size);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("decode_publish", size),
            &frames,
            |b, frames| {
                b.iter(|| {
                    let mut buf = frames.clone();
                    let mut n = 0;
                    while let Some(f) = frame::parse(&mut buf, 131_072).expect("valid") {
                        criterion::black_box(&f);
                        n += 1;
                    }
                    assert_eq!(n, 3);
                })
            },
        );
        let deliver: Method = m::BasicDeliver {
            consumer_tag: "amq.ctag-abcdefghijklmnopqrstuv".into(),
            delivery_tag: 123_456,
            redelivered: false,
            exchange: "amq.topic".into(),
            routing_key: "orders.eu.created".into(),
        }
        .into();
        let properties = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        }
        .encode();
        let body = vec![7u8; size];
        let mut out = BytesMut::with_capacity(size + 256);
        group.bench_with_input(BenchmarkId::new("encode_deliver", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                frame::put_content(&mut out, 1, &deliver, &properties, &body, 131_072);
                criterion::black_box(&out);
            })
        });
    }
    let mut table = FieldTable::new();
    table.insert("x-match", FieldValue::string("all"));
    table.insert("tenant", FieldValue::string("acme"));
    table.insert("priority", FieldValue::I32(5));
    table.insert("retries", FieldValue::I64(3));
    table.insert("nested", FieldValue::Table(table.clone()));
    let encoded = table.encode();
    group.bench_function("field_table_encode", |b| {
        b.iter(|| criterion::black_box(table.encode()))
    });
    group.bench_function("field_table_decode", |b| {
        b.iter(|| criterion::black_box(FieldTable::decode(encoded.clone()).expect("valid")))
    });
    group.finish();
}

fn topic(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic");
    for bindings in [100usize, 10_000] {
        let mut trie = TopicTrie::default();
        for i in 0..bindings {
            let key = match i % 4 {
                0 => format!("orders.region{}.created", i),
                1 => format!("orders.*.region{}", i),
                2 => format!("audit.region{}.#", i),
                _ => format!("#.tenant{}", i),
            };
            trie.insert(&key, i as u32);
        }
        trie.insert("orders.#", u32::MAX);
        group.bench_with_input(BenchmarkId::new("match", bindings), &trie, |b, trie| {
            b.iter(|| {
                let mut n = 0;
                trie.matches("orders.region8.created", &mut |_| n += 1);
                assert!(n >= 2);
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, topic);
criterion_main!(benches);
