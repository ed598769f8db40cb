//! The search on the real default model (SmolLM2-135M): trees of depth >= 2
//! with terminal chains, rewards in (0, 1], answers extracted.
#![cfg(feature = "llama")]

mod common;

use cotforge::engine::{Engine, LlamaConfig, LlamaEngine};
use cotforge::search::{
    default_verifier, run_many, seeds_from_jsonl, DriverConfig, Granularity, SearchConfig,
    TreeSearch,
};

#[test]
fn gsm8k_trees_on_smollm2() {
    let Some(model) = common::model_path() else {
        return;
    };
    // OpenMP threads spin at barriers; on a shared (CI) machine that costs 5x.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        std::env::set_var("OMP_WAIT_POLICY", "passive");
    }
    let mut e = LlamaEngine::load(&LlamaConfig {
        model,
        n_ctx: 8192,
        n_batch: 1024,
        n_parallel: 4,
        n_seq_max: 24,
        threads: 2,
        ..Default::default()
    })
    .expect("load the model");
    let text = include_str!("fixtures/gsm8k_3.jsonl");
    let seeds = seeds_from_jsonl(text).unwrap();
    assert_eq!(seeds.len(), 3);
    let cfg = SearchConfig {
        granularity: Granularity::Step,
        expand_k: 2,
        max_rollouts: 4,
        max_depth: 6,
        step_max_tokens: 48,
        max_thought_tokens: 160,
        answer_max_tokens: 24,
        max_tree_tokens: 600,
        ..Default::default()
    };
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&e, s, &cfg, default_verifier()).unwrap())
        .collect();
    let (res, rep) = run_many(&mut e, trees, &DriverConfig::default(), &mut |_, _| {}).unwrap();
    assert_eq!(rep.attributed_tokens, rep.tokens_evaluated);
    for r in &res {
        eprintln!(
            "{}: {} chains, depth {}, {} nodes, {} sampled, {} evaluated / {} distinct / {} resend; picked {:?}",
            r.seed_id,
            r.chains.len(),
            r.stats.max_depth,
            r.stats.nodes,
            r.stats.tokens_sampled,
            r.stats.engine_tokens_evaluated,
            r.stats.distinct_tokens,
            r.stats.resend_tokens,
            r.selected.map(|i| (&r.chains[i].answer, r.chains[i].reward))
        );
        assert!(
            r.stats.max_depth >= 2,
            "{}: depth {}",
            r.seed_id,
            r.stats.max_depth
        );
        assert!(!r.chains.is_empty(), "{}: no terminal chain", r.seed_id);
        assert!(r.stats.tokens_sampled <= cfg.max_tree_tokens);
        assert!(r.stats.rollouts <= cfg.max_rollouts);
        for c in &r.chains {
            assert!(c.reward > 0.0 && c.reward <= 1.0, "reward {}", c.reward);
            assert!(!c.reasoning.is_empty());
            assert!(!c.answer.contains("</Output>") && !c.answer.contains("<Output>"));
            assert!(c.verified.is_some());
        }
        assert!(
            r.chains.iter().any(|c| !c.answer.is_empty()),
            "{}: no answer extracted",
            r.seed_id
        );
        // KV reuse holds on the real engine too (the pool is large enough here).
        if rep.evictions == 0 && rep.parks == 0 {
            assert!(
                r.stats.engine_tokens_evaluated
                    <= r.stats.distinct_tokens + r.stats.discarded_tokens + r.stats.rollouts as u64
            );
        }
    }
    assert_eq!(e.live_sequences(), 0);
}
