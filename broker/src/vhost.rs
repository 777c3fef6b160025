//! A virtual host: its exchanges, queues and bindings, and routing through them.
//!
//! The registry is read-mostly: publishes take the read lock for the time of one routing
//! decision (no `.await` while it is held); declarations take the write lock briefly.

use crate::amqp::FieldTable;
use crate::exchange::{Destination, Exchange};
use crate::queue::QueueHandle;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Default)]
pub struct VhostState {
    pub exchanges: HashMap<String, Exchange>,
    pub queues: HashMap<String, Arc<QueueHandle>>,
}

#[derive(Debug)]
pub struct Vhost {
    pub name: String,
    state: RwLock<VhostState>,
    /// Bumped by every write access: a routing decision made at generation `g` stays valid
    /// while the generation is `g` (connections cache them; see [`Routed::cacheable`]).
    generation: AtomicU64,
}

/// Where a publish went.
#[derive(Debug, Default)]
pub struct Routed {
    pub queues: Vec<Arc<QueueHandle>>,
    /// No headers exchange took part: the same exchange and routing key route the same way
    /// until the topology changes.
    pub cacheable: bool,
}

impl Vhost {
    pub fn new(name: &str) -> Vhost {
        Vhost {
            name: name.to_string(),
            state: RwLock::new(VhostState::default()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, VhostState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, VhostState> {
        let guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Bumped while the lock is held: a reader that saw the old generation routed with
        // the old topology, and will see the new generation before trusting its cache.
        self.generation.fetch_add(1, Ordering::AcqRel);
        guard
    }

    pub fn queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.read().queues.get(name).cloned()
    }

    /// Routes a message published to `exchange`: through exchange-to-exchange bindings and
    /// alternate exchanges, each queue at most once. `None` if `exchange` does not exist.
    /// `headers` is called at most once, and only if a headers exchange is on the way.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &dyn Fn() -> Option<FieldTable>,
    ) -> Option<Routed> {
        let state = self.read();
        let mut routed = Routed {
            queues: Vec::new(),
            cacheable: true,
        };
        if exchange.is_empty() {
            if let Some(q) = state.queues.get(routing_key) {
                routed.queues.push(Arc::clone(q));
            }
            return Some(routed);
        }
        state.exchanges.get(exchange)?;
        let decoded: OnceCell<Option<FieldTable>> = OnceCell::new();
        let mut visited: Vec<&str> = Vec::new();
        let mut pending: Vec<&str> = vec![exchange];
        while let Some(name) = pending.pop() {
            if visited.contains(&name) {
                continue;
            }
            visited.push(name);
            let Some(x) = state.exchanges.get(name) else {
                continue;
            };
            let header_table = if x.needs_headers() {
                routed.cacheable = false;
                decoded.get_or_init(headers).as_ref()
            } else {
                None
            };
            let mut matched = false;
            x.route(routing_key, header_table, &mut |destination| {
                matched = true;
                match destination {
                    Destination::Queue(q) => {
                        if let Some(handle) = state.queues.get(q) {
                            if !routed.queues.iter().any(|h| h.id == handle.id) {
                                routed.queues.push(Arc::clone(handle));
                            }
                        }
                    }
                    Destination::Exchange(e) => {
                        if let Some((key, _)) = state.exchanges.get_key_value(e) {
                            pending.push(key.as_str());
                        }
                    }
                }
            });
            if !matched {
                if let Some(alternate) = &x.alternate {
                    if let Some((key, _)) = state.exchanges.get_key_value(alternate) {
                        pending.push(key.as_str());
                    }
                }
            }
        }
        Some(routed)
    }
}
