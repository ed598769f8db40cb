//! Property tests of the search invariants over random configs and budgets.

mod common;

use cotforge::engine::Engine;
use cotforge::record::Seed;
use cotforge::search::{
    default_verifier, run_many, DriverConfig, Granularity, ReflectionPolicy, SearchConfig,
    TreeResult, TreeSearch,
};
use proptest::prelude::*;

use common::roomy_scripted as engine;

fn seeds(n: usize) -> Vec<Seed> {
    (0..n)
        .map(|i| Seed {
            id: format!("p-{i}"),
            prompt: format!("Add {i} and {}.", i + 2),
            reference_answer: Some(format!("{}", 2 * i + 2)),
            ..Default::default()
        })
        .collect()
}

fn run(
    cfg: &SearchConfig,
    n_parallel: usize,
    n_seq_max: usize,
    dcfg: &DriverConfig,
    s: &[Seed],
) -> (Vec<TreeResult>, cotforge::search::DriverReport, usize) {
    let mut e = engine(n_parallel, n_seq_max);
    let trees = s
        .iter()
        .map(|x| TreeSearch::new(&e, x, cfg, default_verifier()).unwrap())
        .collect();
    let (r, rep) = run_many(&mut e, trees, dcfg, &mut |_, _| {}).unwrap();
    (r, rep, e.live_sequences())
}

fn cfg_strategy() -> impl Strategy<Value = SearchConfig> {
    (
        prop_oneof![
            Just(Granularity::Step),
            Just(Granularity::MiniStep32),
            Just(Granularity::Token)
        ],
        1u32..4,
        1u32..10,
        1u32..8,
        (60u32..2500, 4u32..200, 2u32..24),
        prop_oneof![
            Just(ReflectionPolicy::Off),
            Just(ReflectionPolicy::OnWrong),
            Just(ReflectionPolicy::OnLowReward),
            Just(ReflectionPolicy::Always)
        ],
        0u32..3,
        any::<u64>(),
    )
        .prop_map(
            |(granularity, k, rollouts, depth, (tree_tok, thought, answer), policy, refl, seed)| {
                let mut c = SearchConfig {
                    seed,
                    granularity,
                    expand_k: k,
                    max_rollouts: rollouts,
                    max_depth: depth,
                    max_tree_tokens: tree_tok.max(answer + 1),
                    max_thought_tokens: thought,
                    answer_max_tokens: answer,
                    step_max_tokens: 30,
                    ..Default::default()
                };
                c.reflection.policy = policy;
                c.reflection.max_per_chain = refl;
                c.reflection.low_reward_threshold = 0.2;
                c
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(cfg in cfg_strategy(), np in 1usize..6, pool_kind in 0u8..3) {
        let s = seeds(3);
        let big = 64;
        let (res, rep, live) = run(&cfg, np, big, &DriverConfig::default(), &s);
        prop_assert_eq!(live, 0);
        prop_assert_eq!(rep.attributed_tokens, rep.tokens_evaluated);
        prop_assert_eq!(rep.evictions, 0);
        let sampled: u64 = res.iter().map(|r| r.stats.tokens_sampled as u64).sum();
        prop_assert_eq!(sampled, rep.tokens_sampled);
        for r in &res {
            let nodes = &r.tree.nodes;
            // Budgets.
            prop_assert!(r.stats.rollouts <= cfg.max_rollouts);
            prop_assert!(r.stats.tokens_sampled <= cfg.max_tree_tokens);
            prop_assert!(!r.chains.is_empty());
            for n in nodes {
                // Visits: own rollouts plus the children's.
                let kids: u32 = n.children.iter().map(|c| nodes[c.0 as usize].n).sum();
                prop_assert_eq!(n.n, n.own + kids, "node {:?}", n.id);
                prop_assert!((0.0..=1.0).contains(&n.q), "q {}", n.q);
                prop_assert!(n.children.len() <= cfg.expand_k as usize);
                if let Some(a) = &n.answer {
                    prop_assert!(a.tokens.len() <= cfg.answer_max_tokens as usize);
                    prop_assert!(a.reward >= 0.0 && a.reward <= 1.0);
                }
                if let Some(p) = n.parent {
                    prop_assert!(p.0 < n.id.0, "parents precede children");
                }
            }
            for c in &r.chains {
                prop_assert!(c.reflections <= cfg.reflection.max_per_chain);
                // Actions between reflections never exceed max_depth.
                let mut seg = 0u32;
                for id in c.path.iter().skip(1) {
                    let n = &nodes[id.0 as usize];
                    if n.reflection { seg = 0 } else { seg += 1 }
                    prop_assert!(seg <= cfg.max_depth, "segment of {} actions > {}", seg, cfg.max_depth);
                }
            }
            // A tree's tokens are evaluated once while cached: at most one
            // re-fed token per stream on top of the distinct tokens.
            prop_assert!(
                r.stats.engine_tokens_evaluated
                    <= r.stats.distinct_tokens + r.stats.discarded_tokens + r.stats.rollouts as u64,
                "{} > {} + {}", r.stats.engine_tokens_evaluated, r.stats.distinct_tokens, r.stats.rollouts
            );
        }
        // Evicting and rebuilding (tiny pool, no cache) never changes a tree.
        let (pool, dcfg) = match pool_kind {
            0 => (np.max(2), DriverConfig { max_cached: Some(0), ..Default::default() }),
            1 => (np + 1, DriverConfig::default()),
            _ => (np + 3, DriverConfig { max_cached: Some(1), max_batch_tokens: 64, ..Default::default() }),
        };
        let (res2, _, live2) = run(&cfg, np, pool, &dcfg, &s);
        prop_assert_eq!(live2, 0);
        for (a, b) in res.iter().zip(&res2) {
            prop_assert!(a.tree.to_json() == b.tree.to_json(), "tree {} changed with the pool", a.seed_id);
        }
    }
}
