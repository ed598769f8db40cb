//! `cotforge decontaminate OUT --against FILE...` and `cotforge compare OUT_A OUT_B`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::recipes::run::decontaminate_output;
use crate::report::compare::compare;
use crate::report::Summary;
use crate::stages::decontam::{DecontamConfig, DEFAULT_N, REJECTS_FILE};
use crate::store::parquet_io::WriteOptions;

#[derive(Debug, Args)]
pub struct DecontaminateArgs {
    /// A finalized output directory (its final/chains.parquet is checked).
    pub out: PathBuf,
    /// Benchmark files: Parquet, JSONL or JSON arrays (repeat, or list several).
    #[arg(long = "against", required = true, num_args = 1..)]
    pub against: Vec<PathBuf>,
    /// The text column (JSON: a dotted path); default: the first of
    /// question, prompt, problem, text, instruction.
    #[arg(long)]
    pub column: Option<String>,
    /// Words per n-gram.
    #[arg(long, default_value_t = DEFAULT_N)]
    pub n: usize,
    /// The n-gram index file (kept for the next call); default OUT/decontam.idx.
    #[arg(long)]
    pub index: Option<PathBuf>,
}

pub fn run_decontaminate(a: DecontaminateArgs) -> anyhow::Result<ExitCode> {
    let cfg = DecontamConfig {
        against: a.against,
        column: a.column,
        n: a.n,
        index: a.index,
    };
    cfg.validate()?;
    let index = cfg.index_path(None, &a.out);
    let o = decontaminate_output(&a.out, &cfg, &index, &WriteOptions::default())
        .with_context(|| format!("decontaminating {}", a.out.display()))?;
    println!(
        "{} rows flagged: {} of {} shipped chains share a {}-word n-gram with a benchmark",
        o.flagged, o.flagged, o.checked, cfg.n
    );
    println!(
        "rejects: {} in {} (stage decontaminate)",
        o.rejects_total,
        a.out.join("final").join(REJECTS_FILE).display()
    );
    println!(
        "index: {} ({}), {} n-grams from {} benchmark rows ({} shorter than {} words cannot match)",
        o.index.display(),
        if o.index_built { "built" } else { "reused" },
        o.ngrams,
        o.benchmark_rows,
        o.short_items,
        cfg.n
    );
    if o.flagged > 0 && a.out.join("export").is_dir() {
        println!(
            "note: {} predates this; re-export with `cotforge export {} --to DIR`",
            a.out.join("export").display(),
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The earlier night's output directory.
    pub a: PathBuf,
    /// The later night's output directory.
    pub b: PathBuf,
}

pub fn run_compare(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let sa = Summary::from_out_dir(&a.a).with_context(|| format!("reading {}", a.a.display()))?;
    let sb = Summary::from_out_dir(&a.b).with_context(|| format!("reading {}", a.b.display()))?;
    let c = compare(
        &sa,
        &sb,
        &a.a.display().to_string(),
        &a.b.display().to_string(),
    );
    print!("{}", c.table());
    Ok(ExitCode::SUCCESS)
}
