//! The statistics RPCs: overview, and lists of queues, exchanges, bindings, connections,
//! channels, consumers, vhosts and nodes. Figures come from the counters the actors and
//! connections publish (no queue is asked to stop for them), except channels and consumers,
//! which are asked of their owners (with a timeout).

use super::convert::table_to_text;
use crate::broker::Broker;
use crate::delivery::ConnEvent;
use crate::exchange::Destination;
use crate::queue::args::QueueType;
use crate::queue::{QueueCommand, QueueCounters, QueueHandle};
use crate::statistics::GlobalCounters;
use std::sync::Arc;
use std::time::Duration;
use warren_proto::admin as proto;

/// How long a list waits for one connection or queue to describe itself.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

fn in_filter(filter: &str, vhost: &str) -> bool {
    filter.is_empty() || filter == vhost
}

/// Every (vhost name, vhost) matching the filter, sorted by name.
fn vhosts(broker: &Broker, filter: &str) -> Vec<(String, Arc<crate::vhost::Vhost>)> {
    let mut names = broker.vhost_names();
    names.sort();
    names
        .into_iter()
        .filter(|n| in_filter(filter, n))
        .filter_map(|n| broker.vhost(&n).map(|v| (n, v)))
        .collect()
}

fn queues(broker: &Broker, filter: &str) -> Vec<Arc<QueueHandle>> {
    let mut out = Vec::new();
    for (_, vhost) in vhosts(broker, filter) {
        let mut qs: Vec<_> = vhost.read().queues.values().cloned().collect();
        qs.sort_by(|a, b| a.name().cmp(b.name()));
        out.extend(qs);
    }
    out
}

/// Resident memory of this process, from `/proc/self/status`.
pub fn memory_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn disk_free_bytes(broker: &Broker) -> u64 {
    rustix::fs::statvfs(&broker.config.data_dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

pub fn overview(broker: &Broker) -> proto::OverviewReply {
    let all = queues(broker, "");
    let mut connections = 0;
    let mut channels = 0;
    broker.for_each_connection(|_, e| {
        connections += 1;
        channels += crate::delivery::ConnectionStats::get(&e.stats.channels);
    });
    let vhost_list = vhosts(broker, "");
    let exchanges = vhost_list
        .iter()
        .map(|(_, v)| v.read().exchanges.len() as u64)
        .sum();
    let totals = &broker.totals;
    proto::OverviewReply {
        version: env!("CARGO_PKG_VERSION").to_string(),
        node: broker.config.node_name.clone(),
        uptime_ms: broker.started.elapsed().as_millis() as u64,
        vhosts: vhost_list.len() as u64,
        exchanges,
        queues: all.len() as u64,
        connections,
        channels,
        consumers: all.iter().map(|q| q.consumers()).sum(),
        messages_ready: all.iter().map(|q| q.ready()).sum(),
        messages_unacked: all
            .iter()
            .map(|q| QueueCounters::get(&q.counters.unacked))
            .sum(),
        published_total: GlobalCounters::get(&totals.published),
        delivered_total: GlobalCounters::get(&totals.delivered),
        acked_total: GlobalCounters::get(&totals.acked),
        publish_rate: totals.publish_rate.per_second(),
        deliver_rate: totals.deliver_rate.per_second(),
        ack_rate: totals.ack_rate.per_second(),
        disk_log_bytes: broker.wal.stats().disk_bytes,
        disk_free_bytes: disk_free_bytes(broker),
        memory_rss_bytes: memory_rss_bytes(),
        disk_alarm: broker.is_disk_blocked(),
        amqp_listen: broker.config.amqp.listen.to_string(),
    }
}

pub fn list_queues(broker: &Broker, filter: &str) -> proto::QueueList {
    let mut out = Vec::new();
    for q in queues(broker, filter) {
        let c = &q.counters;
        let paused = c.paused.load(std::sync::atomic::Ordering::Relaxed);
        let disk_bytes = q.decl.stream.map_or(0, |s| {
            broker.wal.stream_live(warren_storage::StreamId(s)).bytes
        });
        out.push(proto::QueueInfo {
            vhost: q.decl.vhost.clone(),
            name: q.name().to_string(),
            r#type: match q.args.queue_type {
                QueueType::Quorum => "quorum",
                QueueType::Classic => "classic",
            }
            .to_string(),
            durable: q.decl.durable,
            auto_delete: q.decl.auto_delete,
            exclusive: q.decl.exclusive_owner.is_some(),
            arguments: table_to_text(&q.decl.arguments()),
            ready: q.ready(),
            unacked: QueueCounters::get(&c.unacked),
            consumers: q.consumers(),
            published_total: QueueCounters::get(&c.published),
            delivered_total: QueueCounters::get(&c.delivered),
            acked_total: QueueCounters::get(&c.acked),
            publish_rate: c.publish_rate.per_second(),
            deliver_rate: c.deliver_rate.per_second(),
            disk_bytes,
            paused,
            leader: placement(broker, &q).0,
            replicas: placement(broker, &q).1,
            fenced: broker
                .quorum_queue(&q.decl.vhost, q.name())
                .and_then(|quorum| quorum.fence.reason())
                .unwrap_or_default(),
        });
    }
    proto::QueueList { queues: out }
}

/// A queue's leader and replicas: its home node for a classic queue; for a quorum queue, the
/// members of its raft group as `node ID (ADDRESS)`, the leader empty while there is none.
fn placement(broker: &Broker, q: &crate::queue::QueueHandle) -> (String, Vec<String>) {
    let me = broker.config.node_name.clone();
    let Some(node) = broker.cluster_node() else {
        return (me.clone(), vec![me]);
    };
    let name = |id: u64| {
        let addr = node.address(id).unwrap_or_default();
        format!("node {id} ({addr})")
    };
    let Some(quorum) = broker.quorum_queue(&q.decl.vhost, q.name()) else {
        let home = broker
            .classic_queue(&q.decl.vhost, q.name())
            .map_or_else(|| me.clone(), |c| name(c.home));
        return (home.clone(), vec![home]);
    };
    let leader = node.leader(quorum.group()).map(name).unwrap_or_default();
    (
        leader,
        quorum.decl.replicas.iter().map(|id| name(*id)).collect(),
    )
}

pub fn list_exchanges(broker: &Broker, filter: &str) -> proto::ExchangeList {
    let mut out = Vec::new();
    for (name, vhost) in vhosts(broker, filter) {
        let state = vhost.read();
        let mut xs: Vec<_> = state.exchanges.values().collect();
        xs.sort_by(|a, b| a.name().cmp(b.name()));
        for x in xs {
            out.push(proto::ExchangeInfo {
                vhost: name.clone(),
                name: x.name().to_string(),
                r#type: x.kind.name().to_string(),
                durable: x.decl.durable,
                auto_delete: x.decl.auto_delete,
                internal: x.decl.internal,
                arguments: table_to_text(&x.decl.arguments()),
                bindings: x.bindings().len() as u64,
            });
        }
    }
    proto::ExchangeList { exchanges: out }
}

pub fn binding_to_proto(vhost: &str, b: &crate::exchange::Binding) -> proto::BindingSpec {
    let (destination_type, destination) = match &b.destination {
        Destination::Queue(q) => ("queue", q.clone()),
        Destination::Exchange(x) => ("exchange", x.clone()),
    };
    proto::BindingSpec {
        vhost: vhost.to_string(),
        source: b.source.clone(),
        destination_type: destination_type.to_string(),
        destination,
        routing_key: b.routing_key.clone(),
        arguments: table_to_text(&b.arguments()),
    }
}

/// Explicit bindings, then (as RabbitMQ lists them) the default exchange's implicit binding of
/// every queue by its name.
pub fn list_bindings(broker: &Broker, filter: &str) -> proto::BindingList {
    let mut out = Vec::new();
    for (name, vhost) in vhosts(broker, filter) {
        let state = vhost.read();
        let mut queue_names: Vec<&String> = state.queues.keys().collect();
        queue_names.sort();
        for q in queue_names {
            out.push(proto::BindingSpec {
                vhost: name.clone(),
                source: String::new(),
                destination_type: "queue".into(),
                destination: q.clone(),
                routing_key: q.clone(),
                arguments: Default::default(),
            });
        }
        let mut xs: Vec<_> = state.exchanges.values().collect();
        xs.sort_by(|a, b| a.name().cmp(b.name()));
        for x in xs {
            for b in x.bindings() {
                out.push(binding_to_proto(&name, b));
            }
        }
    }
    proto::BindingList { bindings: out }
}

pub fn list_connections(broker: &Broker, filter: &str) -> proto::ConnectionList {
    use crate::delivery::ConnectionStats as S;
    let mut out = Vec::new();
    broker.for_each_connection(|id, e| {
        if !in_filter(filter, &e.vhost) {
            return;
        }
        out.push(proto::ConnectionInfo {
            id: id.0,
            name: e.client_name.clone(),
            peer: e.peer.clone(),
            user: e.user.clone(),
            vhost: e.vhost.clone(),
            channels: S::get(&e.stats.channels),
            connected_at_ms: e.connected_at_ms,
            received_bytes: S::get(&e.stats.received_bytes),
            sent_bytes: S::get(&e.stats.sent_bytes),
            published_total: S::get(&e.stats.published),
            publish_rate: e.stats.publish_rate.per_second(),
            client_product: e.client_product.clone(),
            client_version: e.client_version.clone(),
        });
    });
    out.sort_by_key(|c| c.id);
    proto::ConnectionList { connections: out }
}

pub async fn list_channels(broker: &Broker, filter: &str) -> proto::ChannelList {
    let mut asks = Vec::new();
    broker.for_each_connection(|id, e| {
        if !in_filter(filter, &e.vhost) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if e.events.send(ConnEvent::Inspect(tx)).is_ok() {
            asks.push((id, e.vhost.clone(), e.user.clone(), rx));
        }
    });
    let mut out = Vec::new();
    for (id, vhost, user, rx) in asks {
        let Ok(Ok(views)) = tokio::time::timeout(INSPECT_TIMEOUT, rx).await else {
            continue;
        };
        for v in views {
            out.push(proto::ChannelInfo {
                connection: id.0,
                number: v.number.into(),
                vhost: vhost.clone(),
                user: user.clone(),
                mode: v.mode.to_string(),
                unacked: v.unacked,
                prefetch: v.prefetch,
                consumers: v.consumers,
            });
        }
    }
    out.sort_by_key(|c| (c.connection, c.number));
    proto::ChannelList { channels: out }
}

pub async fn list_consumers(broker: &Broker, filter: &str) -> proto::ConsumerList {
    let mut out = Vec::new();
    for q in queues(broker, filter) {
        let ask = q.ask(|reply| QueueCommand::Inspect { reply });
        let Ok(Ok(inspection)) = tokio::time::timeout(INSPECT_TIMEOUT, ask).await else {
            continue;
        };
        for c in inspection.consumers {
            out.push(proto::ConsumerInfo {
                vhost: q.decl.vhost.clone(),
                queue: q.name().to_string(),
                tag: c.tag.as_str().to_string(),
                connection: c.owner.conn.0,
                channel: c.owner.channel.into(),
                ack_required: c.ack_required,
                exclusive: c.exclusive,
                prefetch: c.prefetch,
                priority: c.priority,
                unacked: c.unacked.into(),
                paused: c.paused,
            });
        }
    }
    proto::ConsumerList { consumers: out }
}

pub fn list_vhosts(broker: &Broker) -> proto::VhostList {
    let mut connections: std::collections::HashMap<String, u64> = Default::default();
    broker.for_each_connection(|_, e| *connections.entry(e.vhost.clone()).or_default() += 1);
    let out = vhosts(broker, "")
        .into_iter()
        .map(|(name, v)| {
            let state = v.read();
            proto::VhostInfo {
                queues: state.queues.len() as u64,
                exchanges: state.exchanges.len() as u64,
                connections: connections.get(&name).copied().unwrap_or(0),
                name,
            }
        })
        .collect();
    proto::VhostList { vhosts: out }
}

/// This node, and on a cluster every member: its role in the metadata group and whether its
/// raft address accepts a connection now (what this node knows of other members: their AMQP
/// and admin listeners are their own).
pub async fn list_nodes(broker: &Broker, admin_listen: &str) -> proto::NodeList {
    let mut me = proto::NodeInfo {
        name: broker.config.node_name.clone(),
        amqp_listen: broker.config.amqp.listen.to_string(),
        admin_listen: admin_listen.to_string(),
        running: true,
        uptime_ms: broker.started.elapsed().as_millis() as u64,
        role: "standalone".into(),
        node_id: 0,
        cluster_address: String::new(),
        reachable: true,
    };
    let Some(node) = broker.cluster_node() else {
        return proto::NodeList { nodes: vec![me] };
    };
    let leader = node.leader(crate::replication::META_GROUP);
    let role = |id: u64| {
        if leader == Some(id) {
            "leader"
        } else {
            "follower"
        }
        .to_string()
    };
    let mut members = broker.cluster_members();
    if members.is_empty() {
        // Not (yet) a member: a joining node waiting to be added.
        members.insert(node.id(), node.address(node.id()).unwrap_or_default());
    }
    let mut probes = tokio::task::JoinSet::new();
    for (id, addr) in members {
        let local = id == node.id();
        probes.spawn(async move {
            let reachable = local
                || tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    tokio::net::TcpStream::connect(addr.clone()),
                )
                .await
                .is_ok_and(|c| c.is_ok());
            (id, addr, reachable)
        });
    }
    let mut probed: Vec<(u64, String, bool)> = probes.join_all().await;
    probed.sort();
    let mut nodes = Vec::new();
    for (id, addr, reachable) in probed {
        if id == node.id() {
            me.node_id = id;
            me.cluster_address = addr;
            me.role = role(id);
            nodes.push(me.clone());
        } else {
            nodes.push(proto::NodeInfo {
                name: format!("node {id}"),
                amqp_listen: String::new(),
                admin_listen: String::new(),
                running: reachable,
                uptime_ms: 0,
                role: role(id),
                node_id: id,
                cluster_address: addr,
                reachable,
            });
        }
    }
    proto::NodeList { nodes }
}
