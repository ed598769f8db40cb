//! Value functions, the majority vote, the ship policies and per-seed
//! failure isolation, on the scripted engine through the `marco_cot` recipe.

use std::collections::BTreeMap;
use std::sync::Arc;

use cotforge::engine::{CoreLimits, EngineConfig, EngineKind, ScriptedConfig, ScriptedEngine};
use cotforge::recipes::marco::{MarcoCot, SeedOutcome, STAGE_INPUT, STAGE_SEARCH, STAGE_SHIP};
use cotforge::recipes::RowMeta;
use cotforge::record::Seed;
use cotforge::search::ship::{NOT_SELECTED, UNVERIFIED};
use cotforge::search::{
    DriverConfig, Judge, JudgeConfig, JudgeRequest, SearchConfig, SearchError, SelectRule,
    ShipPolicy, TreeResult, ValueKind, ValueSpec, Verifier,
};
use cotforge::stages::answer::answer_key;
use cotforge::stages::filter::FilterChain;

fn engine(n_ctx: usize, n_parallel: usize) -> ScriptedEngine {
    engine_with_seqs(n_ctx, n_parallel, 48)
}

fn engine_with_seqs(n_ctx: usize, n_parallel: usize, n_seq_max: usize) -> ScriptedEngine {
    ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx,
            n_batch: 1 << 16,
            n_parallel,
            n_seq_max,
        },
    )
}

fn seeds(n: usize, with_reference: bool) -> Vec<Seed> {
    (0..n)
        .map(|i| Seed {
            id: format!("v{i}"),
            prompt: format!("What is {i} + 3? Let us add the number."),
            reference_answer: with_reference.then(|| format!("{}", i + 3)),
            ..Default::default()
        })
        .collect()
}

/// The scripted model answers with random digits: call an answer right when
/// it starts with an odd digit, so both kinds occur.
fn odd_is_right() -> Arc<Verifier> {
    Arc::new(|a: &str, _r: &str| {
        a.trim()
            .chars()
            .next()
            .and_then(|c| c.to_digit(10))
            .is_some_and(|d| d % 2 == 1)
    })
}

/// The scripted model's answer follows from the last few tokens (the close
/// tag): sample it, so the chains of a tree disagree.
fn base() -> SearchConfig {
    SearchConfig {
        max_rollouts: 9,
        max_tree_tokens: 3000,
        answer_temperature: 1.0,
        ..Default::default()
    }
}

struct Run {
    outcomes: Vec<SeedOutcome>,
}

fn run_with(
    e: &mut ScriptedEngine,
    search: SearchConfig,
    verifier: Arc<Verifier>,
    judge: Option<Box<dyn Judge>>,
    s: &[Seed],
) -> Result<Run, cotforge::recipes::RecipeError> {
    let mut m = MarcoCot {
        engine: e,
        search: search.build().unwrap(),
        driver: DriverConfig::default(),
        verifier,
        filters: FilterChain::default(),
        meta: RowMeta::default(),
        trees_dir: None,
        judge,
    };
    let (outcomes, _) = m.run(s, &mut |_, _| {})?;
    Ok(Run { outcomes })
}

/// A run on the usual engine with the odd-digit verifier and no judge override.
fn go(cfg: SearchConfig, s: &[Seed]) -> Run {
    run_with(&mut engine(1 << 20, 4), cfg, odd_is_right(), None, s).unwrap()
}

fn results(r: &Run) -> Vec<&TreeResult> {
    r.outcomes
        .iter()
        .filter_map(|o| o.result.as_ref())
        .collect()
}

fn with_value(v: ValueSpec) -> SearchConfig {
    SearchConfig { value: v, ..base() }
}

/// Answered terminals' vote counts, from the exported tree.
fn votes(r: &TreeResult) -> (BTreeMap<String, u32>, u32) {
    let mut m = BTreeMap::new();
    let mut total = 0;
    for n in &r.tree.nodes {
        if let Some(a) = &n.answer {
            total += 1;
            if let Some(k) = answer_key(&a.text) {
                *m.entry(k).or_default() += 1;
            }
        }
    }
    (m, total)
}

#[test]
fn confidence_is_the_chain_reward() {
    let r = go(base(), &seeds(3, true));
    for t in results(&r) {
        for c in &t.chains {
            assert_eq!(c.value, c.reward);
        }
    }
}

#[test]
fn verifier_ranks_every_right_chain_above_every_wrong_one() {
    let cfg = with_value(ValueSpec::one(ValueKind::Verifier));
    let r = go(cfg, &seeds(4, true));
    let chains: Vec<_> = results(&r)
        .into_iter()
        .flat_map(|t| t.chains.iter())
        .collect();
    let right: Vec<f64> = chains
        .iter()
        .filter(|c| c.verified == Some(true))
        .map(|c| c.value)
        .collect();
    let wrong: Vec<f64> = chains
        .iter()
        .filter(|c| c.verified == Some(false))
        .map(|c| c.value)
        .collect();
    assert!(!right.is_empty() && !wrong.is_empty());
    let lo = right.iter().copied().fold(f64::MAX, f64::min);
    let hi = wrong.iter().copied().fold(f64::MIN, f64::max);
    assert!(lo > hi, "right chains from {lo}, wrong ones up to {hi}");
    // Without a reference it is plain confidence.
    let cfg = with_value(ValueSpec::one(ValueKind::Verifier));
    let r = go(cfg, &seeds(2, false));
    for t in results(&r) {
        assert!(t
            .chains
            .iter()
            .all(|c| c.value == c.reward && c.verified.is_none()));
    }
}

#[test]
fn self_consistency_is_the_answer_share_and_majority_vote_picks_the_most_common() {
    let cfg = SearchConfig {
        select: SelectRule::MajorityVote,
        ..with_value(ValueSpec::one(ValueKind::SelfConsistency))
    };
    let r = go(cfg, &seeds(4, true));
    for t in results(&r) {
        let (counts, total) = votes(t);
        for c in &t.chains {
            let want = c.answer_key.as_ref().map_or(0, |k| counts[k]) as f64 / total as f64;
            assert!((c.value - want).abs() < 1e-12, "{} vs {want}", c.value);
            assert_eq!(c.value, c.agreement);
        }
        let top = counts.values().copied().max().unwrap();
        assert!(counts.len() > 1, "every chain answers alike: {counts:?}");
        let pick = &t.chains[t.selected.unwrap()];
        assert_eq!(t.picks.majority_vote, t.selected);
        assert_eq!(
            counts[pick.answer_key.as_ref().unwrap()],
            top,
            "{:?}",
            counts
        );
    }
}

#[test]
fn a_mix_weights_its_parts() {
    let cfg = with_value(ValueSpec::mix(&[
        (ValueKind::Confidence, 0.3),
        (ValueKind::SelfConsistency, 0.7),
    ]));
    let r = go(cfg, &seeds(3, true));
    for t in results(&r) {
        for c in &t.chains {
            assert!((c.value - (0.3 * c.reward + 0.7 * c.agreement)).abs() < 1e-9);
        }
    }
}

fn scripted_judge() -> SearchConfig {
    SearchConfig {
        judge: Some(JudgeConfig {
            engine: EngineConfig {
                kind: EngineKind::Scripted,
                ..JudgeConfig::default().engine
            },
            ..Default::default()
        }),
        ..with_value(ValueSpec::one(ValueKind::Judge))
    }
}

#[test]
fn judge_scores_every_chain_deterministically() {
    let s = seeds(3, false);
    let a = go(scripted_judge(), &s);
    let b = run_with(
        &mut engine(1 << 20, 1),
        scripted_judge(),
        odd_is_right(),
        None,
        &s,
    )
    .unwrap();
    for (x, y) in results(&a).into_iter().zip(results(&b)) {
        assert_eq!(
            x.tree.to_json(),
            y.tree.to_json(),
            "judged trees depend on batching"
        );
        for c in &x.chains {
            let j = c.judge.expect("every chain is judged");
            assert!((0.0..=1.0).contains(&j));
            assert_eq!(c.value, j);
        }
    }
    // Without a judge engine the config is refused up front.
    assert!(with_value(ValueSpec::one(ValueKind::Judge))
        .build()
        .is_err());
}

/// A judge that refuses one seed's chains: that seed fails, the others finish.
struct Picky;
impl Judge for Picky {
    fn judge(&mut self, reqs: &[JudgeRequest]) -> Result<Vec<f64>, SearchError> {
        if reqs.iter().any(|r| r.question.contains("poison")) {
            return Err(SearchError::Config(
                "the judge cannot read this chain".into(),
            ));
        }
        Ok(reqs.iter().map(|_| 0.5).collect())
    }
}

#[test]
fn a_seed_that_cannot_run_becomes_a_reject_and_the_others_finish() {
    let mut s = seeds(3, true);
    // Too long for the context: refused before the search.
    s.insert(
        1,
        Seed {
            id: "too-long".into(),
            prompt: "Count the words of this sentence. ".repeat(80),
            reference_answer: Some("6".into()),
            ..Default::default()
        },
    );
    let r = run_with(&mut engine(1024, 4), base(), odd_is_right(), None, &s).unwrap();
    assert_eq!(r.outcomes.len(), 4);
    let bad = &r.outcomes[1].processed;
    assert!(bad.accepted.is_empty() && bad.rejected.len() == 1);
    let rej = &bad.rejected[0];
    assert_eq!((rej.seed_id.as_str(), rej.stage), ("too-long", STAGE_INPUT));
    assert!(
        rej.reason.contains("too-long") && rej.reason.contains("n_ctx"),
        "{}",
        rej.reason
    );
    for i in [0, 2, 3] {
        assert!(r.outcomes[i].result.is_some(), "seed {i} did not finish");
    }
    // A tree failing mid-search (here: its judge) is a reject of stage marco_cot.search.
    let mut s = seeds(3, false);
    s[2].prompt = "poison: what is 2 + 2?".into();
    let r = run_with(
        &mut engine(1 << 20, 4),
        scripted_judge(),
        odd_is_right(),
        Some(Box::new(Picky)),
        &s,
    )
    .unwrap();
    let rej = &r.outcomes[2].processed.rejected[0];
    assert_eq!((rej.seed_id.as_str(), rej.stage), ("v2", STAGE_SEARCH));
    assert!(
        rej.reason.contains("v2") && rej.reason.contains("judge"),
        "{}",
        rej.reason
    );
    assert!(r.outcomes[0].result.is_some() && r.outcomes[1].result.is_some());
}

fn shipped(o: &SeedOutcome) -> usize {
    o.processed.accepted.len()
}

fn held(o: &SeedOutcome, reason: &str) -> usize {
    o.processed
        .rejected
        .iter()
        .filter(|r| r.stage == STAGE_SHIP && r.reason.starts_with(reason))
        .count()
}

#[test]
fn ship_policies_ship_what_they_say_and_keep_the_rest() {
    let s = seeds(4, true);
    let run = |ship: Option<ShipPolicy>| {
        let cfg = SearchConfig {
            ship,
            ship_k: 2,
            ..base()
        };
        go(cfg, &s)
    };
    for (policy, o) in [
        ShipPolicy::All,
        ShipPolicy::Selected,
        ShipPolicy::Verified,
        ShipPolicy::TopK,
    ]
    .into_iter()
    .map(|p| (p, run(Some(p))))
    {
        for x in &o.outcomes {
            let t = x.result.as_ref().unwrap();
            let n = t.chains.len();
            // Nothing is dropped: every chain ships or is held back with a reason.
            assert_eq!(shipped(x) + x.processed.rejected.len(), n, "{policy}");
            assert_eq!(x.chains.len(), n);
            match policy {
                ShipPolicy::All => assert_eq!(shipped(x), n),
                ShipPolicy::Selected => {
                    assert_eq!(shipped(x), 1);
                    assert_eq!(x.processed.accepted[0].selected, Some(true));
                    assert_eq!(held(x, NOT_SELECTED), n - 1);
                }
                ShipPolicy::Verified => {
                    let right = t.chains.iter().filter(|c| c.verified == Some(true)).count();
                    assert_eq!(shipped(x), right);
                    assert!(x
                        .processed
                        .accepted
                        .iter()
                        .all(|c| c.verified == Some(true)));
                    assert_eq!(held(x, UNVERIFIED), n - right);
                }
                ShipPolicy::TopK => {
                    assert_eq!(shipped(x), n.min(2));
                    let mut v: Vec<f64> = t.chains.iter().map(|c| c.value).collect();
                    v.sort_by(|a, b| b.total_cmp(a));
                    let min_shipped = x
                        .processed
                        .accepted
                        .iter()
                        .filter_map(|c| c.value)
                        .fold(f64::MAX, f64::min);
                    assert!(min_shipped >= v[n.min(2) - 1]);
                    assert_eq!(held(x, NOT_SELECTED), n - n.min(2));
                }
            }
            for c in &x.chains {
                assert_eq!(
                    c.shipped,
                    x.processed.accepted.iter().any(|a| a.id == c.chain.id)
                );
                assert!(!c.why.is_empty());
                assert!(c.chain.selected.is_some() && c.chain.value.is_some());
            }
        }
    }
    // Defaults: verified with a reference, the selected chain without.
    let d = run(None);
    assert!(d.outcomes.iter().all(|x| x
        .processed
        .accepted
        .iter()
        .all(|c| c.verified == Some(true))));
    let cfg = base();
    let free = go(cfg, &seeds(3, false));
    for x in &free.outcomes {
        assert_eq!(shipped(x), 1);
        assert_eq!(x.processed.accepted[0].selected, Some(true));
    }
}

#[test]
fn solved_seeds_pass_their_unspent_budget_to_unsolved_ones() {
    let budget = 1200u32;
    let cfg = |pool: bool| SearchConfig {
        max_rollouts: 6,
        max_tree_tokens: budget,
        stop_after_verified: 1,
        pool_unspent: pool,
        value: ValueSpec::one(ValueKind::Verifier),
        ..base()
    };
    let s = seeds(8, true);
    // Right only for a few seeds: the prompt's number decides.
    let rare: Arc<Verifier> =
        Arc::new(|a: &str, r: &str| r.ends_with('3') || (r == "8" && a.starts_with('1')));
    let plain = run_with(&mut engine(1 << 20, 4), cfg(false), rare.clone(), None, &s).unwrap();
    let pooled = run_with(&mut engine(1 << 20, 4), cfg(true), rare.clone(), None, &s).unwrap();
    let again = run_with(&mut engine(1 << 20, 1), cfg(true), rare.clone(), None, &s).unwrap();
    let used =
        |r: &Run| -> Vec<u32> { results(r).iter().map(|t| t.stats.tokens_sampled).collect() };
    let (p, q) = (used(&plain), used(&pooled));
    assert!(p.iter().all(|&u| u <= budget));
    // The batch as a whole stays within its seeds' budgets...
    assert!(q.iter().sum::<u32>() <= budget * s.len() as u32);
    // ...while unsolved seeds searched past their own.
    assert!(q.iter().any(|&u| u > budget), "{q:?}");
    assert!(q.iter().sum::<u32>() > p.iter().sum::<u32>());
    // A tree held for more budget keeps its cached sequences: with room to
    // spare (cells and sequence ids), its restart evaluates nothing twice
    // (released, every restarted tree re-evaluated its paths).
    let roomy = run_with(
        &mut engine_with_seqs(1 << 20, 4, 512),
        cfg(true),
        rare.clone(),
        None,
        &s,
    )
    .unwrap();
    assert_eq!(used(&roomy), q);
    for t in results(&roomy) {
        assert!(
            t.stats.engine_tokens_evaluated <= t.stats.distinct_tokens,
            "{}: evaluated {} of {} distinct",
            t.seed_id,
            t.stats.engine_tokens_evaluated,
            t.stats.distinct_tokens
        );
    }
    for (a, b) in results(&pooled).into_iter().zip(results(&again)) {
        assert_eq!(
            a.tree.to_json(),
            b.tree.to_json(),
            "pooling depends on batching"
        );
    }
}
