//! The broker's configuration: one serde tree with a default for every field, read from a TOML
//! file and overridden by flags and environment variables (see `warren --help`).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's name in statistics and (later) the cluster. Default: `warren@<hostname>`.
    pub node_name: String,
    /// Where the write-ahead log, its index and the definitions live.
    pub data_dir: PathBuf,
    /// Threads of the async runtime that serves connections and queues; 0 = one fewer than the
    /// cores available, at least one (see `Config::runtime_worker_threads`).
    pub worker_threads: usize,
    pub amqp: AmqpConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub default_user: DefaultUserConfig,
    pub storage: StorageConfig,
    /// Vhosts to create at start if missing.
    pub vhosts: Vec<String>,
    /// Users to create (or whose password, tags are updated) at start.
    pub users: Vec<UserConfig>,
    /// Permissions to set at start.
    pub permissions: Vec<PermissionConfig>,
    /// Membership of a cluster (absent: a single node).
    pub cluster: Option<warren_cluster::node::ClusterConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub listen: SocketAddr,
    /// Largest frame the server accepts and proposes in `connection.tune`, in octets.
    pub frame_max_bytes: u32,
    pub channel_max: u16,
    /// Heartbeat interval the server proposes, in seconds (0 disables).
    pub heartbeat_s: u16,
    /// How long a client has to finish the handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
}

/// The admin plane: gRPC (`warrenctl`, `grpcurl`) and Prometheus metrics over HTTP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub enabled: bool,
    /// gRPC listen address (loopback by default: the admin plane can change everything).
    pub listen: SocketAddr,
    /// HTTP listen address of `/metrics` (Prometheus text format).
    pub metrics_listen: SocketAddr,
    /// A bearer token accepted instead of an administrator's credentials (unset: none).
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:15680".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:15690".parse().expect("valid address"),
            token: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message body accepted (RabbitMQ's `max_message_size`), in octets.
    pub message_bytes_max: u64,
    /// Messages a durable queue keeps in memory before reading the rest back from the log.
    pub queue_memory_messages_max: usize,
    /// Body bytes a durable queue keeps in memory before reading the rest back from the log.
    pub queue_memory_bytes_max: u64,
    /// Deliveries in flight between a queue and one consumer's socket (credit flow).
    pub consumer_flow_window: u32,
    /// Bounded inbox of each queue, in commands.
    pub queue_inbox_max: usize,
    /// Publishers are blocked (`connection.blocked`) while the data directory's file system has
    /// less free space than this, in octets.
    pub disk_free_bytes_min: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultUserConfig {
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// Users that may only connect from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub segment_bytes: u64,
    /// Zero-fill the next segment ahead of time (cheaper fdatasync of multi-page batches on
    /// ext4, at the cost of writing each segment twice).
    pub prepare_segments: bool,
    pub checkpoint_interval_ms: u64,
    pub group_commit_wait_us_max: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_name: format!("warren@{}", hostname()),
            data_dir: PathBuf::from("data"),
            worker_threads: 0,
            amqp: AmqpConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            default_user: DefaultUserConfig::default(),
            storage: StorageConfig::default(),
            vhosts: Vec::new(),
            users: Vec::new(),
            permissions: Vec::new(),
            cluster: None,
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> AmqpConfig {
        AmqpConfig {
            listen: "0.0.0.0:5672".parse().expect("valid address"),
            frame_max_bytes: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            message_bytes_max: 16 * 1024 * 1024,
            queue_memory_messages_max: 4096,
            queue_memory_bytes_max: 8 * 1024 * 1024,
            consumer_flow_window: 2000,
            queue_inbox_max: 4096,
            disk_free_bytes_min: 50 * 1024 * 1024,
        }
    }
}

impl Default for DefaultUserConfig {
    fn default() -> DefaultUserConfig {
        DefaultUserConfig {
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            loopback_users: vec!["guest".into()],
        }
    }
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            segment_bytes: 64 * 1024 * 1024,
            prepare_segments: true,
            checkpoint_interval_ms: 2000,
            group_commit_wait_us_max: 500,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A configuration value out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The runtime's worker threads: `worker_threads` if set, else one fewer than the cores
    /// available (at least one). The core left over is for the log's writer thread, which
    /// spends its time in the kernel writing and syncing (and, under load, in the device's
    /// interrupts); runtime workers on every core contended with it. On 2 cores, measured with
    /// `warren-perf` against 2 workers: 64 KiB persistent messages 5-10 % faster at about 10 %
    /// less CPU per message, a fixed 5000 msg/s at 15 % less CPU, 1 KiB and the quorum queue
    /// unchanged; only transient messages, which never wait on the disk, lost about a tenth of
    /// their throughput (at a fifth less CPU per message).
    pub fn runtime_worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let amqp = &self.amqp;
        if amqp.frame_max_bytes < crate::amqp::constants::FRAME_MIN_SIZE {
            return Err(ConfigError(format!(
                "amqp.frame_max_bytes {} is below the protocol minimum 4096",
                amqp.frame_max_bytes
            )));
        }
        if amqp.channel_max == 0 {
            return Err(ConfigError("amqp.channel_max must be at least 1".into()));
        }
        if self.limits.message_bytes_max > 512 * 1024 * 1024 {
            return Err(ConfigError(
                "limits.message_bytes_max above 512 MiB (RabbitMQ's hard limit)".into(),
            ));
        }
        if self.limits.consumer_flow_window == 0 || self.limits.queue_inbox_max == 0 {
            return Err(ConfigError(
                "limits.consumer_flow_window and limits.queue_inbox_max must be positive".into(),
            ));
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError)?;
        }
        for p in &self.permissions {
            for pattern in [&p.configure, &p.write, &p.read] {
                regex::Regex::new(pattern).map_err(|e| {
                    ConfigError(format!(
                        "permission of user '{}' in vhost '{}': {e}",
                        p.user, p.vhost
                    ))
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_leave_a_core_to_the_log_writer_unless_set() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut config = Config::default();
        assert_eq!(config.runtime_worker_threads(), (cores - 1).max(1));
        config.worker_threads = 3;
        assert_eq!(config.runtime_worker_threads(), 3);
        let parsed: Config = toml::from_str("worker_threads = 5").unwrap();
        assert_eq!(parsed.runtime_worker_threads(), 5);
    }
}
