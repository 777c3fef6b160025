//! Replies that are lists, printed as tables (or JSON).

use crate::cli::ListWhat;
use crate::output::{bytes, duration_ms, map, rate, yes_no, Output};
use crate::Client;
use warren_proto::admin::*;

pub fn print_messages(out: Output, r: &MessageList) {
    let rows = r
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = m.properties.clone().unwrap_or_default();
            let mut body = String::from_utf8_lossy(&m.body).replace('\n', "\\n");
            if m.body_truncated {
                body.push('…');
            }
            vec![
                (i + 1).to_string(),
                m.exchange.clone(),
                m.routing_key.clone(),
                yes_no(m.redelivered),
                p.delivery_mode.to_string(),
                map(&p.headers),
                m.body_bytes.to_string(),
                body,
            ]
        })
        .collect();
    out.table(
        r,
        &[
            "#",
            "exchange",
            "routing key",
            "redelivered",
            "mode",
            "headers",
            "bytes",
            "body",
        ],
        rows,
    );
    if !out.json {
        println!("{} ready left", r.remaining);
    }
}

pub async fn list(
    client: &mut Client,
    out: Output,
    what: ListWhat,
    vhost: String,
) -> anyhow::Result<()> {
    let request = || ListRequest {
        vhost: vhost.clone(),
    };
    match what {
        ListWhat::Queues => {
            let r = client.list_queues(request()).await?.into_inner();
            let rows = r
                .queues
                .iter()
                .map(|q| {
                    vec![
                        q.vhost.clone(),
                        q.name.clone(),
                        q.r#type.clone(),
                        q.ready.to_string(),
                        q.unacked.to_string(),
                        q.consumers.to_string(),
                        rate(q.publish_rate),
                        rate(q.deliver_rate),
                        bytes(q.disk_bytes),
                        if !q.fenced.is_empty() {
                            // Served through the other replicas; the reason is in --json.
                            "fenced here".into()
                        } else if q.paused {
                            "paused".into()
                        } else {
                            "running".into()
                        },
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost",
                    "name",
                    "type",
                    "ready",
                    "unacked",
                    "consumers",
                    "in",
                    "out",
                    "disk",
                    "state",
                ],
                rows,
            );
        }
        ListWhat::Exchanges => {
            let r = client.list_exchanges(request()).await?.into_inner();
            let rows = r
                .exchanges
                .iter()
                .map(|x| {
                    vec![
                        x.vhost.clone(),
                        if x.name.is_empty() {
                            "(default)".into()
                        } else {
                            x.name.clone()
                        },
                        x.r#type.clone(),
                        yes_no(x.durable),
                        yes_no(x.auto_delete),
                        yes_no(x.internal),
                        x.bindings.to_string(),
                        map(&x.arguments),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost",
                    "name",
                    "type",
                    "durable",
                    "auto-delete",
                    "internal",
                    "bindings",
                    "arguments",
                ],
                rows,
            );
        }
        ListWhat::Bindings => {
            let r = client.list_bindings(request()).await?.into_inner();
            let rows = r
                .bindings
                .iter()
                .map(|b| {
                    vec![
                        b.vhost.clone(),
                        if b.source.is_empty() {
                            "(default)".into()
                        } else {
                            b.source.clone()
                        },
                        b.destination_type.clone(),
                        b.destination.clone(),
                        b.routing_key.clone(),
                        map(&b.arguments),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost",
                    "source",
                    "type",
                    "destination",
                    "routing key",
                    "arguments",
                ],
                rows,
            );
        }
        ListWhat::Connections => {
            let r = client.list_connections(request()).await?.into_inner();
            let rows = r
                .connections
                .iter()
                .map(|c| {
                    vec![
                        c.id.to_string(),
                        c.peer.clone(),
                        c.user.clone(),
                        c.vhost.clone(),
                        c.channels.to_string(),
                        format!("{} {}", c.client_product, c.client_version)
                            .trim()
                            .to_string(),
                        c.name.clone(),
                        rate(c.publish_rate),
                        bytes(c.received_bytes),
                        bytes(c.sent_bytes),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "id", "peer", "user", "vhost", "channels", "client", "name", "publish",
                    "received", "sent",
                ],
                rows,
            );
        }
        ListWhat::Channels => {
            let r = client.list_channels(request()).await?.into_inner();
            let rows = r
                .channels
                .iter()
                .map(|c| {
                    vec![
                        c.connection.to_string(),
                        c.number.to_string(),
                        c.user.clone(),
                        c.vhost.clone(),
                        c.mode.clone(),
                        c.prefetch.to_string(),
                        c.unacked.to_string(),
                        c.consumers.to_string(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "connection",
                    "channel",
                    "user",
                    "vhost",
                    "mode",
                    "prefetch",
                    "unacked",
                    "consumers",
                ],
                rows,
            );
        }
        ListWhat::Consumers => {
            let r = client.list_consumers(request()).await?.into_inner();
            let rows = r
                .consumers
                .iter()
                .map(|c| {
                    vec![
                        c.vhost.clone(),
                        c.queue.clone(),
                        c.tag.clone(),
                        format!("{}/{}", c.connection, c.channel),
                        yes_no(c.ack_required),
                        c.prefetch.to_string(),
                        c.unacked.to_string(),
                        if c.paused { "paused" } else { "running" }.into(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "vhost", "queue", "tag", "conn/ch", "ack", "prefetch", "unacked", "state",
                ],
                rows,
            );
        }
        ListWhat::Vhosts => {
            let r = client.list_vhosts(ListVhostsRequest {}).await?.into_inner();
            let rows = r
                .vhosts
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.queues.to_string(),
                        v.exchanges.to_string(),
                        v.connections.to_string(),
                    ]
                })
                .collect();
            out.table(&r, &["name", "queues", "exchanges", "connections"], rows);
        }
        ListWhat::Users => {
            let r = client.list_users(ListUsersRequest {}).await?.into_inner();
            let rows = r
                .users
                .iter()
                .map(|u| vec![u.name.clone(), u.tags.join(",")])
                .collect();
            out.table(&r, &["name", "tags"], rows);
        }
        ListWhat::Permissions => {
            let r = client
                .list_permissions(ListPermissionsRequest {
                    vhost,
                    user: String::new(),
                })
                .await?
                .into_inner();
            let rows = r
                .permissions
                .iter()
                .map(|p| {
                    vec![
                        p.vhost.clone(),
                        p.user.clone(),
                        p.configure.clone(),
                        p.write.clone(),
                        p.read.clone(),
                    ]
                })
                .collect();
            out.table(&r, &["vhost", "user", "configure", "write", "read"], rows);
        }
        ListWhat::Taps => {
            let r = client.list_taps(request()).await?.into_inner();
            let rows = r
                .taps
                .iter()
                .map(|t| {
                    let s = t.spec.clone().unwrap_or_default();
                    vec![
                        t.id.to_string(),
                        s.vhost,
                        format!("{} '{}'", s.source_type, s.source),
                        s.target_exchange,
                        format!("1 in {}", s.sample_every.max(1)),
                        t.seen.to_string(),
                        t.copied.to_string(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "id",
                    "vhost",
                    "source",
                    "copies to",
                    "sample",
                    "seen",
                    "copied",
                ],
                rows,
            );
        }
        ListWhat::Detours => {
            let r = client.list_detours(request()).await?.into_inner();
            let rows = r
                .detours
                .iter()
                .map(|d| {
                    vec![
                        d.vhost.clone(),
                        d.source.clone(),
                        format!("{} '{}'", d.destination_type, d.destination),
                        d.via_exchange.clone(),
                    ]
                })
                .collect();
            out.table(&r, &["vhost", "source", "destination", "via"], rows);
        }
        ListWhat::Nodes => {
            let r = client.list_nodes(ListNodesRequest {}).await?.into_inner();
            let rows = r
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        if n.node_id == 0 {
                            String::new()
                        } else {
                            n.node_id.to_string()
                        },
                        n.name.clone(),
                        n.role.clone(),
                        yes_no(n.reachable),
                        duration_ms(n.uptime_ms),
                        n.cluster_address.clone(),
                        n.amqp_listen.clone(),
                        n.admin_listen.clone(),
                    ]
                })
                .collect();
            out.table(
                &r,
                &[
                    "id",
                    "name",
                    "role",
                    "reachable",
                    "uptime",
                    "cluster",
                    "amqp",
                    "admin",
                ],
                rows,
            );
        }
    }
    Ok(())
}
