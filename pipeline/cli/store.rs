//! Data-plane commands: `seeds import`, `status`, `verify`, and the hidden
//! `shard-worker` (the scripted engine as processor: the model of how a real
//! recipe is wired to `store::run_shard`, and the process the kill tests kill).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::engine::{
    ChatMessage, CoreLimits, Engine, EngineError, SamplingParams, ScriptedConfig, ScriptedEngine,
    StepRequest,
};
use crate::record::{Chain, Recipe, Reject, Seed};
use crate::store::fingerprint::{hash_inputs, Fingerprint};
use crate::store::import::{import, AnswerExtract, ImportOptions, InputFormat};
use crate::store::manifest::job_created_at;
use crate::store::parquet_io::WriteOptions;
use crate::store::shard::resolve_shard;
use crate::store::status::{status, verify, ShardStatus};
use crate::store::{
    run_shard, Ingest, IngestOptions, Processed, Processor, ShardOptions, StoreError,
};

/// Exit code when the shard is locked by another worker (EX_TEMPFAIL).
pub const EXIT_LOCKED: u8 = 75;
/// Exit code of `verify` when a file does not match its manifest.
pub const EXIT_VERIFY_FAILED: u8 = 2;

#[derive(Debug, Args)]
pub struct SeedsArgs {
    #[command(subcommand)]
    pub command: SeedsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SeedsCommand {
    /// Convert JSON / JSONL seed sets to seed Parquet (schemas/seeds.json).
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Json,
    Jsonl,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AnswerExtractArg {
    /// GSM8K `#### N` answers become N (commas removed); other answers kept.
    Auto,
    /// Keep answers verbatim.
    None,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input files, imported in order into one output.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output seed Parquet file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Field holding the prompt (dotted paths like `a.0.b` work for every field option).
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// Field holding a stable id; without it ids are blake3 of the normalized prompt.
    #[arg(long)]
    pub id_field: Option<String>,
    /// Field holding the reference answer.
    #[arg(long)]
    pub answer_field: Option<String>,
    /// Field holding an existing response (Open-O1 input).
    #[arg(long)]
    pub response_field: Option<String>,
    /// Field holding a system prompt.
    #[arg(long)]
    pub system_field: Option<String>,
    /// Field appended to the prompt after a blank line when non-empty (self-instruct input).
    #[arg(long)]
    pub input_field: Option<String>,
    /// Fields copied into the `meta` JSON object (repeatable).
    #[arg(long)]
    pub meta_field: Vec<String>,
    /// Value of the `source` column.
    #[arg(long)]
    pub source: Option<String>,
    /// Value of the `lang` column.
    #[arg(long)]
    pub lang: Option<String>,
    /// Input format; by default `.jsonl`/`.ndjson` are JSONL, anything else JSON.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    #[arg(long, value_enum, default_value = "auto")]
    pub answer_extract: AnswerExtractArg,
    /// Import at most this many seeds (for samples).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 10_000)]
    pub row_group_rows: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job output directory.
    pub out: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Job output directory.
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

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
    #[arg(long, default_value = "scripted")]
    pub kind: String,
    /// Chains with a lower mean confidence are rejected (stage filter.reward).
    /// The default splits the scripted model's chains roughly in half.
    #[arg(long, default_value_t = 0.19)]
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
    #[arg(long, default_value_t = 131_072)]
    pub max_prompt_bytes: usize,
    /// Show a progress spinner.
    #[arg(long)]
    pub progress: bool,
    /// Lease lifetime (seconds) for shared storage without cross-node flock; 0: no lease.
    #[arg(long, default_value_t = crate::store::lease::DEFAULT_TTL_SECONDS)]
    pub lease_seconds: u64,
}

pub fn run_seeds(a: SeedsArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        SeedsCommand::Import(a) => run_import(a),
    }
}

fn run_import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let o = ImportOptions {
        prompt_field: a.prompt_field,
        id_field: a.id_field,
        answer_field: a.answer_field,
        response_field: a.response_field,
        system_field: a.system_field,
        input_field: a.input_field,
        meta_fields: a.meta_field,
        source: a.source,
        lang: a.lang,
        format: a.format.map(|f| match f {
            FormatArg::Json => InputFormat::Json,
            FormatArg::Jsonl => InputFormat::Jsonl,
        }),
        answer_extract: match a.answer_extract {
            AnswerExtractArg::Auto => AnswerExtract::Auto,
            AnswerExtractArg::None => AnswerExtract::None,
        },
        limit: a.limit,
        write: WriteOptions {
            row_group_rows: a.row_group_rows,
            ..WriteOptions::default()
        },
    };
    let rep = import(&a.inputs, &a.out, &o)?;
    for s in rep.skipped.iter().take(20) {
        eprintln!("skipped {s}");
    }
    if rep.skipped.len() > 20 {
        eprintln!("... and {} more skipped", rep.skipped.len() - 20);
    }
    println!(
        "{}: {} seeds, {} bytes, blake3 {} ({} records skipped)",
        a.out.display(),
        rep.seeds,
        rep.file.bytes,
        rep.file.blake3,
        rep.skipped.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let rep = status(&a.out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:>13}  {:<28} {:>8} {:>8} {:>8}",
        "kind", "shard", "state", "seeds", "accepted", "rejected"
    );
    for s in &rep.shards {
        let state = match &s.status {
            ShardStatus::Pending { .. } => "pending".to_string(),
            ShardStatus::Running { holder, .. } => format!("running ({holder})"),
            ShardStatus::Done => "done".to_string(),
            ShardStatus::Corrupt { reason } => format!("corrupt: {reason}"),
        };
        println!(
            "{:<14} {:>13}  {:<28} {:>8} {:>8} {:>8}",
            s.kind,
            s.shard.suffix(),
            state,
            s.seeds,
            s.accepted,
            s.rejected
        );
    }
    let t = &rep.totals;
    println!(
        "total: {} shards ({} done, {} running, {} pending, {} corrupt); {} seeds, {} accepted, {} rejected",
        t.shards, t.done, t.running, t.pending, t.corrupt, t.seeds, t.accepted, t.rejected
    );
    Ok(if t.corrupt > 0 {
        ExitCode::from(EXIT_VERIFY_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn run_verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let rep = verify(&a.out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        for p in &rep.problems {
            println!("MISMATCH {p}");
        }
        println!(
            "{} files, {} bytes checked, {} problems",
            rep.files_checked,
            rep.bytes_checked,
            rep.problems.len()
        );
    }
    Ok(if rep.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VERIFY_FAILED)
    })
}

/// The scripted engine as a processor: one sampled continuation per seed.
pub struct ScriptedProcessor {
    pub engine: ScriptedEngine,
    pub max_tokens: usize,
    pub min_reward: f64,
    pub created_at: i64,
    pub kind: String,
    pub settings: String,
}

/// Text and per-token confidences of one seed, or why it could not run.
type Generated = Result<(String, Vec<f32>), String>;

impl ScriptedProcessor {
    /// Context tokens one sequence may use, so a full batch always fits the
    /// KV cache and a seed's fate never depends on which seeds share its batch.
    fn per_seq_ctx(&self) -> usize {
        self.engine.n_ctx() / self.engine.n_parallel().max(1)
    }

    fn prompt_tokens(&self, seed: &Seed) -> Result<Vec<crate::engine::Token>, EngineError> {
        let mut msgs = Vec::new();
        if let Some(s) = &seed.system {
            msgs.push(ChatMessage::system(s.clone()));
        }
        msgs.push(ChatMessage::user(seed.prompt.clone()));
        // The pipeline owns the tags: the assistant turn starts inside a thought.
        // Seed text is tokenized plain (no control tokens from seeds).
        let mut toks = self.engine.chat_tokens(&msgs)?;
        toks.extend(self.engine.tokenize("<Thought>\n", false)?);
        Ok(toks)
    }

    /// Generate for up to `n_parallel` seeds at once: one `step` call advances
    /// every live sequence, as a recipe's scheduler does. Each sequence samples
    /// from its own seed-derived stream, so results do not depend on batching.
    fn generate_group(&mut self, group: &[Seed]) -> Result<Vec<Generated>, EngineError> {
        let mut results: Vec<Generated> = vec![Ok((String::new(), Vec::new())); group.len()];
        let mut texts: Vec<Vec<u8>> = vec![Vec::new(); group.len()];
        let mut live: Vec<(usize, crate::engine::SeqId, SamplingParams)> = Vec::new();
        for (k, seed) in group.iter().enumerate() {
            let toks = self.prompt_tokens(seed)?;
            if toks.len() + self.max_tokens > self.per_seq_ctx() {
                results[k] = Err(format!(
                    "prompt of {} tokens + {} to generate exceeds the per-sequence context of {}",
                    toks.len(),
                    self.max_tokens,
                    self.per_seq_ctx()
                ));
                continue;
            }
            let h = blake3::hash(seed.id.as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.as_bytes()[..8]);
            let seq = self.engine.new_sequence()?;
            self.engine.append(seq, &toks)?;
            live.push((k, seq, SamplingParams::new(0.7, 0.9, u64::from_le_bytes(b))));
        }
        let mut step = 0;
        while !live.is_empty() && step < self.max_tokens {
            let reqs: Vec<StepRequest> = live
                .iter()
                .map(|&(_, seq, sampling)| StepRequest { seq, sampling })
                .collect();
            let outs = self.engine.step(&reqs)?;
            let mut still = Vec::with_capacity(live.len());
            for (&(k, seq, sp), t) in live.iter().zip(outs) {
                if let Ok((_, confs)) = &mut results[k] {
                    confs.push(t.confidence);
                }
                if t.eog {
                    self.engine.release(seq)?;
                } else {
                    texts[k].extend_from_slice(&t.piece);
                    still.push((k, seq, sp));
                }
            }
            live = still;
            step += 1;
        }
        for (_, seq, _) in live {
            self.engine.release(seq)?;
        }
        for (r, t) in results.iter_mut().zip(texts) {
            if let Ok((text, _)) = r {
                *text = String::from_utf8_lossy(&t).into_owned();
            }
        }
        Ok(results)
    }

    fn to_processed(&self, seed: &Seed, r: Generated) -> Processed {
        let (text, confs) = match r {
            Ok(x) => x,
            Err(reason) => {
                return Processed {
                    accepted: Vec::new(),
                    rejected: vec![Reject {
                        seed_id: seed.id.clone(),
                        chain_id: None,
                        recipe: self.kind.parse::<Recipe>().ok(),
                        stage: crate::record::Stage::Engine,
                        reason,
                        row: serde_json::to_string(seed).unwrap_or_default(),
                    }],
                }
            }
        };
        let reward = if confs.is_empty() {
            0.0
        } else {
            confs.iter().map(|&c| c as f64).sum::<f64>() / confs.len() as f64
        };
        let id = blake3::hash(format!("{}\0{}\00", seed.id, self.kind).as_bytes()).to_hex()[..32]
            .to_string();
        let chain = Chain {
            id: id.clone(),
            seed_id: seed.id.clone(),
            recipe: self.kind.parse::<Recipe>().ok(),
            system: seed.system.clone(),
            prompt: seed.prompt.clone(),
            reasoning: text.trim().to_string(),
            answer: String::new(),
            reward,
            step_confidences: vec![reward],
            tokens: confs.len() as u32,
            reflections: 0,
            verified: None,
            reference_answer: seed.reference_answer.clone(),
            model: self.engine.model_name().to_string(),
            model_blake3: self.engine.model_hash().to_string(),
            settings: self.settings.clone(),
            created_at: self.created_at,
            ..Chain::default()
        };
        if reward < self.min_reward {
            return Processed {
                accepted: Vec::new(),
                rejected: vec![Reject {
                    seed_id: seed.id.clone(),
                    chain_id: Some(id),
                    recipe: chain.recipe,
                    stage: crate::record::Stage::FilterReward,
                    reason: format!("reward {reward:.4} < {:.4}", self.min_reward),
                    row: serde_json::to_string(&chain).unwrap_or_default(),
                }],
            };
        }
        Processed {
            accepted: vec![chain],
            rejected: Vec::new(),
        }
    }
}

impl Processor for ScriptedProcessor {
    fn process(&mut self, seed: &Seed) -> Result<Processed, String> {
        let mut v = self.process_batch(std::slice::from_ref(seed))?;
        v.pop().ok_or_else(|| "no result".to_string())
    }

    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, String> {
        let mut out = Vec::with_capacity(seeds.len());
        for group in seeds.chunks(self.engine.n_parallel().max(1)) {
            let results = self.generate_group(group).map_err(|e| e.to_string())?;
            for (seed, r) in group.iter().zip(results) {
                out.push(self.to_processed(seed, r));
            }
        }
        Ok(out)
    }
}

pub fn run_shard_worker(a: ShardWorkerArgs) -> anyhow::Result<ExitCode> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let shard = resolve_shard(a.shard_index, a.num_shards, &env)?;
    // Every input is checked before anything is written.
    let ingest = Ingest::open(
        &a.seeds,
        IngestOptions {
            max_prompt_chars: a.max_prompt_chars,
            max_prompt_bytes: a.max_prompt_bytes,
            shard: Some(shard),
            ..IngestOptions::default()
        },
    )?;
    let created_at = job_created_at(&a.out, a.created_at)?;
    let settings = serde_json::json!({
        "engine": "scripted", "temperature": 0.7, "top_p": 0.9,
        "max_tokens": a.max_tokens, "min_reward": a.min_reward,
    })
    .to_string();
    let engine = ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 1 << 16,
            n_batch: 4096,
            n_parallel: 8,
            n_seq_max: 8,
        },
    );
    let seed_hashes = hash_inputs(&a.seeds)?;
    let flush_interval = Duration::try_from_secs_f64(a.flush_seconds)
        .ok()
        .filter(|d| d.as_secs_f64() <= crate::recipes::job::MAX_FLUSH_SECONDS)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--flush-seconds {}: must be a number of seconds from 0 to {}",
                a.flush_seconds,
                crate::recipes::job::MAX_FLUSH_SECONDS
            )
        })?;
    let mut opts = ShardOptions::new(&a.out, &a.kind, shard);
    opts.flush_every = a.flush_every;
    opts.flush_interval = flush_interval;
    opts.write.row_group_rows = a.row_group_rows;
    opts.fingerprint = Fingerprint::new(
        serde_json::json!({"kind": a.kind, "settings": settings, "max_prompt_chars": a.max_prompt_chars, "max_prompt_bytes": a.max_prompt_bytes, "created_at": created_at}),
        seed_hashes,
        engine.model_hash().to_string(),
    );
    opts.progress = a.progress;
    opts.lease_ttl = a.lease_seconds;
    let mut processor = ScriptedProcessor {
        engine,
        max_tokens: a.max_tokens,
        min_reward: a.min_reward,
        created_at,
        kind: a.kind.clone(),
        settings,
    };
    match run_shard(&opts, ingest, &mut processor) {
        Ok(o) => {
            println!(
                "{} {}: {:?}, {} seeds ({} resumed), {} accepted, {} rejected",
                a.kind, shard, o.state, o.seeds, o.resumed, o.accepted, o.rejected
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (StoreError::LockHeld { .. } | StoreError::LeaseHeld { .. })) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_LOCKED))
        }
        Err(e) => Err(e).with_context(|| format!("{} {shard}", a.kind)),
    }
}
