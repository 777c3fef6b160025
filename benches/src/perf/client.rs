//! A lean AMQP client for the load generator: one connection, one channel (1), Warren's codec.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use warren_broker::amqp::frame::{self, Frame};
use warren_broker::amqp::method::{self as m, Method};
use warren_broker::amqp::FieldTable;

pub const FRAME_MAX: usize = 131_072;

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: String,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

/// The reading half of a connection.
#[derive(Debug)]
pub struct Reader {
    socket: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    pub async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = frame::parse(&mut self.buf, FRAME_MAX)? {
                if let Frame::Method(_, Method::ChannelClose(c)) = &frame {
                    bail!(
                        "channel closed by the broker: {} {}",
                        c.reply_code,
                        c.reply_text
                    );
                }
                if let Frame::Method(_, Method::ConnectionClose(c)) = &frame {
                    bail!(
                        "connection closed by the broker: {} {}",
                        c.reply_code,
                        c.reply_text
                    );
                }
                return Ok(frame);
            }
            if self.socket.read_buf(&mut self.buf).await? == 0 {
                bail!("the broker closed the socket");
            }
        }
    }

    /// Whether a whole frame is already buffered (so the next `next` will not wait).
    pub fn has_buffered_frame(&self) -> bool {
        self.buf.len() >= 7 && {
            let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
            self.buf.len() >= size as usize + 8
        }
    }

    /// Reads until a method satisfying `want` arrives (skipping heartbeats and the like).
    pub async fn expect(
        &mut self,
        what: &str,
        want: impl Fn(&Method) -> bool,
    ) -> anyhow::Result<Method> {
        loop {
            let frame = self
                .next()
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if let Frame::Method(_, method) = frame {
                if want(&method) {
                    return Ok(method);
                }
            }
        }
    }
}

/// The writing half of a connection, with an output buffer (large bodies in it are referenced,
/// not copied, and go out with one vectored write per flush).
#[derive(Debug)]
pub struct Writer {
    socket: OwnedWriteHalf,
    pub out: frame::Output,
}

impl Writer {
    pub fn method(&mut self, method: impl Into<Method>) {
        frame::put_method(&mut self.out, 1, &method.into());
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        let pieces = self.out.take();
        let pieces: Vec<&Bytes> = pieces.iter().collect();
        frame::write_pieces(&mut self.socket, &pieces).await?;
        Ok(())
    }
}

/// Opens a connection and channel 1; heartbeats are disabled.
pub async fn connect(target: &Target) -> anyhow::Result<(Reader, Writer)> {
    let socket = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    socket.set_nodelay(true)?;
    let (read, write) = socket.into_split();
    let mut reader = Reader {
        socket: read,
        buf: BytesMut::with_capacity(1 << 20),
    };
    let mut writer = Writer {
        socket: write,
        out: frame::Output::default(),
    };
    writer.socket.write_all(b"AMQP\x00\x00\x09\x01").await?;
    reader
        .expect("connection.start", |m| {
            matches!(m, Method::ConnectionStart(_))
        })
        .await?;
    let response = format!("\0{}\0{}", target.user, target.password);
    frame::put_method(
        &mut writer.out,
        0,
        &m::ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: response.into_bytes().into(),
            locale: "en_US".into(),
        }
        .into(),
    );
    writer.flush().await?;
    reader
        .expect("connection.tune", |m| {
            matches!(m, Method::ConnectionTune(_))
        })
        .await?;
    frame::put_method(
        &mut writer.out,
        0,
        &m::ConnectionTuneOk {
            channel_max: 16,
            frame_max: FRAME_MAX as u32,
            heartbeat: 0,
        }
        .into(),
    );
    frame::put_method(
        &mut writer.out,
        0,
        &m::ConnectionOpen {
            virtual_host: target.vhost.as_str().into(),
            ..Default::default()
        }
        .into(),
    );
    writer.flush().await?;
    reader
        .expect("connection.open-ok", |m| {
            matches!(m, Method::ConnectionOpenOk(_))
        })
        .await?;
    writer.method(m::ChannelOpen::default());
    writer.flush().await?;
    reader
        .expect("channel.open-ok", |m| matches!(m, Method::ChannelOpenOk(_)))
        .await?;
    Ok((reader, writer))
}
