//! `warrenctl`: the command line over Warren's admin plane (gRPC). Tables by default, `--json`
//! for scripts; errors are one line on stderr and a non-zero exit.

mod cli;
mod listing;
mod output;

use base64::Engine;
use clap::Parser;
use cli::{BindArgs, Cli, Command, Declare, Delete, DetourAction, ListWhat, TapAction};
use listing::{list, print_messages};
use output::{bytes, duration_ms, rate, yes_no, Output};
use std::collections::HashMap;
use std::process::ExitCode;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};
use warren_proto::admin::admin_client::AdminClient;
use warren_proto::admin::*;

fn pairs(list: Vec<(String, String)>) -> HashMap<String, String> {
    list.into_iter().collect()
}

fn destination_type(to_exchange: bool) -> String {
    if to_exchange { "exchange" } else { "queue" }.to_string()
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let header = match &cli.token {
        Some(token) => format!("Bearer {token}"),
        None => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", cli.user, cli.password))
        ),
    };
    let value = MetadataValue::try_from(header)
        .map_err(|_| anyhow::anyhow!("credentials contain characters a header cannot hold"))?;
    let endpoint = Channel::from_shared(cli.server.clone())
        .map_err(|e| anyhow::anyhow!("bad --server '{}': {e}", cli.server))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {}", cli.server, source_text(&e)))?;
    Ok(AdminClient::with_interceptor(channel, Auth(value)))
}

/// The innermost cause of an error, which is the one that says what went wrong.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<Status>() {
                Some(status) => eprintln!("error: {:?}: {}", status.code(), status.message()),
                None => eprintln!("error: {error}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output { json: cli.json };
    let mut client = connect(&cli).await?;
    let list_vhost = cli.vhost.clone().unwrap_or_default();
    let vhost = cli.vhost.clone().unwrap_or_else(|| "/".to_string());
    match cli.command {
        Command::Overview => {
            let o = client.overview(OverviewRequest {}).await?.into_inner();
            out.fields(
                &o,
                &[
                    ("node", o.node.clone()),
                    ("version", o.version.clone()),
                    ("uptime", duration_ms(o.uptime_ms)),
                    ("amqp", o.amqp_listen.clone()),
                    ("vhosts", o.vhosts.to_string()),
                    ("exchanges", o.exchanges.to_string()),
                    ("queues", o.queues.to_string()),
                    ("connections", o.connections.to_string()),
                    ("channels", o.channels.to_string()),
                    ("consumers", o.consumers.to_string()),
                    ("messages ready", o.messages_ready.to_string()),
                    ("messages unacked", o.messages_unacked.to_string()),
                    (
                        "published",
                        format!("{} ({})", o.published_total, rate(o.publish_rate)),
                    ),
                    (
                        "delivered",
                        format!("{} ({})", o.delivered_total, rate(o.deliver_rate)),
                    ),
                    ("acked", format!("{} ({})", o.acked_total, rate(o.ack_rate))),
                    ("log on disk", bytes(o.disk_log_bytes)),
                    ("disk free", bytes(o.disk_free_bytes)),
                    ("memory", bytes(o.memory_rss_bytes)),
                    ("disk alarm", yes_no(o.disk_alarm)),
                ],
            );
        }
        Command::List { what } => list(&mut client, out, what, list_vhost).await?,
        Command::Declare { what } => match what {
            Declare::Queue {
                name,
                transient,
                auto_delete,
                arguments,
            } => {
                let r = client
                    .declare_queue(DeclareQueueRequest {
                        vhost,
                        name,
                        durable: !transient,
                        auto_delete,
                        arguments: pairs(arguments),
                    })
                    .await?
                    .into_inner();
                out.done(
                    &r,
                    &format!(
                        "queue '{}' declared ({} ready, {} consumers)",
                        r.name, r.ready, r.consumers
                    ),
                );
            }
            Declare::Exchange {
                name,
                kind,
                transient,
                auto_delete,
                internal,
                arguments,
            } => {
                let r = client
                    .declare_exchange(DeclareExchangeRequest {
                        vhost,
                        name: name.clone(),
                        r#type: kind.clone(),
                        durable: !transient,
                        auto_delete,
                        internal,
                        arguments: pairs(arguments),
                    })
                    .await?
                    .into_inner();
                out.done(&r, &format!("exchange '{name}' ({kind}) declared"));
            }
        },
        Command::Delete { what } => match what {
            Delete::Queue {
                name,
                if_unused,
                if_empty,
            } => {
                let r = client
                    .delete_queue(DeleteQueueRequest {
                        vhost,
                        name: name.clone(),
                        if_unused,
                        if_empty,
                    })
                    .await?
                    .into_inner();
                out.done(
                    &r,
                    &format!("queue '{name}' deleted ({} messages)", r.messages),
                );
            }
            Delete::Exchange { name, if_unused } => {
                let r = client
                    .delete_exchange(DeleteExchangeRequest {
                        vhost,
                        name: name.clone(),
                        if_unused,
                    })
                    .await?
                    .into_inner();
                out.done(&r, &format!("exchange '{name}' deleted"));
            }
            Delete::Vhost { name } => {
                let r = client
                    .delete_vhost(VhostRef { name: name.clone() })
                    .await?
                    .into_inner();
                out.done(&r, &format!("vhost '{name}' deleted"));
            }
            Delete::User { name } => {
                let r = client
                    .delete_user(UserRef { name: name.clone() })
                    .await?
                    .into_inner();
                out.done(&r, &format!("user '{name}' deleted"));
            }
        },
        Command::TransferLeadership { queue, to } => {
            let r = client
                .transfer_leadership(TransferLeadershipRequest {
                    vhost,
                    queue: queue.clone(),
                    node: to,
                })
                .await?
                .into_inner();
            out.done(&r, &format!("node {to} now leads queue '{queue}'"));
        }
        Command::RepairReplica { queue, node } => {
            let r = client
                .repair_replica(RepairReplicaRequest {
                    vhost,
                    queue: queue.clone(),
                    node,
                })
                .await?
                .into_inner();
            out.done(
                &r,
                &format!("node {node}'s replica of queue '{queue}' rebuilt from the others"),
            );
        }
        Command::AddMember { id, address } => {
            let r = client
                .add_member(AddMemberRequest {
                    node_id: id,
                    address: address.clone(),
                })
                .await?
                .into_inner();
            out.done(&r, &format!("node {id} ({address}) is a member"));
        }
        Command::RemoveMember { id } => {
            let r = client
                .remove_member(RemoveMemberRequest { node_id: id })
                .await?
                .into_inner();
            out.done(&r, &format!("node {id} removed from the cluster"));
        }
        Command::Purge { queue } => {
            let r = client
                .purge_queue(QueueRef {
                    vhost,
                    name: queue.clone(),
                })
                .await?
                .into_inner();
            out.done(
                &r,
                &format!("queue '{queue}' purged ({} messages)", r.messages),
            );
        }
        Command::Bind(b) => {
            let spec = binding_spec(vhost, b);
            let text = format!("bound '{}' to '{}'", spec.destination, spec.source);
            let r = client.bind(spec).await?.into_inner();
            out.done(&r, &text);
        }
        Command::Unbind(b) => {
            let spec = binding_spec(vhost, b);
            let text = format!("unbound '{}' from '{}'", spec.destination, spec.source);
            let r = client.unbind(spec).await?.into_inner();
            out.done(&r, &text);
        }
        Command::AddVhost { name } => {
            let r = client
                .add_vhost(VhostRef { name: name.clone() })
                .await?
                .into_inner();
            out.done(&r, &format!("vhost '{name}' added"));
        }
        Command::AddUser {
            name,
            password,
            password_hash,
            tags,
        } => {
            let r = client
                .put_user(PutUserRequest {
                    name: name.clone(),
                    password: password.unwrap_or_default(),
                    password_hash: password_hash.unwrap_or_default(),
                    tags,
                })
                .await?
                .into_inner();
            out.done(&r, &format!("user '{name}' saved"));
        }
        Command::SetPermissions {
            user,
            configure,
            write,
            read,
        } => {
            let text = format!("permissions of '{user}' in vhost '{vhost}' set");
            let r = client
                .set_permissions(PermissionInfo {
                    user,
                    vhost,
                    configure,
                    write,
                    read,
                })
                .await?
                .into_inner();
            out.done(&r, &text);
        }
        Command::ClearPermissions { user } => {
            let text = format!("permissions of '{user}' in vhost '{vhost}' cleared");
            let r = client
                .clear_permissions(ClearPermissionsRequest { user, vhost })
                .await?
                .into_inner();
            out.done(&r, &text);
        }
        Command::CloseConnection { id, reason } => {
            let r = client
                .close_connection(CloseConnectionRequest { id, reason })
                .await?
                .into_inner();
            out.done(&r, &format!("connection {id} closed"));
        }
        Command::Publish(p) => {
            let body = match p.body.strip_prefix('@') {
                Some(path) => {
                    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?
                }
                None => p.body.into_bytes(),
            };
            let properties = MessageProperties {
                content_type: p.content_type.unwrap_or_default(),
                headers: pairs(p.headers),
                delivery_mode: if p.persistent { 2 } else { 0 },
                priority: p.priority.unwrap_or(0),
                correlation_id: p.correlation_id.unwrap_or_default(),
                expiration: p.expiration.unwrap_or_default(),
                message_id: p.message_id.unwrap_or_default(),
                ..MessageProperties::default()
            };
            let r = client
                .publish(PublishRequest {
                    vhost,
                    exchange: p.exchange,
                    routing_key: p.routing_key,
                    properties: Some(properties),
                    body,
                    wait_for_confirm: p.confirm,
                })
                .await?
                .into_inner();
            let text = if r.routed_queues.is_empty() {
                "routed to no queue".to_string()
            } else {
                let confirmed = if p.confirm {
                    if r.confirmed {
                        " (confirmed)"
                    } else {
                        " (NOT confirmed)"
                    }
                } else {
                    ""
                };
                format!("routed to {}{confirmed}", r.routed_queues.join(", "))
            };
            out.done(&r, &text);
            if p.confirm && !r.confirmed && !r.routed_queues.is_empty() {
                anyhow::bail!("a queue refused the message");
            }
        }
        Command::Peek {
            queue,
            count,
            body_bytes,
        } => {
            let r = client
                .peek(PeekRequest {
                    vhost,
                    queue,
                    count,
                    body_bytes_max: body_bytes,
                })
                .await?
                .into_inner();
            print_messages(out, &r);
        }
        Command::Get {
            queue,
            count,
            requeue,
            body_bytes,
        } => {
            let r = client
                .get(GetRequest {
                    vhost,
                    queue,
                    count,
                    requeue,
                    body_bytes_max: body_bytes,
                })
                .await?
                .into_inner();
            print_messages(out, &r);
        }
        Command::Move {
            source,
            destination,
            count,
        } => {
            let r = client
                .move_messages(MoveMessagesRequest {
                    vhost,
                    source: source.clone(),
                    destination: destination.clone(),
                    count,
                })
                .await?
                .into_inner();
            out.done(
                &r,
                &format!(
                    "moved {} messages from '{source}' to '{destination}'",
                    r.messages
                ),
            );
        }
        Command::Pause { queue } => {
            let r = client
                .pause_queue(QueueRef {
                    vhost,
                    name: queue.clone(),
                })
                .await?
                .into_inner();
            out.done(&r, &format!("deliveries of '{queue}' paused"));
        }
        Command::Resume { queue } => {
            let r = client
                .resume_queue(QueueRef {
                    vhost,
                    name: queue.clone(),
                })
                .await?
                .into_inner();
            out.done(&r, &format!("deliveries of '{queue}' resumed"));
        }
        Command::PauseConsumer { queue, tag } => {
            let text = format!("consumer '{tag}' of '{queue}' paused");
            let r = client
                .pause_consumer(ConsumerRef { vhost, queue, tag })
                .await?
                .into_inner();
            out.done(&r, &text);
        }
        Command::ResumeConsumer { queue, tag } => {
            let text = format!("consumer '{tag}' of '{queue}' resumed");
            let r = client
                .resume_consumer(ConsumerRef { vhost, queue, tag })
                .await?
                .into_inner();
            out.done(&r, &text);
        }
        Command::Tap { action } => match action {
            TapAction::Start {
                exchange,
                queue,
                to,
                every,
            } => {
                let (source_type, source) = match (exchange, queue) {
                    (Some(x), _) => ("exchange", x),
                    (None, Some(q)) => ("queue", q),
                    (None, None) => anyhow::bail!("give --exchange or --queue"),
                };
                let r = client
                    .start_tap(TapSpec {
                        vhost,
                        source_type: source_type.into(),
                        source: source.clone(),
                        target_exchange: to.clone(),
                        sample_every: every,
                    })
                    .await?
                    .into_inner();
                out.done(
                    &r,
                    &format!(
                        "tap {} started: {source_type} '{source}' -> exchange '{to}'",
                        r.id
                    ),
                );
            }
            TapAction::Stop { id } => {
                let r = client.stop_tap(TapRef { id }).await?.into_inner();
                out.done(&r, &format!("tap {id} stopped"));
            }
            TapAction::List => list(&mut client, out, ListWhat::Taps, list_vhost).await?,
        },
        Command::Detour { action } => match action {
            DetourAction::Start {
                source,
                destination,
                via,
                to_exchange,
            } => {
                let text = format!("route '{source}' -> '{destination}' now goes through '{via}'");
                let r = client
                    .start_detour(DetourSpec {
                        vhost,
                        source,
                        destination_type: destination_type(to_exchange),
                        destination,
                        via_exchange: via,
                    })
                    .await?
                    .into_inner();
                out.done(&r, &text);
            }
            DetourAction::Stop {
                source,
                destination,
                to_exchange,
            } => {
                let text = format!("route '{source}' -> '{destination}' is direct again");
                let r = client
                    .stop_detour(DetourRef {
                        vhost,
                        source,
                        destination_type: destination_type(to_exchange),
                        destination,
                    })
                    .await?
                    .into_inner();
                out.done(&r, &text);
            }
            DetourAction::List => list(&mut client, out, ListWhat::Detours, list_vhost).await?,
        },
        Command::Export => {
            let r = client
                .export_definitions(ExportDefinitionsRequest {})
                .await?
                .into_inner();
            // The definitions are JSON already, with or without --json.
            println!("{}", r.json);
        }
        Command::Import { file } => {
            let json = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?
            };
            let r = client
                .import_definitions(DefinitionsJson { json })
                .await?
                .into_inner();
            out.done(
                &r,
                &format!(
                    "imported {} vhosts, {} users, {} permissions, {} exchanges, {} queues, {} bindings",
                    r.vhosts, r.users, r.permissions, r.exchanges, r.queues, r.bindings
                ),
            );
        }
    }
    Ok(())
}

fn binding_spec(vhost: String, b: BindArgs) -> BindingSpec {
    BindingSpec {
        vhost,
        source: b.source,
        destination_type: destination_type(b.to_exchange),
        destination: b.destination,
        routing_key: b.routing_key,
        arguments: pairs(b.arguments),
    }
}
