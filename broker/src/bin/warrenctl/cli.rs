//! The command line: every command, its flags and an example (`warrenctl --help`).

use clap::{Args, Parser, Subcommand, ValueEnum};

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
pub struct Cli {
    /// Admin plane address.
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN",
        default_value = "http://127.0.0.1:15680"
    )]
    pub server: String,
    /// Administrator user name.
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN_USER",
        default_value = "guest"
    )]
    pub user: String,
    /// Administrator password.
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub password: String,
    /// A bearer token (instead of user and password).
    #[arg(
        long,
        global = true,
        env = "WARREN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Virtual host (default "/"; lists show every vhost unless given).
    #[arg(long, short = 'p', global = true)]
    pub vhost: Option<String>,
    /// Print replies as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Move a quorum queue's leadership to another of its replicas (a node id).  e.g. `warrenctl transfer-leadership orders --to 2`
    TransferLeadership {
        queue: String,
        #[arg(long)]
        to: u64,
    },
    /// Rebuild a quorum queue's replica on a node (fenced after a storage error) from the other replicas.  e.g. `warrenctl repair-replica orders --node 3`
    RepairReplica {
        queue: String,
        #[arg(long)]
        node: u64,
    },
    /// Add a running node (started with `cluster.join = true`) to the cluster, by its id and raft address.  e.g. `warrenctl add-member 4 10.0.0.4:25672`
    AddMember { id: u64, address: String },
    /// Remove a member from the cluster, moving its quorum queue replicas to other members first; then stop its process.  e.g. `warrenctl remove-member 3`
    RemoveMember { id: u64 },
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
pub enum ListWhat {
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
pub enum Declare {
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
pub enum Delete {
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
pub struct BindArgs {
    pub source: String,
    pub destination: String,
    /// The destination is an exchange (default: a queue).
    #[arg(long)]
    pub to_exchange: bool,
    #[arg(long, short = 'k', default_value = "")]
    pub routing_key: String,
    #[arg(long = "arg", value_parser = key_value)]
    pub arguments: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Exchange ("" for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    /// The body (or @FILE to read it from a file).
    pub body: String,
    /// delivery_mode = 2.
    #[arg(long)]
    pub persistent: bool,
    /// Wait until every queue holds it (after fsync when persistent).
    #[arg(long)]
    pub confirm: bool,
    #[arg(long = "header", value_parser = key_value)]
    pub headers: Vec<(String, String)>,
    #[arg(long)]
    pub content_type: Option<String>,
    #[arg(long)]
    pub message_id: Option<String>,
    #[arg(long)]
    pub correlation_id: Option<String>,
    #[arg(long)]
    pub priority: Option<u32>,
    #[arg(long)]
    pub expiration: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TapAction {
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
pub enum DetourAction {
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

pub fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got '{text}'"))
}
