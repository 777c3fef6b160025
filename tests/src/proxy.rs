//! A fault-injecting TCP proxy for network partitions between cluster nodes: one proxy per
//! ordered pair of nodes (what node `i` dials to reach node `j`), each of which can be cut —
//! its open connections dropped and new ones closed at once — and healed.
//!
//! Runs on its own thread and runtime, so it keeps forwarding whatever the test's runtime does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One direction of one link.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, ending the connections open at that moment.
    generation: watch::Sender<u64>,
}

impl Proxy {
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                tx.send(rt.handle().clone())
                    .expect("handing the runtime over");
                rt.block_on(std::future::pending::<()>());
            })
            .expect("proxy thread");
        rx.recv().expect("proxy runtime")
    })
}

/// Starts a proxy on a free loopback port forwarding to `target`.
pub fn start(target: SocketAddr) -> Proxy {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    std_listener.set_nonblocking(true).expect("non-blocking");
    let port = std_listener.local_addr().expect("bound").port();
    let cut = Arc::new(AtomicBool::new(false));
    let (generation, _) = watch::channel(0u64);
    let proxy = Proxy {
        port,
        cut: Arc::clone(&cut),
        generation: generation.clone(),
    };
    runtime().spawn(async move {
        let _guard = generation.clone();
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            if cut.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let mut ended = generation.subscribe();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut a, mut b) = (inbound, outbound);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    _ = ended.changed() => {}
                }
            });
        }
    });
    proxy
}
