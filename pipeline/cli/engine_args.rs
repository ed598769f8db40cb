//! Engine selection shared by every command that runs a model.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::engine::{CoreLimits, Engine, ScriptedConfig, ScriptedEngine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// llama.cpp on a GGUF file.
    Llama,
    /// Deterministic scripted model (no weights), for tests and dry runs.
    Scripted,
}

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// GGUF model file (llama engine).
    #[arg(long, default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = EngineKind::Llama)]
    pub engine: EngineKind,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Most sequences per decode call.
    #[arg(long, default_value_t = 8)]
    pub n_parallel: usize,
    /// KV cells shared by all sequences.
    #[arg(long, default_value_t = 8192)]
    pub n_ctx: usize,
    /// Most tokens per decode call.
    #[arg(long, default_value_t = 2048)]
    pub n_batch: usize,
    /// Most live sequences (cached tree nodes); at most 256.
    #[arg(long, default_value_t = 64)]
    pub n_seq_max: usize,
    /// Layers to offload to a GPU (needs a GPU build).
    #[arg(long, default_value_t = 0)]
    pub gpu_layers: u32,
}

impl EngineArgs {
    /// Validate and build the runtime engine.
    pub fn build(&self) -> anyhow::Result<Box<dyn Engine>> {
        anyhow::ensure!(self.n_parallel >= 1, "--n-parallel must be at least 1");
        anyhow::ensure!(
            self.n_seq_max >= self.n_parallel,
            "--n-seq-max ({}) must be at least --n-parallel ({})",
            self.n_seq_max,
            self.n_parallel
        );
        match self.engine {
            EngineKind::Scripted => Ok(Box::new(ScriptedEngine::scripted(
                ScriptedConfig::default(),
                CoreLimits {
                    n_ctx: self.n_ctx,
                    n_batch: self.n_batch,
                    n_parallel: self.n_parallel,
                    n_seq_max: self.n_seq_max,
                },
            ))),
            EngineKind::Llama => self.build_llama(),
        }
    }

    #[cfg(feature = "llama")]
    fn build_llama(&self) -> anyhow::Result<Box<dyn Engine>> {
        let cfg = self.llama_config();
        Ok(Box::new(crate::engine::LlamaEngine::load(&cfg)?))
    }

    #[cfg(feature = "llama")]
    pub fn llama_config(&self) -> crate::engine::LlamaConfig {
        crate::engine::LlamaConfig {
            model: self.model.clone(),
            n_ctx: self.n_ctx,
            n_batch: self.n_batch,
            n_parallel: self.n_parallel,
            n_seq_max: self.n_seq_max,
            threads: self.threads,
            gpu_layers: self.gpu_layers,
            ..Default::default()
        }
    }

    #[cfg(not(feature = "llama"))]
    fn build_llama(&self) -> anyhow::Result<Box<dyn Engine>> {
        anyhow::bail!("this cotforge was built without the `llama` feature; use --engine scripted or rebuild with default features")
    }
}
