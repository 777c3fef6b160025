//! `/metrics`: Prometheus text format over HTTP, names after RabbitMQ's Prometheus plugin
//! (`rabbitmq_queue_messages_ready` is `warren_queue_messages_ready` here). Read from the
//! counters only: a scrape never waits on a queue.

use crate::admin::statistics::{disk_free_bytes, memory_rss_bytes};
use crate::broker::Broker;
use crate::delivery::ConnectionStats;
use crate::queue::QueueCounters;
use crate::statistics::GlobalCounters;
use std::fmt::Write;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let broker = Arc::clone(&broker);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&broker),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-queue metric: name, type, help, and how to read it.
type QueueMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueCounters) -> u64,
);

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

pub fn render(broker: &Broker) -> String {
    let mut t = Text(String::with_capacity(16 * 1024));
    let node = label(&broker.config.node_name);
    t.family("warren_build_info", "gauge", "Version of this node.");
    t.sample(
        "warren_build_info",
        &format!("version=\"{}\",node=\"{node}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    t.single(
        "warren_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        broker.started.elapsed().as_secs_f64(),
    );
    let mut connections = 0u64;
    let mut channels = 0u64;
    broker.for_each_connection(|_, e| {
        connections += 1;
        channels += ConnectionStats::get(&e.stats.channels);
    });
    t.single(
        "warren_connections",
        "gauge",
        "Open AMQP connections.",
        connections,
    );
    t.single("warren_channels", "gauge", "Open AMQP channels.", channels);
    let totals = &broker.totals;
    t.single(
        "warren_global_messages_received_total",
        "counter",
        "Messages published to the node.",
        GlobalCounters::get(&totals.published),
    );
    t.single(
        "warren_global_messages_delivered_total",
        "counter",
        "Messages delivered to consumers.",
        GlobalCounters::get(&totals.delivered),
    );
    t.single(
        "warren_global_messages_acknowledged_total",
        "counter",
        "Messages acknowledged by consumers.",
        GlobalCounters::get(&totals.acked),
    );
    t.single(
        "warren_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the broker process.",
        memory_rss_bytes(),
    );
    t.single(
        "warren_disk_space_available_bytes",
        "gauge",
        "Free bytes on the data directory's file system.",
        disk_free_bytes(broker),
    );
    t.single(
        "warren_log_disk_bytes",
        "gauge",
        "Bytes of the write-ahead log's segment files.",
        broker.wal.stats().disk_bytes,
    );
    t.single(
        "warren_log_reserve_bytes",
        "gauge",
        "Bytes of files the log keeps for reuse beyond its segments (retired segments, the spare).",
        broker.wal.stats().reserve_bytes,
    );
    t.single(
        "warren_alarms_free_disk_space_watermark",
        "gauge",
        "1 while publishers are blocked for lack of disk space.",
        u8::from(broker.is_disk_blocked()),
    );

    let mut queues = Vec::new();
    let mut names = broker.vhost_names();
    names.sort();
    for name in names {
        if let Some(vhost) = broker.vhost(&name) {
            let mut qs: Vec<_> = vhost.read().queues.values().cloned().collect();
            qs.sort_by(|a, b| a.name().cmp(b.name()));
            queues.extend(qs);
        }
    }
    t.single(
        "warren_queues",
        "gauge",
        "Queues on the node.",
        queues.len(),
    );
    let per_queue: [QueueMetric; 6] = [
        (
            "warren_queue_messages_ready",
            "gauge",
            "Messages ready to be delivered.",
            |c| QueueCounters::get(&c.ready),
        ),
        (
            "warren_queue_messages_unacked",
            "gauge",
            "Messages delivered and not yet acknowledged.",
            |c| QueueCounters::get(&c.unacked),
        ),
        (
            "warren_queue_consumers",
            "gauge",
            "Consumers of the queue.",
            |c| QueueCounters::get(&c.consumers),
        ),
        (
            "warren_queue_messages_published_total",
            "counter",
            "Messages enqueued.",
            |c| QueueCounters::get(&c.published),
        ),
        (
            "warren_queue_messages_delivered_total",
            "counter",
            "Messages delivered to consumers.",
            |c| QueueCounters::get(&c.delivered),
        ),
        (
            "warren_queue_messages_acked_total",
            "counter",
            "Messages acknowledged.",
            |c| QueueCounters::get(&c.acked),
        ),
    ];
    let labels: Vec<String> = queues
        .iter()
        .map(|q| {
            format!(
                "vhost=\"{}\",queue=\"{}\"",
                label(&q.decl.vhost),
                label(q.name())
            )
        })
        .collect();
    for (metric, kind, help, read) in per_queue {
        t.family(metric, kind, help);
        for (q, l) in queues.iter().zip(&labels) {
            t.sample(metric, l, read(&q.counters));
        }
    }
    t.family(
        "warren_queue_disk_bytes",
        "gauge",
        "Live bytes of the queue's records in the write-ahead log.",
    );
    for (q, l) in queues.iter().zip(&labels) {
        let bytes = q.decl.stream.map_or(0, |s| {
            broker.wal.stream_live(warren_storage::StreamId(s)).bytes
        });
        t.sample("warren_queue_disk_bytes", l, bytes);
    }
    t.0
}
