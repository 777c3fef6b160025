//! The admin plane over a real gRPC client against a real broker: authentication, every
//! configuration RPC with its errors, statistics of real AMQP clients, definitions round trips,
//! the metrics scrape and server reflection. The message and routing RPCs (peek, get, move,
//! pause, taps, detours) are in `admin_patterns.rs`.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;
use warren_tests::admin::{self, *};
use warren_tests::Warren;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn calls_without_valid_credentials_get_no_data() {
    let warren = Warren::start_with(&["--admin-token", "s3cret-token"]);
    let url = warren.admin_url();

    // Phase 1: no credentials, wrong password, unknown user, wrong token.
    for credentials in [
        admin::Credentials::none(),
        admin::Credentials::basic("guest", "wrong"),
        admin::Credentials::basic("nobody", "guest"),
        admin::Credentials::bearer("not-the-token"),
    ] {
        let mut a = admin::connect(&url, credentials.clone()).await;
        let error = a
            .list_queues(ListRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(error.code(), Code::Unauthenticated, "{credentials:?}");
    }

    // Phase 2: a user without the administrator tag is known but not allowed.
    let mut guest = admin::guest(&url).await;
    guest
        .put_user(PutUserRequest {
            name: "app".into(),
            password: "pw".into(),
            tags: vec![],
            ..Default::default()
        })
        .await
        .expect("user created");
    let mut app = admin::connect(&url, admin::Credentials::basic("app", "pw")).await;
    let error = app.overview(OverviewRequest {}).await.expect_err("refused");
    assert_eq!(error.code(), Code::PermissionDenied);

    // Phase 3: the configured token and an administrator both work.
    let mut by_token = admin::connect(&url, admin::Credentials::bearer("s3cret-token")).await;
    let overview = by_token
        .overview(OverviewRequest {})
        .await
        .expect("token works");
    assert_eq!(overview.into_inner().amqp_listen, warren.addr.to_string());
    guest
        .overview(OverviewRequest {})
        .await
        .expect("admin works");
}

#[tokio::test]
async fn declarations_and_their_errors_map_to_precise_codes() -> Result<()> {
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;

    declare_queue(
        &mut a,
        "jobs",
        &[("x-max-length", "10"), ("x-queue-mode", "lazy")],
    )
    .await;
    declare_exchange(&mut a, "work", "topic").await;
    bind(&mut a, "work", "jobs", "jobs.#").await;
    let q = queue_info(&mut a, "jobs").await;
    assert_eq!(
        q.arguments.get("x-max-length").map(String::as_str),
        Some("10")
    );
    assert_eq!(q.r#type, "classic");
    assert!(q.durable);
    let bindings = a
        .list_bindings(ListRequest::default())
        .await?
        .into_inner()
        .bindings;
    assert!(bindings
        .iter()
        .any(|b| b.source == "work" && b.destination == "jobs" && b.routing_key == "jobs.#"));
    let exchanges = a.list_exchanges(ListRequest::default()).await?.into_inner();
    let work = exchanges
        .exchanges
        .iter()
        .find(|x| x.name == "work")
        .expect("listed");
    assert_eq!((work.r#type.as_str(), work.bindings), ("topic", 1));

    // Re-declaring differently is a failed precondition; declaring the same is fine.
    declare_queue(
        &mut a,
        "jobs",
        &[("x-max-length", "10"), ("x-queue-mode", "lazy")],
    )
    .await;
    let inequivalent = a
        .declare_queue(DeclareQueueRequest {
            vhost: vhost(),
            name: "jobs".into(),
            durable: true,
            arguments: [("x-max-length".to_string(), "11".to_string())].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(inequivalent), Code::FailedPrecondition);
    let bad_type = a
        .declare_exchange(DeclareExchangeRequest {
            vhost: vhost(),
            name: "x".into(),
            r#type: "nonsense".into(),
            durable: true,
            ..Default::default()
        })
        .await;
    assert_eq!(code(bad_type), Code::InvalidArgument);
    let unnamed = a.declare_exchange(DeclareExchangeRequest::default()).await;
    assert_eq!(code(unnamed), Code::InvalidArgument);
    let bad_arg = a
        .declare_queue(DeclareQueueRequest {
            vhost: vhost(),
            name: "q2".into(),
            durable: true,
            arguments: [("x-max-length".to_string(), "many".to_string())].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(bad_arg), Code::FailedPrecondition);
    let missing = a
        .delete_queue(DeleteQueueRequest {
            vhost: vhost(),
            name: "nope".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(missing), Code::NotFound);
    let no_vhost = a
        .declare_queue(DeclareQueueRequest {
            vhost: "nowhere".into(),
            name: "q".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(no_vhost), Code::NotFound);
    let bind_missing = a
        .bind(BindingSpec {
            vhost: vhost(),
            source: "work".into(),
            destination_type: "queue".into(),
            destination: "nope".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(bind_missing), Code::NotFound);
    let bad_destination_type = a
        .bind(BindingSpec {
            vhost: vhost(),
            source: "work".into(),
            destination_type: "topic".into(),
            destination: "jobs".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(bad_destination_type), Code::InvalidArgument);

    // Unbind, purge, delete with conditions.
    a.unbind(BindingSpec {
        vhost: vhost(),
        source: "work".into(),
        destination_type: "queue".into(),
        destination: "jobs".into(),
        routing_key: "jobs.#".into(),
        ..Default::default()
    })
    .await?;
    let again = a
        .unbind(BindingSpec {
            vhost: vhost(),
            source: "work".into(),
            destination_type: "queue".into(),
            destination: "jobs".into(),
            routing_key: "jobs.#".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(again), Code::NotFound);
    publish(&mut a, "", "jobs", "one").await;
    let not_empty = a
        .delete_queue(DeleteQueueRequest {
            vhost: vhost(),
            name: "jobs".into(),
            if_empty: true,
            ..Default::default()
        })
        .await;
    assert_eq!(code(not_empty), Code::FailedPrecondition);
    let purged = a
        .purge_queue(QueueRef {
            vhost: vhost(),
            name: "jobs".into(),
        })
        .await?
        .into_inner();
    assert_eq!(purged.messages, 1);
    a.delete_queue(DeleteQueueRequest {
        vhost: vhost(),
        name: "jobs".into(),
        if_empty: true,
        ..Default::default()
    })
    .await?;
    a.delete_exchange(DeleteExchangeRequest {
        vhost: vhost(),
        name: "work".into(),
        if_unused: true,
    })
    .await?;
    // Names the protocol cannot carry are refused before anything changes.
    let long = "q".repeat(256);
    let too_long = a
        .declare_queue(DeclareQueueRequest {
            vhost: vhost(),
            name: long.clone(),
            durable: true,
            ..Default::default()
        })
        .await;
    assert_eq!(code(too_long), Code::InvalidArgument);
    let long_key = a
        .publish(PublishRequest {
            vhost: vhost(),
            exchange: "amq.direct".into(),
            routing_key: long,
            ..Default::default()
        })
        .await;
    assert_eq!(code(long_key), Code::InvalidArgument);
    let nul = a
        .add_vhost(VhostRef {
            name: "a\0b".into(),
        })
        .await;
    assert_eq!(code(nul), Code::InvalidArgument);
    let reserved = a
        .declare_exchange(DeclareExchangeRequest {
            vhost: vhost(),
            name: "amq.mine".into(),
            r#type: "direct".into(),
            durable: true,
            ..Default::default()
        })
        .await;
    assert_eq!(code(reserved), Code::InvalidArgument);
    let system = a
        .delete_exchange(DeleteExchangeRequest {
            vhost: vhost(),
            name: "amq.topic".into(),
            if_unused: false,
        })
        .await;
    assert_eq!(code(system), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn vhosts_users_and_permissions_are_managed_at_run_time() -> Result<()> {
    let mut warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;

    a.add_vhost(VhostRef {
        name: "staging".into(),
    })
    .await?;
    let twice = a
        .add_vhost(VhostRef {
            name: "staging".into(),
        })
        .await;
    assert_eq!(twice.expect_err("exists").code(), Code::AlreadyExists);
    a.put_user(PutUserRequest {
        name: "ops".into(),
        password: "pw".into(),
        tags: vec!["monitoring".into()],
        ..Default::default()
    })
    .await?;
    let bad_regex = a
        .set_permissions(PermissionInfo {
            user: "ops".into(),
            vhost: "staging".into(),
            configure: "(".into(),
            write: ".*".into(),
            read: ".*".into(),
        })
        .await;
    assert_eq!(bad_regex.expect_err("bad").code(), Code::InvalidArgument);
    a.set_permissions(PermissionInfo {
        user: "ops".into(),
        vhost: "staging".into(),
        configure: "^ops\\.".into(),
        write: ".*".into(),
        read: ".*".into(),
    })
    .await?;

    // The new user can use the new vhost over AMQP, within its permissions.
    let url = format!("amqp://ops:pw@{}/staging", warren.addr);
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        "ops.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let refused = ch
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(refused.is_err(), "configure permission is enforced");
    conn.close(200, "bye".into()).await.ok();

    let users = a.list_users(ListUsersRequest {}).await?.into_inner().users;
    assert!(users
        .iter()
        .any(|u| u.name == "ops" && u.tags == ["monitoring"]));
    let perms = a
        .list_permissions(ListPermissionsRequest {
            vhost: "staging".into(),
            user: String::new(),
        })
        .await?
        .into_inner()
        .permissions;
    assert_eq!(perms.len(), 1);
    assert_eq!(perms[0].configure, "^ops\\.");

    // Definitions survive a restart.
    warren.restart();
    let mut a = admin::guest(&warren.admin_url()).await;
    let vhosts = a
        .list_vhosts(ListVhostsRequest {})
        .await?
        .into_inner()
        .vhosts;
    assert!(vhosts.iter().any(|v| v.name == "staging"));
    let perms = a
        .list_permissions(ListPermissionsRequest {
            vhost: "staging".into(),
            user: "ops".into(),
        })
        .await?
        .into_inner()
        .permissions;
    assert_eq!(perms.len(), 1);

    // Removal.
    a.clear_permissions(ClearPermissionsRequest {
        user: "ops".into(),
        vhost: "staging".into(),
    })
    .await?;
    let cleared = a
        .clear_permissions(ClearPermissionsRequest {
            user: "ops".into(),
            vhost: "staging".into(),
        })
        .await;
    assert_eq!(cleared.expect_err("gone").code(), Code::NotFound);
    a.delete_user(UserRef { name: "ops".into() }).await?;
    a.delete_vhost(VhostRef {
        name: "staging".into(),
    })
    .await?;
    let gone = a
        .delete_vhost(VhostRef {
            name: "staging".into(),
        })
        .await;
    assert_eq!(gone.expect_err("gone").code(), Code::NotFound);
    let refused = Connection::connect(&url, ConnectionProperties::default()).await;
    assert!(refused.is_err(), "deleted user cannot log in");
    Ok(())
}

#[tokio::test]
async fn statistics_describe_real_clients_and_connections_can_be_closed() -> Result<()> {
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    let conn = amqp(&warren).await;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_qos(7, BasicQosOptions::default()).await?;
    ch.queue_declare(
        "stats".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    for i in 0..5 {
        ch.basic_publish(
            "".into(),
            "stats".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    let mut consumer = ch
        .basic_consume(
            "stats".into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .expect("delivery")?;
    }

    let consumers = a
        .list_consumers(ListRequest::default())
        .await?
        .into_inner()
        .consumers;
    assert_eq!(consumers.len(), 1);
    let c = &consumers[0];
    assert_eq!((c.queue.as_str(), c.tag.as_str()), ("stats", "watcher"));
    assert!(c.ack_required);
    assert_eq!(c.unacked, 5, "five delivered, none acked");
    let q = queue_info(&mut a, "stats").await;
    assert_eq!(
        (q.ready, q.unacked, q.consumers, q.published_total),
        (0, 5, 1, 5)
    );
    assert!(q.disk_bytes > 0, "persistent messages are on disk");

    let connections = a
        .list_connections(ListRequest::default())
        .await?
        .into_inner()
        .connections;
    assert_eq!(connections.len(), 1);
    let info = &connections[0];
    assert_eq!(info.user, "guest");
    assert_eq!(info.client_product, "lapin");
    assert_eq!(info.published_total, 5);
    assert!(info.received_bytes > 0 && info.sent_bytes > 0);
    let channels = a
        .list_channels(ListRequest::default())
        .await?
        .into_inner()
        .channels;
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].mode, "confirm");
    assert_eq!((channels[0].unacked, channels[0].consumers), (5, 1));

    let overview = a.overview(OverviewRequest {}).await?.into_inner();
    assert_eq!(
        (overview.connections, overview.channels, overview.queues),
        (1, 1, 1)
    );
    assert_eq!(overview.published_total, 5);
    assert_eq!(overview.delivered_total, 5);
    assert!(overview.memory_rss_bytes > 0 && overview.disk_free_bytes > 0);
    let nodes = a.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].amqp_listen, warren.addr.to_string());

    // Closing from the admin plane: the client sees 320 with our reason, and the unacked
    // messages return to the queue.
    a.close_connection(CloseConnectionRequest {
        id: info.id,
        reason: "maintenance window".into(),
    })
    .await?;
    let unknown = a
        .close_connection(CloseConnectionRequest {
            id: 999_999,
            reason: String::new(),
        })
        .await;
    assert_eq!(unknown.expect_err("no such").code(), Code::NotFound);
    // The broker unregisters a connection after telling its queues the channels are gone, so
    // once it is no longer listed, a peek (queued behind that in the queue's inbox) sees the
    // requeued messages.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = a
            .list_connections(ListRequest::default())
            .await?
            .into_inner()
            .connections;
        if open.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connection still open: {open:?}"
        );
        tokio::task::yield_now().await;
    }
    drop(conn);
    let redelivered = a
        .peek(PeekRequest {
            vhost: vhost(),
            queue: "stats".into(),
            count: 10,
            body_bytes_max: 0,
        })
        .await?
        .into_inner();
    assert_eq!(redelivered.messages.len(), 5);
    assert!(redelivered.messages.iter().all(|m| m.redelivered));
    Ok(())
}

async fn populate(a: &mut Admin) -> Result<()> {
    a.add_vhost(VhostRef {
        name: "apps".into(),
    })
    .await?;
    a.put_user(PutUserRequest {
        name: "svc".into(),
        password: "pw".into(),
        tags: vec!["management".into()],
        ..Default::default()
    })
    .await?;
    a.set_permissions(PermissionInfo {
        user: "svc".into(),
        vhost: "apps".into(),
        configure: "^svc-.*".into(),
        write: ".*".into(),
        read: ".*".into(),
    })
    .await?;
    for (name, kind) in [("events", "topic"), ("fan", "fanout"), ("match", "headers")] {
        a.declare_exchange(DeclareExchangeRequest {
            vhost: "apps".into(),
            name: name.into(),
            r#type: kind.into(),
            durable: true,
            ..Default::default()
        })
        .await?;
    }
    a.declare_exchange(DeclareExchangeRequest {
        vhost: "apps".into(),
        name: "with-ae".into(),
        r#type: "direct".into(),
        durable: true,
        arguments: [("alternate-exchange".to_string(), "fan".to_string())].into(),
        ..Default::default()
    })
    .await?;
    a.declare_queue(DeclareQueueRequest {
        vhost: "apps".into(),
        name: "svc-jobs".into(),
        durable: true,
        arguments: [
            ("x-max-length".to_string(), "1000".to_string()),
            ("x-dead-letter-exchange".to_string(), "fan".to_string()),
        ]
        .into(),
        ..Default::default()
    })
    .await?;
    a.declare_queue(DeclareQueueRequest {
        vhost: "apps".into(),
        name: "svc-dlq".into(),
        durable: true,
        ..Default::default()
    })
    .await?;
    for spec in [
        ("events", "queue", "svc-jobs", "job.*", vec![]),
        ("fan", "queue", "svc-dlq", "", vec![]),
        ("events", "exchange", "fan", "#", vec![]),
        (
            "match",
            "queue",
            "svc-jobs",
            "",
            vec![("x-match", "all"), ("kind", "job")],
        ),
    ] {
        a.bind(BindingSpec {
            vhost: "apps".into(),
            source: spec.0.into(),
            destination_type: spec.1.into(),
            destination: spec.2.into(),
            routing_key: spec.3.into(),
            arguments: spec
                .4
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn definitions_round_trip_through_a_fresh_broker() -> Result<()> {
    let source = Warren::start();
    let mut a = admin::guest(&source.admin_url()).await;
    populate(&mut a).await?;
    let exported = a
        .export_definitions(ExportDefinitionsRequest {})
        .await?
        .into_inner()
        .json;
    let doc: serde_json::Value = serde_json::from_str(&exported)?;
    assert_eq!(doc["queues"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["bindings"].as_array().map(Vec::len), Some(4));
    let jobs = doc["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "svc-jobs"))
        .expect("exported");
    assert_eq!(
        jobs["arguments"]["x-max-length"], 1000,
        "integers stay integers"
    );

    let target = Warren::start();
    let mut b = admin::guest(&target.admin_url()).await;
    let imported = b
        .import_definitions(DefinitionsJson {
            json: exported.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (imported.exchanges, imported.queues, imported.bindings),
        (4, 2, 4)
    );
    let again = b
        .export_definitions(ExportDefinitionsRequest {})
        .await?
        .into_inner()
        .json;
    let again: serde_json::Value = serde_json::from_str(&again)?;
    assert_eq!(again, doc, "export → import → export is the identity");

    // The imported user logs in with the original password (the hash moved, not a new one).
    let url = format!("amqp://svc:pw@{}/apps", target.addr);
    Connection::connect(&url, ConnectionProperties::default()).await?;

    // Importing again changes nothing; a malformed document changes nothing either.
    b.import_definitions(DefinitionsJson { json: exported })
        .await?;
    let bad = b
        .import_definitions(DefinitionsJson {
            json: "{ not json".into(),
        })
        .await;
    assert_eq!(bad.expect_err("bad json").code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn rabbitmq_definitions_import() -> Result<()> {
    // As `rabbitmqctl export_definitions` writes them (3.8-style string tags included).
    let json = r#"{
      "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8", "product_name": "RabbitMQ",
      "users": [
        {"name": "legacy", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator,monitoring",
         "limits": {}}
      ],
      "vhosts": [{"name": "legacy-vh", "limits": [], "metadata": {"description": "", "tags": []}}],
      "permissions": [{"user": "legacy", "vhost": "legacy-vh", "configure": ".*", "write": ".*", "read": ".*"}],
      "topic_permissions": [], "parameters": [], "global_parameters": [], "policies": [],
      "queues": [{"name": "q1", "vhost": "legacy-vh", "durable": true, "auto_delete": false,
                  "arguments": {"x-queue-type": "classic", "x-message-ttl": 60000}}],
      "exchanges": [{"name": "x1", "vhost": "legacy-vh", "type": "topic", "durable": true,
                     "auto_delete": false, "internal": false, "arguments": {}}],
      "bindings": [{"source": "x1", "vhost": "legacy-vh", "destination": "q1",
                    "destination_type": "queue", "routing_key": "a.#", "arguments": {}}]
    }"#;
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    let r = a
        .import_definitions(DefinitionsJson { json: json.into() })
        .await?
        .into_inner();
    assert_eq!(
        (
            r.vhosts,
            r.users,
            r.permissions,
            r.queues,
            r.exchanges,
            r.bindings
        ),
        (1, 1, 1, 1, 1, 1)
    );
    let users = a.list_users(ListUsersRequest {}).await?.into_inner().users;
    let legacy = users.iter().find(|u| u.name == "legacy").expect("imported");
    assert_eq!(legacy.tags, ["administrator", "monitoring"]);
    let routed = a
        .publish(PublishRequest {
            vhost: "legacy-vh".into(),
            exchange: "x1".into(),
            routing_key: "a.b".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(routed.routed_queues, ["q1"]);
    let md5 = json.replace(
        "rabbit_password_hashing_sha256",
        "rabbit_password_hashing_md5",
    );
    let refused = a.import_definitions(DefinitionsJson { json: md5 }).await;
    assert_eq!(refused.expect_err("md5").code(), Code::InvalidArgument);
    Ok(())
}

/// `GET /metrics` over a plain HTTP/1.0 exchange.
async fn scrape(warren: &Warren) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(warren.metrics_addr.expect("metrics")).await?;
    socket
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: warren\r\n\r\n")
        .await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/plain"));
    Ok(body.to_string())
}

#[tokio::test]
async fn metrics_scrape_parses_as_prometheus_text() -> Result<()> {
    let warren = Warren::start();
    let mut a = admin::guest(&warren.admin_url()).await;
    declare_queue(&mut a, "quo\"ted", &[]).await;
    for i in 0..3 {
        publish(&mut a, "", "quo\"ted", &i.to_string()).await;
    }
    let body = scrape(&warren).await?;
    let mut typed = HashMap::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
        assert!(typed.contains_key(name), "{name} has a TYPE line before it");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples.insert(series.to_string(), value);
    }
    assert_eq!(
        samples.get(r#"warren_queue_messages_ready{vhost="/",queue="quo\"ted"}"#),
        Some(&3.0)
    );
    assert_eq!(
        samples.get("warren_global_messages_received_total"),
        Some(&3.0)
    );
    assert_eq!(typed["warren_global_messages_received_total"], "counter");
    assert!(samples["warren_process_resident_memory_bytes"] > 0.0);
    assert!(samples["warren_log_disk_bytes"] > 0.0);
    // The spare segment may or may not be zero-filled yet: the gauge is there either way.
    assert_eq!(typed["warren_log_reserve_bytes"], "gauge");
    assert!(samples.contains_key("warren_log_reserve_bytes"));
    Ok(())
}

#[tokio::test]
async fn server_reflection_lists_the_admin_service_for_grpcurl() -> Result<()> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let warren = Warren::start();
    let channel = tonic::transport::Channel::from_shared(warren.admin_url())?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("warren.admin.v1.Admin".into()),
    ]
    .map(|r| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r),
    });
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let first = answers.message().await?.expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list, got {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"warren.admin.v1.Admin".to_string()),
        "{names:?}"
    );
    let second = answers.message().await?.expect("an answer");
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("expected a file descriptor, got {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    Ok(())
}
