//! A durable queue's backlog lives on disk, not in the broker's memory (DESIGN §1 guarantee 5).
//! Publishes a backlog of persistent 1 KiB messages in two halves and checks the broker's RSS
//! does not grow with the second half. `WARREN_MEMORY_MESSAGES` (default 200 000) sets the size;
//! the 5-million figure in README was measured with it.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_tests::Warren;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

async fn publish(ch: &lapin::Channel, count: u64, body: &[u8]) {
    let mut sent = 0;
    while sent < count {
        let window = 1000.min(count - sent);
        let mut confirms = Vec::with_capacity(window as usize);
        for _ in 0..window {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "backlog".into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish"),
            );
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack());
        }
        sent += window;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_does_not_grow_rss() {
    let total: u64 = std::env::var("WARREN_MEMORY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let warren = Warren::start();
    let conn = Connection::connect(&warren.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm");
    ch.queue_declare(
        "backlog".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let body = vec![b'x'; 1024];
    let started = std::time::Instant::now();
    publish(&ch, total / 2, &body).await;
    let half = rss_bytes(warren.pid());
    publish(&ch, total - total / 2, &body).await;
    let full = rss_bytes(warren.pid());
    let elapsed = started.elapsed();
    let q = ch
        .queue_declare(
            "backlog".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(q.message_count() as u64, total);
    eprintln!(
        "{total} persistent 1 KiB messages in {elapsed:?} ({:.0} msg/s); RSS {} MB at half, {} MB at full",
        total as f64 / elapsed.as_secs_f64(),
        half >> 20,
        full >> 20
    );
    let growth = full.saturating_sub(half);
    let second_half_bytes = (total - total / 2) * 1024;
    assert!(
        growth < second_half_bytes / 4,
        "RSS grew by {} MB while the backlog grew by {} MB",
        growth >> 20,
        second_half_bytes >> 20
    );
    assert!(full < 300 << 20, "RSS {} MB", full >> 20);
}
