//! Throughput measurements of an engine, shaped like llama.cpp's own tools so
//! the numbers compare one to one: `decode` mirrors `llama-batched-bench`
//! (P sequences, a prompt each, then TG steps of P tokens), `score` mirrors
//! `llama-perplexity` (chunks evaluated with logits at every position).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    sampling::derive_seed, Engine, EngineError, Result, SamplingParams, StepRequest, Token,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeRun {
    pub parallel: usize,
    /// Prompt tokens per second (all sequences' prompts in one step).
    pub pp_tps: f64,
    /// Generated tokens per second over the TG phase, sampling included.
    pub tg_tps: f64,
    /// Share of TG wall time spent inside decode calls.
    pub tg_decode_share: f64,
}

/// `parallel` sequences each get `prompt` (`npp` tokens) and generate `ntg`
/// tokens with temperature 0.7 / top-p 0.9, all sequences in every step.
pub fn decode(
    engine: &mut dyn Engine,
    prompt: &[Token],
    parallel: usize,
    ntg: usize,
    seed: u64,
) -> Result<DecodeRun> {
    let seqs = (0..parallel)
        .map(|_| engine.new_sequence())
        .collect::<Result<Vec<_>>>()?;
    let run = (|| {
        for &s in &seqs {
            engine.append(s, prompt)?;
        }
        let reqs: Vec<StepRequest> = seqs
            .iter()
            .enumerate()
            .map(|(i, &seq)| StepRequest {
                seq,
                sampling: SamplingParams::new(
                    super::sampling::DEFAULT_TEMPERATURE,
                    super::sampling::DEFAULT_TOP_P,
                    derive_seed(seed, i as u64),
                ),
            })
            .collect();
        let t = Instant::now();
        engine.step(&reqs)?; // prefill of every prompt + the first sampled token
        let pp = t.elapsed().as_secs_f64();
        let dec0 = engine.stats().decode_seconds;
        let t = Instant::now();
        for _ in 0..ntg {
            engine.step(&reqs)?;
        }
        let tg = t.elapsed().as_secs_f64();
        let dec = engine.stats().decode_seconds - dec0;
        Ok(DecodeRun {
            parallel,
            pp_tps: (parallel * prompt.len()) as f64 / pp.max(1e-9),
            tg_tps: (parallel * ntg) as f64 / tg.max(1e-9),
            tg_decode_share: dec / tg.max(1e-9),
        })
    })();
    for s in seqs {
        engine.release(s)?;
    }
    run
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRun {
    pub tokens: usize,
    pub tps: f64,
    pub mean_confidence: f64,
}

/// Teacher-forced scoring of `tokens` in chunks of `chunk` tokens (each chunk
/// a fresh sequence, as llama-perplexity clears the cache per chunk).
pub fn score(engine: &mut dyn Engine, tokens: &[Token], chunk: usize) -> Result<ScoreRun> {
    if chunk < 2 || tokens.len() < chunk {
        return Err(EngineError::Tokenize(format!(
            "score bench needs at least one chunk of {chunk} tokens, got {}",
            tokens.len()
        )));
    }
    let t = Instant::now();
    let mut n = 0;
    let mut sum = 0.0;
    let mut conf_n = 0usize;
    for c in tokens.chunks_exact(chunk) {
        let out = engine.score(&c[..1], &c[1..])?;
        n += c.len();
        conf_n += out.len();
        sum += out.iter().map(|o| o.confidence as f64).sum::<f64>();
    }
    Ok(ScoreRun {
        tokens: n,
        tps: n as f64 / t.elapsed().as_secs_f64().max(1e-9),
        mean_confidence: sum / conf_n.max(1) as f64,
    })
}
