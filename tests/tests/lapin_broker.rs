//! The broker against lapin (amq-protocol's codec): publishing with confirms, consuming,
//! routing, requeueing, dead-lettering, transactions, error replies, and restarts.

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;
use warren_tests::Warren;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn connect(warren: &Warren) -> Connection {
    Connection::connect(&warren.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

async fn declare(channel: &Channel, name: &str, durable: bool, args: FieldTable) -> Result<()> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

async fn publish(channel: &Channel, exchange: &str, key: &str, body: &[u8]) -> Result<bool> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            persistent(),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

async fn next(consumer: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer stream open")
        .expect("delivery")
}

async fn consume(channel: &Channel, queue: &str, tag: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume")
}

/// `queue.declare` with `passive`: the queue's figures, or the channel error.
async fn passive(ch: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_and_come_back_redelivered() -> Result<()> {
    let mut warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    declare(&ch, "orders", true, FieldTable::default()).await?;
    for i in 0..500u32 {
        assert!(publish(&ch, "", "orders", &i.to_be_bytes()).await?);
    }
    // Take and ack the first 100; take 50 more without acking.
    ch.basic_qos(150, BasicQosOptions::default()).await?;
    let mut consumer = consume(&ch, "orders", "c1").await;
    for i in 0..150u32 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, i.to_be_bytes());
        assert!(!d.redelivered);
        if i < 100 {
            d.ack(BasicAckOptions::default()).await?;
        }
    }
    // A synchronous round trip after the acks so they have reached the broker.
    passive(&ch, "orders").await?;
    drop(consumer);
    warren.restart();

    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    let q = passive(&ch, "orders").await?;
    // Acks are synced lazily: an ack may come back, never a confirmed message go missing.
    assert!(
        (400..=500).contains(&q.message_count()),
        "{}",
        q.message_count()
    );
    let first_expected = 500 - q.message_count();
    let mut consumer = consume(&ch, "orders", "c2").await;
    for i in first_expected..500 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, i.to_be_bytes(), "in order after restart");
        assert!(d.redelivered, "recovered messages are marked redelivered");
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_is_returned_before_its_ack() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost?",
            persistent(),
        )
        .await?
        .await?;
    assert!(confirm.is_ack());
    let returned = confirm
        .take_message()
        .expect("basic.return arrived before the ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.data, b"lost?");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_is_refused_with_540() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    // The server closes the connection: lapin reports the close's reply code as an event. (A
    // call made meanwhile may fail first with the channel merely "closing".)
    let mut events = Box::pin(conn.events_listener());
    let ch = conn.create_channel().await?;
    let _ = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await;
    let error = connection_error(&mut events).await?;
    assert_eq!(reply_code(&error), Some(540), "{error:?}");
    assert!(ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_share_round_robin_with_prefetch_one() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    declare(&ch, "work", true, FieldTable::default()).await?;
    let a = conn.create_channel().await?;
    let b = conn.create_channel().await?;
    a.basic_qos(1, BasicQosOptions::default()).await?;
    b.basic_qos(1, BasicQosOptions::default()).await?;
    let mut ca = consume(&a, "work", "a").await;
    let mut cb = consume(&b, "work", "b").await;
    for i in 0..4u8 {
        assert!(publish(&ch, "", "work", &[i]).await?);
    }
    // Each consumer holds one unacked message; the others wait.
    let da = next(&mut ca).await;
    let db = next(&mut cb).await;
    let mut seen = vec![da.data[0], db.data[0]];
    seen.sort();
    assert_eq!(seen, vec![0, 1]);
    let q = passive(&ch, "work").await?;
    assert_eq!(q.message_count(), 2, "prefetch 1 holds the rest back");
    da.ack(BasicAckOptions::default()).await?;
    db.ack(BasicAckOptions::default()).await?;
    let d1 = next(&mut ca).await;
    let d2 = next(&mut cb).await;
    let mut seen = vec![d1.data[0], d2.data[0]];
    seen.sort();
    assert_eq!(seen, vec![2, 3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_channel_requeues_at_the_original_position() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    declare(&ch, "jobs", false, FieldTable::default()).await?;
    for i in 0..3u8 {
        assert!(publish(&ch, "", "jobs", &[i]).await?);
    }
    let worker = conn.create_channel().await?;
    worker.basic_qos(1, BasicQosOptions::default()).await?;
    let mut c = consume(&worker, "jobs", "w").await;
    let d = next(&mut c).await;
    assert_eq!(d.data, [0]);
    worker.close(200, "worker died".into()).await?;
    let other = conn.create_channel().await?;
    let mut c = consume(&other, "jobs", "w2").await;
    let d = next(&mut c).await;
    assert_eq!(d.data, [0], "requeued message keeps its place at the head");
    assert!(d.redelivered);
    let d = next(&mut c).await;
    assert_eq!(d.data, [1]);
    assert!(!d.redelivered);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_with_x_death() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        "dlx".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    declare(&ch, "dead", true, FieldTable::default()).await?;
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    declare(
        &ch,
        "live",
        true,
        table(&[(
            "x-dead-letter-exchange",
            AMQPValue::LongString("dlx".into()),
        )]),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    assert!(publish(&ch, "", "live", b"poison").await?);
    let mut c = consume(&ch, "live", "c").await;
    let d = next(&mut c).await;
    d.reject(BasicRejectOptions { requeue: false }).await?;
    let mut dead = consume(&ch, "dead", "d").await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"poison");
    let headers = d.properties.headers().clone().expect("headers");
    let deaths = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.clone(),
        other => panic!("x-death: {other:?}"),
    };
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!()
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&AMQPValue::LongString("rejected".into()))
    );
    assert_eq!(
        death.inner().get("queue"),
        Some(&AMQPValue::LongString("live".into()))
    );
    assert_eq!(death.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_route_topic_headers_fanout_e2e_and_alternate() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for q in ["t", "h", "f", "alt", "diamond"] {
        declare(&ch, q, false, FieldTable::default()).await?;
    }
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "alt-x".into(),
        lapin::ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "alt".into(),
        "alt-x".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        "main".into(),
        lapin::ExchangeKind::Topic,
        opts,
        table(&[("alternate-exchange", AMQPValue::LongString("alt-x".into()))]),
    )
    .await?;
    ch.queue_bind(
        "t".into(),
        "main".into(),
        "orders.*.eu".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    // Exchange-to-exchange: main → fan (for "#.audit") → f.
    ch.exchange_declare(
        "fan".into(),
        lapin::ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_bind(
        "fan".into(),
        "main".into(),
        "#.audit".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "f".into(),
        "fan".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    // Diamond: the queue is reachable twice, receives once.
    ch.queue_bind(
        "diamond".into(),
        "main".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "diamond".into(),
        "fan".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "h".into(),
        "amq.headers".into(),
        "".into(),
        QueueBindOptions::default(),
        table(&[
            ("x-match", AMQPValue::LongString("any".into())),
            ("kind", AMQPValue::LongString("invoice".into())),
        ]),
    )
    .await?;

    assert!(publish(&ch, "main", "orders.new.eu", b"1").await?);
    assert!(publish(&ch, "main", "orders.new.us.audit", b"2").await?);
    ch.queue_unbind(
        "diamond".into(),
        "main".into(),
        "#".into(),
        FieldTable::default(),
    )
    .await?;
    assert!(publish(&ch, "main", "nothing.matches", b"3").await?);
    let props = BasicProperties::default()
        .with_headers(table(&[("kind", AMQPValue::LongString("invoice".into()))]));
    ch.basic_publish(
        "amq.headers".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"4",
        props,
    )
    .await?
    .await?;

    let get = |q: &'static str| {
        let ch = ch.clone();
        async move {
            let mut out = Vec::new();
            while let Some(m) = ch
                .basic_get(q.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
            }
            out
        }
    };
    assert_eq!(get("t").await, vec!["1"]);
    assert_eq!(get("f").await, vec!["2"]);
    assert_eq!(get("diamond").await, vec!["1", "2"], "once per publish");
    assert_eq!(get("alt").await, vec!["3"]);
    assert_eq!(get("h").await, vec!["4"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    declare(&ch, "doomed", false, FieldTable::default()).await?;
    let mut c = consume(&ch, "doomed", "victim").await;
    let other = conn.create_channel().await?;
    other
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await?;
    let end = tokio::time::timeout(Duration::from_secs(10), c.next()).await?;
    assert!(
        end.is_none(),
        "the consumer stream ends on basic.cancel: {end:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_roll_back() -> Result<()> {
    let warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    declare(&ch, "tx", true, FieldTable::default()).await?;
    ch.tx_select().await?;
    for body in [b"a", b"b"] {
        ch.basic_publish(
            "".into(),
            "tx".into(),
            BasicPublishOptions::default(),
            body,
            persistent(),
        )
        .await?;
    }
    ch.tx_rollback().await?;
    ch.basic_publish(
        "".into(),
        "tx".into(),
        BasicPublishOptions::default(),
        b"c",
        persistent(),
    )
    .await?;
    let q = passive(&ch, "tx").await?;
    assert_eq!(q.message_count(), 0, "nothing before commit");
    ch.tx_commit().await?;
    let q = passive(&ch, "tx").await?;
    assert_eq!(q.message_count(), 1);
    let m = ch
        .basic_get("tx".into(), BasicGetOptions::default())
        .await?
        .expect("message");
    assert_eq!(m.delivery.data, b"c");
    m.delivery.ack(BasicAckOptions::default()).await?;
    ch.tx_rollback().await?;
    let q = passive(&ch, "tx").await?;
    assert_eq!(
        q.message_count(),
        0,
        "the ack was rolled back, the message is unacked"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_errors_carry_rabbitmq_reply_codes() -> Result<()> {
    let warren = Warren::start_with(&["--message-bytes-max", "1000"]);
    let conn = connect(&warren).await;

    let ch = conn.create_channel().await?;
    declare(&ch, "once", true, FieldTable::default()).await?;
    let e = declare(&ch, "once", false, FieldTable::default())
        .await
        .expect_err("406");
    assert_eq!(
        e.downcast_ref::<lapin::Error>().and_then(reply_code),
        Some(406)
    );

    let ch = conn.create_channel().await?;
    let e = passive(&ch, "missing").await.expect_err("404");
    assert_eq!(reply_code(&e), Some(404));

    let ch = conn.create_channel().await?;
    let e = ch.basic_ack(99, BasicAckOptions::default()).await;
    // basic.ack has no reply: the channel close arrives on the next call.
    let e = match e {
        Err(e) => e,
        Ok(()) => passive(&ch, "once")
            .await
            .expect_err("channel closed by unknown delivery tag"),
    };
    // lapin reports either the close's reply code or, when the close won the race, the
    // channel's state; the exact code is asserted by the pika and raw-protocol suites.
    assert!(
        reply_code(&e) == Some(406)
            || matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..)),
        "{e:?}"
    );

    let ch = conn.create_channel().await?;
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_eq!(reply_code(&e), Some(403));

    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let big = vec![0u8; 2000];
    let r = ch
        .basic_publish(
            "".into(),
            "once".into(),
            BasicPublishOptions::default(),
            &big,
            persistent(),
        )
        .await;
    let e = match r {
        Err(e) => e,
        Ok(confirm) => confirm.await.expect_err("406 for an oversize message"),
    };
    assert_eq!(reply_code(&e), Some(406), "{e:?}");

    // Other connection: exclusive queue is locked.
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let conn2 = connect(&warren).await;
    let ch2 = conn2.create_channel().await?;
    let e = ch2
        .basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("405");
    assert_eq!(reply_code(&e), Some(405));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_definitions_survive_restart_and_transient_ones_do_not() -> Result<()> {
    let mut warren = Warren::start();
    {
        let conn = connect(&warren).await;
        let ch = conn.create_channel().await?;
        ch.exchange_declare(
            "events".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        declare(&ch, "kept", true, FieldTable::default()).await?;
        declare(&ch, "dropped", false, FieldTable::default()).await?;
        ch.queue_bind(
            "kept".into(),
            "events".into(),
            "a.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.basic_publish(
            "events".into(),
            "a.b".into(),
            BasicPublishOptions::default(),
            b"transient",
            BasicProperties::default(),
        )
        .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        assert!(publish(&ch, "events", "a.c", b"persistent").await?);
    }
    warren.restart();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    let e = passive(&ch, "dropped")
        .await
        .expect_err("non-durable queue is gone");
    assert_eq!(reply_code(&e), Some(404));
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let m = ch
        .basic_get("kept".into(), BasicGetOptions { no_ack: true })
        .await?
        .expect("persistent message kept");
    assert_eq!(m.delivery.data, b"persistent");
    assert!(
        ch.basic_get("kept".into(), BasicGetOptions { no_ack: true })
            .await?
            .is_none(),
        "transient message dropped"
    );
    // The binding survived too.
    assert!(publish(&ch, "events", "a.z", b"again").await?);
    let m = ch
        .basic_get("kept".into(), BasicGetOptions { no_ack: true })
        .await?
        .expect("routed through the recovered binding");
    assert_eq!(m.delivery.data, b"again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_with_320() -> Result<()> {
    let mut warren = Warren::start();
    let conn = connect(&warren).await;
    let ch = conn.create_channel().await?;
    declare(&ch, "q", true, FieldTable::default()).await?;
    let mut events = Box::pin(conn.events_listener());
    let status = tokio::task::spawn_blocking(move || warren.terminate()).await?;
    assert!(status.success(), "{status}");
    let error = connection_error(&mut events).await?;
    assert_eq!(reply_code(&error), Some(320), "{error:?}");
    Ok(())
}

/// The next error a connection's events report (within 10 s).
async fn connection_error(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
) -> Result<lapin::Error> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await? {
            Some(lapin::Event::Error(e)) => return Ok(e),
            Some(_) => continue,
            None => panic!("event stream ended without an error"),
        }
    }
}
