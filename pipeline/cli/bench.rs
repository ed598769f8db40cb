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
    /// MCTS throughput (seeds/hour, KV reuse, decode share, decode tok/s against
    /// llama-batched-bench TG) and the answer accuracy of each selection rule
    /// against one greedy chain of thought.
    Search(SearchBenchArgs),
    /// The MCTS of `bench search` over llama-server against the native engine
    /// (seeds/hour of both, prompt tokens sent, server cache reuse, a naive client's floor).
    Http(super::bench_http::HttpBenchArgs),
}

#[derive(Debug, Args)]
pub struct SearchBenchArgs {
    #[command(flatten)]
    pub search: super::search::SearchArgs,
    /// llama-batched-bench for the decode baseline (run before and after the
    /// search, npp/ntg 128 at the engine's n_parallel); omitted: no ratio.
    #[arg(long)]
    pub batched_bench: Option<PathBuf>,
    /// Skip the single greedy chain-of-thought baseline.
    #[arg(long)]
    pub no_greedy: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
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
    /// How cotforge itself was built (scripts/build.sh: native, portable or
    /// custom), printed and recorded in the JSON.
    #[arg(long, default_value = "unknown")]
    pub cotforge_build: String,
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

/// One llama.cpp build the engine bench compares against.
struct Baseline<'a> {
    name: &'static str,
    batched_bench: &'a Path,
    perplexity: &'a Path,
    /// S_TG per parallel level, one entry per round.
    tg: Vec<Vec<(usize, f64)>>,
    /// llama-perplexity tokens/s, one per round.
    ppl: Vec<f64>,
}

impl Baseline<'_> {
    fn tg_rounds(&self, p: usize) -> Vec<f64> {
        self.tg
            .iter()
            .filter_map(|r| r.iter().find(|(b, _)| *b == p).map(|x| x.1))
            .collect()
    }
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
        &t,
        "-kvu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let mut baselines = vec![Baseline {
        name: "portable",
        batched_bench: &a.batched_bench,
        perplexity: &a.perplexity,
        tg: Vec::new(),
        ppl: Vec::new(),
    }];
    if let (Some(bb), Some(ppl)) = (&a.native_batched_bench, &a.native_perplexity) {
        baselines.push(Baseline {
            name: "native",
            batched_bench: bb,
            perplexity: ppl,
            tg: Vec::new(),
            ppl: Vec::new(),
        });
    }
    let mut ours: Vec<Vec<bench::DecodeRun>> = Vec::new();
    let mut score: Vec<bench::ScoreRun> = Vec::new();
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
    let score_cfg = LlamaConfig {
        n_ctx: 512,
        n_batch: 512,
        n_ubatch: 512,
        n_parallel: 1,
        n_seq_max: 1,
        ..cfg.clone()
    };
    for round in 1..=a.rounds {
        // Alternate who goes first, so a drift in the machine's load over a
        // round does not favour one side.
        let ours_first = round % 2 == 0;
        let mut decode_ours = || -> anyhow::Result<()> {
            eprintln!("round {round}/{}: cotforge decode", a.rounds);
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
            Ok(())
        };
        if ours_first {
            decode_ours()?;
        }
        for b in baselines.iter_mut() {
            eprintln!(
                "round {round}/{}: llama-batched-bench ({})",
                a.rounds, b.name
            );
            b.tg.push(parse_batched_bench(&run_tool(b.batched_bench, &bb_args)?)?);
        }
        if !ours_first {
            decode_ours()?;
        }
        // Each round's figures as they come, so a cut-short run still tells.
        let last = |b: &Baseline| {
            b.tg.last()
                .map(|r| r.iter().map(|x| x.1).collect::<Vec<_>>())
        };
        eprintln!(
            "round {round}/{} S_TG at {npl}: {}, cotforge {:.1?}",
            a.rounds,
            baselines
                .iter()
                .map(|b| format!("{} {:.1?}", b.name, last(b).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
            ours.last()
                .map(|r| r.iter().map(|d| d.tg_tps).collect::<Vec<_>>())
                .unwrap_or_default()
        );
        if a.no_score {
            continue;
        }
        let mut score_ours = || -> anyhow::Result<()> {
            eprintln!("round {round}/{}: cotforge score", a.rounds);
            let mut e = LlamaEngine::load(&score_cfg)?;
            let toks = e.tokenize(&text, true)?;
            score.push(bench::score(&mut e, &toks, 512)?);
            Ok(())
        };
        if ours_first {
            score_ours()?;
        }
        for b in baselines.iter_mut() {
            eprintln!("round {round}/{}: llama-perplexity ({})", a.rounds, b.name);
            b.ppl
                .push(parse_perplexity(&run_tool(b.perplexity, &ppl_args)?)?);
        }
        if !ours_first {
            score_ours()?;
        }
    }
    let _ = std::fs::remove_file(&ppl_text);

    println!(
        "engine benchmark: {} rounds alternated, {} threads, npp {} ntg {}, unified KV on both sides; \
         cotforge build: {}; llama.cpp builds: {}",
        a.rounds,
        a.threads,
        a.npp,
        a.ntg,
        a.cotforge_build,
        baselines.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
    );
    let mut head = String::from("| parallel |");
    let mut rule = String::from("|---|");
    for b in &baselines {
        head += &format!(" llama-batched-bench ({}) S_TG t/s |", b.name);
        rule += "---|";
    }
    head += " cotforge decode t/s |";
    rule += "---|";
    for b in &baselines {
        head += &format!(" ratio vs {} |", b.name);
        rule += "---|";
    }
    println!("{head} cotforge decode share |");
    println!("{rule}---|");
    let mut decode_json = serde_json::Map::new();
    for (i, &p) in a.parallel.iter().enumerate() {
        let mine_rounds: Vec<f64> = ours.iter().map(|r| r[i].tg_tps).collect();
        let mine = median(mine_rounds.clone());
        let share = median(ours.iter().map(|r| r[i].tg_decode_share).collect());
        let mut row = format!("| {p} |");
        let mut ratios = String::new();
        let mut entry = serde_json::Map::new();
        for b in &baselines {
            let rounds = b.tg_rounds(p);
            let base = median(rounds.clone());
            row += &format!(" {base:.1} |");
            ratios += &format!(" {:.3} |", mine / base);
            entry.insert(
                b.name.into(),
                json!({"llama_batched_bench_tg": base, "ratio": mine / base, "rounds": rounds}),
            );
        }
        println!("{row} {mine:.1} |{ratios} {share:.3} |");
        entry.insert(
            "cotforge".into(),
            json!({"tg": mine, "decode_share": share, "rounds": mine_rounds}),
        );
        decode_json.insert(p.to_string(), entry.into());
    }
    let score_rounds: Vec<f64> = score.iter().map(|s| s.tps).collect();
    let mine = median(score_rounds.clone());
    let mut score_json = serde_json::Map::new();
    for b in baselines.iter().filter(|_| !a.no_score) {
        let base = median(b.ppl.clone());
        println!(
            "| scoring | llama-perplexity ({}) {base:.1} t/s | cotforge score {mine:.1} t/s | ratio {:.3} |",
            b.name,
            mine / base
        );
        score_json.insert(
            b.name.into(),
            json!({"llama_perplexity": base, "ratio": mine / base, "rounds": b.ppl}),
        );
    }
    score_json.insert(
        "cotforge".into(),
        json!({"tps": mine, "rounds": score_rounds, "tokens": score.first().map(|s| s.tokens)}),
    );
    let doc = json!({
        "model": a.model.display().to_string(),
        "threads": a.threads,
        "rounds": a.rounds,
        "npp": a.npp, "ntg": a.ntg,
        "cotforge_llama_cpp": "llama-cpp-2 =0.1.160 / llama-cpp-sys-2 =0.1.161 (vendored llama.cpp)",
        "cotforge_build": a.cotforge_build,
        "baseline_llama_cpp": baselines.iter().map(|b| (b.name.to_string(),
            json!(format!("{} ; {}", a.llama_cpp_source, tool_version(b.batched_bench))))).collect::<serde_json::Map<_, _>>(),
        "decode_tps": decode_json,
        "score_tps": score_json,
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

/// llama-batched-bench's arguments: unified KV, batch 2048, ubatch 512 (as cotforge's engine).
fn batched_bench_args(
    model: &Path,
    ctx: usize,
    npp: usize,
    ntg: usize,
    npl: &str,
    threads: usize,
) -> Vec<String> {
    let mut v: Vec<String> = vec!["-m".into(), model.display().to_string()];
    for (k, x) in [
        ("-c", ctx.to_string()),
        ("-b", "2048".into()),
        ("-ub", "512".into()),
        ("-npp", npp.to_string()),
        ("-ntg", ntg.to_string()),
        ("-npl", npl.to_string()),
        ("-t", threads.to_string()),
    ] {
        v.push(k.into());
        v.push(x);
    }
    v.push("-kvu".into());
    v
}

/// llama-batched-bench's TG at the engine's parallel level and threads,
/// prompt `npp` tokens per sequence, 128 generated.
fn batched_bench_tg(
    bin: &Path,
    e: &crate::engine::EngineConfig,
    threads: usize,
    npp: usize,
) -> anyhow::Result<f64> {
    let ctx = (e.n_parallel * (npp + 128) + 256).max(8192);
    let npl = e.n_parallel.to_string();
    let args = batched_bench_args(&e.model, ctx, npp, 128, &npl, threads);
    let rows = parse_batched_bench(&run_tool(bin, &args)?)?;
    rows.iter()
        .find(|(b, _)| *b == e.n_parallel)
        .map(|r| r.1)
        .context("llama-batched-bench printed no row for n_parallel")
}

/// Share of `results` whose chain at `pick` verifies; `None` picks count as wrong.
fn verified_share(
    results: &[crate::search::TreeResult],
    pick: impl Fn(&crate::search::TreeResult) -> Option<usize>,
) -> (usize, usize) {
    let ok = results
        .iter()
        .filter(|r| pick(r).is_some_and(|i| r.chains[i].verified == Some(true)))
        .count();
    (ok, results.len())
}

fn search(a: SearchBenchArgs) -> anyhow::Result<ExitCode> {
    use crate::search::{default_verifier, run_many, SelectRule, TreeSearch};
    use serde_json::json;
    let ecfg = a.search.engine.config();
    let dcfg = super::search::driver_config(&a.search);
    let threads = match ecfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    };
    // Two baselines: the engine bench's shape (npp 128), and the same KV
    // occupancy as the search had (each decode's attention walks the cells
    // in use, so longer contexts decode slower in llama.cpp too).
    let mut bb = Vec::new();
    let mut bb_matched = Vec::new();
    if let Some(bin) = &a.batched_bench {
        eprintln!("llama-batched-bench, npp 128 (before)");
        bb.push(batched_bench_tg(bin, &ecfg, threads, 128)?);
    }
    eprintln!("search");
    let mut run = super::search::search(&a.search)?;
    let rep = run.report.clone();
    // During TG, batched-bench holds n_parallel * (npp + 64) cells on average.
    let npp_matched = ((rep.mean_cells / ecfg.n_parallel.max(1) as f64) - 64.0)
        .round()
        .max(16.0) as usize;
    if let Some(bin) = &a.batched_bench {
        eprintln!("llama-batched-bench, npp 128 (after)");
        bb.push(batched_bench_tg(bin, &ecfg, threads, 128)?);
        for _ in 0..2 {
            eprintln!("llama-batched-bench, npp {npp_matched} (the search's mean KV occupancy)");
            bb_matched.push(batched_bench_tg(bin, &ecfg, threads, npp_matched)?);
        }
    }
    let greedy = if a.no_greedy {
        None
    } else {
        eprintln!("greedy chain of thought");
        // One child, one rollout, temperature 0, no reflection: a single greedy
        // chain with the same prompt, tags and answer check as the search.
        let mut g = run.cfg.clone();
        g.expand_k = 1;
        g.max_rollouts = 1;
        g.temperature = 0.0;
        g.answer_temperature = 0.0;
        g.reflection.policy = crate::search::ReflectionPolicy::Off;
        let g = g.build()?;
        let verifier = default_verifier();
        let trees = run
            .seeds
            .iter()
            .map(|s| TreeSearch::new(&*run.engine, s, &g, verifier.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let bar = super::search::seed_bar(trees.len(), a.search.quiet);
        let (res, _) = run_many(run.engine.as_mut(), trees, &dcfg, &mut |_, p| {
            super::search::tick_bar(&bar, p)
        })?;
        bar.finish_and_clear();
        Some(res)
    };

    let res = &run.results;
    let n = res.len();
    let n_par = ecfg.n_parallel;
    let chains: usize = res.iter().map(|r| r.chains.len()).sum();
    let mean_batch = rep.batch_sequences.iter().map(|&b| b as f64).sum::<f64>()
        / rep.batch_sequences.len().max(1) as f64;
    let full = rep
        .batch_sequences
        .iter()
        .filter(|&&b| b as usize >= n_par)
        .count() as f64
        / rep.batch_sequences.len().max(1) as f64;
    let ratio = |x: u64, y: u64| x as f64 / y.max(1) as f64;
    let decode_tps = rep.tokens_evaluated as f64 / rep.decode_seconds.max(1e-9);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let bb_tg = mean(&bb);
    let bb_matched_tg = mean(&bb_matched);
    let rule_names = [
        (SelectRule::MostVisited, "most_visited"),
        (SelectRule::HighestReward, "highest_reward"),
    ];
    let acc_rule: Vec<(&str, (usize, usize))> = rule_names
        .iter()
        .map(|&(rule, name)| (name, verified_share(res, |r| r.picks.get(rule))))
        .collect();
    let any = res
        .iter()
        .filter(|r| r.chains.iter().any(|c| c.verified == Some(true)))
        .count();
    let with_ref = res.iter().filter(|r| r.reference_answer.is_some()).count();
    let rewards = |want: bool| -> (f64, usize) {
        let v: Vec<f64> = res
            .iter()
            .flat_map(|r| r.chains.iter())
            .filter(|c| c.verified == Some(want))
            .map(|c| c.reward)
            .collect();
        (v.iter().sum::<f64>() / v.len().max(1) as f64, v.len())
    };
    let (r_ok, n_ok) = rewards(true);
    let (r_bad, n_bad) = rewards(false);
    let greedy_acc = greedy.as_ref().map(|g| verified_share(g, |r| r.selected));

    let c = &run.cfg;
    println!(
        "search benchmark: {n} seeds ({with_ref} with a reference answer), granularity {}, n_parallel {n_par}, {threads} threads, \
         rollouts {}, K {}, tree tokens {}, reflection {:?}, KV cell budget {:?}",
        c.granularity.as_str(), c.max_rollouts, c.expand_k, c.max_tree_tokens, c.reflection.policy,
        dcfg.max_cells
    );
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!("| wall | {:.1} s | |", rep.wall_seconds);
    println!(
        "| seeds/hour | {:.0} | |",
        n as f64 * 3600.0 / rep.wall_seconds.max(1e-9)
    );
    println!(
        "| chains | {chains} ({:.1}/seed) | |",
        chains as f64 / n.max(1) as f64
    );
    println!(
        "| evaluated / distinct tree tokens | {} / {} = {:.3} | <= 1.05 |",
        rep.tokens_evaluated,
        rep.distinct_tokens,
        ratio(rep.tokens_evaluated, rep.distinct_tokens)
    );
    println!(
        "| evaluated / resend-path-per-rollout | {:.3} | |",
        ratio(rep.tokens_evaluated, rep.resend_tokens)
    );
    println!(
        "| evaluated / resend-per-action | {:.3} | |",
        ratio(rep.tokens_evaluated, rep.resend_per_action_tokens)
    );
    println!(
        "| decode share of wall | {:.3} (sampling+confidence {:.3}) | >= 0.90 |",
        rep.decode_seconds / rep.wall_seconds.max(1e-9),
        rep.sample_seconds / rep.wall_seconds.max(1e-9)
    );
    println!(
        "| decode calls | {} (mean {mean_batch:.2} seqs/call, {:.1}% at >= n_parallel) | |",
        rep.decode_calls,
        100.0 * full
    );
    println!(
        "| forks / fresh / evictions / parks | {} / {} / {} / {} | |",
        rep.forks, rep.fresh_sequences, rep.evictions, rep.parks
    );
    println!(
        "| KV cells held: mean / peak | {:.0} / {} | |",
        rep.mean_cells, rep.peak_cells
    );
    println!("| cotforge decode tok/s (evaluated per decode second) | {decode_tps:.1} | |");
    if let Some(b) = bb_tg {
        println!("| llama-batched-bench TG at {n_par}, npp/ntg 128 (before, after: {bb:.1?}) | {b:.1} | |");
        println!(
            "| decode ratio vs npp 128 | {:.3} | >= 0.90 |",
            decode_tps / b
        );
    }
    if let Some(b) = bb_matched_tg {
        println!("| llama-batched-bench TG at {n_par}, npp {npp_matched} ntg 128 = the search's mean KV cells ({bb_matched:.1?}) | {b:.1} | |");
        println!(
            "| decode ratio vs matched occupancy | {:.3} | |",
            decode_tps / b
        );
    }
    for (name, (ok, tot)) in &acc_rule {
        println!("| accuracy, selected chain ({name}) | {ok}/{tot} | |");
    }
    println!("| accuracy, any terminal chain | {any}/{n} | |");
    if let Some((ok, tot)) = greedy_acc {
        println!("| accuracy, single greedy chain of thought | {ok}/{tot} | |");
    }
    println!("| mean reward, correct chains | {r_ok:.4} (n = {n_ok}) | |");
    println!("| mean reward, incorrect chains | {r_bad:.4} (n = {n_bad}) | |");

    let doc = json!({
        "model": ecfg.model.display().to_string(),
        "seeds": a.search.seeds.display().to_string(),
        "n_seeds": n, "threads": threads, "n_parallel": n_par, "n_ctx": ecfg.n_ctx,
        "search_config": serde_json::to_value(c)?,
        "driver_config": serde_json::to_value(&dcfg)?,
        "wall_seconds": rep.wall_seconds,
        "seeds_per_hour": n as f64 * 3600.0 / rep.wall_seconds.max(1e-9),
        "chains": chains,
        "tokens_evaluated": rep.tokens_evaluated,
        "tokens_sampled": rep.tokens_sampled,
        "distinct_tokens": rep.distinct_tokens,
        "evaluated_over_distinct": ratio(rep.tokens_evaluated, rep.distinct_tokens),
        "evaluated_over_resend_path": ratio(rep.tokens_evaluated, rep.resend_tokens),
        "evaluated_over_resend_per_action": ratio(rep.tokens_evaluated, rep.resend_per_action_tokens),
        "decode_share": rep.decode_seconds / rep.wall_seconds.max(1e-9),
        "sample_share": rep.sample_seconds / rep.wall_seconds.max(1e-9),
        "decode_calls": rep.decode_calls, "mean_seqs_per_call": mean_batch, "share_calls_full": full,
        "forks": rep.forks, "fresh": rep.fresh_sequences, "evictions": rep.evictions, "parks": rep.parks,
        "mean_cells": rep.mean_cells, "peak_cells": rep.peak_cells,
        "decode_tps": decode_tps,
        "batched_bench_tg": bb, "decode_ratio": bb_tg.map(|b| decode_tps / b),
        "batched_bench_matched_npp": npp_matched, "batched_bench_matched_tg": bb_matched,
        "decode_ratio_matched": bb_matched_tg.map(|b| decode_tps / b),
        "accuracy": {
            "most_visited": acc_rule[0].1.0, "highest_reward": acc_rule[1].1.0,
            "any_chain": any, "greedy": greedy_acc.map(|g| g.0), "of": n,
        },
        "mean_reward_correct": r_ok, "n_correct_chains": n_ok,
        "mean_reward_incorrect": r_bad, "n_incorrect_chains": n_bad,
    });
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
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
