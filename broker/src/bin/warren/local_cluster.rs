//! `warren local-cluster`: a cluster of N nodes on this machine, one command.
//!
//! Node `i` (1-based) gets AMQP on `base + i - 1` and ports derived from it (admin
//! `+10008`, metrics `+10018`, raft `+20000`: 5672 → 15680, 15690, 25672 as in the single-node
//! defaults), its data under `DIR/node-i`, its configuration written to `DIR/node-i/warren.toml`
//! (the same file format a multi-machine cluster uses) and its log in `DIR/node-i/warren.log`.
//! Ctrl-C or SIGTERM stops every node cleanly; running the command again restarts them with
//! their data.

use clap::Args as ClapArgs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use warren_broker::config::Config;
use warren_cluster::node::ClusterConfig;

#[derive(Debug, ClapArgs)]
pub struct LocalCluster {
    /// Where the nodes keep their data, configuration and logs.
    #[arg(long, default_value = "cluster-data")]
    dir: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// AMQP port of node 1; node i listens on base + i - 1.
    #[arg(long, default_value_t = 5672)]
    base_port: u16,
    /// Address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

/// The ports of node `i` (1-based).
fn ports(base: u16, i: u16) -> Option<[u16; 4]> {
    let amqp = base.checked_add(i - 1)?;
    Some([
        amqp,
        amqp.checked_add(10_008)?,
        amqp.checked_add(10_018)?,
        amqp.checked_add(20_000)?,
    ])
}

fn node_config(args: &LocalCluster, i: u16, members: &ClusterConfig) -> anyhow::Result<Config> {
    let [amqp, admin, metrics, _] = ports(args.base_port, i)
        .ok_or_else(|| anyhow::anyhow!("--base-port {} leaves no room", args.base_port))?;
    let mut config = Config {
        node_name: format!("warren-{i}@{}", args.host),
        data_dir: std::path::absolute(args.dir.join(format!("node-{i}")))?,
        ..Config::default()
    };
    config.amqp.listen = format!("{}:{amqp}", args.host).parse()?;
    config.admin.listen = format!("{}:{admin}", args.host).parse()?;
    config.admin.metrics_listen = format!("{}:{metrics}", args.host).parse()?;
    config.cluster = Some(ClusterConfig {
        node_id: u64::from(i),
        ..members.clone()
    });
    Ok(config)
}

fn spawn(config_path: &Path, log_path: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    Ok(Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(config_path)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?)
}

fn terminate(children: &mut [(u16, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for (i, child) in children.iter_mut() {
        match child.wait() {
            Ok(status) => println!("node {i} stopped ({status})"),
            Err(e) => eprintln!("node {i}: {e}"),
        }
    }
}

pub fn run(args: LocalCluster) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let mut members = ClusterConfig::default();
    for i in 1..=args.nodes {
        let raft = ports(args.base_port, i)
            .ok_or_else(|| anyhow::anyhow!("--base-port {} leaves no room", args.base_port))?[3];
        members
            .members
            .insert(u64::from(i), format!("{}:{raft}", args.host));
    }
    let mut children: Vec<(u16, Child)> = Vec::new();
    let mut outputs = Vec::new();
    for i in 1..=args.nodes {
        let config = node_config(&args, i, &members)?;
        std::fs::create_dir_all(&config.data_dir)?;
        let config_path = config.data_dir.join("warren.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let log_path = config.data_dir.join("warren.log");
        let mut child = match spawn(&config_path, &log_path) {
            Ok(child) => child,
            Err(e) => {
                terminate(&mut children);
                return Err(e.context(format!("starting node {i}")));
            }
        };
        outputs.push((i, child.stdout.take().expect("piped"), log_path));
        children.push((i, child));
    }
    // Every node waits for a majority before it reports ready, so they start together.
    for (i, stdout, log_path) in outputs {
        let mut lines = BufReader::new(stdout).lines();
        let mut ready = Vec::new();
        // The last ready line is the metrics endpoint's.
        while !ready
            .last()
            .is_some_and(|l: &String| l.starts_with("metrics listening"))
        {
            match lines.next() {
                Some(Ok(line)) => ready.push(line),
                _ => {
                    terminate(&mut children);
                    anyhow::bail!("node {i} did not start: see {}", log_path.display());
                }
            }
        }
        println!(
            "node {i}: {}  (log: {})",
            ready.join(", "),
            log_path.display()
        );
    }
    println!(
        "cluster of {} nodes ready under {}; Ctrl-C stops it",
        args.nodes,
        args.dir.display()
    );
    std::io::stdout().flush()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::shutdown_signal());
    terminate(&mut children);
    Ok(())
}
