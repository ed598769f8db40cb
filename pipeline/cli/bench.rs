//! `cotforge bench ...`: flags in, the library benchmarks (`crate::bench`)
//! run, tables and JSON out. `bench engine` alternates cotforge with
//! llama.cpp's own tools for several rounds because this class of machine
//! swings ±20% between runs, and prints medians and ratios.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use strum::VariantNames;

use crate::bench::engine::{
    render as render_engine, run_engine_bench, Baseline, CpuBuild, EngineBenchOptions,
};
use crate::bench::quality::{
    render as render_quality, run_quality, write_json, QualityConfig, QualityOptions,
};
use crate::bench::search::{render as render_search, run_search_bench, SearchBenchOptions};
use crate::recipes::job::default_filters;
use crate::recipes::study::StudyOptions;
use crate::record::Recipe;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decode and scoring throughput against llama-batched-bench and
    /// llama-perplexity (a portable and optionally a native llama.cpp build).
    Engine(EngineBenchArgs),
    /// MCTS throughput (seeds/hour, KV reuse, decode share, decode tok/s against
    /// llama-batched-bench TG) and the answer accuracy of each selection rule
    /// against one greedy chain of thought.
    Search(SearchBenchArgs),
    /// The MCTS of `bench search` over llama-server against the native engine
    /// (seeds/hour of both, prompt tokens sent, server cache reuse, a naive client's floor).
    Http(super::bench_http::HttpBenchArgs),
    /// Synthesis quality: greedy CoT, best-of-N and the MCTS under each value
    /// function and selection rule on the same seeds and token budget.
    Quality(QualityBenchArgs),
}

#[derive(Debug, Args)]
pub struct SearchBenchArgs {
    #[command(flatten)]
    pub search: super::search::SearchArgs,
    /// llama-batched-bench for the decode baseline (run before and after the
    /// search, npp/ntg 128 at the engine's n_parallel, and at the search's
    /// mean KV occupancy); omitted: no ratio.
    #[arg(long)]
    pub batched_bench: Option<PathBuf>,
    /// Skip the single greedy chain-of-thought baseline.
    #[arg(long)]
    pub no_greedy: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QualityBenchArgs {
    #[command(flatten)]
    pub engine: super::engine_args::EngineArgs,
    /// The arms and their shared settings (benches/data/quality.toml).
    #[arg(long, default_value = "benches/data/quality.toml")]
    pub config: PathBuf,
    /// A seed set as NAME=FILE (seed Parquet or JSONL); repeatable.
    #[arg(long = "seeds", value_parser = parse_set, required = true)]
    pub sets: Vec<(String, PathBuf)>,
    /// Per-arm records (resumed from on a rerun), quality.json and quality.md.
    #[arg(long, default_value = "target/bench/quality")]
    pub out: PathBuf,
    /// Only the first N seeds of each set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run only these arms (comma-separated); the report covers all on disk.
    #[arg(long, value_delimiter = ',')]
    pub arms: Option<Vec<String>>,
    /// llama-batched-bench, for the decode ratio at each arm's KV occupancy.
    #[arg(long)]
    pub batched_bench: Option<PathBuf>,
}

fn parse_set(s: &str) -> Result<(String, PathBuf), String> {
    let (n, p) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE, got {s:?}"))?;
    Ok((n.to_string(), PathBuf::from(p)))
}

#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    #[arg(long, default_value = crate::engine::DEFAULT_MODEL)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Parallel levels (sequences per decode call).
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub parallel: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub npp: usize,
    #[arg(long, default_value_t = 128)]
    pub ntg: usize,
    /// Path of llama.cpp's llama-batched-bench, the portable build
    /// (GGML_NATIVE=OFF; `scripts/llama-tools.sh portable`).
    #[arg(long)]
    pub batched_bench: PathBuf,
    /// Path of llama.cpp's llama-perplexity.
    #[arg(long)]
    pub perplexity: PathBuf,
    /// A second llama-batched-bench, built with GGML_NATIVE=ON (the build a
    /// llama.cpp user has; `scripts/llama-tools.sh native`), alternated with the
    /// rest and given its own ratio column.
    #[arg(long, requires = "native_perplexity")]
    pub native_batched_bench: Option<PathBuf>,
    /// The llama-perplexity of that native build.
    #[arg(long, requires = "native_batched_bench")]
    pub native_perplexity: Option<PathBuf>,
    /// Where the baseline llama.cpp came from (recorded in the JSON).
    #[arg(long, default_value = "unknown")]
    pub llama_cpp_source: String,
    /// How cotforge itself was built (scripts/build.sh sets COTFORGE_BUILD_CPU),
    /// printed and recorded in the JSON.
    #[arg(
        long,
        default_value_t = CpuBuild::Unknown,
        value_parser = PossibleValuesParser::new(<CpuBuild as VariantNames>::VARIANTS)
            .try_map(|s| s.parse::<CpuBuild>()),
    )]
    pub cotforge_build: CpuBuild,
    /// Text scored by both sides (needs at least 2 chunks of 512 tokens).
    #[arg(long, default_value = "benches/data/score.txt")]
    pub score_text: PathBuf,
    /// Decode only: skip the scoring comparison (llama-perplexity), which
    /// takes about as long as the decode part on a busy machine.
    #[arg(long)]
    pub no_score: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Engine(a) => engine(a),
        BenchCommand::Search(a) => search(a),
        BenchCommand::Http(a) => super::bench_http::run(a),
        BenchCommand::Quality(a) => quality(a),
    }
}

fn write_text(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    crate::store::parquet_io::commit_bytes(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn search(a: SearchBenchArgs) -> anyhow::Result<ExitCode> {
    let opts = SearchBenchOptions {
        engine: a.search.engine.config(),
        study: StudyOptions {
            seeds: a.search.seeds.clone(),
            limit: a.search.limit,
            out: a.search.out.clone(),
            search: super::search::search_config(&a.search)?,
            driver: super::search::driver_config(&a.search),
            filters: default_filters(Recipe::MarcoCot),
            created_at: a.search.created_at.unwrap_or(0),
        },
        batched_bench: a.batched_bench.clone(),
        greedy: !a.no_greedy,
    };
    let mut engine = a.search.engine.build()?;
    let r = run_search_bench(engine.as_mut(), &opts, &mut |m| eprintln!("{m}"))?;
    print!("{}", render_search(&r));
    if let Some(p) = &a.json {
        write_text(p, &serde_json::to_string_pretty(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn quality(a: QualityBenchArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let config =
        QualityConfig::from_toml(&text).with_context(|| format!("in {}", a.config.display()))?;
    let opts = QualityOptions {
        config,
        sets: a.sets.clone(),
        out: a.out.clone(),
        limit: a.limit,
        only: a.arms.clone(),
        batched_bench: a.batched_bench.clone(),
        engine: a.engine.config(),
    };
    let mut engine = a.engine.build()?;
    let r = run_quality(engine.as_mut(), &opts, &mut |m| eprintln!("[quality] {m}"))?;
    let table = render_quality(&r);
    print!("{table}");
    write_json(&a.out.join("quality.json"), &r)?;
    write_text(&a.out.join("quality.md"), &table)?;
    Ok(ExitCode::SUCCESS)
}

fn engine(a: EngineBenchArgs) -> anyhow::Result<ExitCode> {
    let score_text = std::fs::read_to_string(&a.score_text)
        .with_context(|| format!("reading {}", a.score_text.display()))?;
    let mut baselines = vec![Baseline {
        build: CpuBuild::Portable,
        batched_bench: a.batched_bench.clone(),
        perplexity: a.perplexity.clone(),
    }];
    if let (Some(bb), Some(ppl)) = (&a.native_batched_bench, &a.native_perplexity) {
        baselines.push(Baseline {
            build: CpuBuild::Native,
            batched_bench: bb.clone(),
            perplexity: ppl.clone(),
        });
    }
    let opts = EngineBenchOptions {
        model: a.model.clone(),
        threads: a.threads,
        rounds: a.rounds,
        parallel: a.parallel.clone(),
        npp: a.npp,
        ntg: a.ntg,
        baselines,
        llama_cpp_source: a.llama_cpp_source.clone(),
        cotforge_build: a.cotforge_build,
        score: !a.no_score,
        score_text,
    };
    let r = run_engine_bench(&opts, &mut |m| eprintln!("{m}"))?;
    print!("{}", render_engine(&r));
    if let Some(p) = &a.json {
        write_text(p, &serde_json::to_string_pretty(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
