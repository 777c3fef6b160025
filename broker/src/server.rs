//! The listener, the disk-space watcher, and shutdown.

use crate::broker::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often free disk space is checked.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for clients to finish the close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Raises the soft limit on open files to the hard limit (or, where that is unlimited, to the
/// kernel's `fs.nr_open`), as a server that holds a descriptor per connection and one or two per
/// log segment should: the usual soft limit of 1024 would refuse connections long before the
/// machine runs short. Never lowers it. Returns the soft limit before and after.
pub fn raise_open_files_limit() -> std::io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let ceiling = limit.maximum.or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
    });
    let raised = match (limit.current, ceiling) {
        (Some(current), Some(ceiling)) if current < ceiling => Some(ceiling),
        _ => return Ok((limit.current, limit.current)),
    };
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: raised,
            maximum: limit.maximum,
        },
    )?;
    Ok((limit.current, raised))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit_and_never_lowered() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        if let Some(hard) = hard {
            // Start below the hard limit (by one: other tests of this process keep their room).
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard - 1),
                    maximum: Some(hard),
                },
            )
            .unwrap();
        }
        let (before, after) = raise_open_files_limit().unwrap();
        let now = getrlimit(Resource::Nofile).current;
        assert_eq!(now, after);
        assert!(now >= before, "lowered from {before:?} to {now:?}");
        if let Some(hard) = hard {
            assert_eq!(now, Some(hard), "soft limit not raised to the hard limit");
        }
        // A second call finds nothing to raise.
        assert_eq!(raise_open_files_limit().unwrap(), (now, now));
    }
}
