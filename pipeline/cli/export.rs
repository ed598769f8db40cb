//! `cotforge export`, `cotforge stats`, `cotforge report`: read an output
//! directory's chain (and reject) Parquet files and turn them into SFT data,
//! a terminal summary, or an offline HTML report.
//!
//! OUT is scanned recursively (not read through the shard manifests, so a
//! copied or partial tree reads too):
//! every `*.parquet` with chain columns whose name does not start with
//! `rejected` is a chain file; reject files are found by their columns (see
//! `report::io::scan_out_dir`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::record::Recipe;
use crate::report::finals::against_previous;
use crate::report::viewer::{ViewerData, ViewerOptions};
use crate::report::{html, io, OutData, Summary};
use crate::stages::export::{describe, export_out, ExportConfig, ExportFormat, SplitSpec};
use crate::stages::Style;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output directory of a run (chain Parquet files, found recursively).
    pub out: PathBuf,
    /// Directory to write the dataset into (`data/`, README.md, dataset_info.json).
    #[arg(long = "to")]
    pub to: PathBuf,
    /// Column layout: messages | prompt-completion | alpaca | sharegpt (SFT, the
    /// shipped chains), preference | kto | prm (from the search trees).
    #[arg(long, default_value = "messages")]
    pub format: ExportFormat,
    /// Assistant text: marco (<Thought>/<Output>) | think (<think>) | plain (answer only).
    #[arg(long, default_value = "marco")]
    pub style: Style,
    /// Held-out split as name=fraction (repeatable); the rest is `train`.
    #[arg(long = "split", default_value = "validation=0.02")]
    pub split: Vec<SplitSpec>,
    /// Only these recipes (comma-separated: open_o1, marco_cot, instruction).
    #[arg(long, value_delimiter = ',')]
    pub recipes: Vec<Recipe>,
    #[arg(long, default_value_t = 100_000)]
    pub max_rows_per_file: usize,
    #[arg(long, default_value_t = 1_000)]
    pub row_group_rows: usize,
    /// Dataset name (card title, LLaMA-Factory entry prefix).
    #[arg(long, default_value = "cotforge")]
    pub name: String,
    /// Salt of the id hash that assigns splits.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// preference: at most this many pairs per seed.
    #[arg(long, default_value_t = ExportConfig::default().max_pairs_per_seed)]
    pub max_pairs_per_seed: usize,
    /// preference / kto without a reference answer: how far below the selected
    /// chain's value a chain must be to count as worse.
    #[arg(long, default_value_t = ExportConfig::default().min_value_margin)]
    pub min_value_margin: f64,
    /// prm: a step is labelled good when its estimate exceeds this.
    #[arg(long, default_value_t = ExportConfig::default().prm_threshold)]
    pub prm_threshold: f64,
}

pub fn run_export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let cfg = ExportConfig {
        format: a.format,
        style: a.style,
        splits: a.split.into_iter().filter(|s| s.fraction > 0.0).collect(),
        recipes: a.recipes,
        max_rows_per_file: a.max_rows_per_file,
        row_group_rows: a.row_group_rows,
        name: a.name,
        split_seed: a.split_seed,
        max_pairs_per_seed: a.max_pairs_per_seed,
        min_value_margin: a.min_value_margin,
        prm_threshold: a.prm_threshold,
    };
    cfg.validate()?;
    let files =
        io::scan_out_dir(&a.out).with_context(|| format!("scanning {}", a.out.display()))?;
    if files.chains.is_empty() {
        anyhow::bail!("no chain Parquet files under {}", a.out.display());
    }
    let chains = io::read_all_chains(&files.chains)?;
    // The tree formats also pair with the chains the ship policy held back.
    let rejects = if cfg.format.from_trees() {
        io::read_all_rejects(&files.rejects)?
    } else {
        Vec::new()
    };
    tracing::info!(
        files = files.chains.len(),
        rows = chains.len(),
        rejects = rejects.len(),
        "read chains"
    );
    let summary = export_out(&chains, &rejects, &a.out, &a.to, &cfg)
        .with_context(|| format!("exporting to {}", a.to.display()))?;
    print!("{}", describe(&summary, &a.to));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Output directory of a run.
    pub out: PathBuf,
}

pub fn run_stats(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let s =
        Summary::from_out_dir(&a.out).with_context(|| format!("reading {}", a.out.display()))?;
    print!("{}", s.table());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output directory of a run.
    pub out: PathBuf,
    /// The HTML file to write (self-contained, opens offline).
    #[arg(long)]
    pub html: PathBuf,
    #[arg(long)]
    pub title: Option<String>,
    /// The previous night's output: adds the night-over-night section.
    #[arg(long)]
    pub previous: Option<PathBuf>,
    /// Rows embedded in the data viewer (a deterministic sample beyond this).
    #[arg(long, default_value_t = ViewerOptions::default().max_rows)]
    pub viewer_rows: usize,
}

pub fn run_report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let data = OutData::read(&a.out).with_context(|| format!("reading {}", a.out.display()))?;
    let s = data.summary();
    let title = a
        .title
        .unwrap_or_else(|| format!("cotforge report: {}", a.out.display()));
    let comparison = match &a.previous {
        Some(p) => {
            let (c, missing) = against_previous(&s, p, &a.out.display().to_string())?;
            anyhow::ensure!(
                missing.is_none(),
                "--previous {}: no such output directory",
                p.display()
            );
            c
        }
        None => None,
    };
    let opts = ViewerOptions {
        max_rows: a.viewer_rows,
        ..ViewerOptions::default()
    };
    let viewer = ViewerData::build(&data.chains, &data.rejects, Some(&a.out), &opts);
    let page = html::Page {
        summary: &s,
        title: &title,
        viewer: Some(&viewer),
        comparison: comparison.as_ref(),
        gate: None,
    }
    .render();
    crate::store::fsio::commit_bytes(&a.html, page.as_bytes())
        .with_context(|| format!("writing {}", a.html.display()))?;
    println!("wrote {}", a.html.display());
    Ok(ExitCode::SUCCESS)
}
