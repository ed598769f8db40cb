//! Running a job: every shard of every recipe through the shard worker, then
//! (once all shards are done) the finishing merge: dedup across shards and
//! earlier runs, SFT export, stats and the HTML report.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::record::{Chain, Recipe, Reject, Seed};
use crate::stages::filter::FilterChain;
use crate::store::ingest::{Ingest, IngestOptions};
use crate::store::manifest::{job_created_at, ShardPaths};
use crate::store::parquet_io::{commit_bytes, read_parquet, write_parquet, WriteOptions};
use crate::store::schema::{
    batch_to_chains, batch_to_rejects, chains_schema, chains_to_batch, rejects_schema,
    rejects_to_batch,
};
use crate::store::worker::{run_shard, Processed, Processor, ShardOptions, ShardOutcome};
use crate::store::ShardSpec;

use super::instruction::Instruction;
use super::job::{Job, ValidRecipe};
use super::marco::MarcoCot;
use super::open_o1::OpenO1;
use super::{Cancel, RecipeError, RowMeta};

/// How a `run` invocation behaves.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only this shard (an array worker); None = every shard, then finalize.
    pub shard: Option<ShardSpec>,
    pub cancel: Cancel,
    /// Draw progress bars (else periodic log lines).
    pub progress: bool,
}

/// What a run did, per recipe and shard.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub shards: Vec<(Recipe, ShardOutcome)>,
    pub tokens_sampled: u64,
    pub tokens_evaluated: u64,
    pub seconds: f64,
    pub finalized: Option<FinalSummary>,
}

/// What the finishing merge wrote.
#[derive(Debug, Clone, Default)]
pub struct FinalSummary {
    pub chains: usize,
    pub duplicates: usize,
    pub export_dir: PathBuf,
    pub export_rows: usize,
    pub report: PathBuf,
    pub stats: String,
}

/// Progress bar, periodic log lines and metrics samples of one shard run.
struct ProgressState {
    bar: indicatif::ProgressBar,
    tty: bool,
    last_log: Instant,
    started: Instant,
    accepted: u64,
    rejected: u64,
    done: u64,
    total: u64,
    tokens0: u64,
    /// Accepted rows of earlier shards in this run, so metrics stay cumulative.
    accepted_before: u64,
    metrics: Option<std::fs::File>,
    label: String,
}

impl ProgressState {
    fn update(&mut self, results: &[Processed], engine_tokens: u64) {
        self.done += results.len() as u64;
        self.accepted += results.iter().map(|p| p.accepted.len() as u64).sum::<u64>();
        self.rejected += results.iter().map(|p| p.rejected.len() as u64).sum::<u64>();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let tokens = engine_tokens.saturating_sub(self.tokens0);
        let tps = tokens as f64 / secs;
        self.bar.set_position(self.done);
        self.bar.set_message(format!(
            "accepted {} rejected {} | {tps:.0} tok/s",
            self.accepted, self.rejected
        ));
        if let Some(f) = &mut self.metrics {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            // Cumulative over the run: engine tokens and accepted chains of every shard so far.
            let chains = self.accepted_before + self.accepted;
            let _ = writeln!(
                f,
                "{}",
                serde_json::json!({"t": now, "chains": chains, "tokens": engine_tokens})
            );
        }
        if !self.tty
            && (self.last_log.elapsed() >= Duration::from_secs(10) || self.done >= self.total)
        {
            self.last_log = Instant::now();
            let eta = if self.done > 0 && self.total > self.done {
                format!(
                    "{:.0}s",
                    secs / self.done as f64 * (self.total - self.done) as f64
                )
            } else {
                "-".into()
            };
            eprintln!(
                "[cotforge] {}: seeds {}/{} accepted {} rejected {} {tps:.0} tok/s eta {eta}",
                self.label, self.done, self.total, self.accepted, self.rejected
            );
        }
    }
}

/// A recipe processor with its progress and the signal flag: a set flag
/// stops the shard between batches (finished work is already journaled).
struct WithProgress<'a, P>(&'a mut P, ProgressState, Cancel);

impl<P: Processor + EngineTokens> Processor for WithProgress<'_, P> {
    fn process(&mut self, seed: &Seed) -> Result<Processed, String> {
        self.process_batch(std::slice::from_ref(seed))
            .map(|mut v| v.pop().unwrap_or_default())
    }
    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, String> {
        if self.2.is_set() {
            return Err(RecipeError::Interrupted.to_string());
        }
        let r = self.0.process_batch(seeds)?;
        self.1.update(&r, self.0.engine_tokens());
        Ok(r)
    }
}

fn ingest_options(job: &Job, shard: ShardSpec) -> IngestOptions {
    IngestOptions {
        max_prompt_chars: job.file.store.max_prompt_chars,
        shard: Some(shard),
        ..IngestOptions::default()
    }
}

/// The shards this invocation runs.
fn shards_of(job: &Job, opts: &RunOptions) -> Vec<ShardSpec> {
    match opts.shard {
        Some(s) => vec![s],
        None => (0..job.file.num_shards)
            .map(|index| ShardSpec {
                index,
                count: job.file.num_shards,
            })
            .collect(),
    }
}

/// Run (or resume) the job's shards; finalize when every shard is done and
/// this invocation ran them all.
pub fn run_job(job: &Job, opts: &RunOptions) -> Result<RunSummary, RecipeError> {
    let out = &job.file.out;
    // Every input is opened (schema checked) before anything is written.
    for r in &job.recipes {
        Ingest::open(&r.spec.seeds, ingest_options(job, ShardSpec::single()))?;
    }
    let created_at = job_created_at(out, job.file.created_at)?;
    let t0 = Instant::now();
    let mut engine = job.file.engine.build()?;
    let meta = RowMeta {
        model: engine.model_name().to_string(),
        model_blake3: engine.model_hash().to_string(),
        created_at,
    };
    let multi = indicatif::MultiProgress::new();
    if !opts.progress {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut summary = RunSummary::default();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in &job.recipes {
        for shard in shards_of(job, opts) {
            if opts.cancel.is_set() {
                return Err(RecipeError::Interrupted);
            }
            let accepted_before = summary.shards.iter().map(|(_, o)| o.accepted).sum();
            let outcome = run_recipe_shard(
                job,
                r,
                shard,
                engine.as_mut(),
                &meta,
                opts,
                &multi,
                run_id,
                accepted_before,
            )?;
            summary.shards.push((r.spec.kind, outcome));
        }
    }
    summary.tokens_sampled = engine.stats().tokens_sampled;
    summary.tokens_evaluated = engine.stats().tokens_evaluated;
    summary.seconds = t0.elapsed().as_secs_f64();
    drop(engine);
    if opts.shard.is_none() {
        summary.finalized = Some(finalize(job)?);
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn run_recipe_shard(
    job: &Job,
    r: &ValidRecipe,
    shard: ShardSpec,
    engine: &mut dyn Engine,
    meta: &RowMeta,
    opts: &RunOptions,
    multi: &indicatif::MultiProgress,
    run_id: u64,
    accepted_before: u64,
) -> Result<ShardOutcome, RecipeError> {
    let kind = r.spec.kind;
    let filters = FilterChain::from_configs(&r.filters)?;
    let limit = r.spec.limit.unwrap_or(u64::MAX);
    let within = move |item: &Result<
        crate::store::ingest::IngestItem,
        crate::store::StoreError,
    >| { item.as_ref().map_or(true, |i| i.ordinal < limit) };
    let total = Ingest::open(&r.spec.seeds, ingest_options(job, shard))?
        .take_while(within)
        .count() as u64;
    let mut sopts = ShardOptions::new(&job.file.out, kind.as_str(), shard);
    sopts.flush_every = job.file.store.flush_every;
    sopts.flush_interval = Duration::from_secs_f64(job.file.store.flush_seconds.max(0.0));
    sopts.batch_seeds = job.file.store.batch_seeds.max(1);
    sopts.write = WriteOptions {
        row_group_rows: job.file.store.row_group_rows,
        ..WriteOptions::default()
    };
    sopts.fingerprint = job.fingerprint.clone();
    let bar = multi.add(indicatif::ProgressBar::new(total));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {pos}/{len} seeds | {msg} | ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{kind} {}", shard.suffix()));
    // One metrics file per run (and per worker of an array job).
    let metrics_dir =
        job.file
            .out
            .join("metrics")
            .join(format!("run-{}-{}", run_id, shard.suffix()));
    let metrics = std::fs::create_dir_all(&metrics_dir).ok().and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(metrics_dir.join("metrics.jsonl"))
            .ok()
    });
    let cancel = opts.cancel.clone();
    let seeds = Ingest::open(&r.spec.seeds, ingest_options(job, shard))?.take_while(within);
    let label = format!("{kind} {shard}");
    let tty = opts.progress && std::io::stderr().is_terminal();
    let progress = ProgressState {
        bar,
        tty,
        last_log: Instant::now(),
        started: Instant::now(),
        accepted: 0,
        rejected: 0,
        done: 0,
        total,
        tokens0: engine.stats().tokens_sampled + engine.stats().tokens_evaluated,
        accepted_before,
        metrics,
        label,
    };
    let outcome = match kind {
        Recipe::OpenO1 => {
            let mut p = OpenO1 {
                engine,
                cfg: r.spec.open_o1.clone().unwrap_or_default(),
                filters,
                meta: meta.clone(),
            };
            track_and_run(&sopts, seeds, &mut p, progress, cancel)
        }
        Recipe::Instruction => {
            let mut cfg = r.spec.instruction.clone().unwrap_or_default();
            if cfg.seed == 0 {
                cfg.seed = job.file.seed;
            }
            let mut p = Instruction {
                engine,
                cfg,
                filters,
                meta: meta.clone(),
            };
            track_and_run(&sopts, seeds, &mut p, progress, cancel)
        }
        Recipe::MarcoCot => {
            let trees = job.file.out.join("trees").join(shard.suffix());
            std::fs::create_dir_all(&trees)
                .map_err(|e| RecipeError::Job(format!("{}: {e}", trees.display())))?;
            let mut p = MarcoCot {
                engine,
                search: r.search.clone(),
                driver: r.spec.driver.clone().unwrap_or_default(),
                verifier: Arc::new(crate::stages::answer::answers_match),
                filters,
                meta: meta.clone(),
                trees_dir: Some(trees),
                judge: None,
            };
            track_and_run(&sopts, seeds, &mut p, progress, cancel)
        }
    };
    match outcome {
        Err(crate::store::StoreError::Processor(m))
            if opts.cancel.is_set() || m.contains("interrupted") =>
        {
            Err(RecipeError::Interrupted)
        }
        other => Ok(other?),
    }
}

/// Engine-reading token counter for a processor that owns `&mut dyn Engine`.
trait EngineTokens {
    fn engine_tokens(&self) -> u64;
}
impl EngineTokens for OpenO1<'_> {
    fn engine_tokens(&self) -> u64 {
        self.engine.stats().tokens_sampled + self.engine.stats().tokens_evaluated
    }
}
impl EngineTokens for Instruction<'_> {
    fn engine_tokens(&self) -> u64 {
        self.engine.stats().tokens_sampled + self.engine.stats().tokens_evaluated
    }
}
impl EngineTokens for MarcoCot<'_> {
    fn engine_tokens(&self) -> u64 {
        self.engine.stats().tokens_sampled + self.engine.stats().tokens_evaluated
    }
}

/// Progress + metrics around a processor, then the shard worker.
fn track_and_run<P: Processor + EngineTokens>(
    sopts: &ShardOptions,
    seeds: impl Iterator<Item = Result<crate::store::ingest::IngestItem, crate::store::StoreError>>,
    p: &mut P,
    progress: ProgressState,
    cancel: Cancel,
) -> Result<ShardOutcome, crate::store::StoreError> {
    let bar = progress.bar.clone();
    let r = run_shard(sopts, seeds, &mut WithProgress(p, progress, cancel));
    bar.finish_and_clear();
    r
}

/// Paths of every shard's files for `job`, and whether all are done.
fn all_shard_paths(job: &Job) -> (Vec<(Recipe, ShardPaths)>, bool) {
    let mut v = Vec::new();
    let mut all_done = true;
    for r in &job.recipes {
        for index in 0..job.file.num_shards {
            let p = ShardPaths::new(
                &job.file.out,
                r.spec.kind.as_str(),
                ShardSpec {
                    index,
                    count: job.file.num_shards,
                },
            );
            all_done &= p.done().exists();
            v.push((r.spec.kind, p));
        }
    }
    (v, all_done)
}

fn read_chains(path: &Path) -> Result<Vec<Chain>, RecipeError> {
    let mut out = Vec::new();
    for b in read_parquet(path)? {
        out.extend(batch_to_chains(&b)?);
    }
    Ok(out)
}

fn read_rejects(path: &Path) -> Result<Vec<Reject>, RecipeError> {
    let mut out = Vec::new();
    for b in read_parquet(path)? {
        out.extend(batch_to_rejects(&b)?);
    }
    Ok(out)
}

/// The merge step: needs every shard done. Dedups all chains (within and
/// across shards, and against the persistent index of earlier runs), writes
/// `OUT/final/` (kept chains + dedup rejects), the export, stats and report.
/// Deterministic, so a rerun rewrites the same bytes.
pub fn finalize(job: &Job) -> Result<FinalSummary, RecipeError> {
    let out = &job.file.out;
    let (paths, all_done) = all_shard_paths(job);
    if !all_done {
        let missing: Vec<String> = paths
            .iter()
            .filter(|(_, p)| !p.done().exists())
            .map(|(k, p)| format!("{k} {}", p.dir.display()))
            .collect();
        return Err(RecipeError::Job(format!(
            "cannot finalize {}: {} shard(s) not done yet (first: {}); run the workers first",
            out.display(),
            missing.len(),
            missing.first().cloned().unwrap_or_default()
        )));
    }
    let mut shards: Vec<Vec<Chain>> = Vec::new();
    let mut rejects: Vec<Reject> = Vec::new();
    for (_, p) in &paths {
        shards.push(read_chains(&p.chains())?);
        rejects.extend(read_rejects(&p.rejects())?);
    }
    let before: usize = shards.iter().map(|s| s.len()).sum();
    let final_dir = out.join("final");
    std::fs::create_dir_all(&final_dir)
        .map_err(|e| RecipeError::Job(format!("{}: {e}", final_dir.display())))?;
    let mut dedup_rejects = Vec::new();
    if job.file.dedup.enabled {
        let dedup = job.file.dedup.params.build()?;
        // The index as it was before this job's first finalize: reruns of the
        // same job compare against the same earlier nights, not against themselves.
        let snapshot = final_dir.join("dedup-index.before");
        let mut index = match &job.file.dedup.index {
            Some(_) if snapshot.exists() => Some(dedup.open_index(&snapshot)?),
            Some(live) => {
                let idx = dedup.open_index(live)?;
                idx.save(&snapshot)?;
                Some(idx)
            }
            None => None,
        };
        let (kept, rej) = dedup.apply_shards(shards, index.as_mut());
        shards = kept;
        dedup_rejects = rej;
        if let (Some(live), Some(idx)) = (&job.file.dedup.index, &index) {
            idx.save(live)?;
        }
    }
    let mut chains: Vec<Chain> = shards.into_iter().flatten().collect();
    chains.sort_by(|a, b| a.id.cmp(&b.id));
    dedup_rejects.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
    let wopts = WriteOptions {
        row_group_rows: job.file.store.row_group_rows,
        ..WriteOptions::default()
    };
    write_parquet(
        &final_dir.join("chains.parquet"),
        chains_schema(),
        [chains_to_batch(&chains)],
        &wopts,
    )?;
    write_parquet(
        &final_dir.join("rejected-dedup.parquet"),
        rejects_schema(),
        [rejects_to_batch(&dedup_rejects)],
        &wopts,
    )?;
    rejects.extend(dedup_rejects.iter().cloned());

    let export_dir = job.export_dir();
    let mut export_rows = 0;
    if job.file.export.enabled {
        let s = crate::stages::export::export(&chains, &export_dir, &job.file.export.options)?;
        export_rows = s.rows();
    }
    let metrics = read_metrics(&out.join("metrics"));
    let summary = crate::report::Summary::build(&chains, &rejects, &metrics);
    let stats = summary.table();
    commit_bytes(&final_dir.join("stats.txt"), stats.as_bytes())?;
    let report = final_dir.join("report.html");
    let html = crate::report::html::render(
        &summary,
        &format!("cotforge report: {}", job.path.display()),
    );
    commit_bytes(&report, html.as_bytes())?;
    Ok(FinalSummary {
        chains: chains.len(),
        duplicates: before - chains.len(),
        export_dir,
        export_rows,
        report,
        stats,
    })
}

fn read_metrics(dir: &Path) -> Vec<crate::report::MetricsSample> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return v;
    };
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs {
        if let Ok(text) = std::fs::read_to_string(d.join("metrics.jsonl")) {
            v.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<crate::report::MetricsSample>(l).ok()),
            );
        }
    }
    v.sort_by(|a: &crate::report::MetricsSample, b| a.t.total_cmp(&b.t));
    v
}
