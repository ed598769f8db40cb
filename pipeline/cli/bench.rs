//! `cotforge bench engine`: cotforge against llama.cpp's own tools on the same
//! model, threads and parallelism, alternated for several rounds because this
//! class of machine swings ±20% between runs. Prints medians and ratios.
#![cfg_attr(not(feature = "llama"), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decode and scoring throughput against llama-batched-bench and llama-perplexity.
    Engine(EngineBenchArgs),
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
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// S_TG per parallel level from llama-batched-bench's markdown table.
fn parse_batched_bench(out: &str) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells.iter().any(|c| c == "S_TG t/s") {
            header = Some(cells);
            continue;
        }
        let Some(h) = &header else { continue };
        let col = |name: &str| h.iter().position(|c| c == name);
        let (Some(b), Some(s)) = (col("B"), col("S_TG t/s")) else {
            continue;
        };
        if let (Some(Ok(b)), Some(Ok(s))) = (
            cells.get(b).map(|x| x.parse::<usize>()),
            cells.get(s).map(|x| x.parse::<f64>()),
        ) {
            rows.push((b, s));
        }
    }
    if rows.is_empty() {
        bail!("no S_TG rows in llama-batched-bench output:\n{out}");
    }
    Ok(rows)
}

/// Tokens per second of llama-perplexity's prompt evaluation.
fn parse_perplexity(out: &str) -> anyhow::Result<f64> {
    // llama_perf_context_print: prompt eval time = 4526.83 ms / 1024 tokens (...)
    for line in out.lines() {
        if let Some(rest) = line.split("prompt eval time =").nth(1) {
            let mut it = rest.split_whitespace();
            let ms: f64 = it.next().context("perplexity: no time")?.parse()?;
            let _ms_unit = it.next();
            let _slash = it.next();
            let toks: f64 = it.next().context("perplexity: no token count")?.parse()?;
            return Ok(toks / (ms / 1000.0));
        }
    }
    // Newer builds print no perf line without --perf: use the log timestamps
    // (`M.SS.mmm.uuu`) of "calculating perplexity over N chunks, n_ctx=C" and "Final estimate".
    let stamp = |line: &str| -> Option<f64> {
        let t: Vec<f64> = line
            .split_whitespace()
            .next()?
            .split('.')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        (t.len() == 4).then(|| t[0] * 60.0 + t[1] + t[2] / 1e3 + t[3] / 1e6)
    };
    let start = out
        .lines()
        .find(|l| l.contains("calculating perplexity over"));
    let end = out.lines().find(|l| l.contains("Final estimate"));
    if let (Some(s), Some(e)) = (start, end) {
        let num_after = |key: &str| -> Option<f64> {
            s.split(key)
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        // stdout's progress can glue onto stderr's line: take the stamp right before the message.
        let end_stamp = e
            .split(" I Final estimate")
            .next()
            .and_then(|p| p.split_whitespace().last());
        if let (Some(t0), Some(t1), Some(chunks), Some(n_ctx)) = (
            stamp(s),
            end_stamp.and_then(stamp),
            num_after("over "),
            num_after("n_ctx="),
        ) {
            return Ok(chunks * n_ctx / (t1 - t0).max(1e-9));
        }
    }
    bail!("no 'prompt eval time' line in llama-perplexity output:\n{out}")
}

fn run_tool(bin: &Path, args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{} failed ({}):\n{text}", bin.display(), out.status);
    }
    Ok(text)
}

fn tool_version(bin: &Path) -> String {
    run_tool(bin, &["--version".into()])
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.contains("version"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(feature = "llama")]
fn engine(a: EngineBenchArgs) -> anyhow::Result<ExitCode> {
    use crate::engine::{bench, ChatMessage, Engine, LlamaConfig, LlamaEngine};
    use serde_json::json;
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    let text = std::fs::read_to_string(&a.score_text)
        .with_context(|| format!("reading {}", a.score_text.display()))?;
    let pmax = a.parallel.iter().copied().max().unwrap_or(1);
    let t = a.threads.to_string();
    let npl = a
        .parallel
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let bb_args: Vec<String> = [
        "-m",
        &a.model.display().to_string(),
        "-c",
        "8192",
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        &a.npp.to_string(),
        "-ntg",
        &a.ntg.to_string(),
        "-npl",
        &npl,
        "-t",
        &t,
        "-kvu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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
        &t,
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
        "cotforge_llama_cpp": "llama-cpp-2 =0.1.160 / llama-cpp-sys-2 =0.1.161 (vendored llama.cpp)",
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
    bail!("built without the `llama` feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_batched_bench_table() {
        let out = "main: n_kv_max = 8192\n\n|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n|   128 |    128 |    1 |    256 |    0.455 |   281.30 |    1.204 |   106.34 |    1.659 |   154.33 |\n|   128 |    128 |    4 |   1024 |    1.895 |   270.15 |    3.721 |   137.60 |    5.616 |   182.33 |\n";
        assert_eq!(
            parse_batched_bench(out).unwrap(),
            vec![(1, 106.34), (4, 137.60)]
        );
        assert!(parse_batched_bench("garbage").is_err());
    }

    #[test]
    fn parses_perplexity_timing() {
        let out = "llama_perf_context_print: prompt eval time =    4526.83 ms /  1024 tokens (    4.42 ms per token,   226.21 tokens per second)";
        assert!((parse_perplexity(out).unwrap() - 1024.0 / 4.52683).abs() < 1e-6);
    }

    #[test]
    fn parses_perplexity_log_timestamps() {
        let out = "0.00.218.068 I perplexity: calculating perplexity over 15 chunks, n_ctx=512, batch_size=512, n_seq=1\n0.01.949.051 I perplexity: 1.73 seconds per pass - ETA 0.25.377.711 I Final estimate: PPL = 4.5876 +/- 0.16878\n";
        let tps = parse_perplexity(out).unwrap();
        assert!(
            (tps - 15.0 * 512.0 / (25.377711 - 0.218068)).abs() < 1e-6,
            "{tps}"
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
