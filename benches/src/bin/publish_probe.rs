//! `warren-publish-probe`: publishes persistent messages with publisher confirms through
//! Warren's own codec (no client library overhead), optionally consuming on a second
//! connection, and prints msg/s. The full load generator (latency percentiles, JSON, RabbitMQ
//! side by side) is issue #6.

use clap::Parser;
use std::time::Instant;
use warren_tests::raw::Client;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Unconfirmed publishes in flight.
    #[arg(long, default_value_t = 100)]
    window: u64,
    #[arg(long, default_value = "probe")]
    queue: String,
    /// Also consume (prefetch 1000, one ack per message) on a second connection.
    #[arg(long)]
    consume: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut publisher = Client::open(&args.addr).await?;
    publisher.durable_queue_with_confirms(&args.queue).await?;
    let consumer = args.consume.then(|| {
        let (addr, queue, n) = (args.addr.clone(), args.queue.clone(), args.messages);
        tokio::spawn(async move {
            let mut c = Client::open(&addr).await?;
            c.consume_acking(&queue, n, 1000).await
        })
    });
    let started = Instant::now();
    publisher
        .publish_confirmed(&args.queue, args.messages, args.size, args.window)
        .await?;
    let published = started.elapsed();
    if let Some(consumer) = consumer {
        consumer.await??;
    }
    let total = started.elapsed();
    let rate = |d: std::time::Duration| args.messages as f64 / d.as_secs_f64();
    print!(
        "{} x {} B persistent, window {}: published+confirmed {:.0} msg/s",
        args.messages,
        args.size,
        args.window,
        rate(published)
    );
    if args.consume {
        print!(", end to end {:.0} msg/s", rate(total));
    }
    println!();
    Ok(())
}
