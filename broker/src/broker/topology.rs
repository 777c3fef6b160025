//! Exchanges, queues and bindings: the operations channels (and the admin plane) perform on a
//! vhost's topology. Each is checked, applied and persisted under the definitions mutex, and
//! answered once durable.

use super::{check_exclusive, server_named, Broker, ExchangeDeclare, QueueDeclare};
use crate::amqp::constants::ReplyCode;
use crate::delivery::ConnId;
use crate::error::BrokerError;
use crate::exchange::{Binding, Destination, Exchange, ExchangeDecl, ExchangeKind};
use crate::queue::args::{self, QueueArgs, QueueType};
use crate::queue::{QueueCommand, QueueDecl, QueueHandle};
use crate::refusal::Refusal;
use crate::replication::MetaOp;
use crate::vhost::Vhost;
use std::sync::Arc;

impl Broker {
    // ----- exchanges -----

    pub async fn exchange_declare(
        &self,
        vhost_name: &str,
        d: ExchangeDeclare,
    ) -> Result<(), Refusal> {
        let vhost = self.vhost_or_refuse(vhost_name)?;
        if let Some(node) = self.proposer() {
            if d.passive {
                if !vhost.read().exchanges.contains_key(&d.name) {
                    self.catch_up().await;
                }
            } else {
                let op = MetaOp::DeclareExchange {
                    vhost: vhost_name.into(),
                    name: d.name.clone(),
                    kind: d.kind.clone(),
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments.encode().to_vec(),
                };
                return self.replicate(node, op).await.map(drop);
            }
        }
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
        if let Some(node) = self.proposer() {
            // `if-unused` is judged here (this node's bindings include its classic queues');
            // every node then deletes unconditionally.
            if if_unused {
                if let Some(x) = vhost.read().exchanges.get(name) {
                    if !x.bindings().is_empty() {
                        return Err(Refusal::precondition(format!(
                            "exchange '{name}' in vhost '{vhost_name}' in use"
                        )));
                    }
                }
            }
            let op = MetaOp::DeleteExchange {
                vhost: vhost_name.into(),
                name: name.into(),
            };
            return self.replicate(node, op).await.map(drop);
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
    pub(crate) fn remove_bindings_to(
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
        if let Some(node) = self.proposer() {
            if vhost.queue(&d.name).is_none() {
                if d.passive {
                    self.catch_up().await;
                } else {
                    // A new queue, quorum or classic, is declared through the metadata group,
                    // so every node knows it (a classic one is homed on this node).
                    let args = validate_new_queue(&d, vhost_name)?;
                    if args.queue_type == QueueType::Quorum {
                        self.propose_quorum_queue(node, &vhost, &d).await?;
                    } else {
                        self.propose_classic_queue(node, conn, vhost_name, &d)
                            .await?;
                    }
                    if vhost.queue(&d.name).is_none() {
                        return Err(Refusal::internal(format!(
                            "queue '{}' in vhost '{vhost_name}' was declared but is not \
                             available on this node",
                            d.name
                        )));
                    }
                }
            }
        }
        let mut ddl = self.ddl.lock().await;
        if let Some(existing) = vhost.queue(&d.name) {
            check_exclusive(&existing, conn, vhost_name)?;
            if !d.passive {
                check_equivalent(&existing.decl, &d, vhost_name)?;
            }
            let (ready, consumers) = existing
                .ask(|reply| QueueCommand::Touch {
                    renew: !d.passive,
                    reply,
                })
                .await
                .unwrap_or_else(|_| Ok((existing.ready(), existing.consumers())))?;
            return Ok((d.name, ready, consumers));
        }
        if d.passive {
            return Err(Refusal::not_found(format!(
                "no queue '{}' in vhost '{vhost_name}'",
                d.name
            )));
        }
        let args = validate_new_queue(&d, vhost_name)?;
        let decl = QueueDecl {
            vhost: vhost_name.to_string(),
            name: d.name.clone(),
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(conn),
            arguments: d.arguments.encode().to_vec(),
            stream: None,
            uid: 0,
        };
        self.create_queue(&vhost, &mut ddl, decl, args).await?;
        Ok((d.name, 0, 0))
    }

    /// Creates a queue on this node: persists a durable (non-exclusive) one's declaration with
    /// a new log stream, starts its actor and registers it. `ddl` is the held definitions
    /// mutex (the next free stream).
    pub(crate) async fn create_queue(
        self: &Arc<Broker>,
        vhost: &Arc<Vhost>,
        ddl: &mut u64,
        mut decl: QueueDecl,
        args: QueueArgs,
    ) -> Result<(), Refusal> {
        // Exclusive queues die with their connection: RabbitMQ never keeps them on disk.
        let persisted = decl.durable && decl.exclusive_owner.is_none();
        if persisted {
            let stream = *ddl;
            self.definitions.allocate_stream(stream)?;
            *ddl += 1;
            decl.stream = Some(stream);
            self.definitions.put_queue(&decl)?;
        }
        let name = decl.name.clone();
        let handle = self.start_queue(vhost, decl, args);
        vhost.write().queues.insert(name, handle);
        if persisted {
            self.sync_definitions().await?;
        }
        Ok(())
    }

    pub async fn queue_delete(
        self: &Arc<Broker>,
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
        if let (Some(node), Some(decl)) = (self.proposer(), self.classic_queue(vhost_name, name)) {
            return self
                .delete_classic_queue(node, &vhost, &handle, decl, if_unused, if_empty)
                .await;
        }
        if self.is_quorum(&vhost, &handle) {
            return self
                .delete_quorum_queue(&vhost, &handle, if_unused, if_empty)
                .await;
        }
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
        if let Some(node) = self.proposer() {
            self.check_destination_access(&vhost, conn, &binding.destination)?;
            return self
                .replicate_binding(node, vhost_name, binding, true)
                .await;
        }
        let _ddl = self.ddl.lock().await;
        let durable;
        {
            let mut state = vhost.write();
            let destination_durable = match &binding.destination {
                Destination::Queue(q) => {
                    let handle = state.queues.get(q).ok_or_else(|| {
                        Refusal::not_found(format!("no queue '{q}' in vhost '{vhost_name}'"))
                    })?;
                    if !crate::replication::applying() {
                        check_exclusive(handle, conn, vhost_name)?;
                    }
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
        if let Some(node) = self.proposer() {
            self.check_destination_access(&vhost, conn, &binding.destination)?;
            return self
                .replicate_binding(node, vhost_name, binding, false)
                .await;
        }
        let _ddl = self.ddl.lock().await;
        {
            let mut state = vhost.write();
            if let Destination::Queue(q) = &binding.destination {
                if let Some(handle) = state.queues.get(q) {
                    if !crate::replication::applying() {
                        check_exclusive(handle, conn, vhost_name)?;
                    }
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
}

/// What a new queue's declaration must satisfy: no reserved name, arguments RabbitMQ accepts,
/// and a quorum queue's properties. Returns the parsed arguments.
fn validate_new_queue(d: &QueueDeclare, vhost_name: &str) -> Result<QueueArgs, Refusal> {
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
        check_quorum_properties(d, vhost_name)?;
    }
    Ok(args)
}

/// Refuses (406) a declaration of an existing queue that differs in its properties or the
/// arguments RabbitMQ compares.
pub(crate) fn check_equivalent(
    current: &QueueDecl,
    d: &QueueDeclare,
    vhost_name: &str,
) -> Result<(), Refusal> {
    let inequivalent = |what: &str, received: bool, current: bool| {
        Refusal::precondition(format!(
            "inequivalent arg '{what}' for queue '{}' in vhost '{vhost_name}': received '{received}' but current is '{current}'",
            d.name
        ))
    };
    if current.durable != d.durable {
        return Err(inequivalent("durable", d.durable, current.durable));
    }
    if current.auto_delete != d.auto_delete {
        return Err(inequivalent(
            "auto_delete",
            d.auto_delete,
            current.auto_delete,
        ));
    }
    if current.exclusive_owner.is_some() != d.exclusive {
        return Err(inequivalent(
            "exclusive",
            d.exclusive,
            current.exclusive_owner.is_some(),
        ));
    }
    args::equivalent(&current.arguments(), &d.arguments).map_err(|text| {
        Refusal::precondition(format!(
            "{text} (queue '{}' in vhost '{vhost_name}')",
            d.name
        ))
    })
}

/// What `x-queue-type: quorum` refuses (as RabbitMQ: 406 with the property named).
fn check_quorum_properties(d: &QueueDeclare, vhost_name: &str) -> Result<(), Refusal> {
    let bad = if !d.durable {
        Some("non-durable")
    } else if d.exclusive {
        Some("exclusive-owner")
    } else if d.auto_delete {
        Some("auto-delete")
    } else {
        None
    };
    match bad {
        Some(property) => Err(Refusal::precondition(format!(
            "invalid property '{property}' for queue '{}' in vhost '{vhost_name}'",
            d.name
        ))),
        None => Ok(()),
    }
}

impl Broker {
    /// On a clustered node, before proposing a binding: an exclusive queue is bound only by
    /// its owner (each node's applying it cannot tell connections apart).
    fn check_destination_access(
        &self,
        vhost: &Vhost,
        conn: ConnId,
        destination: &Destination,
    ) -> Result<(), Refusal> {
        match destination {
            Destination::Queue(q) => match vhost.queue(q) {
                Some(handle) => check_exclusive(&handle, conn, &vhost.name),
                None => Ok(()),
            },
            Destination::Exchange(_) => Ok(()),
        }
    }

    /// Proposes a binding (`add`) or its removal to the metadata group.
    async fn replicate_binding(
        &self,
        node: &warren_cluster::node::Node,
        vhost_name: &str,
        binding: Binding,
        add: bool,
    ) -> Result<(), Refusal> {
        let vhost = vhost_name.to_string();
        let op = if add {
            MetaOp::Bind { vhost, binding }
        } else {
            MetaOp::Unbind { vhost, binding }
        };
        self.replicate(node, op).await.map(drop)
    }

    /// Proposes a new quorum queue to the metadata group.
    async fn propose_quorum_queue(
        &self,
        node: &warren_cluster::node::Node,
        vhost: &Vhost,
        d: &QueueDeclare,
    ) -> Result<(), Refusal> {
        if d.name.starts_with("amq.") {
            return Err(Refusal::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let members: Vec<u64> = self.cluster_members().into_keys().collect();
        let replicas = crate::quorum::choose_replicas(&members);
        let decl = crate::quorum::QuorumDecl {
            vhost: vhost.name.clone(),
            name: d.name.clone(),
            arguments: d.arguments.encode().to_vec(),
            group: crate::quorum::new_group_id(),
            bootstrap: replicas.iter().min().copied().unwrap_or(node.id()),
            replicas,
        };
        self.replicate(node, MetaOp::DeclareQuorumQueue(decl))
            .await
            .map(drop)
    }

    /// Deletes a quorum queue cluster-wide; the conditions are judged by its leader's counts.
    async fn delete_quorum_queue(
        &self,
        vhost: &Vhost,
        handle: &QueueHandle,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u64, Refusal> {
        let name = handle.name();
        let (ready, consumers) = handle.counts().await;
        if if_unused && consumers > 0 {
            return Err(Refusal::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                vhost.name
            )));
        }
        if if_empty && ready > 0 {
            return Err(Refusal::precondition(format!(
                "queue '{name}' in vhost '{}' not empty",
                vhost.name
            )));
        }
        let op = MetaOp::DeleteQuorumQueue {
            vhost: vhost.name.clone(),
            name: name.to_string(),
        };
        match self.proposer() {
            Some(node) => self.replicate(node, op).await.map(|_| ready),
            None => self.delete_quorum_here(&vhost.name, name).await,
        }
    }
}
