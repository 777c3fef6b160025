//! A gRPC client of the admin plane for tests, with credentials attached to every call.

use base64::Engine;
use lapin::{Connection, ConnectionProperties};
use std::collections::HashMap;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use tonic::{Request, Status};
use warren_proto::admin::admin_client::AdminClient;

pub use warren_proto::admin::*;

/// Puts one `authorization` value on every request (or none).
#[derive(Clone, Debug)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    pub fn basic(user: &str, password: &str) -> Credentials {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Credentials(Some(
            format!("Basic {encoded}").parse().expect("ascii header"),
        ))
    }

    pub fn bearer(token: &str) -> Credentials {
        Credentials(Some(
            format!("Bearer {token}").parse().expect("ascii header"),
        ))
    }

    pub fn none() -> Credentials {
        Credentials(None)
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Admin = AdminClient<InterceptedService<Channel, Credentials>>;

/// A client of the admin plane at `url` (`http://host:port`).
pub async fn connect(url: &str, credentials: Credentials) -> Admin {
    let channel = Channel::from_shared(url.to_string())
        .expect("admin url")
        .connect()
        .await
        .expect("connecting to the admin plane");
    AdminClient::with_interceptor(channel, credentials)
}

/// A client as guest (an administrator, from loopback).
pub async fn guest(url: &str) -> Admin {
    connect(url, Credentials::basic("guest", "guest")).await
}

// ----- helpers of the admin tests -----

/// The default vhost.
pub fn vhost() -> String {
    "/".into()
}

pub async fn amqp(warren: &crate::Warren) -> Connection {
    Connection::connect(&warren.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

pub async fn declare_queue(a: &mut Admin, name: &str, args: &[(&str, &str)]) {
    a.declare_queue(DeclareQueueRequest {
        vhost: vhost(),
        name: name.into(),
        durable: true,
        auto_delete: false,
        arguments: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await
    .expect("declare queue");
}

pub async fn declare_exchange(a: &mut Admin, name: &str, kind: &str) {
    a.declare_exchange(DeclareExchangeRequest {
        vhost: vhost(),
        name: name.into(),
        r#type: kind.into(),
        durable: true,
        ..Default::default()
    })
    .await
    .expect("declare exchange");
}

pub async fn bind(a: &mut Admin, source: &str, queue: &str, key: &str) {
    a.bind(BindingSpec {
        vhost: vhost(),
        source: source.into(),
        destination_type: "queue".into(),
        destination: queue.into(),
        routing_key: key.into(),
        arguments: HashMap::new(),
    })
    .await
    .expect("bind");
}

pub async fn publish(a: &mut Admin, exchange: &str, key: &str, body: &str) -> PublishReply {
    a.publish(PublishRequest {
        vhost: vhost(),
        exchange: exchange.into(),
        routing_key: key.into(),
        properties: Some(MessageProperties {
            delivery_mode: 2,
            ..Default::default()
        }),
        body: body.as_bytes().to_vec(),
        wait_for_confirm: true,
    })
    .await
    .expect("publish")
    .into_inner()
}

pub async fn peek(a: &mut Admin, queue: &str, count: u32) -> Vec<String> {
    a.peek(PeekRequest {
        vhost: vhost(),
        queue: queue.into(),
        count,
        body_bytes_max: 0,
    })
    .await
    .expect("peek")
    .into_inner()
    .messages
    .into_iter()
    .map(|m| String::from_utf8(m.body).expect("utf-8 body"))
    .collect()
}

/// Takes (and acks) every message of a queue; the bodies.
pub async fn drain(a: &mut Admin, queue: &str) -> Vec<String> {
    a.get(GetRequest {
        vhost: vhost(),
        queue: queue.into(),
        count: 10_000,
        requeue: false,
        body_bytes_max: 0,
    })
    .await
    .expect("get")
    .into_inner()
    .messages
    .into_iter()
    .map(|m| String::from_utf8(m.body).expect("utf-8 body"))
    .collect()
}

pub async fn queue_info(a: &mut Admin, name: &str) -> QueueInfo {
    a.list_queues(ListRequest { vhost: vhost() })
        .await
        .expect("list queues")
        .into_inner()
        .queues
        .into_iter()
        .find(|q| q.name == name)
        .expect("queue listed")
}

/// The status code of a refused call.
pub fn code<T: std::fmt::Debug>(result: std::result::Result<T, tonic::Status>) -> Code {
    result.expect_err("refused").code()
}
