//! `open_o1`: score chains that already exist (Open-O1 style input, e.g. the
//! Marco-o1 CoT demo). One teacher-forced forward pass per chain gives every
//! token's confidence; the filters then decide what ships.
//!
//! The prompt is the seed's chat with its text tokenized plain, and so is the
//! teacher-forced response: a seed cannot smuggle control tokens in. A seed
//! the template, tokenizer or scorer fails on becomes a reject (stages
//! `open_o1.prompt`, `open_o1.score`); its batch-mates are scored alone.

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError, Token};
use crate::record::{Chain, Recipe, Seed, Stage};
use crate::search::SearchPrompts;
use crate::stages::filter::FilterChain;
use crate::stages::format::check_format;
use crate::store::worker::{ProcessError, Processed, Processor};

use super::{
    all_results, batch_then_alone, engine_reject, filter_chains, is_seed_error, reject_seed,
    seed_failed, seed_prompt_tokens, step_ends, step_means, RowMeta,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenO1Config {
    /// System prompt when the seed has none (empty: none).
    pub system_prompt: String,
    /// Chains longer than this (tokens, prompt included) are rejected unscored.
    pub max_tokens: usize,
    /// Delimiter of reasoning steps for per-step confidences.
    pub step_delimiter: String,
}

impl Default for OpenO1Config {
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            max_tokens: 4096,
            step_delimiter: "\n\n".into(),
        }
    }
}

/// Split a `<Thought>…</Thought><Output>…</Output>` response into its parts.
pub fn split_marco(text: &str) -> Result<(String, String), String> {
    check_format(text).map_err(|e| e.to_string())?;
    let inner = |open: &str, close: &str| -> String {
        let a = text.find(open).map(|i| i + open.len()).unwrap_or(0);
        let b = text[a..].find(close).map(|i| a + i).unwrap_or(text.len());
        text[a..b].trim().to_string()
    };
    Ok((
        inner("<Thought>", "</Thought>"),
        inner("<Output>", "</Output>"),
    ))
}

pub struct OpenO1<'e> {
    pub engine: &'e mut dyn Engine,
    pub cfg: OpenO1Config,
    pub filters: FilterChain,
    pub meta: RowMeta,
}

impl OpenO1<'_> {
    fn settings(&self) -> String {
        serde_json::json!({"recipe": "open_o1", "scoring": "teacher_forced", "config": self.cfg})
            .to_string()
    }

    /// The context (chat prompt + the opening tag) and the teacher-forced text, as tokens.
    fn tokens(
        &self,
        seed: &Seed,
        prompts: &SearchPrompts,
        text: &str,
    ) -> Result<(Vec<Token>, Vec<Token>), EngineError> {
        let system =
            (!self.cfg.system_prompt.is_empty()).then_some(self.cfg.system_prompt.as_str());
        let mut ctx = seed_prompt_tokens(&*self.engine, seed, system)?;
        ctx.extend(self.engine.tokenize(&prompts.thought_open, false)?);
        Ok((ctx, self.engine.tokenize_plain(text)?))
    }
}

impl Processor for OpenO1<'_> {
    fn tokens(&self) -> u64 {
        super::engine_tokens(&*self.engine)
    }

    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, ProcessError> {
        let prompts = SearchPrompts::default();
        let mut out: Vec<Option<Processed>> = vec![None; seeds.len()];
        // (seed index, context tokens, text tokens, reasoning, answer, text)
        let mut work = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            let reject = |reason: String| Processed {
                accepted: vec![],
                rejected: vec![reject_seed(
                    seed,
                    Recipe::OpenO1,
                    Stage::OpenO1Input,
                    reason,
                )],
            };
            let Some(resp) = seed.response.as_deref().filter(|r| !r.trim().is_empty()) else {
                out[i] = Some(reject(
                    "seed has no response to score (open_o1 needs the `response` column)".into(),
                ));
                continue;
            };
            let (reasoning, answer) = match split_marco(resp) {
                Ok(p) => p,
                Err(e) => {
                    out[i] = Some(reject(format!(
                        "response is not a <Thought>/<Output> chain: {e}"
                    )));
                    continue;
                }
            };
            let text = format!(
                "{reasoning}{}{answer}\n{}",
                prompts.thought_close, prompts.output_close
            );
            let (ctx_toks, text_toks) = match self.tokens(seed, &prompts, &text) {
                Ok(t) => t,
                Err(e) if is_seed_error(&e) => {
                    out[i] = Some(engine_reject(seed, Recipe::OpenO1, Stage::OpenO1Prompt, &e));
                    continue;
                }
                Err(e) => return Err(seed_failed(seed, e)),
            };
            let n = ctx_toks.len() + text_toks.len();
            if n > self.cfg.max_tokens || n > self.engine.n_ctx() || text_toks.is_empty() {
                out[i] = Some(reject(format!(
                    "chain is {n} tokens with its prompt, over the limit of {}",
                    self.cfg.max_tokens.min(self.engine.n_ctx())
                )));
                continue;
            }
            work.push((i, ctx_toks, text_toks, reasoning, answer, text));
        }
        let items: Vec<(&[i32], &[i32])> = work
            .iter()
            .map(|w| (w.1.as_slice(), w.2.as_slice()))
            .collect();
        let engine = &mut *self.engine;
        let scored = batch_then_alone(&items, |it| engine.score_many(it))
            .map_err(|(k, e)| seed_failed(&seeds[work[k].0], e))?;
        let settings = self.settings();
        for ((i, _, text_toks, reasoning, answer, text), toks) in work.into_iter().zip(scored) {
            let seed = &seeds[i];
            let toks = match toks {
                Ok(t) => t,
                Err(e) => {
                    out[i] = Some(engine_reject(seed, Recipe::OpenO1, Stage::OpenO1Score, &e));
                    continue;
                }
            };
            let conf: Vec<f32> = toks.iter().map(|t| t.confidence).collect();
            let pieces: Vec<Vec<u8>> = toks.iter().map(|t| t.piece.clone()).collect();
            // Steps of the reasoning, then the answer block as the last step.
            let mut ends = step_ends(&reasoning, &self.cfg.step_delimiter);
            ends.push(text.len());
            let chain = Chain {
                reasoning,
                answer,
                reward: crate::engine::mean_confidence(&toks),
                step_confidences: step_means(&pieces, &conf, text.len(), &ends),
                tokens: text_toks.len() as u32,
                ..self.meta.chain(seed, Recipe::OpenO1, "response", &settings)
            };
            out[i] = Some(filter_chains(&self.filters, seed, vec![chain]));
        }
        all_results(out)
    }
}
