//! Engine settings, shared by the CLI flags and job files; `build()` turns
//! them into the runtime engine (vector-style component config).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CoreLimits, Engine, EngineError, Result, ScriptedConfig, ScriptedEngine};

/// Which engine runs the model.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EngineKind {
    /// llama.cpp on a GGUF file.
    #[default]
    Llama,
    /// The deterministic scripted model (no weights).
    Scripted,
    /// An OpenAI-compatible inference server (llama-server, vLLM, SGLang) or a
    /// fleet of them; settings in `[engine.http]`.
    Http,
}

/// The largest number of sequences llama.cpp supports (LLAMA_MAX_SEQ).
pub const LLAMA_MAX_SEQ: usize = 256;

/// Flash-attention policy. Scores that will be compared must use the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlashAttn {
    #[default]
    Auto,
    On,
    Off,
}

/// Settings of the engine (the `[engine]` section of a job file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `llama` (a GGUF through llama.cpp) or `scripted` (no model; tests and dry runs).
    pub kind: EngineKind,
    /// GGUF file.
    pub model: PathBuf,
    /// KV cells shared by all sequences (unified cache).
    pub n_ctx: usize,
    /// Most tokens per decode call.
    pub n_batch: usize,
    /// Physical micro-batch size inside llama.cpp.
    pub n_ubatch: usize,
    /// Most sequences advanced by one step.
    pub n_parallel: usize,
    /// Most sequences alive at once (cached tree nodes + active ones); at most 256.
    pub n_seq_max: usize,
    /// CPU threads; 0 means all available cores.
    pub threads: usize,
    /// Layers offloaded to a GPU (needs a GPU feature).
    pub gpu_layers: u32,
    pub flash_attn: FlashAttn,
    /// Template used when the GGUF has none or llama.cpp cannot apply it:
    /// a llama.cpp built-in name (`chatml`, `llama3`, `gemma`, ...).
    pub chat_template: Option<String>,
    /// `kind = "http"`: the servers and how to talk to them (`[engine.http]`).
    pub http: HttpConfig,
}

/// The model every command and job uses when none is named: the small model
/// the tests run (scripts/setup.sh downloads it).
pub const DEFAULT_MODEL: &str = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Llama,
            model: PathBuf::from(DEFAULT_MODEL),
            n_ctx: 8192,
            n_batch: 2048,
            n_ubatch: 512,
            n_parallel: 8,
            n_seq_max: 64,
            threads: 0,
            gpu_layers: 0,
            flash_attn: FlashAttn::Auto,
            chat_template: None,
            http: HttpConfig::default(),
        }
    }
}

impl EngineConfig {
    /// Check the settings that would otherwise trip a llama.cpp assertion.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(EngineError::Config(reason));
        if self.n_parallel == 0 {
            return bad("n_parallel must be at least 1".into());
        }
        if self.n_seq_max == 0 || self.n_seq_max > LLAMA_MAX_SEQ {
            return bad(format!(
                "n_seq_max must be in 1..={LLAMA_MAX_SEQ}, got {}",
                self.n_seq_max
            ));
        }
        if self.kind == EngineKind::Http {
            self.http.validate()?;
        }
        if self.n_parallel > self.n_seq_max {
            return bad(format!(
                "n_parallel {} exceeds n_seq_max {}",
                self.n_parallel, self.n_seq_max
            ));
        }
        if self.n_ctx < 64 || self.n_batch == 0 || self.n_ubatch == 0 {
            return bad("n_ctx must be >= 64 and n_batch, n_ubatch >= 1".into());
        }
        if self.n_batch < self.n_parallel {
            return bad(format!(
                "n_batch {} must be >= n_parallel {}",
                self.n_batch, self.n_parallel
            ));
        }
        Ok(())
    }

    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Build the runtime engine. The llama engine loads the model now.
    pub fn build(&self) -> Result<Box<dyn Engine>> {
        self.validate()?;
        match self.kind {
            EngineKind::Scripted => Ok(Box::new(ScriptedEngine::scripted(
                ScriptedConfig::default(),
                CoreLimits { n_ctx: self.n_ctx, n_batch: self.n_batch, n_parallel: self.n_parallel, n_seq_max: self.n_seq_max },
            ))),
            #[cfg(feature = "llama")]
            EngineKind::Llama => Ok(Box::new(super::LlamaEngine::load(self)?)),
            #[cfg(not(feature = "llama"))]
            EngineKind::Llama => Err(EngineError::Unsupported(
                "this cotforge was built without the `llama` feature; use the scripted engine or rebuild with default features".into(),
            )),
            EngineKind::Http => Ok(Box::new(super::http::HttpEngine::connect(self)?)),
        }
    }
}

/// Client-side rate limits per server (token buckets); unset = unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Most requests started per second.
    pub requests_per_s: Option<f64>,
    /// Most tokens (prompt + completion budget) requested per minute.
    pub tokens_per_min: Option<f64>,
}

/// Settings of the HTTP engine (`[engine.http]`): OpenAI-compatible
/// `/v1/completions` servers, one or a fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Server roots, e.g. `http://gpu-node-3:8000` (without `/v1`). Each tree
    /// goes to one server so its prefix cache is hit.
    pub base_urls: Vec<String>,
    /// The served model name (`/v1/models`); unset: the server's only model.
    pub model: Option<String>,
    /// Environment variable holding a bearer token (never the token itself).
    pub api_key_env: Option<String>,
    /// Most generations open at once per server (llama-server: at most its
    /// `--parallel` slots). The search runs up to `n_parallel` plus one
    /// expansion's K streams at once; with fewer, streams take turns on the
    /// server (cancelled and resumed), which costs requests.
    pub max_in_flight: usize,
    /// Seconds without a byte from the server before a request counts as hung.
    pub timeout_s: f64,
    /// Retries of a request that failed with a transient error (5xx, 429,
    /// timeout, refused connection, malformed JSON); 0 = none. Waits grow
    /// exponentially from `backoff_ms` to `backoff_max_ms`, each drawn from
    /// [half, all] of its bound (jitter: a fleet of clients does not retry in
    /// lockstep); a 429's `Retry-After` is honoured when longer.
    pub retries: u32,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    pub rate_limit: RateLimit,
    /// A GGUF of the served model: tokenize, detokenize and apply the chat
    /// template locally with the native engine's code (needs the `llama`
    /// feature). Unset: the server's `/tokenize`, `/detokenize` and
    /// `/apply-template` (llama-server only).
    pub tokenizer: Option<PathBuf>,
    /// Tokens one request asks for (`max_tokens`). A sequence's next chunk is
    /// requested when the previous one ends, so this bounds how far the
    /// server runs ahead of the search (tokens discarded when the search
    /// edits or ends the sequence).
    pub chunk_tokens: usize,
    /// Let the server reuse the KV of a previous request's common prefix
    /// (llama-server `cache_prompt`). Reused KV was computed in batches of
    /// another shape, so greedy outputs can differ from a fresh evaluation in
    /// near-ties; `false` re-evaluates every prompt: reproducible, slower.
    pub cache_prompt: bool,
    /// llama-server: send each request to the slot (`id_slot`) whose KV holds
    /// the longest prefix of its prompt, as mirrored by this client; the
    /// server's own choice skips a slot still closing a cancelled stream and
    /// re-evaluates the whole path elsewhere. Assumes this client is the
    /// server's only one: set `false` when several share a server.
    pub pin_slots: bool,
    /// Strings after which the server may stop a chunk early: a saving only
    /// (the caller still decides where a sequence ends; a stopped sequence
    /// that is stepped again continues with a new request).
    pub stop: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            base_urls: Vec::new(),
            model: None,
            api_key_env: None,
            max_in_flight: 16,
            timeout_s: 60.0,
            retries: 6,
            backoff_ms: 250,
            backoff_max_ms: 8000,
            rate_limit: RateLimit::default(),
            tokenizer: None,
            chunk_tokens: 64,
            cache_prompt: true,
            pin_slots: true,
            stop: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// Check what can be checked without a network: URLs, bounds, the key variable.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(EngineError::Config(format!("http.{field}: {reason}")))
        };
        if self.base_urls.is_empty() {
            return bad(
                "base_urls",
                "no server given: set base_urls = [\"http://host:port\"] (or --base-url)".into(),
            );
        }
        for u in &self.base_urls {
            if let Err(reason) = super::http::parse_base_url(u) {
                return bad("base_urls", format!("{u:?}: {reason}"));
            }
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1".into());
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return bad(
                "timeout_s",
                format!("must be > 0 seconds, got {}", self.timeout_s),
            );
        }
        if self.chunk_tokens == 0 {
            return bad("chunk_tokens", "must be at least 1".into());
        }
        if self.backoff_max_ms < self.backoff_ms {
            return bad(
                "backoff_max_ms",
                format!("must be >= backoff_ms ({})", self.backoff_ms),
            );
        }
        for (name, v) in [
            ("rate_limit.requests_per_s", self.rate_limit.requests_per_s),
            ("rate_limit.tokens_per_min", self.rate_limit.tokens_per_min),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return bad(name, format!("must be > 0, got {v}"));
                }
            }
        }
        if let Some(var) = &self.api_key_env {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {}
                _ => {
                    return bad(
                        "api_key_env",
                        format!("the environment variable {var} is unset or empty: export the server's API key in it"),
                    )
                }
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return bad(
                "stop",
                "an empty stop string would end every chunk at once".into(),
            );
        }
        Ok(())
    }
}
