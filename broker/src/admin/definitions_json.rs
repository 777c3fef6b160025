//! Definitions in RabbitMQ's JSON format (`rabbitmqctl export_definitions` /
//! `import_definitions`, the management API's `/api/definitions`): vhosts, users, permissions,
//! exchanges, queues and bindings, so users can move between the two brokers.
//!
//! Export writes what is durable (as RabbitMQ does): durable exchanges other than the standard
//! ones, durable non-exclusive queues, and bindings between exported or standard entities.
//! Import applies vhosts, users, permissions, exchanges, queues, then bindings; each item is
//! declared as a client would, so an existing equivalent item is left alone and an
//! inequivalent one fails the import with FAILED_PRECONDITION naming it.

use super::convert::{table_from_json, table_to_json};
use super::status::from_refusal;
use crate::auth::{Permission, User};
use crate::broker::{Broker, ExchangeDeclare, QueueDeclare};
use crate::delivery::ConnId;
use crate::exchange::{Binding, Destination};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use tonic::Status;
use warren_proto::admin as proto;

/// The only password hashing both brokers share.
const HASHING: &str = "rabbit_password_hashing_sha256";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DefinitionsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warren_version: Option<String>,
    #[serde(default)]
    pub users: Vec<UserDoc>,
    #[serde(default)]
    pub vhosts: Vec<VhostDoc>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeDoc>,
    #[serde(default)]
    pub queues: Vec<QueueDoc>,
    #[serde(default)]
    pub bindings: Vec<BindingDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserDoc {
    pub name: String,
    pub password_hash: String,
    #[serde(default)]
    pub hashing_algorithm: Option<String>,
    /// A list since RabbitMQ 3.9; a comma-separated string before.
    #[serde(default)]
    pub tags: Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VhostDoc {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExchangeDoc {
    pub name: String,
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueDoc {
    pub name: String,
    pub vhost: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BindingDoc {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Value,
}

fn yes() -> bool {
    true
}

fn tags_of(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn is_standard_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

pub fn export(broker: &Broker) -> DefinitionsDoc {
    let mut doc = DefinitionsDoc {
        warren_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        ..DefinitionsDoc::default()
    };
    for u in broker.users() {
        doc.users.push(UserDoc {
            name: u.name,
            password_hash: u.password_hash,
            hashing_algorithm: Some(HASHING.into()),
            tags: Value::Array(u.tags.into_iter().map(Value::String).collect()),
        });
    }
    doc.permissions = broker.permissions();
    let mut names = broker.vhost_names();
    names.sort();
    for name in names {
        let Some(vhost) = broker.vhost(&name) else {
            continue;
        };
        doc.vhosts.push(VhostDoc { name: name.clone() });
        let state = vhost.read();
        let mut exchanges: Vec<_> = state
            .exchanges
            .values()
            .filter(|x| x.decl.durable && !is_standard_exchange(x.name()))
            .collect();
        exchanges.sort_by(|a, b| a.name().cmp(b.name()));
        let exported_exchange = |n: &str| state.exchanges.get(n).is_some_and(|x| x.decl.durable);
        let mut queues: Vec<_> = state
            .queues
            .values()
            .filter(|q| q.decl.stream.is_some())
            .collect();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        let exported_queue = |n: &str| state.queues.get(n).is_some_and(|q| q.decl.stream.is_some());
        for x in &exchanges {
            doc.exchanges.push(ExchangeDoc {
                name: x.name().to_string(),
                vhost: name.clone(),
                kind: x.decl.kind.clone(),
                durable: true,
                auto_delete: x.decl.auto_delete,
                internal: x.decl.internal,
                arguments: table_to_json(&x.decl.arguments()),
            });
        }
        for q in &queues {
            doc.queues.push(QueueDoc {
                name: q.name().to_string(),
                vhost: name.clone(),
                durable: true,
                auto_delete: q.decl.auto_delete,
                arguments: table_to_json(&q.decl.arguments()),
            });
        }
        let mut sources: Vec<_> = state.exchanges.values().collect();
        sources.sort_by(|a, b| a.name().cmp(b.name()));
        for x in sources {
            if !exported_exchange(x.name()) {
                continue;
            }
            for b in x.bindings() {
                let (kind, exported) = match &b.destination {
                    Destination::Queue(q) => ("queue", exported_queue(q)),
                    Destination::Exchange(e) => ("exchange", exported_exchange(e)),
                };
                if !exported {
                    continue;
                }
                doc.bindings.push(BindingDoc {
                    source: b.source.clone(),
                    vhost: name.clone(),
                    destination: b.destination.name().to_string(),
                    destination_type: kind.into(),
                    routing_key: b.routing_key.clone(),
                    arguments: table_to_json(&b.arguments()),
                });
            }
        }
    }
    doc
}

pub async fn import(
    broker: &Arc<Broker>,
    json: &str,
) -> Result<proto::ImportDefinitionsReply, Status> {
    let doc: DefinitionsDoc = serde_json::from_str(json)
        .map_err(|e| Status::invalid_argument(format!("definitions JSON: {e}")))?;
    let mut reply = proto::ImportDefinitionsReply::default();
    // Check what can be checked before changing anything.
    for u in &doc.users {
        if let Some(algorithm) = &u.hashing_algorithm {
            if algorithm != HASHING {
                return Err(Status::invalid_argument(format!(
                    "user '{}': password hashing '{algorithm}' is not supported (only {HASHING})",
                    u.name
                )));
            }
        }
    }
    for d in &doc.bindings {
        if d.destination_type != "queue" && d.destination_type != "exchange" {
            return Err(Status::invalid_argument(format!(
                "binding from '{}': destination_type '{}' is neither queue nor exchange",
                d.source, d.destination_type
            )));
        }
    }
    let context = |what: String| {
        move |status: Status| Status::new(status.code(), format!("{what}: {}", status.message()))
    };
    for v in &doc.vhosts {
        broker
            .add_vhost(&v.name)
            .await
            .map_err(from_refusal)
            .map_err(context(format!("vhost '{}'", v.name)))?;
        reply.vhosts += 1;
    }
    for u in doc.users {
        let name = u.name.clone();
        broker
            .put_user(User {
                name: u.name,
                password_hash: u.password_hash,
                tags: tags_of(&u.tags),
            })
            .await
            .map_err(from_refusal)
            .map_err(context(format!("user '{name}'")))?;
        reply.users += 1;
    }
    for p in doc.permissions {
        let what = format!("permissions of '{}' in vhost '{}'", p.user, p.vhost);
        broker
            .set_permission(p)
            .await
            .map_err(from_refusal)
            .map_err(context(what))?;
        reply.permissions += 1;
    }
    for x in doc.exchanges {
        let what = format!("exchange '{}' in vhost '{}'", x.name, x.vhost);
        broker
            .exchange_declare(
                &x.vhost,
                ExchangeDeclare {
                    name: x.name,
                    kind: x.kind,
                    passive: false,
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: table_from_json(&x.arguments),
                },
            )
            .await
            .map_err(from_refusal)
            .map_err(context(what))?;
        reply.exchanges += 1;
    }
    for q in doc.queues {
        let what = format!("queue '{}' in vhost '{}'", q.name, q.vhost);
        broker
            .queue_declare(
                &q.vhost,
                ConnId(0),
                QueueDeclare {
                    name: q.name,
                    passive: false,
                    durable: q.durable,
                    exclusive: false,
                    auto_delete: q.auto_delete,
                    arguments: table_from_json(&q.arguments),
                },
            )
            .await
            .map_err(from_refusal)
            .map_err(context(what))?;
        reply.queues += 1;
    }
    for b in doc.bindings {
        let what = format!(
            "binding from '{}' to {} '{}' in vhost '{}'",
            b.source, b.destination_type, b.destination, b.vhost
        );
        let destination = if b.destination_type == "queue" {
            Destination::Queue(b.destination)
        } else {
            Destination::Exchange(b.destination)
        };
        broker
            .bind(
                &b.vhost,
                ConnId(0),
                Binding {
                    source: b.source,
                    destination,
                    routing_key: b.routing_key,
                    arguments: table_from_json(&b.arguments).encode().to_vec(),
                },
            )
            .await
            .map_err(from_refusal)
            .map_err(context(what))?;
        reply.bindings += 1;
    }
    tracing::info!(?reply, "definitions imported");
    Ok(reply)
}
