//! `cotforge generate`: try the engine by hand.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::engine::generate::{sample_n, StopRule};
use crate::engine::{ChatMessage, Engine, SamplingParams};

use super::engine_args::EngineArgs;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// User prompt (the model's chat template is applied).
    #[arg(long)]
    pub prompt: String,
    /// Optional system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Number of completions.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print per-token confidences as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.n >= 1, "-n must be at least 1");
    anyhow::ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
    anyhow::ensure!(!args.prompt.trim().is_empty(), "--prompt is empty");
    let mut engine = args.engine.build()?;
    let engine: &mut dyn Engine = engine.as_mut();
    let mut msgs = Vec::new();
    if let Some(s) = &args.system {
        msgs.push(ChatMessage::system(s));
    }
    msgs.push(ChatMessage::user(&args.prompt));
    let text = engine
        .apply_chat_template(&msgs)
        .context("applying the chat template")?;
    let prompt = engine.tokenize(&text, true)?;
    let params = SamplingParams::new(args.temperature, args.top_p, args.seed);
    let rule = StopRule {
        max_tokens: args.max_tokens,
        stop: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    let outs = sample_n(engine, &prompt, args.n, params, &rule)?;
    let secs = t0.elapsed().as_secs_f64();
    let generated: usize = outs.iter().map(|c| c.tokens.len()).sum();
    for (i, c) in outs.iter().enumerate() {
        if args.json {
            let toks: Vec<_> = c
                .tokens
                .iter()
                .map(|t| serde_json::json!({"token": t.token, "piece": String::from_utf8_lossy(&t.piece), "confidence": t.confidence, "top5": t.top}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"index": i, "text": c.text, "mean_confidence": c.mean_confidence, "finish": c.finish.as_ref(), "tokens": toks})
            );
        } else {
            println!(
                "--- completion {i}: {} tokens, mean confidence {:.4}, finish {}",
                c.tokens.len(),
                c.mean_confidence,
                c.finish
            );
            println!("{}", c.text);
        }
    }
    let st = engine.stats();
    eprintln!(
        "prompt {} tokens; generated {generated} tokens in {secs:.2}s ({:.1} tok/s); evaluated {} tokens in {} decode calls \
         ({:.2}s decoding, {:.3}s sampling and confidence)",
        prompt.len(),
        generated as f64 / secs.max(1e-9),
        st.tokens_evaluated,
        st.decode_calls,
        st.decode_seconds,
        st.sample_seconds
    );
    Ok(ExitCode::SUCCESS)
}
