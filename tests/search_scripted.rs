//! Scripted-engine tests of the MCTS: determinism, invariants, KV reuse,
//! batching, reflection policies.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use cotforge::engine::{CoreLimits, Engine, ScriptedConfig, ScriptedEngine};
use cotforge::record::Seed;
use cotforge::search::{
    default_verifier, run_many, DriverConfig, DriverReport, Granularity, NodeId, ReflectionPolicy,
    SearchConfig, SelectRule, TreeResult, TreeSearch,
};

use common::roomy_scripted as engine;

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
            r.stats.engine_tokens_evaluated
                <= r.stats.distinct_tokens + r.stats.discarded_tokens + starts,
            "{} evaluated > {} distinct + {} starts",
            r.stats.engine_tokens_evaluated,
            r.stats.distinct_tokens,
            starts
        );
        assert!(r.stats.resend_tokens > r.stats.engine_tokens_evaluated);
        assert!(r.stats.resend_per_action_tokens > 2 * r.stats.engine_tokens_evaluated);
    }
}

#[test]
fn every_step_is_full_while_trees_wait() {
    let n_parallel = 4;
    let mut e = engine(n_parallel, 48);
    let cfg = SearchConfig {
        max_rollouts: 6,
        max_tree_tokens: 2000,
        ..Default::default()
    };
    let (res, rep) = run(&mut e, &cfg, &DriverConfig::default(), &seeds(12));
    assert_eq!(res.len(), 12);
    assert_eq!(
        rep.steps.len() as u64,
        rep.decode_calls,
        "one decode call per step"
    );
    assert_eq!(
        rep.steps.iter().map(|s| s.sequences).collect::<Vec<_>>(),
        rep.batch_sequences
    );
    let mut full = 0;
    for (i, s) in rep.steps.iter().enumerate() {
        if s.queue_pending || s.active_trees as usize >= n_parallel {
            assert!(
                s.sequences as usize >= n_parallel,
                "step {i}: {} sequences with {} active trees (queue pending: {})",
                s.sequences,
                s.active_trees,
                s.queue_pending
            );
            full += 1;
        }
    }
    // The property is not vacuous: most of the run is before the tail.
    assert!(full * 2 > rep.steps.len(), "{full} of {}", rep.steps.len());
    // Every sampled token went to exactly one tree.
    let sampled: u64 = res.iter().map(|r| r.stats.tokens_sampled as u64).sum();
    assert_eq!(sampled, rep.tokens_sampled);
}

fn reflections(r: &TreeResult) -> usize {
    r.tree.nodes.iter().filter(|n| n.reflection).count()
}

fn run_with(
    cfg: SearchConfig,
    verifier: Arc<cotforge::search::Verifier>,
    s: &[Seed],
) -> Vec<TreeResult> {
    let mut e = engine(4, 32);
    let trees = s
        .iter()
        .map(|x| TreeSearch::new(&e, x, &cfg, verifier.clone()).unwrap())
        .collect();
    run_many(&mut e, trees, &DriverConfig::default(), &mut |_, _| {})
        .unwrap()
        .0
}

fn policy(p: ReflectionPolicy, max: u32) -> SearchConfig {
    let mut c = small_cfg();
    c.reflection.policy = p;
    c.reflection.max_per_chain = max;
    c
}

#[test]
fn reflection_policies() {
    let s = seeds(2);
    let yes: Arc<cotforge::search::Verifier> = Arc::new(|_: &str, _: &str| true);
    let no: Arc<cotforge::search::Verifier> = Arc::new(|_: &str, _: &str| false);

    // off: never.
    for r in run_with(policy(ReflectionPolicy::Off, 3), no.clone(), &s) {
        assert_eq!(reflections(&r), 0);
    }
    // on_wrong: only when the verifier says wrong, and only with a reference.
    for r in run_with(policy(ReflectionPolicy::OnWrong, 1), yes.clone(), &s) {
        assert_eq!(reflections(&r), 0);
        assert!(r.chains.iter().all(|c| c.verified == Some(true)));
    }
    let wrong = run_with(policy(ReflectionPolicy::OnWrong, 1), no.clone(), &s);
    for r in &wrong {
        assert!(reflections(r) > 0);
        assert!(r.chains.iter().all(|c| c.reflections <= 1));
        // The reflected chain contains the phrase at the end of the first thought.
        let c = r.chains.iter().find(|c| c.reflections == 1).unwrap();
        assert!(c
            .reasoning
            .contains("Wait! Maybe I made some mistakes! I need to rethink from scratch."));
    }
    let no_ref: Vec<Seed> = s
        .iter()
        .map(|x| Seed {
            reference_answer: None,
            ..x.clone()
        })
        .collect();
    for r in run_with(policy(ReflectionPolicy::OnWrong, 1), no.clone(), &no_ref) {
        assert_eq!(reflections(&r), 0);
        assert!(r.chains.iter().all(|c| c.verified.is_none()));
    }
    // on_low_reward: by threshold.
    let mut hi = policy(ReflectionPolicy::OnLowReward, 1);
    hi.reflection.low_reward_threshold = 1.01;
    for r in run_with(hi, yes.clone(), &s) {
        assert!(reflections(&r) > 0);
    }
    let mut lo = policy(ReflectionPolicy::OnLowReward, 1);
    lo.reflection.low_reward_threshold = 0.0;
    for r in run_with(lo, no.clone(), &s) {
        assert_eq!(reflections(&r), 0);
    }
    // always, bounded per chain.
    for r in run_with(policy(ReflectionPolicy::Always, 2), yes.clone(), &s) {
        assert!(
            r.chains.iter().any(|c| c.reflections == 2),
            "no chain reflected twice"
        );
        assert!(r.chains.iter().all(|c| c.reflections <= 2));
    }
}

#[test]
fn granularities_cut_actions_as_configured() {
    let s = seeds(2);
    for (g, len) in [
        (Granularity::Token, 1usize),
        (Granularity::MiniStep32, 32),
        (Granularity::MiniStep64, 64),
    ] {
        let cfg = SearchConfig {
            granularity: g,
            max_depth: 200,
            max_rollouts: 4,
            ..small_cfg()
        };
        for r in run_with(cfg, default_verifier(), &s) {
            assert!(!r.chains.is_empty());
            for n in r.tree.nodes.iter().skip(1).filter(|n| !n.reflection) {
                if n.terminal.is_none() {
                    assert_eq!(
                        n.tokens.len(),
                        len,
                        "{g}: inner node of {} tokens",
                        n.tokens.len()
                    );
                } else {
                    assert!(n.tokens.len() <= len);
                }
            }
        }
    }
    let cfg = SearchConfig {
        step_max_tokens: 40,
        ..small_cfg()
    };
    for r in run_with(cfg, default_verifier(), &s) {
        for n in r
            .tree
            .nodes
            .iter()
            .skip(1)
            .filter(|n| !n.reflection && n.terminal.is_none())
        {
            assert!(
                n.text.contains("\n\n") || n.tokens.len() == 40,
                "step node {:?} neither delimited nor capped",
                n.text
            );
        }
    }
}

#[test]
fn selection_rules_and_chain_rows() {
    let s = seeds(2);
    let hr = SearchConfig {
        select: SelectRule::HighestReward,
        ..small_cfg()
    };
    for r in run_with(hr, default_verifier(), &s) {
        let best = r.chains.iter().map(|c| c.reward).fold(f64::MIN, f64::max);
        assert_eq!(r.chains[r.selected.unwrap()].reward, best);
        assert_eq!(r.picks.highest_reward, r.selected);
    }
    for (r, seed) in run_with(small_cfg(), default_verifier(), &s).iter().zip(&s) {
        // most_visited: the selected chain follows the best path, and the path
        // picks the most visited child at every level.
        let sel = &r.chains[r.selected.unwrap()];
        assert_eq!(sel.path, r.tree.best_path);
        assert_eq!(r.picks.most_visited, r.selected);
        for w in sel.path.windows(2) {
            let parent = &r.tree.nodes[w[0].0 as usize];
            let max = parent
                .children
                .iter()
                .map(|c| r.tree.nodes[c.0 as usize].n)
                .max()
                .unwrap();
            assert_eq!(r.tree.nodes[w[1].0 as usize].n, max);
        }
        let rows = r.to_chains(seed, &cotforge::record::RowMeta::default());
        assert_eq!(rows.len(), r.chains.len());
        let ids: BTreeSet<_> = rows.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids.len(), rows.len());
        assert!(rows
            .iter()
            .all(|c| c.reward > 0.0 && c.reward <= 1.0 && !c.reasoning.is_empty()));
        // Distinct chains really are distinct.
        let texts: BTreeSet<_> = r.chains.iter().map(|c| (&c.reasoning, &c.answer)).collect();
        assert_eq!(texts.len(), r.chains.len());
    }
}

#[test]
fn early_stop_on_enough_chains() {
    let cfg = SearchConfig {
        early_stop_chains: 2,
        max_rollouts: 30,
        expand_k: 2,
        ..small_cfg()
    };
    for r in run_with(cfg, default_verifier(), &seeds(2)) {
        assert_eq!(
            r.stats.stop,
            Some(cotforge::search::StopReason::EnoughChains)
        );
        assert!(r.chains.len() >= 2);
        assert!(r.stats.rollouts < 30);
    }
    let _ = NodeId::ROOT;
}

#[test]
fn evicted_states_are_rebuilt_identically() {
    let cfg = small_cfg();
    let s = seeds(4);
    let mut e1 = engine(2, 64);
    let (a, ra) = run(&mut e1, &cfg, &DriverConfig::default(), &s);
    let mut e2 = engine(2, 3);
    let (b, rb) = run(&mut e2, &cfg, &DriverConfig::default(), &s);
    assert_eq!(ra.evictions, 0);
    assert!(rb.evictions > 0, "the small pool never evicted");
    assert!(rb.tokens_evaluated > ra.tokens_evaluated);
    same_json(&a, &b);
    assert_eq!(e2.live_sequences(), 0);
}

#[test]
fn a_cell_budget_evicts_cached_nodes_and_changes_nothing() {
    let cfg = small_cfg();
    let s = seeds(4);
    let mut e1 = engine(2, 64);
    let (a, ra) = run(&mut e1, &cfg, &DriverConfig::default(), &s);
    let mut e2 = engine(2, 64);
    let budget = DriverConfig {
        max_cells: Some(64),
        ..Default::default()
    };
    let (b, rb) = run(&mut e2, &cfg, &budget, &s);
    assert_eq!(ra.evictions, 0);
    assert!(rb.evictions > 0, "the cell budget never evicted");
    assert!(
        rb.peak_cells < ra.peak_cells,
        "peak cells {} with the budget, {} without",
        rb.peak_cells,
        ra.peak_cells
    );
    assert!(rb.tokens_evaluated > ra.tokens_evaluated);
    same_json(&a, &b);
    assert_eq!(e2.live_sequences(), 0);
    assert_eq!(e2.cells_used(), 0);
}

#[test]
fn early_stop_on_best_child_share() {
    // Two children under the root: the better one always holds half the visits.
    let cfg = SearchConfig {
        expand_k: 2,
        early_stop_share: 0.5,
        early_stop_min_visits: 3,
        max_rollouts: 20,
        ..small_cfg()
    };
    for r in run_with(cfg, default_verifier(), &seeds(2)) {
        assert_eq!(
            r.stats.stop,
            Some(cotforge::search::StopReason::BestChildShare)
        );
        assert!(r.tree.nodes[0].n >= 3 && r.stats.rollouts < 20);
    }
}

#[test]
fn budgets_stop_the_tree() {
    let cfg = SearchConfig {
        max_rollouts: 50,
        max_tree_tokens: 400,
        answer_max_tokens: 16,
        ..small_cfg()
    };
    for r in run_with(cfg, default_verifier(), &seeds(2)) {
        assert_eq!(
            r.stats.stop,
            Some(cotforge::search::StopReason::TokenBudget)
        );
        assert!(r.stats.tokens_sampled <= 400);
        assert!(
            r.stats.tokens_sampled > 400 - 17,
            "budget left unused: {}",
            r.stats.tokens_sampled
        );
    }
}

#[test]
fn a_small_kv_cache_swaps_streams_out_and_changes_nothing() {
    let cfg = small_cfg();
    let s = seeds(6);
    let mut big = engine(4, 64);
    let (a, ra) = run(&mut big, &cfg, &DriverConfig::default(), &s);
    assert_eq!(ra.parks, 0);
    let mut small = ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 1200,
            n_batch: 1 << 16,
            n_parallel: 4,
            n_seq_max: 64,
        },
    );
    let (b, rb) = run(&mut small, &cfg, &DriverConfig::default(), &s);
    assert!(rb.parks > 0, "the small cache never ran out");
    same_json(&a, &b);
    assert_eq!(small.live_sequences(), 0);
}
