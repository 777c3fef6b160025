//! Three real `warren` processes on loopback as a cluster.
//!
//! - Metadata: what one node declares every node sees once confirmed; a delete on another node
//!   reaches everyone; a full restart keeps it all.
//! - `warren local-cluster`: the one-command local cluster starts, serves AMQP on each node,
//!   and stops cleanly on SIGTERM.
//! - Quorum queues: a killed leader, a partitioned leader, and random kills and partitions
//!   (the total-queue checker) lose nothing confirmed and mark every repeat `redelivered`.
//! - Poison messages: a quorum queue's delivery counts (`x-delivery-limit`) carry over to a
//!   new leader.
//! - Storage errors: a replica whose log fails its checksum (at start, or a running leader's
//!   while it replicates) is fenced and reported, its node serves the queue through the other
//!   replicas, and `warrenctl repair-replica` rebuilds it.
//! - Membership: a node joins and serves queues it holds no replica of; a member leaves after
//!   its replicas moved; nothing confirmed is lost.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use warren_proto::admin::{PermissionInfo, PutUserRequest, VhostRef};
use warren_tests::cluster::Cluster;
use warren_tests::Warren;

async fn connect(node: &Warren) -> Connection {
    Connection::connect(&node.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

async fn channel(node: &Warren) -> (Connection, Channel) {
    let connection = connect(node).await;
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

async fn exchange_exists(node: &Warren, name: &str) -> bool {
    let (_c, ch) = channel(node).await;
    match ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => true,
        Err(e) if reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of '{name}': {e}"),
    }
}

/// A classic queue on `node` bound to `exchange`, and one message published through `via`
/// (another node's view of the exchange) routed into it.
async fn route_through(node: &Warren, exchange: &str, key: &str) -> Vec<u8> {
    let (_c, ch) = channel(node).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    ch.queue_bind(
        q.name().clone(),
        "audit".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind to audit");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"through the cluster's exchanges",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
        .expect("no error");
    delivery.data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_made_on_one_node_are_seen_on_every_node_and_survive_restarts() {
    let mut cluster = Cluster::start(3);

    // Declared on node 3: an exchange, an exchange-to-exchange binding.
    {
        let (_c, ch) = channel(cluster.node(3)).await;
        for (name, kind) in [
            ("orders", ExchangeKind::Topic),
            ("audit", ExchangeKind::Fanout),
        ] {
            ch.exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare on node 3");
        }
        ch.exchange_bind(
            "audit".into(),
            "orders".into(),
            "#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange binding on node 3");
        // Inequivalent redeclaration is refused the same way on a cluster.
        let refused = ch
            .exchange_declare(
                "orders".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("inequivalent type");
        assert_eq!(reply_code(&refused), Some(406));
    }

    // Used on node 1: the exchanges exist and route as declared.
    for id in 1..=3 {
        assert!(
            exchange_exists(cluster.node(id), "orders").await,
            "node {id}"
        );
    }
    assert_eq!(
        route_through(cluster.node(1), "orders", "a.b").await,
        b"through the cluster's exchanges"
    );

    // A vhost, a user and permissions added through node 2's admin plane: the user connects
    // to node 3.
    {
        let mut admin = warren_tests::admin::guest(&cluster.node(2).admin_url()).await;
        admin
            .add_vhost(VhostRef {
                name: "shop".into(),
            })
            .await
            .expect("add vhost");
        admin
            .put_user(PutUserRequest {
                name: "alice".into(),
                password: "secret".into(),
                tags: vec![],
                ..Default::default()
            })
            .await
            .expect("put user");
        admin
            .set_permissions(PermissionInfo {
                user: "alice".into(),
                vhost: "shop".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })
            .await
            .expect("permissions");
        let url = format!("amqp://alice:secret@{}/shop", cluster.node(3).addr);
        let alice = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("alice connects to node 3");
        alice.close(200, "bye".into()).await.expect("close");
    }

    // Deleted on node 2: gone everywhere.
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        ch.exchange_delete("orders".into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete on node 2");
    }
    for id in 1..=3 {
        assert!(
            !exchange_exists(cluster.node(id), "orders").await,
            "node {id} still has the deleted exchange"
        );
    }

    // A quorum queue declared on node 3, bound on node 2, filled through node 1.
    declare_quorum(cluster.node(3), "kept").await;
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        ch.queue_bind(
            "kept".into(),
            "audit".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the quorum queue on node 2");
        let (_c1, ch1) = channel(cluster.node(1)).await;
        ch1.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for i in 0..10 {
            let confirm = ch1
                .basic_publish(
                    "audit".into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    format!("kept {i}").as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack(), "message {i} confirmed");
        }
    }

    // All three restarted: the definitions are intact, and so are the quorum queue's messages.
    cluster.restart_all();
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        let mut kept = Vec::new();
        for _ in 0..50 {
            match ch
                .basic_get("kept".into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get from the quorum queue after the restart")
            {
                Some(m) => kept.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
                None if kept.len() == 10 => break,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let expected: Vec<String> = (0..10).map(|i| format!("kept {i}")).collect();
        assert_eq!(
            kept, expected,
            "the quorum queue's messages after a full restart"
        );
    }
    for id in 1..=3 {
        assert!(
            exchange_exists(cluster.node(id), "audit").await,
            "node {id}"
        );
        assert!(
            !exchange_exists(cluster.node(id), "orders").await,
            "node {id}"
        );
    }
    let url = format!("amqp://alice:secret@{}/shop", cluster.node(1).addr);
    let alice = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("alice after the restart: {e}\n{}", cluster.logs()));
    alice.close(200, "bye".into()).await.expect("close");

    // A quorum queue with `x-expires` unused that long is deleted on every node.
    {
        let (_c, ch) = channel(cluster.node(1)).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(500));
        ch.queue_declare(
            "fleeting".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare an expiring quorum queue");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for id in [3, 2] {
        loop {
            let (_c, ch) = channel(cluster.node(id)).await;
            let passive = ch
                .queue_declare(
                    "fleeting".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match passive {
                Err(e) if reply_code(&e) == Some(404) => break,
                Ok(_) => {}
                Err(e) => panic!("passive declare: {e}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expired quorum queue is still on node {id}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A base port whose derived ports (`+0..n`, `+10008`, `+10018`, `+20000`) are all free.
fn free_base_port(nodes: u16) -> u16 {
    let mut seed = std::process::id() as u16;
    for _ in 0..200 {
        seed = seed.wrapping_mul(31).wrapping_add(17);
        let base = 20_000 + seed % 20_000;
        let all_free = (0..nodes).all(|i| {
            [0u16, 10_008, 10_018, 20_000].iter().all(|offset| {
                base.checked_add(i + offset)
                    .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            })
        });
        if all_free && base < 45_000 {
            return base;
        }
    }
    panic!("no free port range found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_command_starts_three_nodes_and_stops_them_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_base_port(3);
    let mut child = Command::new(warren_tests::warren_binary())
        .args(["local-cluster", "--dir"])
        .arg(dir.path())
        .args(["--base-port", &base.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("warren local-cluster");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        let done = line.starts_with("cluster of 3 nodes ready");
        seen.push(line);
        if done {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        4,
        "three node lines and the ready line: {seen:?}"
    );
    for (i, line) in seen.iter().take(3).enumerate() {
        let amqp = base + i as u16;
        assert!(
            line.starts_with(&format!("node {}: listening on 127.0.0.1:{amqp}", i + 1)),
            "{line}"
        );
    }
    // Each node serves AMQP, and a declaration on one is seen on another.
    let url = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let one = Connection::connect(&url(base), ConnectionProperties::default())
        .await
        .expect("node 1");
    let ch = one.create_channel().await.expect("channel");
    ch.exchange_declare(
        "local-cluster-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare on node 1");
    let three = Connection::connect(&url(base + 2), ConnectionProperties::default())
        .await
        .expect("node 3");
    let ch3 = three.create_channel().await.expect("channel");
    ch3.exchange_declare(
        "local-cluster-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("seen on node 3");
    drop((ch, ch3, one, three));

    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let stopped: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().expect("exit");
    assert!(status.success(), "local-cluster exited with {status}");
    for i in 1..=3 {
        assert!(
            stopped.contains(&format!("node {i} stopped (exit status: 0)")),
            "node {i} did not stop cleanly: {stopped:?}"
        );
    }
    for i in 1..=3 {
        assert!(dir.path().join(format!("node-{i}/warren.toml")).exists());
    }
}

/// The node leading quorum queue `name`, as node `via`'s admin plane reports it.
async fn leader_of(cluster: &Cluster, via: usize, name: &str) -> Option<usize> {
    let mut admin = warren_tests::admin::guest(&cluster.node(via).admin_url()).await;
    let list = admin
        .list_queues(warren_proto::admin::ListRequest { vhost: "/".into() })
        .await
        .ok()?
        .into_inner();
    let q = list.queues.into_iter().find(|q| q.name == name)?;
    q.leader
        .strip_prefix("node ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

async fn wait_for_leader(cluster: &Cluster, via: usize, name: &str) -> usize {
    for _ in 0..200 {
        if let Some(leader) = leader_of(cluster, via, name).await {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader for '{name}'\n{}", cluster.logs());
}

async fn declare_quorum(node: &Warren, name: &str) {
    declare_quorum_with(node, name, FieldTable::default()).await
}

/// Declares quorum queue `name` with `args` besides its type.
async fn declare_quorum_with(node: &Warren, name: &str, mut args: FieldTable) {
    let (_c, ch) = channel(node).await;
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare quorum queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quorum_queue_loses_nothing_confirmed_when_its_leader_is_killed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use warren_tests::oracle::{self, Oracle};

    let mut cluster = Cluster::start(3);
    declare_quorum(cluster.node(1), "orders").await;
    let leader = wait_for_leader(&cluster, 2, "orders").await;
    // Leadership cannot move to a node without a replica (warrenctl through node 1's admin).
    let refused = warrenctl(&cluster, 1, &["transfer-leadership", "orders", "--to", "9"]);
    assert!(!refused.status.success(), "node 9 holds no replica");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("holds no replica"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let url = |cluster: &Cluster, id: usize| cluster.node(id).url();
    // Publishers go through node 1 first, the consumer through node 2, each moving on to the
    // next node when theirs dies.
    let publish_urls: Vec<String> = [1, 2, 3].iter().map(|i| url(&cluster, *i)).collect();
    let consume_urls: Vec<String> = [2, 3, 1].iter().map(|i| url(&cluster, *i)).collect();
    let oracle = Oracle::default();
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let stop_publisher = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn(oracle::consume(
        oracle.clone(),
        consume_urls.clone(),
        "orders".into(),
        Arc::clone(&stop_consumer),
    ));
    let publisher = tokio::spawn(oracle::publish(
        oracle.clone(),
        publish_urls.clone(),
        "orders".into(),
        0..6000,
        64,
        Arc::clone(&stop_publisher),
    ));

    // Mid-stream, the queue's leader dies.
    await_confirmed(
        &oracle,
        1500,
        Duration::from_secs(60),
        &cluster,
        "before the kill",
    )
    .await;
    let confirmed_before = oracle.confirmed_count();
    cluster.node_mut(leader).kill();

    // Publishing resumes through a surviving node and finishes.
    tokio::time::timeout(Duration::from_secs(90), publisher)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "publishing did not finish: {}\n{}",
                oracle.report(),
                cluster.logs()
            )
        })
        .expect("publisher task");
    assert!(
        oracle.confirmed_count() > confirmed_before + 1000,
        "publishing resumed after the kill: {}",
        oracle.report()
    );
    // Everything confirmed reaches the consumer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !oracle.all_confirmed_received() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed messages missing: {}\n{}",
            oracle.report(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_consumer.store(true, Ordering::Relaxed);
    consumer.await.expect("consumer task");
    let report = oracle.report();
    println!("leader kill: {report}");
    assert!(report.lost.is_empty(), "lost: {report}");
    assert!(report.unexpected.is_empty(), "unexpected: {report}");
    assert!(
        report.unmarked_repeats.is_empty(),
        "repeats without redelivered: {report}"
    );

    // The killed node comes back and catches up: with another node then stopped, it is half
    // of the majority that must serve everything published while it was away.
    let backlog = Oracle::default();
    tokio::spawn(oracle::publish(
        backlog.clone(),
        publish_urls.clone(),
        "orders".into(),
        100_000..100_300,
        64,
        Arc::new(AtomicBool::new(false)),
    ))
    .await
    .expect("backlog publisher");
    assert_eq!(backlog.confirmed_count(), 300, "{}", backlog.report());
    cluster.start_nodes(&[leader]);
    let other = (1..=3)
        .find(|i| *i != leader && cluster.node(*i).is_running())
        .expect("a survivor");
    cluster.node_mut(other).kill();
    let through: Vec<String> = vec![cluster.node(leader).url()];
    let stop = Arc::new(AtomicBool::new(false));
    let drain = tokio::spawn(oracle::consume(
        backlog.clone(),
        through,
        "orders".into(),
        Arc::clone(&stop),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !backlog.all_confirmed_received() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted node did not serve the backlog: {}\n{}",
            backlog.report(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    drain.await.expect("drain");
    let report = backlog.report();
    assert!(
        report.lost.is_empty() && report.unexpected.is_empty(),
        "{report}"
    );
}

/// `warrenctl ARGS` through node `via`'s admin plane.
fn warrenctl(cluster: &Cluster, via: usize, args: &[&str]) -> std::process::Output {
    Command::new(warren_tests::warrenctl_binary())
        .arg("--server")
        .arg(cluster.node(via).admin_url())
        .args(args)
        .output()
        .expect("warrenctl")
}

/// `warrenctl transfer-leadership` through node `via`'s admin plane; how long it took.
fn transfer_leadership(cluster: &Cluster, via: usize, queue: &str, to: usize) -> Duration {
    let started = std::time::Instant::now();
    let out = warrenctl(
        cluster,
        via,
        &["transfer-leadership", queue, "--to", &to.to_string()],
    );
    assert!(
        out.status.success(),
        "transfer of '{queue}' to node {to} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_to_the_chosen_replica_under_load_and_loses_nothing() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use warren_tests::oracle::{self, Oracle};

    let cluster = Cluster::start(3);
    declare_quorum(cluster.node(1), "moving").await;
    let first = wait_for_leader(&cluster, 1, "moving").await;
    let oracle = Oracle::default();
    let stop_publisher = Arc::new(AtomicBool::new(false));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let urls = |order: [usize; 3]| -> Vec<String> {
        order.iter().map(|i| cluster.node(*i).url()).collect()
    };
    let publisher = tokio::spawn(oracle::publish(
        oracle.clone(),
        urls([1, 2, 3]),
        "moving".into(),
        0..u64::MAX,
        64,
        Arc::clone(&stop_publisher),
    ));
    let consumer = tokio::spawn(oracle::consume(
        oracle.clone(),
        urls([3, 1, 2]),
        "moving".into(),
        Arc::clone(&stop_consumer),
    ));

    // The leadership goes round every replica, each move asked through a different node's
    // admin plane, while messages flow; every move must succeed, and every time.
    let mut order: Vec<usize> = (1..=3).filter(|i| *i != first).collect();
    order.push(first);
    for (round, to) in order.into_iter().enumerate() {
        let confirmed = oracle.confirmed_count();
        let via = round % 3 + 1;
        let took = transfer_leadership(&cluster, via, "moving", to);
        println!("leadership of 'moving' to node {to} (asked through node {via}) in {took:?}");
        for i in 1..=3 {
            assert_eq!(
                wait_for_leader_to_be(&cluster, i, "moving", to).await,
                Some(to),
                "node {i} sees another leader\n{}",
                cluster.logs()
            );
        }
        // Publishing goes on under the new leader.
        let what = format!("after the move to node {to}");
        await_confirmed(
            &oracle,
            confirmed + 200,
            Duration::from_secs(30),
            &cluster,
            &what,
        )
        .await;
    }
    stop_publisher.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.expect("publisher task");
    drain_and_check(
        &oracle,
        &stop_consumer,
        consumer,
        &cluster,
        "leadership moves",
    )
    .await;
}

/// The leader node `via` reports for queue `name`, once it is `expected` (or after 10 s,
/// whatever it is then).
async fn wait_for_leader_to_be(
    cluster: &Cluster,
    via: usize,
    name: &str,
    expected: usize,
) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leader = leader_of(cluster, via, name).await;
        if leader == Some(expected) || tokio::time::Instant::now() > deadline {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `oracle` counts at least `count` confirms; fails (saying `what`) after `within`.
async fn await_confirmed(
    oracle: &warren_tests::oracle::Oracle,
    count: usize,
    within: Duration,
    cluster: &Cluster,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + within;
    while oracle.confirmed_count() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing stalled {what}: {}\n{}",
            oracle.report(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What each running node's admin plane says of queue `name`.
async fn queue_states(cluster: &Cluster, name: &str) -> String {
    let mut out = String::new();
    for i in 1..=cluster.len() {
        if !cluster.node(i).is_running() {
            out.push_str(&format!("node {i}: down\n"));
            continue;
        }
        let mut admin = warren_tests::admin::guest(&cluster.node(i).admin_url()).await;
        let list = admin
            .list_queues(warren_proto::admin::ListRequest { vhost: "/".into() })
            .await;
        let q = list
            .ok()
            .and_then(|l| l.into_inner().queues.into_iter().find(|q| q.name == name));
        out.push_str(&match q {
            Some(q) => format!(
                "node {i}: leader {:?} ready {} unacked {} consumers {}\n",
                q.leader, q.ready, q.unacked, q.consumers
            ),
            None => format!("node {i}: no queue\n"),
        });
    }
    out
}

/// Waits until every confirmed message was received, then stops the consumer; nothing may be
/// lost or unexpected, and every repeat must carry `redelivered`.
async fn drain_and_check(
    oracle: &warren_tests::oracle::Oracle,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    consumer: tokio::task::JoinHandle<()>,
    cluster: &Cluster,
    what: &str,
) -> warren_tests::oracle::Report {
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(90);
    while !oracle.all_confirmed_received() {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: confirmed messages missing: {}\n{}\n{}\n{}",
                oracle.report(),
                oracle.details(),
                queue_states(cluster, "total").await,
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    consumer.await.expect("consumer task");
    let report = oracle.report();
    println!("{what}: {report} (drained in {:?})", started.elapsed());
    assert!(report.lost.is_empty(), "{what}: lost: {report}");
    assert!(report.unexpected.is_empty(), "{what}: unexpected: {report}");
    assert!(
        report.unmarked_repeats.is_empty(),
        "{what}: repeats without redelivered: {report}\n{}",
        oracle.details()
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_stops_confirming_while_the_majority_continues() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use warren_tests::oracle::{self, Oracle};

    let cluster = Cluster::start_partitionable(3);
    declare_quorum(cluster.node(1), "split").await;
    let cut = wait_for_leader(&cluster, 1, "split").await;
    let majority: Vec<usize> = (1..=3).filter(|i| *i != cut).collect();
    let oracle = Oracle::default();
    let stop_publishers = Arc::new(AtomicBool::new(false));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    // One publisher stays on the node about to be cut off (ids below a million), one on the
    // majority (ids from a million); the consumer reads on the majority.
    const MAJORITY: u64 = 1_000_000;
    let minority_publisher = tokio::spawn(oracle::publish(
        oracle.clone(),
        vec![cluster.node(cut).url()],
        "split".into(),
        0..MAJORITY,
        32,
        Arc::clone(&stop_publishers),
    ));
    let majority_publisher = tokio::spawn(oracle::publish(
        oracle.clone(),
        majority.iter().map(|i| cluster.node(*i).url()).collect(),
        "split".into(),
        MAJORITY..2 * MAJORITY,
        32,
        Arc::clone(&stop_publishers),
    ));
    let consumer = tokio::spawn(oracle::consume(
        oracle.clone(),
        majority
            .iter()
            .rev()
            .map(|i| cluster.node(*i).url())
            .collect(),
        "split".into(),
        Arc::clone(&stop_consumer),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while oracle.confirmed_in(0..MAJORITY) < 300
        || oracle.confirmed_in(MAJORITY..2 * MAJORITY) < 300
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing stalled before the partition: {}",
            oracle.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.isolate(cut);
    // What was committed before the cut is confirmed within the election time; after that the
    // minority confirms nothing, and the majority elects a leader and goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let minority_before = oracle.confirmed_in(0..MAJORITY);
    let majority_before = oracle.confirmed_in(MAJORITY..2 * MAJORITY);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let minority_after = oracle.confirmed_in(0..MAJORITY);
    let majority_after = oracle.confirmed_in(MAJORITY..2 * MAJORITY);
    assert_eq!(
        minority_before, minority_after,
        "the cut-off node confirmed publishes it could not replicate"
    );
    assert!(
        majority_after > majority_before + 100,
        "the majority stopped confirming: {majority_before} then {majority_after}\n{}",
        cluster.logs()
    );
    let new_leader = wait_for_leader(&cluster, majority[0], "split").await;
    assert_ne!(
        new_leader, cut,
        "the majority elected a leader among itself"
    );

    cluster.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_publishers.store(true, Ordering::Relaxed);
    for p in [minority_publisher, majority_publisher] {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "publishers did not finish after the heal: {}\n{}",
                    oracle.report(),
                    cluster.logs()
                )
            })
            .expect("publisher task");
    }
    drain_and_check(&oracle, &stop_consumer, consumer, &cluster, "partition").await;
    // Every node agrees on the leader once healed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for i in 1..=3 {
            seen.push(leader_of(&cluster, i, "split").await);
        }
        if seen.iter().all(|l| l.is_some() && *l == seen[0]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes disagree on the leader after healing: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Random node kills and partitions while publishers (one per node) and a consumer run; at the
/// end everything confirmed must have been delivered. `WARREN_SOAK_SECS` sets how long faults
/// are injected (20 s by default; e.g. 600 for a soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_queue_under_random_kills_and_partitions() {
    use rand::Rng;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use warren_tests::oracle::{self, Oracle};

    let secs: u64 = std::env::var("WARREN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("total queue: {secs} s of faults, SEED={seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let starting = tokio::time::Instant::now();
    let mut cluster = Cluster::start_partitionable(3);
    declare_quorum(cluster.node(1), "total").await;
    wait_for_leader(&cluster, 1, "total").await;
    println!("cluster up and queue declared in {:?}", starting.elapsed());
    let urls: Vec<String> = (1..=3).map(|i| cluster.node(i).url()).collect();
    let rotated =
        |first: usize| -> Vec<String> { (0..3).map(|k| urls[(first + k) % 3].clone()).collect() };
    let oracle = Oracle::default();
    let stop_publishers = Arc::new(AtomicBool::new(false));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..3u64)
        .map(|p| {
            tokio::spawn(oracle::publish(
                oracle.clone(),
                rotated(p as usize),
                "total".into(),
                p * 1_000_000_000..(p + 1) * 1_000_000_000,
                16,
                Arc::clone(&stop_publishers),
            ))
        })
        .collect();
    let consumer = tokio::spawn(oracle::consume(
        oracle.clone(),
        rotated(1),
        "total".into(),
        Arc::clone(&stop_consumer),
    ));
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut faults = Vec::new();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2500))).await;
        let victim = rng.gen_range(1..=3);
        if rng.gen_bool(0.5) {
            faults.push(format!("kill {victim}"));
            cluster.node_mut(victim).kill();
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
            let restarting = tokio::time::Instant::now();
            tokio::task::block_in_place(|| cluster.start_nodes(&[victim]));
            faults.push(format!("(ready in {:?})", restarting.elapsed()));
        } else {
            faults.push(format!("isolate {victim}"));
            cluster.isolate(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
            cluster.heal();
        }
    }
    println!("faults: {}", faults.join(", "));
    let quiet = tokio::time::Instant::now();
    // Quiet: let the cluster settle, then stop publishing and drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_publishers.store(true, Ordering::Relaxed);
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("publishers stop")
            .expect("publisher task");
    }
    println!(
        "publishers stopped {:?} after the faults; {}",
        quiet.elapsed(),
        oracle.report()
    );
    // Lost and unexpected must be 0, and every repeat must carry `redelivered`.
    let report = drain_and_check(&oracle, &stop_consumer, consumer, &cluster, "total queue").await;
    assert!(report.confirmed > 0, "nothing was confirmed: {report}");
}

/// Publishes `ids` (as text bodies, persistent) to queue `name` through `node` and waits for
/// every confirm, which must be an ack.
async fn publish_confirmed(node: &Warren, name: &str, ids: std::ops::Range<u64>) {
    publish_confirmed_by(node, name, ids, usize::MAX).await
}

/// As [`publish_confirmed`], waiting for the confirms whenever `window` are outstanding (with
/// 1, each message is confirmed before the next is sent: each goes in a raft entry of its own).
async fn publish_confirmed_by(node: &Warren, name: &str, ids: std::ops::Range<u64>, window: usize) {
    let (_c, ch) = channel(node).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let mut confirms = Vec::new();
    for id in ids {
        let confirm = ch
            .basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                id.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
        if confirms.len() >= window {
            await_acks(std::mem::take(&mut confirms)).await;
        }
    }
    await_acks(confirms).await;
}

/// Publishes one message on `ch` (in confirm mode) and waits for its confirm.
async fn publish_awaited(
    ch: &Channel,
    exchange: lapin::types::ShortString,
    routing_key: lapin::types::ShortString,
    options: BasicPublishOptions,
    payload: &[u8],
    properties: BasicProperties,
) -> lapin::Confirmation {
    ch.basic_publish(exchange, routing_key, options, payload, properties)
        .await
        .expect("publish")
        .await
        .expect("confirm")
}

async fn await_acks(confirms: Vec<lapin::PublisherConfirm>) {
    for confirm in confirms {
        let confirm = tokio::time::timeout(Duration::from_secs(30), confirm)
            .await
            .expect("a confirm within 30 s")
            .expect("confirm");
        assert!(confirm.is_ack(), "publish nacked");
    }
}

/// Takes every message of queue `name` through `node` (basic.get, acked) until `count` have
/// arrived, and returns their bodies as ids.
async fn take_ids(node: &Warren, name: &str, count: usize) -> std::collections::BTreeSet<u64> {
    let (_c, ch) = channel(node).await;
    let mut ids = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} messages arrived",
            ids.len()
        );
        match ch
            .basic_get(name.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            Some(m) => {
                let text = String::from_utf8_lossy(&m.delivery.data).to_string();
                ids.insert(text.parse().expect("an id"));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    ids
}

fn member_ids(nodes: &warren_proto::admin::NodeList) -> Vec<u64> {
    let mut ids: Vec<u64> = nodes.nodes.iter().map(|n| n.node_id).collect();
    ids.sort_unstable();
    ids
}

/// Node ids holding replicas of queue `name`, as node `via` reports them.
async fn replicas_of(cluster: &Cluster, via: usize, name: &str) -> Vec<u64> {
    let mut admin = warren_tests::admin::guest(&cluster.node(via).admin_url()).await;
    let list = admin
        .list_queues(warren_proto::admin::ListRequest { vhost: "/".into() })
        .await
        .expect("list queues")
        .into_inner();
    let q = list
        .queues
        .into_iter()
        .find(|q| q.name == name)
        .expect("the queue");
    let mut ids: Vec<u64> = q
        .replicas
        .iter()
        .filter_map(|r| r.strip_prefix("node ")?.split(' ').next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_another_leaves_and_quorum_queues_keep_every_message() {
    let began = tokio::time::Instant::now();
    let phase = |what: &str| println!("{:>8.2?} {what}", began.elapsed());
    let mut cluster = Cluster::start(3);
    declare_quorum(cluster.node(1), "moving").await;
    wait_for_leader(&cluster, 1, "moving").await;
    publish_confirmed(cluster.node(1), "moving", 0..100).await;

    // Node 4 starts with `cluster.join` and waits; node 2 adds it (with warrenctl).
    let (four, address) = cluster.launch_joining();
    let added = warrenctl(&cluster, 2, &["add-member", &four.to_string(), &address]);
    assert!(
        added.status.success(),
        "add-member: {}\n{}",
        String::from_utf8_lossy(&added.stderr),
        cluster.logs()
    );
    phase("node 4 added");
    cluster.await_joined(four);
    phase("node 4 ready");
    let mut admin4 = warren_tests::admin::guest(&cluster.node(four).admin_url()).await;
    let nodes = admin4
        .list_nodes(warren_proto::admin::ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner();
    assert_eq!(member_ids(&nodes), [1, 2, 3, 4], "{nodes:?}");
    assert!(nodes.nodes.iter().all(|n| n.reachable), "{nodes:?}");
    // Adding a member twice is refused.
    let again = admin4
        .add_member(warren_proto::admin::AddMemberRequest {
            node_id: 4,
            address: address.clone(),
        })
        .await
        .expect_err("already a member");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    // The new node knows the definitions and serves the queue it holds no replica of.
    assert_eq!(replicas_of(&cluster, four, "moving").await, [1, 2, 3]);
    publish_confirmed(cluster.node(four), "moving", 100..200).await;
    // It moves the queue's leadership too, by asking the chosen replica to take it.
    let leader = wait_for_leader(&cluster, 1, "moving").await;
    let next = [1, 2, 3].into_iter().find(|n| *n != leader).expect("one");
    transfer_leadership(&cluster, four, "moving", next);
    assert_eq!(
        wait_for_leader_to_be(&cluster, 1, "moving", next).await,
        Some(next)
    );
    phase("leadership moved through node 4");
    // A queue declared now is placed on three of the four members.
    declare_quorum(cluster.node(four), "fresh").await;
    assert_eq!(replicas_of(&cluster, 1, "fresh").await.len(), 3);

    phase("node 4 serves");
    // Node 3 leaves: its replica of "moving" moves to node 4 first.
    let missing = admin4
        .remove_member(warren_proto::admin::RemoveMemberRequest { node_id: 9 })
        .await
        .expect_err("no node 9");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let nodes = admin4
        .remove_member(warren_proto::admin::RemoveMemberRequest { node_id: 3 })
        .await
        .unwrap_or_else(|e| panic!("remove-member: {e}\n{}", cluster.logs()))
        .into_inner();
    assert_eq!(member_ids(&nodes), [1, 2, 4], "{nodes:?}");
    phase("node 3 removed");
    for via in [1, 2, four] {
        assert_eq!(replicas_of(&cluster, via, "moving").await, [1, 2, 4]);
        assert!(!replicas_of(&cluster, via, "fresh").await.contains(&3));
    }
    cluster.node_mut(3).kill();

    // Every confirmed message is there, served by the remaining members; then one more of
    // them may fail (the queue's replicas are 1, 2 and 4: a majority survives).
    publish_confirmed(cluster.node(2), "moving", 200..250).await;
    let leader = wait_for_leader(&cluster, 1, "moving").await;
    let survivor = [1, 2, four]
        .into_iter()
        .find(|n| *n != leader)
        .expect("one");
    phase("published on 1, 2, 4");
    cluster.node_mut(leader).kill();
    let got = take_ids(cluster.node(survivor), "moving", 250).await;
    assert_eq!(got, (0..250).collect(), "every confirmed message, once");
    phase("all taken after the leader was killed");
}

/// Messages stay in the raft log, and replicas hold only where they are: a snapshot is the
/// queue as of its release cursor (the entry before the oldest stored message's), and the log
/// is kept from there. A replica that missed entries the leader has since purged installs the
/// snapshot, gets the log after it, and can then lead and serve every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_behind_the_purged_log_catches_up_from_a_snapshot_and_serves_every_message() {
    // Snapshots every 64 entries; 16 kept before a snapshot's cursor.
    let mut cluster = Cluster::start_with_raft_settings(3, "snapshot_entries = 64\n");
    declare_quorum(cluster.node(1), "snap").await;
    let leader = wait_for_leader(&cluster, 1, "snap").await;
    let behind = (1..=3).find(|n| *n != leader).expect("a follower");
    let via = (1..=3)
        .find(|n| *n != leader && *n != behind)
        .expect("a third node");
    cluster.node_mut(behind).kill();
    // 300 entries of messages settled while it is away, then 100 that stay: the cursor sits
    // before the first of those, far past everything the stopped replica has.
    publish_confirmed_by(cluster.node(via), "snap", 0..300, 1).await;
    let taken = take_ids(cluster.node(via), "snap", 300).await;
    assert_eq!(taken, (0..300).collect());
    publish_confirmed_by(cluster.node(via), "snap", 300..400, 1).await;
    cluster.start_nodes(&[behind]);
    // It must lead with what it caught up, then serve the backlog from its own log.
    transfer_leadership(&cluster, via, "snap", behind);
    let ids = take_ids(cluster.node(behind), "snap", 100).await;
    assert_eq!(ids, (300..400).collect(), "{}", cluster.logs());
    assert!(
        cluster
            .node(behind)
            .log()
            .contains("installing a snapshot from the leader"),
        "the replica caught up without a snapshot: the leader's log was not purged\n{}",
        cluster.logs()
    );
}

/// The `x-delivery-count` header of a delivery, if any.
fn delivery_count(delivery: &lapin::message::Delivery) -> Option<i64> {
    use lapin::types::AMQPValue;
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        other => panic!("x-delivery-count of an odd type: {other:?}"),
    }
}

/// Takes one message from `name` with `basic.get` (unacked), waiting up to 10 s for one.
async fn get_one(ch: &Channel, name: &str) -> lapin::message::BasicGetMessage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = ch
            .basic_get(name.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
        {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived in '{name}'"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes (and acks) `count` messages from `name`; their bodies.
async fn take_bodies(ch: &Channel, name: &str, count: usize) -> std::collections::BTreeSet<String> {
    let mut got = std::collections::BTreeSet::new();
    while got.len() < count {
        let m = get_one(ch, name).await;
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        got.insert(String::from_utf8_lossy(&m.delivery.data).to_string());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_counts_of_a_quorum_queue_survive_a_leader_change() {
    use lapin::types::AMQPValue;
    let cluster = Cluster::start(3);
    let mut args = FieldTable::default();
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(2));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("poison-dead".into()),
    );
    declare_quorum_with(cluster.node(1), "poison", args).await;
    declare_quorum(cluster.node(1), "poison-dead").await;
    let leader = wait_for_leader(&cluster, 1, "poison").await;
    publish_confirmed(cluster.node(leader), "poison", 0..1).await;

    // Returned twice through the leader: delivered 3 times in all is the limit.
    let (_c, ch) = channel(cluster.node(leader)).await;
    for returns in 0..2 {
        let m = get_one(&ch, "poison").await;
        assert_eq!(m.delivery.data, b"0");
        assert_eq!(
            delivery_count(&m.delivery),
            (returns > 0).then_some(returns),
            "delivery {returns}"
        );
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        )
        .await
        .expect("reject");
    }
    // A confirmed publish after the rejects, on the same channel to the same leader: the
    // queue proposes in order, so once it is committed the returns are too.
    publish_confirmed(cluster.node(leader), "poison", 1..2).await;

    let to = (1..=3).find(|i| *i != leader).expect("another replica");
    transfer_leadership(&cluster, leader, "poison", to);
    assert_eq!(
        wait_for_leader_to_be(&cluster, to, "poison", to).await,
        Some(to)
    );

    // The new leader knows the message was returned twice: its third delivery says so, and a
    // third return dead-letters it.
    let (_c2, ch2) = channel(cluster.node(to)).await;
    let m = get_one(&ch2, "poison").await;
    assert_eq!(m.delivery.data, b"0");
    assert!(m.delivery.redelivered);
    assert_eq!(
        delivery_count(&m.delivery),
        Some(2),
        "the count came over with the leadership\n{}",
        cluster.logs()
    );
    ch2.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .expect("reject");
    let dead = get_one(&ch2, "poison-dead").await;
    assert_eq!(
        dead.delivery.data, b"0",
        "the poison message was dead-lettered"
    );
    let next = get_one(&ch2, "poison").await;
    assert_eq!(next.delivery.data, b"1", "only the later message is left");
}

/// Flips one byte inside every occurrence of `marker` in the write-ahead log segments under
/// `dir`; how many it flipped.
fn corrupt_log_records(dir: &std::path::Path, marker: &[u8]) -> usize {
    let mut flipped = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "wal") {
                continue;
            }
            let mut bytes = std::fs::read(&path).expect("read segment");
            let mut found = false;
            let mut at = 0;
            while let Some(i) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
                let i = at + i;
                bytes[i + marker.len() / 2] ^= 0x40;
                flipped += 1;
                found = true;
                at = i + marker.len();
            }
            if found {
                std::fs::write(&path, &bytes).expect("write segment");
            }
        }
    }
    flipped
}

/// Whether node `via`'s admin plane reports its replica of quorum queue `name` fenced, and
/// why (`None` while the node does not answer or does not list the queue).
async fn fence_of(cluster: &Cluster, via: usize, name: &str) -> Option<String> {
    use warren_tests::admin::Credentials;
    let channel = tonic::transport::Channel::from_shared(cluster.node(via).admin_url())
        .expect("admin url")
        .connect()
        .await
        .ok()?;
    let mut admin = warren_proto::admin::admin_client::AdminClient::with_interceptor(
        channel,
        Credentials::basic("guest", "guest"),
    );
    let list = admin
        .list_queues(warren_proto::admin::ListRequest { vhost: "/".into() })
        .await
        .ok()?
        .into_inner();
    list.queues
        .into_iter()
        .find(|q| q.name == name)
        .map(|q| q.fenced)
}

/// Waits (up to 30 s) until node `via` reports its replica of `name` fenced; the reason.
async fn await_fenced(cluster: &Cluster, via: usize, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(fenced) = fence_of(cluster, via, name).await {
            if !fenced.is_empty() {
                return fenced;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {via} never reported its replica of '{name}' fenced\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_a_corrupt_log_is_fenced_served_through_its_peers_and_repaired() {
    // Segments of 33 MiB (the least the default record limit allows), so that the records
    // of 'hurt' end up in a sealed segment: a clean restart then finds the damage only when
    // the replica reads them (the log's recovery checks the segment it continues in).
    let mut cluster = Cluster::start_configured(3, "\n[storage]\nsegment_bytes = 34603008\n");
    declare_quorum(cluster.node(1), "hurt").await;
    declare_quorum(cluster.node(1), "whole").await;
    declare_quorum(cluster.node(1), "filler").await;
    wait_for_leader(&cluster, 1, "hurt").await;
    wait_for_leader(&cluster, 1, "whole").await;
    wait_for_leader(&cluster, 1, "filler").await;
    // Bodies long enough that the marker cannot occur by chance elsewhere.
    let body = |queue: &str, id: u64| format!("{queue}-record-{id:06}-of-the-fencing-test");
    let filler = vec![b'f'; 1 << 20];
    let (_c, ch) = channel(cluster.node(1)).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let batches: [(&str, Vec<Vec<u8>>); 3] = [
        (
            "hurt",
            (0..40).map(|id| body("hurt", id).into_bytes()).collect(),
        ),
        (
            "whole",
            (0..40).map(|id| body("whole", id).into_bytes()).collect(),
        ),
        // Enough to roll every node's log into a second segment.
        ("filler", (0..36).map(|_| filler.clone()).collect()),
    ];
    for (queue, bodies) in batches {
        for payload in bodies {
            let confirm = publish_awaited(
                &ch,
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
            assert!(confirm.is_ack(), "publish to '{queue}' nacked");
        }
    }
    // Node 3 stops cleanly, and one of its records of 'hurt' rots on disk.
    let status = cluster.node_mut(3).terminate();
    assert!(status.success(), "node 3 stopped with {status}");
    let flipped = corrupt_log_records(&cluster.node(3).data_dir, body("hurt", 17).as_bytes());
    assert!(flipped >= 1, "node 3's log holds the record");
    cluster.node_mut(3).start_again();

    // Node 3 reports its replica of 'hurt' fenced, with the reason, and keeps 'whole'.
    let fenced = await_fenced(&cluster, 3, "hurt").await;
    println!("node 3 reports 'hurt': fenced here: {fenced}");
    assert!(fenced.contains("checksum"), "the reason is given: {fenced}");
    assert!(
        cluster.node(3).log().contains("fenced"),
        "the fence is logged\n{}",
        cluster.node(3).log()
    );
    assert_eq!(
        fence_of(&cluster, 3, "whole").await.as_deref(),
        Some(""),
        "'whole' is not fenced"
    );
    for via in [1, 2] {
        assert_eq!(
            fence_of(&cluster, via, "hurt").await.as_deref(),
            Some(""),
            "node {via} serves"
        );
    }

    // Through node 3, 'hurt' is served by its peers.
    publish_confirmed(cluster.node(3), "hurt", 1000..1010).await;

    // Repaired from the others (asked through node 3 itself, which has no working replica):
    // node 3's replica rejoins empty, catches up, and can lead the queue.
    let repaired = warrenctl(&cluster, 3, &["repair-replica", "hurt", "--node", "3"]);
    assert!(
        repaired.status.success(),
        "repair-replica: {}\n{}",
        String::from_utf8_lossy(&repaired.stderr),
        cluster.logs()
    );
    assert_eq!(fence_of(&cluster, 3, "hurt").await.as_deref(), Some(""));
    assert_eq!(replicas_of(&cluster, 1, "hurt").await, [1, 2, 3]);
    transfer_leadership(&cluster, 1, "hurt", 3);
    assert_eq!(
        wait_for_leader_to_be(&cluster, 3, "hurt", 3).await,
        Some(3),
        "the repaired replica leads\n{}",
        cluster.logs()
    );
    let refused = warrenctl(&cluster, 1, &["repair-replica", "hurt", "--node", "9"]);
    assert!(!refused.status.success(), "node 9 holds no replica");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("holds no replica"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Through node 3, now leading 'hurt' from its rebuilt replica, both queues hold every
    // message.
    let expected: std::collections::BTreeSet<String> = (0..40)
        .map(|id| body("hurt", id))
        .chain((1000..1010).map(|id| id.to_string()))
        .collect();
    let (_c, ch) = channel(cluster.node(3)).await;
    assert_eq!(
        take_bodies(&ch, "hurt", expected.len()).await,
        expected,
        "'hurt' through node 3"
    );
    let whole = take_bodies(&ch, "whole", 40).await;
    assert_eq!(whole, (0..40).map(|id| body("whole", id)).collect());
}

/// Flips one byte inside the first occurrence of `marker` in the log segments under `dir`, in
/// place (one byte written: a running node's log may be appended to meanwhile); whether found.
fn corrupt_live_log_record(dir: &std::path::Path, marker: &[u8]) -> bool {
    use std::io::{Seek, SeekFrom, Write};
    let wal = dir.join("wal");
    for entry in std::fs::read_dir(&wal).expect("read the log directory") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "wal") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read segment");
        if let Some(i) = bytes.windows(marker.len()).position(|w| w == marker) {
            let at = i + marker.len() / 2;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open segment");
            file.seek(SeekFrom::Start(at as u64)).expect("seek");
            file.write_all(&[bytes[at] ^ 0x40]).expect("flip");
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_log_fails_a_read_is_fenced_and_the_queue_goes_on_without_it() {
    let mut cluster = Cluster::start(3);
    declare_quorum(cluster.node(1), "rot").await;
    let leader = wait_for_leader(&cluster, 1, "rot").await;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    // A follower is away while the leader logs one entry per message (each publish waits for
    // its confirm), more than the leader keeps in memory for replication.
    cluster.node_mut(follower).kill();
    let body = |id: u64| format!("rot-record-{id:06}-of-the-runtime-fencing-test");
    let (_c, ch) = channel(cluster.node(leader)).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for id in 0..400 {
        let confirm = publish_awaited(
            &ch,
            "".into(),
            "rot".into(),
            BasicPublishOptions::default(),
            body(id).as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        assert!(confirm.is_ack());
    }
    // One of the leader's early entries rots on disk while it runs; the follower comes back,
    // and the leader reads that entry to send it: a storage error in the queue's group.
    assert!(
        corrupt_live_log_record(&cluster.node(leader).data_dir, body(5).as_bytes()),
        "the leader's log holds the record"
    );
    cluster.node_mut(follower).start_again();

    let fenced = await_fenced(&cluster, leader, "rot").await;
    println!("node {leader} reports 'rot': fenced here: {fenced}");
    assert!(fenced.contains("checksum"), "the reason is given: {fenced}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Another replica leads, and the fenced node serves the queue through it: a publish and
    // every message.
    let new_leader = loop {
        let seen = leader_of(&cluster, follower, "rot").await;
        if let Some(l) = seen.filter(|l| *l != leader) {
            break l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no other leader for 'rot'\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("node {new_leader} leads 'rot' now");
    publish_confirmed(cluster.node(leader), "rot", 1000..1001).await;
    let (_c, ch) = channel(cluster.node(leader)).await;
    let expected: std::collections::BTreeSet<String> = (0..400)
        .map(body)
        .chain(std::iter::once("1000".to_string()))
        .collect();
    assert_eq!(take_bodies(&ch, "rot", expected.len()).await, expected);
}

/// A passive declare through `node`: the queue's ready count, or the refusal's reply code.
async fn passive_declare(node: &Warren, name: &str) -> Result<u32, lapin::Error> {
    let (_c, ch) = channel(node).await;
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map(|q| q.message_count())
}

async fn passive_count(node: &Warren, name: &str) -> Result<u32, Option<u16>> {
    passive_declare(node, name)
        .await
        .map_err(|e| reply_code(&e))
}

/// The reply text of a passive declare's refusal through `node` (`None` when it succeeds).
async fn passive_refusal(node: &Warren, name: &str) -> Option<String> {
    match passive_declare(node, name).await {
        Ok(_) => None,
        Err(e) => Some(match e.kind() {
            lapin::ErrorKind::ProtocolError(p) => format!("{} {}", p.get_id(), p.get_message()),
            other => format!("{other:?}"),
        }),
    }
}

/// Waits (bounded) until a passive declare through `node` is refused with a text containing
/// `expected`.
async fn await_refusal(cluster: &Cluster, id: usize, name: &str, expected: &str) {
    poll_passive(cluster, id, name, expected, |node, name| async move {
        let got = passive_refusal(node, name).await;
        (got.as_deref().is_some_and(|t| t.contains(expected)), got)
    })
    .await;
}

/// Waits (bounded) until a passive declare through `node` answers `expected`.
async fn await_passive(
    cluster: &Cluster,
    id: usize,
    name: &str,
    expected: Result<u32, Option<u16>>,
) {
    poll_passive(cluster, id, name, &expected, |node, name| async move {
        let got = passive_count(node, name).await;
        (got == expected, got)
    })
    .await;
}

/// Polls `probe` through node `id` for 20 s at most, until it says it got what was `expected`.
async fn poll_passive<'a, F, T>(
    cluster: &'a Cluster,
    id: usize,
    name: &'a str,
    expected: impl std::fmt::Debug,
    probe: impl Fn(&'a Warren, &'a str) -> F,
) where
    F: std::future::Future<Output = (bool, T)>,
    T: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (done, got) = probe(cluster.node(id), name).await;
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue '{name}' through node {id}: {got:?}, expected {expected:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Declares a durable classic queue through `node`.
async fn declare_classic(node: &Warren, name: &str) {
    let (_c, ch) = channel(node).await;
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare a classic queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classic_queues_are_the_clusters_served_by_their_home_node_from_any_node() {
    let mut cluster = Cluster::start(3);

    // Declared on node 1 (its home), seen everywhere; an inequivalent redeclaration on another
    // node is refused as on the home node.
    declare_classic(cluster.node(1), "ledger").await;
    for id in [2, 3] {
        assert_eq!(
            passive_count(cluster.node(id), "ledger").await,
            Ok(0),
            "node {id}"
        );
    }
    {
        let (_c, ch) = channel(cluster.node(3)).await;
        let refused = ch
            .queue_declare(
                "ledger".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("inequivalent 'durable'");
        assert_eq!(reply_code(&refused), Some(406));
    }

    // Bound on node 2 to an exchange declared on node 3, filled through node 3.
    {
        let (_c, ch) = channel(cluster.node(3)).await;
        ch.exchange_declare(
            "books".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        let (_c2, ch2) = channel(cluster.node(2)).await;
        ch2.queue_bind(
            "ledger".into(),
            "books".into(),
            "entry".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind on node 2");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let mut confirms = Vec::new();
        for i in 0..100u32 {
            confirms.push(
                ch.basic_publish(
                    "books".into(),
                    "entry".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &i.to_be_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish"),
            );
        }
        for (i, c) in confirms.into_iter().enumerate() {
            let confirm = c.await.expect("confirm");
            assert!(confirm.is_ack(), "message {i} acked");
            assert!(confirm.take_message().is_none(), "message {i} routed");
        }
    }
    assert_eq!(passive_count(cluster.node(1), "ledger").await, Ok(100));
    assert_eq!(passive_count(cluster.node(2), "ledger").await, Ok(100));

    // Consumed on node 2: half taken and acked.
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        ch.basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                "ledger".into(),
                "reader".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume through node 2");
        for expected in 0..50u32 {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a delivery in time")
                .expect("a delivery")
                .expect("no error");
            assert_eq!(d.data, expected.to_be_bytes(), "in order");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        ch.basic_cancel("reader".into(), BasicCancelOptions::default())
            .await
            .expect("cancel");
        ch.close(200, "bye".into()).await.expect("close");
    }
    await_passive(&cluster, 3, "ledger", Ok(50)).await;

    // Request and reply across nodes: an exclusive reply queue on node 1, answered through
    // node 3; no other connection may use it; it goes with its connection.
    {
        let (c1, ch1) = channel(cluster.node(1)).await;
        let reply_to = ch1
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("reply queue")
            .name()
            .to_string();
        let mut replies = ch1
            .basic_consume(
                reply_to.as_str().into(),
                "replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume replies");
        let (_c3, ch3) = channel(cluster.node(3)).await;
        ch3.basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            b"the answer",
            BasicProperties::default(),
        )
        .await
        .expect("reply through node 3");
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("the reply in time")
            .expect("a reply")
            .expect("no error");
        assert_eq!(reply.data, b"the answer");
        for (what, refused) in [
            (
                "declare",
                ch3.queue_declare(
                    reply_to.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(drop),
            ),
            (
                "consume",
                channel(cluster.node(2))
                    .await
                    .1
                    .basic_consume(
                        reply_to.as_str().into(),
                        "intruder".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(drop),
            ),
        ] {
            let e = refused.expect_err("another connection's exclusive queue");
            assert_eq!(reply_code(&e), Some(405), "{what}");
        }
        c1.close(200, "bye".into()).await.expect("close");
        for id in [1, 2, 3] {
            await_passive(&cluster, id, &reply_to, Err(Some(404))).await;
        }
    }

    // A full restart: the queue, its messages and its binding are intact on every node.
    cluster.restart_all();
    for id in [1, 2, 3] {
        await_passive(&cluster, id, "ledger", Ok(50)).await;
    }
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirm = publish_awaited(
            &ch,
            "books".into(),
            "entry".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"after the restart",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        assert!(confirm.is_ack() && confirm.take_message().is_none());
    }
    await_passive(&cluster, 1, "ledger", Ok(51)).await;

    // Deleted through node 3: gone everywhere, and stays gone after its home restarts.
    {
        let (_c, ch) = channel(cluster.node(3)).await;
        let deleted = ch
            .queue_delete("ledger".into(), QueueDeleteOptions::default())
            .await
            .expect("delete through node 3");
        assert_eq!(deleted, 51);
    }
    for id in [1, 2, 3] {
        await_passive(&cluster, id, "ledger", Err(Some(404))).await;
    }
    cluster.node_mut(1).restart();
    await_passive(&cluster, 1, "ledger", Err(Some(404))).await;

    // Its home node down: a publish through another node is nacked rather than held, and a
    // consume is refused with 404.
    declare_classic(cluster.node(1), "stranded").await;
    await_passive(&cluster, 2, "stranded", Ok(0)).await;
    {
        let (_c, ch) = channel(cluster.node(1)).await;
        ch.queue_declare(
            "fleeting".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("a transient classic queue");
    }
    await_passive(&cluster, 3, "fleeting", Ok(0)).await;
    cluster.node_mut(1).kill();
    // As RabbitMQ: a passive declare of a queue whose home node is down is refused with 404.
    let refusal = passive_refusal(cluster.node(2), "fleeting").await;
    assert!(
        refusal
            .as_deref()
            .is_some_and(|t| t.starts_with("404") && t.contains("home node 1")),
        "{refusal:?}"
    );
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirm = tokio::time::timeout(
            Duration::from_secs(20),
            ch.basic_publish(
                "".into(),
                "stranded".into(),
                BasicPublishOptions::default(),
                b"nowhere to go",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish"),
        )
        .await
        .expect("answered, not held")
        .expect("confirm");
        assert!(confirm.is_nack(), "nacked while the home node is down");
        let refused = ch
            .basic_consume(
                "stranded".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("consume while the home node is down");
        assert_eq!(reply_code(&refused), Some(404));
    }
    // The transient queue died with its home node: once the metadata leader has not heard from
    // node 1 for `node_down_after_ms` (3 s here), it is deleted cluster-wide, while the durable
    // one waits for its home.
    for id in [2, 3] {
        await_refusal(&cluster, id, "fleeting", "404 NOT_FOUND - no queue").await;
    }
    let refusal = passive_refusal(cluster.node(3), "stranded").await;
    assert!(
        refusal
            .as_deref()
            .is_some_and(|t| t.contains("home node 1")),
        "{refusal:?}"
    );
    // Deleted while its home is down: the home node deletes its copy when it returns.
    {
        let (_c, ch) = channel(cluster.node(3)).await;
        ch.queue_delete("stranded".into(), QueueDeleteOptions::default())
            .await
            .expect("delete while the home node is down");
    }
    await_refusal(&cluster, 2, "stranded", "404 NOT_FOUND - no queue").await;
    cluster.node_mut(1).start_again();
    for id in [1, 2, 3] {
        await_passive(&cluster, id, "stranded", Err(Some(404))).await;
        await_passive(&cluster, id, "fleeting", Err(Some(404))).await;
    }
    // And the names are free again: declared on node 2 this time, homed there.
    declare_classic(cluster.node(2), "stranded").await;
    await_passive(&cluster, 1, "stranded", Ok(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_home_node_back_from_far_behind_drops_the_classic_queues_deleted_meanwhile() {
    // Small snapshots: the metadata log the home node missed is purged, and it catches up from
    // a snapshot rather than from the deletion's entry.
    let mut cluster = Cluster::start_with_raft_settings(3, "snapshot_entries = 64\n");
    declare_classic(cluster.node(1), "gone").await;
    {
        let (_c, ch) = channel(cluster.node(1)).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirm = publish_awaited(
            &ch,
            "".into(),
            "gone".into(),
            BasicPublishOptions::default(),
            b"kept on node 1's disk",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        assert!(confirm.is_ack());
    }
    await_passive(&cluster, 2, "gone", Ok(1)).await;
    cluster.node_mut(1).kill();
    {
        let (_c, ch) = channel(cluster.node(2)).await;
        ch.queue_delete("gone".into(), QueueDeleteOptions::default())
            .await
            .expect("delete while the home node is down");
        for i in 0..150 {
            let name = format!("churn-{i}");
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
            ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .expect("delete");
        }
    }
    // A new queue of the name, homed on node 3.
    declare_classic(cluster.node(3), "gone").await;
    cluster.node_mut(1).start_again();
    await_passive(&cluster, 1, "gone", Ok(0)).await;
    {
        let (_c, ch) = channel(cluster.node(1)).await;
        let got = ch
            .basic_get("gone".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get through node 1");
        assert!(
            got.is_none(),
            "node 1 serves node 3's empty queue, not its own old copy"
        );
    }
    assert!(
        cluster
            .node(1)
            .log()
            .contains("installing a snapshot from the leader"),
        "node 1 caught up from a snapshot:\n{}",
        cluster.node(1).log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binding_confirmed_through_one_node_routes_at_once_through_the_others() {
    // RabbitMQ's definitions are replicated synchronously: once `bind-ok` is sent, a publish
    // through any node follows the binding. Each round binds through node 2 and publishes
    // through node 3 (then node 1) the moment the bind is confirmed.
    let cluster = Cluster::start(3);
    declare_classic(cluster.node(1), "rounds").await;
    let (_c2, binder) = channel(cluster.node(2)).await;
    binder
        .exchange_declare(
            "dispatch".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let mut publishers = Vec::new();
    for id in [3, 1] {
        let (c, ch) = channel(cluster.node(id)).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        publishers.push((id, c, ch));
    }
    for round in 0..40 {
        let key = format!("round-{round}");
        binder
            .queue_bind(
                "rounds".into(),
                "dispatch".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let (id, _, ch) = &publishers[round % 2];
        let confirm = publish_awaited(
            ch,
            "dispatch".into(),
            key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"follows the binding",
            BasicProperties::default(),
        )
        .await;
        assert!(
            confirm.take_message().is_none(),
            "round {round}: returned unroutable through node {id} right after bind-ok"
        );
    }
    assert_eq!(passive_count(cluster.node(1), "rounds").await, Ok(40));
}
