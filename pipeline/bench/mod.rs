//! Benchmarks as library code: the CLI (`cotforge bench ...`) parses flags,
//! calls these and prints the tables; every report is a `Serialize` struct
//! written as JSON beside the table.
//!
//! - [`engine`]: decode and scoring throughput against llama.cpp's own tools.
//! - [`http`]: the MCTS over llama-server against the in-process engine.
//! - [`quality`]: what the search ships, measured against greedy CoT and
//!   best-of-N at equal tokens (accuracy, coverage, AUROC of the value, ...).
//! - [`search`]: MCTS throughput and KV reuse against `llama-batched-bench`.
//! - [`tools`]: llama.cpp's own tools as baselines, and their output parsers.
//! - [`metrics`]: AUROC and the other statistics the reports share.

pub mod engine;
pub mod http;
pub mod metrics;
pub mod quality;
pub mod search;
pub mod tools;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench config: {0}")]
    Config(String),
    #[error("{path}: {msg}")]
    Io {
        path: std::path::PathBuf,
        msg: String,
    },
    /// A baseline tool failed or printed something unexpected.
    #[error("{0}")]
    Tool(String),
    #[error(transparent)]
    Recipe(#[from] crate::recipes::RecipeError),
    #[error(transparent)]
    Search(#[from] crate::search::SearchError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

impl BenchError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        BenchError::Io {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    }
}
