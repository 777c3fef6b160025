//! SIGKILL the broker while a client publishes persistent messages with confirms and another
//! consumes and acks; restart; drain. Oracle (DESIGN §1, guarantees 1–3):
//! - every confirmed message that was not acked is delivered after the restart;
//! - nothing is delivered that was never published;
//! - no message is delivered twice in the drain, and everything recovered is `redelivered`.
//!
//! Repeated with the kill at different moments (`WARREN_CRASH_ITERATIONS`, default 6; the
//! moment is drawn from a seed printed on failure, `SEED=` to replay).

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_tests::Warren;

#[derive(Default)]
struct Oracle {
    published: HashSet<u64>,
    confirmed: HashSet<u64>,
    acked: HashSet<u64>,
}

async fn publisher(
    url: String,
    oracle: Arc<Mutex<Oracle>>,
    first: u64,
    started: Arc<tokio::sync::Notify>,
) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let mut next = first;
    loop {
        let mut batch = Vec::new();
        for _ in 0..50 {
            oracle.lock().unwrap().published.insert(next);
            let sent = ch
                .basic_publish(
                    "".into(),
                    "crash".into(),
                    BasicPublishOptions::default(),
                    &next.to_be_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
            match sent {
                Ok(confirm) => batch.push((next, confirm)),
                Err(_) => return,
            }
            next += 1;
        }
        for (id, confirm) in batch {
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    let mut oracle = oracle.lock().unwrap();
                    oracle.confirmed.insert(id);
                    if oracle.confirmed.len() == 20 {
                        started.notify_one();
                    }
                }
                _ => return,
            }
        }
    }
}

async fn consumer(url: String, oracle: Arc<Mutex<Oracle>>) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let _ = ch.basic_qos(100, BasicQosOptions::default()).await;
    let Ok(mut stream) = ch
        .basic_consume(
            "crash".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(delivery)) = stream.next().await {
        let id = u64::from_be_bytes(delivery.data[..8].try_into().expect("8-byte id"));
        // Ack only every other message, so unacked deliveries are in flight at the kill.
        if id % 2 == 0 {
            oracle.lock().unwrap().acked.insert(id);
            if delivery.ack(BasicAckOptions::default()).await.is_err() {
                return;
            }
        }
    }
}

async fn drain(warren: &Warren) -> Vec<(u64, bool)> {
    let conn = Connection::connect(&warren.url(), ConnectionProperties::default())
        .await
        .expect("connect after restart");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get("crash".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
    {
        let id = u64::from_be_bytes(m.delivery.data[..8].try_into().expect("8-byte id"));
        out.push((id, m.delivery.redelivered));
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    // A round trip so the last acks are in before the next kill.
    ch.queue_declare(
        "crash".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_confirmed_publishing_loses_nothing() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let iterations: u64 = std::env::var("WARREN_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("crash test SEED={seed} iterations={iterations}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut warren = Warren::start();
    {
        let conn = Connection::connect(&warren.url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "crash".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    let mut total_confirmed = 0;
    for iteration in 0..iterations {
        let oracle = Arc::new(Mutex::new(Oracle::default()));
        let first = iteration * 10_000_000;
        let started = Arc::new(tokio::sync::Notify::new());
        let p = tokio::spawn(publisher(
            warren.url(),
            Arc::clone(&oracle),
            first,
            Arc::clone(&started),
        ));
        let c = tokio::spawn(consumer(warren.url(), Arc::clone(&oracle)));
        // Wait until some messages are confirmed, then kill at a random later moment.
        let kill_after = rng.gen_range(0..400);
        tokio::time::timeout(Duration::from_secs(30), started.notified())
            .await
            .expect("20 confirms within 30 s");
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        warren.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        warren.start_again();
        let drained = drain(&warren).await;
        let oracle = oracle.lock().unwrap();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (id, redelivered) in &drained {
            *seen.entry(*id).or_default() += 1;
            assert!(
                oracle.published.contains(id),
                "SEED={seed} iteration {iteration}: message {id} was never published"
            );
            assert!(
                *redelivered,
                "SEED={seed} iteration {iteration}: recovered message {id} not marked redelivered"
            );
        }
        for (id, n) in &seen {
            assert_eq!(
                *n, 1,
                "SEED={seed} iteration {iteration}: message {id} delivered {n} times"
            );
        }
        let missing: Vec<u64> = oracle
            .confirmed
            .iter()
            .filter(|id| !oracle.acked.contains(id) && !seen.contains_key(id))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "SEED={seed} iteration {iteration}: {} confirmed, unacked messages lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        total_confirmed += oracle.confirmed.len();
        eprintln!(
            "iteration {iteration}: killed after +{kill_after} ms; {} published, {} confirmed, {} acked, {} recovered",
            oracle.published.len(),
            oracle.confirmed.len(),
            oracle.acked.len(),
            drained.len()
        );
    }
    assert!(total_confirmed > 0);
}
