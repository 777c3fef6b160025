//! `warren-perf`: AMQP load generator (see `warren_benches::perf`). Prints a JSON report.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "AMQP 0-9-1 load generator: throughput, confirm and end-to-end latency, losses")]
struct Args {
    #[command(flatten)]
    options: warren_benches::perf::Options,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = warren_benches::perf::run(args.options).await?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.lost > 0 || report.duplicates > report.redelivered {
        anyhow::bail!(
            "{} lost, {} duplicates ({} redelivered)",
            report.lost,
            report.duplicates,
            report.redelivered
        );
    }
    Ok(())
}
