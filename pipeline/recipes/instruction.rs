//! `instruction`: best-of-n sampling on instructions, scored by mean token
//! confidence. The best completion of each seed ships (after the filters);
//! no reasoning is required. Seed text is tokenized plain (no control
//! tokens from seeds); a seed the template, tokenizer or sampler fails on
//! becomes a reject (`instruction.prompt`, `instruction.sample`) while its
//! batch-mates are sampled alone.

use serde::{Deserialize, Serialize};

use crate::engine::generate::{sample_batch, SampleJob, StopRule};
use crate::engine::sampling::{derive_seed, DEFAULT_TEMPERATURE, DEFAULT_TOP_P};
use crate::engine::{Engine, SamplingParams};
use crate::record::{seed_hash, Chain, Recipe, Seed, Stage};
use crate::stages::filter::FilterChain;
use crate::store::worker::{ProcessError, Processed, Processor};

use super::{
    all_results, batch_then_alone, engine_reject, filter_chains, is_seed_error, reject_seed,
    seed_failed, seed_prompt_tokens, RowMeta,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstructionConfig {
    /// Completions sampled per seed.
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub system_prompt: String,
    /// Root of the sampling seeds (each seed derives its own from its id).
    pub seed: u64,
}

impl Default for InstructionConfig {
    fn default() -> Self {
        Self {
            n: 4,
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            max_tokens: 256,
            system_prompt: String::new(),
            seed: 0,
        }
    }
}

pub struct Instruction<'e> {
    pub engine: &'e mut dyn Engine,
    pub cfg: InstructionConfig,
    pub filters: FilterChain,
    pub meta: RowMeta,
}

impl Processor for Instruction<'_> {
    fn tokens(&self) -> u64 {
        super::engine_tokens(&*self.engine)
    }

    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, ProcessError> {
        let system =
            (!self.cfg.system_prompt.is_empty()).then_some(self.cfg.system_prompt.as_str());
        let mut jobs = Vec::new();
        let mut idx = Vec::new();
        let mut out: Vec<Option<Processed>> = vec![None; seeds.len()];
        for (i, seed) in seeds.iter().enumerate() {
            let prompt = match seed_prompt_tokens(&*self.engine, seed, system) {
                Ok(p) => p,
                Err(e) if is_seed_error(&e) => {
                    out[i] = Some(engine_reject(
                        seed,
                        Recipe::Instruction,
                        Stage::InstructionPrompt,
                        &e,
                    ));
                    continue;
                }
                Err(e) => return Err(seed_failed(seed, e)),
            };
            if prompt.len() + self.cfg.max_tokens > self.engine.n_ctx() {
                out[i] = Some(Processed {
                    accepted: vec![],
                    rejected: vec![reject_seed(
                        seed,
                        Recipe::Instruction,
                        Stage::InstructionInput,
                        format!(
                            "prompt of {} tokens + max_tokens {} exceeds n_ctx {}",
                            prompt.len(),
                            self.cfg.max_tokens,
                            self.engine.n_ctx()
                        ),
                    )],
                });
                continue;
            }
            jobs.push(SampleJob {
                prompt,
                n: self.cfg.n,
                seed: derive_seed(self.cfg.seed, seed_hash(&seed.id)),
            });
            idx.push(i);
        }
        let params = SamplingParams::new(self.cfg.temperature, self.cfg.top_p, self.cfg.seed);
        let rule = StopRule {
            max_tokens: self.cfg.max_tokens,
            stop: vec![],
        };
        let engine = &mut *self.engine;
        let results = batch_then_alone(&jobs, |js| sample_batch(engine, js, params, &rule))
            .map_err(|(k, e)| seed_failed(&seeds[idx[k]], e))?;
        let settings =
            serde_json::json!({"recipe": "instruction", "best_of_n": self.cfg}).to_string();
        for (i, completions) in idx.into_iter().zip(results) {
            let seed = &seeds[i];
            let completions = match completions {
                Ok(c) => c,
                Err(e) => {
                    out[i] = Some(engine_reject(
                        seed,
                        Recipe::Instruction,
                        Stage::InstructionSample,
                        &e,
                    ));
                    continue;
                }
            };
            // Best of n: highest mean confidence, then the lowest index.
            let best = completions.iter().enumerate().max_by(|a, b| {
                a.1.mean_confidence
                    .total_cmp(&b.1.mean_confidence)
                    .then(b.0.cmp(&a.0))
            });
            let Some((k, c)) = best else {
                out[i] = Some(Processed::default());
                continue;
            };
            let disc = format!("best-of-{}:{k}", self.cfg.n);
            let chain = Chain {
                answer: c.text.trim().to_string(),
                reward: c.mean_confidence,
                step_confidences: vec![c.mean_confidence],
                tokens: c.tokens.len() as u32,
                ..self.meta.chain(seed, Recipe::Instruction, &disc, &settings)
            };
            out[i] = Some(filter_chains(&self.filters, seed, vec![chain]));
        }
        all_results(out)
    }
}
