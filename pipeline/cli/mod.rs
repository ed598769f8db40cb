//! Command line: clap parses into low-level argument structs, each command
//! validates them into a typed config and calls the library. `anyhow` lives
//! only here, at the edge.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod bench_http;
pub mod decontam;
pub mod engine_args;
pub mod export;
pub mod generate;
pub mod progress;
pub mod run;
pub mod search;
pub mod store;
pub mod worker;

#[derive(Debug, Parser)]
#[command(
    name = "cotforge",
    version,
    about = "Chain-of-thought training data from a GGUF model (Marco-o1 style MCTS)"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `cotforge=debug`.
    #[arg(long, global = true, env = "COTFORGE_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample completions from a model and print them with their mean confidence.
    Generate(generate::GenerateArgs),
    /// Run (or resume) a job: every shard of every recipe, then dedup, export and report.
    Run(run::RunArgs),
    /// The merge step of an array job: dedup across shards, export, stats, report.
    Finalize(run::FinalizeArgs),
    /// Run the confidence-guided MCTS over seeds (JSONL) and write chains and trees.
    Search(search::SearchArgs),
    /// Draw a search tree JSON in the terminal.
    InspectTree(search::InspectTreeArgs),
    /// Benchmarks against llama.cpp's own tools (see scripts/bench.sh).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Seed sets: `seeds import` converts JSON/JSONL to seed Parquet.
    Seeds(store::SeedsArgs),
    /// Per-shard state of a job directory: pending, running, done, corrupt.
    Status(store::StatusArgs),
    /// Re-check the blake3 of every committed file; exit 2 on any mismatch.
    Verify(store::VerifyArgs),
    /// Run one shard of the instruction recipe on the scripted engine (tests).
    #[command(hide = true)]
    ShardWorker(worker::ShardWorkerArgs),
    /// Export chains as SFT data in the Hugging Face layout.
    Export(export::ExportArgs),
    /// Print a summary table of an output directory.
    Stats(export::StatsArgs),
    /// Write a self-contained HTML report of an output directory.
    Report(export::ReportArgs),
    /// Flag shipped chains that share an n-gram with benchmark files; they move to the rejects.
    Decontaminate(decontam::DecontaminateArgs),
    /// Night over night: every headline number of two outputs, distributions (KS), reasons, prompt overlap.
    Compare(decontam::CompareArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Run(a) => run::run(a),
        Command::Finalize(a) => run::run_finalize(a),
        Command::Search(a) => search::run(a),
        Command::InspectTree(a) => search::inspect(a),
        Command::Bench(c) => bench::run(c),
        Command::Seeds(a) => store::run_seeds(a),
        Command::Status(a) => store::run_status(a),
        Command::Verify(a) => store::run_verify(a),
        Command::ShardWorker(a) => worker::run_shard_worker(a),
        Command::Export(a) => export::run_export(a),
        Command::Stats(a) => export::run_stats(a),
        Command::Report(a) => export::run_report(a),
        Command::Decontaminate(a) => decontam::run_decontaminate(a),
        Command::Compare(a) => decontam::run_compare(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
