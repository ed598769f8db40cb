//! Running a job: every shard of every recipe through the shard worker, then
//! (once all shards are done) the finishing merge: dedup across shards and
//! earlier runs, SFT export, stats and the HTML report.
//!
//! Resume identity: each recipe's shards carry a fingerprint of what
//! determines them (the job's effective settings, the blake3 of each seed
//! file and of the model); a rerun under another one is refused naming what
//! changed.
//!
//! Finalize is crash-safe and idempotent; its writes are ordered so that a
//! kill at any point leaves a state the rerun completes to the same bytes:
//! 1. lock the output's finalize (and the dedup index, with its lease) for
//!    the whole merge; a second finalize exits naming the holder;
//! 2. dedup against the index segments *before* this run's own (see
//!    `stages::dedup::SignatureIndex`), so a rerun, even after later nights,
//!    neither rejects its own chains nor touches other runs' entries;
//! 3. write `final/chains.parquet`, `final/rejected-dedup.parquet`, the
//!    export (switched in atomically), stats and report;
//! 4. only then save the index with this run's segment (a crash before this
//!    leaves the index as it was, so the rerun decides the same);
//! 5. write `final/done.json` last: the hand-off marker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::record::{Chain, Recipe, Reject, Seed};
use crate::stages::filter::FilterChain;
use crate::store::events::{Event, EventSink};
use crate::store::fingerprint::{hash_inputs, Fingerprint};
use crate::store::ingest::{Ingest, IngestOptions};
use crate::store::lease::{fence_of, Lease};
use crate::store::lock::FileLock;
use crate::store::manifest::{job_created_at, read_json, write_json, DoneMarker, ShardPaths};
use crate::store::parquet_io::{read_parquet, write_parquet, CommittedFile, WriteOptions};
use crate::store::schema::{
    batch_to_chains, batch_to_rejects, chains_schema, chains_to_batch, rejects_schema,
    rejects_to_batch,
};
use crate::store::worker::{
    changed_error, run_shard_with, ProcessError, Processed, Processor, ShardOptions, ShardOutcome,
};
use crate::store::{crash, fsio, ShardSpec};

use super::instruction::Instruction;
use super::job::{Job, ValidRecipe};
use super::marco::MarcoCot;
use super::open_o1::OpenO1;
use super::{engine_tokens, Cancel, RecipeError, RowMeta};

/// How a `run` invocation behaves.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only this shard (an array worker); None = every shard, then finalize.
    pub shard: Option<ShardSpec>,
    pub cancel: Cancel,
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
    /// The `[gate]` verdict (None: no gate); a failed one means not shippable.
    pub gate: Option<crate::report::gate::GateOutcome>,
}

/// A recipe processor and the signal flag: a set flag stops the shard
/// between batches (finished work is already journaled).
struct Cancellable<'a, P: ?Sized>(&'a mut P, Cancel);

impl<P: Processor + ?Sized> Processor for Cancellable<'_, P> {
    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, ProcessError> {
        if self.1.is_set() {
            return Err(ProcessError::Cancelled);
        }
        self.0.process_batch(seeds)
    }
    fn tokens(&self) -> u64 {
        self.0.tokens()
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
/// this invocation ran them all. What the shards do is reported to `sink`
/// (progress, the metrics file: see [`super::metrics::MetricsSink`]).
pub fn run_job(
    job: &Job,
    opts: &RunOptions,
    sink: &mut dyn EventSink,
) -> Result<RunSummary, RecipeError> {
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
    let fingerprints = job
        .recipes
        .iter()
        .map(|r| recipe_fingerprint(job, r, engine.model_hash()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut summary = RunSummary::default();
    for (r, fingerprint) in job.recipes.iter().zip(&fingerprints) {
        for shard in shards_of(job, opts) {
            if opts.cancel.is_set() {
                return Err(RecipeError::Interrupted);
            }
            let run = ShardRun {
                job,
                recipe: r,
                fingerprint,
                meta: &meta,
                opts,
            };
            let outcome = run.run(shard, engine.as_mut(), sink)?;
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

/// The fingerprint of one recipe's shards: effective settings, the blake3 of
/// each seed file (in order), the model's blake3.
pub fn recipe_fingerprint(
    job: &Job,
    r: &ValidRecipe,
    model_hash: &str,
) -> Result<Fingerprint, RecipeError> {
    let seeds = hash_inputs(&r.spec.seeds)?;
    Ok(Fingerprint::new(
        job.recipe_settings(r),
        seeds,
        model_hash.to_string(),
    ))
}

/// Everything one shard run of one recipe needs besides the engine.
struct ShardRun<'a> {
    job: &'a Job,
    recipe: &'a ValidRecipe,
    fingerprint: &'a Fingerprint,
    meta: &'a RowMeta,
    opts: &'a RunOptions,
}

impl ShardRun<'_> {
    fn run(
        &self,
        shard: ShardSpec,
        engine: &mut dyn Engine,
        sink: &mut dyn EventSink,
    ) -> Result<ShardOutcome, RecipeError> {
        let ShardRun {
            job,
            recipe: r,
            fingerprint,
            meta,
            opts,
        } = *self;
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
        let mut sopts = ShardOptions::new(&job.file.out, kind, shard);
        sopts.flush_every = job.file.store.flush_every;
        // Validated finite and >= 0 when the job was parsed.
        sopts.flush_interval =
            Duration::try_from_secs_f64(job.file.store.flush_seconds).unwrap_or(Duration::ZERO);
        sopts.batch_seeds = job.file.store.batch_seeds.max(1);
        sopts.write = WriteOptions {
            row_group_rows: job.file.store.row_group_rows,
            ..WriteOptions::default()
        };
        sopts.fingerprint = fingerprint.clone();
        sopts.lease_ttl = job.file.store.lease_seconds;
        sink.event(&Event::ShardStarted {
            kind,
            shard,
            seeds: total,
            tokens: engine_tokens(engine),
        });
        let cancel = opts.cancel.clone();
        let seeds = Ingest::open(&r.spec.seeds, ingest_options(job, shard))?.take_while(within);
        let outcome = match kind {
            Recipe::OpenO1 => {
                let mut p = OpenO1 {
                    engine,
                    cfg: r.spec.open_o1.clone().unwrap_or_default(),
                    filters,
                    meta: meta.clone(),
                };
                run_shard_with(&sopts, seeds, &mut Cancellable(&mut p, cancel), sink)
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
                run_shard_with(&sopts, seeds, &mut Cancellable(&mut p, cancel), sink)
            }
            Recipe::MarcoCot => {
                let trees =
                    fsio::ensure_dir(&job.file.out, &Path::new("trees").join(shard.suffix()))?;
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
                run_shard_with(&sopts, seeds, &mut Cancellable(&mut p, cancel), sink)
            }
        };
        match outcome {
            Err(crate::store::StoreError::Processor {
                error: ProcessError::Cancelled,
                ..
            }) => Err(RecipeError::Interrupted),
            other => Ok(other?),
        }
    }
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

/// The completion marker of a finalize, `OUT/final/done.json`, written last:
/// downstream hand-off waits for it. Deterministic (no clock), so reruns
/// write the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMarker {
    pub format: String,
    /// blake3 of the job's effective settings.
    pub job: String,
    /// The key of this run's segment in the dedup index.
    pub segment: String,
    pub chains: u64,
    pub duplicates: u64,
    /// Files of `final/` and of the export, relative to their directories.
    pub files: Vec<CommittedFile>,
    pub export_files: Vec<CommittedFile>,
    /// Entries of the dedup index up to and including this run's segment
    /// (when there is an index): what this night compared against plus what
    /// it added. Later nights do not change it.
    pub index_entries: Option<u64>,
}

pub const FINAL_MARKER_FORMAT: &str = "cotforge-final/1";

/// Lock (and lease) of a shared resource for the whole finalize.
struct Held {
    _lock: FileLock,
    lease: Option<Lease>,
}

impl Held {
    fn take(
        lock: PathBuf,
        lease: PathBuf,
        what: &'static str,
        job: &Job,
    ) -> Result<Self, RecipeError> {
        let lock = FileLock::acquire_for(&lock, what)?;
        let lease = Lease::acquire_with(
            &lease,
            &job.fingerprint,
            job.file.store.lease_seconds,
            lock.flock_works,
        )?;
        Ok(Self { _lock: lock, lease })
    }
    fn check(&self) -> Result<(), RecipeError> {
        Ok(fence_of(&self.lease).check()?)
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Who this finalize is in the dedup index: the output directory (absolute as
/// written, so every node of a cluster agrees) and the fingerprints its shards
/// were made with. A rerun of the same night has the same key; another night,
/// or this directory refilled under another configuration, has another.
fn segment_key(job: &Job, shard_fingerprints: &[String]) -> [u8; 32] {
    let out = &job.file.out;
    let out_id = if out.is_absolute() {
        out.display().to_string()
    } else {
        std::fs::canonicalize(out)
            .unwrap_or_else(|_| out.clone())
            .display()
            .to_string()
    };
    let mut h = blake3::Hasher::new();
    h.update(b"cotforge-index-segment/1\0");
    h.update(out_id.as_bytes());
    for f in shard_fingerprints {
        h.update(b"\0");
        h.update(f.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// Every shard of a recipe must come from one configuration, and the one of
/// this job file; returns each recipe's fingerprint digest.
fn shard_fingerprints(
    job: &Job,
    paths: &[(Recipe, ShardPaths)],
) -> Result<Vec<String>, RecipeError> {
    let mut out = Vec::new();
    for r in &job.recipes {
        let want = job.recipe_settings(r);
        let mut digest: Option<(String, PathBuf)> = None;
        for (_, p) in paths.iter().filter(|(k, _)| *k == r.spec.kind) {
            let m: DoneMarker = read_json(&p.done())?;
            let Some(f) = m.fingerprint else { continue };
            if f.settings != want {
                let now = Fingerprint::new(want.clone(), f.seeds.clone(), f.model.clone());
                return Err(changed_error(&p.done(), "this shard", &now.changes_since(&f)).into());
            }
            match &digest {
                Some((d, first)) if *d != f.digest => {
                    return Err(RecipeError::Job(format!(
                        "{}: made from other seed files or another model than {} (fingerprint {} vs {}); \
                         rerun the shards of {} with one configuration (remove the odd shard's files) before finalizing",
                        p.done().display(),
                        first.display(),
                        &f.digest[..12],
                        &d[..12],
                        r.spec.kind
                    )))
                }
                Some(_) => {}
                None => digest = Some((f.digest.clone(), p.done())),
            }
        }
        out.push(digest.map(|d| d.0).unwrap_or_default());
    }
    Ok(out)
}

fn committed_in(dir: &Path, rel: &str) -> Result<CommittedFile, RecipeError> {
    let (h, n) = crate::store::blake3_output(&dir.join(rel))?;
    Ok(CommittedFile {
        name: rel.to_string(),
        rows: 0,
        bytes: n,
        blake3: h,
    })
}

/// `cotforge decontaminate` on a finalized output: flags chains (see
/// [`crate::stages::decontam::decontaminate_final`]), then brings
/// `final/done.json` up to date with the rewritten files, so a hand-off that
/// checks the marker's hashes sees the files as they are now.
pub fn decontaminate_output(
    out: &Path,
    cfg: &crate::stages::decontam::DecontamConfig,
    index: &Path,
    wopts: &WriteOptions,
) -> Result<crate::stages::decontam::DecontamOutcome, RecipeError> {
    let o = crate::stages::decontam::decontaminate_final(out, cfg, index, wopts)?;
    let final_dir = out.join("final");
    let marker_path = final_dir.join("done.json");
    if o.flagged > 0 && marker_path.is_file() {
        let mut marker: FinalMarker = read_json(&marker_path)?;
        let rewritten = [
            ("chains.parquet", (o.checked - o.flagged) as u64),
            (
                crate::stages::decontam::REJECTS_FILE,
                o.rejects_total as u64,
            ),
        ];
        for (name, rows) in rewritten {
            let f = CommittedFile {
                rows,
                ..committed_in(&final_dir, name)?
            };
            match marker.files.iter_mut().find(|x| x.name == name) {
                Some(x) => *x = f,
                None => marker.files.push(f),
            }
        }
        marker.chains = (o.checked - o.flagged) as u64;
        write_json(&marker_path, &marker)?;
    }
    Ok(o)
}

/// The merge step: needs every shard done. Dedups all chains (within and
/// across shards, and against the persistent index of earlier runs), writes
/// `OUT/final/` (kept chains + dedup rejects), the export, stats and report,
/// then the index, then `final/done.json`. Deterministic, so a rerun
/// rewrites the same bytes; see the module docs for the crash ordering.
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
    let final_dir = fsio::ensure_dir(out, Path::new("final"))?;
    let held = Held::take(
        out.join("finalize.lock"),
        out.join("finalize.lease"),
        "finalize of this output",
        job,
    )?;
    let fingerprints = shard_fingerprints(job, &paths)?;
    let segment = segment_key(job, &fingerprints);
    let mut shards: Vec<Vec<Chain>> = Vec::new();
    let mut rejects: Vec<Reject> = Vec::new();
    for (_, p) in &paths {
        shards.push(read_chains(&p.chains())?);
        rejects.extend(read_rejects(&p.rejects())?);
    }
    let before: usize = shards.iter().map(|s| s.len()).sum();
    let mut dedup_rejects = Vec::new();
    // (the index's lock, the index, whether this finalize changed it, its path,
    // its entries up to this run's segment)
    let mut index_state = None;
    if job.file.dedup.enabled {
        let dedup = job.file.dedup.params.build()?;
        match &job.file.dedup.index {
            Some(live) => {
                let lock = Held::take(
                    with_suffix(live, ".lock"),
                    with_suffix(live, ".lease"),
                    "the dedup index",
                    job,
                )?;
                crash::point("finalize.locked");
                let mut idx = dedup.open_index(live)?;
                let prior = idx.entries_before(&segment);
                let prior_len = prior.len();
                let (kept, rej, entries) = dedup.apply_shards_against(shards, prior);
                shards = kept;
                dedup_rejects = rej;
                let upto = (prior_len + entries.len()) as u64;
                let changed = idx.put_segment(segment, entries);
                index_state = Some((lock, idx, changed, live.clone(), upto));
            }
            None => {
                crash::point("finalize.locked");
                let (kept, rej) = dedup.apply_shards(shards, None);
                shards = kept;
                dedup_rejects = rej;
            }
        }
    }
    let mut chains: Vec<Chain> = shards.into_iter().flatten().collect();
    chains.sort_by(|a, b| a.id.cmp(&b.id));
    dedup_rejects.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
    let wopts = WriteOptions {
        row_group_rows: job.file.store.row_group_rows,
        ..WriteOptions::default()
    };
    // Decontamination (after dedup, before anything is shipped): writes final/rejected-decontaminate.parquet.
    held.check()?;
    let decontaminated = crate::stages::decontam::finalize_step(
        job.file.decontaminate.as_ref(),
        job.file.dedup.index.as_deref(),
        out,
        &final_dir,
        &mut chains,
        &wopts,
    )?;
    let decontaminated_rows = decontaminated.len() as u64;
    rejects.extend(decontaminated);
    held.check()?;
    let mut files = vec![write_parquet(
        &final_dir.join("chains.parquet"),
        chains_schema(),
        [chains_to_batch(&chains)],
        &wopts,
    )?];
    crash::point("final.chains");
    files.push(write_parquet(
        &final_dir.join("rejected-dedup.parquet"),
        rejects_schema(),
        [rejects_to_batch(&dedup_rejects)],
        &wopts,
    )?);
    crash::point("final.rejects");
    rejects.extend(dedup_rejects.iter().cloned());

    let export_dir = job.export_dir();
    let mut export_rows = 0;
    let mut export_files = Vec::new();
    if job.file.export.enabled {
        held.check()?;
        let s = crate::stages::export::export_out(
            &chains,
            &rejects,
            out,
            &export_dir,
            &job.file.export.options,
        )?;
        export_rows = s.rows();
        for (_, _, fs) in &s.splits {
            for f in fs {
                export_files.push(committed_in(&export_dir, f)?);
            }
        }
        for f in ["README.md", "dataset_info.json"] {
            export_files.push(committed_in(&export_dir, f)?);
        }
    }
    let fin = crate::report::finals::FinalReport::build(
        out,
        &chains,
        &rejects,
        &format!("cotforge report: {}", job.path.display()),
        job.file.gate.as_ref(),
    )?;
    let report = fin.write(&final_dir)?;
    crash::point("final.report");
    // The gate: SHIPPABLE, or GATE_FAILED with the reasons.
    let gate = fin.mark(&final_dir)?;
    crash::point("final.gate");
    for (name, rows) in [
        (crate::stages::decontam::REJECTS_FILE, decontaminated_rows),
        (crate::report::finals::RUN_METRICS, 0),
        (crate::report::gate::SHIPPABLE, 0),
        (crate::report::gate::GATE_FAILED, 0),
    ] {
        if final_dir.join(name).exists() {
            files.push(CommittedFile {
                rows,
                ..committed_in(&final_dir, name)?
            });
        }
    }

    // The index last: until here a crash leaves it as it was, and the rerun
    // (comparing against the same entries) writes the same output.
    let mut index_entries = None;
    if let Some((lock, idx, changed, live, upto)) = &index_state {
        if *changed {
            lock.check()?;
            crash::point("index.before_save");
            idx.save(live)?;
            crash::point("index.saved");
        }
        index_entries = Some(*upto);
    }
    held.check()?;
    let marker = FinalMarker {
        format: FINAL_MARKER_FORMAT.into(),
        job: job.fingerprint.clone(),
        segment: blake3::Hash::from(segment).to_hex().to_string(),
        chains: chains.len() as u64,
        duplicates: (before - chains.len()) as u64,
        files,
        export_files,
        index_entries,
    };
    write_json(&final_dir.join("done.json"), &marker)?;
    crash::point("final.marker");
    drop(index_state);
    drop(held);
    Ok(FinalSummary {
        chains: chains.len(),
        duplicates: before - chains.len(),
        export_dir,
        export_rows,
        report,
        stats: fin.stats,
        gate,
    })
}
