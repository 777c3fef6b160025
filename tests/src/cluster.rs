//! A cluster of real `warren` processes on loopback, for the cluster tests.
//!
//! Each node has its own data directory and a configuration file holding its `[cluster]`
//! section (raft addresses on free ports fixed for the cluster's life); AMQP and admin ports
//! are chosen anew at each start, as for a single [`Warren`]. Nodes start together, because
//! each waits for a majority before it reports ready.

use crate::Warren;
use std::net::TcpListener;
use std::path::Path;

/// Raft timings short enough for tests (a leader is elected within about a second; a node
/// unheard for 3 s is down).
const TIMINGS: &str = "heartbeat_ms = 100\nelection_timeout_min_ms = 500\n\
    election_timeout_max_ms = 1000\nnode_down_after_ms = 3000\n";

#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Warren>,
    /// `(from, to)` → the proxy node `from` dials to reach node `to` (partitionable clusters).
    links: std::collections::BTreeMap<(usize, usize), crate::proxy::Proxy>,
    /// Each node's raft port.
    raft_ports: Vec<u16>,
    /// Nodes launched to join, not ready yet.
    joining: std::collections::BTreeMap<usize, std::process::Child>,
    _temp: tempfile::TempDir,
    /// Clusters of one test process run one at a time (three nodes each on two cores).
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `n` loopback ports free right now (held together so they differ, then released).
///
/// They are taken below Linux's ephemeral range (32768 and up): a node keeps its ports across
/// restarts, and while it is down an ephemeral port would be free for the kernel to hand to
/// any outgoing connection as its source port, and the node could not listen again.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    let mut next_port = move || {
        // xorshift64: spread enough, and no dependency for it.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        10_000 + (seed % 22_000) as u16
    };
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if listeners.len() == n {
            break;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", next_port())) {
            listeners.push(l);
        }
    }
    assert_eq!(listeners.len(), n, "free loopback ports below 32000");
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Node `id`'s configuration: `members[j]` is the port it dials to reach node `j` (its own
/// is the port it listens on).
fn write_config(path: &Path, id: usize, members: &[u16], join: bool, raft: &str) {
    let mut text = format!("node_name = \"warren-{id}@localhost\"\n\n[cluster]\nnode_id = {id}\njoin = {join}\n{TIMINGS}{raft}\n[cluster.members]\n");
    for (i, port) in members.iter().enumerate() {
        text.push_str(&format!("{} = \"127.0.0.1:{port}\"\n", i + 1));
    }
    std::fs::write(path, text).expect("writing a node's configuration");
}

/// A node whose directory `dir` holds its configuration (`warren.toml`) and data, serving AMQP
/// on `amqp_port`.
fn node_in(dir: &Path, amqp_port: u16) -> Warren {
    Warren {
        child: None,
        addr: format!("127.0.0.1:{amqp_port}").parse().expect("address"),
        admin_addr: None,
        metrics_addr: None,
        data_dir: dir.join("data"),
        extra_args: vec![
            "--config".into(),
            dir.join("warren.toml").display().to_string(),
        ],
        fixed_port: true,
        _temp: None,
    }
}

impl Cluster {
    /// Starts `n` nodes on fresh data directories and waits until every one is ready.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, false, "", "")
    }

    /// Starts `n` nodes whose configuration files end with `extra` (TOML sections).
    pub fn start_configured(n: usize, extra: &str) -> Cluster {
        Cluster::start_with(n, false, "", extra)
    }

    /// Starts `n` nodes with `raft` (lines such as `snapshot_entries = 64`) in their
    /// configuration's `[cluster]` section.
    pub fn start_with_raft_settings(n: usize, raft: &str) -> Cluster {
        Cluster::start_with(n, false, raft, "")
    }

    /// Starts `n` nodes whose raft traffic passes through a proxy per ordered pair of nodes,
    /// so that [`Cluster::isolate`] can cut a node off.
    pub fn start_partitionable(n: usize) -> Cluster {
        Cluster::start_with(n, true, "", "")
    }

    fn start_with(n: usize, partitionable: bool, raft: &str, extra: &str) -> Cluster {
        let temp = tempfile::Builder::new()
            .prefix("warren-cluster-")
            .tempdir()
            .expect("temp dir");
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let ports = free_ports(2 * n);
        let (raft_ports, amqp_ports) = ports.split_at(n);
        let mut links = std::collections::BTreeMap::new();
        if partitionable {
            for from in 1..=n {
                for to in 1..=n {
                    if from != to {
                        let target = format!("127.0.0.1:{}", raft_ports[to - 1]);
                        let proxy = crate::proxy::start(target.parse().expect("address"));
                        links.insert((from, to), proxy);
                    }
                }
            }
        }
        let mut nodes = Vec::new();
        for id in 1..=n {
            let dir = temp.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let config = dir.join("warren.toml");
            let members: Vec<u16> = (1..=n)
                .map(|to| match links.get(&(id, to)) {
                    Some(proxy) => proxy.port,
                    None => raft_ports[to - 1],
                })
                .collect();
            write_config(&config, id, &members, false, raft);
            if !extra.is_empty() {
                let mut text = std::fs::read_to_string(&config).expect("configuration");
                text.push_str(extra);
                std::fs::write(&config, text).expect("writing a node's configuration");
            }
            nodes.push(node_in(&dir, amqp_ports[id - 1]));
        }
        let mut cluster = Cluster {
            nodes,
            links,
            raft_ports: raft_ports.to_vec(),
            joining: Default::default(),
            _temp: temp,
            _serial: serial,
        };
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

    /// Launches a new node (the next id) configured to join the cluster (`cluster.join`,
    /// every member's address and its own). It becomes ready once a member adds it: returns
    /// its id and raft address; [`Cluster::await_joined`] waits for it.
    pub fn launch_joining(&mut self) -> (usize, String) {
        assert!(self.links.is_empty(), "joining a partitionable cluster");
        let id = self.nodes.len() + 1;
        let ports = free_ports(2);
        self.raft_ports.push(ports[0]);
        let dir = self._temp.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        write_config(&dir.join("warren.toml"), id, &self.raft_ports, true, "");
        let mut node = node_in(&dir, ports[1]);
        let child = node.launch();
        self.nodes.push(node);
        self.joining.insert(id, child);
        (id, format!("127.0.0.1:{}", ports[0]))
    }

    /// Waits for a node launched by [`Cluster::launch_joining`] to be ready.
    pub fn await_joined(&mut self, id: usize) {
        let child = self.joining.remove(&id).expect("a joining node");
        self.nodes[id - 1].await_ready(child);
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

    /// Cuts node `id` off from the others (both directions; AMQP is untouched).
    pub fn isolate(&self, id: usize) {
        assert!(!self.links.is_empty(), "started without proxies");
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                proxy.cut();
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
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
