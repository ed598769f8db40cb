//! `cotforge search` (the `marco_cot` recipe on one seed file, every tree and
//! chain written out: `recipes::study`) and `cotforge inspect-tree` (draw a
//! tree JSON in the terminal).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::engine_args::EngineArgs;
use crate::recipes::job::default_filters;
use crate::recipes::study::{run_study, StudyOptions, StudyRun};
use crate::record::Recipe;
use crate::search::render::render_tree;
use crate::search::{
    DriverConfig, Granularity, ReflectionPolicy, SearchConfig, SelectRule, ShipPolicy, TreeExport,
    ValueSpec,
};

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Seeds: a seed Parquet file (`cotforge seeds import` writes them; bad rows
    /// go to OUT/rejected.jsonl) or JSONL with `id`, `prompt` or `question`,
    /// optional `reference_answer` or `answer`.
    #[arg(long)]
    pub seeds: PathBuf,
    /// Search settings as TOML (a `SearchConfig`); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Action granularity: step, mini-step-32, mini-step-64, token.
    #[arg(long)]
    pub granularity: Option<Granularity>,
    /// Rollouts per tree.
    #[arg(long)]
    pub rollouts: Option<u32>,
    /// Children per expansion (K).
    #[arg(long)]
    pub expand_k: Option<u32>,
    #[arg(long)]
    pub max_depth: Option<u32>,
    /// Most tokens sampled per tree.
    #[arg(long)]
    pub max_tree_tokens: Option<u32>,
    /// Reflection policy: off, on_wrong, on_low_reward, always.
    #[arg(long)]
    pub reflection: Option<ReflectionPolicy>,
    /// Selected chain: most_visited, highest_reward or majority_vote.
    #[arg(long)]
    pub select: Option<SelectRule>,
    /// Value function: confidence, verifier, self_consistency, judge (mixes: --config).
    #[arg(long, value_parser = parse_value)]
    pub value: Option<ValueSpec>,
    /// What ships: selected, verified, top_k, all (default: verified with a reference answer).
    #[arg(long)]
    pub ship: Option<ShipPolicy>,
    /// Root seed of all sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only the first N seeds.
    #[arg(long)]
    pub limit: Option<usize>,
    /// KV cells held before the least recently used cached tree nodes are
    /// dropped (re-evaluated if needed again). Every decode walks the cells in
    /// use, so a bounded cache decodes faster. Default: start at 256 per
    /// parallel sequence (tuned on SmolLM2-135M) and grow by what evictions
    /// cost; 0 = no budget.
    #[arg(long)]
    pub max_cells: Option<usize>,
    /// Keep --max-cells fixed (by default it grows by what evictions cost in re-evaluation).
    #[arg(long)]
    pub fixed_cells: bool,
    /// Output directory: results.jsonl, chains.jsonl (every distinct chain with
    /// selected, value, agreement, verified, shipped, why), rejected.jsonl,
    /// report.json, trees/<id>.json.
    #[arg(long, default_value = "out/search")]
    pub out: PathBuf,
    /// Unix time stamped into chain rows (default: SOURCE_DATE_EPOCH or 0, for reproducible output).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub created_at: Option<i64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct InspectTreeArgs {
    /// A tree JSON written by `cotforge search` (out/trees/<id>.json).
    pub file: PathBuf,
    /// Characters of node text shown per line.
    #[arg(long, default_value_t = 70)]
    pub width: usize,
    /// Deepest level drawn.
    #[arg(long)]
    pub max_depth: Option<usize>,
}

pub(crate) fn search_config(a: &SearchArgs) -> anyhow::Result<SearchConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let t =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            SearchConfig::from_toml(&t).with_context(|| format!("in {}", p.display()))?
        }
        None => SearchConfig::default(),
    };
    if let Some(g) = a.granularity {
        c.granularity = g;
    }
    if let Some(v) = a.rollouts {
        c.max_rollouts = v;
    }
    if let Some(v) = a.expand_k {
        c.expand_k = v;
    }
    if let Some(v) = a.max_depth {
        c.max_depth = v;
    }
    if let Some(v) = a.max_tree_tokens {
        c.max_tree_tokens = v;
    }
    if let Some(v) = a.reflection {
        c.reflection.policy = v;
    }
    if let Some(v) = a.select {
        c.select = v;
    }
    if let Some(v) = &a.value {
        c.value = v.clone();
    }
    if let Some(v) = a.ship {
        c.ship = Some(v);
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    Ok(c.build()?)
}

fn parse_value(s: &str) -> Result<ValueSpec, String> {
    s.parse::<crate::search::ValueKind>().map(ValueSpec::one)
}

/// Run the study the arguments describe and write its outputs under `--out`.
pub fn search(a: &SearchArgs) -> anyhow::Result<StudyRun> {
    let opts = StudyOptions {
        seeds: a.seeds.clone(),
        limit: a.limit,
        out: a.out.clone(),
        search: search_config(a)?,
        driver: driver_config(a),
        filters: default_filters(Recipe::MarcoCot),
        created_at: a.created_at.unwrap_or(0),
    };
    let mut engine = a.engine.build()?;
    let bar = seed_bar(0, a.quiet);
    let run = run_study(engine.as_mut(), &opts, &mut |_, p| tick_bar(&bar, p))
        .with_context(|| format!("searching {}", a.seeds.display()))?;
    bar.finish_and_clear();
    Ok(run)
}

/// The scheduler settings the flags describe.
pub(crate) fn driver_config(a: &SearchArgs) -> DriverConfig {
    let cells = a.max_cells.unwrap_or(256 * a.engine.n_parallel);
    DriverConfig {
        max_batch_tokens: a.engine.n_batch,
        max_cells: (cells > 0).then_some(cells),
        grow_cells: !a.fixed_cells,
        ..Default::default()
    }
}

/// The progress bar of every command that runs trees.
pub(crate) fn seed_bar(n: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} seeds  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("starting");
    bar
}

pub(crate) fn tick_bar(bar: &ProgressBar, p: &crate::search::Progress) {
    let secs = p.elapsed_seconds.max(1e-9);
    bar.set_length(p.trees_total as u64);
    bar.set_position(p.trees_done as u64);
    bar.set_message(format!(
        "{:.0} tok/s sampled, {:.0} tok/s evaluated{}",
        p.tokens_sampled as f64 / secs,
        p.tokens_evaluated as f64 / secs,
        if p.trees_failed > 0 {
            format!(", {} failed", p.trees_failed)
        } else {
            String::new()
        }
    ));
}

pub fn run(a: SearchArgs) -> anyhow::Result<ExitCode> {
    let StudyRun {
        outcomes, report, ..
    } = search(&a)?;
    let chains: usize = outcomes.iter().map(|o| o.chains.len()).sum();
    let shipped: usize = outcomes.iter().map(|o| o.processed.accepted.len()).sum();
    let hours = report.wall_seconds / 3600.0;
    eprintln!(
        "{} seeds, {chains} chains ({shipped} would ship) in {:.1}s ({:.0} seeds/hour); {} tokens sampled, {} evaluated \
         ({:.2}x distinct tree tokens, {:.2}x of resend-path-per-rollout, {:.2}x of per-action); decode {:.0}% of wall; out: {}",
        outcomes.len(),
        report.wall_seconds,
        outcomes.len() as f64 / hours.max(1e-12),
        report.tokens_sampled,
        report.tokens_evaluated,
        report.tokens_evaluated as f64 / report.distinct_tokens.max(1) as f64,
        report.tokens_evaluated as f64 / report.resend_tokens.max(1) as f64,
        report.tokens_evaluated as f64 / report.resend_per_action_tokens.max(1) as f64,
        100.0 * report.decode_seconds / report.wall_seconds.max(1e-12),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(a: InspectTreeArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let t: TreeExport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cotforge tree JSON", a.file.display()))?;
    print!("{}", render_tree(&t, a.width, a.max_depth));
    Ok(ExitCode::SUCCESS)
}
