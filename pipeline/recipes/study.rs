//! `cotforge search`: the `marco_cot` recipe ([`MarcoCot::run`]) on one seed
//! file into one directory, with every tree and every distinct chain written
//! out for study: the same search, answer check, reflection, ship policy and
//! filters as a job, so what is studied is what ships.
//!
//! Output: `results.jsonl` (one tree summary per seed), `chains.jsonl` (every
//! distinct chain with `selected`, `value`, `agreement`, `verified`,
//! `shipped` and `why`), `rejected.jsonl` (seeds that could not be searched:
//! ingest, input and search failures), `report.json` (driver counters),
//! `trees/<seed id>.json` (`cotforge inspect-tree`).

use std::path::{Path, PathBuf};

use crate::engine::Engine;
use crate::record::{Reject, Seed};
use crate::search::driver::Outcome;
use crate::search::{seeds_from_jsonl, DriverConfig, DriverReport, Progress, SearchConfig};
use crate::stages::filter::{FilterChain, FilterConfig};
use crate::store::parquet_io::commit_bytes;
use crate::store::{Ingest, IngestOptions, IngestRow};

use super::marco::{MarcoCot, SeedOutcome};
use super::{RecipeError, RowMeta};

/// What one `cotforge search` runs.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// A seed Parquet file, or JSONL (`id`, `prompt`/`question`, `reference_answer`/`answer`).
    pub seeds: PathBuf,
    /// Only the first N seeds.
    pub limit: Option<usize>,
    pub out: PathBuf,
    pub search: SearchConfig,
    pub driver: DriverConfig,
    /// The recipe's filters (a job's default list when it names none).
    pub filters: Vec<FilterConfig>,
    /// Stamped into the chain rows.
    pub created_at: i64,
}

/// A finished study run.
pub struct StudyRun {
    pub seeds: Vec<Seed>,
    pub outcomes: Vec<SeedOutcome>,
    pub report: DriverReport,
    /// Rows of the seed file the ingest refused.
    pub ingest_rejects: Vec<Reject>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> RecipeError {
    RecipeError::Job(format!("{}: {e}", path.display()))
}

/// Seeds of a seed Parquet file (through the store's ingest: rows it refuses
/// come back as rejects) or of JSONL.
pub fn read_seeds(
    path: &Path,
    limit: Option<usize>,
) -> Result<(Vec<Seed>, Vec<Reject>), RecipeError> {
    let mut seeds = Vec::new();
    let mut rejects = Vec::new();
    if path.extension().is_some_and(|e| e == "parquet") {
        for item in Ingest::open(&[path], IngestOptions::default())? {
            match item?.row {
                IngestRow::Seed(s) => seeds.push(s),
                IngestRow::Reject(r) => rejects.push(r),
            }
            if limit.is_some_and(|n| seeds.len() >= n) {
                break;
            }
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        seeds = seeds_from_jsonl(&text).map_err(|e| io(path, e))?;
    }
    if let Some(n) = limit {
        seeds.truncate(n);
    }
    Ok((seeds, rejects))
}

fn jsonl<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> Result<String, RecipeError> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(&r).map_err(|e| RecipeError::Job(e.to_string()))?);
        s.push('\n');
    }
    Ok(s)
}

/// Run the study and write its outputs under `opts.out`.
pub fn run_study(
    engine: &mut dyn Engine,
    opts: &StudyOptions,
    on_tree: &mut dyn FnMut(Outcome<'_>, &Progress),
) -> Result<StudyRun, RecipeError> {
    let search = opts.search.clone().build()?;
    let filters = FilterChain::from_configs(&opts.filters)?;
    let trees_dir = opts.out.join("trees");
    std::fs::create_dir_all(&trees_dir).map_err(|e| io(&trees_dir, e))?;
    let (seeds, ingest_rejects) = read_seeds(&opts.seeds, opts.limit)?;
    if seeds.is_empty() {
        return Err(RecipeError::Job(format!(
            "{}: no usable seeds ({} rows rejected at ingest)",
            opts.seeds.display(),
            ingest_rejects.len()
        )));
    }
    let meta = RowMeta {
        model: engine.model_name().to_string(),
        model_blake3: engine.model_hash().to_string(),
        created_at: opts.created_at,
    };
    let mut recipe = MarcoCot {
        engine,
        search,
        driver: opts.driver.clone(),
        verifier: crate::search::default_verifier(),
        filters,
        meta,
        trees_dir: Some(trees_dir),
        judge: None,
    };
    let (outcomes, report) = recipe.run(&seeds, on_tree)?;
    let write = |name: &str, text: String| -> Result<(), RecipeError> {
        let p = opts.out.join(name);
        commit_bytes(&p, text.as_bytes()).map_err(|e| io(&p, e))
    };
    write(
        "results.jsonl",
        jsonl(outcomes.iter().filter_map(|o| o.result.as_ref()))?,
    )?;
    write(
        "chains.jsonl",
        jsonl(outcomes.iter().flat_map(|o| o.chains.iter()))?,
    )?;
    // Seed-level rejects: chain-level decisions are in chains.jsonl.
    let seed_rejects = ingest_rejects.iter().chain(
        outcomes
            .iter()
            .flat_map(|o| o.processed.rejected.iter())
            .filter(|r| r.chain_id.is_none()),
    );
    write("rejected.jsonl", jsonl(seed_rejects)?)?;
    let mut summary = report.clone();
    summary.steps.clear();
    summary.batch_sequences.clear();
    write(
        "report.json",
        serde_json::to_string_pretty(&summary).map_err(|e| RecipeError::Job(e.to_string()))?,
    )?;
    Ok(StudyRun {
        seeds,
        outcomes,
        report,
        ingest_rejects,
    })
}
