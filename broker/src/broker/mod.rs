//! The broker: vhosts, users and permissions, connections, and the operations on them.
//! Definition changes are serialised by one async mutex (`ddl`) and made durable before they
//! are answered.
//!
//! - this file: opening and recovery, registries, connections, the disk alarm;
//! - `topology`: exchanges, queues and bindings (declare, delete, bind, purge);
//! - `access`: vhosts, users and permissions changed at run time (the admin plane);
//! - `routes`: wire taps and detours.

use crate::amqp::constants::ReplyCode;
use crate::amqp::FieldTable;
use crate::auth::{Access, CompiledPermission, Permission, User};
use crate::config::Config;
use crate::definitions::{wait_durable, Definitions, VhostDecl};
use crate::delivery::{ConnEvent, ConnId, EventSender};
use crate::error::BrokerError;
use crate::exchange::{Exchange, ExchangeDecl, ExchangeKind};
use crate::queue::args::QueueArgs;
use crate::queue::store::{MessageStore, WalStore};
use crate::queue::{actor, QueueDecl, QueueHandle, QueueId};
use crate::refusal::Refusal;
use crate::vhost::Vhost;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use warren_storage::{Wal, WalConfig};

/// The exchanges every vhost has.
const STANDARD_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Whether `name` is one of the exchanges every vhost has.
pub fn is_standard_exchange(name: &str) -> bool {
    STANDARD_EXCHANGES.iter().any(|(x, _)| *x == name)
}

/// Parameters of `queue.declare`.
#[derive(Debug, Clone)]
pub struct QueueDeclare {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Parameters of `exchange.declare`.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug)]
pub struct ConnectionEntry {
    pub events: EventSender,
    pub user: String,
    pub vhost: String,
    pub peer: String,
    pub blocked_notify: bool,
    /// `connection_name`, `product` and `version` from the client's properties.
    pub client_name: String,
    pub client_product: String,
    pub client_version: String,
    /// Wall-clock milliseconds since the epoch.
    pub connected_at_ms: u64,
    pub stats: Arc<crate::delivery::ConnectionStats>,
}

#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    pub wal: Arc<Wal>,
    definitions: Definitions,
    vhosts: RwLock<HashMap<String, Arc<Vhost>>>,
    users: RwLock<HashMap<String, User>>,
    permissions: RwLock<HashMap<(String, String), CompiledPermission>>,
    next_queue_id: AtomicU64,
    next_conn_id: AtomicU64,
    /// Serialises definition changes: each is checked, applied and persisted as one step.
    ddl: tokio::sync::Mutex<u64>,
    connections: Mutex<HashMap<ConnId, ConnectionEntry>>,
    pub started: Instant,
    disk_blocked: AtomicBool,
    pub totals: crate::statistics::GlobalCounters,
    /// The cluster node, on a clustered broker (set once at start).
    cluster: std::sync::OnceLock<warren_cluster::node::Node>,
    /// This node's part of each quorum queue.
    quorum: Mutex<Vec<Arc<crate::quorum::QuorumQueue>>>,
    /// On a clustered node at start, the vhosts holding this node's own queues, until the
    /// metadata group adds them (or, having deleted them, never does).
    preloaded: Mutex<HashMap<String, Arc<Vhost>>>,
    /// The cluster's classic queues (empty on a single node).
    pub(crate) classic: crate::classic::ClassicQueues,
}

mod access;
mod routes;
mod topology;

pub use access::Added;
pub use routes::{TapSpec, TapView};
pub(crate) use topology::check_equivalent;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    /// Opens the log under `config.data_dir`, recovers definitions and messages, and starts
    /// every durable queue. Must run inside a tokio runtime. Single node only (a clustered
    /// configuration needs [`Broker::start`]).
    pub fn open(config: Config) -> Result<Arc<Broker>, BrokerError> {
        let (broker, loaded) = Broker::open_log(config)?;
        broker.recover(loaded)?;
        tokio::spawn(crate::statistics::sample_forever(Arc::downgrade(&broker)));
        Ok(broker)
    }

    /// Starts a broker: [`Broker::open`] for a single node; for a clustered one, also joins
    /// the cluster (its raft listener, the metadata group replayed up to what this node knew
    /// as committed), recovers this node's classic queues, and makes sure the cluster has its
    /// default and configured users (which waits for a majority of the members).
    pub async fn start(config: Config) -> Result<Arc<Broker>, BrokerError> {
        let Some(cluster) = config.cluster.clone() else {
            return Broker::open(config);
        };
        let (broker, mut loaded) = Broker::open_log(config)?;
        let node = warren_cluster::node::Node::new(cluster, Arc::clone(&broker.wal))
            .map_err(|e| BrokerError::Config(crate::config::ConfigError(e)))?;
        crate::replication::serve_node(&broker, &node).await?;
        let _ = broker.cluster.set(node.clone());
        let members: Vec<u64> = node.config().members.keys().copied().collect();
        // A new cluster's metadata group is initialized by its lowest member; a joining node
        // waits to be added.
        let bootstrapper = (!node.config().join)
            .then(|| members.iter().min().copied())
            .flatten();
        if node.config().join {
            tracing::info!("joining a running cluster: waiting to be added as a member");
        }
        // This node's own classic queues first, in vhosts set aside until the metadata group
        // adds them: the bindings it replays find them. The rest of the definitions, the
        // bindings included, come from the group.
        {
            let mut preloaded = lock(&broker.preloaded);
            for v in &loaded.vhosts {
                preloaded.insert(v.name.clone(), new_vhost(&v.name));
            }
        }
        loaded.bindings.clear();
        broker.recover_local(loaded)?;
        node.start_group(
            crate::replication::META_GROUP,
            &members,
            bootstrapper,
            crate::replication::MetaState::new(&broker),
        )
        .await
        .map_err(BrokerError::Cluster)?;
        node.follow_addresses(crate::replication::META_GROUP);
        broker.settle_classic_queues();
        broker.watch_for_down_nodes();
        tokio::spawn(crate::statistics::sample_forever(Arc::downgrade(&broker)));
        broker.ensure_cluster_access().await;
        Ok(broker)
    }

    pub fn quorum_queues(&self) -> Vec<Arc<crate::quorum::QuorumQueue>> {
        lock(&self.quorum).clone()
    }

    pub(crate) fn register_quorum(&self, q: Arc<crate::quorum::QuorumQueue>) {
        lock(&self.quorum).push(q);
    }

    /// Replaces the registered quorum queue of the same handle (its declaration changed).
    pub(crate) fn replace_quorum(&self, q: Arc<crate::quorum::QuorumQueue>) {
        let mut all = lock(&self.quorum);
        if let Some(slot) = all.iter_mut().find(|x| x.handle.id == q.handle.id) {
            *slot = q;
        }
    }

    pub(crate) fn unregister_quorum(
        &self,
        vhost: &str,
        name: &str,
    ) -> Option<Arc<crate::quorum::QuorumQueue>> {
        let mut all = lock(&self.quorum);
        let at = all
            .iter()
            .position(|q| q.decl.vhost == vhost && q.decl.name == name)?;
        Some(all.remove(at))
    }

    pub(crate) fn next_queue_id(&self) -> u64 {
        self.next_queue_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The cluster node, when clustered.
    pub fn cluster_node(&self) -> Option<&warren_cluster::node::Node> {
        self.cluster.get()
    }

    fn open_log(config: Config) -> Result<(Arc<Broker>, crate::definitions::Loaded), BrokerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::Io {
            what: "creating data directory",
            path: config.data_dir.clone(),
            source,
        })?;
        let mut wal_config = WalConfig::new(config.data_dir.join("wal"));
        wal_config.segment_bytes_max = config.storage.segment_bytes;
        wal_config.prepare_segments = config.storage.prepare_segments;
        wal_config.checkpoint_interval_ms = config.storage.checkpoint_interval_ms;
        wal_config.group_commit_wait_us_max = config.storage.group_commit_wait_us_max;
        wal_config.record_bytes_max = (config.limits.message_bytes_max + 128 * 1024)
            .max(wal_config.record_bytes_max as u64) as usize;
        let wal = Arc::new(Wal::open_dir(wal_config)?);
        let definitions = Definitions::new(Arc::clone(&wal));
        let loaded = definitions.load()?;
        let broker = Arc::new(Broker {
            config,
            wal,
            definitions,
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            permissions: RwLock::new(HashMap::new()),
            next_queue_id: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            ddl: tokio::sync::Mutex::new(loaded.next_stream),
            connections: Mutex::new(HashMap::new()),
            started: Instant::now(),
            disk_blocked: AtomicBool::new(false),
            totals: Default::default(),
            cluster: std::sync::OnceLock::new(),
            quorum: Mutex::new(Vec::new()),
            classic: Default::default(),
            preloaded: Mutex::new(HashMap::new()),
        });
        Ok((broker, loaded))
    }

    fn recover(
        self: &Arc<Broker>,
        mut loaded: crate::definitions::Loaded,
    ) -> Result<(), BrokerError> {
        let fresh = loaded.vhosts.is_empty() && loaded.users.is_empty();
        if fresh {
            let d = &self.config.default_user;
            let vhost = VhostDecl {
                name: d.vhost.clone(),
            };
            let user = User::with_password(&d.user, &d.password, vec!["administrator".into()]);
            let permission = Permission {
                user: d.user.clone(),
                vhost: d.vhost.clone(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            };
            self.definitions.put_vhost(&vhost)?;
            self.definitions.put_user(&user)?;
            self.definitions.put_permission(&permission)?;
            self.wal.sync()?;
            self.add_vhost_in_memory(&vhost.name);
            self.users.write().unwrap().insert(user.name.clone(), user);
            self.add_permission_in_memory(&permission);
            tracing::info!(user = %d.user, vhost = %d.vhost, "created the default user and vhost");
        }
        for v in &loaded.vhosts {
            self.add_vhost_in_memory(&v.name);
        }
        for u in std::mem::take(&mut loaded.users) {
            self.users.write().unwrap().insert(u.name.clone(), u);
        }
        for p in &loaded.permissions {
            self.add_permission_in_memory(p);
        }
        self.apply_configured_access()?;
        for decl in std::mem::take(&mut loaded.exchanges) {
            let Some(vhost) = self.vhost(&decl.vhost) else {
                continue;
            };
            let Some(kind) = ExchangeKind::parse(&decl.kind) else {
                continue;
            };
            vhost
                .write()
                .exchanges
                .insert(decl.name.clone(), Exchange::new(decl, kind));
        }
        let detours = std::mem::take(&mut loaded.detours);
        for (vhost_name, detour) in detours {
            if let Some(vhost) = self.vhost(&vhost_name) {
                vhost
                    .write()
                    .detours
                    .entry(detour.source.clone())
                    .or_default()
                    .push(detour);
            }
        }
        self.recover_local(loaded)
    }

    /// Recovers this node's own queues (with their messages) and their bindings. (On a
    /// clustered node, the vhosts are the preloaded ones, and the bindings come from the
    /// metadata group.)
    fn recover_local(
        self: &Arc<Broker>,
        loaded: crate::definitions::Loaded,
    ) -> Result<(), BrokerError> {
        let mut recovered = 0u64;
        for decl in loaded.queues {
            let preloaded = lock(&self.preloaded).get(&decl.vhost).cloned();
            let Some(vhost) = self.vhost(&decl.vhost).or(preloaded) else {
                continue;
            };
            let args = QueueArgs::parse(&decl.arguments()).unwrap_or_default();
            let handle = self.start_queue(&vhost, decl, args);
            recovered += handle.ready();
            vhost
                .write()
                .queues
                .insert(handle.name().to_string(), handle);
        }
        for (vhost_name, binding) in loaded.bindings {
            if let Some(vhost) = self.vhost(&vhost_name) {
                if let Some(x) = vhost.write().exchanges.get_mut(&binding.source) {
                    let _ = x.bind(binding);
                }
            }
        }
        tracing::info!(
            vhosts = self.vhosts.read().unwrap().len() + lock(&self.preloaded).len(),
            messages = recovered,
            "definitions and messages recovered"
        );
        Ok(())
    }

    /// Creates the vhosts, users and permissions listed in the configuration (idempotent; a
    /// configured user's password and tags are set to the configured ones).
    fn apply_configured_access(&self) -> Result<(), BrokerError> {
        let config = &self.config;
        for name in &config.vhosts {
            if self.vhost(name).is_none() {
                self.definitions
                    .put_vhost(&VhostDecl { name: name.clone() })?;
                self.add_vhost_in_memory(name);
            }
        }
        for u in &config.users {
            let current = self.user(&u.name);
            let unchanged = current
                .as_ref()
                .is_some_and(|c| c.tags == u.tags && c.check_password(&u.password));
            if !unchanged {
                let user = User::with_password(&u.name, &u.password, u.tags.clone());
                self.definitions.put_user(&user)?;
                self.users.write().unwrap().insert(user.name.clone(), user);
            }
        }
        for p in &config.permissions {
            let permission = Permission {
                user: p.user.clone(),
                vhost: p.vhost.clone(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            self.definitions.put_permission(&permission)?;
            self.add_permission_in_memory(&permission);
        }
        self.wal.sync()?;
        Ok(())
    }

    fn add_vhost_in_memory(&self, name: &str) -> Arc<Vhost> {
        let mut vhosts = self.vhosts.write().unwrap();
        if let Some(v) = vhosts.get(name) {
            return Arc::clone(v);
        }
        let vhost = lock(&self.preloaded)
            .remove(name)
            .unwrap_or_else(|| new_vhost(name));
        vhosts.insert(name.to_string(), Arc::clone(&vhost));
        vhost
    }

    fn add_permission_in_memory(&self, p: &Permission) {
        match CompiledPermission::compile(p) {
            Ok(compiled) => {
                self.permissions
                    .write()
                    .unwrap()
                    .insert((p.user.clone(), p.vhost.clone()), compiled);
            }
            Err(error) => {
                tracing::warn!(user = %p.user, vhost = %p.vhost, %error, "permission does not compile; ignored")
            }
        }
    }

    /// Starts a queue's actor; recovers its messages if it has a log stream.
    fn start_queue(
        self: &Arc<Broker>,
        vhost: &Arc<Vhost>,
        decl: QueueDecl,
        args: QueueArgs,
    ) -> Arc<QueueHandle> {
        let id = QueueId(self.next_queue_id.fetch_add(1, Ordering::Relaxed));
        let store: Option<Arc<dyn MessageStore>> = decl
            .stream
            .map(|s| Arc::new(WalStore::new(Arc::clone(&self.wal), s)) as Arc<dyn MessageStore>);
        actor::spawn(Arc::clone(self), Arc::clone(vhost), id, decl, args, store)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.read().unwrap().get(name).cloned()
    }

    pub fn vhost_names(&self) -> Vec<String> {
        self.vhosts.read().unwrap().keys().cloned().collect()
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.users.read().unwrap().get(name).cloned()
    }

    pub fn check(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        resource: &str,
    ) -> Result<(), Refusal> {
        let allowed = self
            .permissions
            .read()
            .unwrap()
            .get(&(user.to_string(), vhost.to_string()))
            .is_some_and(|p| p.allows(access, resource));
        if allowed {
            Ok(())
        } else {
            Err(Refusal::access_refused(format!(
                "{} access to {resource} in vhost '{vhost}' refused for user '{user}'",
                access.name()
            )))
        }
    }

    pub fn has_vhost_access(&self, user: &str, vhost: &str) -> bool {
        self.permissions
            .read()
            .unwrap()
            .contains_key(&(user.to_string(), vhost.to_string()))
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn register_connection(&self, id: ConnId, entry: ConnectionEntry) {
        if self.disk_blocked.load(Ordering::Acquire) && entry.blocked_notify {
            let _ = entry
                .events
                .send(ConnEvent::Blocked(Some("low on disk".into())));
        }
        lock(&self.connections).insert(id, entry);
    }

    pub fn unregister_connection(&self, id: ConnId) {
        lock(&self.connections).remove(&id);
    }

    /// The event inbox of a live connection (direct reply-to).
    pub fn connection_events(&self, id: ConnId) -> Option<EventSender> {
        lock(&self.connections).get(&id).map(|e| e.events.clone())
    }

    /// Calls `f` with every live connection (under the registry lock: `f` must be short).
    pub fn for_each_connection(&self, mut f: impl FnMut(ConnId, &ConnectionEntry)) {
        for (id, entry) in lock(&self.connections).iter() {
            f(*id, entry);
        }
    }

    pub fn connection_count(&self) -> usize {
        lock(&self.connections).len()
    }

    /// Asks every connection to close with 320 CONNECTION_FORCED.
    pub fn close_all_connections(&self, text: &str) {
        for entry in lock(&self.connections).values() {
            let _ = entry.events.send(ConnEvent::ForceClose {
                code: ReplyCode::ConnectionForced as u16,
                text: text.to_string(),
            });
        }
    }

    pub fn is_disk_blocked(&self) -> bool {
        self.disk_blocked.load(Ordering::Acquire)
    }

    /// Sets the free-disk alarm; connections that asked for it are told.
    pub fn set_disk_blocked(&self, blocked: bool) {
        if self.disk_blocked.swap(blocked, Ordering::AcqRel) == blocked {
            return;
        }
        if blocked {
            tracing::warn!("free disk space below the limit: publishers are blocked");
        } else {
            tracing::info!("free disk space recovered: publishers unblocked");
        }
        for entry in lock(&self.connections).values() {
            let reason = blocked.then(|| "low on disk".to_string());
            let _ = entry.events.send(ConnEvent::Blocked(reason));
        }
    }

    fn vhost_or_refuse(&self, vhost: &str) -> Result<Arc<Vhost>, Refusal> {
        self.vhost(vhost).ok_or_else(|| {
            Refusal::new(ReplyCode::NotAllowed, format!("vhost '{vhost}' not found"))
        })
    }

    /// The preloaded vhosts the metadata group did not add (deleted while this node was away).
    pub(crate) fn take_preloaded(&self) -> Vec<Arc<Vhost>> {
        lock(&self.preloaded).drain().map(|(_, v)| v).collect()
    }

    /// The definitions mutex (it holds the next free log stream).
    pub(crate) async fn ddl_lock(&self) -> tokio::sync::MutexGuard<'_, u64> {
        self.ddl.lock().await
    }

    /// Waits until every definition change so far is on disk.
    async fn sync_definitions(&self) -> Result<(), Refusal> {
        self.definitions.sync().await.map_err(Refusal::from)
    }

    /// Waits until `lsn` is durable (for callers outside the definitions).
    pub async fn wait_durable(&self, lsn: warren_storage::Lsn) -> Result<(), BrokerError> {
        wait_durable(&self.wal, lsn).await
    }

    /// Deletes the exclusive queues a closing connection owned.
    pub async fn connection_closed(self: &Arc<Broker>, conn: ConnId, vhost_name: &str) {
        let Some(vhost) = self.vhost(vhost_name) else {
            return;
        };
        let owned: Vec<String> = vhost
            .read()
            .queues
            .values()
            .filter(|q| q.decl.exclusive_owner == Some(conn))
            .map(|q| q.name().to_string())
            .collect();
        for name in owned {
            if let Err(refusal) = self
                .queue_delete(vhost_name, conn, &name, false, false)
                .await
            {
                tracing::warn!(queue = %name, %refusal, "could not delete exclusive queue");
            }
        }
    }
}

fn check_exclusive(handle: &QueueHandle, conn: ConnId, vhost_name: &str) -> Result<(), Refusal> {
    match handle.decl.exclusive_owner {
        Some(owner) if owner != conn => Err(locked(handle.name(), vhost_name)),
        _ => Ok(()),
    }
}

/// 405 RESOURCE_LOCKED for a connection other than an exclusive queue's owner.
pub(crate) fn locked(name: &str, vhost_name: &str) -> Refusal {
    Refusal::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost_name}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    ))
}

/// A server-generated queue name, `amq.gen-` and 22 URL-safe characters as RabbitMQ makes them.
pub fn server_named() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.gen-{suffix}")
}

/// A vhost with the exchanges every vhost has.
fn new_vhost(name: &str) -> Arc<Vhost> {
    let vhost = Arc::new(Vhost::new(name));
    {
        let mut state = vhost.write();
        for (x, kind) in STANDARD_EXCHANGES {
            let decl = ExchangeDecl {
                vhost: name.to_string(),
                name: x.to_string(),
                kind: kind.name().to_string(),
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::new().encode().to_vec(),
            };
            state
                .exchanges
                .insert(x.to_string(), Exchange::new(decl, *kind));
        }
    }
    vhost
}
