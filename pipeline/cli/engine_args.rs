//! Engine selection shared by every command that runs a model.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use strum::VariantNames;

use crate::engine::{Engine, EngineConfig, EngineKind, HttpConfig};

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// GGUF model file (llama engine).
    #[arg(long, default_value = crate::engine::DEFAULT_MODEL)]
    pub model: PathBuf,
    #[arg(
        long,
        default_value_t = EngineKind::Llama,
        value_parser = PossibleValuesParser::new(<EngineKind as VariantNames>::VARIANTS)
            .try_map(|s| s.parse::<EngineKind>()),
    )]
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
    /// `--engine http`: an OpenAI-compatible server root, e.g.
    /// http://127.0.0.1:8080 (repeat for a fleet).
    #[arg(long = "base-url", value_name = "URL")]
    pub base_urls: Vec<String>,
    /// `--engine http`: the served model name (default: the server's only model).
    #[arg(long, value_name = "NAME")]
    pub served_model: Option<String>,
    /// `--engine http`: a GGUF of the served model, to tokenize and apply the
    /// chat template locally exactly as the llama engine does.
    #[arg(long, value_name = "MODEL.gguf")]
    pub tokenizer: Option<PathBuf>,
    /// `--engine http`: most generations in flight per server.
    #[arg(long, default_value_t = HttpConfig::default().max_in_flight)]
    pub max_in_flight: usize,
}

impl EngineArgs {
    /// The engine settings these flags describe.
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            kind: self.engine,
            model: self.model.clone(),
            n_ctx: self.n_ctx,
            n_batch: self.n_batch,
            n_parallel: self.n_parallel,
            n_seq_max: self.n_seq_max,
            threads: self.threads,
            gpu_layers: self.gpu_layers,
            http: HttpConfig {
                base_urls: self.base_urls.clone(),
                model: self.served_model.clone(),
                tokenizer: self.tokenizer.clone(),
                max_in_flight: self.max_in_flight,
                ..HttpConfig::default()
            },
            ..Default::default()
        }
    }

    /// Validate and build the runtime engine.
    pub fn build(&self) -> anyhow::Result<Box<dyn Engine>> {
        Ok(self.config().build()?)
    }
}
