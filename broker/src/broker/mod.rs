//! The broker: vhosts, users and permissions, and the operations channels perform on them
//! (declare, delete, bind, purge). Definition changes are serialised by one async mutex and
//! made durable before they are answered.

use crate::amqp::constants::ReplyCode;
use crate::amqp::FieldTable;
use crate::auth::{Access, CompiledPermission, Permission, User};
use crate::config::Config;
use crate::definitions::{wait_durable, Definitions, VhostDecl};
use crate::delivery::{ConnEvent, ConnId, EventSender};
use crate::error::BrokerError;
use crate::exchange::{Binding, Destination, Exchange, ExchangeDecl, ExchangeKind};
use crate::queue::args::{self, QueueArgs, QueueType};
use crate::queue::store::{MessageStore, WalStore};
use crate::queue::{actor, QueueCommand, QueueDecl, QueueHandle, QueueId};
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
}

mod access;
mod routes;

pub use access::Added;
pub use routes::{TapSpec, TapView};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    /// Opens the log under `config.data_dir`, recovers definitions and messages, and starts
    /// every durable queue. Must run inside a tokio runtime.
    pub fn open(config: Config) -> Result<Arc<Broker>, BrokerError> {
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
        });
        broker.recover(loaded)?;
        tokio::spawn(crate::statistics::sample_forever(Arc::downgrade(&broker)));
        Ok(broker)
    }

    fn recover(self: &Arc<Broker>, loaded: crate::definitions::Loaded) -> Result<(), BrokerError> {
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
        for u in loaded.users {
            self.users.write().unwrap().insert(u.name.clone(), u);
        }
        for p in &loaded.permissions {
            self.add_permission_in_memory(p);
        }
        self.apply_configured_access()?;
        for decl in loaded.exchanges {
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
        let mut recovered = 0u64;
        for decl in loaded.queues {
            let Some(vhost) = self.vhost(&decl.vhost) else {
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
        for (vhost_name, detour) in loaded.detours {
            if let Some(vhost) = self.vhost(&vhost_name) {
                vhost
                    .write()
                    .detours
                    .entry(detour.source.clone())
                    .or_default()
                    .push(detour);
            }
        }
        tracing::info!(
            vhosts = self.vhosts.read().unwrap().len(),
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

    /// Waits until every definition change so far is on disk.
    async fn sync_definitions(&self) -> Result<(), Refusal> {
        self.definitions.sync().await.map_err(Refusal::from)
    }

    // ----- exchanges -----

    pub async fn exchange_declare(
        &self,
        vhost_name: &str,
        d: ExchangeDeclare,
    ) -> Result<(), Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        let _ddl = self.ddl.lock().await;
        let missing =
            || Refusal::not_found(format!("no exchange '{}' in vhost '{vhost_name}'", d.name));
        {
            let state = vhost.read();
            if let Some(existing) = state.exchanges.get(&d.name) {
                if d.passive {
                    return Ok(());
                }
                let e = &existing.decl;
                let inequivalent =
                    |what: &str,
                     received: &dyn std::fmt::Display,
                     current: &dyn std::fmt::Display| {
                        Refusal::precondition(format!(
                        "inequivalent arg '{what}' for exchange '{}' in vhost '{vhost_name}': received '{received}' but current is '{current}'",
                        d.name
                    ))
                    };
                if e.kind != d.kind {
                    return Err(inequivalent("type", &d.kind, &e.kind));
                }
                if e.durable != d.durable {
                    return Err(inequivalent("durable", &d.durable, &e.durable));
                }
                if e.auto_delete != d.auto_delete {
                    return Err(inequivalent("auto_delete", &d.auto_delete, &e.auto_delete));
                }
                if e.internal != d.internal {
                    return Err(inequivalent("internal", &d.internal, &e.internal));
                }
                let current = e.arguments();
                let a = current.get("alternate-exchange");
                let b = d.arguments.get("alternate-exchange");
                if a != b {
                    return Err(Refusal::precondition(format!(
                        "inequivalent arg 'alternate-exchange' for exchange '{}' in vhost '{vhost_name}'",
                        d.name
                    )));
                }
                return Ok(());
            }
        }
        if d.passive {
            return Err(missing());
        }
        if d.name.starts_with("amq.") {
            return Err(Refusal::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let Some(kind) = ExchangeKind::parse(&d.kind) else {
            return Err(Refusal::new(
                ReplyCode::CommandInvalid,
                format!("unknown exchange type '{}'", d.kind),
            ));
        };
        let decl = ExchangeDecl {
            vhost: vhost_name.to_string(),
            name: d.name.clone(),
            kind: d.kind.clone(),
            durable: d.durable,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: d.arguments.encode().to_vec(),
        };
        if d.durable {
            self.definitions.put_exchange(&decl)?;
        }
        vhost
            .write()
            .exchanges
            .insert(d.name.clone(), Exchange::new(decl, kind));
        if d.durable {
            self.sync_definitions().await?;
        }
        Ok(())
    }

    pub async fn exchange_delete(
        &self,
        vhost_name: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        if name.is_empty() || name.starts_with("amq.") {
            return Err(Refusal::access_refused(format!(
                "operation not permitted on the default exchange or system exchange '{name}'"
            )));
        }
        let _ddl = self.ddl.lock().await;
        {
            let mut state = vhost.write();
            let Some(x) = state.exchanges.get(name) else {
                return Ok(());
            };
            if if_unused && !x.bindings().is_empty() {
                return Err(Refusal::precondition(format!(
                    "exchange '{name}' in vhost '{vhost_name}' in use"
                )));
            }
            let x = state.exchanges.remove(name).expect("checked above");
            if x.decl.durable {
                self.definitions.delete_exchange(vhost_name, name)?;
            }
            for b in x.bindings() {
                self.definitions.delete_binding(vhost_name, b)?;
            }
            let gone = Destination::Exchange(name.to_string());
            self.remove_bindings_to(&mut state, vhost_name, &gone)?;
        }
        self.sync_definitions().await
    }

    /// Removes every binding to `destination`, then auto-delete exchanges left unused.
    fn remove_bindings_to(
        &self,
        state: &mut crate::vhost::VhostState,
        vhost_name: &str,
        destination: &Destination,
    ) -> Result<(), BrokerError> {
        let mut emptied = Vec::new();
        for x in state.exchanges.values_mut() {
            let removed = x.unbind_destination(destination);
            for b in &removed {
                self.definitions.delete_binding(vhost_name, b)?;
            }
            if !removed.is_empty() && x.decl.auto_delete && x.bindings().is_empty() {
                emptied.push(x.name().to_string());
            }
        }
        for name in emptied {
            if let Some(x) = state.exchanges.remove(&name) {
                if x.decl.durable {
                    self.definitions.delete_exchange(vhost_name, &name)?;
                }
                let gone = Destination::Exchange(name);
                self.remove_bindings_to(state, vhost_name, &gone)?;
            }
        }
        Ok(())
    }

    // ----- queues -----

    /// Looks a queue up for a connection, enforcing exclusivity (405 RESOURCE_LOCKED).
    pub fn queue_for(
        &self,
        vhost_name: &str,
        name: &str,
        conn: ConnId,
    ) -> Result<Arc<QueueHandle>, Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        let handle = vhost.queue(name).ok_or_else(|| {
            Refusal::not_found(format!("no queue '{name}' in vhost '{vhost_name}'"))
        })?;
        check_exclusive(&handle, conn, vhost_name)?;
        Ok(handle)
    }

    pub async fn queue_declare(
        self: &Arc<Broker>,
        vhost_name: &str,
        conn: ConnId,
        mut d: QueueDeclare,
    ) -> Result<(String, u64, u64), Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        if d.name.is_empty() && !d.passive {
            d.name = server_named();
        }
        let mut ddl = self.ddl.lock().await;
        if let Some(existing) = vhost.queue(&d.name) {
            check_exclusive(&existing, conn, vhost_name)?;
            if !d.passive {
                let e = &existing.decl;
                let inequivalent = |what: &str, received: bool, current: bool| {
                    Refusal::precondition(format!(
                        "inequivalent arg '{what}' for queue '{}' in vhost '{vhost_name}': received '{received}' but current is '{current}'",
                        d.name
                    ))
                };
                if e.durable != d.durable {
                    return Err(inequivalent("durable", d.durable, e.durable));
                }
                if e.auto_delete != d.auto_delete {
                    return Err(inequivalent("auto_delete", d.auto_delete, e.auto_delete));
                }
                if e.exclusive_owner.is_some() != d.exclusive {
                    return Err(inequivalent(
                        "exclusive",
                        d.exclusive,
                        e.exclusive_owner.is_some(),
                    ));
                }
                args::equivalent(&e.arguments(), &d.arguments).map_err(|text| {
                    Refusal::precondition(format!(
                        "{text} (queue '{}' in vhost '{vhost_name}')",
                        d.name
                    ))
                })?;
            }
            let (ready, consumers) = existing
                .ask(|reply| QueueCommand::Touch {
                    renew: !d.passive,
                    reply,
                })
                .await
                .unwrap_or((existing.ready(), existing.consumers()));
            return Ok((d.name, ready, consumers));
        }
        if d.passive {
            return Err(Refusal::not_found(format!(
                "no queue '{}' in vhost '{vhost_name}'",
                d.name
            )));
        }
        if d.name.starts_with("amq.") && !d.name.starts_with("amq.gen-") {
            return Err(Refusal::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let args = QueueArgs::parse(&d.arguments).map_err(|text| {
            Refusal::precondition(format!(
                "{text} for queue '{}' in vhost '{vhost_name}'",
                d.name
            ))
        })?;
        if args.queue_type == QueueType::Quorum {
            let bad = if !d.durable {
                Some("non-durable")
            } else if d.exclusive {
                Some("exclusive-owner")
            } else if d.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(property) = bad {
                return Err(Refusal::precondition(format!(
                    "invalid property '{property}' for queue '{}' in vhost '{vhost_name}'",
                    d.name
                )));
            }
        }
        // Exclusive queues die with their connection: RabbitMQ never keeps them on disk.
        let persisted = d.durable && !d.exclusive;
        let mut decl = QueueDecl {
            vhost: vhost_name.to_string(),
            name: d.name.clone(),
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(conn),
            arguments: d.arguments.encode().to_vec(),
            stream: None,
        };
        if persisted {
            let stream = *ddl;
            self.definitions.allocate_stream(stream)?;
            *ddl += 1;
            decl.stream = Some(stream);
            self.definitions.put_queue(&decl)?;
        }
        let handle = self.start_queue(&vhost, decl, args);
        vhost.write().queues.insert(d.name.clone(), handle);
        if persisted {
            self.sync_definitions().await?;
        }
        Ok((d.name, 0, 0))
    }

    pub async fn queue_delete(
        &self,
        vhost_name: &str,
        conn: ConnId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u64, Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        let Some(handle) = vhost.queue(name) else {
            return Ok(0);
        };
        check_exclusive(&handle, conn, vhost_name)?;
        match handle
            .ask(|reply| QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            })
            .await
        {
            Ok(result) => result,
            Err(_) => Ok(0),
        }
    }

    /// Removes a deleted queue from its vhost (registry, bindings, definitions). Called by the
    /// queue's actor as it stops.
    pub fn forget_queue(&self, vhost: &Vhost, handle: &QueueHandle) -> Result<(), BrokerError> {
        let mut state = vhost.write();
        if state
            .queues
            .get(handle.name())
            .is_some_and(|h| h.id == handle.id)
        {
            state.queues.remove(handle.name());
        }
        if handle.decl.stream.is_some() {
            self.definitions.delete_queue(&vhost.name, handle.name())?;
        }
        let gone = Destination::Queue(handle.name().to_string());
        self.remove_bindings_to(&mut state, &vhost.name, &gone)?;
        Ok(())
    }

    pub async fn queue_purge(
        &self,
        vhost_name: &str,
        conn: ConnId,
        name: &str,
    ) -> Result<u64, Refusal> {
        let handle = self.queue_for(vhost_name, name, conn)?;
        handle
            .ask(|reply| QueueCommand::Purge { reply })
            .await
            .map_err(|_| Refusal::not_found(format!("no queue '{name}' in vhost '{vhost_name}'")))
    }

    // ----- bindings -----

    pub async fn bind(
        &self,
        vhost_name: &str,
        conn: ConnId,
        binding: Binding,
    ) -> Result<(), Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        let _ddl = self.ddl.lock().await;
        let durable;
        {
            let mut state = vhost.write();
            let destination_durable = match &binding.destination {
                Destination::Queue(q) => {
                    let handle = state.queues.get(q).ok_or_else(|| {
                        Refusal::not_found(format!("no queue '{q}' in vhost '{vhost_name}'"))
                    })?;
                    check_exclusive(handle, conn, vhost_name)?;
                    handle.decl.stream.is_some()
                }
                Destination::Exchange(x) => {
                    let x = state.exchanges.get(x).ok_or_else(|| {
                        Refusal::not_found(format!("no exchange '{x}' in vhost '{vhost_name}'"))
                    })?;
                    x.decl.durable
                }
            };
            if binding.source.is_empty()
                || binding.destination == Destination::Exchange(String::new())
            {
                return Err(Refusal::access_refused(format!(
                    "operation not permitted on the default exchange (vhost '{vhost_name}')"
                )));
            }
            let source = state.exchanges.get_mut(&binding.source).ok_or_else(|| {
                Refusal::not_found(format!(
                    "no exchange '{}' in vhost '{vhost_name}'",
                    binding.source
                ))
            })?;
            durable = destination_durable && source.decl.durable;
            let added = source
                .bind(binding.clone())
                .map_err(Refusal::precondition)?;
            if added && durable {
                self.definitions.put_binding(vhost_name, &binding)?;
            }
        }
        if durable {
            self.sync_definitions().await?;
        }
        Ok(())
    }

    pub async fn unbind(
        &self,
        vhost_name: &str,
        conn: ConnId,
        binding: Binding,
    ) -> Result<(), Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        let _ddl = self.ddl.lock().await;
        {
            let mut state = vhost.write();
            if let Destination::Queue(q) = &binding.destination {
                if let Some(handle) = state.queues.get(q) {
                    check_exclusive(handle, conn, vhost_name)?;
                }
            }
            if binding.source.is_empty() {
                return Err(Refusal::access_refused(format!(
                    "operation not permitted on the default exchange (vhost '{vhost_name}')"
                )));
            }
            let Some(source) = state.exchanges.get_mut(&binding.source) else {
                return Ok(());
            };
            if !source.unbind(&binding) {
                return Ok(());
            }
            self.definitions.delete_binding(vhost_name, &binding)?;
            if source.decl.auto_delete && source.bindings().is_empty() {
                let name = binding.source.clone();
                if let Some(x) = state.exchanges.remove(&name) {
                    if x.decl.durable {
                        self.definitions.delete_exchange(vhost_name, &name)?;
                    }
                    self.remove_bindings_to(&mut state, vhost_name, &Destination::Exchange(name))?;
                }
            }
        }
        self.sync_definitions().await
    }

    /// Waits until `lsn` is durable (for callers outside the definitions).
    pub async fn wait_durable(&self, lsn: warren_storage::Lsn) -> Result<(), BrokerError> {
        wait_durable(&self.wal, lsn).await
    }

    /// Deletes the exclusive queues a closing connection owned.
    pub async fn connection_closed(&self, conn: ConnId, vhost_name: &str) {
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
        Some(owner) if owner != conn => Err(Refusal::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{vhost_name}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            handle.name()
        ))),
        _ => Ok(()),
    }
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
