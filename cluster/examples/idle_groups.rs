//! What idle raft groups cost: three members in this process (each with its own write-ahead
//! log and RPC server on loopback) run N groups with no traffic for a while, and the process's
//! CPU time is reported per node and per group.
//!
//! `cargo run --release -p warren-cluster --example idle_groups -- 500 500 10`
//! (groups, heartbeat interval in ms, seconds measured).

use openraft::{BasicNode, Config, Raft};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_cluster::log_store::WalLogStore;
use warren_cluster::network::{GroupNetwork, Groups, Peers, RaftService};
use warren_cluster::state_machine::{GroupStateMachine, ReplicatedState};
use warren_cluster::types::{GroupId, TypeConfig};
use warren_storage::{Wal, WalConfig};

/// A group with no state: idle groups apply nothing but membership.
#[derive(Debug, Default)]
struct Nothing;

impl ReplicatedState for Nothing {
    async fn apply(&mut self, _index: u64, _command: &bytes::Bytes) -> Vec<u8> {
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    async fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// User plus system CPU seconds of this process, from `/proc/self/stat` (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

struct Node {
    addr: String,
    wal: Arc<Wal>,
    groups: Groups,
    peers: Peers,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path().join("wal"));
    config.segment_bytes_max = 16 * 1024 * 1024;
    config.record_bytes_max = 1024 * 1024;
    config.prepare_segments = false;
    let wal = Arc::new(Wal::open_dir(config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let groups = Groups::default();
    let service = RaftService::new(groups.clone());
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    Node {
        addr,
        wal,
        groups,
        peers: Peers::default(),
        _dir: dir,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: groups heartbeat_ms seconds"))
        .collect();
    let groups = args.first().copied().unwrap_or(500);
    let heartbeat_ms = args.get(1).copied().unwrap_or(500);
    let seconds = args.get(2).copied().unwrap_or(10);
    let config = Arc::new(
        Config {
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: heartbeat_ms * 3,
            election_timeout_max: heartbeat_ms * 6,
            ..Config::default()
        }
        .validate()
        .unwrap(),
    );
    let nodes = [node().await, node().await, node().await];
    let members: BTreeMap<u64, BasicNode> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u64 + 1, BasicNode::new(&n.addr)))
        .collect();
    let mut rafts: Vec<Raft<TypeConfig>> = Vec::new();
    for g in 1..=groups {
        let group = GroupId(g);
        for (i, n) in nodes.iter().enumerate() {
            let log = WalLogStore::open(Arc::clone(&n.wal), group).unwrap();
            let sm = GroupStateMachine::open(Arc::clone(&n.wal), group, Nothing)
                .await
                .unwrap();
            let network = GroupNetwork::new(group, n.peers.clone());
            let raft = Raft::new(i as u64 + 1, Arc::clone(&config), network, log, sm)
                .await
                .unwrap();
            n.groups.insert(group, raft.clone());
            if i == 0 {
                raft.initialize(members.clone()).await.unwrap();
            }
            rafts.push(raft);
        }
    }
    for raft in rafts.iter().step_by(3) {
        raft.wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.current_leader.is_some(), "leader")
            .await
            .unwrap();
    }
    // Let elections and the first replication settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let per_node = cpu / wall / 3.0;
    println!(
        "{groups} idle groups × 3 members, heartbeat {heartbeat_ms} ms: {:.1}% of a core per node ({:.2} ms CPU per group per second)",
        per_node * 100.0,
        cpu / wall / groups as f64 * 1000.0
    );
    for raft in rafts {
        let _ = raft.shutdown().await;
    }
}
