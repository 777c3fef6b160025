//! A cluster of real `warren` processes on loopback, for the cluster tests.
//!
//! Each node has its own data directory and a configuration file holding its `[cluster]`
//! section (raft addresses on free ports fixed for the cluster's life); AMQP and admin ports
//! are chosen anew at each start, as for a single [`Warren`]. Nodes start together, because
//! each waits for a majority before it reports ready.

use crate::Warren;
use std::net::TcpListener;
use std::path::Path;

/// Raft timings short enough for tests (a leader is elected within about a second).
const TIMINGS: &str =
    "heartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n";

#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Warren>,
    _temp: tempfile::TempDir,
}

/// `n` loopback ports free right now (held together so they differ, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

fn write_config(path: &Path, id: usize, raft_ports: &[u16]) {
    let mut text = format!("node_name = \"warren-{id}@localhost\"\n\n[cluster]\nnode_id = {id}\n{TIMINGS}\n[cluster.members]\n");
    for (i, port) in raft_ports.iter().enumerate() {
        text.push_str(&format!("{} = \"127.0.0.1:{port}\"\n", i + 1));
    }
    std::fs::write(path, text).expect("writing a node's configuration");
}

impl Cluster {
    /// Starts `n` nodes on fresh data directories and waits until every one is ready.
    pub fn start(n: usize) -> Cluster {
        let temp = tempfile::Builder::new()
            .prefix("warren-cluster-")
            .tempdir()
            .expect("temp dir");
        let raft_ports = free_ports(n);
        let mut nodes = Vec::new();
        for id in 1..=n {
            let dir = temp.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let config = dir.join("warren.toml");
            write_config(&config, id, &raft_ports);
            nodes.push(Warren {
                child: None,
                addr: "127.0.0.1:0".parse().expect("address"),
                admin_addr: None,
                metrics_addr: None,
                data_dir: dir.join("data"),
                extra_args: vec!["--config".into(), config.display().to_string()],
                _temp: None,
            });
        }
        let mut cluster = Cluster { nodes, _temp: temp };
        cluster.start_nodes(&(1..=n).collect::<Vec<_>>());
        cluster
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: usize) -> &Warren {
        &self.nodes[id - 1]
    }

    pub fn node_mut(&mut self, id: usize) -> &mut Warren {
        &mut self.nodes[id - 1]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts the given stopped nodes together and waits until each is ready.
    pub fn start_nodes(&mut self, ids: &[usize]) {
        let launched: Vec<_> = ids
            .iter()
            .map(|id| (*id, self.nodes[id - 1].launch()))
            .collect();
        for (id, child) in launched {
            self.nodes[id - 1].await_ready(child);
        }
    }

    /// SIGTERM to every running node, then starts them all again on their data.
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if node.is_running() {
                let status = node.terminate();
                assert!(status.success(), "a node exited with {status}");
            }
        }
        let all: Vec<usize> = (1..=self.nodes.len()).collect();
        self.start_nodes(&all);
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("----- node {} -----\n{}", i + 1, n.log()))
            .collect()
    }
}
