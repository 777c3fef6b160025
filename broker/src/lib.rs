//! The Warren broker: AMQP 0-9-1 in front of the storage engine.
//!
//! Module map:
//! - [`amqp`]: the wire codec (frames, methods, field tables, properties); pure.
//! - [`config`]: the configuration tree.
//! - [`server`]: the listener, signals and shutdown.
//! - [`connection`]: one task per client connection: handshake, channels, the AMQP methods.
//! - [`broker`]: vhosts, users, permissions and the operations on definitions.
//! - [`vhost`]: a vhost's registry and routing through exchanges.
//! - [`exchange`]: exchange types and bindings (topic trie, headers matching).
//! - [`queue`]: queues as actors over a pure `QueueState`.
//! - [`message`]: messages and their log records; [`delivery`]: queue → connection events.
//! - [`definitions`]: durable definitions in the log's key-value namespace.
//! - [`replication`]: cluster metadata through the metadata raft group.
//! - [`quorum`]: quorum queues, replicated by their own raft groups; [`membership`]: adding
//!   and removing cluster members.
//! - [`auth`]: users, password hashes, permissions.
//! - [`admin`]: the gRPC admin plane (the control bus); [`metrics`]: Prometheus `/metrics`;
//!   [`statistics`]: counters and rates.
//!
//! Locks: the broker's registries (`vhosts`, `users`, `permissions`, `connections`) and each
//! vhost's `RwLock` are short, never held across `.await`, and never nested except vhost state
//! → nothing. The definitions mutex (`ddl`, async) is taken before any of them.

pub mod admin;
pub mod amqp;
pub mod auth;
pub mod broker;
pub mod classic;
pub mod config;
pub mod connection;
pub mod definitions;
pub mod delivery;
pub mod error;
pub mod exchange;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod quorum;
pub mod refusal;
pub mod replication;
pub mod server;
pub mod statistics;
pub mod vhost;

/// The hash map of the message path (a queue's unacked messages, a connection's channels,
/// consumers and route cache): foldhash instead of std's SipHash, which was about 3 % of a
/// quorum leader's CPU. Each map is seeded at random, so keys a client picks (routing keys,
/// consumer tags) cannot be chosen offline to collide.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
