//! CI's smoke scenario for the load generator: a short run against a real `warren` must
//! deliver everything it published, once.

use warren_benches::perf;
use warren_tests::Warren;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_perf_smoke() {
    let warren = Warren::start();
    let mut options = perf::default_options();
    options.addr = warren.addr.to_string();
    options.producers = 2;
    options.consumers = 2;
    options.messages = Some(2_000);
    options.multi_ack = 10;
    options.broker_pid = Some(warren.pid());
    let report = perf::run(options).await.expect("the scenario runs");
    assert_eq!(report.published, 4_000);
    assert_eq!(report.confirmed, 4_000);
    assert_eq!(report.received, 4_000);
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.end_to_end_latency.count, 4_000);
    assert!(report.broker_cpu_seconds.is_some());

    // Publish first, then drain.
    let mut options = perf::default_options();
    options.addr = warren.addr.to_string();
    options.queue = "drain".into();
    options.messages = Some(1_000);
    options.drain = true;
    let report = perf::run(options).await.expect("the drain scenario runs");
    assert_eq!((report.received, report.lost), (1_000, 0));

    // Bodies sent from a shared tail, each spanning two frames (the client's frame_max is
    // 128 KiB): every one must arrive whole, with the header that identifies it.
    let mut options = perf::default_options();
    options.addr = warren.addr.to_string();
    options.queue = "large".into();
    options.size = 200_000;
    options.messages = Some(300);
    let report = perf::run(options)
        .await
        .expect("the large-body scenario runs");
    assert_eq!(
        (
            report.published,
            report.received,
            report.lost,
            report.duplicates
        ),
        (300, 300, 0, 0)
    );
}
