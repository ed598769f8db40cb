//! `cotforge bench engine`: cotforge's decode and scoring throughput against
//! llama.cpp's own `llama-batched-bench` and `llama-perplexity` on the same
//! model, threads and parallelism; medians and ratios. Against one or more
//! llama.cpp builds (portable `GGML_NATIVE=OFF`, and native `GGML_NATIVE=ON`,
//! the build a llama.cpp user has), alternated with cotforge for several
//! rounds with the order reversed every round, because this class of machine
//! swings ±20% between runs and a drift in load must not favour one side.
#![cfg_attr(not(feature = "llama"), allow(dead_code))]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::tools::median;
use super::BenchError;
use crate::engine::bench::{DecodeRun, ScoreRun};

/// How a binary's CPU kernels were chosen (scripts/build.sh for cotforge,
/// scripts/llama-tools.sh for llama.cpp's tools).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CpuBuild {
    /// `GGML_NATIVE=OFF`: AVX2 kernels, what llama-cpp-sys-2 builds without
    /// `-C target-cpu=native`.
    Portable,
    /// `GGML_NATIVE=ON` / `-C target-cpu=native`: every instruction the
    /// build machine has (AVX-512, AMX where it runs).
    Native,
    /// RUSTFLAGS set `target-cpu` itself.
    Custom,
    /// Not said.
    #[default]
    Unknown,
}

impl CpuBuild {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One llama.cpp build the bench compares against.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub build: CpuBuild,
    pub batched_bench: PathBuf,
    pub perplexity: PathBuf,
}

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
    /// At least one; each gets its own columns and ratio.
    pub baselines: Vec<Baseline>,
    /// Where the baseline llama.cpp came from (recorded).
    pub llama_cpp_source: String,
    /// How cotforge itself was built (recorded and printed).
    pub cotforge_build: CpuBuild,
    /// Also compare scoring (llama-perplexity); off, decode only, which
    /// halves a run on a busy machine.
    pub score: bool,
    /// Text both sides score (at least 2 chunks of 512 tokens).
    pub score_text: String,
}

/// One baseline build as recorded in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineInfo {
    pub build: CpuBuild,
    /// The source and `--version` of its llama-batched-bench.
    pub llama_cpp: String,
}

/// One baseline's figure for a row: its median, cotforge's ratio to it, rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineFigure {
    pub build: CpuBuild,
    /// llama-batched-bench S_TG or llama-perplexity tokens/s (median).
    pub tps: f64,
    /// cotforge's median over this one.
    pub ratio: f64,
    pub rounds: Vec<f64>,
}

/// Decode throughput at one parallel level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeRow {
    pub parallel: usize,
    /// cotforge's generated tokens/s (median).
    pub cotforge: f64,
    pub decode_share: f64,
    pub rounds_cotforge: Vec<f64>,
    /// llama-batched-bench's S_TG per baseline build.
    pub baselines: Vec<BaselineFigure>,
}

/// Scoring throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub cotforge: f64,
    pub rounds_cotforge: Vec<f64>,
    pub tokens: Option<usize>,
    /// llama-perplexity's tokens/s per baseline build.
    pub baselines: Vec<BaselineFigure>,
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
    pub cotforge_build: CpuBuild,
    pub baselines: Vec<BaselineInfo>,
    pub decode: Vec<DecodeRow>,
    /// `None` for a decode-only run.
    pub score: Option<ScoreRow>,
}

/// Who runs in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Cotforge,
    /// Index into the baselines.
    Baseline(usize),
}

/// The order of a round (1-based): cotforge last, then first, and so on,
/// with the baselines reversed too, so every side sees both ends of a round.
fn round_order(round: usize, n_baselines: usize) -> Vec<Side> {
    let mut v: Vec<Side> = (0..n_baselines).map(Side::Baseline).collect();
    v.push(Side::Cotforge);
    if round.is_multiple_of(2) {
        v.reverse();
    }
    v
}

/// The raw measurements of all rounds, before medians.
#[derive(Debug, Default)]
struct Measured {
    /// Per baseline, per round: S_TG per parallel level.
    tg: Vec<Vec<Vec<(usize, f64)>>>,
    /// Per baseline, per round: llama-perplexity tokens/s.
    ppl: Vec<Vec<f64>>,
    /// Per round: one decode run per parallel level.
    ours: Vec<Vec<DecodeRun>>,
    /// Per round.
    score: Vec<ScoreRun>,
}

impl Measured {
    fn new(n_baselines: usize) -> Self {
        Measured {
            tg: vec![Vec::new(); n_baselines],
            ppl: vec![Vec::new(); n_baselines],
            ..Default::default()
        }
    }

    /// The last round's S_TG of every side, as a progress line.
    fn last_round_line(&self, o: &EngineBenchOptions, round: usize) -> String {
        let npl: Vec<String> = o.parallel.iter().map(|p| p.to_string()).collect();
        let mut parts: Vec<String> = o
            .baselines
            .iter()
            .zip(&self.tg)
            .map(|(b, tg)| {
                let last: Vec<f64> = tg
                    .last()
                    .map(|r| r.iter().map(|x| x.1).collect())
                    .unwrap_or_default();
                format!("{} {last:.1?}", b.build.as_str())
            })
            .collect();
        let ours: Vec<f64> = self
            .ours
            .last()
            .map(|r| r.iter().map(|d| d.tg_tps).collect())
            .unwrap_or_default();
        parts.push(format!("cotforge {ours:.1?}"));
        format!(
            "round {round}/{} S_TG at {}: {}",
            o.rounds,
            npl.join(","),
            parts.join(", ")
        )
    }
}

/// Medians and ratios of the measurements; `llama_cpp` says where a
/// baseline build came from (its source and `--version`).
fn summarize(
    o: &EngineBenchOptions,
    m: &Measured,
    llama_cpp: &dyn Fn(&Baseline) -> String,
) -> EngineBenchReport {
    let baselines = o
        .baselines
        .iter()
        .map(|b| BaselineInfo {
            build: b.build,
            llama_cpp: llama_cpp(b),
        })
        .collect();
    let figure = |build: CpuBuild, rounds: Vec<f64>, mine: f64| {
        let tps = median(rounds.clone());
        BaselineFigure {
            build,
            tps,
            ratio: mine / tps,
            rounds,
        }
    };
    let decode = o
        .parallel
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let rounds_cotforge: Vec<f64> = m.ours.iter().map(|r| r[i].tg_tps).collect();
            let mine = median(rounds_cotforge.clone());
            let baselines = o
                .baselines
                .iter()
                .zip(&m.tg)
                .map(|(b, tg)| {
                    let rounds = tg
                        .iter()
                        .filter_map(|r| r.iter().find(|(n, _)| *n == p).map(|x| x.1))
                        .collect();
                    figure(b.build, rounds, mine)
                })
                .collect();
            DecodeRow {
                parallel: p,
                cotforge: mine,
                decode_share: median(m.ours.iter().map(|r| r[i].tg_decode_share).collect()),
                rounds_cotforge,
                baselines,
            }
        })
        .collect();
    let score = o.score.then(|| {
        let rounds_cotforge: Vec<f64> = m.score.iter().map(|s| s.tps).collect();
        let mine = median(rounds_cotforge.clone());
        ScoreRow {
            cotforge: mine,
            tokens: m.score.first().map(|s| s.tokens),
            baselines: o
                .baselines
                .iter()
                .zip(&m.ppl)
                .map(|(b, ppl)| figure(b.build, ppl.clone(), mine))
                .collect(),
            rounds_cotforge,
        }
    });
    EngineBenchReport {
        model: o.model.display().to_string(),
        threads: o.threads,
        rounds: o.rounds,
        npp: o.npp,
        ntg: o.ntg,
        cotforge_llama_cpp: super::tools::COTFORGE_LLAMA_CPP.into(),
        cotforge_build: o.cotforge_build,
        baselines,
        decode,
        score,
    }
}

/// Run the rounds; `log` gets progress lines, and each round's S_TG as it
/// comes, so a run cut short still tells.
#[cfg(feature = "llama")]
pub fn run_engine_bench(
    o: &EngineBenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<EngineBenchReport, BenchError> {
    use super::tools::{
        batched_bench_args, parse_batched_bench, parse_perplexity, run_tool, tool_version,
    };
    use crate::engine::{bench, ChatMessage, Engine, LlamaConfig, LlamaEngine};
    if o.rounds == 0 {
        return Err(BenchError::Config("--rounds must be at least 1".into()));
    }
    if o.baselines.is_empty() {
        return Err(BenchError::Config(
            "bench engine needs at least one llama.cpp build to compare against".into(),
        ));
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
    let score_cfg = LlamaConfig {
        n_ctx: 512,
        n_batch: 512,
        n_ubatch: 512,
        n_parallel: 1,
        n_seq_max: 1,
        ..cfg.clone()
    };
    let mut m = Measured::new(o.baselines.len());
    let rounds = o.rounds;
    let result = (|| -> Result<(), BenchError> {
        for round in 1..=rounds {
            let order = round_order(round, o.baselines.len());
            for &side in &order {
                match side {
                    Side::Baseline(i) => {
                        let b = &o.baselines[i];
                        log(&format!(
                            "round {round}/{rounds}: llama-batched-bench ({})",
                            b.build.as_str()
                        ));
                        m.tg[i].push(parse_batched_bench(&run_tool(&b.batched_bench, &bb_args)?)?);
                    }
                    Side::Cotforge => {
                        log(&format!("round {round}/{rounds}: cotforge decode"));
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
                        m.ours.push(r);
                    }
                }
            }
            log(&m.last_round_line(o, round));
            if !o.score {
                continue;
            }
            for &side in &order {
                match side {
                    Side::Baseline(i) => {
                        let b = &o.baselines[i];
                        log(&format!(
                            "round {round}/{rounds}: llama-perplexity ({})",
                            b.build.as_str()
                        ));
                        m.ppl[i].push(parse_perplexity(&run_tool(&b.perplexity, &ppl_args)?)?);
                    }
                    Side::Cotforge => {
                        log(&format!("round {round}/{rounds}: cotforge score"));
                        let mut e = LlamaEngine::load(&score_cfg)?;
                        let toks = e.tokenize(&o.score_text, true)?;
                        m.score.push(bench::score(&mut e, &toks, 512)?);
                    }
                }
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&ppl_text);
    result?;
    Ok(summarize(o, &m, &|b| {
        format!(
            "{} ; {}",
            o.llama_cpp_source,
            tool_version(&b.batched_bench)
        )
    }))
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

/// The report as a Markdown table: per parallel level, each build's S_TG,
/// cotforge's, and a ratio column per build.
pub fn render(r: &EngineBenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let builds: Vec<&str> = r.baselines.iter().map(|b| b.build.as_str()).collect();
    let _ = writeln!(
        s,
        "engine benchmark: {} rounds alternated (order reversed each round), {} threads, npp {} ntg {}, \
         unified KV on both sides; cotforge build: {}; llama.cpp builds: {}",
        r.rounds,
        r.threads,
        r.npp,
        r.ntg,
        r.cotforge_build.as_str(),
        builds.join(", ")
    );
    let mut head = String::from("| parallel |");
    for b in &builds {
        let _ = write!(head, " llama-batched-bench ({b}) S_TG t/s |");
    }
    head += " cotforge decode t/s |";
    for b in &builds {
        let _ = write!(head, " ratio vs {b} |");
    }
    let _ = writeln!(s, "{head} cotforge decode share |");
    let _ = writeln!(s, "|---|{}---|---|", "---|---|".repeat(builds.len()));
    for d in &r.decode {
        let mut row = format!("| {} |", d.parallel);
        for b in &d.baselines {
            let _ = write!(row, " {:.1} |", b.tps);
        }
        let _ = write!(row, " {:.1} |", d.cotforge);
        for b in &d.baselines {
            let _ = write!(row, " {:.3} |", b.ratio);
        }
        let _ = writeln!(s, "{row} {:.3} |", d.decode_share);
    }
    if let Some(sc) = &r.score {
        for b in &sc.baselines {
            let _ = writeln!(
                s,
                "| scoring | llama-perplexity ({}) {:.1} t/s | cotforge score {:.1} t/s | ratio {:.3} |",
                b.build.as_str(),
                b.tps,
                sc.cotforge,
                b.ratio
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(builds: &[CpuBuild], score: bool) -> EngineBenchOptions {
        EngineBenchOptions {
            model: "m.gguf".into(),
            threads: 2,
            rounds: 3,
            parallel: vec![1, 8],
            npp: 128,
            ntg: 128,
            baselines: builds
                .iter()
                .map(|&build| Baseline {
                    build,
                    batched_bench: "bb".into(),
                    perplexity: "ppl".into(),
                })
                .collect(),
            llama_cpp_source: "src".into(),
            cotforge_build: CpuBuild::Native,
            score,
            score_text: String::new(),
        }
    }

    fn run(parallel: usize, tg_tps: f64) -> DecodeRun {
        DecodeRun {
            parallel,
            pp_tps: 0.0,
            tg_tps,
            tg_decode_share: 0.9,
        }
    }

    #[test]
    fn order_is_reversed_every_round() {
        use Side::*;
        assert_eq!(round_order(1, 2), vec![Baseline(0), Baseline(1), Cotforge]);
        assert_eq!(round_order(2, 2), vec![Cotforge, Baseline(1), Baseline(0)]);
        assert_eq!(round_order(3, 1), vec![Baseline(0), Cotforge]);
        assert_eq!(round_order(4, 1), vec![Cotforge, Baseline(0)]);
    }

    /// Medians per side and a ratio per build; a decode-only run has no score row.
    #[test]
    fn summarizes_each_build_with_its_own_ratio() {
        let o = opts(&[CpuBuild::Portable, CpuBuild::Native], false);
        let mut m = Measured::new(2);
        for (p1, p8, n1, n8, c1, c8) in [
            (100.0, 200.0, 120.0, 250.0, 110.0, 240.0),
            (90.0, 210.0, 130.0, 260.0, 100.0, 230.0),
            (95.0, 190.0, 125.0, 240.0, 120.0, 250.0),
        ] {
            m.tg[0].push(vec![(1, p1), (8, p8)]);
            m.tg[1].push(vec![(1, n1), (8, n8)]);
            m.ours.push(vec![run(1, c1), run(8, c8)]);
        }
        let r = summarize(&o, &m, &|_| "llama.cpp".into());
        assert_eq!(r.decode.len(), 2);
        let d1 = &r.decode[0];
        assert_eq!((d1.parallel, d1.cotforge), (1, 110.0));
        assert_eq!(d1.baselines[0].build, CpuBuild::Portable);
        assert_eq!(d1.baselines[0].tps, 95.0);
        assert_eq!(d1.baselines[1].tps, 125.0);
        assert!((d1.baselines[1].ratio - 110.0 / 125.0).abs() < 1e-12);
        assert_eq!(d1.baselines[1].rounds, vec![120.0, 130.0, 125.0]);
        let d8 = &r.decode[1];
        assert_eq!(
            (d8.cotforge, d8.baselines[0].tps, d8.baselines[1].tps),
            (240.0, 200.0, 250.0)
        );
        assert!(r.score.is_none());
        let table = render(&r);
        assert!(table.contains("| parallel | llama-batched-bench (portable) S_TG t/s | llama-batched-bench (native) S_TG t/s | cotforge decode t/s | ratio vs portable | ratio vs native | cotforge decode share |"), "{table}");
        assert!(
            table.contains("| 8 | 200.0 | 250.0 | 240.0 | 1.200 | 0.960 | 0.900 |"),
            "{table}"
        );
        assert!(!table.contains("scoring"), "{table}");
        // Every row has as many cells as the header and the rule.
        let cells = |l: &str| l.matches('|').count();
        let lines: Vec<&str> = table.lines().skip(1).collect();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{table}");
    }

    #[test]
    fn scoring_row_per_build() {
        let o = opts(&[CpuBuild::Portable], true);
        let mut m = Measured::new(1);
        m.tg[0] = vec![vec![(1, 100.0), (8, 200.0)]];
        m.ours = vec![vec![run(1, 100.0), run(8, 200.0)]];
        m.ppl[0] = vec![400.0, 500.0];
        m.score = vec![
            ScoreRun {
                tokens: 1024,
                tps: 450.0,
                mean_confidence: 0.5,
            },
            ScoreRun {
                tokens: 1024,
                tps: 550.0,
                mean_confidence: 0.5,
            },
        ];
        let r = summarize(&o, &m, &|_| "llama.cpp".into());
        let sc = r.score.as_ref().expect("a score row");
        assert_eq!((sc.cotforge, sc.tokens), (500.0, Some(1024)));
        assert_eq!(sc.baselines[0].tps, 450.0);
        assert!((sc.baselines[0].ratio - 500.0 / 450.0).abs() < 1e-12);
        assert!(render(&r).contains("| scoring | llama-perplexity (portable) 450.0 t/s | cotforge score 500.0 t/s | ratio 1.111 |"));
        let line = m.last_round_line(&o, 1);
        assert_eq!(
            line,
            "round 1/3 S_TG at 1,8: portable [100.0, 200.0], cotforge [100.0, 200.0]"
        );
    }
}
