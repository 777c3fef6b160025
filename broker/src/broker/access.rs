//! Vhosts, users and permissions changed at run time (the admin plane), made durable before
//! they are answered, as every definition is.

use super::{lock, Broker};
use crate::amqp::constants::ReplyCode;
use crate::auth::{CompiledPermission, Permission, User};
use crate::definitions::VhostDecl;
use crate::delivery::ConnEvent;
use crate::refusal::Refusal;
use crate::replication::{MetaOk, MetaOp};

/// What adding a vhost did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Created,
    AlreadyThere,
}

impl Broker {
    pub async fn add_vhost(&self, name: &str) -> Result<Added, Refusal> {
        if name.is_empty() {
            return Err(Refusal::new(ReplyCode::SyntaxError, "a vhost needs a name"));
        }
        // Definition keys separate their parts with NUL (see `definitions.rs`).
        if name.contains('\0') || name.len() > 255 {
            return Err(Refusal::new(
                ReplyCode::SyntaxError,
                "a vhost name is at most 255 bytes and holds no NUL",
            ));
        }
        if let Some(node) = self.proposer() {
            let ok = self.replicate(node, MetaOp::AddVhost(name.into())).await?;
            return Ok(if ok == MetaOk::Created(true) {
                Added::Created
            } else {
                Added::AlreadyThere
            });
        }
        let _ddl = self.ddl.lock().await;
        if self.vhost(name).is_some() {
            return Ok(Added::AlreadyThere);
        }
        self.definitions.put_vhost(&VhostDecl {
            name: name.to_string(),
        })?;
        self.add_vhost_in_memory(name);
        self.sync_definitions().await?;
        tracing::info!(vhost = %name, "vhost added");
        Ok(Added::Created)
    }

    /// Deletes a vhost: its connections are closed (320), its queues deleted with their
    /// messages, its exchanges, bindings, detours and permissions removed.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), Refusal> {
        if let Some(node) = self.proposer() {
            if self.vhost(name).is_none() {
                self.catch_up().await;
            }
            return self
                .replicate(node, MetaOp::DeleteVhost(name.into()))
                .await
                .map(drop);
        }
        let Some(vhost) = self.vhost(name) else {
            return Err(Refusal::not_found(format!("no vhost '{name}'")));
        };
        self.vhosts.write().unwrap().remove(name);
        for entry in lock(&self.connections).values().filter(|e| e.vhost == name) {
            let _ = entry.events.send(ConnEvent::ForceClose {
                code: ReplyCode::ConnectionForced as u16,
                text: format!("vhost '{name}' is deleted"),
            });
        }
        for proxy in self.drop_classic_vhost(name) {
            vhost.write().queues.remove(proxy.name());
        }
        let queues: Vec<_> = vhost.read().queues.values().cloned().collect();
        for q in queues {
            if self.is_quorum(&vhost, &q) {
                self.delete_quorum_here(name, q.name()).await?;
                continue;
            }
            q.delete_now().await;
        }
        let _ddl = self.ddl.lock().await;
        {
            let state = vhost.write();
            for x in state.exchanges.values() {
                if x.decl.durable && !x.name().is_empty() && !x.name().starts_with("amq.") {
                    self.definitions.delete_exchange(name, x.name())?;
                }
                for b in x.bindings() {
                    self.definitions.delete_binding(name, b)?;
                }
            }
            for detour in state.detours.values().flatten() {
                self.definitions.delete_detour(name, detour)?;
            }
        }
        let users: Vec<String> = self
            .permissions
            .read()
            .unwrap()
            .keys()
            .filter(|(_, v)| v == name)
            .map(|(u, _)| u.clone())
            .collect();
        for user in users {
            self.definitions.delete_permission(name, &user)?;
            self.permissions
                .write()
                .unwrap()
                .remove(&(user, name.to_string()));
        }
        self.definitions.delete_vhost(name)?;
        self.sync_definitions().await?;
        tracing::info!(vhost = %name, "vhost deleted");
        Ok(())
    }

    pub fn users(&self) -> Vec<User> {
        let mut users: Vec<User> = self.users.read().unwrap().values().cloned().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Creates or replaces a user.
    pub async fn put_user(&self, user: User) -> Result<(), Refusal> {
        if user.name.is_empty() {
            return Err(Refusal::new(ReplyCode::SyntaxError, "a user needs a name"));
        }
        if let Some(node) = self.proposer() {
            return self.replicate(node, MetaOp::PutUser(user)).await.map(drop);
        }
        let _ddl = self.ddl.lock().await;
        self.definitions.put_user(&user)?;
        tracing::info!(user = %user.name, tags = ?user.tags, "user created or updated");
        self.users.write().unwrap().insert(user.name.clone(), user);
        self.sync_definitions().await
    }

    /// Deletes a user with their permissions, and closes their connections (320).
    pub async fn delete_user(&self, name: &str) -> Result<(), Refusal> {
        if let Some(node) = self.proposer() {
            return self
                .replicate(node, MetaOp::DeleteUser(name.into()))
                .await
                .map(drop);
        }
        let _ddl = self.ddl.lock().await;
        if self.users.write().unwrap().remove(name).is_none() {
            return Err(Refusal::not_found(format!("no user '{name}'")));
        }
        self.definitions.delete_user(name)?;
        let vhosts: Vec<String> = self
            .permissions
            .read()
            .unwrap()
            .keys()
            .filter(|(u, _)| u == name)
            .map(|(_, v)| v.clone())
            .collect();
        for vhost in vhosts {
            self.definitions.delete_permission(&vhost, name)?;
            self.permissions
                .write()
                .unwrap()
                .remove(&(name.to_string(), vhost));
        }
        for entry in lock(&self.connections).values().filter(|e| e.user == name) {
            let _ = entry.events.send(ConnEvent::ForceClose {
                code: ReplyCode::ConnectionForced as u16,
                text: format!("user '{name}' is deleted"),
            });
        }
        tracing::info!(user = %name, "user deleted");
        self.sync_definitions().await
    }

    pub fn permissions(&self) -> Vec<Permission> {
        let mut list: Vec<Permission> = self
            .permissions
            .read()
            .unwrap()
            .values()
            .map(|p| p.source().clone())
            .collect();
        list.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        list
    }

    pub async fn set_permission(&self, p: Permission) -> Result<(), Refusal> {
        let compiled = CompiledPermission::compile(&p)
            .map_err(|e| Refusal::new(ReplyCode::SyntaxError, e.to_string()))?;
        if let Some(node) = self.proposer() {
            return self
                .replicate(node, MetaOp::SetPermission(p))
                .await
                .map(drop);
        }
        let _ddl = self.ddl.lock().await;
        if self.vhost(&p.vhost).is_none() {
            return Err(Refusal::not_found(format!("no vhost '{}'", p.vhost)));
        }
        if self.user(&p.user).is_none() {
            return Err(Refusal::not_found(format!("no user '{}'", p.user)));
        }
        self.definitions.put_permission(&p)?;
        self.permissions
            .write()
            .unwrap()
            .insert((p.user.clone(), p.vhost.clone()), compiled);
        tracing::info!(user = %p.user, vhost = %p.vhost, "permissions set");
        self.sync_definitions().await
    }

    pub async fn clear_permission(&self, user: &str, vhost: &str) -> Result<(), Refusal> {
        if let Some(node) = self.proposer() {
            let op = MetaOp::ClearPermission {
                user: user.into(),
                vhost: vhost.into(),
            };
            return self.replicate(node, op).await.map(drop);
        }
        let _ddl = self.ddl.lock().await;
        let removed = self
            .permissions
            .write()
            .unwrap()
            .remove(&(user.to_string(), vhost.to_string()));
        if removed.is_none() {
            return Err(Refusal::not_found(format!(
                "no permissions for user '{user}' in vhost '{vhost}'"
            )));
        }
        self.definitions.delete_permission(vhost, user)?;
        self.sync_definitions().await
    }

    /// Closes one client connection with 320 CONNECTION_FORCED and `reason`.
    pub fn close_connection(&self, id: crate::delivery::ConnId, reason: &str) -> bool {
        let connections = lock(&self.connections);
        let Some(entry) = connections.get(&id) else {
            return false;
        };
        tracing::info!(connection = id.0, %reason, "connection closed from the admin plane");
        let _ = entry.events.send(ConnEvent::ForceClose {
            code: ReplyCode::ConnectionForced as u16,
            text: reason.to_string(),
        });
        true
    }
}
