//! Confidence-guided MCTS (DESIGN.md, "The method").
//!
//! - [`tree`]: the arena of reasoning states.
//! - [`machine`]: one tree's search as a pure state machine ([`TreeSearch`]):
//!   it asks for generation streams and consumes sampled tokens, never
//!   calling the model itself.
//! - [`driver`]: runs many trees against one engine, packing their streams
//!   into shared decode calls and reusing the KV cache ([`run_many`]).
//! - [`result`]: chains, the selected chain, tree export, `record::Chain` rows.
//! - [`config`], [`prompts`], [`verify`]: settings, injected texts, answer checks.

pub mod config;
pub mod driver;
pub mod machine;
pub mod prompts;
pub mod result;
pub mod seeds;
pub mod tree;
pub mod verify;

pub use config::{Granularity, ReflectionConfig, ReflectionPolicy, SearchConfig, SelectRule};
pub use driver::{run_many, DriverConfig, DriverReport, Progress, StepInfo};
pub use machine::{Ctl, StreamId, StreamStart, TreeSearch};
pub use prompts::SearchPrompts;
pub use result::{ChainMeta, ChainResult, Picks, StopReason, TreeExport, TreeResult, TreeStats};
pub use seeds::seeds_from_jsonl;
pub use tree::{NodeId, TerminalCause, Tree};
pub use verify::{numbers_match, Verifier};

use crate::engine::EngineError;

/// Errors of the search layer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search config: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("sequence pool: {0}")]
    Pool(String),
    #[error("unknown or finished stream {0}")]
    UnknownStream(StreamId),
    #[error("internal search error: {0}")]
    Internal(&'static str),
}

/// The default verifier as a shareable handle.
pub fn default_verifier() -> std::sync::Arc<Verifier> {
    std::sync::Arc::new(numbers_match)
}
