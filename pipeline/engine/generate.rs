//! Plain batched sampling: one prompt, N completions sharing the prompt's KV
//! cells. Used by `cotforge generate` and by best-of-n recipes.

use super::{
    mean_confidence, sampling::derive_seed, Engine, Result, SamplingParams, StepRequest, Token,
    TokenOut,
};

/// When to stop one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct StopRule {
    pub max_tokens: usize,
    /// Stop once the generated text ends with any of these (kept in the text).
    pub stop: Vec<String>,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<TokenOut>,
    pub mean_confidence: f64,
    /// Why it ended: `eog`, `stop`, or `max_tokens`.
    pub finish: &'static str,
}

/// Sample `n` completions of `prompt_tokens`; completion `i` uses the seed
/// `derive_seed(params.seed, i)`. The prompt is evaluated once and forked.
pub fn sample_n(
    engine: &mut dyn Engine,
    prompt_tokens: &[Token],
    n: usize,
    params: SamplingParams,
    rule: &StopRule,
) -> Result<Vec<Completion>> {
    let root = engine.new_sequence()?;
    let out = (|| {
        engine.append(root, prompt_tokens)?;
        engine.evaluate(root)?;
        let mut done: Vec<Option<Completion>> = vec![None; n];
        // Run in waves of at most n_parallel live forks.
        let wave = engine
            .n_parallel()
            .max(1)
            .min(engine.n_seq_max().saturating_sub(1).max(1));
        let mut next = 0;
        while next < n {
            let ids: Vec<usize> = (next..(next + wave).min(n)).collect();
            next += ids.len();
            let mut live = Vec::new();
            for &i in &ids {
                let seq = engine.fork(root)?;
                live.push((i, seq, Vec::<TokenOut>::new(), Vec::<u8>::new()));
            }
            while !live.is_empty() {
                let reqs: Vec<StepRequest> = live
                    .iter()
                    .map(|(i, seq, _, _)| StepRequest {
                        seq: *seq,
                        sampling: SamplingParams {
                            seed: derive_seed(params.seed, *i as u64),
                            ..params
                        },
                    })
                    .collect();
                let outs = engine.step(&reqs)?;
                let mut still = Vec::new();
                for ((i, seq, mut toks, mut bytes), o) in live.into_iter().zip(outs) {
                    let eog = o.eog;
                    if !eog {
                        bytes.extend_from_slice(&o.piece);
                    }
                    toks.push(o);
                    let text_now = String::from_utf8_lossy(&bytes);
                    let finish = if eog {
                        Some("eog")
                    } else if rule.stop.iter().any(|s| text_now.ends_with(s.as_str())) {
                        Some("stop")
                    } else if toks.len() >= rule.max_tokens {
                        Some("max_tokens")
                    } else {
                        None
                    };
                    match finish {
                        Some(f) => {
                            engine.release(seq)?;
                            done[i] = Some(Completion {
                                text: String::from_utf8_lossy(&bytes).into_owned(),
                                mean_confidence: mean_confidence(&toks),
                                tokens: toks,
                                finish: f,
                            });
                        }
                        None => still.push((i, seq, toks, bytes)),
                    }
                }
                live = still;
            }
        }
        Ok(done.into_iter().flatten().collect())
    })();
    engine.release(root)?;
    out
}
