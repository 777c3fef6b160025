//! The admin plane: the gRPC service `warren.admin.v1.Admin` (tonic, with server reflection so
//! `grpcurl` works) on its own port. See `proto/proto/warren/admin/v1/admin.proto` for the
//! contract.
//!
//! - [`auth`]: every call carries a Basic credential of an `administrator` user, or the
//!   configured bearer token.
//! - [`service`]: the RPCs, thin: they check arguments and call the broker.
//! - [`statistics`], [`messages`], [`definitions_json`]: what the RPCs compute.
//! - [`convert`]: arguments, properties and field values to and from the wire types.
//! - [`status`]: refusals to gRPC status codes.

pub mod auth;
pub mod convert;
pub mod definitions_json;
pub mod messages;
pub mod service;
pub mod statistics;
pub mod status;

use crate::broker::Broker;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use warren_proto::admin::admin_server::AdminServer;

/// Largest request accepted (definitions imports and test messages can be large).
const REQUEST_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Serves the admin plane on `listener` until `shutdown` resolves. `amqp_listen` is the AMQP
/// address actually bound (reported by `Overview`).
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    amqp_listen: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Both reflection versions: grpcurl and other tools still ask for v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(warren_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(warren_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let admin_listen = listener.local_addr()?.to_string();
    let check = auth::Authenticator::new(Arc::clone(&broker));
    let service = service::AdminService::new(broker, amqp_listen, admin_listen);
    let admin = InterceptedService::new(
        AdminServer::new(service).max_decoding_message_size(REQUEST_BYTES_MAX),
        move |request| check.check(request),
    );
    // As on the cluster listener: TCP_NODELAY set on each accepted connection.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(admin)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
