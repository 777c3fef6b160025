//! Who may use the admin plane: a user tagged `administrator` (HTTP Basic credentials in the
//! `authorization` metadata, subject to `loopback_users` as for AMQP), or whoever presents the
//! configured token (`authorization: Bearer <token>`). Anything else gets UNAUTHENTICATED, a
//! known user without the tag PERMISSION_DENIED — never data.

use crate::broker::Broker;
use base64::Engine;
use std::sync::Arc;
use tonic::{Request, Status};

#[derive(Debug, Clone)]
pub struct Authenticator {
    broker: Arc<Broker>,
}

impl Authenticator {
    pub fn new(broker: Arc<Broker>) -> Authenticator {
        Authenticator { broker }
    }

    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let peer_is_loopback = request.remote_addr().is_none_or(|a| a.ip().is_loopback());
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "credentials required: authorization: Basic base64(user:password) or Bearer <token>",
                )
            })?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            let expected = self.broker.config.admin.token.as_deref();
            if expected.is_some_and(|t| {
                !t.is_empty() && constant_time_eq(t.as_bytes(), token.trim().as_bytes())
            }) {
                return Ok(request);
            }
            tracing::warn!("admin call with a wrong token refused");
            return Err(Status::unauthenticated("invalid token"));
        }
        let Some(encoded) = header.strip_prefix("Basic ") else {
            return Err(Status::unauthenticated("unsupported authorization scheme"));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        let known = self.broker.user(user);
        if !known.as_ref().is_some_and(|u| u.check_password(password)) {
            tracing::warn!(%user, "admin authentication failed");
            return Err(Status::unauthenticated("invalid credentials"));
        }
        let loopback_only = self
            .broker
            .config
            .default_user
            .loopback_users
            .iter()
            .any(|u| u == user);
        if loopback_only && !peer_is_loopback {
            return Err(Status::unauthenticated(format!(
                "user '{user}' can only connect via localhost"
            )));
        }
        let admin = known.is_some_and(|u| u.tags.iter().any(|t| t == "administrator"));
        if !admin {
            return Err(Status::permission_denied(format!(
                "user '{user}' is not tagged administrator"
            )));
        }
        Ok(request)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
