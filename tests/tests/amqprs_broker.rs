//! The broker against amqprs, a client with its own codec (independent of amq-protocol):
//! confirms (acks, returns), consuming with prefetch, get/reject, cancel notification, restart.

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicPublishArguments,
    BasicQosArguments, BasicRejectArguments, Channel, ConfirmSelectArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use std::time::Duration;
use tokio::sync::mpsc;

type Result<T> = std::result::Result<T, amqprs::error::Error>;
use warren_tests::Warren;

#[derive(Debug, PartialEq)]
enum Event {
    Ack { tag: u64, multiple: bool },
    Nack,
    Return { code: u16 },
    Cancel { tag: String },
}

struct Recorder(mpsc::UnboundedSender<Event>);

#[async_trait::async_trait]
impl ChannelCallback for Recorder {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<()> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<()> {
        let _ = self.0.send(Event::Cancel {
            tag: cancel.consumer_tag().to_string(),
        });
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(Event::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {
        let _ = self.0.send(Event::Nack);
    }
    async fn publish_return(&mut self, _: &Channel, ret: Return, _: BasicProperties, _: Vec<u8>) {
        let _ = self.0.send(Event::Return {
            code: ret.reply_code(),
        });
    }
}

async fn open(warren: &Warren) -> (Connection, Channel, mpsc::UnboundedReceiver<Event>) {
    let conn = Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        warren.port(),
        "guest",
        "guest",
    ))
    .await
    .expect("connect");
    conn.register_callback(DefaultConnectionCallback)
        .await
        .expect("callback");
    let ch = conn.open_channel(None).await.expect("channel");
    let (tx, rx) = mpsc::unbounded_channel();
    ch.register_callback(Recorder(tx)).await.expect("callback");
    (conn, ch, rx)
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).finish()
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("within 10 s")
        .expect("open")
}

/// Waits until every publish up to `last` is acked (acks may be coalesced with `multiple`).
async fn acked_through(rx: &mut mpsc::UnboundedReceiver<Event>, last: u64) {
    let mut acked = std::collections::BTreeSet::new();
    let mut through = 0;
    while through < last {
        match next(rx).await {
            Event::Ack {
                tag,
                multiple: true,
            } => through = through.max(tag),
            Event::Ack {
                tag,
                multiple: false,
            } => {
                acked.insert(tag);
            }
            other => panic!("unexpected {other:?}"),
        }
        while acked.remove(&(through + 1)) {
            through += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_prefetch_and_ordered_consumption() {
    let warren = Warren::start();
    let (_conn, ch, mut events) = open(&warren).await;
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();
    ch.queue_declare(QueueDeclareArguments::durable_client_named("amqprs"))
        .await
        .unwrap();
    for i in 0..200u32 {
        ch.basic_publish(
            persistent(),
            i.to_be_bytes().to_vec(),
            BasicPublishArguments::new("", "amqprs"),
        )
        .await
        .unwrap();
    }
    acked_through(&mut events, 200).await;

    ch.basic_qos(BasicQosArguments::new(0, 10, false))
        .await
        .unwrap();
    let (_tag, mut rx) = ch
        .basic_consume_rx(
            BasicConsumeArguments::new("amqprs", "c")
                .manual_ack(true)
                .finish(),
        )
        .await
        .unwrap();
    for i in 0..200u32 {
        let m = next(&mut rx).await;
        assert_eq!(m.content.unwrap(), i.to_be_bytes());
        let deliver = m.deliver.unwrap();
        assert!(!deliver.redelivered());
        ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_arrive_before_acks_and_cancel_is_notified() {
    let warren = Warren::start();
    let (_conn, ch, mut events) = open(&warren).await;
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();
    let mut args = BasicPublishArguments::new("", "nobody");
    args.mandatory(true);
    ch.basic_publish(persistent(), b"x".to_vec(), args)
        .await
        .unwrap();
    assert_eq!(next(&mut events).await, Event::Return { code: 312 });
    assert_eq!(
        next(&mut events).await,
        Event::Ack {
            tag: 1,
            multiple: false
        }
    );

    ch.queue_declare(QueueDeclareArguments::new("short-lived"))
        .await
        .unwrap();
    let (tag, _rx) = ch
        .basic_consume_rx(BasicConsumeArguments::new("short-lived", "watcher"))
        .await
        .unwrap();
    ch.queue_delete(QueueDeleteArguments::new("short-lived"))
        .await
        .unwrap();
    assert_eq!(next(&mut events).await, Event::Cancel { tag });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reject_requeue_and_restart() {
    let mut warren = Warren::start();
    {
        let (_conn, ch, mut events) = open(&warren).await;
        ch.confirm_select(ConfirmSelectArguments::default())
            .await
            .unwrap();
        ch.queue_declare(QueueDeclareArguments::durable_client_named("kept"))
            .await
            .unwrap();
        for body in [b"a", b"b"] {
            ch.basic_publish(
                persistent(),
                body.to_vec(),
                BasicPublishArguments::new("", "kept"),
            )
            .await
            .unwrap();
        }
        acked_through(&mut events, 2).await;
        let (get_ok, _, body) = ch
            .basic_get(BasicGetArguments::new("kept"))
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(body, b"a");
        assert_eq!(get_ok.message_count(), 1);
        ch.basic_reject(BasicRejectArguments::new(get_ok.delivery_tag(), true))
            .await
            .unwrap();
        let (get_ok, _, body) = ch
            .basic_get(BasicGetArguments::new("kept"))
            .await
            .unwrap()
            .expect("the requeued message");
        assert_eq!(body, b"a");
        assert!(get_ok.redelivered());
    }
    warren.restart();
    let (_conn, ch, _events) = open(&warren).await;
    let (count_queue, messages, _) = ch
        .queue_declare(QueueDeclareArguments::durable_client_named("kept"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_queue, "kept");
    assert_eq!(messages, 2, "the unacked message came back too");
    let (_, _, body) = ch
        .basic_get(BasicGetArguments::new("kept").no_ack(true).finish())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"a");
}
