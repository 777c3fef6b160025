//! The listener, the disk-space watcher, and shutdown.

use crate::broker::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often free disk space is checked.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for clients to finish the close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` resolves, then closes every connection with
/// 320 CONNECTION_FORCED and syncs the log.
pub async fn run(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::spawn(watch_disk(Arc::clone(&broker)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tokio::spawn(crate::connection::serve(Arc::clone(&broker), socket, peer));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(connections = broker.connection_count(), "shutting down");
    broker.close_all_connections("broker forced connection closure with reason 'shutdown'");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while broker.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wal = Arc::clone(&broker.wal);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        wal.sync()?;
        wal.checkpoint()?;
        wal.seal()?;
        Ok(())
    })
    .await??;
    tracing::info!("log synced; stopped");
    Ok(())
}

async fn watch_disk(broker: Arc<Broker>) {
    let limit = broker.config.limits.disk_free_bytes_min;
    let dir = broker.config.data_dir.clone();
    let mut ticker = tokio::time::interval(DISK_CHECK_EVERY);
    loop {
        ticker.tick().await;
        match rustix::fs::statvfs(&dir) {
            Ok(stat) => {
                let free = stat.f_bavail.saturating_mul(stat.f_frsize);
                broker.set_disk_blocked(free < limit);
            }
            Err(error) => tracing::warn!(%error, "cannot read free disk space"),
        }
    }
}
