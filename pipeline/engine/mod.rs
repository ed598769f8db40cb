//! The engine: the narrow interface between cotforge and a language model.
//!
//! Everything above this module (search, recipes) sees sequences, tokens and
//! per-token confidences, never llama.cpp types. Three implementations exist:
//! [`llama::LlamaEngine`] (real model, feature `llama`),
//! [`scripted::ScriptedEngine`] (deterministic, no model, for fast tests) and
//! [`http::HttpEngine`] (OpenAI-compatible inference servers).
//!
//! A sequence is a token list whose prefix is cached (evaluated, in the KV
//! cache) and whose tail is *pending* (appended but not yet evaluated). A
//! [`Engine::step`] evaluates the pending tail of every requested sequence in
//! as few decode calls as possible and samples one new token per sequence; the
//! sampled token becomes pending, so it is evaluated by the next step. This
//! keeps one decode call per step for all active sequences, the way
//! llama.cpp's own batched tools work.

pub mod bench;
pub mod confidence;
pub mod config;
pub mod core;
pub mod generate;
pub mod http;
#[cfg(feature = "llama")]
pub mod llama;
pub mod sampling;
pub mod scripted;

use serde::{Deserialize, Serialize};

pub use confidence::{confidence, top_k_logits, TOP_K};
pub use config::{EngineConfig, EngineKind, FlashAttn, HttpConfig, RateLimit, DEFAULT_MODEL};
pub use core::{Backend, BatchEntry, Core, CoreLimits};
#[cfg(feature = "llama")]
pub use llama::LlamaEngine;
/// The engine settings under their first name.
pub type LlamaConfig = EngineConfig;
pub use sampling::SamplingParams;
pub use scripted::{ScriptedConfig, ScriptedEngine};

/// A token id of the model's vocabulary.
pub type Token = i32;

/// Handle of a sequence owned by an engine. Handles are never reused while the
/// sequence is alive; they are not llama.cpp seq ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeqId(pub u32);

/// One generated (or teacher-forced) token with what the method needs from its logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenOut {
    pub token: Token,
    /// The token's text bytes (may be a partial UTF-8 sequence for byte-level vocabularies).
    pub piece: Vec<u8>,
    /// The 5 largest raw logits at this position, largest first.
    pub top: Vec<(Token, f32)>,
    /// The raw logit of `token` itself (equal to one of `top` when it is in the top 5).
    pub logit: f32,
    /// `exp(logit) / sum_{top5} exp(l_k)`, in (0, 1].
    pub confidence: f32,
    /// True when the model's vocabulary marks this token as end of generation.
    pub eog: bool,
}

/// What a caller asks of one sequence in a [`Engine::step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRequest {
    pub seq: SeqId,
    pub sampling: SamplingParams,
}

/// Counters an engine keeps; cumulative since creation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Tokens actually run through the model (prefill + decode + scoring).
    pub tokens_evaluated: u64,
    /// Tokens sampled by `step`.
    pub tokens_sampled: u64,
    /// Number of decode calls made.
    pub decode_calls: u64,
    /// For every decode call, how many distinct sequences it carried.
    pub batch_sequences: Vec<u32>,
    /// Seconds spent inside decode calls.
    pub decode_seconds: f64,
    /// Seconds spent in sampling and the confidence computation.
    pub sample_seconds: f64,
}

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("no free sequence slot: all {max} are in use (release sequences or raise n_seq_max)")]
    NoFreeSequence { max: usize },
    #[error("unknown sequence {0:?}")]
    UnknownSequence(SeqId),
    #[error("sequence {seq:?} would reach position {pos}, beyond the context of {n_ctx} tokens")]
    ContextFull {
        seq: SeqId,
        pos: usize,
        n_ctx: usize,
    },
    #[error("sequence {0:?} has no pending token to sample from (append a prompt first)")]
    NothingToSample(SeqId),
    #[error("step asked for {asked} sequences, more than n_parallel = {max}")]
    TooManySequences { asked: usize, max: usize },
    #[error("sequence {0:?} appears twice in one step")]
    DuplicateSequence(SeqId),
    #[error("the KV cache has no room for this batch ({0}); release sequences or raise n_ctx")]
    KvFull(String),
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("llama.cpp: {0}")]
    Backend(String),
    /// Engine settings that cannot work (`[engine]` of a job, the engine
    /// flags): caught before anything is loaded.
    #[error("engine settings: {0}")]
    Config(String),
    /// An inference server cannot be used (start-up checks); names the URL and what to do.
    #[error("{url}: {reason}")]
    Server { url: String, reason: String },
    /// One sequence's requests keep failing while its server answers others:
    /// the caller drops that sequence's work (a reject with this reason) and
    /// may retry the step for the rest, whose tokens are untouched.
    #[error("sequence {seq:?}: {reason}")]
    Sequence { seq: SeqId, reason: String },
    /// Every server is gone: stop the run (journals are resumable) and rerun later.
    #[error("no inference server answers ({0}); finished work is journaled: rerun the same command once a server is back")]
    Unavailable(String),
    /// The engine cannot do what was asked (e.g. teacher-forced scoring over a server without prompt log-probabilities).
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Who speaks a chat message; the lowercase names are what chat templates
/// and servers expect.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// A chat message for the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
}

/// The model interface every stage uses. Implementations are single-threaded
/// owners of their context; parallelism comes from batching sequences.
pub trait Engine {
    /// A short name of the model (file stem for GGUF files).
    fn model_name(&self) -> &str;
    /// blake3 hex digest of the model file (or a fixed id for the scripted engine).
    fn model_hash(&self) -> &str;
    /// Context size in tokens (all sequences together, since the KV cache is unified).
    fn n_ctx(&self) -> usize;
    /// Most sequences one `step` may carry.
    fn n_parallel(&self) -> usize;
    /// Most sequences alive at once (the KV seq-id pool).
    fn n_seq_max(&self) -> usize;

    /// Tokens of `text`, control-token strings in it (`<|im_end|>`) parsed as
    /// control tokens: for text cotforge itself writes (templates, its tags).
    /// `add_special` adds the model's BOS where it wants one.
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>>;
    /// Tokens of text that came from seeds or from the model: control-token
    /// strings in it stay plain text, so a seed cannot inject a turn. No BOS.
    /// The default suits engines whose `tokenize` never parses control
    /// tokens; engines whose `tokenize` does must override it.
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        self.tokenize(text, false)
    }
    /// The chat rendered by the model's template (opening the assistant
    /// turn) as tokens: the template's own control tokens special, every
    /// message's content plain ([`Engine::tokenize_plain`]). Use this, not
    /// `tokenize(&apply_chat_template(..), true)`, for any prompt holding seed text.
    fn chat_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<Token>> {
        chat_tokens_with(
            messages,
            &|m| self.apply_chat_template(m),
            &|t, bos| self.tokenize(t, bos),
            &|t| self.tokenize_plain(t),
        )
    }
    fn detokenize(&self, tokens: &[Token]) -> Result<String>;
    /// Bytes of one token's text.
    fn piece(&self, token: Token) -> Vec<u8>;
    fn is_eog(&self, token: Token) -> bool;
    /// Render messages with the model's chat template, opening the assistant turn.
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String>;

    /// A new, empty sequence.
    fn new_sequence(&mut self) -> Result<SeqId>;
    /// A new sequence sharing all of `parent`'s tokens (cached ones without re-evaluation).
    fn fork(&mut self, parent: SeqId) -> Result<SeqId>;
    /// Keep only the first `len` tokens of `seq` (cached or pending).
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()>;
    /// Free a sequence and its KV cells not shared with others.
    fn release(&mut self, seq: SeqId) -> Result<()>;
    /// Queue tokens at the end of `seq`; they are evaluated by the next step.
    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<()>;
    /// All tokens of `seq`: cached followed by pending.
    fn tokens(&self, seq: SeqId) -> Result<&[Token]>;
    /// How many leading tokens of `seq` are evaluated and cached.
    fn cached_len(&self, seq: SeqId) -> Result<usize>;
    /// Number of live sequences.
    fn live_sequences(&self) -> usize;
    /// KV cells held by all sequences (shared prefixes count once). Schedulers
    /// budget this: every decode walks the used part of the unified cache, so
    /// cells kept around cost time on every call, not just memory.
    fn cells_used(&self) -> usize;

    /// Evaluate the pending tokens of each requested sequence and sample one
    /// new token for each; the sampled token is appended as pending.
    /// Results are in request order.
    fn step(&mut self, requests: &[StepRequest]) -> Result<Vec<TokenOut>>;

    /// Evaluate all pending tokens of `seq` without sampling (prefill).
    fn evaluate(&mut self, seq: SeqId) -> Result<()>;

    /// Teacher-forced scoring: the confidence of every token of `text` given
    /// `context`, from forward passes with logits at every position.
    /// `text` must be non-empty and `context` must hold at least one token.
    fn score(&mut self, context: &[Token], text: &[Token]) -> Result<Vec<TokenOut>>;

    /// [`Engine::score`] for many `(context, text)` pairs, packed into shared
    /// decode calls. Results are in input order.
    fn score_many(&mut self, items: &[(&[Token], &[Token])]) -> Result<Vec<Vec<TokenOut>>>;

    fn stats(&self) -> &EngineStats;
}

/// A rendering function of the chat template.
pub type RenderFn<'a> = dyn Fn(&[ChatMessage]) -> Result<String> + 'a;
/// A tokenizer that parses control tokens (`bool`: add BOS).
pub type SpecialFn<'a> = dyn Fn(&str, bool) -> Result<Vec<Token>> + 'a;
/// A tokenizer that keeps everything plain text.
pub type PlainFn<'a> = dyn Fn(&str) -> Result<Vec<Token>> + 'a;

/// [`Engine::chat_tokens`] from its parts. The template is rendered once with
/// a unique placeholder in place of each content, which marks where contents
/// go; the pieces between are the template's (tokenized with control tokens
/// parsed), the contents are tokenized plain. A second rendering with the real
/// contents checks the template keeps them verbatim (or only trims them, as
/// llama3 and gemma templates do), so the tokens spell exactly the text the
/// template would produce.
pub fn chat_tokens_with(
    messages: &[ChatMessage],
    render: &RenderFn<'_>,
    special: &SpecialFn<'_>,
    plain: &PlainFn<'_>,
) -> Result<Vec<Token>> {
    // Placeholders from the private-use area, salted until no content holds one.
    let mut salt = 0u32;
    let tag = |salt: u32, i: usize| format!("\u{E000}cf{salt}:{i}\u{E001}");
    while messages
        .iter()
        .any(|m| m.content.contains(&format!("\u{E000}cf{salt}:")))
    {
        salt += 1;
    }
    let masked: Vec<ChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage::new(m.role, tag(salt, i)))
        .collect();
    let rendered = render(&masked)?;
    // Split at the placeholders: (template piece, content index after it).
    let open = format!("\u{E000}cf{salt}:");
    let mut parts: Vec<(&str, Option<usize>)> = Vec::new();
    let mut rest = rendered.as_str();
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let end = after.find('\u{E001}').ok_or_else(|| {
            EngineError::Template("the template cut a message placeholder".into())
        })?;
        let i: usize = after[..end].parse().map_err(|_| {
            EngineError::Template("the template changed a message placeholder".into())
        })?;
        if i >= messages.len() {
            return Err(EngineError::Template(
                "the template invented a message".into(),
            ));
        }
        parts.push((&rest[..at], Some(i)));
        rest = &after[end + '\u{E001}'.len_utf8()..];
    }
    parts.push((rest, None));
    let real = render(messages)?;
    let joined = |f: &dyn Fn(&str) -> String| -> String {
        let mut s = String::with_capacity(real.len());
        for (piece, i) in &parts {
            s.push_str(piece);
            if let Some(i) = i {
                s.push_str(&f(&messages[*i].content));
            }
        }
        s
    };
    let trim = if joined(&|c| c.to_string()) == real {
        false
    } else if joined(&|c| c.trim().to_string()) == real {
        true
    } else {
        return Err(EngineError::Template(
            "the chat template rewrites message text, so seed text cannot be kept apart from \
             control tokens; set [engine] chat_template to a llama.cpp built-in template"
                .into(),
        ));
    };
    let mut out = Vec::new();
    for (k, (piece, i)) in parts.iter().enumerate() {
        if k == 0 || !piece.is_empty() {
            out.extend(special(piece, k == 0)?);
        }
        if let Some(i) = i {
            let c = &messages[*i].content;
            let c = if trim { c.trim() } else { c.as_str() };
            if !c.is_empty() {
                out.extend(plain(c)?);
            }
        }
    }
    Ok(out)
}

/// Mean confidence over tokens; 0 for an empty slice.
pub fn mean_confidence(tokens: &[TokenOut]) -> f64 {
    if tokens.is_empty() {
        return 0.0;
    }
    tokens.iter().map(|t| t.confidence as f64).sum::<f64>() / tokens.len() as f64
}
