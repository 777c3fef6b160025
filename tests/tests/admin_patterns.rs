//! The admin plane's message and routing RPCs against a real broker: peek leaves a queue as it
//! was, get and move take messages safely, pause and resume, and wire taps and detours switched
//! on and off under concurrent confirmed publishing without losing or duplicating a message.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Code;
use warren_tests::admin::{self, *};
use warren_tests::Warren;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn peek_changes_nothing_and_get_move_take_messages_safely() -> Result<()> {
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    declare_queue(&mut a, "orders", &[]).await;
    declare_queue(&mut a, "orders.dlq", &[]).await;

    // Test messages report where they went.
    let routed = publish(&mut a, "", "orders", "o1").await;
    assert_eq!(routed.routed_queues, ["orders"]);
    assert!(routed.confirmed);
    let nowhere = publish(&mut a, "amq.direct", "no-binding", "x").await;
    assert!(nowhere.routed_queues.is_empty());
    let missing = a
        .publish(PublishRequest {
            vhost: vhost(),
            exchange: "missing".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(missing.expect_err("no exchange").code(), Code::NotFound);
    for i in 2..=4 {
        publish(&mut a, "", "orders", &format!("o{i}")).await;
    }

    // Peek twice: same answer, nothing consumed, nothing marked redelivered.
    let first = peek(&mut a, "orders", 10).await;
    assert_eq!(first, ["o1", "o2", "o3", "o4"]);
    assert_eq!(peek(&mut a, "orders", 2).await, ["o1", "o2"]);
    let info = queue_info(&mut a, "orders").await;
    assert_eq!((info.ready, info.unacked), (4, 0));
    // A real consumer then gets them in order, first delivery.
    let conn = amqp(&warren).await;
    let ch = conn.create_channel().await?;
    let got = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: false })
        .await?
        .expect("a message");
    assert_eq!(got.delivery.data, b"o1");
    assert!(!got.delivery.redelivered);
    got.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await?;
    // The nack is on its way once sent: wait until the queue has taken o1 back.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let info = queue_info(&mut a, "orders").await;
        if (info.ready, info.unacked) == (4, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "o1 never went back: {info:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // get with requeue keeps the order and marks redelivery; without, removes.
    let requeued = a
        .get(GetRequest {
            vhost: vhost(),
            queue: "orders".into(),
            count: 2,
            requeue: true,
            body_bytes_max: 1,
        })
        .await?
        .into_inner();
    assert_eq!(requeued.messages.len(), 2);
    assert_eq!(requeued.messages[0].body, b"o");
    assert!(requeued.messages[0].body_truncated);
    assert_eq!(requeued.remaining, 4);
    assert_eq!(peek(&mut a, "orders", 10).await, ["o1", "o2", "o3", "o4"]);
    let taken = a
        .get(GetRequest {
            vhost: vhost(),
            queue: "orders".into(),
            count: 1,
            requeue: false,
            body_bytes_max: 0,
        })
        .await?
        .into_inner();
    assert_eq!(taken.messages[0].body, b"o1");
    assert_eq!(taken.remaining, 3);

    // Redrive a dead-letter queue: everything moves, in order, after the destination's own.
    for i in 1..=300 {
        publish(&mut a, "", "orders.dlq", &format!("d{i}")).await;
    }
    let moved = a
        .move_messages(MoveMessagesRequest {
            vhost: vhost(),
            source: "orders.dlq".into(),
            destination: "orders".into(),
            count: 0,
        })
        .await?
        .into_inner();
    assert_eq!(moved.messages, 300);
    assert_eq!(queue_info(&mut a, "orders.dlq").await.ready, 0);
    let all = drain(&mut a, "orders").await;
    let expected: Vec<String> = ["o2", "o3", "o4"]
        .into_iter()
        .map(String::from)
        .chain((1..=300).map(|i| format!("d{i}")))
        .collect();
    assert_eq!(all, expected);
    let same = a
        .move_messages(MoveMessagesRequest {
            vhost: vhost(),
            source: "orders".into(),
            destination: "orders".into(),
            count: 0,
        })
        .await;
    assert_eq!(same.expect_err("same queue").code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn paused_queues_and_consumers_hold_deliveries_until_resumed() -> Result<()> {
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    declare_queue(&mut a, "work", &[]).await;
    let conn = amqp(&warren).await;
    let ch = conn.create_channel().await?;
    let mut first = ch
        .basic_consume(
            "work".into(),
            "first".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let ch2 = conn.create_channel().await?;
    let mut second = ch2
        .basic_consume(
            "work".into(),
            "second".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let queue = || QueueRef {
        vhost: vhost(),
        name: "work".into(),
    };

    // Paused: publishes are accepted and confirmed, nothing is delivered.
    a.pause_queue(queue()).await?;
    for i in 0..10 {
        assert!(
            publish(&mut a, "", "work", &format!("m{i}"))
                .await
                .confirmed
        );
    }
    assert_eq!(peek(&mut a, "work", 100).await.len(), 10);
    let info = queue_info(&mut a, "work").await;
    assert!(info.paused);
    assert_eq!((info.ready, info.unacked), (10, 0));

    // One consumer paused, the queue resumed: everything goes to the other one.
    a.pause_consumer(ConsumerRef {
        vhost: vhost(),
        queue: "work".into(),
        tag: "first".into(),
    })
    .await?;
    a.resume_queue(queue()).await?;
    for _ in 0..10 {
        let d = tokio::time::timeout(Duration::from_secs(10), second.next())
            .await?
            .expect("delivery")?;
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    let consumers = a
        .list_consumers(ListRequest::default())
        .await?
        .into_inner()
        .consumers;
    let paused = consumers.iter().find(|c| c.tag == "first").expect("listed");
    assert!(paused.paused);
    assert_eq!(paused.unacked, 0);

    // Resumed: the first consumer receives again.
    a.resume_consumer(ConsumerRef {
        vhost: vhost(),
        queue: "work".into(),
        tag: "first".into(),
    })
    .await?;
    drop(second);
    ch2.close(200, "done".into()).await?;
    publish(&mut a, "", "work", "after").await;
    let d = tokio::time::timeout(Duration::from_secs(10), first.next())
        .await?
        .expect("delivery")?;
    assert_eq!(d.data, b"after");
    let unknown = a
        .pause_consumer(ConsumerRef {
            vhost: vhost(),
            queue: "work".into(),
            tag: "nobody".into(),
        })
        .await;
    assert_eq!(unknown.expect_err("no consumer").code(), Code::NotFound);
    Ok(())
}

/// Publishes `count` persistent messages "0".."count-1" to `exchange` with confirms.
async fn publish_numbered(warren: &Warren, exchange: &str, key: &str, count: usize) -> Result<()> {
    let conn = amqp(warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = Vec::new();
    for i in 0..count {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push(confirm);
        if pending.len() == 50 {
            for c in pending.drain(..) {
                assert!(c.await?.is_ack());
            }
        }
    }
    for c in pending {
        assert!(c.await?.is_ack());
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

fn numbers(bodies: &[String]) -> BTreeSet<usize> {
    let set: BTreeSet<usize> = bodies.iter().map(|b| b.parse().expect("number")).collect();
    assert_eq!(set.len(), bodies.len(), "no duplicates");
    set
}

#[tokio::test]
async fn wire_taps_switched_under_load_copy_without_disturbing_the_main_route() -> Result<()> {
    const COUNT: usize = 3000;
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    declare_exchange(&mut a, "orders", "direct").await;
    declare_queue(&mut a, "main", &[]).await;
    bind(&mut a, "orders", "main", "new").await;
    declare_exchange(&mut a, "audit", "fanout").await;
    declare_queue(&mut a, "audit.q", &[]).await;
    bind(&mut a, "audit", "audit.q", "").await;

    let load = publish_numbered(&warren, "orders", "new", COUNT);
    let switching = async {
        let mut switches = 0;
        let mut copied = 0;
        loop {
            let tap = a
                .start_tap(admin::TapSpec {
                    vhost: vhost(),
                    source_type: "exchange".into(),
                    source: "orders".into(),
                    target_exchange: "audit".into(),
                    sample_every: 1,
                })
                .await
                .expect("tap")
                .into_inner();
            let listed = a
                .list_taps(ListRequest::default())
                .await
                .expect("list")
                .into_inner();
            assert_eq!(listed.taps.len(), 1);
            a.stop_tap(TapRef { id: tap.id }).await.expect("stop");
            switches += 1;
            copied += listed.taps[0].copied;
            if queue_info(&mut a, "main").await.published_total >= COUNT as u64 {
                return (switches, copied);
            }
        }
    };
    let (loaded, (switches, _)) = tokio::join!(load, switching);
    loaded?;
    assert!(switches > 1, "the tap was switched while publishing");
    let main = drain(&mut a, "main").await;
    assert_eq!(
        numbers(&main),
        (0..COUNT).collect(),
        "main route: all, once"
    );
    let copies = numbers(&drain(&mut a, "audit.q").await);
    assert!(
        copies.is_subset(&(0..COUNT).collect()),
        "copies are of published messages"
    );
    assert!(a
        .list_taps(ListRequest::default())
        .await?
        .into_inner()
        .taps
        .is_empty());

    // A sampled queue tap copies one in N of what enters the queue, and keeps counting.
    let tap = a
        .start_tap(admin::TapSpec {
            vhost: vhost(),
            source_type: "queue".into(),
            source: "main".into(),
            target_exchange: "audit".into(),
            sample_every: 10,
        })
        .await?
        .into_inner();
    publish_numbered(&warren, "orders", "new", 100).await?;
    let taps = a.list_taps(ListRequest::default()).await?.into_inner().taps;
    assert_eq!((taps[0].seen, taps[0].copied), (100, 10));
    assert_eq!(drain(&mut a, "audit.q").await.len(), 10);
    assert_eq!(drain(&mut a, "main").await.len(), 100);
    a.stop_tap(TapRef { id: tap.id }).await?;
    let stopped = a.stop_tap(TapRef { id: tap.id }).await;
    assert_eq!(stopped.expect_err("gone").code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn detours_switch_atomically_under_load_and_survive_restarts() -> Result<()> {
    const COUNT: usize = 3000;
    let mut warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    declare_exchange(&mut a, "orders", "direct").await;
    declare_queue(&mut a, "shipping", &[]).await;
    bind(&mut a, "orders", "shipping", "new").await;
    declare_exchange(&mut a, "validate", "fanout").await;
    declare_queue(&mut a, "validation", &[]).await;
    bind(&mut a, "validate", "validation", "").await;
    let detour = || DetourSpec {
        vhost: vhost(),
        source: "orders".into(),
        destination_type: "queue".into(),
        destination: "shipping".into(),
        via_exchange: "validate".into(),
    };
    let route = || DetourRef {
        vhost: vhost(),
        source: "orders".into(),
        destination_type: "queue".into(),
        destination: "shipping".into(),
    };

    // Every message takes exactly one of the two routes while the detour flips.
    let load = publish_numbered(&warren, "orders", "new", COUNT);
    let switching = async {
        let mut switches = 0;
        loop {
            a.start_detour(detour()).await.expect("start");
            a.stop_detour(route()).await.expect("stop");
            switches += 1;
            let shipped = queue_info(&mut a, "shipping").await.published_total;
            let validated = queue_info(&mut a, "validation").await.published_total;
            if shipped + validated >= COUNT as u64 {
                return switches;
            }
        }
    };
    let (loaded, switches) = tokio::join!(load, switching);
    loaded?;
    assert!(switches > 1);
    let shipped = numbers(&drain(&mut a, "shipping").await);
    let validated = numbers(&drain(&mut a, "validation").await);
    assert!(
        shipped.is_disjoint(&validated),
        "no message took both routes"
    );
    let all: BTreeSet<usize> = shipped.union(&validated).copied().collect();
    assert_eq!(all, (0..COUNT).collect(), "no message took neither");

    // Errors: the same detour twice, a missing binding, a missing exchange.
    a.start_detour(detour()).await?;
    let twice = a.start_detour(detour()).await;
    assert_eq!(twice.expect_err("exists").code(), Code::AlreadyExists);
    let unbound = a
        .start_detour(DetourSpec {
            destination: "validation".into(),
            ..detour()
        })
        .await;
    assert_eq!(unbound.expect_err("no binding").code(), Code::NotFound);
    let no_via = a
        .start_detour(DetourSpec {
            via_exchange: "nope".into(),
            ..detour()
        })
        .await;
    assert!(no_via.is_err());

    // Active detours are definitions: still there after a restart.
    warren.restart();
    let mut a = admin::guest(&warren.admin_url()).await;
    let detours = a
        .list_detours(ListRequest::default())
        .await?
        .into_inner()
        .detours;
    assert_eq!(detours.len(), 1);
    assert_eq!(detours[0].via_exchange, "validate");
    publish(&mut a, "orders", "new", "after-restart").await;
    assert_eq!(drain(&mut a, "validation").await, ["after-restart"]);
    a.stop_detour(route()).await?;
    let stopped = a.stop_detour(route()).await;
    assert_eq!(stopped.expect_err("gone").code(), Code::NotFound);
    Ok(())
}
