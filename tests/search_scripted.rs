//! Scripted-engine tests of the MCTS: determinism, invariants, KV reuse,
//! batching, reflection policies.

use std::collections::BTreeSet;
use std::sync::Arc;

use cotforge::engine::{CoreLimits, Engine, ScriptedConfig, ScriptedEngine};
use cotforge::record::Seed;
use cotforge::search::{
    default_verifier, run_many, DriverConfig, DriverReport, Granularity, NodeId, ReflectionPolicy,
    SearchConfig, SelectRule, TreeResult, TreeSearch,
};

fn engine(n_parallel: usize, n_seq_max: usize) -> ScriptedEngine {
    ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 1 << 20,
            n_batch: 1 << 16,
            n_parallel,
            n_seq_max,
        },
    )
}

fn seeds(n: usize) -> Vec<Seed> {
    (0..n)
        .map(|i| Seed {
            id: format!("seed-{i}"),
            prompt: format!("What is {i} + {}? Let us add the number.", i * 3 + 1),
            reference_answer: Some(format!("{}", i * 4 + 1)),
            ..Default::default()
        })
        .collect()
}

fn run(
    e: &mut ScriptedEngine,
    cfg: &SearchConfig,
    dcfg: &DriverConfig,
    seeds: &[Seed],
) -> (Vec<TreeResult>, DriverReport) {
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&*e, s, cfg, default_verifier()).unwrap())
        .collect();
    run_many(e, trees, dcfg, &mut |_, _| {}).unwrap()
}

fn small_cfg() -> SearchConfig {
    SearchConfig {
        max_rollouts: 9,
        max_tree_tokens: 3000,
        max_depth: 6,
        ..Default::default()
    }
}

fn json(results: &[TreeResult]) -> Vec<String> {
    results.iter().map(|r| r.tree.to_json()).collect()
}

/// Equal JSON, or a panic naming the first differing line (the trees are big).
fn same_json(a: &[TreeResult], b: &[TreeResult]) {
    let (ja, jb) = (json(a), json(b));
    assert_eq!(ja.len(), jb.len());
    for (x, y) in ja.iter().zip(&jb) {
        if x != y {
            let (n, (l1, l2)) = x
                .lines()
                .zip(y.lines())
                .enumerate()
                .find(|(_, (l1, l2))| l1 != l2)
                .unwrap_or((0, ("<length>", "<length>")));
            panic!("tree JSON differs at line {n}: {l1:?} vs {l2:?}");
        }
    }
}

#[test]
fn trees_have_chains_depth_and_rewards() {
    let mut e = engine(4, 32);
    let (res, rep) = run(&mut e, &small_cfg(), &DriverConfig::default(), &seeds(3));
    assert_eq!(res.len(), 3);
    for r in &res {
        assert!(!r.chains.is_empty(), "{}: no chains", r.seed_id);
        assert!(r.stats.max_depth >= 2, "depth {}", r.stats.max_depth);
        for c in &r.chains {
            assert!(c.reward > 0.0 && c.reward <= 1.0, "reward {}", c.reward);
            assert!(!c.answer.is_empty());
            assert!(!c.answer.contains("</Output>"));
            assert!(c.verified.is_some());
        }
        assert!(r.selected.is_some());
        assert!(r.stats.rollouts <= 9);
        assert!(r.stats.tokens_sampled <= 3000);
    }
    // Engine tokens are fully attributed to trees.
    assert_eq!(rep.attributed_tokens, rep.tokens_evaluated);
    let per_tree: u64 = res.iter().map(|r| r.stats.engine_tokens_evaluated).sum();
    assert_eq!(per_tree, rep.tokens_evaluated);
    // No sequence leaks.
    assert_eq!(e.live_sequences(), 0);
}

#[test]
fn same_seed_same_bytes_whatever_the_batching_or_pool() {
    let cfg = small_cfg();
    let s = seeds(5);
    let mut e1 = engine(4, 64);
    let (a, _) = run(&mut e1, &cfg, &DriverConfig::default(), &s);
    let mut e2 = engine(4, 64);
    let (b, _) = run(&mut e2, &cfg, &DriverConfig::default(), &s);
    same_json(&a, &b);
    // One sequence per step, a tiny pool, no cache: same trees.
    let mut e3 = engine(1, 3);
    let (c, rep) = run(
        &mut e3,
        &cfg,
        &DriverConfig {
            max_cached: Some(0),
            ..Default::default()
        },
        &s,
    );
    same_json(&a, &c);
    assert!(rep.evictions > 0 || rep.fresh_sequences > 5);
    // A different config seed gives different trees.
    let mut e4 = engine(4, 64);
    let (d, _) = run(
        &mut e4,
        &SearchConfig {
            seed: 7,
            ..cfg.clone()
        },
        &DriverConfig::default(),
        &s,
    );
    assert_ne!(json(&a), json(&d));
}

#[test]
fn kv_reuse_evaluates_about_the_distinct_tokens() {
    let cfg = small_cfg();
    let mut e = engine(4, 64);
    let (res, rep) = run(&mut e, &cfg, &DriverConfig::default(), &seeds(4));
    assert_eq!(rep.evictions, 0);
    for r in &res {
        let starts = r.stats.rollouts as u64;
        // Each stream may re-feed the last token of its start state once; nothing else repeats.
        assert!(
            r.stats.engine_tokens_evaluated <= r.stats.distinct_tokens + starts,
            "{} evaluated > {} distinct + {} starts",
            r.stats.engine_tokens_evaluated,
            r.stats.distinct_tokens,
            starts
        );
        assert!(r.stats.resend_tokens > r.stats.engine_tokens_evaluated);
    }
}
