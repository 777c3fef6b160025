//! `warrenctl`: the command line over Warren's admin plane (gRPC). Tables by default, `--json`
//! for scripts; errors are one line on stderr and a non-zero exit.

mod output;

use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use output::{bytes, duration_ms, map, rate, yes_no, Output};
use std::collections::HashMap;
use std::process::ExitCode;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};
use warren_proto::admin::admin_client::AdminClient;
use warren_proto::admin::*;

const EXAMPLES: &str = "\
Examples:
  warrenctl overview
  warrenctl list queues --vhost /
  warrenctl declare queue orders --arg x-max-length=10000 --arg x-queue-type=quorum
  warrenctl declare exchange events --type topic
  warrenctl bind events orders --routing-key 'order.*'
  warrenctl publish events order.created '{\"id\":1}' --persistent --confirm
  warrenctl peek orders --count 5
  warrenctl get orders --count 1 --requeue
  warrenctl move orders.dlq orders
  warrenctl pause orders && warrenctl resume orders
  warrenctl tap start --exchange events --to audit --every 10
  warrenctl detour start events orders --via validation
  warrenctl export > definitions.json && warrenctl import definitions.json
  warrenctl --json list connections

Credentials: --user/--password of a user tagged administrator (default guest/guest, which
works from localhost only), or --token (WARREN_ADMIN_TOKEN).";

/// Control a Warren node through its admin plane.
#[derive(Debug, Parser)]
#[command(version, about = "Control a Warren node through its admin plane (gRPC).", after_help = EXAMPLES)]
struct Cli {
    /// Admin plane address.
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN",
        default_value = "http://127.0.0.1:15680"
    )]
    server: String,
    /// Administrator user name.
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN_USER",
        default_value = "guest"
    )]
    user: String,
    /// Administrator password.
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    password: String,
    /// A bearer token (instead of user and password).
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Virtual host (default "/"; lists show every vhost unless given).
    #[arg(long, short = 'p', global = true)]
    vhost: Option<String>,
    /// Print replies as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Node totals, rates, disk and memory.  e.g. `warrenctl overview`
    Overview,
    /// List things.  e.g. `warrenctl list queues`
    List {
        #[arg(value_enum)]
        what: ListWhat,
    },
    /// Declare a queue or an exchange.  e.g. `warrenctl declare queue jobs --arg x-max-length=100`
    Declare {
        #[command(subcommand)]
        what: Declare,
    },
    /// Delete a queue, exchange, vhost or user.  e.g. `warrenctl delete queue jobs --if-empty`
    Delete {
        #[command(subcommand)]
        what: Delete,
    },
    /// Drop every ready message of a queue.  e.g. `warrenctl purge jobs`
    Purge { queue: String },
    /// Bind a queue (or exchange) to an exchange.  e.g. `warrenctl bind amq.topic jobs -k 'jobs.#'`
    Bind(BindArgs),
    /// Remove a binding.  e.g. `warrenctl unbind amq.topic jobs -k 'jobs.#'`
    Unbind(BindArgs),
    /// Add a vhost.  e.g. `warrenctl add-vhost staging`
    AddVhost { name: String },
    /// Create or update a user.  e.g. `warrenctl add-user ops --password s3cret --tags administrator`
    AddUser {
        name: String,
        #[arg(long)]
        password: Option<String>,
        /// A RabbitMQ rabbit_password_hashing_sha256 hash instead of a password.
        #[arg(long)]
        password_hash: Option<String>,
        /// Comma-separated tags.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Set a user's permissions in the vhost.  e.g. `warrenctl set-permissions ops --configure '^ops\.'`
    SetPermissions {
        user: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    /// Remove a user's permissions in the vhost.  e.g. `warrenctl clear-permissions ops -p staging`
    ClearPermissions { user: String },
    /// Close a client connection (320 CONNECTION_FORCED).  e.g. `warrenctl close-connection 7 --reason maintenance`
    CloseConnection {
        id: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Publish a test message and show where it was routed.  e.g. `warrenctl publish amq.direct jobs hello`
    Publish(PublishArgs),
    /// Show the first messages of a queue without consuming them.  e.g. `warrenctl peek jobs -n 3`
    Peek {
        queue: String,
        #[arg(long, short = 'n', default_value_t = 10)]
        count: u32,
        /// Bytes of each body shown.
        #[arg(long, default_value_t = 200)]
        body_bytes: u32,
    },
    /// Take messages from a queue: ack them, or requeue them with --requeue.  e.g. `warrenctl get jobs -n 1`
    Get {
        queue: String,
        #[arg(long, short = 'n', default_value_t = 1)]
        count: u32,
        #[arg(long)]
        requeue: bool,
        #[arg(long, default_value_t = 200)]
        body_bytes: u32,
    },
    /// Move ready messages to another queue (e.g. redrive a dead-letter queue).  e.g. `warrenctl move jobs.dlq jobs`
    Move {
        source: String,
        destination: String,
        /// How many (all when 0).
        #[arg(long, short = 'n', default_value_t = 0)]
        count: u64,
    },
    /// Pause deliveries of a queue (publishes are still accepted).  e.g. `warrenctl pause jobs`
    Pause { queue: String },
    /// Resume deliveries of a queue.  e.g. `warrenctl resume jobs`
    Resume { queue: String },
    /// Pause deliveries to one consumer.  e.g. `warrenctl pause-consumer jobs ctag-1`
    PauseConsumer { queue: String, tag: String },
    /// Resume deliveries to one consumer.  e.g. `warrenctl resume-consumer jobs ctag-1`
    ResumeConsumer { queue: String, tag: String },
    /// Wire taps: copy what passes an exchange or enters a queue to another exchange.  e.g. `warrenctl tap list`
    Tap {
        #[command(subcommand)]
        action: TapAction,
    },
    /// Detours: send a route through another exchange and back.  e.g. `warrenctl detour list`
    Detour {
        #[command(subcommand)]
        action: DetourAction,
    },
    /// Print the definitions as RabbitMQ's definitions JSON.  e.g. `warrenctl export > defs.json`
    Export,
    /// Import RabbitMQ definitions JSON from a file ("-" for stdin).  e.g. `warrenctl import defs.json`
    Import { file: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListWhat {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
    Vhosts,
    Users,
    Permissions,
    Taps,
    Detours,
    Nodes,
}

#[derive(Debug, Subcommand)]
enum Declare {
    /// e.g. `warrenctl declare queue jobs --arg x-message-ttl=60000`
    Queue {
        name: String,
        /// Not durable (durable is the default, as in the management UI).
        #[arg(long)]
        transient: bool,
        #[arg(long)]
        auto_delete: bool,
        /// An argument `key=value` (integers and true/false are typed; `str:` keeps a string).
        #[arg(long = "arg", value_parser = key_value)]
        arguments: Vec<(String, String)>,
    },
    /// e.g. `warrenctl declare exchange events --type topic`
    Exchange {
        name: String,
        #[arg(long = "type", short = 't', default_value = "direct")]
        kind: String,
        #[arg(long)]
        transient: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        #[arg(long = "arg", value_parser = key_value)]
        arguments: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum Delete {
    /// e.g. `warrenctl delete queue jobs`
    Queue {
        name: String,
        #[arg(long)]
        if_unused: bool,
        #[arg(long)]
        if_empty: bool,
    },
    /// e.g. `warrenctl delete exchange events`
    Exchange {
        name: String,
        #[arg(long)]
        if_unused: bool,
    },
    /// e.g. `warrenctl delete vhost staging`
    Vhost { name: String },
    /// e.g. `warrenctl delete user ops`
    User { name: String },
}

#[derive(Debug, Args)]
struct BindArgs {
    source: String,
    destination: String,
    /// The destination is an exchange (default: a queue).
    #[arg(long)]
    to_exchange: bool,
    #[arg(long, short = 'k', default_value = "")]
    routing_key: String,
    #[arg(long = "arg", value_parser = key_value)]
    arguments: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// Exchange ("" for the default exchange).
    exchange: String,
    routing_key: String,
    /// The body (or @FILE to read it from a file).
    body: String,
    /// delivery_mode = 2.
    #[arg(long)]
    persistent: bool,
    /// Wait until every queue holds it (after fsync when persistent).
    #[arg(long)]
    confirm: bool,
    #[arg(long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
    #[arg(long)]
    content_type: Option<String>,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long)]
    correlation_id: Option<String>,
    #[arg(long)]
    priority: Option<u32>,
    #[arg(long)]
    expiration: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TapAction {
    /// e.g. `warrenctl tap start --exchange orders --to audit --every 100`
    Start {
        /// Tap what passes through this exchange.
        #[arg(long, conflicts_with = "queue", required_unless_present = "queue")]
        exchange: Option<String>,
        /// Tap what is enqueued to this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Exchange the copies go to.
        #[arg(long)]
        to: String,
        /// Copy one message in N.
        #[arg(long, default_value_t = 1)]
        every: u32,
    },
    /// e.g. `warrenctl tap stop 3`
    Stop { id: u64 },
    /// e.g. `warrenctl tap list`
    List,
}

#[derive(Debug, Subcommand)]
enum DetourAction {
    /// e.g. `warrenctl detour start orders shipping --via validation`
    Start {
        source: String,
        destination: String,
        #[arg(long)]
        via: String,
        /// The destination is an exchange (default: a queue).
        #[arg(long)]
        to_exchange: bool,
    },
    /// e.g. `warrenctl detour stop orders shipping`
    Stop {
        source: String,
        destination: String,
        #[arg(long)]
        to_exchange: bool,
    },
    /// e.g. `warrenctl detour list`
    List,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got '{text}'"))
}

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

fn print_messages(out: Output, r: &MessageList) {
    let rows = r
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = m.properties.clone().unwrap_or_default();
            let mut body = String::from_utf8_lossy(&m.body).replace('\n', "\\n");
            if m.body_truncated {
                body.push('…');
            }
            vec![
                (i + 1).to_string(),
                m.exchange.clone(),
                m.routing_key.clone(),
                yes_no(m.redelivered),
                p.delivery_mode.to_string(),
                map(&p.headers),
                m.body_bytes.to_string(),
                body,
            ]
        })
        .collect();
    out.table(
        r,
        &[
            "#",
            "exchange",
            "routing key",
            "redelivered",
            "mode",
            "headers",
            "bytes",
            "body",
        ],
        rows,
    );
    if !out.json {
        println!("{} ready left", r.remaining);
    }
}

async fn list(
    client: &mut Client,
    out: Output,
    what: ListWhat,
    vhost: String,
) -> anyhow::Result<()> {
    let request = || ListRequest {
        vhost: vhost.clone(),
    };
    match what {
        ListWhat::Queues => {
            let r = client.list_queues(request()).await?.into_inner();
            let rows = r
                .queues
                .iter()
                .map(|q| {
                    vec![
                        q.vhost.clone(),
                        q.name.clone(),
                        q.r#type.clone(),
                        q.ready.to_string(),
                        q.unacked.to_string(),
                        q.consumers.to_string(),
                        rate(q.publish_rate),
                        rate(q.deliver_rate),
                        bytes(q.disk_bytes),
                        if q.paused { "paused" } else { "running" }.into(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost",
                    "name",
                    "type",
                    "ready",
                    "unacked",
                    "consumers",
                    "in",
                    "out",
                    "disk",
                    "state",
                ],
                rows,
            );
        }
        ListWhat::Exchanges => {
            let r = client.list_exchanges(request()).await?.into_inner();
            let rows = r
                .exchanges
                .iter()
                .map(|x| {
                    vec![
                        x.vhost.clone(),
                        if x.name.is_empty() {
                            "(default)".into()
                        } else {
                            x.name.clone()
                        },
                        x.r#type.clone(),
                        yes_no(x.durable),
                        yes_no(x.auto_delete),
                        yes_no(x.internal),
                        x.bindings.to_string(),
                        map(&x.arguments),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost",
                    "name",
                    "type",
                    "durable",
                    "auto-delete",
                    "internal",
                    "bindings",
                    "arguments",
                ],
                rows,
            );
        }
        ListWhat::Bindings => {
            let r = client.list_bindings(request()).await?.into_inner();
            let rows = r
                .bindings
                .iter()
                .map(|b| {
                    vec![
                        b.vhost.clone(),
                        if b.source.is_empty() {
                            "(default)".into()
                        } else {
                            b.source.clone()
                        },
                        b.destination_type.clone(),
                        b.destination.clone(),
                        b.routing_key.clone(),
                        map(&b.arguments),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost",
                    "source",
                    "type",
                    "destination",
                    "routing key",
                    "arguments",
                ],
                rows,
            );
        }
        ListWhat::Connections => {
            let r = client.list_connections(request()).await?.into_inner();
            let rows = r
                .connections
                .iter()
                .map(|c| {
                    vec![
                        c.id.to_string(),
                        c.peer.clone(),
                        c.user.clone(),
                        c.vhost.clone(),
                        c.channels.to_string(),
                        format!("{} {}", c.client_product, c.client_version)
                            .trim()
                            .to_string(),
                        c.name.clone(),
                        rate(c.publish_rate),
                        bytes(c.received_bytes),
                        bytes(c.sent_bytes),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "id", "peer", "user", "vhost", "channels", "client", "name", "publish",
                    "received", "sent",
                ],
                rows,
            );
        }
        ListWhat::Channels => {
            let r = client.list_channels(request()).await?.into_inner();
            let rows = r
                .channels
                .iter()
                .map(|c| {
                    vec![
                        c.connection.to_string(),
                        c.number.to_string(),
                        c.user.clone(),
                        c.vhost.clone(),
                        c.mode.clone(),
                        c.prefetch.to_string(),
                        c.unacked.to_string(),
                        c.consumers.to_string(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "connection",
                    "channel",
                    "user",
                    "vhost",
                    "mode",
                    "prefetch",
                    "unacked",
                    "consumers",
                ],
                rows,
            );
        }
        ListWhat::Consumers => {
            let r = client.list_consumers(request()).await?.into_inner();
            let rows = r
                .consumers
                .iter()
                .map(|c| {
                    vec![
                        c.vhost.clone(),
                        c.queue.clone(),
                        c.tag.clone(),
                        format!("{}/{}", c.connection, c.channel),
                        yes_no(c.ack_required),
                        c.prefetch.to_string(),
                        c.unacked.to_string(),
                        if c.paused { "paused" } else { "running" }.into(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost", "queue", "tag", "conn/ch", "ack", "prefetch", "unacked", "state",
                ],
                rows,
            );
        }
        ListWhat::Vhosts => {
            let r = client.list_vhosts(ListVhostsRequest {}).await?.into_inner();
            let rows = r
                .vhosts
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.queues.to_string(),
                        v.exchanges.to_string(),
                        v.connections.to_string(),
                    ]
                })
                .collect();
            out.table(&r, &["name", "queues", "exchanges", "connections"], rows);
        }
        ListWhat::Users => {
            let r = client.list_users(ListUsersRequest {}).await?.into_inner();
            let rows = r
                .users
                .iter()
                .map(|u| vec![u.name.clone(), u.tags.join(",")])
                .collect();
            out.table(&r, &["name", "tags"], rows);
        }
        ListWhat::Permissions => {
            let r = client
                .list_permissions(ListPermissionsRequest {
                    vhost,
                    user: String::new(),
                })
                .await?
                .into_inner();
            let rows = r
                .permissions
                .iter()
                .map(|p| {
                    vec![
                        p.vhost.clone(),
                        p.user.clone(),
                        p.configure.clone(),
                        p.write.clone(),
                        p.read.clone(),
                    ]
                })
                .collect();
            out.table(&r, &["vhost", "user", "configure", "write", "read"], rows);
        }
        ListWhat::Taps => {
            let r = client.list_taps(request()).await?.into_inner();
            let rows = r
                .taps
                .iter()
                .map(|t| {
                    let s = t.spec.clone().unwrap_or_default();
                    vec![
                        t.id.to_string(),
                        s.vhost,
                        format!("{} '{}'", s.source_type, s.source),
                        s.target_exchange,
                        format!("1 in {}", s.sample_every.max(1)),
                        t.seen.to_string(),
                        t.copied.to_string(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "id",
                    "vhost",
                    "source",
                    "copies to",
                    "sample",
                    "seen",
                    "copied",
                ],
                rows,
            );
        }
        ListWhat::Detours => {
            let r = client.list_detours(request()).await?.into_inner();
            let rows = r
                .detours
                .iter()
                .map(|d| {
                    vec![
                        d.vhost.clone(),
                        d.source.clone(),
                        format!("{} '{}'", d.destination_type, d.destination),
                        d.via_exchange.clone(),
                    ]
                })
                .collect();
            out.table(&r, &["vhost", "source", "destination", "via"], rows);
        }
        ListWhat::Nodes => {
            let r = client.list_nodes(ListNodesRequest {}).await?.into_inner();
            let rows = r
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.role.clone(),
                        yes_no(n.running),
                        duration_ms(n.uptime_ms),
                        n.amqp_listen.clone(),
                        n.admin_listen.clone(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &["name", "role", "running", "uptime", "amqp", "admin"],
                rows,
            );
        }
    }
    Ok(())
}
