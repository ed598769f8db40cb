//! Engine settings, shared by the CLI flags and job files; `build()` turns
//! them into the runtime engine (vector-style component config).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CoreLimits, Engine, EngineError, Result, ScriptedConfig, ScriptedEngine};

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// llama.cpp on a GGUF file.
    #[default]
    Llama,
    /// The deterministic scripted model (no weights).
    Scripted,
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Llama,
            model: PathBuf::from("data/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            n_ctx: 8192,
            n_batch: 2048,
            n_ubatch: 512,
            n_parallel: 8,
            n_seq_max: 64,
            threads: 0,
            gpu_layers: 0,
            flash_attn: FlashAttn::Auto,
            chat_template: None,
        }
    }
}

impl EngineConfig {
    /// Check the settings that would otherwise trip a llama.cpp assertion.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(EngineError::Backend(format!("engine settings: {reason}")));
        if self.n_parallel == 0 {
            return bad("n_parallel must be at least 1".into());
        }
        if self.n_seq_max == 0 || self.n_seq_max > LLAMA_MAX_SEQ {
            return bad(format!(
                "n_seq_max must be in 1..={LLAMA_MAX_SEQ}, got {}",
                self.n_seq_max
            ));
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
            EngineKind::Llama => Err(EngineError::Backend(
                "this cotforge was built without the `llama` feature; use the scripted engine or rebuild with default features".into(),
            )),
        }
    }
}
