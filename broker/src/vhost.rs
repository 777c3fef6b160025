//! A virtual host: its exchanges, queues and bindings, and routing through them — including the
//! admin plane's wire taps (copies of what passes an exchange or enters a queue, sent to another
//! exchange) and detours (a source's route to a destination sent through another exchange).
//!
//! The registry is read-mostly: publishes take the read lock for the time of one routing
//! decision (no `.await` while it is held); declarations take the write lock briefly. A tap or
//! detour changes under the write lock like any binding, so every routing decision sees a route
//! entirely before or entirely after the change.

use crate::amqp::FieldTable;
use crate::exchange::{Destination, Exchange};
use crate::queue::QueueHandle;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Default)]
pub struct VhostState {
    pub exchanges: HashMap<String, Exchange>,
    pub queues: HashMap<String, Arc<QueueHandle>>,
    /// Active wire taps (few; looked at only when not empty).
    pub taps: Vec<Tap>,
    /// Active detours by source exchange.
    pub detours: HashMap<String, Vec<Detour>>,
}

/// What a wire tap watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// Every message routed through this exchange.
    Exchange(String),
    /// Every message routed to this queue.
    Queue(String),
}

/// A wire tap: copies (one in `sample_every`) of what passes `source`, published to `target`.
#[derive(Debug)]
pub struct Tap {
    pub id: u64,
    pub source: TapSource,
    pub target: String,
    pub sample_every: u64,
    pub seen: AtomicU64,
    pub copied: AtomicU64,
}

impl Tap {
    /// Counts one message passing; whether this one is copied.
    fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let copy = n % self.sample_every.max(1) == 0;
        if copy {
            self.copied.fetch_add(1, Ordering::Relaxed);
        }
        copy
    }
}

/// A detour: what `source` routes to `destination` goes to the exchange `via` instead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Detour {
    pub source: String,
    pub destination: Destination,
    pub via: String,
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
    /// Whether a queue was reached through the application's own routes (not only through a
    /// wire tap): an unroutable `mandatory` publish is returned even if a tap copied it.
    pub reached: bool,
    /// No headers exchange or wire tap took part: the same exchange and routing key route the
    /// same way until the topology changes.
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
    /// alternate exchanges, detours and wire taps, each queue at most once. `None` if
    /// `exchange` does not exist. `headers` is called at most once, and only if a headers
    /// exchange is on the way.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &dyn Fn() -> Option<FieldTable>,
    ) -> Option<Routed> {
        let state = self.read();
        let mut routed = Routed {
            queues: Vec::new(),
            reached: false,
            cacheable: true,
        };
        // (exchange, reached only through a tap)
        let mut pending: Vec<(&str, bool)> = Vec::new();
        if exchange.is_empty() {
            if let Some(q) = state.queues.get(routing_key) {
                routed.add_queue(&state, q, false, &mut pending);
            }
        } else {
            state.exchanges.get(exchange)?;
            pending.push((exchange, false));
        }
        let decoded: OnceCell<Option<FieldTable>> = OnceCell::new();
        let mut visited: Vec<(&str, bool)> = Vec::new();
        while let Some((name, tapped)) = pending.pop() {
            if visited.contains(&(name, tapped)) {
                continue;
            }
            visited.push((name, tapped));
            let Some(x) = state.exchanges.get(name) else {
                continue;
            };
            if !state.taps.is_empty() {
                routed.cacheable = false;
                for tap in state.taps.iter() {
                    if matches!(&tap.source, TapSource::Exchange(e) if e == name) && tap.sample() {
                        if let Some((key, _)) = state.exchanges.get_key_value(&tap.target) {
                            pending.push((key.as_str(), true));
                        }
                    }
                }
            }
            let header_table = if x.needs_headers() {
                routed.cacheable = false;
                decoded.get_or_init(headers).as_ref()
            } else {
                None
            };
            let detours = if state.detours.is_empty() {
                None
            } else {
                state.detours.get(name)
            };
            let mut matched = false;
            x.route(routing_key, header_table, &mut |destination| {
                matched = true;
                // A detour whose exchange was deleted routes as if it were not there: a
                // dangling detour must not swallow messages.
                let via = detours
                    .and_then(|ds| ds.iter().find(|d| d.destination == *destination))
                    .and_then(|d| state.exchanges.get_key_value(&d.via));
                if let Some((key, _)) = via {
                    pending.push((key.as_str(), tapped));
                    return;
                }
                match destination {
                    Destination::Queue(q) => {
                        if let Some(handle) = state.queues.get(q) {
                            routed.add_queue(&state, handle, tapped, &mut pending);
                        }
                    }
                    Destination::Exchange(e) => {
                        if let Some((key, _)) = state.exchanges.get_key_value(e) {
                            pending.push((key.as_str(), tapped));
                        }
                    }
                }
            });
            if !matched {
                if let Some(alternate) = &x.alternate {
                    if let Some((key, _)) = state.exchanges.get_key_value(alternate) {
                        pending.push((key.as_str(), tapped));
                    }
                }
            }
        }
        Some(routed)
    }
}

impl Routed {
    /// Adds a queue reached by routing (once), and the copies its wire taps ask for.
    fn add_queue<'s>(
        &mut self,
        state: &'s VhostState,
        handle: &Arc<QueueHandle>,
        tapped: bool,
        pending: &mut Vec<(&'s str, bool)>,
    ) {
        self.reached |= !tapped;
        if self.queues.iter().any(|h| h.id == handle.id) {
            return;
        }
        self.queues.push(Arc::clone(handle));
        if state.taps.is_empty() {
            return;
        }
        self.cacheable = false;
        for tap in state.taps.iter() {
            if matches!(&tap.source, TapSource::Queue(q) if q == handle.name()) && tap.sample() {
                if let Some((key, _)) = state.exchanges.get_key_value(&tap.target) {
                    pending.push((key.as_str(), true));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Binding, ExchangeDecl, ExchangeKind};
    use crate::queue::{QueueArgs, QueueCounters, QueueDecl, QueueId};

    fn vhost_with(exchanges: &[(&str, ExchangeKind)], queues: &[&str]) -> Vhost {
        let vhost = Vhost::new("/");
        {
            let mut state = vhost.write();
            for (name, kind) in exchanges {
                let decl = ExchangeDecl {
                    vhost: "/".into(),
                    name: name.to_string(),
                    kind: kind.name().into(),
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::new().encode().to_vec(),
                };
                state
                    .exchanges
                    .insert(name.to_string(), Exchange::new(decl, *kind));
            }
            for (i, name) in queues.iter().enumerate() {
                let (tx, _rx) = tokio::sync::mpsc::channel(1);
                let decl = QueueDecl {
                    vhost: "/".into(),
                    name: name.to_string(),
                    durable: true,
                    auto_delete: false,
                    exclusive_owner: None,
                    arguments: Vec::new(),
                    stream: None,
                    uid: 0,
                };
                let handle = QueueHandle::new(
                    QueueId(i as u64),
                    decl,
                    QueueArgs::default(),
                    Arc::new(QueueCounters::default()),
                    tx,
                );
                state.queues.insert(name.to_string(), Arc::new(handle));
            }
        }
        vhost
    }

    fn bind(vhost: &Vhost, source: &str, destination: Destination, key: &str) {
        let binding = Binding {
            source: source.into(),
            destination,
            routing_key: key.into(),
            arguments: FieldTable::new().encode().to_vec(),
        };
        vhost
            .write()
            .exchanges
            .get_mut(source)
            .unwrap()
            .bind(binding)
            .unwrap();
    }

    fn routed(vhost: &Vhost, exchange: &str, key: &str) -> (Vec<String>, bool, bool) {
        let r = vhost.route(exchange, key, &|| None).unwrap();
        let mut names: Vec<String> = r.queues.iter().map(|q| q.name().to_string()).collect();
        names.sort();
        (names, r.reached, r.cacheable)
    }

    #[test]
    fn a_detour_replaces_one_route_and_a_dangling_one_is_ignored() {
        let v = vhost_with(
            &[
                ("orders", ExchangeKind::Direct),
                ("check", ExchangeKind::Fanout),
            ],
            &["shipping", "billing", "checks"],
        );
        bind(&v, "orders", Destination::Queue("shipping".into()), "new");
        bind(&v, "orders", Destination::Queue("billing".into()), "new");
        bind(&v, "check", Destination::Queue("checks".into()), "");
        v.write().detours.insert(
            "orders".into(),
            vec![Detour {
                source: "orders".into(),
                destination: Destination::Queue("shipping".into()),
                via: "check".into(),
            }],
        );
        assert_eq!(
            routed(&v, "orders", "new"),
            (vec!["billing".into(), "checks".into()], true, true)
        );
        v.write().exchanges.remove("check");
        assert_eq!(
            routed(&v, "orders", "new").0,
            ["billing", "shipping"],
            "a detour through a deleted exchange routes as if absent"
        );
    }

    #[test]
    fn taps_copy_without_counting_for_mandatory_and_sample_one_in_n() {
        let v = vhost_with(
            &[
                ("orders", ExchangeKind::Direct),
                ("audit", ExchangeKind::Fanout),
            ],
            &["shipping", "audit.q"],
        );
        bind(&v, "orders", Destination::Queue("shipping".into()), "new");
        bind(&v, "audit", Destination::Queue("audit.q".into()), "");
        v.write().taps.push(Tap {
            id: 1,
            source: TapSource::Exchange("orders".into()),
            target: "audit".into(),
            sample_every: 1,
            seen: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        });
        assert_eq!(
            routed(&v, "orders", "new"),
            (vec!["audit.q".into(), "shipping".into()], true, false)
        );
        // Unroutable by the application's bindings: only the tap copy; still "not reached".
        assert_eq!(
            routed(&v, "orders", "other"),
            (vec!["audit.q".into()], false, false)
        );
        {
            let mut state = v.write();
            state.taps.clear();
            state.taps.push(Tap {
                id: 2,
                source: TapSource::Queue("shipping".into()),
                target: "audit".into(),
                sample_every: 3,
                seen: AtomicU64::new(0),
                copied: AtomicU64::new(0),
            });
        }
        let copies = (0..9)
            .filter(|_| {
                routed(&v, "orders", "new")
                    .0
                    .contains(&"audit.q".to_string())
            })
            .count();
        assert_eq!(copies, 3);
        let state = v.read();
        assert_eq!(state.taps[0].seen.load(Ordering::Relaxed), 9);
        assert_eq!(state.taps[0].copied.load(Ordering::Relaxed), 3);
    }
}
