//! `warren`: the broker server.

mod local_cluster;

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use warren_broker::broker::Broker;
use warren_broker::config::Config;

/// Warren: an AMQP 0-9-1 message broker that confirms only what is on disk.
///
/// Settings come from the TOML file given with --config (every key has a default), then from
/// the flags and environment variables below, which win.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (log, index, definitions). Default: ./data
    #[arg(long, env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// AMQP listen address. Default: 0.0.0.0:5672
    #[arg(long, env = "WARREN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    #[arg(long, env = "WARREN_HEARTBEAT_S")]
    heartbeat_s: Option<u16>,
    /// Largest accepted message body, in octets.
    #[arg(long, env = "WARREN_MESSAGE_BYTES_MAX")]
    message_bytes_max: Option<u64>,
    /// Publishers are blocked while the data directory has less free space than this, in octets.
    #[arg(long, env = "WARREN_DISK_FREE_BYTES_MIN")]
    disk_free_bytes_min: Option<u64>,
    /// This node's name. Default: warren@<hostname>
    #[arg(long, env = "WARREN_NODE_NAME")]
    node_name: Option<String>,
    /// Admin plane (gRPC) listen address. Default: 127.0.0.1:15680
    #[arg(long, env = "WARREN_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Prometheus /metrics (HTTP) listen address. Default: 127.0.0.1:15690
    #[arg(long, env = "WARREN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// A bearer token the admin plane accepts instead of an administrator's credentials.
    #[arg(long, env = "WARREN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Threads serving connections and queues. Default: one fewer than the cores available.
    #[arg(long, env = "WARREN_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Run without the admin plane and metrics.
    #[arg(long)]
    no_admin: bool,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Runs a cluster of nodes on this machine (AMQP on 5672, 5673, 5674 by default), each a
    /// `warren` process with its own data directory; stops them on Ctrl-C.
    ///
    /// Example: warren local-cluster --dir cluster-data
    LocalCluster(local_cluster::LocalCluster),
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(listen) = args.listen {
        config.amqp.listen = listen;
    }
    if let Some(threads) = args.worker_threads {
        config.worker_threads = threads;
    }
    if let Some(heartbeat) = args.heartbeat_s {
        config.amqp.heartbeat_s = heartbeat;
    }
    if let Some(max) = args.message_bytes_max {
        config.limits.message_bytes_max = max;
    }
    if let Some(min) = args.disk_free_bytes_min {
        config.limits.disk_free_bytes_min = min;
    }
    if let Some(name) = &args.node_name {
        config.node_name = name.clone();
    }
    if let Some(listen) = args.admin_listen {
        config.admin.listen = listen;
    }
    if let Some(listen) = args.metrics_listen {
        config.admin.metrics_listen = listen;
    }
    if let Some(token) = &args.admin_token {
        config.admin.token = Some(token.clone());
    }
    if args.no_admin {
        config.admin.enabled = false;
    }
    config.validate()?;
    Ok(config)
}

pub(crate) async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Subcommand::LocalCluster(cluster)) = args.command {
        return local_cluster::run(cluster);
    }
    let config = load_config(&args)?;
    match warren_broker::server::raise_open_files_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(?before, ?after, "raised the open files limit");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
    let worker_threads = config.runtime_worker_threads();
    tracing::info!(worker_threads, "starting the runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .thread_name("warren")
        .build()?;
    runtime.block_on(async move {
        let listen = config.amqp.listen;
        let broker = Broker::start(config).await?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let mut ready = format!("listening on {local}\n");
        if let Some(node) = broker.cluster_node() {
            ready.push_str(&format!(
                "cluster node {} listening on {}\n",
                node.id(),
                node.config().own_address()
            ));
        }
        if broker.config.admin.enabled {
            let admin = tokio::net::TcpListener::bind(broker.config.admin.listen).await?;
            let metrics = tokio::net::TcpListener::bind(broker.config.admin.metrics_listen).await?;
            let (admin_at, metrics_at) = (admin.local_addr()?, metrics.local_addr()?);
            tracing::info!(%admin_at, %metrics_at, "admin plane and metrics listening");
            ready.push_str(&format!(
                "admin listening on {admin_at}\nmetrics listening on {metrics_at}\n"
            ));
            let b = Arc::clone(&broker);
            let amqp = local.to_string();
            tokio::spawn(async move {
                if let Err(error) =
                    warren_broker::admin::serve(b, admin, amqp, std::future::pending()).await
                {
                    tracing::error!(%error, "admin plane stopped");
                }
            });
            let b = Arc::clone(&broker);
            tokio::spawn(async move {
                if let Err(error) =
                    warren_broker::metrics::serve(b, metrics, std::future::pending()).await
                {
                    tracing::error!(%error, "metrics endpoint stopped");
                }
            });
        }
        tracing::info!(%local, data_dir = %broker.config.data_dir.display(), "warren ready");
        // Tests and scripts read these lines to learn the ports (useful with port 0). They are
        // written at once: nothing is printed later, so a reader may close the pipe.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(ready.as_bytes())?;
            out.flush()?;
        }
        warren_broker::server::run(broker, listener, shutdown_signal()).await
    })
}
