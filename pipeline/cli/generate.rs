//! `cotforge generate`: try the engine by hand.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// GGUF model file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// User prompt (the model's chat template is applied).
    #[arg(long)]
    pub prompt: String,
    #[arg(short = 'n', long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(_args: GenerateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
