//! Plain batched sampling: N completions of each of many prompts, every
//! prompt evaluated once and forked, all live completions advanced together
//! (up to `n_parallel` per decode call). Used by `cotforge generate` and the
//! best-of-n `instruction` recipe.

use std::collections::VecDeque;

use super::{
    mean_confidence, sampling::derive_seed, Engine, Result, SamplingParams, SeqId, StepRequest,
    Token, TokenOut,
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
    /// Why it ended.
    pub finish: Finish,
}

/// Why a sampled completion ended (its `Display` names are what
/// `cotforge generate --json` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString, strum::AsRefStr)]
#[strum(serialize_all = "snake_case")]
pub enum Finish {
    /// The model emitted an end-of-generation token.
    Eog,
    /// The text ended with one of the stop strings.
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
}

/// One prompt to sample from: its tokens and its seed; completion `i` uses
/// `derive_seed(seed, i)`, so results do not depend on batch composition.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleJob {
    pub prompt: Vec<Token>,
    pub n: usize,
    pub seed: u64,
}

struct Live {
    job: usize,
    index: usize,
    seq: SeqId,
    tokens: Vec<TokenOut>,
    bytes: Vec<u8>,
}

/// Sample every job's completions; results are in job order, then index order.
pub fn sample_batch(
    engine: &mut dyn Engine,
    jobs: &[SampleJob],
    params: SamplingParams,
    rule: &StopRule,
) -> Result<Vec<Vec<Completion>>> {
    let mut results: Vec<Vec<Option<Completion>>> = jobs.iter().map(|j| vec![None; j.n]).collect();
    // Pending work: (job, completion index). Roots are created lazily, and
    // released once their last completion has been forked.
    let mut queue: VecDeque<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.n).map(move |i| (j, i)))
        .collect();
    let mut roots: Vec<Option<SeqId>> = vec![None; jobs.len()];
    let mut forks_left: Vec<usize> = jobs.iter().map(|j| j.n).collect();
    let mut live: Vec<Live> = Vec::new();
    // One slot is kept for a root while forks are live.
    let width = engine
        .n_parallel()
        .min(engine.n_seq_max().saturating_sub(1))
        .max(1);
    let run = (|| {
        loop {
            while live.len() < width {
                let Some((j, i)) = queue.pop_front() else {
                    break;
                };
                let root = match roots[j] {
                    Some(r) => r,
                    None => {
                        let r = engine.new_sequence()?;
                        roots[j] = Some(r);
                        engine.append(r, &jobs[j].prompt)?;
                        engine.evaluate(r)?;
                        r
                    }
                };
                let seq = engine.fork(root)?;
                forks_left[j] -= 1;
                if forks_left[j] == 0 {
                    engine.release(root)?;
                    roots[j] = None;
                }
                live.push(Live {
                    job: j,
                    index: i,
                    seq,
                    tokens: Vec::new(),
                    bytes: Vec::new(),
                });
            }
            if live.is_empty() {
                break;
            }
            let reqs: Vec<StepRequest> = live
                .iter()
                .map(|l| StepRequest {
                    seq: l.seq,
                    sampling: SamplingParams {
                        seed: derive_seed(jobs[l.job].seed, l.index as u64),
                        ..params
                    },
                })
                .collect();
            let outs = engine.step(&reqs)?;
            let mut still = Vec::with_capacity(live.len());
            for (mut l, o) in live.drain(..).zip(outs) {
                let eog = o.eog;
                if !eog {
                    l.bytes.extend_from_slice(&o.piece);
                }
                l.tokens.push(o);
                let finish = if eog {
                    Some(Finish::Eog)
                } else if rule.stop.iter().any(|s| l.bytes.ends_with(s.as_bytes())) {
                    Some(Finish::Stop)
                } else if l.tokens.len() >= rule.max_tokens {
                    Some(Finish::MaxTokens)
                } else {
                    None
                };
                match finish {
                    Some(f) => {
                        engine.release(l.seq)?;
                        results[l.job][l.index] = Some(Completion {
                            text: String::from_utf8_lossy(&l.bytes).into_owned(),
                            mean_confidence: mean_confidence(&l.tokens),
                            tokens: l.tokens,
                            finish: f,
                        });
                    }
                    None => still.push(l),
                }
            }
            live = still;
        }
        Ok(())
    })();
    if run.is_err() {
        // Leave the engine clean for the caller.
        for l in &live {
            let _ = engine.release(l.seq);
        }
        for r in roots.iter().flatten() {
            let _ = engine.release(*r);
        }
    }
    run?;
    Ok(results
        .into_iter()
        .map(|r| r.into_iter().flatten().collect())
        .collect())
}

/// `n` completions of one prompt.
pub fn sample_n(
    engine: &mut dyn Engine,
    prompt_tokens: &[Token],
    n: usize,
    params: SamplingParams,
    rule: &StopRule,
) -> Result<Vec<Completion>> {
    let job = SampleJob {
        prompt: prompt_tokens.to_vec(),
        n,
        seed: params.seed,
    };
    Ok(sample_batch(engine, &[job], params, rule)?
        .pop()
        .unwrap_or_default())
}
