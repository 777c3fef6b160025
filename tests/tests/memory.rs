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

/// Publishes `total` persistent 1 KiB messages to `queue` (declared with `arguments`) through
/// `addr` in two halves; returns the RSS of each of `pids` after each half.
async fn publish_backlog(
    addr: &str,
    pids: &[u32],
    queue: &str,
    arguments: warren_broker::amqp::FieldTable,
    total: u64,
) -> Vec<(u64, u64)> {
    let mut client = Client::open(addr).await.expect("connect");
    client
        .queue_with_confirms(queue, arguments)
        .await
        .expect("declare");
    let started = std::time::Instant::now();
    client
        .publish_confirmed(queue, total / 2, 1024, 1000)
        .await
        .expect("first half");
    let half: Vec<u64> = pids.iter().map(|p| rss_bytes(*p)).collect();
    client
        .publish_confirmed(queue, total - total / 2, 1024, 1000)
        .await
        .expect("second half");
    let elapsed = started.elapsed();
    client.send(
        1,
        warren_broker::amqp::method::QueueDeclare {
            queue: queue.into(),
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
    let rss: Vec<(u64, u64)> = half
        .into_iter()
        .zip(pids.iter().map(|p| rss_bytes(*p)))
        .collect();
    eprintln!(
        "{total} persistent 1 KiB messages in {elapsed:?} ({:.0} msg/s); RSS at half and full (MB): {:?}",
        total as f64 / elapsed.as_secs_f64(),
        rss.iter().map(|(h, f)| (h >> 20, f >> 20)).collect::<Vec<_>>()
    );
    rss
}

/// RSS must not grow by a quarter of what the second half of the backlog added.
fn assert_bounded(rss: &[(u64, u64)], second_half: u64) {
    let second_half_bytes = second_half * 1024;
    for (node, (half, full)) in rss.iter().enumerate() {
        let growth = full.saturating_sub(*half);
        assert!(
            growth < second_half_bytes / 4,
            "process {node}: RSS grew by {} MB while the backlog grew by {} MB",
            growth >> 20,
            second_half_bytes >> 20
        );
        assert!(*full < 300 << 20, "process {node}: RSS {} MB", full >> 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_does_not_grow_rss() {
    let total: u64 = std::env::var("WARREN_MEMORY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let warren = Warren::start();
    let rss = publish_backlog(
        &warren.addr.to_string(),
        &[warren.pid()],
        "backlog",
        Default::default(),
        total,
    )
    .await;
    assert_bounded(&rss, total - total / 2);
}

/// A quorum queue's messages stay in its raft log: neither its leader nor its followers hold
/// them in memory. `WARREN_QUORUM_MEMORY_MESSAGES` (default 200 000) sets the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_backlog_does_not_grow_rss_on_any_replica() {
    let total: u64 = std::env::var("WARREN_QUORUM_MEMORY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let cluster = warren_tests::cluster::Cluster::start(3);
    let pids: Vec<u32> = (1..=3).map(|n| cluster.node(n).pid()).collect();
    let arguments = warren_broker::amqp::FieldTable(vec![(
        "x-queue-type".into(),
        warren_broker::amqp::FieldValue::LongStr("quorum".into()),
    )]);
    let rss = publish_backlog(
        &cluster.node(1).addr.to_string(),
        &pids,
        "quorum-backlog",
        arguments,
        total,
    )
    .await;
    assert_bounded(&rss, total - total / 2);
}
