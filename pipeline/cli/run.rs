//! `cotforge run JOB.toml` and `cotforge finalize JOB.toml`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::progress::Progress;
use crate::recipes::metrics::MetricsSink;
use crate::recipes::run::{finalize, run_job, FinalSummary, RunOptions};
use crate::recipes::{job, Cancel, RecipeError};
use crate::store::shard::resolve_shard;

/// Exit code of a run stopped by SIGINT / SIGTERM (resumable).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code of a finalize whose `[gate]` failed (see `final/GATE_FAILED`).
pub const EXIT_GATE_FAILED: u8 = 3;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job file (TOML); see data/jobs/ for documented examples.
    pub job: PathBuf,
    /// Run only this shard (an array worker). Default: SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX when set; otherwise every shard, then finalize.
    #[arg(long)]
    pub shard_index: Option<u32>,
    /// Shard count (default: the job's `num_shards`).
    #[arg(long)]
    pub num_shards: Option<u32>,
    /// No progress bars (periodic log lines instead).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// Job file the workers ran.
    pub job: PathBuf,
}

/// Prints what finalize wrote; the exit code is non-zero when the gate failed.
fn print_final(f: &FinalSummary) -> ExitCode {
    println!("{}", f.stats);
    println!(
        "final: {} chains ({} duplicates removed); export: {} rows in {}; report: {}",
        f.chains,
        f.duplicates,
        f.export_rows,
        f.export_dir.display(),
        f.report.display()
    );
    match &f.gate {
        Some(g) if !g.passed => {
            eprintln!("gate FAILED: the output is not shippable (final/GATE_FAILED):");
            for c in g.failures() {
                eprintln!("  {}", c.line());
            }
            ExitCode::from(EXIT_GATE_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let job = job::load(&a.job)?;
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let array_worker = a.shard_index.is_some()
        || env.contains_key("SLURM_ARRAY_TASK_ID")
        || env.contains_key("JOB_COMPLETION_INDEX");
    let shard = if array_worker {
        let count = a.num_shards.or(Some(job.file.num_shards));
        let s = resolve_shard(a.shard_index, count, &env)?;
        anyhow::ensure!(
            s.count == job.file.num_shards,
            "--num-shards {} differs from the job's num_shards {}; shards would not line up",
            s.count,
            job.file.num_shards
        );
        Some(s)
    } else {
        None
    };
    let cancel = Cancel::default();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancel.0.clone()).context("installing signal handlers")?;
    }
    let opts = RunOptions { shard, cancel };
    let bars = !a.no_progress && std::io::stderr().is_terminal();
    let mut sink = (MetricsSink::new(&job.file.out), Progress::new(bars));
    match run_job(&job, &opts, &mut sink) {
        Ok(s) => {
            for (recipe, o) in &s.shards {
                eprintln!(
                    "{recipe}: {:?}, {} seeds ({} resumed), {} accepted, {} rejected",
                    o.state, o.seeds, o.resumed, o.accepted, o.rejected
                );
            }
            eprintln!(
                "engine: {} tokens sampled, {} evaluated in {:.1}s ({:.1} sampled tok/s)",
                s.tokens_sampled,
                s.tokens_evaluated,
                s.seconds,
                s.tokens_sampled as f64 / s.seconds.max(1e-9)
            );
            if let Some(f) = &s.finalized {
                return Ok(print_final(f));
            }
            eprintln!(
                "shard done; when every shard is done run `cotforge finalize {}`",
                a.job.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(RecipeError::Interrupted) => {
            eprintln!(
                "interrupted: finished work is journaled; rerun `cotforge run {}` to resume",
                a.job.display()
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(e) => held_or(e),
    }
}

/// A lock or lease held by another worker exits 75 (EX_TEMPFAIL: try again
/// later); any other error is returned.
pub(crate) fn held_or(e: RecipeError) -> anyhow::Result<ExitCode> {
    use crate::store::StoreError;
    match e {
        RecipeError::Store(e @ (StoreError::LockHeld { .. } | StoreError::LeaseHeld { .. })) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(crate::cli::store::EXIT_LOCKED))
        }
        e => Err(e.into()),
    }
}

pub fn run_finalize(a: FinalizeArgs) -> anyhow::Result<ExitCode> {
    let job = job::load(&a.job)?;
    match finalize(&job) {
        Ok(f) => Ok(print_final(&f)),
        Err(e) => held_or(e),
    }
}
