//! `cotforge bench ...`: flags in, the library benchmarks (`crate::bench`)
//! run, tables and JSON out. `bench engine` alternates cotforge with
//! llama.cpp's own tools for several rounds because this class of machine
//! swings ±20% between runs, and prints medians and ratios.
#![cfg_attr(not(feature = "llama"), allow(dead_code))]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::bench::quality::{
    render as render_quality, run_quality, write_json, QualityConfig, QualityOptions,
};
use crate::bench::search::{render as render_search, run_search_bench, SearchBenchOptions};
use crate::recipes::job::default_filters;
use crate::recipes::study::StudyOptions;
use crate::record::Recipe;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decode and scoring throughput against llama-batched-bench and llama-perplexity.
    Engine(EngineBenchArgs),
    /// MCTS throughput (seeds/hour, KV reuse, decode share, decode tok/s against
    /// llama-batched-bench TG) and the answer accuracy of each selection rule
    /// against one greedy chain of thought.
    Search(SearchBenchArgs),
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
    #[arg(long, default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
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
    /// Path of llama.cpp's llama-batched-bench (scripts/bench.sh builds it).
    #[arg(long)]
    pub batched_bench: PathBuf,
    /// Path of llama.cpp's llama-perplexity.
    #[arg(long)]
    pub perplexity: PathBuf,
    /// Where the baseline llama.cpp came from (recorded in the JSON).
    #[arg(long, default_value = "unknown")]
    pub llama_cpp_source: String,
    /// Text scored by both sides (needs at least 2 chunks of 512 tokens).
    #[arg(long, default_value = "benches/data/score.txt")]
    pub score_text: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Engine(a) => engine(a),
        BenchCommand::Search(a) => search(a),
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

#[cfg(feature = "llama")]
fn engine(a: EngineBenchArgs) -> anyhow::Result<ExitCode> {
    use crate::bench::tools::{
        batched_bench_args, median, parse_batched_bench, parse_perplexity, run_tool, tool_version,
        COTFORGE_LLAMA_CPP,
    };
    use crate::engine::{bench, ChatMessage, Engine, LlamaConfig, LlamaEngine};
    use serde_json::json;
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    let text = std::fs::read_to_string(&a.score_text)
        .with_context(|| format!("reading {}", a.score_text.display()))?;
    let pmax = a.parallel.iter().copied().max().unwrap_or(1);
    let npl = a
        .parallel
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let bb_args = batched_bench_args(&a.model, 8192, a.npp, a.ntg, &npl, a.threads);
    let ppl_text = std::env::temp_dir().join(format!("cotforge-score-{}.txt", std::process::id()));
    std::fs::write(&ppl_text, &text)?;
    let ppl_args: Vec<String> = [
        "-m",
        &a.model.display().to_string(),
        "-f",
        &ppl_text.display().to_string(),
        "-c",
        "512",
        "-b",
        "512",
        "-ub",
        "512",
        "-t",
        &a.threads.to_string(),
        "-kvu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let mut bb: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut ours: Vec<Vec<bench::DecodeRun>> = Vec::new();
    let mut ppl: Vec<f64> = Vec::new();
    let mut score: Vec<bench::ScoreRun> = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}: llama-batched-bench", a.rounds);
        bb.push(parse_batched_bench(&run_tool(&a.batched_bench, &bb_args)?)?);
        eprintln!("round {round}/{}: cotforge decode", a.rounds);
        let cfg = LlamaConfig {
            model: a.model.clone(),
            n_ctx: 8192,
            n_batch: 2048,
            n_ubatch: 512,
            n_parallel: pmax,
            n_seq_max: pmax.max(2),
            threads: a.threads,
            ..Default::default()
        };
        let mut e = LlamaEngine::load(&cfg)?;
        // The prompt: real text, npp tokens, like batched-bench's synthetic prompt.
        let msg = e.apply_chat_template(&[ChatMessage::new("user", &text)])?;
        let toks = e.tokenize(&msg, true)?;
        anyhow::ensure!(
            toks.len() >= a.npp,
            "score text too short for npp {}",
            a.npp
        );
        let prompt = &toks[..a.npp];
        let mut r = Vec::new();
        for &p in &a.parallel {
            r.push(bench::decode(&mut e, prompt, p, a.ntg, round as u64)?);
        }
        ours.push(r);
        drop(e);
        eprintln!("round {round}/{}: llama-perplexity", a.rounds);
        ppl.push(parse_perplexity(&run_tool(&a.perplexity, &ppl_args)?)?);
        eprintln!("round {round}/{}: cotforge score", a.rounds);
        let cfg = LlamaConfig {
            n_ctx: 512,
            n_batch: 512,
            n_ubatch: 512,
            n_parallel: 1,
            n_seq_max: 1,
            ..cfg
        };
        let mut e = LlamaEngine::load(&cfg)?;
        let toks = e.tokenize(&text, true)?;
        score.push(bench::score(&mut e, &toks, 512)?);
    }
    let _ = std::fs::remove_file(&ppl_text);

    println!("engine benchmark: {} rounds alternated, {} threads, npp {} ntg {}, unified KV on both sides", a.rounds, a.threads, a.npp, a.ntg);
    println!("| parallel | llama-batched-bench S_TG t/s | cotforge decode t/s | ratio | cotforge decode share |");
    println!("|---|---|---|---|---|");
    let mut decode_json = serde_json::Map::new();
    let mut ratios = Vec::new();
    for (i, &p) in a.parallel.iter().enumerate() {
        let base = median(
            bb.iter()
                .filter_map(|r| r.iter().find(|(b, _)| *b == p).map(|x| x.1))
                .collect(),
        );
        let mine = median(ours.iter().map(|r| r[i].tg_tps).collect());
        let share = median(ours.iter().map(|r| r[i].tg_decode_share).collect());
        let ratio = mine / base;
        ratios.push((p, ratio));
        println!("| {p} | {base:.1} | {mine:.1} | {ratio:.3} | {share:.3} |");
        decode_json.insert(
            p.to_string(),
            json!({"llama_batched_bench_tg": base, "cotforge": mine, "ratio": ratio, "decode_share": share,
                   "rounds_baseline": bb.iter().filter_map(|r| r.iter().find(|(b, _)| *b == p).map(|x| x.1)).collect::<Vec<_>>(),
                   "rounds_cotforge": ours.iter().map(|r| r[i].tg_tps).collect::<Vec<_>>()}),
        );
    }
    let base = median(ppl.clone());
    let mine = median(score.iter().map(|s| s.tps).collect());
    println!(
        "| scoring | llama-perplexity {base:.1} t/s | cotforge score {mine:.1} t/s | {:.3} | |",
        mine / base
    );
    let doc = json!({
        "model": a.model.display().to_string(),
        "threads": a.threads,
        "rounds": a.rounds,
        "npp": a.npp, "ntg": a.ntg,
        "cotforge_llama_cpp": COTFORGE_LLAMA_CPP,
        "baseline_llama_cpp": format!("{} ; {}", a.llama_cpp_source, tool_version(&a.batched_bench)),
        "decode_tps": decode_json,
        "score_tps": {"llama_perplexity": base, "cotforge": mine, "ratio": mine / base,
                      "rounds_baseline": ppl, "rounds_cotforge": score.iter().map(|s| s.tps).collect::<Vec<_>>(),
                      "tokens": score.first().map(|s| s.tokens)},
    });
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "llama"))]
fn engine(_a: EngineBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("built without the `llama` feature")
}
