//! `cargo run --release -p bench -- [--quick]`: measures the backend on
//! real servers and prints a Markdown table (see BENCHMARKS.md).
//!
//! Scenarios: webhook-gateway ingest against the bare JetStream publish rate
//! (a private nats-server), the processor's rate into SQLite, REST reads
//! with a large embedded store, and idle memory of each binary; the rate at
//! which the stack stores under webhook load (against a baseline revision's
//! build, too) and crash recovery; the gateway at one and three stream
//! replicas, and the pause a leader change causes; the reads of several
//! business numbers at two data sizes. Numbers, never pass/fail: speed targets
//! live here, not in tests.

mod commands;
mod e2e;
mod fanout;
mod footprint;
mod ingest;
mod load;
mod numbers;
mod processor;
mod reads;
mod replicas;
mod search;
mod services;
mod socketio;
mod stored;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct Options {
    /// Short runs and smaller data sets (about a minute in all).
    #[arg(long)]
    pub quick: bool,
    /// Concurrent HTTP connections / publishers for the ingest scenarios.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Only these scenarios (ingest, processor, reads, e2e, fanout, stored,
    /// crash, replicas, search, numbers, footprint). `stored` includes `crash` (crash recovery).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The MongoDB-wire server of the MongoDB scenarios: the replica set
    /// (`TEST_MONGODB_RS_URI`: each batch one transaction, as compose and
    /// k8s run MongoDB) or a standalone server (`TEST_MONGODB_URI`: the
    /// fallback without transactions).
    #[arg(long, value_enum, default_value_t = services::MongoMode::ReplicaSet)]
    pub mongo: services::MongoMode,
    /// Payloads per batch in the processor scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 256, 1024])]
    pub batch_sizes: Vec<usize>,
    /// Stored-rate scenario: the git revision the baseline binaries were
    /// built from (a label; `scripts/bench.sh --baseline-rev REV` builds them
    /// and passes --baseline-bin-dir).
    #[arg(long, value_name = "REV")]
    pub baseline_rev: Option<String>,
    /// Stored-rate scenario: directory with the baseline's release
    /// `webhook-gateway`, `processor` and `whatsapp-clone`. Without it the
    /// baseline rows are "not run".
    #[arg(long, value_name = "DIR")]
    pub baseline_bin_dir: Option<std::path::PathBuf>,
    /// Stored-rate scenario: messages already in the database for its
    /// second data size (default 100000; 20000 with --quick).
    #[arg(long, value_name = "N")]
    pub stored_preload: Option<usize>,
}

impl Options {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|s| s == scenario || (s == "stored" && scenario == "crash"))
    }

    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.quick { 5 } else { 20 })
    }
}

/// One line of the results table.
pub struct Row {
    pub scenario: String,
    pub result: String,
    pub detail: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    services::set_mongo(options.mongo);
    let mut rows = Vec::new();
    println!(
        "machine: {} cores; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        os_summary()
    );
    for scenario in [
        "ingest",
        "processor",
        "reads",
        "e2e",
        "fanout",
        "stored",
        "crash",
        "replicas",
        "search",
        "numbers",
        "footprint",
    ] {
        if !options.wants(scenario) {
            continue;
        }
        let started = std::time::Instant::now();
        eprintln!("==> {scenario}");
        let result = match scenario {
            "ingest" => ingest::run(&options).await,
            "processor" => processor::run(&options).await,
            "reads" => reads::run(&options).await,
            "e2e" => e2e::run(&options).await,
            "fanout" => fanout::run(&options).await,
            "stored" => stored::run(&options).await,
            "crash" => stored::crash(&options).await,
            "replicas" => replicas::run(&options).await,
            "search" => search::run(&options).await,
            "numbers" => numbers::run(&options).await,
            _ => footprint::run(&options).await,
        };
        // A scenario that cannot run is reported; the others still run.
        let new = result.unwrap_or_else(|e| {
            vec![Row {
                scenario: scenario.to_owned(),
                result: "failed".to_owned(),
                detail: format!("{e:#}"),
            }]
        });
        for row in &new {
            eprintln!("    {}: {}", row.scenario, row.result);
        }
        eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
        rows.extend(new);
    }
    println!("\n| scenario | result | detail |\n|---|---|---|");
    for row in rows {
        println!("| {} | {} | {} |", row.scenario, row.result, row.detail);
    }
    Ok(())
}

fn os_summary() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
