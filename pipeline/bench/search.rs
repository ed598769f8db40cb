//! `cotforge bench search`: MCTS throughput through the `marco_cot` recipe
//! (what `cotforge search` runs): seeds/hour, KV reuse (tokens evaluated over
//! the trees' distinct tokens), the decode share of wall time and decode
//! tokens/s against `llama-batched-bench` at npp 128 (before and after) and
//! at the search's own mean KV occupancy; plus the selected chain's accuracy
//! under each rule against one greedy chain of thought.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::metrics::ratio;
use super::tools::{batched_bench_tg, matched_npp};
use super::BenchError;
use crate::engine::{Engine, EngineConfig};
use crate::recipes::marco::SeedOutcome;
use crate::recipes::study::{run_study, StudyOptions};
use crate::search::{DriverConfig, DriverReport, SearchConfig, SelectRule};

type Result<T> = std::result::Result<T, BenchError>;

/// What `bench search` runs.
pub struct SearchBenchOptions {
    pub engine: EngineConfig,
    pub study: StudyOptions,
    /// llama-batched-bench for the decode baselines; `None`: no ratio.
    pub batched_bench: Option<PathBuf>,
    /// Also run one greedy chain of thought per seed.
    pub greedy: bool,
}

/// Accuracy of one selection rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAccuracy {
    pub rule: SelectRule,
    pub correct: usize,
    pub of: usize,
}

/// Everything `bench search` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchBenchReport {
    pub model: String,
    pub seeds_file: PathBuf,
    pub n_seeds: usize,
    pub with_reference: usize,
    pub threads: usize,
    pub n_parallel: usize,
    pub n_ctx: usize,
    pub search_config: SearchConfig,
    pub driver_config: DriverConfig,
    pub wall_seconds: f64,
    pub seeds_per_hour: f64,
    pub chains: usize,
    pub shipped: usize,
    pub tokens_evaluated: u64,
    pub tokens_sampled: u64,
    pub distinct_tokens: u64,
    pub evaluated_over_distinct: f64,
    pub evaluated_over_resend_path: f64,
    pub evaluated_over_resend_per_action: f64,
    pub decode_share: f64,
    pub sample_share: f64,
    pub decode_calls: u64,
    pub mean_seqs_per_call: f64,
    pub share_calls_full: f64,
    pub forks: u64,
    pub fresh: u64,
    pub evictions: u64,
    pub parks: u64,
    pub mean_cells: f64,
    pub peak_cells: u64,
    /// The KV cell budget the driver ended with (it grows when evictions cost re-evaluation).
    pub final_max_cells: Option<usize>,
    pub decode_tps: f64,
    /// llama-batched-bench TG at npp 128, before and after the search.
    pub batched_bench_tg: Vec<f64>,
    pub decode_ratio: Option<f64>,
    pub batched_bench_matched_npp: usize,
    pub batched_bench_matched_tg: Vec<f64>,
    pub decode_ratio_matched: Option<f64>,
    pub accuracy: Vec<RuleAccuracy>,
    pub any_chain_verified: usize,
    pub greedy_verified: Option<usize>,
    pub mean_reward_correct: f64,
    pub n_correct_chains: usize,
    pub mean_reward_incorrect: f64,
    pub n_incorrect_chains: usize,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn verified_pick(o: &SeedOutcome, rule: SelectRule) -> bool {
    o.result.as_ref().is_some_and(|r| {
        r.picks
            .get(rule)
            .and_then(|i| r.chains.get(i))
            .is_some_and(|c| c.verified == Some(true))
    })
}

/// Run the benchmark: baselines, the search, then the greedy chain.
pub fn run_search_bench(
    engine: &mut dyn Engine,
    opts: &SearchBenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<SearchBenchReport> {
    let ecfg = &opts.engine;
    let threads = ecfg.threads();
    let mut bb = Vec::new();
    let mut bb_matched = Vec::new();
    if let Some(bin) = &opts.batched_bench {
        log("llama-batched-bench, npp 128 (before)");
        bb.push(batched_bench_tg(bin, ecfg, threads, 128)?);
    }
    log("search");
    let run = run_study(engine, &opts.study, &mut |_, _| {})?;
    let rep: DriverReport = run.report.clone();
    let npp = matched_npp(rep.mean_cells, ecfg.n_parallel);
    if let Some(bin) = &opts.batched_bench {
        log("llama-batched-bench, npp 128 (after)");
        bb.push(batched_bench_tg(bin, ecfg, threads, 128)?);
        for _ in 0..2 {
            log(&format!(
                "llama-batched-bench, npp {npp} (the search's mean KV occupancy)"
            ));
            bb_matched.push(batched_bench_tg(bin, ecfg, threads, npp)?);
        }
    }
    let greedy_verified = if opts.greedy {
        log("greedy chain of thought");
        let g = StudyOptions {
            search: super::quality::greedy(opts.study.search.clone()),
            out: opts.study.out.join("greedy"),
            ..opts.study.clone()
        };
        let gr = run_study(engine, &g, &mut |_, _| {})?;
        Some(
            gr.outcomes
                .iter()
                .filter(|o| verified_pick(o, SelectRule::MostVisited))
                .count(),
        )
    } else {
        None
    };
    let outcomes = &run.outcomes;
    let n = outcomes.len();
    let results: Vec<_> = outcomes.iter().filter_map(|o| o.result.as_ref()).collect();
    let chains: usize = results.iter().map(|r| r.chains.len()).sum();
    let shipped: usize = outcomes.iter().map(|o| o.processed.accepted.len()).sum();
    let calls = rep.batch_sequences.len().max(1) as f64;
    let rewards = |want: bool| -> (f64, usize) {
        let v: Vec<f64> = results
            .iter()
            .flat_map(|r| r.chains.iter())
            .filter(|c| c.verified == Some(want))
            .map(|c| c.reward)
            .collect();
        (mean(&v).unwrap_or(0.0), v.len())
    };
    let (r_ok, n_ok) = rewards(true);
    let (r_bad, n_bad) = rewards(false);
    let decode_tps = ratio(rep.tokens_evaluated as f64, rep.decode_seconds);
    let u = |a: u64, b: u64| ratio(a as f64, b as f64);
    Ok(SearchBenchReport {
        model: ecfg.model.display().to_string(),
        seeds_file: opts.study.seeds.clone(),
        n_seeds: n,
        with_reference: results
            .iter()
            .filter(|r| r.reference_answer.is_some())
            .count(),
        threads,
        n_parallel: ecfg.n_parallel,
        n_ctx: ecfg.n_ctx,
        search_config: opts.study.search.clone(),
        driver_config: opts.study.driver.clone(),
        wall_seconds: rep.wall_seconds,
        seeds_per_hour: ratio(n as f64 * 3600.0, rep.wall_seconds),
        chains,
        shipped,
        tokens_evaluated: rep.tokens_evaluated,
        tokens_sampled: rep.tokens_sampled,
        distinct_tokens: rep.distinct_tokens,
        evaluated_over_distinct: u(rep.tokens_evaluated, rep.distinct_tokens),
        evaluated_over_resend_path: u(rep.tokens_evaluated, rep.resend_tokens),
        evaluated_over_resend_per_action: u(rep.tokens_evaluated, rep.resend_per_action_tokens),
        decode_share: ratio(rep.decode_seconds, rep.wall_seconds),
        sample_share: ratio(rep.sample_seconds, rep.wall_seconds),
        decode_calls: rep.decode_calls,
        mean_seqs_per_call: rep.batch_sequences.iter().map(|&b| b as f64).sum::<f64>() / calls,
        share_calls_full: rep
            .batch_sequences
            .iter()
            .filter(|&&b| b as usize >= ecfg.n_parallel)
            .count() as f64
            / calls,
        forks: rep.forks,
        fresh: rep.fresh_sequences,
        evictions: rep.evictions,
        parks: rep.parks,
        mean_cells: rep.mean_cells,
        peak_cells: rep.peak_cells,
        final_max_cells: rep.final_max_cells,
        decode_tps,
        decode_ratio: mean(&bb).map(|b| decode_tps / b),
        batched_bench_tg: bb,
        batched_bench_matched_npp: npp,
        decode_ratio_matched: mean(&bb_matched).map(|b| decode_tps / b),
        batched_bench_matched_tg: bb_matched,
        accuracy: SelectRule::ALL
            .into_iter()
            .map(|rule| RuleAccuracy {
                rule,
                correct: outcomes.iter().filter(|o| verified_pick(o, rule)).count(),
                of: n,
            })
            .collect(),
        any_chain_verified: results
            .iter()
            .filter(|r| r.chains.iter().any(|c| c.verified == Some(true)))
            .count(),
        greedy_verified,
        mean_reward_correct: r_ok,
        n_correct_chains: n_ok,
        mean_reward_incorrect: r_bad,
        n_incorrect_chains: n_bad,
    })
}

/// The report as a Markdown table.
pub fn render(r: &SearchBenchReport) -> String {
    use std::fmt::Write as _;
    let c = &r.search_config;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "search benchmark: {} seeds ({} with a reference answer), granularity {}, n_parallel {}, {} threads, \
         rollouts {}, K {}, tree tokens {}, value {}, reflection {:?}, KV cell budget {:?} (ended at {:?})",
        r.n_seeds, r.with_reference, c.granularity, r.n_parallel, r.threads, c.max_rollouts, c.expand_k,
        c.max_tree_tokens, c.value.label(), c.reflection.policy, r.driver_config.max_cells, r.final_max_cells
    );
    let _ = writeln!(s, "| metric | value | target |");
    let _ = writeln!(s, "|---|---|---|");
    let row = |s: &mut String, m: &str, v: String, t: &str| {
        let _ = writeln!(s, "| {m} | {v} | {t} |");
    };
    row(&mut s, "wall", format!("{:.1} s", r.wall_seconds), "");
    row(&mut s, "seeds/hour", format!("{:.0}", r.seeds_per_hour), "");
    row(
        &mut s,
        "chains (shipped)",
        format!(
            "{} ({:.1}/seed; {} ship)",
            r.chains,
            ratio(r.chains as f64, r.n_seeds as f64),
            r.shipped
        ),
        "",
    );
    row(
        &mut s,
        "evaluated / distinct tree tokens",
        format!(
            "{} / {} = {:.3}",
            r.tokens_evaluated, r.distinct_tokens, r.evaluated_over_distinct
        ),
        "<= 1.05",
    );
    row(
        &mut s,
        "evaluated / resend-path-per-rollout",
        format!("{:.3}", r.evaluated_over_resend_path),
        "",
    );
    row(
        &mut s,
        "evaluated / resend-per-action",
        format!("{:.3}", r.evaluated_over_resend_per_action),
        "",
    );
    row(
        &mut s,
        "decode share of wall",
        format!(
            "{:.3} (sampling+confidence {:.3})",
            r.decode_share, r.sample_share
        ),
        "",
    );
    row(
        &mut s,
        "decode calls",
        format!(
            "{} (mean {:.2} seqs/call, {:.1}% at >= n_parallel)",
            r.decode_calls,
            r.mean_seqs_per_call,
            100.0 * r.share_calls_full
        ),
        "",
    );
    row(
        &mut s,
        "forks / fresh / evictions / parks",
        format!("{} / {} / {} / {}", r.forks, r.fresh, r.evictions, r.parks),
        "",
    );
    row(
        &mut s,
        "KV cells held: mean / peak",
        format!("{:.0} / {}", r.mean_cells, r.peak_cells),
        "",
    );
    row(
        &mut s,
        "cotforge decode tok/s (evaluated per decode second)",
        format!("{:.1}", r.decode_tps),
        "",
    );
    if let Some(x) = r.decode_ratio {
        row(
            &mut s,
            &format!(
                "llama-batched-bench TG at {}, npp/ntg 128 (before, after: {:.1?})",
                r.n_parallel, r.batched_bench_tg
            ),
            format!("{:.1}", mean(&r.batched_bench_tg).unwrap_or(0.0)),
            "",
        );
        row(&mut s, "decode ratio vs npp 128", format!("{x:.3}"), "");
    }
    if let Some(x) = r.decode_ratio_matched {
        row(
            &mut s,
            &format!(
                "llama-batched-bench TG at {}, npp {} ntg 128 = the search's mean KV cells ({:.1?})",
                r.n_parallel, r.batched_bench_matched_npp, r.batched_bench_matched_tg
            ),
            format!("{:.1}", mean(&r.batched_bench_matched_tg).unwrap_or(0.0)),
            "",
        );
        row(
            &mut s,
            "decode ratio vs matched occupancy",
            format!("{x:.3}"),
            ">= 0.90",
        );
    }
    for a in &r.accuracy {
        row(
            &mut s,
            &format!("accuracy, selected chain ({})", a.rule),
            format!("{}/{}", a.correct, a.of),
            "",
        );
    }
    row(
        &mut s,
        "accuracy, any terminal chain",
        format!("{}/{}", r.any_chain_verified, r.n_seeds),
        "",
    );
    if let Some(g) = r.greedy_verified {
        row(
            &mut s,
            "accuracy, single greedy chain of thought",
            format!("{g}/{}", r.n_seeds),
            "",
        );
    }
    row(
        &mut s,
        "mean reward, correct chains",
        format!("{:.4} (n = {})", r.mean_reward_correct, r.n_correct_chains),
        "",
    );
    row(
        &mut s,
        "mean reward, incorrect chains",
        format!(
            "{:.4} (n = {})",
            r.mean_reward_incorrect, r.n_incorrect_chains
        ),
        "",
    );
    s
}
