//! A minimal asynchronous AMQP client on Warren's own codec: enough to publish persistent
//! messages with confirms at full speed (client libraries cost more CPU than the broker), and to
//! consume. Used by the backlog test.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_broker::amqp::frame::{self, Frame};
use warren_broker::amqp::method::{self as m, Method};
use warren_broker::amqp::{BasicProperties, FieldTable};

const FRAME_MAX: u32 = 131_072;

#[derive(Debug)]
pub struct Client {
    socket: TcpStream,
    inbuf: BytesMut,
    pub out: BytesMut,
    /// Messages published (and confirmed) on channel 1 so far.
    published: u64,
}

impl Client {
    /// Connects as guest to vhost `/` and opens channel 1.
    pub async fn open(addr: &str) -> anyhow::Result<Client> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let mut c = Client {
            socket,
            inbuf: BytesMut::with_capacity(1 << 20),
            out: BytesMut::new(),
            published: 0,
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
            },
        );
        c.flush().await?;
        c.read().await?;
        c.send(
            0,
            m::ConnectionTuneOk {
                channel_max: 10,
                frame_max: FRAME_MAX,
                heartbeat: 0,
            },
        );
        c.send(
            0,
            m::ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            },
        );
        c.send(1, m::ChannelOpen::default());
        c.flush().await?;
        c.read().await?;
        c.read().await?;
        Ok(c)
    }

    pub fn send(&mut self, channel: u16, method: impl Into<Method>) {
        frame::put_method(&mut self.out, channel, &method.into());
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.socket.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    pub async fn read(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = frame::parse(&mut self.inbuf, 1 << 20)? {
                return Ok(f);
            }
            if self.socket.read_buf(&mut self.inbuf).await? == 0 {
                anyhow::bail!("the broker closed the connection");
            }
        }
    }

    /// Declares a durable queue and switches the channel to confirm mode.
    pub async fn durable_queue_with_confirms(&mut self, queue: &str) -> anyhow::Result<()> {
        self.queue_with_confirms(queue, Default::default()).await
    }

    /// Declares a durable queue with `arguments` (`x-queue-type`, ...) and switches the
    /// channel to confirm mode.
    pub async fn queue_with_confirms(
        &mut self,
        queue: &str,
        arguments: warren_broker::amqp::FieldTable,
    ) -> anyhow::Result<()> {
        self.send(
            1,
            m::QueueDeclare {
                queue: queue.into(),
                durable: true,
                arguments,
                ..Default::default()
            },
        );
        self.send(1, m::ConfirmSelect::default());
        self.flush().await?;
        self.read().await?;
        self.read().await?;
        Ok(())
    }

    /// Publishes `count` persistent messages of `size` octets to `queue` through the default
    /// exchange, keeping at most `window` unconfirmed; returns once all are confirmed.
    pub async fn publish_confirmed(
        &mut self,
        queue: &str,
        count: u64,
        size: usize,
        window: u64,
    ) -> anyhow::Result<()> {
        let body = vec![b'x'; size];
        let properties = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        }
        .encode();
        let publish: Method = m::BasicPublish {
            routing_key: queue.into(),
            ..Default::default()
        }
        .into();
        // Confirm sequence numbers continue across calls on the same channel.
        let base = self.published;
        let (mut sent, mut confirmed) = (0u64, 0u64);
        while confirmed < count {
            while sent < count && sent - confirmed < window {
                frame::put_content(
                    &mut self.out,
                    1,
                    &publish,
                    &properties,
                    &body,
                    FRAME_MAX as usize,
                );
                sent += 1;
            }
            self.flush().await?;
            match self.read().await? {
                Frame::Method(_, Method::BasicAck(a)) => {
                    let tag = a.delivery_tag - base;
                    confirmed = if a.multiple { tag } else { confirmed.max(tag) };
                }
                Frame::Method(_, Method::BasicNack(n)) => anyhow::bail!("nack {}", n.delivery_tag),
                _ => {}
            }
        }
        self.published += count;
        Ok(())
    }
}
