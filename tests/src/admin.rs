//! A gRPC client of the admin plane for tests, with credentials attached to every call.

use base64::Engine;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
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
