//! Confidence-guided MCTS (DESIGN.md, "The method").
//!
//! - [`tree`]: the arena of reasoning states.
//! - [`machine`]: one tree's search as a pure state machine ([`TreeSearch`]):
//!   it asks for generation streams and consumes sampled tokens, never
//!   calling the model itself.
//! - [`driver`]: runs many trees against one engine, packing their streams
//!   into shared decode calls and reusing the KV cache ([`run_many`]).
//! - [`result`]: chains, the selected chain, tree export, `record::Chain` rows.
//! - [`value`]: what a chain is worth (confidence, verifier, self-consistency,
//!   judge, mixes); [`judge`]: the judge's second engine.
//! - [`ship`]: which chains of a tree ship, and why the others do not.
//! - [`config`], [`prompts`], [`verify`]: settings, injected texts, answer checks.

/// `ALL`, `as_str`, `Display` and `FromStr` of a closed enum from one list
/// of names; parsing also takes `-` for `_`, and an unknown name's error
/// lists the known ones.
macro_rules! names {
    ($t:ident, $what:literal, { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub const ALL: [$t; [$($s),+].len()] = [$($t::$v),+];
            pub fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => $s),+
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s || v.as_str().replace('_', "-") == s)
                    .ok_or_else(|| {
                        format!("unknown {} '{s}' (expected {})", $what, [$($s),+].join(", "))
                    })
            }
        }
    };
}

pub mod config;
pub mod driver;
pub mod judge;
pub mod machine;
pub mod prompts;
pub mod render;
pub mod result;
pub mod seeds;
pub mod ship;
pub mod tree;
pub mod value;
pub mod verify;

pub use config::{
    Granularity, ReflectionConfig, ReflectionPolicy, SearchConfig, SelectRule, ShipPolicy,
};
pub use driver::{
    run_many, run_trees, DriverConfig, DriverReport, Outcome, Progress, StepInfo, TreeFailure,
};
pub use judge::{EngineJudge, Judge, JudgeConfig, JudgeRequest};
pub use machine::{Ctl, StreamId, StreamStart, TreeSearch};
pub use prompts::SearchPrompts;
pub use result::{ChainResult, Picks, StopReason, TreeExport, TreeResult, TreeStats};
pub use seeds::seeds_from_jsonl;
pub use tree::{NodeId, TerminalCause, Tree};
pub use value::{ValueKind, ValueSpec};
pub use verify::Verifier;

use crate::engine::EngineError;

/// Errors of the search layer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search config: {0}")]
    Config(String),
    /// The seed cannot run within the engine's context.
    #[error("does not fit the context: {0}")]
    DoesNotFit(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("sequence pool: {0}")]
    Pool(String),
    #[error("unknown or finished stream {0}")]
    UnknownStream(StreamId),
    #[error("internal search error: {0}")]
    Internal(&'static str),
    /// A tree of a run that needs every tree failed (see `run_trees`).
    #[error("seed {0}: {1}")]
    Tree(String, String),
}

/// The answer check of the whole pipeline ([`crate::stages::answer::answers_match`])
/// as a shareable handle.
pub fn default_verifier() -> std::sync::Arc<Verifier> {
    std::sync::Arc::new(crate::stages::answer::answers_match)
}
