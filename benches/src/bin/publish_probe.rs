//! `warren-publish-probe`: a minimal AMQP publisher on Warren's own codec, for measuring the
//! broker without a client library's overhead: persistent messages with publisher confirms and a
//! window of unconfirmed publishes, plus an optional consumer acking each message. Prints msg/s.
//! (The full load generator with latency percentiles and JSON output is `warren-perf`, issue #6.)

use bytes::BytesMut;
use clap::Parser;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_broker::amqp::frame::{self, Frame};
use warren_broker::amqp::method::{self as m, Method};
use warren_broker::amqp::{BasicProperties, FieldTable};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 100)]
    window: u64,
    #[arg(long, default_value = "probe")]
    queue: String,
    /// Also consume (and ack) on a second connection.
    #[arg(long)]
    consume: bool,
}

struct Conn {
    socket: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let mut c = Conn {
            socket,
            inbuf: BytesMut::with_capacity(1 << 20),
            out: BytesMut::new(),
        };
        c.socket.write_all(b"AMQP\x00\x00\x09\x01").await?;
        c.read().await?;
        c.send(
            0,
            m::ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: bytes::Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            }
            .into(),
        );
        c.flush().await?;
        c.read().await?;
        c.send(
            0,
            m::ConnectionTuneOk {
                channel_max: 10,
                frame_max: 131_072,
                heartbeat: 0,
            }
            .into(),
        );
        c.send(
            0,
            m::ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            }
            .into(),
        );
        c.send(1, m::ChannelOpen::default().into());
        c.flush().await?;
        c.read().await?;
        c.read().await?;
        Ok(c)
    }

    fn send(&mut self, channel: u16, method: Method) {
        frame::put_method(&mut self.out, channel, &method);
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.socket.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = frame::parse(&mut self.inbuf, 1 << 20)? {
                if std::env::var("PROBE_DEBUG").is_ok() {
                    eprintln!("<- {f:?}");
                }
                return Ok(f);
            }
            if self.socket.read_buf(&mut self.inbuf).await? == 0 {
                anyhow::bail!("closed");
            }
        }
    }
}

async fn consume(addr: String, queue: String, total: u64) -> anyhow::Result<()> {
    let mut c = Conn::open(&addr).await?;
    c.send(
        1,
        m::BasicQos {
            prefetch_count: 1000,
            ..Default::default()
        }
        .into(),
    );
    c.send(
        1,
        m::BasicConsume {
            queue: queue.as_str().into(),
            ..Default::default()
        }
        .into(),
    );
    c.flush().await?;
    let mut got = 0;
    while got < total {
        if let Frame::Method(_, Method::BasicDeliver(d)) = c.read().await? {
            got += 1;
            c.send(
                1,
                m::BasicAck {
                    delivery_tag: d.delivery_tag,
                    multiple: false,
                }
                .into(),
            );
            if got % 64 == 0 || got == total {
                c.flush().await?;
            }
        }
    }
    c.flush().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut c = Conn::open(&args.addr).await?;
    c.send(
        1,
        m::QueueDeclare {
            queue: args.queue.as_str().into(),
            durable: true,
            ..Default::default()
        }
        .into(),
    );
    c.send(1, m::ConfirmSelect::default().into());
    c.flush().await?;
    c.read().await?;
    c.read().await?;
    let consumer = args.consume.then(|| {
        tokio::spawn(consume(
            args.addr.clone(),
            args.queue.clone(),
            args.messages,
        ))
    });
    let body = vec![b'x'; args.size];
    let properties = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
    .encode();
    let publish: Method = m::BasicPublish {
        routing_key: args.queue.as_str().into(),
        ..Default::default()
    }
    .into();
    let started = Instant::now();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    while confirmed < args.messages {
        while sent < args.messages && sent - confirmed < args.window {
            frame::put_content(&mut c.out, 1, &publish, &properties, &body, 131_072);
            sent += 1;
        }
        c.flush().await?;
        match c.read().await? {
            Frame::Method(_, Method::BasicAck(a)) => {
                confirmed = if a.multiple {
                    a.delivery_tag
                } else {
                    confirmed.max(a.delivery_tag)
                }
            }
            Frame::Method(_, Method::BasicNack(n)) => anyhow::bail!("nack {}", n.delivery_tag),
            _ => {}
        }
    }
    let publish_elapsed = started.elapsed();
    if let Some(consumer) = consumer {
        consumer.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "{} x {} B persistent, window {}: published+confirmed {:.0} msg/s{}",
        args.messages,
        args.size,
        args.window,
        args.messages as f64 / publish_elapsed.as_secs_f64(),
        if args.consume {
            format!(
                ", end to end {:.0} msg/s",
                args.messages as f64 / elapsed.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
