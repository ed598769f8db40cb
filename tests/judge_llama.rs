//! The `judge` value with the real small model (SmolLM2-135M) as the judge:
//! the machinery (every chain judged, scores in [0, 1], the chain's value is
//! the judge's score, the same chain scores the same alone or in a batch),
//! never how good the verdicts are.
#![cfg(feature = "llama")]

mod common;

use cotforge::engine::{CoreLimits, EngineConfig, ScriptedConfig, ScriptedEngine};
use cotforge::recipes::marco::MarcoCot;
use cotforge::recipes::RowMeta;
use cotforge::record::Seed;
use cotforge::search::{
    default_verifier, DriverConfig, Judge, JudgeConfig, JudgeRequest, NodeId, SearchConfig,
    ValueKind, ValueSpec,
};
use cotforge::stages::filter::FilterChain;

fn judge_config(model: std::path::PathBuf) -> JudgeConfig {
    JudgeConfig {
        engine: EngineConfig {
            model,
            threads: 2,
            n_ctx: 4096,
            n_parallel: 4,
            n_seq_max: 8,
            ..EngineConfig::default()
        },
        ..Default::default()
    }
}

#[test]
fn smollm2_judges_every_chain() {
    let Some(model) = common::model_path() else {
        return;
    };
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        std::env::set_var("OMP_WAIT_POLICY", "passive");
    }
    let mut e = ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 1 << 16,
            n_batch: 4096,
            n_parallel: 4,
            n_seq_max: 32,
        },
    );
    let search = SearchConfig {
        max_rollouts: 4,
        max_tree_tokens: 800,
        value: ValueSpec::one(ValueKind::Judge),
        judge: Some(judge_config(model.clone())),
        ..Default::default()
    };
    let seeds: Vec<Seed> = (0..2)
        .map(|i| Seed {
            id: format!("j{i}"),
            prompt: format!("Write one sentence about the number {i}."),
            ..Default::default()
        })
        .collect();
    let mut m = MarcoCot {
        engine: &mut e,
        search: search.build().unwrap(),
        driver: DriverConfig::default(),
        verifier: default_verifier(),
        filters: FilterChain::default(),
        meta: RowMeta::default(),
        trees_dir: None,
        judge: None,
    };
    let (out, _) = m.run(&seeds, &mut |_, _| {}).unwrap();
    let mut reqs = Vec::new();
    for (o, s) in out.iter().zip(&seeds) {
        let r = o.result.as_ref().expect("tree");
        assert!(!r.chains.is_empty());
        for c in &r.chains {
            let j = c.judge.expect("judged");
            assert!((0.0..=1.0).contains(&j), "{j}");
            assert_eq!(c.value, j);
            reqs.push((
                JudgeRequest {
                    node: NodeId(0),
                    question: s.prompt.clone(),
                    reasoning: c.reasoning.clone(),
                    answer: c.answer.clone(),
                },
                j,
            ));
        }
        // Open-ended seed, no reference: the selected chain ships.
        assert_eq!(o.processed.accepted.len(), 1);
    }
    // A fresh judge gives the same scores one chain at a time (llama.cpp's
    // kernels round differently with another batch: close, not bit-equal),
    // and exactly the same for the same batch.
    let mut j = judge_config(model).build().unwrap();
    for (r, want) in &reqs {
        let got = j.judge(std::slice::from_ref(r)).unwrap()[0];
        assert!((got - want).abs() < 0.02, "{got} vs {want}");
    }
    let batch: Vec<JudgeRequest> = reqs.iter().map(|r| r.0.clone()).collect();
    assert_eq!(j.judge(&batch).unwrap(), j.judge(&batch).unwrap());
}
