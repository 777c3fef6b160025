//! A durable queue's backlog lives on disk, not in the broker's memory (DESIGN §1 guarantee 5).
//! Publishes a backlog of persistent 1 KiB messages in two halves and checks the broker's RSS
//! does not grow with the second half. `WARREN_MEMORY_MESSAGES` (default 500 000) sets the size;
//! the 5-million figure in README was measured with it.

use warren_tests::raw::Client;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_does_not_grow_rss() {
    let total: u64 = std::env::var("WARREN_MEMORY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let warren = Warren::start();
    let mut client = Client::open(&warren.addr.to_string())
        .await
        .expect("connect");
    client
        .durable_queue_with_confirms("backlog")
        .await
        .expect("declare");
    let started = std::time::Instant::now();
    client
        .publish_confirmed("backlog", total / 2, 1024, 1000)
        .await
        .expect("first half");
    let half = rss_bytes(warren.pid());
    client
        .publish_confirmed("backlog", total - total / 2, 1024, 1000)
        .await
        .expect("second half");
    let full = rss_bytes(warren.pid());
    let elapsed = started.elapsed();
    client.send(
        1,
        warren_broker::amqp::method::QueueDeclare {
            queue: "backlog".into(),
            passive: true,
            ..Default::default()
        },
    );
    client.flush().await.expect("flush");
    match client.read().await.expect("declare-ok") {
        warren_broker::amqp::frame::Frame::Method(
            _,
            warren_broker::amqp::Method::QueueDeclareOk(ok),
        ) => assert_eq!(u64::from(ok.message_count), total),
        other => panic!("{other:?}"),
    }
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
