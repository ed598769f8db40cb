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
//! OUT/shards/<kind>/lease-00003-of-00008.json        lease beside the lock (host, pid, heartbeat)
//! ```
//! `<kind>` is the recipe name (`open_o1`, `marco_cot`, `instruction`):
//! [`ShardOptions::kind`] is a [`crate::record::Recipe`]. Readers of an output
//! (`status`, `verify`) take whatever directory names they find.
//! A shard's two Parquet files are always written, even when empty, so a
//! reader can count on them. The journal is deleted once the marker exists.
//!
//! The worker reports what it journals and commits as typed [`events::Event`]s
//! through an [`events::EventSink`]; it never prints (the CLI renders them).

pub mod crash;
pub mod events;
pub mod fingerprint;
pub mod fsio;
pub mod import;
pub mod ingest;
pub mod journal;
pub mod lease;
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
pub use worker::{
    run_shard, run_shard_with, ProcessError, Processed, Processor, ShardOptions, ShardOutcome,
};

/// Errors of the data plane. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: no space left on the device; free space and rerun the same command \
         (committed files and journaled results are kept)"
    )]
    DiskFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: is a symbolic link; cotforge does not follow links inside its output \
         (replace it with a real file or directory, or use another output directory)"
    )]
    Symlink { path: PathBuf },
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
    /// A column of a stored row file that cannot be read as the schema says.
    #[error("column '{column}': {msg}")]
    Column { column: String, msg: String },
    #[error("{path}: {what} is locked by {holder}; another worker is running it")]
    LockHeld {
        path: PathBuf,
        /// What the lock guards: `shard`, `the dedup index`, `finalize of this output`.
        what: &'static str,
        holder: String,
    },
    #[error("{path}: held by a live lease of {holder}; another node is running it (the lease goes stale {ttl} s after its last heartbeat)")]
    LeaseHeld {
        path: PathBuf,
        holder: String,
        ttl: u64,
    },
    #[error("{path}: the lease was taken over by {holder}; this worker stops without committing (the new holder finishes the work)")]
    LeaseLost { path: PathBuf, holder: String },
    #[error("{path}: {what}")]
    Changed { path: PathBuf, what: String },
    #[error("{path}: journal: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("{path}: the result of seed {seed_id} is {bytes} bytes, over the journal's frame limit of {max} bytes")]
    FrameTooLarge {
        path: PathBuf,
        seed_id: String,
        bytes: u64,
        max: u64,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The processor failed on a batch (`on` names its seeds and rows).
    #[error("processor: {error} ({on})")]
    Processor {
        #[source]
        error: worker::ProcessError,
        on: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| {
        if is_disk_full(&source) {
            StoreError::DiskFull {
                path: path.to_path_buf(),
                source,
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// blake3 hex digest of an input file (seeds, models), streamed.
pub fn blake3_file(path: &Path) -> Result<(String, u64)> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    blake3_of(f, path)
}

/// blake3 of a file of the output directory: a link there is refused.
pub fn blake3_output(path: &Path) -> Result<(String, u64)> {
    blake3_of(fsio::open_read(path)?, path)
}

fn blake3_of(mut f: std::fs::File, path: &Path) -> Result<(String, u64)> {
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok((h.finalize().to_hex().to_string(), n))
}
