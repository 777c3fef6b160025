//! Three raft members of one group, each on its own write-ahead log, talking over the tonic
//! network on loopback: a leader is elected, writes are committed on a majority and applied on
//! every member; with the leader gone the other two elect a new one and keep committing, and
//! nothing committed is lost.

mod common;

use common::{open_wal, Kv};
use openraft::{BasicNode, Config, Raft};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use warren_cluster::log_store::WalLogStore;
use warren_cluster::network::{GroupNetwork, Groups, Peers, RaftService};
use warren_cluster::state_machine::GroupStateMachine;
use warren_cluster::types::{Command, GroupId, NodeId, TypeConfig};

struct Member {
    id: NodeId,
    addr: String,
    raft: Raft<TypeConfig>,
    kv: Kv,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

const GROUP: GroupId = GroupId(11);

async fn member(id: NodeId) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let groups = Groups::default();
    let raft_config = Arc::new(
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Config::default()
        }
        .validate()
        .unwrap(),
    );
    let kv = Kv::default();
    let log = WalLogStore::open(Arc::clone(&wal), GROUP).unwrap();
    let sm = GroupStateMachine::open(wal, GROUP, kv.clone())
        .await
        .unwrap();
    let network = GroupNetwork::new(GROUP, Peers::default());
    let raft = Raft::new(id, raft_config, network, log, sm).await.unwrap();
    groups.insert(GROUP, raft.clone());
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(RaftService::new(groups))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    Member {
        id,
        addr,
        raft,
        kv,
        server,
        _dir: dir,
    }
}

async fn leader_of(members: &[&Member]) -> NodeId {
    let raft = &members[0].raft;
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .expect("a leader is elected");
    raft.metrics().borrow().current_leader.unwrap()
}

async fn write(leader: &Member, key: &str, value: &str) -> u64 {
    let reply = leader
        .raft
        .client_write(Command(format!("{key}={value}").into_bytes().into()))
        .await
        .expect("committed");
    reply.log_id.index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_replicates_and_survives_losing_its_leader() {
    let members = vec![member(1).await, member(2).await, member(3).await];
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|m| (m.id, BasicNode::new(&m.addr)))
        .collect();
    members[0].raft.initialize(nodes).await.unwrap();
    let all: Vec<&Member> = members.iter().collect();
    let leader_id = leader_of(&all).await;
    let leader = members.iter().find(|m| m.id == leader_id).unwrap();

    // Phase 1: writes commit and reach every member.
    let mut last = 0;
    for i in 0..50 {
        last = write(leader, &format!("k{i}"), "one").await;
    }
    for m in &members {
        m.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "all applied")
            .await
            .unwrap();
        assert_eq!(m.kv.count(), 50, "member {}", m.id);
    }

    // Phase 2: the leader goes away (raft stopped, server gone); the others carry on.
    leader.raft.shutdown().await.unwrap();
    leader.server.abort();
    let survivors: Vec<&Member> = members.iter().filter(|m| m.id != leader_id).collect();
    let new_leader_id = {
        let raft = &survivors[0].raft;
        raft.wait(Some(Duration::from_secs(15)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != leader_id),
                "a new leader",
            )
            .await
            .expect("the survivors elect a new leader");
        raft.metrics().borrow().current_leader.unwrap()
    };
    let new_leader = survivors.iter().find(|m| m.id == new_leader_id).unwrap();
    for i in 50..80 {
        last = write(new_leader, &format!("k{i}"), "two").await;
    }
    for m in &survivors {
        m.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "all applied")
            .await
            .unwrap();
        assert_eq!(
            m.kv.count(),
            80,
            "every committed write is on member {}",
            m.id
        );
        assert_eq!(m.kv.get("k0").as_deref(), Some("one"));
        assert_eq!(m.kv.get("k79").as_deref(), Some("two"));
    }
    for m in survivors {
        m.raft.shutdown().await.unwrap();
    }
}
