//! Search throughput on the real default model: 32 GSM8K questions, step
//! granularity, n_parallel 8, 2 threads (override with env). Prints figures,
//! asserts nothing.
//!
//!   COTFORGE_MODEL=path.gguf cargo bench --bench search
//!   env: COTFORGE_BENCH_SEEDS (32), COTFORGE_THREADS (2), COTFORGE_N_PARALLEL (8),
//!        COTFORGE_BENCH_ROLLOUTS (6), COTFORGE_BENCH_TREE_TOKENS (768)

use std::path::PathBuf;

use cotforge::engine::{LlamaConfig, LlamaEngine};
use cotforge::search::{
    default_verifier, run_many, seeds_from_jsonl, DriverConfig, Granularity, SearchConfig,
    TreeSearch,
};

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let model = std::env::var_os("COTFORGE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !model.exists() {
        eprintln!(
            "bench search: model {} not found (scripts/setup.sh or COTFORGE_MODEL)",
            model.display()
        );
        std::process::exit(
            if std::env::var("COTFORGE_SKIP_MODEL").as_deref() == Ok("1") {
                0
            } else {
                1
            },
        );
    }
    let n_seeds: usize = env_or("COTFORGE_BENCH_SEEDS", 32);
    let threads: usize = env_or("COTFORGE_THREADS", 2);
    let n_parallel: usize = env_or("COTFORGE_N_PARALLEL", 8);
    let mut seeds =
        seeds_from_jsonl(include_str!("../tests/fixtures/gsm8k_32.jsonl")).expect("fixture");
    seeds.truncate(n_seeds);
    let mut e = LlamaEngine::load(&LlamaConfig {
        model,
        n_ctx: 16384,
        n_batch: 2048,
        n_parallel,
        n_seq_max: 64,
        threads,
        ..Default::default()
    })
    .expect("load model");
    let cfg = SearchConfig {
        granularity: Granularity::Step,
        expand_k: 3,
        max_rollouts: env_or("COTFORGE_BENCH_ROLLOUTS", 6),
        max_depth: 8,
        step_max_tokens: 64,
        max_thought_tokens: 256,
        answer_max_tokens: 32,
        max_tree_tokens: env_or("COTFORGE_BENCH_TREE_TOKENS", 768),
        ..Default::default()
    };
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&e, s, &cfg, default_verifier()).expect("tree"))
        .collect();
    let (res, rep) = run_many(&mut e, trees, &DriverConfig::default(), &mut |r, p| {
        eprintln!(
            "  [{}/{}] {} chains={} depth={} sampled={} t={:.0}s",
            p.trees_done,
            p.trees_total,
            r.seed_id,
            r.chains.len(),
            r.stats.max_depth,
            r.stats.tokens_sampled,
            p.elapsed_seconds
        );
    })
    .expect("search");
    let chains: usize = res.iter().map(|r| r.chains.len()).sum();
    let correct = res
        .iter()
        .filter(|r| {
            r.selected
                .is_some_and(|i| r.chains[i].verified == Some(true))
        })
        .count();
    let full = rep
        .batch_sequences
        .iter()
        .filter(|&&b| b as usize >= n_parallel)
        .count();
    let mean_batch = rep.batch_sequences.iter().map(|&b| b as f64).sum::<f64>()
        / rep.batch_sequences.len().max(1) as f64;
    println!("search bench: {} GSM8K seeds, step granularity, n_parallel {n_parallel}, {threads} threads, rollouts {}, tree tokens {}", res.len(), cfg.max_rollouts, cfg.max_tree_tokens);
    println!("  wall                      {:.1} s", rep.wall_seconds);
    println!(
        "  seeds/hour                {:.0}",
        res.len() as f64 * 3600.0 / rep.wall_seconds
    );
    println!(
        "  chains                    {chains} ({:.1}/seed); selected chain correct: {correct}/{}",
        chains as f64 / res.len() as f64,
        res.len()
    );
    println!(
        "  tokens sampled            {} ({:.0} tok/s)",
        rep.tokens_sampled,
        rep.tokens_sampled as f64 / rep.wall_seconds
    );
    println!(
        "  tokens evaluated          {} / distinct tree tokens {} = {:.3}",
        rep.tokens_evaluated,
        rep.distinct_tokens,
        rep.tokens_evaluated as f64 / rep.distinct_tokens.max(1) as f64
    );
    println!(
        "  evaluated / resend-path   {} / {} = {:.3}",
        rep.tokens_evaluated,
        rep.resend_tokens,
        rep.tokens_evaluated as f64 / rep.resend_tokens.max(1) as f64
    );
    println!(
        "  evaluated / per-action    {} / {} = {:.3}",
        rep.tokens_evaluated,
        rep.resend_per_action_tokens,
        rep.tokens_evaluated as f64 / rep.resend_per_action_tokens.max(1) as f64
    );
    println!(
        "  decode share of wall      {:.1}% (sampling+confidence {:.1}%)",
        100.0 * rep.decode_seconds / rep.wall_seconds,
        100.0 * rep.sample_seconds / rep.wall_seconds
    );
    println!(
        "  decode tok/s              {:.0} evaluated per decode-second",
        rep.tokens_evaluated as f64 / rep.decode_seconds.max(1e-9)
    );
    println!(
        "  decode calls              {} (mean {:.2} seqs/call, {:.1}% at >= n_parallel); forks {}, fresh {}, evictions {}",
        rep.decode_calls,
        mean_batch,
        100.0 * full as f64 / rep.batch_sequences.len().max(1) as f64,
        rep.forks,
        rep.fresh_sequences,
        rep.evictions
    );
}
