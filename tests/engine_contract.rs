//! The engine contract, checked on both engines: the scripted one always, the
//! llama.cpp one with the default model (feature `llama`).

mod common;

use cotforge::engine::{
    mean_confidence, ChatMessage, CoreLimits, Engine, SamplingParams, ScriptedConfig,
    ScriptedEngine, StepRequest, Token, TokenOut,
};

const GSM8K_Q: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in May. How many clips did Natalia sell altogether in April and May?";

fn prompt_tokens(e: &dyn Engine) -> Vec<Token> {
    let text = e
        .apply_chat_template(&[ChatMessage::user(GSM8K_Q)])
        .unwrap();
    e.tokenize(&text, true).unwrap()
}

/// Greedy continuation of `seq` for `n` tokens (one sequence per step).
fn greedy(e: &mut dyn Engine, seq: cotforge::engine::SeqId, n: usize) -> Vec<TokenOut> {
    let mut out = Vec::new();
    for _ in 0..n {
        let o = e
            .step(&[StepRequest {
                seq,
                sampling: SamplingParams::greedy(),
            }])
            .unwrap()
            .remove(0);
        let stop = o.eog;
        out.push(o);
        if stop {
            break;
        }
    }
    out
}

/// Greedy continuation of several sequences advanced together.
fn greedy_batched(
    e: &mut dyn Engine,
    seqs: &[cotforge::engine::SeqId],
    n: usize,
) -> Vec<Vec<Token>> {
    let mut out = vec![Vec::new(); seqs.len()];
    for _ in 0..n {
        let reqs: Vec<_> = seqs
            .iter()
            .map(|&seq| StepRequest {
                seq,
                sampling: SamplingParams::greedy(),
            })
            .collect();
        for (i, o) in e.step(&reqs).unwrap().into_iter().enumerate() {
            out[i].push(o.token);
        }
    }
    out
}

fn check_confidences(e: &mut dyn Engine) {
    let p = prompt_tokens(e);
    let s = e.new_sequence().unwrap();
    e.append(s, &p).unwrap();
    // Sampled tokens (temperature) and greedy ones.
    for i in 0..24 {
        let sampling = if i % 2 == 0 {
            SamplingParams::new(0.9, 0.95, 7)
        } else {
            SamplingParams::greedy()
        };
        let o = e
            .step(&[StepRequest { seq: s, sampling }])
            .unwrap()
            .remove(0);
        assert!(
            o.confidence > 0.0 && o.confidence <= 1.0,
            "confidence {} out of (0, 1]",
            o.confidence
        );
        assert_eq!(o.top.len(), 5);
        assert!(
            o.top.windows(2).all(|w| w[0].1 >= w[1].1),
            "top-5 not sorted: {:?}",
            o.top
        );
        if sampling.temperature == 0.0 {
            // A greedy token has the largest logit, so the largest confidence among its top 5.
            assert_eq!(o.logit, o.top[0].1);
            let best = o
                .top
                .iter()
                .map(|&(_, l)| cotforge::engine::confidence(l, &o.top))
                .fold(0.0, f32::max);
            assert_eq!(o.confidence, best);
        }
        if o.eog {
            break;
        }
    }
    e.release(s).unwrap();
    assert_eq!(e.live_sequences(), 0);
}

fn check_fork_shares_prefix(e: &mut dyn Engine, fresh: &mut dyn Engine) {
    let p = prompt_tokens(e);
    let n_new = 20;
    // Reference: a fresh context evaluating the prefix alone.
    let r = fresh.new_sequence().unwrap();
    fresh.append(r, &p).unwrap();
    let reference: Vec<Token> = greedy(fresh, r, n_new).iter().map(|o| o.token).collect();

    let before = e.stats().tokens_evaluated;
    let root = e.new_sequence().unwrap();
    e.append(root, &p).unwrap();
    e.evaluate(root).unwrap();
    assert_eq!(
        e.stats().tokens_evaluated - before,
        p.len() as u64,
        "prefix evaluated once"
    );
    let forks: Vec<_> = (0..4).map(|_| e.fork(root).unwrap()).collect();
    for &f in &forks {
        assert_eq!(
            e.cached_len(f).unwrap(),
            p.len(),
            "fork shares the cached prefix"
        );
    }
    let outs = greedy_batched(e, &forks, reference.len());
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o, &reference, "fork {i} diverged from the fresh context");
    }
    // Prefix once + for each fork its last prompt token (logits are not kept) + its new tokens.
    let evaluated = e.stats().tokens_evaluated - before;
    let expected = p.len() as u64 + 4 + 4 * (reference.len() as u64 - 1);
    assert_eq!(
        evaluated, expected,
        "evaluated {evaluated} tokens, a shared prefix needs {expected}"
    );
    assert!(
        evaluated < 4 * p.len() as u64,
        "forks must not re-evaluate the prefix"
    );
    for f in forks {
        e.release(f).unwrap();
    }
    e.release(root).unwrap();
    fresh.release(r).unwrap();
}

fn check_truncate_branch(e: &mut dyn Engine, fresh: &mut dyn Engine) {
    let p = prompt_tokens(e);
    let s = e.new_sequence().unwrap();
    e.append(s, &p).unwrap();
    let gen = greedy(e, s, 16);
    assert!(gen.len() >= 8, "need some generated tokens");
    let f = e.fork(s).unwrap();
    let mid = p.len() + 4;
    e.truncate(f, mid).unwrap();
    assert_eq!(e.tokens(f).unwrap().len(), mid);
    let cont: Vec<Token> = greedy(e, f, 12).iter().map(|o| o.token).collect();

    let r = fresh.new_sequence().unwrap();
    let short: Vec<Token> = e.tokens(s).unwrap()[..mid].to_vec();
    fresh.append(r, &short).unwrap();
    let reference: Vec<Token> = greedy(fresh, r, 12).iter().map(|o| o.token).collect();
    assert_eq!(
        cont, reference,
        "continuing a truncated fork must match a fresh context on the shorter prefix"
    );
    // The original sequence is untouched by the fork's truncation.
    assert_eq!(e.tokens(s).unwrap().len(), p.len() + gen.len());
    e.release(f).unwrap();
    e.release(s).unwrap();
    fresh.release(r).unwrap();
}

fn check_score_agrees(e: &mut dyn Engine, tolerance: f64) {
    let p = prompt_tokens(e);
    let s = e.new_sequence().unwrap();
    e.append(s, &p).unwrap();
    let gen = greedy(e, s, 48);
    e.release(s).unwrap();
    let text: Vec<Token> = gen.iter().map(|o| o.token).collect();
    let scored = e.score(&p, &text).unwrap();
    assert_eq!(scored.len(), text.len());
    let diffs: Vec<f64> = gen
        .iter()
        .zip(&scored)
        .map(|(a, b)| (a.confidence - b.confidence).abs() as f64)
        .collect();
    for (a, b) in gen.iter().zip(&scored) {
        assert_eq!(a.token, b.token);
        assert!(b.confidence > 0.0 && b.confidence <= 1.0);
    }
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    println!(
        "score vs generation: {} tokens, mean |diff| {mean:.4}, max |diff| {max:.4}; mean confidence generated {:.4}, scored {:.4}",
        diffs.len(),
        mean_confidence(&gen),
        mean_confidence(&scored)
    );
    assert!(
        mean <= tolerance,
        "mean |confidence diff| {mean} > {tolerance}"
    );
}

fn scripted() -> ScriptedEngine {
    ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 4096,
            n_batch: 64,
            n_parallel: 8,
            n_seq_max: 16,
        },
    )
}

#[test]
fn scripted_confidences() {
    check_confidences(&mut scripted());
}

#[test]
fn scripted_fork_shares_prefix() {
    check_fork_shares_prefix(&mut scripted(), &mut scripted());
}

#[test]
fn scripted_truncate_branch() {
    check_truncate_branch(&mut scripted(), &mut scripted());
}

#[test]
fn scripted_score_agrees_exactly() {
    check_score_agrees(&mut scripted(), 0.0);
}

#[test]
fn scripted_score_many_equals_one_by_one() {
    let mut e = ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 600,
            n_batch: 50,
            n_parallel: 3,
            n_seq_max: 4,
        },
    );
    let texts: Vec<Vec<Token>> = (0..7)
        .map(|i| {
            e.tokenize(
                &format!("Let us add {i} and {} so the answer is {}.", i * 3, i * 4),
                false,
            )
            .unwrap()
        })
        .collect();
    let ctx = prompt_tokens(&e);
    let items: Vec<(&[Token], &[Token])> = texts
        .iter()
        .map(|t| (ctx.as_slice(), t.as_slice()))
        .collect();
    let many = e.score_many(&items).unwrap();
    assert_eq!(e.live_sequences(), 0);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(many[i], e.score(&ctx, t).unwrap(), "item {i}");
    }
    // Groups are limited by the KV budget (600 cells) and n_parallel (3), so several decode calls carried >1 sequence.
    assert!(e.stats().batch_sequences.iter().any(|&n| n > 1));
}

#[test]
fn scripted_errors_are_values_not_panics() {
    use cotforge::engine::{EngineError, SeqId};
    let mut e = scripted();
    assert!(matches!(
        e.step(&[StepRequest {
            seq: SeqId(99),
            sampling: SamplingParams::greedy()
        }]),
        Err(EngineError::UnknownSequence(_))
    ));
    let s = e.new_sequence().unwrap();
    assert!(matches!(
        e.step(&[StepRequest {
            seq: s,
            sampling: SamplingParams::greedy()
        }]),
        Err(EngineError::NothingToSample(_))
    ));
    e.append(s, &[1, 2, 3]).unwrap();
    let dup = [StepRequest {
        seq: s,
        sampling: SamplingParams::greedy(),
    }; 2];
    assert!(matches!(
        e.step(&dup),
        Err(EngineError::DuplicateSequence(_))
    ));
    assert!(e.append(s, &[-1]).is_err());
    let many: Vec<_> = (0..15).map(|_| e.new_sequence().unwrap()).collect();
    assert!(matches!(
        e.new_sequence(),
        Err(EngineError::NoFreeSequence { max: 16 })
    ));
    for m in many {
        e.release(m).unwrap();
    }
    let reqs: Vec<_> = (0..9)
        .map(|_| StepRequest {
            seq: s,
            sampling: SamplingParams::greedy(),
        })
        .collect();
    assert!(matches!(
        e.step(&reqs),
        Err(EngineError::TooManySequences { .. })
    ));
}

#[test]
fn scripted_kv_budget_is_enforced() {
    use cotforge::engine::EngineError;
    let mut e = ScriptedEngine::scripted(
        ScriptedConfig::default(),
        CoreLimits {
            n_ctx: 100,
            n_batch: 32,
            n_parallel: 4,
            n_seq_max: 8,
        },
    );
    let s = e.new_sequence().unwrap();
    e.append(s, &vec![5; 80]).unwrap();
    e.evaluate(s).unwrap();
    // A fork shares cells, so it costs nothing.
    let f = e.fork(s).unwrap();
    assert_eq!(e.cells_used(), 80);
    let t = e.new_sequence().unwrap();
    e.append(t, &[6; 30]).unwrap();
    assert!(matches!(e.evaluate(t), Err(EngineError::KvFull(_))));
    e.release(f).unwrap();
    e.truncate(s, 40).unwrap();
    assert_eq!(e.cells_used(), 40);
    e.evaluate(t).unwrap();
    assert_eq!(e.cells_used(), 70);
}

#[cfg(feature = "llama")]
mod llama {
    use super::*;
    use cotforge::engine::{EngineError, LlamaConfig, LlamaEngine};

    fn load() -> Option<LlamaEngine> {
        let model = common::model_path()?;
        let cfg = LlamaConfig {
            model,
            n_ctx: 2048,
            n_batch: 512,
            n_parallel: 8,
            n_seq_max: 16,
            threads: 2,
            ..Default::default()
        };
        Some(LlamaEngine::load(&cfg).expect("default model loads"))
    }

    #[test]
    fn llama_confidences() {
        let Some(mut e) = load() else { return };
        check_confidences(&mut e);
    }

    #[test]
    fn llama_fork_shares_prefix() {
        let (Some(mut e), Some(mut fresh)) = (load(), load()) else {
            return;
        };
        check_fork_shares_prefix(&mut e, &mut fresh);
    }

    #[test]
    fn llama_truncate_branch() {
        let (Some(mut e), Some(mut fresh)) = (load(), load()) else {
            return;
        };
        check_truncate_branch(&mut e, &mut fresh);
    }

    #[test]
    fn llama_score_agrees() {
        let Some(mut e) = load() else { return };
        check_score_agrees(&mut e, 0.03);
    }

    #[test]
    fn llama_chat_template_is_the_models() {
        let Some(e) = load() else { return };
        let t = e.apply_chat_template(&[ChatMessage::user("hi")]).unwrap();
        assert!(
            t.contains("<|im_start|>user\nhi<|im_end|>") && t.ends_with("<|im_start|>assistant\n"),
            "{t:?}"
        );
        let toks = e.tokenize(&t, true).unwrap();
        assert!(toks.len() > 4 && toks.len() < t.len());
        // Plain text round-trips through tokenize / detokenize.
        let plain = "Natalia sold 48 clips in April.\n\nThen she sold half as many.";
        assert_eq!(
            e.detokenize(&e.tokenize(plain, false).unwrap()).unwrap(),
            plain
        );
    }

    fn load_err(path: &std::path::Path) -> String {
        match common::load_tiny(path) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e @ EngineError::Model { .. }) => e.to_string(),
            Err(other) => panic!("wrong error kind: {other}"),
        }
    }

    #[test]
    fn bad_gguf_paths_give_errors_naming_the_path() {
        let Some(model) = common::model_path() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.gguf");
        let msg = load_err(&missing);
        assert!(
            msg.contains("nope.gguf") && msg.contains("no such file"),
            "{msg}"
        );

        let not_gguf = dir.path().join("notes.gguf");
        std::fs::write(&not_gguf, b"this is a text file, not a model at all").unwrap();
        let msg = load_err(&not_gguf);
        assert!(
            msg.contains("notes.gguf") && msg.contains("not a GGUF"),
            "{msg}"
        );

        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert!(load_err(&empty).contains("empty.gguf"));

        // A real GGUF cut in the middle of its tensor data, and one cut inside its header.
        let bytes = std::fs::read(&model).unwrap();
        for (name, len) in [("half.gguf", bytes.len() / 2), ("header.gguf", 4096)] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes[..len]).unwrap();
            let msg = load_err(&p);
            assert!(msg.contains(name), "{msg}");
        }

        assert!(load_err(dir.path()).contains("directory"));
    }
}

#[test]
fn scripted_batched_sampling_is_independent_of_batch_composition() {
    use cotforge::engine::generate::{sample_batch, sample_n, SampleJob, StopRule};
    let mut e = scripted();
    let rule = StopRule {
        max_tokens: 40,
        stop: vec![],
    };
    let params = SamplingParams::new(0.7, 0.9, 0);
    let jobs: Vec<SampleJob> = (0..5)
        .map(|i| {
            let t = e
                .apply_chat_template(&[ChatMessage::user(format!("question {i}"))])
                .unwrap();
            SampleJob {
                prompt: e.tokenize(&t, true).unwrap(),
                n: 3,
                seed: 100 + i,
            }
        })
        .collect();
    let together = sample_batch(&mut e, &jobs, params, &rule).unwrap();
    assert_eq!(e.live_sequences(), 0);
    // With 15 completions and n_parallel 8, the first decode calls carry 8 sequences.
    assert_eq!(e.stats().batch_sequences.iter().copied().max(), Some(8));
    for (j, job) in jobs.iter().enumerate() {
        let mut alone = scripted();
        let one = sample_n(
            &mut alone,
            &job.prompt,
            3,
            SamplingParams {
                seed: job.seed,
                ..params
            },
            &rule,
        )
        .unwrap();
        assert_eq!(together[j], one, "job {j}");
    }
}
