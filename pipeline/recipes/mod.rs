//! Recipes: the three shard kinds of DESIGN.md, each a [`Processor`](crate::store::worker::Processor) the shard
//! worker drives. A recipe turns a batch of seeds into chains with one engine
//! (many seeds share every decode call), then runs its filters; what fails a
//! filter goes to the rejected shard with the reason.
//!
//! [`job`] parses and validates job files; [`run`] runs a job's shards and the
//! finishing merge (dedup, export, report); [`metrics`] is the event sink that
//! writes `metrics.jsonl`.

pub mod instruction;
pub mod job;
pub mod marco;
pub mod metrics;
pub mod open_o1;
pub mod run;
pub mod study;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::engine::{ChatMessage, Engine, EngineError, Token};
pub use crate::record::{chain_id, RowMeta};
use crate::record::{Chain, Recipe, Reject, Seed, Stage};
use crate::stages::filter::{FilterChain, FilterContext};
use crate::store::worker::{ProcessError, Processed};

/// Errors of recipe setup and job files.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{0}")]
    Job(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Search(#[from] crate::search::SearchError),
    #[error(transparent)]
    Stage(#[from] crate::stages::StageError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error("interrupted by a signal; the journal is flushed, rerun the same command to resume")]
    Interrupted,
}

/// Set by SIGINT / SIGTERM; recipes stop between batches when it is set.
#[derive(Debug, Clone, Default)]
pub struct Cancel(pub Arc<AtomicBool>);

impl Cancel {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
}

/// The chat of a seed: its system prompt (else the recipe's default) and its prompt.
pub fn seed_messages(seed: &Seed, default_system: Option<&str>) -> Vec<ChatMessage> {
    let mut msgs = Vec::new();
    if let Some(s) = seed
        .system
        .as_deref()
        .or(default_system)
        .filter(|s| !s.is_empty())
    {
        msgs.push(ChatMessage::system(s));
    }
    msgs.push(ChatMessage::user(&seed.prompt));
    msgs
}

/// The chat-templated prompt of a seed as text (for display and logs; the
/// model is fed [`seed_prompt_tokens`]).
pub fn seed_prompt_text(
    engine: &dyn Engine,
    seed: &Seed,
    default_system: Option<&str>,
) -> Result<String, EngineError> {
    engine.apply_chat_template(&seed_messages(seed, default_system))
}

/// The chat-templated prompt of a seed as tokens: the template's control
/// tokens special, the seed's text plain (a seed carrying `<|im_end|>` cannot
/// open a turn of its own).
pub fn seed_prompt_tokens(
    engine: &dyn Engine,
    seed: &Seed,
    default_system: Option<&str>,
) -> Result<Vec<Token>, EngineError> {
    engine.chat_tokens(&seed_messages(seed, default_system))
}

/// Whether an engine error belongs to one seed's input (its text, its size)
/// rather than to the engine: such a seed becomes a reject and the shard goes on.
pub fn is_seed_error(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Template(_)
            | EngineError::Tokenize(_)
            | EngineError::ContextFull { .. }
            | EngineError::KvFull(_)
            | EngineError::NothingToSample(_)
    )
}

/// A seed's whole result when the engine failed on it: one reject at `stage`.
pub fn engine_reject(seed: &Seed, recipe: Recipe, stage: Stage, e: &EngineError) -> Processed {
    Processed {
        accepted: vec![],
        rejected: vec![reject_seed(seed, recipe, stage, engine_reason(e))],
    }
}

/// The reason of a reject for a seed the engine failed on.
pub fn engine_reason(e: &EngineError) -> String {
    format!(
        "the engine failed on this seed: {e} (the shard went on without it; fix or shorten \
         the seed, or raise [engine] n_ctx)"
    )
}

/// Run `run` over all `items` at once (one shared decode batch); if that
/// fails, run each item alone, so one bad item never fails its batch-mates.
/// An item's own failure ([`is_seed_error`]) is returned in its slot; any
/// other error stops the batch with the index of the item it happened on.
pub fn batch_then_alone<T, R>(
    items: &[T],
    mut run: impl FnMut(&[T]) -> Result<Vec<R>, EngineError>,
) -> Result<Vec<Result<R, EngineError>>, (usize, EngineError)> {
    match run(items) {
        Ok(v) => return Ok(v.into_iter().map(Ok).collect()),
        Err(e) if items.len() <= 1 => {
            return if is_seed_error(&e) {
                Ok(vec![Err(e)])
            } else {
                Err((0, e))
            };
        }
        Err(e) => tracing::debug!("batch of {} failed ({e}); retrying one by one", items.len()),
    }
    let mut out = Vec::with_capacity(items.len());
    for (k, it) in items.iter().enumerate() {
        match run(std::slice::from_ref(it)) {
            Ok(mut v) => match v.pop() {
                Some(r) => out.push(Ok(r)),
                None => {
                    return Err((
                        k,
                        EngineError::Backend("a one-item batch returned nothing".into()),
                    ))
                }
            },
            Err(e) if is_seed_error(&e) => out.push(Err(e)),
            Err(e) => return Err((k, e)),
        }
    }
    Ok(out)
}

/// The engine's work counter (tokens sampled + evaluated), for
/// [`crate::store::Processor::tokens`].
pub fn engine_tokens(engine: &dyn Engine) -> u64 {
    engine.stats().tokens_sampled + engine.stats().tokens_evaluated
}

/// The error for an engine failure on `seed` that is not the seed's fault:
/// it stops the shard (a rerun resumes before the seed's batch).
pub fn seed_failed(seed: &Seed, e: EngineError) -> ProcessError {
    ProcessError::Seed {
        seed_id: seed.id.clone(),
        source: Box::new(e),
    }
}

/// A batch's results from per-seed slots; a seed left without one is an
/// error, so a recipe bug never drops a seed from the output silently.
pub fn all_results(slots: Vec<Option<Processed>>) -> Result<Vec<Processed>, ProcessError> {
    let want = slots.len();
    let got: Vec<Processed> = slots.into_iter().flatten().collect();
    if got.len() == want {
        Ok(got)
    } else {
        Err(ProcessError::Short {
            got: got.len(),
            want,
        })
    }
}

/// A seed-level rejection (nothing was generated for it).
pub fn reject_seed(seed: &Seed, recipe: Recipe, stage: Stage, reason: String) -> Reject {
    Reject {
        seed_id: seed.id.clone(),
        chain_id: None,
        recipe: Some(recipe),
        stage,
        reason,
        row: serde_json::to_string(seed).unwrap_or_default(),
    }
}

/// Run the filters over a seed's chains. A seed whose every chain fails keeps
/// all its rejections, so it still appears in the output exactly once per chain.
pub fn filter_chains(filters: &FilterChain, seed: &Seed, chains: Vec<Chain>) -> Processed {
    let mut ctx = FilterContext::default();
    if let Some(lang) = &seed.lang {
        ctx.seed_lang.insert(seed.id.clone(), lang.clone());
    }
    let (accepted, rejected) = filters.apply_with(chains, &ctx);
    Processed { accepted, rejected }
}

/// Per-step mean confidences: `text` split at `delimiter`, each token counted
/// in the step where its first byte falls.
pub fn step_means(
    pieces: &[Vec<u8>],
    confidences: &[f32],
    text_len: usize,
    step_ends: &[usize],
) -> Vec<f64> {
    let mut sums = vec![(0.0f64, 0usize); step_ends.len().max(1)];
    let mut off = 0usize;
    for (p, &c) in pieces.iter().zip(confidences) {
        let k = step_ends
            .iter()
            .position(|&e| off < e)
            .unwrap_or(step_ends.len().saturating_sub(1));
        let k = k.min(sums.len() - 1);
        sums[k].0 += c as f64;
        sums[k].1 += 1;
        off += p.len();
        if off > text_len {
            off = text_len;
        }
    }
    sums.into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(s, n)| s / n as f64)
        .collect()
}

/// Byte offsets where each `delimiter`-separated step of `text` ends (an
/// empty delimiter: one step).
pub fn step_ends(text: &str, delimiter: &str) -> Vec<usize> {
    if delimiter.is_empty() {
        return vec![text.len()];
    }
    let mut ends = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(delimiter) {
        ends.push(from + i + delimiter.len());
        from += i + delimiter.len();
    }
    if from < text.len() || ends.is_empty() {
        ends.push(text.len());
    }
    ends
}

/// Tokens of seed or model `text`: no BOS, control-token strings kept plain.
pub fn tokens_of(engine: &dyn Engine, text: &str) -> Result<Vec<Token>, EngineError> {
    engine.tokenize_plain(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_split_at_delimiter() {
        assert_eq!(step_ends("a\n\nbb\n\nc", "\n\n"), vec![3, 7, 8]);
        assert_eq!(step_ends("abc", "\n\n"), vec![3]);
        assert_eq!(
            step_ends("a\n\nb", ""),
            vec![4],
            "an empty delimiter is one step"
        );
        let pieces: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"\n\n".to_vec(),
            b"bb".to_vec(),
            b"\n\n".to_vec(),
            b"c".to_vec(),
        ];
        let conf = [0.2, 0.4, 0.6, 0.8, 1.0];
        let m = step_means(&pieces, &conf, 8, &step_ends("a\n\nbb\n\nc", "\n\n"));
        assert_eq!(m.len(), 3);
        assert!(
            (m[0] - 0.3).abs() < 1e-6 && (m[1] - 0.7).abs() < 1e-6 && (m[2] - 1.0).abs() < 1e-6
        );
    }
}
