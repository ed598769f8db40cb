//! `cotforge bench engine`: cotforge's decode and scoring throughput against
//! llama.cpp's own `llama-batched-bench` and `llama-perplexity` on the same
//! model, threads and parallelism, alternated for several rounds because this
//! class of machine swings ±20% between runs; medians and ratios.
#![cfg_attr(not(feature = "llama"), allow(dead_code))]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::BenchError;

/// What `bench engine` runs.
#[derive(Debug, Clone)]
pub struct EngineBenchOptions {
    pub model: PathBuf,
    pub threads: usize,
    pub rounds: usize,
    /// Parallel levels (sequences per decode call).
    pub parallel: Vec<usize>,
    pub npp: usize,
    pub ntg: usize,
    pub batched_bench: PathBuf,
    pub perplexity: PathBuf,
    /// Where the baseline llama.cpp came from (recorded).
    pub llama_cpp_source: String,
    /// Text both sides score (at least 2 chunks of 512 tokens).
    pub score_text: String,
}

/// Decode throughput at one parallel level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeRow {
    pub parallel: usize,
    pub llama_batched_bench_tg: f64,
    pub cotforge: f64,
    pub ratio: f64,
    pub decode_share: f64,
    pub rounds_baseline: Vec<f64>,
    pub rounds_cotforge: Vec<f64>,
}

/// Scoring throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub llama_perplexity: f64,
    pub cotforge: f64,
    pub ratio: f64,
    pub rounds_baseline: Vec<f64>,
    pub rounds_cotforge: Vec<f64>,
    pub tokens: Option<usize>,
}

/// Everything `bench engine` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineBenchReport {
    pub model: String,
    pub threads: usize,
    pub rounds: usize,
    pub npp: usize,
    pub ntg: usize,
    pub cotforge_llama_cpp: String,
    pub baseline_llama_cpp: String,
    pub decode: Vec<DecodeRow>,
    pub score: ScoreRow,
}

/// Run the rounds; `log` gets progress lines.
#[cfg(feature = "llama")]
pub fn run_engine_bench(
    o: &EngineBenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<EngineBenchReport, BenchError> {
    use super::tools::{
        batched_bench_args, median, parse_batched_bench, parse_perplexity, run_tool, tool_version,
        COTFORGE_LLAMA_CPP,
    };
    use crate::engine::{bench, ChatMessage, Engine, LlamaConfig, LlamaEngine};
    if o.rounds == 0 {
        return Err(BenchError::Config("--rounds must be at least 1".into()));
    }
    let pmax = o.parallel.iter().copied().max().unwrap_or(1);
    let npl = o
        .parallel
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let bb_args = batched_bench_args(&o.model, 8192, o.npp, o.ntg, &npl, o.threads);
    let ppl_text = std::env::temp_dir().join(format!("cotforge-score-{}.txt", std::process::id()));
    std::fs::write(&ppl_text, &o.score_text).map_err(|e| BenchError::io(&ppl_text, e))?;
    let ppl_args: Vec<String> = [
        "-m",
        &o.model.display().to_string(),
        "-f",
        &ppl_text.display().to_string(),
        "-c",
        "512",
        "-b",
        "512",
        "-ub",
        "512",
        "-t",
        &o.threads.to_string(),
        "-kvu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut bb: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut ours: Vec<Vec<bench::DecodeRun>> = Vec::new();
    let mut ppl: Vec<f64> = Vec::new();
    let mut score: Vec<bench::ScoreRun> = Vec::new();
    for round in 1..=o.rounds {
        log(&format!("round {round}/{}: llama-batched-bench", o.rounds));
        bb.push(parse_batched_bench(&run_tool(&o.batched_bench, &bb_args)?)?);
        log(&format!("round {round}/{}: cotforge decode", o.rounds));
        let cfg = LlamaConfig {
            model: o.model.clone(),
            n_ctx: 8192,
            n_batch: 2048,
            n_ubatch: 512,
            n_parallel: pmax,
            // llama.cpp needs two sequence slots even for one stream of decode.
            n_seq_max: pmax.max(2),
            threads: o.threads,
            ..Default::default()
        };
        let mut e = LlamaEngine::load(&cfg)?;
        // The prompt: real text, npp tokens, like batched-bench's synthetic prompt.
        let msg = e.apply_chat_template(&[ChatMessage::user(&o.score_text)])?;
        let toks = e.tokenize(&msg, true)?;
        if toks.len() < o.npp {
            return Err(BenchError::Config(format!(
                "score text too short for npp {}",
                o.npp
            )));
        }
        let prompt = &toks[..o.npp];
        let mut r = Vec::new();
        for &p in &o.parallel {
            r.push(bench::decode(&mut e, prompt, p, o.ntg, round as u64)?);
        }
        ours.push(r);
        drop(e);
        log(&format!("round {round}/{}: llama-perplexity", o.rounds));
        ppl.push(parse_perplexity(&run_tool(&o.perplexity, &ppl_args)?)?);
        log(&format!("round {round}/{}: cotforge score", o.rounds));
        let cfg = LlamaConfig {
            n_ctx: 512,
            n_batch: 512,
            n_ubatch: 512,
            n_parallel: 1,
            n_seq_max: 1,
            ..cfg
        };
        let mut e = LlamaEngine::load(&cfg)?;
        let toks = e.tokenize(&o.score_text, true)?;
        score.push(bench::score(&mut e, &toks, 512)?);
    }
    let _ = std::fs::remove_file(&ppl_text);
    let decode = o
        .parallel
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let rounds_baseline: Vec<f64> = bb
                .iter()
                .filter_map(|r| r.iter().find(|(b, _)| *b == p).map(|x| x.1))
                .collect();
            let rounds_cotforge: Vec<f64> = ours.iter().map(|r| r[i].tg_tps).collect();
            let base = median(rounds_baseline.clone());
            let mine = median(rounds_cotforge.clone());
            DecodeRow {
                parallel: p,
                llama_batched_bench_tg: base,
                cotforge: mine,
                ratio: mine / base,
                decode_share: median(ours.iter().map(|r| r[i].tg_decode_share).collect()),
                rounds_baseline,
                rounds_cotforge,
            }
        })
        .collect();
    let rounds_cotforge: Vec<f64> = score.iter().map(|s| s.tps).collect();
    let (base, mine) = (median(ppl.clone()), median(rounds_cotforge.clone()));
    Ok(EngineBenchReport {
        model: o.model.display().to_string(),
        threads: o.threads,
        rounds: o.rounds,
        npp: o.npp,
        ntg: o.ntg,
        cotforge_llama_cpp: COTFORGE_LLAMA_CPP.into(),
        baseline_llama_cpp: format!(
            "{} ; {}",
            o.llama_cpp_source,
            tool_version(&o.batched_bench)
        ),
        decode,
        score: ScoreRow {
            llama_perplexity: base,
            cotforge: mine,
            ratio: mine / base,
            rounds_baseline: ppl,
            rounds_cotforge,
            tokens: score.first().map(|s| s.tokens),
        },
    })
}

/// Built without llama.cpp: nothing to measure.
#[cfg(not(feature = "llama"))]
pub fn run_engine_bench(
    _o: &EngineBenchOptions,
    _log: &mut dyn FnMut(&str),
) -> Result<EngineBenchReport, BenchError> {
    Err(BenchError::Config(
        "built without the `llama` feature".into(),
    ))
}

/// The report as a Markdown table.
pub fn render(r: &EngineBenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "engine benchmark: {} rounds alternated, {} threads, npp {} ntg {}, unified KV on both sides",
        r.rounds, r.threads, r.npp, r.ntg
    );
    let _ = writeln!(s, "| parallel | llama-batched-bench S_TG t/s | cotforge decode t/s | ratio | cotforge decode share |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for d in &r.decode {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.3} | {:.3} |",
            d.parallel, d.llama_batched_bench_tg, d.cotforge, d.ratio, d.decode_share
        );
    }
    let _ = writeln!(
        s,
        "| scoring | llama-perplexity {:.1} t/s | cotforge score {:.1} t/s | {:.3} | |",
        r.score.llama_perplexity, r.score.cotforge, r.score.ratio
    );
    s
}
