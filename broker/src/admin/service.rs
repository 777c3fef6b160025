//! `warren.admin.v1.Admin`: each RPC checks its arguments, calls the broker, and maps the
//! answer (refusals become status codes, see [`super::status`]).

use super::convert::table_from_text;
use super::status::OrStatus;
use super::{definitions_json, messages, statistics};
use crate::auth::{Permission, User};
use crate::broker::{Added, Broker, ExchangeDeclare, QueueDeclare};
use crate::delivery::ConnId;
use crate::exchange::{Binding, Destination};
use crate::queue::QueueCommand;
use crate::vhost::{Detour, TapSource};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use warren_proto::admin::admin_server::Admin;
use warren_proto::admin::TapSpec as TapSpec_;
use warren_proto::admin::*;

/// The connection id the admin plane declares with: no client connection has it, so it owns
/// no exclusive queue.
const ADMIN_CONN: ConnId = ConnId(0);

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug)]
pub struct AdminService {
    broker: Arc<Broker>,
    /// The addresses actually bound (the configured ones may have port 0).
    amqp_listen: String,
    admin_listen: String,
}

impl AdminService {
    pub fn new(broker: Arc<Broker>, amqp_listen: String, admin_listen: String) -> AdminService {
        AdminService {
            broker,
            amqp_listen,
            admin_listen,
        }
    }
}

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

fn required(what: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    if value.len() > 255 {
        return Err(Status::invalid_argument(format!(
            "{what} longer than 255 bytes"
        )));
    }
    Ok(())
}

/// The vhost of a request: "/" when empty.
fn vhost_of(v: &str) -> &str {
    if v.is_empty() {
        "/"
    } else {
        v
    }
}

fn destination(kind: &str, name: &str) -> Result<Destination, Status> {
    required("destination", name)?;
    match kind {
        "queue" | "" => Ok(Destination::Queue(name.to_string())),
        "exchange" => Ok(Destination::Exchange(name.to_string())),
        other => Err(Status::invalid_argument(format!(
            "destination_type '{other}' is neither queue nor exchange"
        ))),
    }
}

fn binding(spec: &BindingSpec) -> Result<Binding, Status> {
    required("source", &spec.source)?;
    Ok(Binding {
        source: spec.source.clone(),
        destination: destination(&spec.destination_type, &spec.destination)?,
        routing_key: spec.routing_key.clone(),
        arguments: table_from_text(&spec.arguments).encode().to_vec(),
    })
}

/// A membership change's failure as a gRPC status.
fn membership_status(e: crate::membership::MembershipError) -> Status {
    use crate::membership::MembershipError as E;
    match e {
        E::NotClustered | E::Precondition(_) => Status::failed_precondition(e.to_string()),
        E::Invalid(_) => Status::invalid_argument(e.to_string()),
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

impl AdminService {
    /// The nodes, this one with the listeners this service knows.
    async fn nodes(&self) -> NodeList {
        let mut nodes = statistics::list_nodes(&self.broker, &self.admin_listen).await;
        let me = self.broker.cluster_node().map_or(0, |n| n.id());
        for n in &mut nodes.nodes {
            if n.node_id == me {
                n.amqp_listen = self.amqp_listen.clone();
            }
        }
        nodes
    }

    async fn pause(&self, q: QueueRef, paused: bool) -> Reply<Empty> {
        let queue = messages::queue(&self.broker, vhost_of(&q.vhost), &q.name)?;
        queue
            .ask(|reply| QueueCommand::Pause { paused, reply })
            .await
            .map_err(|_| Status::not_found("the queue was deleted"))?;
        ok(Empty {})
    }

    async fn pause_consumer(&self, c: ConsumerRef, paused: bool) -> Reply<Empty> {
        required("consumer tag", &c.tag)?;
        let queue = messages::queue(&self.broker, vhost_of(&c.vhost), &c.queue)?;
        let tag = c.tag.clone();
        let n = queue
            .ask(|reply| QueueCommand::PauseConsumer { tag, paused, reply })
            .await
            .map_err(|_| Status::not_found("the queue was deleted"))?;
        if n == 0 {
            return Err(Status::not_found(format!(
                "no consumer '{}' on queue '{}'",
                c.tag, c.queue
            )));
        }
        queue.try_send(QueueCommand::Kick).ok();
        ok(Empty {})
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn overview(&self, _: Request<OverviewRequest>) -> Reply<OverviewReply> {
        let mut reply = statistics::overview(&self.broker);
        reply.amqp_listen = self.amqp_listen.clone();
        ok(reply)
    }

    async fn list_queues(&self, r: Request<ListRequest>) -> Reply<QueueList> {
        ok(statistics::list_queues(&self.broker, &r.into_inner().vhost))
    }

    async fn list_exchanges(&self, r: Request<ListRequest>) -> Reply<ExchangeList> {
        ok(statistics::list_exchanges(
            &self.broker,
            &r.into_inner().vhost,
        ))
    }

    async fn list_bindings(&self, r: Request<ListRequest>) -> Reply<BindingList> {
        ok(statistics::list_bindings(
            &self.broker,
            &r.into_inner().vhost,
        ))
    }

    async fn list_connections(&self, r: Request<ListRequest>) -> Reply<ConnectionList> {
        ok(statistics::list_connections(
            &self.broker,
            &r.into_inner().vhost,
        ))
    }

    async fn list_channels(&self, r: Request<ListRequest>) -> Reply<ChannelList> {
        ok(statistics::list_channels(&self.broker, &r.into_inner().vhost).await)
    }

    async fn list_consumers(&self, r: Request<ListRequest>) -> Reply<ConsumerList> {
        ok(statistics::list_consumers(&self.broker, &r.into_inner().vhost).await)
    }

    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Reply<NodeList> {
        ok(self.nodes().await)
    }

    async fn add_member(&self, r: Request<AddMemberRequest>) -> Reply<NodeList> {
        let r = r.into_inner();
        required("address", &r.address)?;
        self.broker
            .add_member(r.node_id, &r.address)
            .await
            .map_err(membership_status)?;
        ok(self.nodes().await)
    }

    async fn remove_member(&self, r: Request<RemoveMemberRequest>) -> Reply<NodeList> {
        let r = r.into_inner();
        self.broker
            .remove_member(r.node_id)
            .await
            .map_err(membership_status)?;
        ok(self.nodes().await)
    }

    async fn repair_replica(&self, r: Request<RepairReplicaRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        let vhost = vhost_of(&r.vhost);
        messages::queue(&self.broker, vhost, &r.queue)?;
        self.broker
            .repair_replica(vhost, &r.queue, r.node)
            .await
            .map_err(membership_status)?;
        ok(Empty {})
    }

    async fn transfer_leadership(&self, r: Request<TransferLeadershipRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        let vhost = vhost_of(&r.vhost);
        messages::queue(&self.broker, vhost, &r.queue)?;
        let (Some(_), Some(q)) = (
            self.broker.cluster_node(),
            self.broker.quorum_queue(vhost, &r.queue),
        ) else {
            return Err(Status::failed_precondition(format!(
                "queue '{}' in vhost '{vhost}' is not a quorum queue of a cluster",
                r.queue
            )));
        };
        if !q.decl.replicas.contains(&r.node) {
            return Err(Status::invalid_argument(format!(
                "node {} holds no replica of queue '{}' (replicas: {:?})",
                r.node, r.queue, q.decl.replicas
            )));
        }
        self.broker
            .transfer_leadership(vhost, &r.queue, r.node)
            .await
            .map_err(Status::unavailable)?;
        ok(Empty {})
    }

    async fn declare_exchange(&self, r: Request<DeclareExchangeRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        required("exchange name", &r.name)?;
        self.broker
            .exchange_declare(
                vhost_of(&r.vhost),
                ExchangeDeclare {
                    name: r.name,
                    kind: r.r#type,
                    passive: false,
                    durable: r.durable,
                    auto_delete: r.auto_delete,
                    internal: r.internal,
                    arguments: table_from_text(&r.arguments),
                },
            )
            .await
            .or_status()?;
        ok(Empty {})
    }

    async fn delete_exchange(&self, r: Request<DeleteExchangeRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        required("exchange name", &r.name)?;
        let vhost = vhost_of(&r.vhost);
        let exists = self
            .broker
            .vhost(vhost)
            .is_some_and(|v| v.read().exchanges.contains_key(&r.name));
        if !exists {
            return Err(Status::not_found(format!(
                "no exchange '{}' in vhost '{vhost}'",
                r.name
            )));
        }
        self.broker
            .exchange_delete(vhost, &r.name, r.if_unused)
            .await
            .or_status()?;
        ok(Empty {})
    }

    async fn declare_queue(&self, r: Request<DeclareQueueRequest>) -> Reply<DeclareQueueReply> {
        let r = r.into_inner();
        if r.name.len() > 255 {
            return Err(Status::invalid_argument("queue name longer than 255 bytes"));
        }
        let (name, ready, consumers) = self
            .broker
            .queue_declare(
                vhost_of(&r.vhost),
                ADMIN_CONN,
                QueueDeclare {
                    name: r.name,
                    passive: false,
                    durable: r.durable,
                    exclusive: false,
                    auto_delete: r.auto_delete,
                    arguments: table_from_text(&r.arguments),
                },
            )
            .await
            .or_status()?;
        ok(DeclareQueueReply {
            name,
            ready,
            consumers,
        })
    }

    async fn delete_queue(&self, r: Request<DeleteQueueRequest>) -> Reply<MessageCount> {
        let r = r.into_inner();
        required("queue name", &r.name)?;
        let vhost = vhost_of(&r.vhost);
        messages::queue(&self.broker, vhost, &r.name)?;
        let messages = self
            .broker
            .queue_delete(vhost, ADMIN_CONN, &r.name, r.if_unused, r.if_empty)
            .await
            .or_status()?;
        ok(MessageCount { messages })
    }

    async fn purge_queue(&self, r: Request<QueueRef>) -> Reply<MessageCount> {
        let r = r.into_inner();
        let vhost = vhost_of(&r.vhost);
        let queue = messages::queue(&self.broker, vhost, &r.name)?;
        let messages = queue
            .ask(|reply| QueueCommand::Purge { reply })
            .await
            .map_err(|_| Status::not_found("the queue was deleted"))?;
        ok(MessageCount { messages })
    }

    async fn bind(&self, r: Request<BindingSpec>) -> Reply<Empty> {
        let r = r.into_inner();
        let b = binding(&r)?;
        self.broker
            .bind(vhost_of(&r.vhost), ADMIN_CONN, b)
            .await
            .or_status()?;
        ok(Empty {})
    }

    async fn unbind(&self, r: Request<BindingSpec>) -> Reply<Empty> {
        let r = r.into_inner();
        let b = binding(&r)?;
        let vhost = vhost_of(&r.vhost);
        let exists = self.broker.vhost(vhost).is_some_and(|v| {
            v.read()
                .exchanges
                .get(&b.source)
                .is_some_and(|x| x.bindings().contains(&b))
        });
        if !exists {
            return Err(Status::not_found(format!(
                "no such binding from '{}' to '{}' in vhost '{vhost}'",
                b.source,
                b.destination.name()
            )));
        }
        self.broker.unbind(vhost, ADMIN_CONN, b).await.or_status()?;
        ok(Empty {})
    }

    async fn list_vhosts(&self, _: Request<ListVhostsRequest>) -> Reply<VhostList> {
        ok(statistics::list_vhosts(&self.broker))
    }

    async fn add_vhost(&self, r: Request<VhostRef>) -> Reply<Empty> {
        let name = r.into_inner().name;
        required("vhost name", &name)?;
        match self.broker.add_vhost(&name).await.or_status()? {
            Added::Created => ok(Empty {}),
            Added::AlreadyThere => Err(Status::already_exists(format!(
                "vhost '{name}' already exists"
            ))),
        }
    }

    async fn delete_vhost(&self, r: Request<VhostRef>) -> Reply<Empty> {
        let name = r.into_inner().name;
        required("vhost name", &name)?;
        self.broker.delete_vhost(&name).await.or_status()?;
        ok(Empty {})
    }

    async fn list_users(&self, _: Request<ListUsersRequest>) -> Reply<UserList> {
        let users = self
            .broker
            .users()
            .into_iter()
            .map(|u| UserInfo {
                name: u.name,
                tags: u.tags,
            })
            .collect();
        ok(UserList { users })
    }

    async fn put_user(&self, r: Request<PutUserRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        required("user name", &r.name)?;
        let user = match (r.password.is_empty(), r.password_hash.is_empty()) {
            (false, true) => User::with_password(&r.name, &r.password, r.tags),
            (true, false) => User {
                name: r.name,
                password_hash: r.password_hash,
                tags: r.tags,
            },
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of password and password_hash",
                ))
            }
        };
        self.broker.put_user(user).await.or_status()?;
        ok(Empty {})
    }

    async fn delete_user(&self, r: Request<UserRef>) -> Reply<Empty> {
        let name = r.into_inner().name;
        required("user name", &name)?;
        self.broker.delete_user(&name).await.or_status()?;
        ok(Empty {})
    }

    async fn list_permissions(&self, r: Request<ListPermissionsRequest>) -> Reply<PermissionList> {
        let r = r.into_inner();
        let permissions = self
            .broker
            .permissions()
            .into_iter()
            .filter(|p| r.vhost.is_empty() || p.vhost == r.vhost)
            .filter(|p| r.user.is_empty() || p.user == r.user)
            .map(|p| PermissionInfo {
                user: p.user,
                vhost: p.vhost,
                configure: p.configure,
                write: p.write,
                read: p.read,
            })
            .collect();
        ok(PermissionList { permissions })
    }

    async fn set_permissions(&self, r: Request<PermissionInfo>) -> Reply<Empty> {
        let r = r.into_inner();
        required("user", &r.user)?;
        self.broker
            .set_permission(Permission {
                user: r.user,
                vhost: vhost_of(&r.vhost).to_string(),
                configure: r.configure,
                write: r.write,
                read: r.read,
            })
            .await
            .or_status()?;
        ok(Empty {})
    }

    async fn clear_permissions(&self, r: Request<ClearPermissionsRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        required("user", &r.user)?;
        self.broker
            .clear_permission(&r.user, vhost_of(&r.vhost))
            .await
            .or_status()?;
        ok(Empty {})
    }

    async fn close_connection(&self, r: Request<CloseConnectionRequest>) -> Reply<Empty> {
        let r = r.into_inner();
        let reason = if r.reason.is_empty() {
            "closed via the admin plane".to_string()
        } else {
            r.reason
        };
        if !self.broker.close_connection(ConnId(r.id), &reason) {
            return Err(Status::not_found(format!("no connection {}", r.id)));
        }
        ok(Empty {})
    }

    async fn publish(&self, r: Request<PublishRequest>) -> Reply<PublishReply> {
        let mut r = r.into_inner();
        r.vhost = vhost_of(&r.vhost).to_string();
        ok(messages::publish(&self.broker, r).await?)
    }

    async fn peek(&self, r: Request<PeekRequest>) -> Reply<MessageList> {
        let mut r = r.into_inner();
        r.vhost = vhost_of(&r.vhost).to_string();
        ok(messages::peek(&self.broker, r).await?)
    }

    async fn get(&self, r: Request<GetRequest>) -> Reply<MessageList> {
        let mut r = r.into_inner();
        r.vhost = vhost_of(&r.vhost).to_string();
        ok(messages::get(&self.broker, r).await?)
    }

    async fn move_messages(&self, r: Request<MoveMessagesRequest>) -> Reply<MessageCount> {
        let mut r = r.into_inner();
        r.vhost = vhost_of(&r.vhost).to_string();
        ok(messages::move_messages(&self.broker, r).await?)
    }

    async fn pause_queue(&self, r: Request<QueueRef>) -> Reply<Empty> {
        self.pause(r.into_inner(), true).await
    }

    async fn resume_queue(&self, r: Request<QueueRef>) -> Reply<Empty> {
        self.pause(r.into_inner(), false).await
    }

    async fn pause_consumer(&self, r: Request<ConsumerRef>) -> Reply<Empty> {
        AdminService::pause_consumer(self, r.into_inner(), true).await
    }

    async fn resume_consumer(&self, r: Request<ConsumerRef>) -> Reply<Empty> {
        AdminService::pause_consumer(self, r.into_inner(), false).await
    }

    async fn start_tap(&self, r: Request<TapSpec_>) -> Reply<TapInfo> {
        let spec = r.into_inner();
        required("source", &spec.source)?;
        required("target exchange", &spec.target_exchange)?;
        let source = match spec.source_type.as_str() {
            "exchange" | "" => TapSource::Exchange(spec.source.clone()),
            "queue" => TapSource::Queue(spec.source.clone()),
            other => {
                return Err(Status::invalid_argument(format!(
                    "source_type '{other}' is neither exchange nor queue"
                )))
            }
        };
        let vhost = vhost_of(&spec.vhost).to_string();
        let id = self
            .broker
            .start_tap(
                &vhost,
                crate::broker::TapSpec {
                    source,
                    target: spec.target_exchange.clone(),
                    sample_every: spec.sample_every.max(1).into(),
                },
            )
            .or_status()?;
        ok(TapInfo {
            id,
            spec: Some(TapSpec_ { vhost, ..spec }),
            copied: 0,
            seen: 0,
        })
    }

    async fn stop_tap(&self, r: Request<TapRef>) -> Reply<Empty> {
        self.broker.stop_tap(r.into_inner().id).or_status()?;
        ok(Empty {})
    }

    async fn list_taps(&self, r: Request<ListRequest>) -> Reply<TapList> {
        let filter = r.into_inner().vhost;
        let filter = (!filter.is_empty()).then_some(filter.as_str());
        let taps = self
            .broker
            .taps(filter)
            .into_iter()
            .map(|t| {
                let (source_type, source) = match t.spec.source {
                    TapSource::Exchange(x) => ("exchange", x),
                    TapSource::Queue(q) => ("queue", q),
                };
                TapInfo {
                    id: t.id,
                    spec: Some(TapSpec_ {
                        vhost: t.vhost,
                        source_type: source_type.into(),
                        source,
                        target_exchange: t.spec.target,
                        sample_every: t.spec.sample_every.min(u32::MAX.into()) as u32,
                    }),
                    copied: t.copied,
                    seen: t.seen,
                }
            })
            .collect();
        ok(TapList { taps })
    }

    async fn start_detour(&self, r: Request<DetourSpec>) -> Reply<Empty> {
        let r = r.into_inner();
        required("source", &r.source)?;
        required("via exchange", &r.via_exchange)?;
        let detour = Detour {
            source: r.source.clone(),
            destination: destination(&r.destination_type, &r.destination)?,
            via: r.via_exchange,
        };
        match self
            .broker
            .start_detour(vhost_of(&r.vhost), detour)
            .await
            .or_status()?
        {
            Added::Created => ok(Empty {}),
            Added::AlreadyThere => Err(Status::already_exists(format!(
                "the route from '{}' to '{}' already takes this detour",
                r.source, r.destination
            ))),
        }
    }

    async fn stop_detour(&self, r: Request<DetourRef>) -> Reply<Empty> {
        let r = r.into_inner();
        required("source", &r.source)?;
        let d = destination(&r.destination_type, &r.destination)?;
        self.broker
            .stop_detour(vhost_of(&r.vhost), &r.source, &d)
            .await
            .or_status()?;
        ok(Empty {})
    }

    async fn list_detours(&self, r: Request<ListRequest>) -> Reply<DetourList> {
        let filter = r.into_inner().vhost;
        let filter = (!filter.is_empty()).then_some(filter.as_str());
        let detours = self
            .broker
            .detours(filter)
            .into_iter()
            .map(|(vhost, d)| {
                let (destination_type, destination) = match d.destination {
                    Destination::Queue(q) => ("queue", q),
                    Destination::Exchange(x) => ("exchange", x),
                };
                DetourSpec {
                    vhost,
                    source: d.source,
                    destination_type: destination_type.into(),
                    destination,
                    via_exchange: d.via,
                }
            })
            .collect();
        ok(DetourList { detours })
    }

    async fn export_definitions(
        &self,
        _: Request<ExportDefinitionsRequest>,
    ) -> Reply<DefinitionsJson> {
        let doc = definitions_json::export(&self.broker);
        let json = serde_json::to_string_pretty(&doc)
            .map_err(|e| Status::internal(format!("encoding definitions: {e}")))?;
        ok(DefinitionsJson { json })
    }

    async fn import_definitions(
        &self,
        r: Request<DefinitionsJson>,
    ) -> Reply<ImportDefinitionsReply> {
        ok(definitions_json::import(&self.broker, &r.into_inner().json).await?)
    }
}
