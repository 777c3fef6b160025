//! Durable definitions (vhosts, users, permissions, exchanges, queues, bindings) in the log's
//! key-value namespace. Every change is a `kv_put`/`kv_delete`; the `*-ok` reply waits until it
//! is durable ([`Definitions::sync`]).
//!
//! Keys are `kind \0 vhost \0 name`; bindings append their bincode encoding so distinct bindings
//! between the same pair get distinct keys.

use crate::auth::{Permission, User};
use crate::error::BrokerError;
use crate::exchange::{Binding, ExchangeDecl};
use crate::queue::QueueDecl;
use crate::vhost::Detour;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::sync::Arc;
use warren_storage::{Lsn, Wal};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VhostDecl {
    pub name: String,
}

/// Everything stored, as read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub vhosts: Vec<VhostDecl>,
    pub users: Vec<User>,
    pub permissions: Vec<Permission>,
    pub exchanges: Vec<ExchangeDecl>,
    pub queues: Vec<QueueDecl>,
    pub bindings: Vec<(String, Binding)>,
    pub detours: Vec<(String, Detour)>,
    pub next_stream: u64,
}

#[derive(Debug, Clone)]
pub struct Definitions {
    wal: Arc<Wal>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("definitions always encode")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, BrokerError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| BrokerError::BadDefinition {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
}

fn key(kind: &str, parts: &[&str]) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    for p in parts {
        k.push(0);
        k.extend_from_slice(p.as_bytes());
    }
    k
}

fn binding_key(vhost: &str, binding: &Binding) -> Vec<u8> {
    let mut k = key("binding", &[vhost, &binding.source]);
    k.push(0);
    k.extend_from_slice(&encode(binding));
    k
}

fn detour_key(vhost: &str, detour: &Detour) -> Vec<u8> {
    let mut k = key("detour", &[vhost, &detour.source]);
    k.push(0);
    k.extend_from_slice(&encode(&detour.destination));
    k
}

/// The vhost part of a `kind \0 vhost \0 ...` key.
fn vhost_of(k: &[u8]) -> String {
    k.split(|b| *b == 0)
        .nth(1)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

const NEXT_STREAM: &[u8] = b"meta\0next_stream";

impl Definitions {
    pub fn new(wal: Arc<Wal>) -> Definitions {
        Definitions { wal }
    }

    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    pub fn load(&self) -> Result<Loaded, BrokerError> {
        let mut loaded = Loaded {
            next_stream: 1,
            ..Loaded::default()
        };
        for (k, v) in self.wal.kv_prefix(b"vhost\0")? {
            loaded.vhosts.push(decode(&k, &v)?);
        }
        for (k, v) in self.wal.kv_prefix(b"user\0")? {
            loaded.users.push(decode(&k, &v)?);
        }
        for (k, v) in self.wal.kv_prefix(b"perm\0")? {
            loaded.permissions.push(decode(&k, &v)?);
        }
        for (k, v) in self.wal.kv_prefix(b"exchange\0")? {
            loaded.exchanges.push(decode(&k, &v)?);
        }
        for (k, v) in self.wal.kv_prefix(b"queue\0")? {
            loaded.queues.push(decode(&k, &v)?);
        }
        for (k, v) in self.wal.kv_prefix(b"binding\0")? {
            loaded.bindings.push((vhost_of(&k), decode(&k, &v)?));
        }
        for (k, v) in self.wal.kv_prefix(b"detour\0")? {
            loaded.detours.push((vhost_of(&k), decode(&k, &v)?));
        }
        if let Some(v) = self.wal.kv_get(NEXT_STREAM)? {
            loaded.next_stream = decode(NEXT_STREAM, &v)?;
        }
        Ok(loaded)
    }

    pub fn put_vhost(&self, vhost: &VhostDecl) -> Result<Lsn, BrokerError> {
        Ok(self
            .wal
            .kv_put(&key("vhost", &[&vhost.name]), &encode(vhost))?)
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), BrokerError> {
        self.wal.kv_delete(&key("vhost", &[name]))?;
        Ok(())
    }

    pub fn put_user(&self, user: &User) -> Result<Lsn, BrokerError> {
        Ok(self
            .wal
            .kv_put(&key("user", &[&user.name]), &encode(user))?)
    }

    pub fn delete_user(&self, name: &str) -> Result<(), BrokerError> {
        self.wal.kv_delete(&key("user", &[name]))?;
        Ok(())
    }

    pub fn put_permission(&self, p: &Permission) -> Result<Lsn, BrokerError> {
        Ok(self
            .wal
            .kv_put(&key("perm", &[&p.vhost, &p.user]), &encode(p))?)
    }

    pub fn delete_permission(&self, vhost: &str, user: &str) -> Result<(), BrokerError> {
        self.wal.kv_delete(&key("perm", &[vhost, user]))?;
        Ok(())
    }

    pub fn put_exchange(&self, e: &ExchangeDecl) -> Result<Lsn, BrokerError> {
        Ok(self
            .wal
            .kv_put(&key("exchange", &[&e.vhost, &e.name]), &encode(e))?)
    }

    pub fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), BrokerError> {
        self.wal.kv_delete(&key("exchange", &[vhost, name]))?;
        Ok(())
    }

    pub fn put_queue(&self, q: &QueueDecl) -> Result<Lsn, BrokerError> {
        Ok(self
            .wal
            .kv_put(&key("queue", &[&q.vhost, &q.name]), &encode(q))?)
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), BrokerError> {
        self.wal.kv_delete(&key("queue", &[vhost, name]))?;
        Ok(())
    }

    pub fn put_binding(&self, vhost: &str, b: &Binding) -> Result<Lsn, BrokerError> {
        Ok(self.wal.kv_put(&binding_key(vhost, b), &encode(b))?)
    }

    pub fn delete_binding(&self, vhost: &str, b: &Binding) -> Result<(), BrokerError> {
        self.wal.kv_delete(&binding_key(vhost, b))?;
        Ok(())
    }

    pub fn put_detour(&self, vhost: &str, d: &Detour) -> Result<Lsn, BrokerError> {
        Ok(self.wal.kv_put(&detour_key(vhost, d), &encode(d))?)
    }

    pub fn delete_detour(&self, vhost: &str, d: &Detour) -> Result<(), BrokerError> {
        self.wal.kv_delete(&detour_key(vhost, d))?;
        Ok(())
    }

    /// Reserves a log stream for a new durable queue.
    pub fn allocate_stream(&self, next: u64) -> Result<Lsn, BrokerError> {
        Ok(self.wal.kv_put(NEXT_STREAM, &encode(&(next + 1)))?)
    }

    /// Waits until everything written so far is durable.
    pub async fn sync(&self) -> Result<(), BrokerError> {
        let last = Lsn(self.wal.next_lsn().0.saturating_sub(1));
        wait_durable(&self.wal, last).await
    }
}

/// Waits (without blocking a runtime thread) until `lsn` is durable.
pub async fn wait_durable(wal: &Wal, lsn: Lsn) -> Result<(), BrokerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    wal.on_durable(
        lsn,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    match rx.await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BrokerError::Storage(warren_storage::StorageError::Closed)),
    }
}
