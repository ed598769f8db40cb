//! Reading [`Chain`] and [`Reject`] rows for export, stats and report from
//! any Parquet under an output directory (writing goes through `store`).
//!
//! Columns are named after the struct fields; `recipe` is a utf8 string,
//! `step_confidences` a `list<float64>`, `verified` a nullable bool,
//! `created_at` an int64. Integer and float columns are cast on read, so a
//! writer that picked int64 for `tokens` still reads.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::record::{Chain, Reject};
use crate::store::parquet_io::{write_parquet, WriteOptions};
use crate::store::schema::{
    batch_to_chains, batch_to_rejects, chains_schema, chains_to_batch, rejects_schema,
    rejects_to_batch,
};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: {msg}")]
    Store { path: PathBuf, msg: String },
    #[error("{path}: column '{column}': {msg}")]
    Column {
        path: PathBuf,
        column: String,
        msg: String,
    },
}

/// What a Parquet file under an output directory holds, judged by its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Chains,
    Rejects,
    Other,
}

/// Write chains to one Parquet file with the store's schema and writer
/// (zstd, bounded row groups, atomic commit).
pub fn write_chains(path: &Path, rows: &[Chain]) -> Result<(), IoError> {
    write_parquet(
        path,
        chains_schema(),
        [chains_to_batch(rows)],
        &WriteOptions::default(),
    )
    .map(|_| ())
    .map_err(|e| IoError::Store {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Write rejects to one Parquet file (see [`write_chains`]).
pub fn write_rejects(path: &Path, rows: &[Reject]) -> Result<(), IoError> {
    write_parquet(
        path,
        rejects_schema(),
        [rejects_to_batch(rows)],
        &WriteOptions::default(),
    )
    .map(|_| ())
    .map_err(|e| IoError::Store {
        path: path.into(),
        msg: e.to_string(),
    })
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, IoError> {
    let file = File::open(path).map_err(|source| IoError::Io {
        path: path.into(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| IoError::Parquet {
        path: path.into(),
        source,
    })
}

/// Classifies a Parquet file by its columns.
pub fn file_kind(path: &Path) -> Result<FileKind, IoError> {
    let b = open(path)?;
    let s = b.schema();
    let has = |n: &str| s.field_with_name(n).is_ok();
    Ok(if has("stage") && has("reason") && has("row") {
        FileKind::Rejects
    } else if has("id") && has("reasoning") && has("answer") && has("reward") {
        FileKind::Chains
    } else {
        FileKind::Other
    })
}

/// A store decoding error of `path`, a column's named as such.
fn decode_err(path: &Path, e: crate::store::StoreError) -> IoError {
    match e {
        crate::store::StoreError::Column { column, msg } => IoError::Column {
            path: path.into(),
            column,
            msg,
        },
        e => IoError::Store {
            path: path.into(),
            msg: e.to_string(),
        },
    }
}

/// The record batches of a Parquet file, errors naming the file.
fn batches(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordBatch, IoError>> + '_, IoError> {
    let reader = open(path)?.build().map_err(|source| IoError::Parquet {
        path: path.into(),
        source,
    })?;
    Ok(reader.map(move |b| {
        b.map_err(|source| IoError::Arrow {
            path: path.into(),
            source,
        })
    }))
}

/// Reads every chain row of a Parquet file (the store's one decoder,
/// [`batch_to_chains`]).
pub fn read_chains(path: &Path) -> Result<Vec<Chain>, IoError> {
    let mut out = Vec::new();
    for batch in batches(path)? {
        out.extend(batch_to_chains(&batch?).map_err(|e| decode_err(path, e))?);
    }
    Ok(out)
}

/// Reads every reject row of a Parquet file ([`batch_to_rejects`]).
pub fn read_rejects(path: &Path) -> Result<Vec<Reject>, IoError> {
    let mut out = Vec::new();
    for batch in batches(path)? {
        out.extend(batch_to_rejects(&batch?).map_err(|e| decode_err(path, e))?);
    }
    Ok(out)
}

/// The files of an output directory, sorted by path (so reads are deterministic).
#[derive(Debug, Clone, Default)]
pub struct OutFiles {
    pub chains: Vec<PathBuf>,
    pub rejects: Vec<PathBuf>,
    /// `metrics.jsonl` files (throughput samples), see [`super::MetricsSample`].
    pub metrics: Vec<PathBuf>,
}

/// Finds chain and reject Parquet files under `dir` (recursively).
///
/// Files are found by name and columns, not through the shard manifests, so
/// a copied, partial or foreign output tree reads as well. The rule: every
/// `**/*.parquet` whose name does not start with `rejected` and whose columns
/// are a chain's is a chain file; names starting with `rejected` (or files
/// with reject columns) are reject files; temporary files (`*.tmp`, names
/// starting with `.`) and other Parquet files (seeds, exports) are skipped.
pub fn scan_out_dir(dir: &Path) -> Result<OutFiles, IoError> {
    let mut out = OutFiles::default();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| IoError::Io {
            path: dir.into(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk error")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let name = entry.file_name().to_string_lossy();
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        if name == "metrics.jsonl" {
            out.metrics.push(path.to_path_buf());
            continue;
        }
        if !name.ends_with(".parquet") {
            continue;
        }
        match file_kind(path)? {
            FileKind::Rejects => out.rejects.push(path.to_path_buf()),
            FileKind::Chains if !name.starts_with("rejected") => {
                out.chains.push(path.to_path_buf())
            }
            _ => {}
        }
    }
    // A finalized run: `final/` holds the deduplicated chains, and the shard
    // files hold the same rows before dedup. Count each chain once.
    let fin = dir.join("final");
    if out.chains.iter().any(|p| p.starts_with(&fin)) {
        out.chains.retain(|p| p.starts_with(&fin));
    }
    Ok(out)
}

/// Reads all chains of the given files, in file order.
pub fn read_all_chains(paths: &[PathBuf]) -> Result<Vec<Chain>, IoError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_chains(p)?);
    }
    Ok(all)
}

pub fn read_all_rejects(paths: &[PathBuf]) -> Result<Vec<Reject>, IoError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_rejects(p)?);
    }
    Ok(all)
}
