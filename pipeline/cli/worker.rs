//! The hidden `shard-worker`: one shard of the `instruction` recipe (best of
//! one sample, a reward filter) on the scripted engine, run by the library
//! exactly as `cotforge run` runs a job's shard. The kill, lease and resume
//! tests start and kill it; its flags are a job file written as options.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::progress::Progress;
use crate::engine::{EngineConfig, EngineKind};
use crate::recipes::instruction::InstructionConfig;
use crate::recipes::job::{self, JobFile, RecipeSpec, StoreSection};
use crate::recipes::run::{run_job, RunOptions};
use crate::record::Recipe;
use crate::stages::filter::{FilterConfig, RewardConfig};
use crate::store::shard::resolve_shard;

#[derive(Debug, Args)]
pub struct ShardWorkerArgs {
    /// Seed Parquet files (the whole job input; this worker keeps its shard's rows).
    #[arg(long, required = true, num_args = 1..)]
    pub seeds: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Defaults from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
    #[arg(long)]
    pub shard_index: Option<u32>,
    /// Defaults from COTFORGE_NUM_SHARDS or SLURM_ARRAY_TASK_COUNT, else 1.
    #[arg(long)]
    pub num_shards: Option<u32>,
    /// Journal fsync every K results.
    #[arg(long, default_value_t = 16)]
    pub flush_every: usize,
    /// ...or every this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub flush_seconds: f64,
    /// Chains with a lower mean confidence are rejected (stage filter.reward).
    /// The default splits the scripted model's chains roughly in half.
    #[arg(long, default_value_t = 0.285)]
    pub min_reward: f64,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Job creation time (Unix s); default: recorded by the first run, SOURCE_DATE_EPOCH, or now.
    #[arg(long)]
    pub created_at: Option<i64>,
    #[arg(long, default_value_t = 10_000)]
    pub row_group_rows: usize,
    #[arg(long, default_value_t = 32_768)]
    pub max_prompt_chars: usize,
    /// Show a progress bar.
    #[arg(long)]
    pub progress: bool,
    /// Lease lifetime (seconds) for shared storage without cross-node flock; 0: no lease.
    #[arg(long, default_value_t = crate::store::lease::DEFAULT_TTL_SECONDS)]
    pub lease_seconds: u64,
}

impl ShardWorkerArgs {
    /// The job these options describe.
    fn job_file(&self, num_shards: u32) -> JobFile {
        JobFile {
            seed: 0,
            out: self.out.clone(),
            num_shards,
            created_at: self.created_at,
            engine: EngineConfig {
                kind: EngineKind::Scripted,
                n_ctx: 1 << 16,
                n_batch: 4096,
                n_parallel: 8,
                n_seq_max: 8,
                ..EngineConfig::default()
            },
            store: StoreSection {
                flush_every: self.flush_every,
                flush_seconds: self.flush_seconds,
                row_group_rows: self.row_group_rows,
                max_prompt_chars: self.max_prompt_chars,
                lease_seconds: self.lease_seconds,
                ..StoreSection::default()
            },
            recipes: vec![RecipeSpec {
                kind: Recipe::Instruction,
                seeds: self.seeds.clone(),
                limit: None,
                filters: Some(vec![FilterConfig::Reward(RewardConfig {
                    min_reward: self.min_reward,
                    ..RewardConfig::default()
                })]),
                search: None,
                driver: None,
                open_o1: None,
                instruction: Some(InstructionConfig {
                    n: 1,
                    max_tokens: self.max_tokens,
                    ..InstructionConfig::default()
                }),
            }],
            dedup: Default::default(),
            export: Default::default(),
            decontaminate: None,
            gate: None,
        }
    }
}

pub fn run_shard_worker(a: ShardWorkerArgs) -> anyhow::Result<ExitCode> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let shard = resolve_shard(a.shard_index, a.num_shards, &env)?;
    let job = job::from_file(&a.job_file(shard.count))?;
    let opts = RunOptions {
        shard: Some(shard),
        ..RunOptions::default()
    };
    match run_job(&job, &opts, &mut Progress::new(a.progress)) {
        Ok(s) => {
            for (kind, o) in &s.shards {
                println!(
                    "{kind} {shard}: {:?}, {} seeds ({} resumed), {} accepted, {} rejected",
                    o.state, o.seeds, o.resumed, o.accepted, o.rejected
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => super::run::held_or(e),
    }
}
