//! The method bugs of issue 13, each pinned on a scripted engine: a reflected
//! stream backed up once, answer markers and multi-byte characters split
//! between actions, the token budget reserved for later rollouts, `max_depth`
//! at token granularity, and a seed that cannot run failing alone.

mod common;

use common::play::{play_engine, Script};
use cotforge::engine::{CoreLimits, Engine, ScriptedConfig, ScriptedEngine};
use cotforge::record::Seed;
use cotforge::search::{
    default_verifier, run_many, run_trees, DriverConfig, Granularity, NodeId, ReflectionPolicy,
    SearchConfig, SelectRule, TerminalCause, TreeResult, TreeSearch,
};

fn scripted(n_ctx: usize) -> ScriptedEngine {
    ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx,
            n_batch: 1 << 16,
            n_parallel: 4,
            n_seq_max: 48,
        },
    )
}

fn seed(id: &str, prompt: &str, reference: Option<&str>) -> Seed {
    Seed {
        id: id.into(),
        prompt: prompt.into(),
        reference_answer: reference.map(str::to_string),
        ..Default::default()
    }
}

fn search(e: &mut dyn Engine, cfg: &SearchConfig, seeds: &[Seed]) -> Vec<TreeResult> {
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&*e, s, cfg, default_verifier()).unwrap())
        .collect();
    run_many(e, trees, &DriverConfig::default(), &mut |_, _| {})
        .unwrap()
        .0
}

#[test]
fn a_reflected_stream_is_one_rollout_and_one_backup() {
    // Scripted engine, reflection after every chain: the root's visits are the rollouts.
    let cfg = SearchConfig {
        max_rollouts: 9,
        max_tree_tokens: 4000,
        ..Default::default()
    };
    let mut c = cfg.clone();
    c.reflection.policy = ReflectionPolicy::Always;
    c.reflection.max_per_chain = 2;
    let seeds: Vec<Seed> = (0..3)
        .map(|i| seed(&format!("s{i}"), &format!("Add {i} and 4."), Some("7")))
        .collect();
    let res = search(&mut scripted(1 << 20), &c, &seeds);
    let reflected: usize = res
        .iter()
        .map(|r| r.tree.nodes.iter().filter(|n| n.reflection).count())
        .sum();
    assert!(reflected > 0, "nothing reflected; the test tests nothing");
    for r in &res {
        assert_eq!(r.tree.nodes[0].n, r.stats.rollouts, "{}", r.seed_id);
    }

    // One rollout whose first answer is wrong: most_visited picks what the
    // reflection found, not the answer already known to be wrong.
    let mut first = Script::new("Three plus four is eight.", "8");
    first.weight = 1.0;
    let mut second = Script::new("Three plus four: 3, 4, 5, 6, 7. It is seven.", "7");
    second.after_reflection = true;
    let mut e = play_engine(vec![first, second], 1 << 16);
    let mut one = SearchConfig {
        expand_k: 1,
        max_rollouts: 1,
        max_tree_tokens: 2000,
        ..Default::default()
    };
    one.reflection.policy = ReflectionPolicy::OnWrong;
    let r = &search(&mut e, &one, &[seed("q", "What is 3 + 4?", Some("7"))])[0];
    assert_eq!(r.chains.len(), 2, "{:?}", r.chains);
    let pick = &r.chains[r.picks.most_visited.unwrap()];
    assert_eq!(pick.answer, "7");
    assert_eq!(pick.verified, Some(true));
    assert_eq!(pick.reflections, 1);
}

#[test]
fn an_answer_marker_written_across_actions_ends_the_thought() {
    let mut s = Script::new("We add 3 and 4, which gives 7.", "7");
    s.writes_marker = true;
    for g in [
        Granularity::Token,
        Granularity::MiniStep32,
        Granularity::Step,
    ] {
        let mut e = play_engine(vec![s.clone()], 1 << 16);
        let cfg = SearchConfig {
            granularity: g,
            step_max_tokens: 7,
            expand_k: 1,
            max_rollouts: 1,
            ..Default::default()
        };
        let r = &search(&mut e, &cfg, &[seed("q", "What is 3 + 4?", Some("7"))])[0];
        assert_eq!(r.chains.len(), 1, "{g}");
        let c = &r.chains[0];
        assert_eq!(c.reasoning, "We add 3 and 4, which gives 7.", "{g}");
        assert!(!c.reasoning.contains("Thought") && !c.reasoning.contains("<Output"));
        assert_eq!(c.answer, "7", "{g}");
        assert_eq!(c.terminal, Some(TerminalCause::AnswerMarker), "{g}");
        assert_eq!(c.verified, Some(true));
    }
}

#[test]
fn multi_byte_characters_split_between_actions_survive() {
    // Every token is one byte: each CJK character and emoji spans 3-4 actions.
    let thought = "我们先把三和四相加，得到七。🙂\n\n所以答案是七。";
    let mut e = play_engine(vec![Script::new(thought, "七")], 1 << 16);
    for g in [Granularity::Token, Granularity::Step] {
        let cfg = SearchConfig {
            granularity: g,
            expand_k: 1,
            max_rollouts: 1,
            ..Default::default()
        };
        let r = &search(&mut e, &cfg, &[seed("zh", "三加四等于几？", Some("七"))])[0];
        let c = &r.chains[0];
        assert_eq!(c.reasoning, thought, "{g}");
        assert!(!c.reasoning.contains('\u{FFFD}'));
        assert_eq!(c.answer, "七");
        assert_eq!(c.verified, Some(true));
    }
}

#[test]
fn early_streams_cannot_spend_the_budget_of_later_rollouts() {
    // Every chain reflects while its allotment lasts, and each attempt is
    // long: handed out greedily, the first iteration's streams spent most of
    // the tree budget on reflections and later rollouts were cut mid-thought.
    let a = "Let me count: one, two, three, four. ".repeat(4);
    let b = "Again, slowly: four, then five, six, seven. ".repeat(4);
    let mut again = Script::new(&b, "7");
    again.after_reflection = true;
    let mut cfg = SearchConfig {
        expand_k: 3,
        max_rollouts: 8,
        max_tree_tokens: 3000,
        max_thought_tokens: 400,
        answer_max_tokens: 8,
        ..Default::default()
    };
    cfg.reflection.policy = ReflectionPolicy::Always;
    cfg.reflection.max_per_chain = 4;
    let mut e = play_engine(vec![Script::new(&a, "4"), again], 1 << 16);
    let r = &search(&mut e, &cfg, &[seed("b", "Count to seven.", Some("7"))])[0];
    assert!(r.stats.tokens_sampled <= 3000);
    assert_eq!(r.stats.rollouts, 8, "{:?}", r.stats);
    let cut: Vec<_> = r
        .tree
        .nodes
        .iter()
        .filter(|n| n.terminal == Some(TerminalCause::TokenBudget))
        .map(|n| n.id)
        .collect();
    assert!(cut.is_empty(), "thoughts cut by the budget at {cut:?}");
}

#[test]
fn a_rollout_may_take_one_whole_chain_while_later_ones_stay_funded() {
    // 1,600 tokens over 6 rollouts is an equal share of 266, shorter than
    // one of these chains (about 300): shared equally, every thought of the
    // first iteration was cut by the budget and answered anyway.
    let a = "First add the two numbers, then check the sum once more. ".repeat(5);
    let b = "Count up from the first number by the second, one by one. ".repeat(5);
    let cfg = SearchConfig {
        expand_k: 3,
        max_rollouts: 6,
        max_tree_tokens: 1600,
        max_thought_tokens: 320,
        answer_max_tokens: 8,
        ..Default::default()
    };
    let mut e = play_engine(vec![Script::new(&a, "7"), Script::new(&b, "7")], 1 << 16);
    let r = &search(&mut e, &cfg, &[seed("w", "Add 3 and 4.", Some("7"))])[0];
    assert!(r.stats.tokens_sampled <= 1600, "{:?}", r.stats);
    // The first iteration's streams: from each child of the root, the
    // first child down to where the stream ended.
    let node = |id: NodeId| r.tree.nodes.iter().find(|n| n.id == id).unwrap();
    let root = r.tree.nodes.iter().find(|n| n.parent.is_none()).unwrap();
    assert_eq!(root.children.len(), 3);
    for &c in &root.children {
        let mut n = node(c);
        while n.terminal.is_none() {
            n = node(n.children[0]);
        }
        assert_ne!(
            n.terminal,
            Some(TerminalCause::TokenBudget),
            "node {:?} was cut",
            n.id
        );
    }
    assert!(
        r.stats.rollouts >= 4,
        "later rollouts unfunded: {:?}",
        r.stats
    );
}

#[test]
fn max_depth_defaults_scale_to_token_granularity() {
    let cfg = SearchConfig {
        granularity: Granularity::Token,
        max_rollouts: 4,
        max_thought_tokens: 200,
        ..Default::default()
    };
    assert_eq!(cfg.effective_max_depth(), 200);
    let res = search(
        &mut scripted(1 << 20),
        &cfg,
        &[seed("t", "Add 2 and 3.", Some("5"))],
    );
    let longest = res[0].chains.iter().map(|c| c.tokens).max().unwrap_or(0);
    assert!(
        longest > 24,
        "longest chain {longest} tokens: cut at the 12-action default"
    );
    assert!(res[0]
        .chains
        .iter()
        .all(|c| c.terminal != Some(TerminalCause::DepthCap)));
    // At step granularity the default stays 12 steps.
    assert_eq!(SearchConfig::default().effective_max_depth(), 12);
}

#[test]
fn a_tree_that_does_not_fit_fails_alone() {
    // Built against a large context, run on a small one: the long prompt's
    // sequence cannot be decoded, the other trees must still finish.
    let cfg = SearchConfig {
        max_rollouts: 3,
        max_thought_tokens: 60,
        answer_max_tokens: 8,
        max_tree_tokens: 400,
        ..Default::default()
    };
    let long = "Count the words. ".repeat(40);
    let seeds = [
        seed("short-0", "Add 1 and 2.", Some("3")),
        seed("long", &long, Some("3")),
        seed("short-1", "Add 2 and 2.", Some("4")),
    ];
    let big = scripted(1 << 20);
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&big, s, &cfg, default_verifier()).unwrap())
        .collect();
    let mut small = scripted(300);
    let mut failed = 0;
    let (res, _) = run_trees(
        &mut small,
        None,
        trees,
        &DriverConfig::default(),
        &mut |o, _| failed += o.is_err() as usize,
    )
    .unwrap();
    assert_eq!(failed, 1);
    let f = res[1].as_ref().unwrap_err();
    assert_eq!(f.seed_id, "long");
    assert!(f.error.contains("context"), "{}", f.error);
    for i in [0, 2] {
        assert!(!res[i].as_ref().unwrap().chains.is_empty());
    }
    assert_eq!(small.live_sequences(), 0);
    // run_many keeps its all-or-nothing contract.
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&big, s, &cfg, default_verifier()).unwrap())
        .collect();
    assert!(run_many(
        &mut scripted(300),
        trees,
        &DriverConfig::default(),
        &mut |_, _| {}
    )
    .is_err());
    let _ = SelectRule::MostVisited;
}

#[test]
fn the_kv_cell_budget_grows_by_what_evictions_cost() {
    let cfg = SearchConfig {
        max_rollouts: 9,
        max_tree_tokens: 3000,
        ..Default::default()
    };
    let seeds: Vec<Seed> = (0..4)
        .map(|i| seed(&format!("k{i}"), &format!("Add {i} and 5."), Some("9")))
        .collect();
    let run = |grow: bool| {
        let mut e = scripted(1 << 20);
        let trees = seeds
            .iter()
            .map(|s| TreeSearch::new(&e, s, &cfg, default_verifier()).unwrap())
            .collect();
        let d = DriverConfig {
            max_cells: Some(64),
            grow_cells: grow,
            ..Default::default()
        };
        run_many(&mut e, trees, &d, &mut |_, _| {}).unwrap()
    };
    let (fixed, rf) = run(false);
    let (grown, rg) = run(true);
    assert_eq!(rf.final_max_cells, Some(64));
    assert!(rg.final_max_cells.unwrap() > 64);
    assert!(
        rg.tokens_evaluated < rf.tokens_evaluated,
        "{} evaluated with growth, {} without",
        rg.tokens_evaluated,
        rf.tokens_evaluated
    );
    // Caching never changes a tree.
    for (a, b) in fixed.iter().zip(&grown) {
        assert_eq!(a.tree.to_json(), b.tree.to_json());
    }
}
