//! The data plane: seed Parquet in, sharded Parquet out, and the journal,
//! manifest, locks and markers that let a killed job be rerun with the same
//! command and lose nothing, duplicate nothing.
//!
//! # Output layout (one directory per job, `OUT`)
//! ```text
//! OUT/job.json                                   created_at of the job (first run wins)
//! OUT/shards/<kind>/shard-00003-of-00008.parquet     accepted chains (schemas/chains.json)
//! OUT/shards/<kind>/rejected-00003-of-00008.parquet  rejects (schemas/rejects.json)
//! OUT/shards/<kind>/manifest-00003-of-00008.json     committed files: name, rows, bytes, blake3
//! OUT/shards/<kind>/done-00003-of-00008.json         completion marker (counts)
//! OUT/shards/<kind>/journal-00003-of-00008.log       append-only journal while running
//! OUT/shards/<kind>/lock-00003-of-00008.lock         flock'ed lock file (pid + hostname)
//! ```
//! `<kind>` is the recipe name (`open_o1`, `marco_cot`, `instruction`) or any
//! other label a caller chooses (the hidden `shard-worker` uses `scripted`).
//! A shard's two Parquet files are always written, even when empty, so a
//! reader can count on them. The journal is deleted once the marker exists.

pub mod crash;
pub mod import;
pub mod ingest;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod parquet_io;
pub mod schema;
pub mod shard;
pub mod status;
pub mod worker;

use std::path::{Path, PathBuf};

pub use ingest::{Ingest, IngestItem, IngestOptions, IngestRow};
pub use shard::{shard_of, ShardSpec};
pub use worker::{run_shard, Processed, Processor, ShardOptions, ShardOutcome};

/// Errors of the data plane. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable Parquet file ({reason})")]
    NotParquet { path: PathBuf, reason: String },
    #[error("{path}: required column `{column}` is missing")]
    MissingColumn { path: PathBuf, column: String },
    #[error("{path}: column `{column}` has type {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        column: String,
        found: String,
        expected: String,
    },
    #[error("{path}: reading failed: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: writing failed: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Import { path: PathBuf, reason: String },
    #[error("schema: {0}")]
    Schema(String),
    #[error("{path}: shard is locked by {holder}; another worker is running it")]
    LockHeld { path: PathBuf, holder: String },
    #[error("{path}: journal: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("processor: {0}")]
    Processor(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// blake3 hex digest of a file, streamed.
pub fn blake3_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok((h.finalize().to_hex().to_string(), n))
}
