//! `warren-tests`: end-to-end tests against real `warren` processes with real AMQP clients.
//!
//! [`Warren`] starts the release `warren` binary (building it first if needed) on a free
//! loopback port with its own data directory, and can SIGKILL, SIGTERM and restart it on the
//! same directory. Suites live in `tests/tests/`: `lapin_*.rs` and `amqprs_*.rs` (Rust clients),
//! `crash.rs` (SIGKILL during confirmed publishing), `python.rs` (runs the pika suite and the
//! pattern examples in `examples/`), `admin*.rs` (the admin plane over gRPC and `warrenctl`,
//! with the client and helpers in [`admin`]).
//!
//! The storage engine's own crash tests (a child process SIGKILLed mid-append) live beside the
//! engine in `storage/tests/`.

pub mod admin;
pub mod cluster;
pub mod oracle;
pub mod proxy;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The workspace root (this crate is one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `warren` binary, built once per test process (a no-op when up to date), with
/// `warrenctl` beside it.
pub fn warren_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // A soak run may test binaries built once, while the tree changes under it.
        if let Some(dir) = std::env::var_os("WARREN_BIN_DIR") {
            let path = PathBuf::from(dir).join("warren");
            assert!(path.exists(), "{} missing (WARREN_BIN_DIR)", path.display());
            return path;
        }
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--bin",
                "warren",
                "--bin",
                "warrenctl",
                "--quiet",
            ])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building warren failed: {status}");
        let path = release_dir().join("warren");
        assert!(path.exists(), "{} missing after build", path.display());
        path
    })
}

/// Path of the `warrenctl` binary (built with `warren`).
pub fn warrenctl_binary() -> PathBuf {
    warren_binary().with_file_name("warrenctl")
}

fn release_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
        .join("release")
}

/// A running `warren` process.
#[derive(Debug)]
pub struct Warren {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin plane (gRPC) and `/metrics` (HTTP) addresses, unless started with `--no-admin`.
    pub admin_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    /// Keep `addr` across restarts.
    fixed_port: bool,
    _temp: Option<tempfile::TempDir>,
}

impl Warren {
    /// Starts a broker on a fresh data directory.
    pub fn start() -> Warren {
        Warren::start_with(&[])
    }

    /// Starts a broker on a fresh data directory with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Warren {
        let temp = tempfile::Builder::new()
            .prefix("warren-test-")
            .tempdir()
            .expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut warren = Warren {
            child: None,
            addr: "127.0.0.1:0".parse().expect("address"),
            admin_addr: None,
            metrics_addr: None,
            data_dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            fixed_port: false,
            _temp: Some(temp),
        };
        warren.spawn();
        warren
    }

    fn spawn(&mut self) {
        let launched = self.launch();
        self.await_ready(launched);
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir
            .parent()
            .expect("data dir has a parent")
            .join("warren.log")
    }

    /// Starts the process; [`Warren::await_ready`] reads its ready lines. Split so that the
    /// nodes of a cluster (each waits for a majority before it is ready) start together.
    fn launch(&mut self) -> Child {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        Command::new(warren_binary())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.listen_at())
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("WARREN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning warren")
    }

    /// Reads the ready lines: `listening on`, then `cluster node N listening on` (clustered),
    /// `admin listening on` and `metrics listening on` (unless `--no-admin`).
    fn await_ready(&mut self, mut child: Child) {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        let Some(addr) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "warren did not start (stdout {first:?}); log:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        };
        self.addr = addr.parse().expect("address in the ready line");
        if !self.extra_args.iter().any(|a| a == "--no-admin") {
            loop {
                let mut more = String::new();
                reader
                    .read_line(&mut more)
                    .expect("reading warren's stdout");
                let more = more.trim();
                if let Some(a) = more.strip_prefix("admin listening on ") {
                    self.admin_addr = Some(a.parse().expect("admin address"));
                } else if let Some(a) = more.strip_prefix("metrics listening on ") {
                    self.metrics_addr = Some(a.parse().expect("metrics address"));
                    break;
                } else if more.is_empty() {
                    panic!("warren's ready lines ended early");
                }
            }
        }
        self.child = Some(child);
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// `http://127.0.0.1:PORT` of the admin plane.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr.expect("admin plane enabled"))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown, no final sync.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        wait_timeout(&mut child, Duration::from_secs(30))
    }

    /// Starts the broker again on the same data directory (a new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the broker after it was killed or terminated.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// The AMQP address to listen on: fixed for a cluster node (clients reconnect to it after
    /// a restart), any free port otherwise.
    fn listen_at(&self) -> String {
        if self.fixed_port {
            self.addr.to_string()
        } else {
            "127.0.0.1:0".into()
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        self.kill();
    }
}
