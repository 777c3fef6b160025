//! Wire taps and detours (the admin plane's Wire Tap and Detour patterns): they change routing
//! under the vhost's write lock, so each routing decision sees a route wholly before or wholly
//! after the change (see `vhost.rs`). Detours are durable definitions; taps are a diagnostic
//! and last until stopped or the node restarts.

use super::{Added, Broker};
use crate::exchange::Destination;
use crate::refusal::Refusal;
use crate::replication::{MetaOk, MetaOp};
use crate::vhost::{Detour, Tap, TapSource};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ids of taps, unique in the process.
static NEXT_TAP: AtomicU64 = AtomicU64::new(1);

/// A tap to start.
#[derive(Debug, Clone)]
pub struct TapSpec {
    pub source: TapSource,
    pub target: String,
    pub sample_every: u64,
}

/// An active tap as listed.
#[derive(Debug, Clone)]
pub struct TapView {
    pub id: u64,
    pub vhost: String,
    pub spec: TapSpec,
    pub seen: u64,
    pub copied: u64,
}

impl Broker {
    pub fn start_tap(&self, vhost_name: &str, spec: TapSpec) -> Result<u64, Refusal> {
        let vhost = self
            .vhost(vhost_name)
            .ok_or_else(|| Refusal::not_found(format!("no vhost '{vhost_name}'")))?;
        let mut state = vhost.write();
        match &spec.source {
            TapSource::Exchange(x) if !state.exchanges.contains_key(x) => {
                return Err(Refusal::not_found(format!(
                    "no exchange '{x}' in vhost '{vhost_name}'"
                )))
            }
            TapSource::Queue(q) if !state.queues.contains_key(q) => {
                return Err(Refusal::not_found(format!(
                    "no queue '{q}' in vhost '{vhost_name}'"
                )))
            }
            _ => {}
        }
        if spec.target.is_empty() || !state.exchanges.contains_key(&spec.target) {
            return Err(Refusal::not_found(format!(
                "no exchange '{}' in vhost '{vhost_name}' to copy to",
                spec.target
            )));
        }
        let id = NEXT_TAP.fetch_add(1, Ordering::Relaxed);
        tracing::info!(vhost = %vhost_name, id, source = ?spec.source, target = %spec.target, every = spec.sample_every, "wire tap started");
        state.taps.push(Tap {
            id,
            source: spec.source,
            target: spec.target,
            sample_every: spec.sample_every.max(1),
            seen: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        });
        Ok(id)
    }

    pub fn stop_tap(&self, id: u64) -> Result<(), Refusal> {
        for name in self.vhost_names() {
            let Some(vhost) = self.vhost(&name) else {
                continue;
            };
            if !vhost.read().taps.iter().any(|t| t.id == id) {
                continue;
            }
            vhost.write().taps.retain(|t| t.id != id);
            tracing::info!(vhost = %name, id, "wire tap stopped");
            return Ok(());
        }
        Err(Refusal::not_found(format!("no wire tap {id}")))
    }

    pub fn taps(&self, vhost_filter: Option<&str>) -> Vec<TapView> {
        let mut out = Vec::new();
        for name in self.vhost_names() {
            if vhost_filter.is_some_and(|v| v != name) {
                continue;
            }
            let Some(vhost) = self.vhost(&name) else {
                continue;
            };
            for t in vhost.read().taps.iter() {
                out.push(TapView {
                    id: t.id,
                    vhost: name.clone(),
                    spec: TapSpec {
                        source: t.source.clone(),
                        target: t.target.clone(),
                        sample_every: t.sample_every,
                    },
                    seen: t.seen.load(Ordering::Relaxed),
                    copied: t.copied.load(Ordering::Relaxed),
                });
            }
        }
        out.sort_by_key(|t| t.id);
        out
    }

    /// Sends what `detour.source` routes to `detour.destination` through `detour.via`.
    pub async fn start_detour(&self, vhost_name: &str, detour: Detour) -> Result<Added, Refusal> {
        if let Some(node) = self.proposer() {
            let op = MetaOp::StartDetour {
                vhost: vhost_name.into(),
                detour,
            };
            let ok = self.replicate(node, op).await?;
            return Ok(if ok == MetaOk::Created(true) {
                Added::Created
            } else {
                Added::AlreadyThere
            });
        }
        let vhost = self
            .vhost(vhost_name)
            .ok_or_else(|| Refusal::not_found(format!("no vhost '{vhost_name}'")))?;
        let _ddl = self.ddl.lock().await;
        {
            let mut state = vhost.write();
            let source = state.exchanges.get(&detour.source).ok_or_else(|| {
                Refusal::not_found(format!(
                    "no exchange '{}' in vhost '{vhost_name}'",
                    detour.source
                ))
            })?;
            if !source
                .bindings()
                .iter()
                .any(|b| b.destination == detour.destination)
            {
                return Err(Refusal::not_found(format!(
                    "no binding from exchange '{}' to {} in vhost '{vhost_name}'",
                    detour.source,
                    describe(&detour.destination)
                )));
            }
            if !state.exchanges.contains_key(&detour.via) || detour.via.is_empty() {
                return Err(Refusal::not_found(format!(
                    "no exchange '{}' in vhost '{vhost_name}' to detour through",
                    detour.via
                )));
            }
            if detour.via == detour.source
                || detour.destination == Destination::Exchange(detour.via.clone())
            {
                return Err(Refusal::precondition(format!(
                    "a detour through '{}' would route back to itself",
                    detour.via
                )));
            }
            let list = state.detours.entry(detour.source.clone()).or_default();
            if let Some(existing) = list.iter().find(|d| d.destination == detour.destination) {
                if existing.via == detour.via {
                    return Ok(Added::AlreadyThere);
                }
                return Err(Refusal::precondition(format!(
                    "the route from '{}' to {} is already detoured through '{}'",
                    detour.source,
                    describe(&detour.destination),
                    existing.via
                )));
            }
            self.definitions.put_detour(vhost_name, &detour)?;
            list.push(detour.clone());
        }
        tracing::info!(vhost = %vhost_name, source = %detour.source, destination = %describe(&detour.destination), via = %detour.via, "detour started");
        self.sync_definitions().await?;
        Ok(Added::Created)
    }

    /// Restores the direct route from `source` to `destination`.
    pub async fn stop_detour(
        &self,
        vhost_name: &str,
        source: &str,
        destination: &Destination,
    ) -> Result<(), Refusal> {
        if let Some(node) = self.proposer() {
            let op = MetaOp::StopDetour {
                vhost: vhost_name.into(),
                source: source.into(),
                destination: destination.clone(),
            };
            return self.replicate(node, op).await.map(drop);
        }
        let vhost = self
            .vhost(vhost_name)
            .ok_or_else(|| Refusal::not_found(format!("no vhost '{vhost_name}'")))?;
        let _ddl = self.ddl.lock().await;
        {
            let mut state = vhost.write();
            let list = state.detours.get_mut(source);
            let Some(at) = list
                .as_ref()
                .and_then(|l| l.iter().position(|d| d.destination == *destination))
            else {
                return Err(Refusal::not_found(format!(
                    "no detour from '{source}' to {} in vhost '{vhost_name}'",
                    describe(destination)
                )));
            };
            let list = list.expect("found above");
            let detour = list.remove(at);
            if list.is_empty() {
                state.detours.remove(source);
            }
            self.definitions.delete_detour(vhost_name, &detour)?;
        }
        tracing::info!(vhost = %vhost_name, %source, destination = %describe(destination), "detour stopped");
        self.sync_definitions().await
    }

    pub fn detours(&self, vhost_filter: Option<&str>) -> Vec<(String, Detour)> {
        let mut out = Vec::new();
        for name in self.vhost_names() {
            if vhost_filter.is_some_and(|v| v != name) {
                continue;
            }
            if let Some(vhost) = self.vhost(&name) {
                for d in vhost.read().detours.values().flatten() {
                    out.push((name.clone(), d.clone()));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1.source).cmp(&(&b.0, &b.1.source)));
        out
    }
}

fn describe(destination: &Destination) -> String {
    match destination {
        Destination::Queue(q) => format!("queue '{q}'"),
        Destination::Exchange(x) => format!("exchange '{x}'"),
    }
}
