//! Stages between generation and the shard writer: filters ([`filter`]),
//! deduplication ([`dedup`]), decontamination ([`decontam`]) and the SFT
//! export ([`export`]). Every stage works on in-memory [`Chain`] rows and
//! returns what it rejected as [`Reject`] rows with a reason, so nothing is
//! silently dropped.

pub mod answer;
pub mod decontam;
pub mod dedup;
pub mod export;
pub mod filter;
pub mod format;
pub mod minhash;
pub mod tree_export;

pub use answer::{answers_match, extract_final_answer};
pub use dedup::{Dedup, DedupConfig, SignatureIndex};
pub use filter::{Filter, FilterChain, FilterConfig, FilterContext};
pub use format::{check_format, render, FormatError, Style};

use crate::record::{Chain, Reject, Stage};

/// Errors of the stages module.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("invalid stage config: {0}")]
    Config(String),
    #[error("io error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signature index {path}: {msg}")]
    Index {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl StageError {
    /// An I/O error on `path`; a full disk becomes the store's clear message.
    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if crate::store::is_disk_full(&source) {
            return StageError::Store(crate::store::StoreError::DiskFull { path, source });
        }
        StageError::Io { path, source }
    }
}

/// A [`Reject`] for a chain, with the chain serialized as JSON so nothing is lost.
pub fn reject_for(chain: &Chain, stage: Stage, reason: String) -> Reject {
    Reject {
        seed_id: chain.seed_id.clone(),
        chain_id: Some(chain.id.clone()),
        recipe: chain.recipe,
        stage,
        reason,
        row: serde_json::to_string(chain).unwrap_or_default(),
    }
}
