//! `warren-compare`: runs the same `warren-perf` scenarios against Warren and RabbitMQ 3.10
//! (Debian's `rabbitmq-server`, installed with apt-get if missing) on this machine, alternating
//! brokers within each repetition, and writes the medians side by side with their ratio as
//! markdown, JSON and an SVG chart. Before the brokers start it measures the machine's floor
//! (see `warren_benches::floor`) on the same file system, and prints it under the table.
//!
//! ```sh
//! cargo run --release -p warren-benches --bin warren-compare -- --repetitions 3 --seconds 10
//! ```

use anyhow::Context;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use warren_benches::floor::{self, Floor};
use warren_benches::perf::{self, Options, Report};

#[derive(Parser, Debug)]
struct Args {
    /// Repetitions of every scenario on each broker (medians are reported).
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Seconds each timed scenario runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Where the table, the JSON and the chart go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

struct Scenario {
    name: &'static str,
    tweak: fn(&mut Options),
    /// Run against three-node clusters (Warren's `local-cluster`, three RabbitMQ nodes
    /// clustered with `rabbitmqctl join_cluster`), all on this machine.
    cluster: bool,
}

impl Scenario {
    fn single(name: &'static str, tweak: fn(&mut Options)) -> Scenario {
        Scenario {
            name,
            tweak,
            cluster: false,
        }
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::single(
            "persistent 1 KiB, confirm window 100, 1 producer 1 consumer",
            |_| {},
        ),
        Scenario::single(
            "persistent 1 KiB, confirm window 1000, 1 producer 1 consumer",
            |o| o.confirm = 1000,
        ),
        Scenario::single("persistent 16 B, confirm window 100, 1p 1c", |o| {
            o.size = 16
        }),
        Scenario::single("persistent 64 KiB, confirm window 100, 1p 1c", |o| {
            o.size = 65536
        }),
        Scenario::single(
            "persistent 1 KiB, confirm window 100, 4 producers 4 consumers",
            |o| {
                o.producers = 4;
                o.consumers = 4;
            },
        ),
        Scenario::single(
            "persistent 1 KiB, publish 200k then drain (drain rate)",
            |o| {
                o.drain = true;
                o.messages = Some(200_000);
            },
        ),
        Scenario::single("transient 1 KiB, confirm window 100, 1p 1c", |o| {
            o.transient = true
        }),
        Scenario::single("persistent 1 KiB at a fixed 5000 msg/s (latency)", |o| {
            o.rate = 5000
        }),
        Scenario {
            name: "3-node cluster, quorum queue, persistent 1 KiB, confirm window 1000, 1p 1c",
            tweak: |o| {
                o.queue_type = "quorum".into();
                o.confirm = 1000;
            },
            cluster: true,
        },
    ]
}

/// A broker (or a cluster of them) under test.
struct Broker {
    name: &'static str,
    addr: String,
    /// The process doing the broker's work (RabbitMQ's beam.smp, not its start script; for a
    /// cluster, node 1's, where the client connects and the queue is declared).
    pid: u32,
    /// Processes to SIGKILL when done (each node's beam.smp).
    kill: Vec<u32>,
    /// Started processes, asked to stop with SIGTERM first (`warren local-cluster` stops its
    /// nodes cleanly), then killed.
    children: Vec<Child>,
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in &mut self.children {
            signal(child.id(), rustix::process::Signal::TERM);
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for pid in std::iter::once(self.pid).chain(self.kill.iter().copied()) {
            if pid != 0 {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{addr} did not open within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The pid of the first process whose command line matches `pattern`.
fn pgrep(pattern: &str) -> anyhow::Result<u32> {
    let output = Command::new("pgrep").args(["-f", pattern]).output()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no process matches {pattern:?}"))
}

fn start_warren(dir: &Path) -> anyhow::Result<Broker> {
    let binary = warren_tests::warren_binary();
    let addr = "127.0.0.1:5690".to_string();
    let child = Command::new(binary)
        .args(["--data-dir"])
        .arg(dir.join("warren"))
        .args(["--listen", &addr, "--no-admin"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting warren")?;
    wait_for_port(&addr, Duration::from_secs(30))?;
    let pid = child.id();
    Ok(Broker {
        name: "Warren",
        addr,
        pid,
        kill: Vec::new(),
        children: vec![child],
    })
}

/// Three Warren nodes with `warren local-cluster` (AMQP on 5700–5702).
fn start_warren_cluster(dir: &Path) -> anyhow::Result<Broker> {
    let base = dir.join("warren-cluster");
    let child = Command::new(warren_tests::warren_binary())
        .args(["local-cluster", "--base-port", "5700", "--dir"])
        .arg(&base)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting warren local-cluster")?;
    for port in 5700..5703 {
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(60))?;
    }
    let pid = pgrep(&format!("{}/node-1/", base.display()))?;
    Ok(Broker {
        name: "Warren",
        addr: "127.0.0.1:5700".into(),
        pid,
        kill: Vec::new(),
        children: vec![child],
    })
}

const RABBIT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

fn install_rabbitmq() -> anyhow::Result<()> {
    if !Path::new(RABBIT).exists() {
        eprintln!("installing RabbitMQ from Debian's rabbitmq-server package");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "rabbitmq-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        anyhow::ensure!(status.success(), "apt-get install rabbitmq-server failed");
    }
    Ok(())
}

/// Starts RabbitMQ node `name@localhost` on AMQP `port` with its data and home under `base` (and
/// `cookie` as its Erlang cookie, if given), as the current user from its own directories (the
/// Debian wrapper in /usr/sbin would switch to the rabbitmq user and the system-wide node);
/// returns the start script's process and, once AMQP is up, the node's beam.smp.
fn spawn_rabbitmq(
    base: &Path,
    name: &str,
    port: u16,
    cookie: Option<&str>,
) -> anyhow::Result<(Child, u32)> {
    std::fs::create_dir_all(base)?;
    if let Some(cookie) = cookie {
        let path = base.join(".erlang.cookie");
        std::fs::write(&path, cookie)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
    }
    let child = Command::new(RABBIT)
        .env("RABBITMQ_NODENAME", format!("{name}@localhost"))
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", (port + 20_000).to_string())
        .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", base.join("log"))
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            base.join("enabled_plugins"),
        )
        .env("HOME", base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting rabbitmq-server")?;
    // The node's command line carries its home directory (not its name).
    let ready = wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(120))
        .and_then(|()| pgrep(&format!("beam.smp.*-home {} ", base.display())));
    match ready {
        Ok(pid) => Ok((child, pid)),
        Err(error) => {
            drop(Broker {
                name: "RabbitMQ 3.10",
                addr: String::new(),
                pid: 0,
                kill: pgrep(&format!("beam.smp.*-home {} ", base.display()))
                    .into_iter()
                    .collect(),
                children: vec![child],
            });
            Err(error)
        }
    }
}

fn start_rabbitmq(dir: &Path) -> anyhow::Result<Broker> {
    install_rabbitmq()?;
    let base = dir.join("rabbitmq");
    let (child, pid) = spawn_rabbitmq(&base, "compare", 5691, None)?;
    Ok(Broker {
        name: "RabbitMQ 3.10",
        addr: "127.0.0.1:5691".into(),
        pid,
        kill: Vec::new(),
        children: vec![child],
    })
}

/// Three RabbitMQ nodes (AMQP on 5693–5695) sharing one Erlang cookie, nodes 2 and 3 joined
/// to node 1's cluster.
fn start_rabbitmq_cluster(dir: &Path) -> anyhow::Result<Broker> {
    install_rabbitmq()?;
    let home = dir.join("rabbitmq-cluster");
    let cookie = format!("WARRENCOMPARE{:016X}", rand::random::<u64>());
    let mut broker = Broker {
        name: "RabbitMQ 3.10",
        addr: "127.0.0.1:5693".into(),
        pid: 0,
        kill: Vec::new(),
        children: Vec::new(),
    };
    // Dropping `broker` on an error stops whatever started.
    for i in 1..=3u16 {
        let base = home.join(format!("n{i}"));
        let (child, pid) = spawn_rabbitmq(&base, &format!("cmp{i}"), 5692 + i, Some(&cookie))?;
        broker.children.push(child);
        if i == 1 {
            broker.pid = pid;
        } else {
            broker.kill.push(pid);
        }
    }
    for i in 2..=3 {
        let node = format!("cmp{i}@localhost");
        for args in [
            vec!["stop_app"],
            vec!["join_cluster", "cmp1@localhost"],
            vec!["start_app"],
        ] {
            let status = Command::new(RABBITMQCTL)
                .args(["-n", &node])
                .args(&args)
                .env("HOME", home.join("n1"))
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "rabbitmqctl -n {node} {args:?} failed");
        }
    }
    Ok(broker)
}

/// Iterations of each floor loop (one per millisecond).
const FLOOR_CYCLES: u32 = 3000;

fn floor_line(floor: &Floor) -> String {
    format!(
        "This machine's floor in the same run (one thread, once every {:.0} µs, no broker): \
         {:.1} µs of CPU to sleep and wake; {:.1} µs of CPU to sleep, wake, write {} bytes and \
         fdatasync them ({:.0} µs from the write to fdatasync's return).",
        floor.period_us,
        floor.wake_up_cpu_us,
        floor.write_sync_cpu_us,
        floor::WRITE_BYTES,
        floor.write_sync_wall_us
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The figure a scenario is judged by: consume rate (msg/s), or p99 end-to-end latency for the
/// fixed-rate scenario.
fn headline(name: &str, r: &Report) -> f64 {
    if name.contains("fixed") {
        r.end_to_end_latency.p99_us as f64
    } else {
        r.consume_rate
    }
}

#[derive(serde::Serialize)]
struct Row {
    scenario: String,
    unit: &'static str,
    warren: f64,
    rabbitmq: f64,
    ratio: f64,
    warren_confirm_p99_us: f64,
    rabbitmq_confirm_p99_us: f64,
    warren_cpu_us_per_message: f64,
    rabbitmq_cpu_us_per_message: f64,
}

fn svg_chart(rows: &[Row]) -> String {
    let bars: Vec<&Row> = rows.iter().filter(|r| r.unit == "msg/s").collect();
    let row_height = 46.0;
    let width = 900.0;
    let left = 330.0;
    let max = bars
        .iter()
        .map(|r| r.warren.max(r.rabbitmq))
        .fold(1.0, f64::max);
    let scale = (width - left - 120.0) / max;
    let height = 40.0 + row_height * bars.len() as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">Throughput, msg/s (median); Warren (dark) vs RabbitMQ 3.10 (light)</text>\n"
    );
    for (i, r) in bars.iter().enumerate() {
        let y = 40.0 + row_height * i as f64;
        let label: String = r.scenario.chars().take(52).collect();
        svg += &format!("<text x=\"10\" y=\"{}\">{}</text>\n", y + 16.0, label);
        for (j, (value, color)) in [(r.warren, "#1f4e79"), (r.rabbitmq, "#f4a261")]
            .iter()
            .enumerate()
        {
            let by = y + 4.0 + 18.0 * j as f64;
            svg += &format!(
                "<rect x=\"{left}\" y=\"{by}\" width=\"{:.1}\" height=\"14\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{:.0}</text>\n",
                value * scale,
                left + value * scale + 4.0,
                by + 11.0,
                value
            );
        }
    }
    svg += "</svg>\n";
    svg
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("warren-compare-")
        .tempdir()?;
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| {
            args.only
                .as_ref()
                .is_none_or(|o| s.name.contains(o.as_str()))
        })
        .collect();
    let floor = floor::measure(dir.path(), Duration::from_millis(1), FLOOR_CYCLES)
        .context("measuring the machine's floor")?;
    eprintln!("{}", floor_line(&floor));
    let mut results: Vec<(String, Vec<Report>, Vec<Report>)> = Vec::new();
    // Single nodes first, then clusters (one pair of brokers running at a time).
    for cluster in [false, true] {
        let batch: Vec<&Scenario> = chosen.iter().filter(|s| s.cluster == cluster).collect();
        if batch.is_empty() {
            continue;
        }
        let brokers = if cluster {
            [
                start_warren_cluster(dir.path())?,
                start_rabbitmq_cluster(dir.path())?,
            ]
        } else {
            [start_warren(dir.path())?, start_rabbitmq(dir.path())?]
        };
        for scenario in batch {
            let (w, r) = run_scenario(&args, scenario, &brokers, results.len()).await?;
            results.push((scenario.name.to_string(), w, r));
        }
    }
    let rows: Vec<Row> = results
        .iter()
        .map(|(name, w, r)| {
            let m = |reports: &[Report], f: &dyn Fn(&Report) -> f64| {
                median(&mut reports.iter().map(f).collect::<Vec<_>>())
            };
            let warren = m(w, &|x| headline(name, x));
            let rabbitmq = m(r, &|x| headline(name, x));
            let latency = name.contains("fixed");
            Row {
                scenario: name.clone(),
                unit: if latency { "p99 µs" } else { "msg/s" },
                warren,
                rabbitmq,
                ratio: if latency {
                    rabbitmq / warren
                } else {
                    warren / rabbitmq
                },
                warren_confirm_p99_us: m(w, &|x| x.confirm_latency.p99_us as f64),
                rabbitmq_confirm_p99_us: m(r, &|x| x.confirm_latency.p99_us as f64),
                warren_cpu_us_per_message: m(w, &|x| {
                    x.broker_cpu_us_per_message.unwrap_or(f64::NAN)
                }),
                rabbitmq_cpu_us_per_message: m(r, &|x| {
                    x.broker_cpu_us_per_message.unwrap_or(f64::NAN)
                }),
            }
        })
        .collect();
    let revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = format!(
        "Medians of {} repetitions of {} s each, Warren {revision} vs RabbitMQ 3.10 (Debian), \
         alternating on the same machine. Ratio = Warren / RabbitMQ for rates, RabbitMQ / Warren \
         for latency (higher is better for Warren).\n\n\
         | scenario | Warren | RabbitMQ | ratio | confirm p99 µs (W / R) | broker CPU µs/msg (W / R) |\n\
         |---|---|---|---|---|---|\n",
        args.repetitions, args.seconds
    );
    for r in &rows {
        md += &format!(
            "| {} | {:.0} {} | {:.0} {} | {:.2}× | {:.0} / {:.0} | {:.1} / {:.1} |\n",
            r.scenario,
            r.warren,
            r.unit,
            r.rabbitmq,
            r.unit,
            r.ratio,
            r.warren_confirm_p99_us,
            r.rabbitmq_confirm_p99_us,
            r.warren_cpu_us_per_message,
            r.rabbitmq_cpu_us_per_message
        );
    }
    md += &format!("\n{}\n", floor_line(&floor));
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("latest.md"), &md)?;
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "floor": floor, "rows": rows }))?,
    )?;
    std::fs::write(args.out.join("latest.svg"), svg_chart(&rows))?;
    println!("{md}");
    Ok(())
}

/// Runs `scenario` `args.repetitions` times on each broker, alternating; the reports of each.
async fn run_scenario(
    args: &Args,
    scenario: &Scenario,
    brokers: &[Broker; 2],
    index: usize,
) -> anyhow::Result<(Vec<Report>, Vec<Report>)> {
    let mut per_broker: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
    for repetition in 0..args.repetitions {
        for (b, broker) in brokers.iter().enumerate() {
            let mut options = perf::default_options();
            options.addr = broker.addr.clone();
            options.duration_s = args.seconds;
            options.broker_pid = Some(broker.pid);
            options.queue = format!("compare-{index}");
            options.label = format!("{} / {}", broker.name, scenario.name);
            (scenario.tweak)(&mut options);
            let report = perf::run(options)
                .await
                .with_context(|| format!("{} on {}", scenario.name, broker.name))?;
            eprintln!(
                "[{}/{}] {:<14} {:<66} {:>9.0} msg/s  p99 e2e {:>6} µs  cpu {:>5.1} µs/msg  lost {}",
                repetition + 1,
                args.repetitions,
                broker.name,
                scenario.name,
                report.consume_rate,
                report.end_to_end_latency.p99_us,
                report.broker_cpu_us_per_message.unwrap_or(f64::NAN),
                report.lost
            );
            anyhow::ensure!(
                report.lost == 0,
                "{} lost messages on {}",
                report.lost,
                broker.name
            );
            per_broker[b].push(report);
        }
    }
    let [w, r] = per_broker;
    Ok((w, r))
}
